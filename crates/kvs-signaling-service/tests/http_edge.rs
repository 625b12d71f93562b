//! The service's HTTP edge on a real loopback socket, without any signaling client: plain HTTP
//! where a WebSocket upgrade is expected, and the embedding program's extra routes.

use std::time::Duration;

use kvs_signaling_service::{spawn, ServiceConfig, ServiceHandle};

async fn start() -> ServiceHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A route of the embedding program, served beside signaling.
    let page = axum::Router::new().route("/viewer", axum::routing::get(|| async { "page" }));
    let service = spawn(listener, ServiceConfig::default(), Some(page));
    service.state().create_channel("e2e-channel").unwrap();
    service
}

/// One raw HTTP/1.1 request on loopback; returns the whole response text.
async fn http_get(service: &ServiceHandle, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(service.local_addr().unwrap())
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn plain_http_gets_a_json_error_and_extra_routes_are_served() {
    let service = start().await;
    let response = http_get(&service, "/?X-Amz-ChannelARN=x").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains(r#"{"message":"expected a WebSocket upgrade"}"#),
        "{response}"
    );
    let response = http_get(&service, "/viewer").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("page"), "{response}");
    service.shutdown().await;
}
