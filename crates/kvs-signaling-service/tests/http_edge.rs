//! The service's HTTP edge on a real loopback socket, without any signaling client: plain HTTP
//! where a WebSocket upgrade is expected, the embedding program's extra routes, deadlines for
//! slow requests, connection caps, and the rest-json shape of every error.

mod common;

use std::time::Duration;

use common::{parse_response, post, raw_request, HttpResponse};
use kvs_signaling_service::{spawn, AccessKey, ServiceConfig, ServiceHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

async fn start_with(config: ServiceConfig) -> ServiceHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn(listener, config, None)
}

/// Whether the server closed `tcp` within `within` (EOF or reset), reading whatever it sent.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_deadline() {
    let service = start_with(ServiceConfig {
        header_read_timeout: Duration::from_secs(1),
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    // 200 clients each send half a request line and headers, then stall.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"POST /createSignalingChannel HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // And one that connects and says nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    for tcp in stalled.iter_mut().chain(std::iter::once(&mut silent)) {
        assert!(
            closed_within(tcp, Duration::from_secs(4)).await.is_some(),
            "a stalled connection is still open 4 s after connecting"
        );
    }
    // Nothing is left open.
    for _ in 0..100 {
        if service.state().open_connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(service.state().open_connections(), 0);
    service.shutdown().await;
}

#[tokio::test]
async fn a_stalled_body_gets_a_rest_json_408_and_the_connection_is_closed() {
    let service = start_with(ServiceConfig {
        body_read_timeout: Duration::from_millis(500),
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /listSignalingChannels HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"MaxResu",
    )
    .await
    .unwrap();
    let raw = closed_within(&mut tcp, Duration::from_secs(3))
        .await
        .expect("closed within 3 s");
    parse_response(&raw).assert_rest_json_error(408, "RequestTimeoutException");
    service.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_at_once() {
    let service = start_with(ServiceConfig {
        max_connections_per_ip: 5,
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut sixth = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut sixth, Duration::from_secs(1))
            .await
            .is_some(),
        "the sixth connection from one address is closed"
    );
    // The five are still served.
    held[0]
        .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = closed_within(&mut held[0], Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(parse_response(&raw).status, 404);
    // Once one is gone there is room again.
    drop(held.remove(0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = post(addr, "/listSignalingChannels", "{}").await;
    assert_eq!(r.status, 200, "{r:?}");
    service.shutdown().await;

    // The total cap counts every address.
    let service = start_with(ServiceConfig {
        max_connections: 2,
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(1))
        .await
        .is_some());
    service.shutdown().await;
}

/// Every way the control plane can fail answers in the rest-json shape.
#[tokio::test]
async fn every_control_plane_error_is_rest_json() {
    let service = start_with(ServiceConfig {
        max_channels: 2,
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    let arn = service.state().create_channel("one").unwrap().arn;

    // HTTP-level failures: too large, unknown path, wrong method.
    let big = format!(r#"{{"ChannelName":"{}"}}"#, "x".repeat(70 * 1024));
    post(addr, "/createSignalingChannel", &big)
        .await
        .assert_rest_json_error(413, "InvalidArgumentException");
    post(addr, "/noSuchOperation", "{}")
        .await
        .assert_rest_json_error(404, "UnknownOperationException");
    raw_request(
        addr,
        b"GET /some/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .assert_rest_json_error(404, "UnknownOperationException");
    raw_request(
        addr,
        b"GET /createSignalingChannel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .assert_rest_json_error(405, "UnknownOperationException");
    raw_request(
        addr,
        b"DELETE /listSignalingChannels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .assert_rest_json_error(405, "UnknownOperationException");
    // A body declared larger than the limit is refused before it is read.
    raw_request(
        addr,
        b"POST /createSignalingChannel HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .assert_rest_json_error(413, "InvalidArgumentException");

    // Each operation's own failures.
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/createSignalingChannel",
            "not json".into(),
            400,
            "SerializationException",
        ),
        (
            "/createSignalingChannel",
            r#"{"ChannelName":"a b"}"#.into(),
            400,
            "InvalidArgumentException",
        ),
        (
            "/createSignalingChannel",
            r#"{"ChannelName":"one"}"#.into(),
            400,
            "ResourceInUseException",
        ),
        (
            "/describeSignalingChannel",
            "{}".into(),
            400,
            "InvalidArgumentException",
        ),
        (
            "/describeSignalingChannel",
            r#"{"ChannelName":"nope"}"#.into(),
            404,
            "ResourceNotFoundException",
        ),
        (
            "/listSignalingChannels",
            r#"{"MaxResults":0}"#.into(),
            400,
            "InvalidArgumentException",
        ),
        (
            "/deleteSignalingChannel",
            format!(r#"{{"ChannelARN":"{arn}","CurrentVersion":"x"}}"#),
            400,
            "VersionMismatchException",
        ),
        (
            "/deleteSignalingChannel",
            r#"{"ChannelARN":"nope"}"#.into(),
            404,
            "ResourceNotFoundException",
        ),
        (
            "/getSignalingChannelEndpoint",
            r#"{"ChannelARN":"nope"}"#.into(),
            404,
            "ResourceNotFoundException",
        ),
        (
            "/v1/get-ice-server-config",
            r#"{"ChannelARN":"nope"}"#.into(),
            404,
            "ResourceNotFoundException",
        ),
    ];
    for (path, body, status, error_type) in cases {
        let r = post(addr, path, &body).await;
        assert_eq!(
            (r.status, r.header("x-amzn-ErrorType")),
            (status, Some(error_type)),
            "{path} {body}: {r:?}"
        );
        r.assert_rest_json_error(status, error_type);
    }

    // The channel limit.
    assert_eq!(
        post(addr, "/createSignalingChannel", r#"{"ChannelName":"two"}"#)
            .await
            .status,
        200
    );
    post(
        addr,
        "/createSignalingChannel",
        r#"{"ChannelName":"three"}"#,
    )
    .await
    .assert_rest_json_error(400, "AccountChannelLimitExceededException");
    service.shutdown().await;

    // Authentication failures, with keys configured.
    let service = start_with(ServiceConfig {
        access_keys: vec![AccessKey {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        }],
        ..ServiceConfig::default()
    })
    .await;
    let addr = service.local_addr().unwrap();
    post(addr, "/listSignalingChannels", "{}")
        .await
        .assert_rest_json_error(403, "MissingAuthenticationTokenException");
    let forged = "POST /listSignalingChannels HTTP/1.1\r\nHost: x\r\nX-Amz-Date: 20240101T000000Z\r\n\
        Authorization: AWS4-HMAC-SHA256 Credential=AKIDTEST/20240101/us-west-2/kinesisvideo/aws4_request, \
        SignedHeaders=host;x-amz-date, Signature=00\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let r: HttpResponse = raw_request(addr, forged.as_bytes()).await;
    assert!(r.status == 403 || r.status == 400, "{r:?}");
    r.assert_rest_json_error(r.status, r.header("x-amzn-ErrorType").unwrap_or("?"));
    service.shutdown().await;
}
