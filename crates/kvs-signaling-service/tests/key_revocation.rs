//! Revoking an access key at run time: connections it signed get GO_AWAY and are closed,
//! connects signed with it are refused, and everything signed with another key goes on.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::*;
use kvs_aws::Credentials;
use kvs_signaling_service::{router, spawn_router, AccessKey, ServiceConfig, ServiceState};

const A: (&str, &str) = ("AKIDREVOKEAAAA", "secret-a-0123456789");
const B: (&str, &str) = ("AKIDREVOKEBBBB", "secret-b-0123456789");

fn presign(
    addr: SocketAddr,
    arn: &str,
    client_id: Option<&str>,
    (id, secret): (&str, &str),
) -> String {
    let credentials = Credentials::new(id, secret, None, None);
    let mut query = vec![("X-Amz-ChannelARN", arn)];
    if let Some(c) = client_id {
        query.push(("X-Amz-ClientId", c));
    }
    kvs_aws::presign_url(
        &credentials,
        "us-west-2",
        "kinesisvideo",
        SystemTime::now(),
        &format!("ws://{addr}/"),
        &query,
        Duration::from_secs(60),
    )
    .unwrap()
}

#[tokio::test]
async fn a_revoked_key_sends_its_connections_away_and_is_refused_after() {
    let key = |(id, secret): (&str, &str)| AccessKey {
        access_key_id: id.into(),
        secret_access_key: secret.into(),
        session_token: None,
    };
    let state = ServiceState::new(ServiceConfig {
        access_keys: vec![key(A), key(B)],
        ..ServiceConfig::default()
    });
    let arn = state.create_channel("cam").unwrap().arn;
    let edge = state.edge(false, true);
    let service = spawn_router(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        router(edge.clone()),
        edge,
    );
    let addr = service.local_addr().unwrap();

    let mut master = ws_connect(&presign(addr, &arn, None, A)).await.unwrap();
    let mut viewer = ws_connect(&presign(addr, &arn, Some("v1"), B))
        .await
        .unwrap();
    assert_eq!(state.connections_signed_with(A.0), 1);
    assert_eq!(state.connections_signed_with(B.0), 1);

    assert_eq!(state.revoke_access_key(A.0), 1);
    match next_seen(&mut master, Duration::from_secs(5)).await {
        Seen::Text(f) => assert_eq!(f["messageType"], "GO_AWAY", "{f}"),
        other => panic!("expected GO_AWAY, got {other:?}"),
    }
    match next_seen(&mut master, Duration::from_secs(5)).await {
        Seen::Closed(reason) => assert_eq!(reason, "access key revoked"),
        other => panic!("expected the close, got {other:?}"),
    }
    assert!(!state.has_master(&arn));
    assert_eq!(state.connections_signed_with(A.0), 0);

    // Connects signed with A are refused from now on (REST calls go through the same check);
    // B still works.
    ws_connect(&presign(addr, &arn, None, A))
        .await
        .expect_err("revoked key refused")
        .assert_rest_json_error(403, "UnrecognizedClientException");
    let _master = ws_connect(&presign(addr, &arn, None, B)).await.unwrap();
    assert!(state.has_master(&arn));
    assert_eq!(state.connections_signed_with(B.0), 2);

    // The viewer signed with B saw nothing of it.
    assert!(matches!(
        next_seen(&mut viewer, Duration::from_millis(200)).await,
        Seen::Nothing
    ));
    service.shutdown().await;
}
