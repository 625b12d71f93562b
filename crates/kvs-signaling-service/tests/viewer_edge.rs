//! The viewer-only edge (the embedded default's page listener): it serves viewer connects to
//! its one channel and nothing else, and with signatures required it wants a fresh presigned
//! URL signed with one of the service's keys.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::*;
use kvs_aws::Credentials;
use kvs_signaling_service::{
    router, spawn_router, AccessKey, ServiceConfig, ServiceHandle, ServiceState,
};

const KEY_ID: &str = "AKIDRUNKEY0001";
const SECRET: &str = "run-secret-0123456789";

struct Edges {
    /// The full, authenticated edge (the device's).
    full: ServiceHandle,
    /// The viewer-only edge.
    page: ServiceHandle,
    arn: String,
    other_arn: String,
}

async fn start(require_signature: bool) -> Edges {
    let config = ServiceConfig {
        access_keys: vec![AccessKey {
            access_key_id: KEY_ID.into(),
            secret_access_key: SECRET.into(),
            session_token: None,
        }],
        ..ServiceConfig::default()
    };
    let state = ServiceState::new(config);
    let arn = state.create_channel("cam").unwrap().arn;
    let other_arn = state.create_channel("other").unwrap().arn;
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let full_state = state.edge(false, true);
    let full = spawn_router(
        bind().await.unwrap(),
        router(full_state.clone()),
        full_state,
    );
    let page_state = state.viewer_edge(false, "cam", require_signature);
    let page = spawn_router(
        bind().await.unwrap(),
        router(page_state.clone()),
        page_state,
    );
    Edges {
        full,
        page,
        arn,
        other_arn,
    }
}

fn presign(addr: SocketAddr, arn: &str, client_id: &str, secret: &str, at: SystemTime) -> String {
    let credentials = Credentials::new(KEY_ID, secret, None, None);
    kvs_aws::presign_url(
        &credentials,
        "us-west-2",
        "kinesisvideo",
        at,
        &format!("ws://{addr}/"),
        &[("X-Amz-ChannelARN", arn), ("X-Amz-ClientId", client_id)],
        Duration::from_secs(60),
    )
    .unwrap()
}

#[tokio::test]
async fn the_page_edge_refuses_rest_masters_and_other_channels() {
    let e = start(false).await;
    let addr = e.page.local_addr().unwrap();
    // The control plane is not there (not even to list or delete channels).
    for path in [
        "/listSignalingChannels",
        "/deleteSignalingChannel",
        "/createSignalingChannel",
        "/getSignalingChannelEndpoint",
    ] {
        post(addr, path, &format!(r#"{{"ChannelARN":"{}"}}"#, e.arn))
            .await
            .assert_rest_json_error(403, "AccessDeniedException");
    }
    assert_eq!(e.page.state().channels().len(), 2, "nothing was deleted");
    // No master, on its channel or any other.
    ws_connect(&data_plane(addr, &e.arn, None))
        .await
        .expect_err("master refused")
        .assert_rest_json_error(403, "AccessDeniedException");
    assert!(!e.page.state().has_master(&e.arn));
    // No viewer of another channel; an unknown one gets the same answer.
    for arn in [
        e.other_arn.as_str(),
        "arn:aws:kinesisvideo:us-west-2:0:channel/x/1",
    ] {
        ws_connect(&data_plane(addr, arn, Some("v")))
            .await
            .expect_err("other channel refused")
            .assert_rest_json_error(403, "AccessDeniedException");
    }
    // A viewer of its channel is served (loopback, no signature required)...
    let _v = ws_connect(&data_plane(addr, &e.arn, Some("v1")))
        .await
        .expect("viewer of the page's channel");
    // ...but a signature, if present, must be valid.
    let forged = presign(addr, &e.arn, "v2", "not-the-secret", SystemTime::now());
    ws_connect(&forged)
        .await
        .expect_err("forged signature refused")
        .assert_rest_json_error(403, "InvalidSignatureException");
    // The full edge still serves everything.
    let full = e.full.local_addr().unwrap();
    post(full, "/listSignalingChannels", "{}")
        .await
        .assert_rest_json_error(403, "MissingAuthenticationTokenException");
    e.page.shutdown().await;
    e.full.shutdown().await;
}

#[tokio::test]
async fn with_signatures_required_only_a_fresh_valid_presigned_url_connects() {
    let e = start(true).await;
    let addr = e.page.local_addr().unwrap();
    let now = SystemTime::now();
    // Unsigned.
    ws_connect(&data_plane(addr, &e.arn, Some("v1")))
        .await
        .expect_err("unsigned refused")
        .assert_rest_json_error(403, "MissingAuthenticationTokenException");
    // Forged (wrong secret).
    ws_connect(&presign(addr, &e.arn, "v1", "guessed", now))
        .await
        .expect_err("forged refused")
        .assert_rest_json_error(403, "InvalidSignatureException");
    // Stale: signed ten minutes ago, valid for one.
    ws_connect(&presign(
        addr,
        &e.arn,
        "v1",
        SECRET,
        now - Duration::from_secs(600),
    ))
    .await
    .expect_err("stale refused")
    .assert_rest_json_error(403, "InvalidSignatureException");
    // Tampered: a valid URL with the client id changed.
    let valid = presign(addr, &e.arn, "v1", SECRET, now);
    let tampered = valid.replace("X-Amz-ClientId=v1", "X-Amz-ClientId=v2");
    assert_ne!(tampered, valid);
    ws_connect(&tampered)
        .await
        .expect_err("tampered refused")
        .assert_rest_json_error(403, "InvalidSignatureException");
    // Validly signed, but for the other channel.
    ws_connect(&presign(addr, &e.other_arn, "v1", SECRET, now))
        .await
        .expect_err("other channel refused")
        .assert_rest_json_error(403, "AccessDeniedException");
    // A fresh, valid one connects and exchanges messages with the master (on the full edge).
    let mut viewer = ws_connect(&valid).await.expect("valid presigned URL");
    let full = e.full.local_addr().unwrap();
    // The master signs without a client id.
    let credentials = Credentials::new(KEY_ID, SECRET, None, None);
    let master_url = kvs_aws::presign_url(
        &credentials,
        "us-west-2",
        "kinesisvideo",
        now,
        &format!("ws://{full}/"),
        &[("X-Amz-ChannelARN", e.arn.as_str())],
        Duration::from_secs(60),
    )
    .unwrap();
    let mut master = ws_connect(&master_url)
        .await
        .expect("master on the full edge");
    for _ in 0..100 {
        if e.page.state().has_master(&e.arn) && e.page.state().viewer_count(&e.arn) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send_text(&mut viewer, offer(None, 100)).await;
    match next_seen(&mut master, Duration::from_secs(5)).await {
        Seen::Text(f) => assert_eq!(f["senderClientId"], "v1"),
        other => panic!("master: {other:?}"),
    }
    e.page.shutdown().await;
    e.full.shutdown().await;
}
