//! `WsSignalingClient` against a bare WebSocket server on loopback: keep-alive pings, frames on
//! the wire, malformed service frames, and the end of a connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kvs_signaling::codec::ClientFrame;
use kvs_signaling::{
    data_plane_url, IceServer, MessageKind, Role, SignalingClient, SignalingEvent,
    SignalingMessage, WsClientConfig, WsSignalingClient,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const ARN: &str = "arn:aws:kinesisvideo:us-west-2:000000000000:channel/t/1700000000000";

#[tokio::test]
async fn pings_frames_malformed_input_and_disconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // 1. A malformed frame, then a valid one: the client must skip the first only.
        ws.send(Message::Text("{not json".into())).await.unwrap();
        ws.send(Message::Text(
            r#"{"senderClientId":"v9","messageType":"SDP_OFFER","messagePayload":"eyJ0eXBlIjoib2ZmZXIiLCJzZHAiOiJ2PTAifQ=="}"#.into(),
        ))
        .await
        .unwrap();
        // 2. Wait for the client's answer and at least two keep-alive pings.
        let mut pings = 0;
        let mut answer = None;
        while pings < 2 || answer.is_none() {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Text(t)))) => answer = Some(t.to_string()),
                Ok(Some(Ok(_))) => {}
                other => panic!("server saw {other:?}"),
            }
        }
        // 3. Close: the client must report Disconnected.
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        answer.unwrap()
    });

    let mut config = WsClientConfig::new(
        data_plane_url(&format!("ws://{addr}"), ARN, &Role::Master).unwrap(),
        Role::Master,
    );
    config.ping_interval = Duration::from_millis(50);
    config.ice_servers = vec![IceServer::stun("stun:127.0.0.1:3478")];
    let client = WsSignalingClient::with_config(config);
    assert_eq!(
        client.ice_servers().await.unwrap(),
        vec![IceServer::stun("stun:127.0.0.1:3478")]
    );
    let mut link = client.connect().await.unwrap();

    let event = tokio::time::timeout(Duration::from_secs(5), link.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    let SignalingEvent::Message(offer) = event else {
        panic!("expected the valid offer, got {event:?}");
    };
    assert_eq!(offer.kind, MessageKind::Offer);
    assert_eq!(offer.peer_client_id.as_deref(), Some("v9"));

    // A master message without a recipient is skipped (logged), not sent, and the link lives on.
    link.outgoing
        .send(SignalingMessage::answer(None, "no recipient"))
        .await
        .unwrap();
    link.outgoing
        .send(SignalingMessage::answer(Some("v9".into()), "v=0 answer"))
        .await
        .unwrap();
    let answer = server.await.unwrap();
    let frame = ClientFrame::parse(answer.as_bytes()).unwrap();
    assert_eq!(frame.recipient_client_id.as_deref(), Some("v9"));
    assert_eq!(
        SignalingMessage::from_client_frame(&frame).unwrap(),
        SignalingMessage::answer(Some("v9".into()), "v=0 answer")
    );

    let event = tokio::time::timeout(Duration::from_secs(5), link.incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, SignalingEvent::Disconnected { .. }),
        "{event:?}"
    );
    // The link has ended: nothing more, and sending fails.
    assert!(link.incoming.recv().await.is_none());
    assert!(link
        .outgoing
        .send(SignalingMessage::answer("v9", "late"))
        .await
        .is_err());
}
