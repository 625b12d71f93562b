//! The local signaling service on a real loopback socket, driven by the real
//! `WsSignalingClient`: routing between a master and viewers, refusals, GO_AWAY on shutdown.
//! (These live here rather than in the service so the service does not depend on the clients.)

use std::time::Duration;

use kvs_signaling::{
    data_plane_url, IceCandidateInit, MessageKind, MessagePayload, Role, SignalingClient,
    SignalingError, SignalingEvent, SignalingLink, SignalingMessage, WsClientConfig,
    WsSignalingClient,
};
use kvs_signaling_service::{spawn, ServiceConfig, ServiceHandle};

async fn start(max_viewers: usize) -> (ServiceHandle, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ServiceConfig {
        max_viewers_per_channel: max_viewers,
        ..Default::default()
    };
    let service = spawn(listener, config, None);
    let channel = service.state().create_channel("e2e-channel").unwrap();
    (service, channel.arn)
}

fn client(service: &ServiceHandle, arn: &str, role: Role) -> WsSignalingClient {
    let url = data_plane_url(&service.ws_endpoint().unwrap(), arn, &role).unwrap();
    WsSignalingClient::with_config(WsClientConfig::new(url, role))
}

fn viewer(id: &str) -> Role {
    Role::Viewer {
        client_id: id.into(),
    }
}

async fn next_event(link: &mut SignalingLink) -> SignalingEvent {
    tokio::time::timeout(Duration::from_secs(5), link.incoming.recv())
        .await
        .expect("no signaling event within 5 s")
        .expect("event channel closed without Disconnected")
}

async fn next_message(link: &mut SignalingLink) -> SignalingMessage {
    match next_event(link).await {
        SignalingEvent::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn candidate(n: u32) -> IceCandidateInit {
    IceCandidateInit {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host",
            50000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

/// Waits until the service has registered `n` viewers (connects race the first message).
async fn wait_viewers(service: &ServiceHandle, arn: &str, n: usize) {
    for _ in 0..200 {
        if service.state().viewer_count(arn) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("service never saw {n} viewers");
}

#[tokio::test]
async fn master_and_two_viewers_exchange_offers_answers_and_candidates() {
    let (service, arn) = start(2).await;
    let mut master = client(&service, &arn, Role::Master)
        .connect()
        .await
        .unwrap();
    let mut v1 = client(&service, &arn, viewer("viewer-1"))
        .connect()
        .await
        .unwrap();
    let mut v2 = client(&service, &arn, viewer("viewer-2"))
        .connect()
        .await
        .unwrap();
    wait_viewers(&service, &arn, 2).await;
    assert!(service.state().has_master(&arn));

    // Viewer 1 offers; the master sees who sent it.
    v1.outgoing
        .send(SignalingMessage::offer(None, "v=0\r\no=viewer-1\r\n").with_correlation_id("1"))
        .await
        .unwrap();
    let offer = next_message(&mut master).await;
    assert_eq!(offer.kind, MessageKind::Offer);
    assert_eq!(offer.peer_client_id.as_deref(), Some("viewer-1"));
    assert_eq!(
        offer.payload,
        MessagePayload::Sdp("v=0\r\no=viewer-1\r\n".into())
    );

    // The master answers viewer 1 only; the answer carries no sender.
    master
        .outgoing
        .send(SignalingMessage::answer(
            Some("viewer-1".into()),
            "v=0\r\no=master\r\n",
        ))
        .await
        .unwrap();
    let answer = next_message(&mut v1).await;
    assert_eq!(answer.kind, MessageKind::Answer);
    assert_eq!(answer.peer_client_id, None);
    assert_eq!(
        answer.payload,
        MessagePayload::Sdp("v=0\r\no=master\r\n".into())
    );

    // Candidates both ways with viewer 2.
    v2.outgoing
        .send(SignalingMessage::ice_candidate(None, candidate(1)))
        .await
        .unwrap();
    let c = next_message(&mut master).await;
    assert_eq!(c.kind, MessageKind::IceCandidate);
    assert_eq!(c.peer_client_id.as_deref(), Some("viewer-2"));
    assert_eq!(c.payload, MessagePayload::Candidate(candidate(1)));
    master
        .outgoing
        .send(SignalingMessage::ice_candidate(
            Some("viewer-2".into()),
            candidate(2),
        ))
        .await
        .unwrap();
    let c = next_message(&mut v2).await;
    assert_eq!(c.payload, MessagePayload::Candidate(candidate(2)));
    assert_eq!(c.peer_client_id, None);

    // A master message without a recipient is refused by the client (logged, never sent).
    assert!(matches!(
        kvs_signaling::encode_outgoing(&Role::Master, &SignalingMessage::answer(None, "v=0")),
        Err(SignalingError::MissingRecipient)
    ));
    master
        .outgoing
        .send(SignalingMessage::answer(None, "v=0"))
        .await
        .unwrap();

    // An unknown recipient with a correlation id comes back as STATUS_RESPONSE.
    master
        .outgoing
        .send(SignalingMessage::answer(Some("ghost".into()), "v=0").with_correlation_id("77"))
        .await
        .unwrap();
    let status = next_message(&mut master).await;
    assert_eq!(status.kind, MessageKind::StatusResponse);
    assert_eq!(status.correlation_id.as_deref(), Some("77"));

    // Viewer 2 saw nothing meant for viewer 1.
    assert!(v2.incoming.try_recv().is_err());

    // A third viewer is refused with an HTTP error and a JSON message.
    match client(&service, &arn, viewer("viewer-3")).connect().await {
        Err(SignalingError::Refused { status, body, .. }) => {
            assert_eq!(status, 429);
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                json["message"].as_str().unwrap().contains("viewers"),
                "{body}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Shutdown: everyone gets GO_AWAY, then the link reports the disconnect.
    service.shutdown().await;
    for link in [&mut master, &mut v1, &mut v2] {
        assert_eq!(next_message(link).await.kind, MessageKind::GoAway);
        assert!(matches!(
            next_event(link).await,
            SignalingEvent::Disconnected { .. }
        ));
    }
}

#[tokio::test]
async fn newest_master_wins_and_unknown_channel_is_refused() {
    let (service, arn) = start(10).await;
    let mut old = client(&service, &arn, Role::Master)
        .connect()
        .await
        .unwrap();
    // Make sure the first master is registered before the second connects.
    for _ in 0..200 {
        if service.state().has_master(&arn) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut new = client(&service, &arn, Role::Master)
        .connect()
        .await
        .unwrap();
    match next_event(&mut old).await {
        SignalingEvent::Disconnected { reason } => assert!(reason.contains("replaced"), "{reason}"),
        other => panic!("expected the old master to be closed, got {other:?}"),
    }
    let v = client(&service, &arn, viewer("v")).connect().await.unwrap();
    v.outgoing
        .send(SignalingMessage::offer(None, "v=0"))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut new).await.peer_client_id.as_deref(),
        Some("v")
    );

    let bogus = "arn:aws:kinesisvideo:us-west-2:000000000000:channel/nope/1700000000000";
    match client(&service, bogus, Role::Master).connect().await {
        Err(SignalingError::Refused { status, .. }) => assert_eq!(status, 404),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(v);
    service.shutdown().await;
}

#[tokio::test]
async fn offer_sent_before_master_connects_is_delivered_on_connect() {
    let (service, arn) = start(10).await;
    let v = client(&service, &arn, viewer("early"))
        .connect()
        .await
        .unwrap();
    v.outgoing
        .send(SignalingMessage::offer(None, "v=0 early"))
        .await
        .unwrap();
    // Wait until the service has stored it.
    for _ in 0..500 {
        if service.state().pending_count(&arn) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(service.state().pending_count(&arn), 1);
    let mut master = client(&service, &arn, Role::Master)
        .connect()
        .await
        .unwrap();
    let offer = next_message(&mut master).await;
    assert_eq!(offer.peer_client_id.as_deref(), Some("early"));
    assert_eq!(offer.payload, MessagePayload::Sdp("v=0 early".into()));
    drop(v);
    service.shutdown().await;
}
