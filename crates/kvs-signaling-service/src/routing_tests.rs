use super::*;
use kvs_signaling_codec::{encode_payload, SdpPayload, SdpType, ServiceMessageType};
use std::time::Duration;

fn setup(config: ServiceConfig) -> (RoutingCore, String, Instant) {
    let mut core = RoutingCore::new(config);
    let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let info = core.create_channel("demo", t0).unwrap();
    (core, info.arn, Instant::now())
}

fn viewer(id: &str) -> ConnectRole {
    ConnectRole::Viewer {
        client_id: id.into(),
    }
}

fn offer_frame(recipient: Option<&str>, correlation: Option<&str>, sdp: &str) -> String {
    ClientFrame {
        action: Action::SdpOffer,
        recipient_client_id: recipient.map(Into::into),
        message_payload: encode_payload(&SdpPayload {
            sdp_type: SdpType::Offer,
            sdp: sdp.into(),
            error: None,
        }),
        correlation_id: correlation.map(Into::into),
    }
    .emit()
}

fn frame(action: Action, recipient: Option<&str>, correlation: Option<&str>) -> String {
    ClientFrame {
        action,
        recipient_client_id: recipient.map(Into::into),
        message_payload: "e30=".into(), // "{}"
        correlation_id: correlation.map(Into::into),
    }
    .emit()
}

fn drain(core: &mut RoutingCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn sent(out: &Output) -> (ConnectionId, ServiceFrame) {
    match out {
        Output::Send { to, text } => (*to, ServiceFrame::parse(text.as_bytes()).unwrap()),
        other => panic!("expected a send, got {other:?}"),
    }
}

#[test]
fn channel_arn_has_the_real_form() {
    let (core, arn, _) = setup(ServiceConfig::default());
    assert_eq!(
        arn,
        "arn:aws:kinesisvideo:us-west-2:000000000000:channel/demo/1700000000123"
    );
    assert_eq!(core.channel_by_name("demo").unwrap().arn, arn);
    assert_eq!(core.channel_by_arn(&arn).unwrap().name, "demo");
    let mut core = core;
    assert!(matches!(
        core.create_channel("demo", SystemTime::now()),
        Err(ChannelError::AlreadyExists(_))
    ));
    assert!(matches!(
        core.create_channel("bad name", SystemTime::now()),
        Err(ChannelError::InvalidName(_))
    ));
}

#[test]
fn viewer_to_master_gets_sender_id_and_master_to_viewer_has_none() {
    let (mut core, arn, now) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, now).unwrap();
    let v1 = core.connect(&arn, viewer("v1"), now).unwrap();
    let v2 = core.connect(&arn, viewer("v2"), now).unwrap();
    assert!(drain(&mut core).is_empty());

    // The viewer's recipient ("ProducerMaster", as the C viewer sends) is ignored.
    core.handle_frame(
        v1,
        offer_frame(Some("ProducerMaster"), None, "o1").as_bytes(),
        now,
    );
    let out = drain(&mut core);
    assert_eq!(out.len(), 1);
    let (to, f) = sent(&out[0]);
    assert_eq!(to, master);
    assert_eq!(f.message_type, ServiceMessageType::SdpOffer);
    assert_eq!(f.sender_client_id.as_deref(), Some("v1"));

    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("v2"), None).as_bytes(),
        now,
    );
    let out = drain(&mut core);
    let (to, f) = sent(&out[0]);
    assert_eq!(to, v2);
    assert_eq!(f.message_type, ServiceMessageType::SdpAnswer);
    assert_eq!(f.sender_client_id, None);
    assert_eq!(f.message_payload.as_deref(), Some("e30="));
}

#[test]
fn newest_master_wins() {
    let (mut core, arn, now) = setup(ServiceConfig::default());
    let old = core.connect(&arn, ConnectRole::Master, now).unwrap();
    let new = core.connect(&arn, ConnectRole::Master, now).unwrap();
    let out = drain(&mut core);
    assert!(matches!(&out[..], [Output::Close { conn, .. }] if *conn == old));
    // The old connection's late frames and disconnect change nothing.
    core.handle_frame(
        old,
        frame(Action::SdpAnswer, Some("v1"), Some("c")).as_bytes(),
        now,
    );
    assert!(drain(&mut core).is_empty());
    core.disconnect(old, now);
    assert!(core.has_master(&arn));
    let v = core.connect(&arn, viewer("v1"), now).unwrap();
    core.handle_frame(v, frame(Action::IceCandidate, None, None).as_bytes(), now);
    assert_eq!(sent(&drain(&mut core)[0]).0, new);
    core.disconnect(new, now);
    assert!(!core.has_master(&arn));
}

#[test]
fn same_viewer_id_replaces_old_connection() {
    let (mut core, arn, now) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, now).unwrap();
    let old = core.connect(&arn, viewer("v1"), now).unwrap();
    let new = core.connect(&arn, viewer("v1"), now).unwrap();
    assert!(matches!(&drain(&mut core)[..], [Output::Close { conn, .. }] if *conn == old));
    assert_eq!(core.viewer_count(&arn), 1);
    core.disconnect(old, now);
    assert_eq!(core.viewer_count(&arn), 1);
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("v1"), None).as_bytes(),
        now,
    );
    assert_eq!(sent(&drain(&mut core)[0]).0, new);
}

#[test]
fn viewer_limit_refuses_new_ids_but_not_reconnects() {
    let config = ServiceConfig {
        max_viewers_per_channel: 2,
        ..Default::default()
    };
    let (mut core, arn, now) = setup(config);
    core.connect(&arn, viewer("a"), now).unwrap();
    let b = core.connect(&arn, viewer("b"), now).unwrap();
    assert_eq!(
        core.connect(&arn, viewer("c"), now),
        Err(ConnectError::ViewerLimit { limit: 2 })
    );
    // An existing id may reconnect; the master is not a viewer.
    core.connect(&arn, viewer("a"), now).unwrap();
    core.connect(&arn, ConnectRole::Master, now).unwrap();
    core.disconnect(b, now);
    core.connect(&arn, viewer("c"), now).unwrap();
    assert_eq!(core.viewer_count(&arn), 2);
}

#[test]
fn connect_refusals() {
    let (mut core, arn, now) = setup(ServiceConfig::default());
    assert!(matches!(
        core.connect(
            "arn:aws:kinesisvideo:us-west-2:000000000000:channel/x/1",
            ConnectRole::Master,
            now
        ),
        Err(ConnectError::UnknownChannel(_))
    ));
    assert!(matches!(
        core.connect(&arn, viewer("AWS_sneaky"), now),
        Err(ConnectError::InvalidClientId(_))
    ));
}

#[test]
fn messages_for_absent_master_are_stored_until_ttl() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    core.handle_frame(v, offer_frame(None, None, "o1").as_bytes(), t0);
    core.handle_frame(v, frame(Action::IceCandidate, None, None).as_bytes(), t0);
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.pending_count(&arn), 2);

    let master = core
        .connect(&arn, ConnectRole::Master, t0 + Duration::from_secs(59))
        .unwrap();
    let out = drain(&mut core);
    assert_eq!(out.len(), 2);
    let (to, f) = sent(&out[0]);
    assert_eq!((to, f.message_type), (master, ServiceMessageType::SdpOffer));
    assert_eq!(f.sender_client_id.as_deref(), Some("v1"));
    assert_eq!(
        sent(&out[1]).1.message_type,
        ServiceMessageType::IceCandidate
    );
    assert_eq!(core.pending_count(&arn), 0);
}

#[test]
fn stored_messages_expire_after_ttl() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    core.handle_frame(v, offer_frame(None, None, "o1").as_bytes(), t0);
    core.connect(&arn, ConnectRole::Master, t0 + Duration::from_secs(61))
        .unwrap();
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.pending_count(&arn), 0);
}

#[test]
fn newer_offer_replaces_older_undelivered_one() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let v1 = core.connect(&arn, viewer("v1"), t0).unwrap();
    let v2 = core.connect(&arn, viewer("v2"), t0).unwrap();
    core.handle_frame(v1, offer_frame(None, None, "first").as_bytes(), t0);
    core.handle_frame(v1, frame(Action::IceCandidate, None, None).as_bytes(), t0);
    core.handle_frame(v2, offer_frame(None, None, "other viewer").as_bytes(), t0);
    core.handle_frame(v1, offer_frame(None, None, "second").as_bytes(), t0);
    assert_eq!(core.pending_count(&arn), 2);
    core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let sdps: Vec<(Option<String>, String)> = drain(&mut core)
        .iter()
        .map(|o| {
            let f = sent(o).1;
            let p: SdpPayload =
                kvs_signaling_codec::decode_payload(f.message_payload.as_deref().unwrap()).unwrap();
            (f.sender_client_id, p.sdp)
        })
        .collect();
    assert_eq!(
        sdps,
        vec![
            (Some("v2".into()), "other viewer".into()),
            (Some("v1".into()), "second".into())
        ]
    );
}

#[test]
fn master_messages_to_recently_seen_viewer_are_stored() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    core.disconnect(v, t0);
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("v1"), Some("c1")).as_bytes(),
        t0,
    );
    assert!(drain(&mut core).is_empty());
    let v = core
        .connect(&arn, viewer("v1"), t0 + Duration::from_secs(10))
        .unwrap();
    let out = drain(&mut core);
    assert_eq!(sent(&out[0]).0, v);
}

#[test]
fn status_responses_only_on_failure_with_correlation_id() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();

    // Success: nothing back to the sender even with a correlation id.
    core.handle_frame(v, frame(Action::SdpOffer, None, Some("ok")).as_bytes(), t0);
    let out = drain(&mut core);
    assert_eq!(out.len(), 1);
    assert_eq!(sent(&out[0]).0, master);

    let expect_status = |core: &mut RoutingCore, to: ConnectionId, cid: &str, code: &str| {
        let out = drain(core);
        assert_eq!(out.len(), 1, "{out:?}");
        let (dest, f) = sent(&out[0]);
        assert_eq!(dest, to);
        assert_eq!(f.message_type, ServiceMessageType::StatusResponse);
        let s = f.status_response.unwrap();
        assert_eq!(s.correlation_id.as_deref(), Some(cid));
        assert_eq!(s.status_code, code);
        assert!(!s.success);
    };

    // Unknown recipient.
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("nobody"), Some("c1")).as_bytes(),
        t0,
    );
    expect_status(&mut core, master, "c1", "404");
    // Missing recipient from a master.
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, None, Some("c2")).as_bytes(),
        t0,
    );
    expect_status(&mut core, master, "c2", "400");
    // Bad frame with a salvageable correlation id.
    core.handle_frame(
        v,
        br#"{"action":"NOPE","messagePayload":"e30=","correlationId":"c3"}"#,
        t0,
    );
    expect_status(&mut core, v, "c3", "400");
    // Payload too large.
    let big = ClientFrame {
        action: Action::SdpOffer,
        recipient_client_id: None,
        message_payload: "QUFB".repeat(3500), // 10_500 bytes decoded
        correlation_id: Some("c4".into()),
    };
    core.handle_frame(v, big.emit().as_bytes(), t0);
    expect_status(&mut core, v, "c4", "400");

    // The same failures without a correlation id are silent.
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("nobody"), None).as_bytes(),
        t0,
    );
    core.handle_frame(master, frame(Action::SdpAnswer, None, None).as_bytes(), t0);
    core.handle_frame(v, b"garbage", t0);
    assert!(drain(&mut core).is_empty());
}

#[test]
fn configured_payload_limit_is_enforced() {
    let config = ServiceConfig {
        max_payload_bytes: 100,
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    core.handle_frame(
        v,
        offer_frame(None, Some("c"), &"x".repeat(200)).as_bytes(),
        t0,
    );
    let (to, f) = sent(&drain(&mut core)[0]);
    assert_eq!(to, v);
    assert_eq!(f.message_type, ServiceMessageType::StatusResponse);
    core.handle_frame(v, offer_frame(None, Some("c"), "small").as_bytes(), t0);
    assert_eq!(sent(&drain(&mut core)[0]).0, master);
}

#[test]
fn payload_limit_counts_padding_exactly() {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine as _;
    // The service default (the KVS limit) and a configured one; both are 1 more than a
    // multiple of 3, so the padded payload at the limit ends in "==".
    for limit in [kvs_signaling_codec::MAX_PAYLOAD_BYTES, 100] {
        let config = ServiceConfig {
            max_payload_bytes: limit,
            ..Default::default()
        };
        let (mut core, arn, t0) = setup(config);
        let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
        let v = core.connect(&arn, viewer("v1"), t0).unwrap();
        for engine in [STANDARD, STANDARD_NO_PAD] {
            let candidate = |len: usize| {
                ClientFrame {
                    action: Action::IceCandidate,
                    recipient_client_id: None,
                    message_payload: engine.encode(vec![b'x'; len]),
                    correlation_id: Some("c".into()),
                }
                .emit()
            };
            core.handle_frame(v, candidate(limit).as_bytes(), t0);
            let out = drain(&mut core);
            assert_eq!(out.len(), 1, "{out:?}");
            let (to, f) = sent(&out[0]);
            assert_eq!(to, master, "limit {limit}");
            assert_eq!(f.message_type, ServiceMessageType::IceCandidate);

            core.handle_frame(v, candidate(limit + 1).as_bytes(), t0);
            let out = drain(&mut core);
            assert_eq!(out.len(), 1, "{out:?}");
            let (to, f) = sent(&out[0]);
            assert_eq!(to, v, "limit {limit}");
            assert_eq!(f.message_type, ServiceMessageType::StatusResponse);
            assert_eq!(f.status_response.unwrap().status_code, "400");
        }
    }
}

#[test]
fn per_recipient_store_is_bounded() {
    let config = ServiceConfig {
        max_pending_per_recipient: 3,
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    for i in 0..5 {
        let cid = format!("c{i}");
        core.handle_frame(
            v,
            frame(Action::IceCandidate, None, Some(&cid)).as_bytes(),
            t0,
        );
    }
    assert_eq!(core.pending_count(&arn), 3);
    let out = drain(&mut core);
    assert_eq!(out.len(), 2);
    assert_eq!(sent(&out[0]).1.status_response.unwrap().status_code, "429");
}

#[test]
fn shutdown_sends_go_away_to_everyone_and_refuses_new_connections() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    core.shutdown();
    let out = drain(&mut core);
    assert_eq!(out.len(), 4);
    for (i, conn) in [master, v].into_iter().enumerate() {
        let (to, f) = sent(&out[2 * i]);
        assert_eq!((to, f.message_type), (conn, ServiceMessageType::GoAway));
        assert!(matches!(&out[2 * i + 1], Output::Close { conn: c, .. } if *c == conn));
    }
    assert_eq!(
        core.connect(&arn, ConnectRole::Master, t0),
        Err(ConnectError::ShuttingDown)
    );
}

#[test]
fn go_away_to_one_connection_closes_it_and_a_new_master_connects() {
    let (mut core, arn, t0) = setup(ServiceConfig::default());
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    assert!(core.go_away(master, "key revoked", t0));
    let out = drain(&mut core);
    assert_eq!(out.len(), 2);
    let (to, f) = sent(&out[0]);
    assert_eq!((to, f.message_type), (master, ServiceMessageType::GoAway));
    assert!(matches!(&out[1], Output::Close { conn, .. } if *conn == master));
    assert!(!core.has_master(&arn), "the master is forgotten at once");
    assert!(!core.go_away(master, "again", t0), "an unknown connection");
    // The viewer is untouched; a message for the absent master is stored, and delivered to
    // the master that reconnects.
    core.handle_frame(v, offer_frame(None, None, "sdp").as_bytes(), t0);
    assert!(drain(&mut core).is_empty());
    let again = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let out = drain(&mut core);
    assert_eq!(out.len(), 1);
    assert_eq!(sent(&out[0]).0, again);
}

// ---- limits (virtual time) ----------------------------------------------------------------

use crate::ratelimit::RateLimit;

fn status_of(out: &Output) -> (ConnectionId, StatusResponse) {
    let (to, f) = sent(out);
    assert_eq!(
        f.message_type,
        ServiceMessageType::StatusResponse,
        "{out:?}"
    );
    (to, f.status_response.unwrap())
}

#[test]
fn sdp_and_ice_rates_are_enforced_per_connection() {
    let config = ServiceConfig {
        sdp_rate: Some(RateLimit::new(5, 10)),
        ice_rate: Some(RateLimit::new(20, 40)),
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let v = core.connect(&arn, viewer("v1"), t0).unwrap();
    let other = core.connect(&arn, viewer("v2"), t0).unwrap();

    // The burst of 10 offers goes through; the 11th is refused to the sender, not forwarded.
    for i in 0..10 {
        core.handle_frame(
            v,
            offer_frame(None, Some(&format!("o{i}")), "o").as_bytes(),
            t0,
        );
        let out = drain(&mut core);
        assert_eq!(sent(&out[0]).0, master, "offer {i}");
        core.frame_sent(master);
    }
    core.handle_frame(v, offer_frame(None, Some("o10"), "o").as_bytes(), t0);
    let out = drain(&mut core);
    assert_eq!(out.len(), 1, "{out:?}");
    let (to, s) = status_of(&out[0]);
    assert_eq!(to, v);
    assert_eq!(s.correlation_id.as_deref(), Some("o10"));
    assert_eq!(s.error_type, "ClientLimitExceededException");
    assert_eq!(s.status_code, "429");
    // Without a correlation id the refusal is silent.
    core.handle_frame(v, offer_frame(None, None, "o").as_bytes(), t0);
    assert!(drain(&mut core).is_empty());
    // Answers count as SDP too; another connection has its own allowance.
    core.handle_frame(other, offer_frame(None, None, "o").as_bytes(), t0);
    assert_eq!(sent(&drain(&mut core)[0]).0, master);
    core.frame_sent(master);
    // ICE candidates have their own bucket: 40 at once still pass after the SDP refusals.
    for _ in 0..40 {
        core.handle_frame(v, frame(Action::IceCandidate, None, None).as_bytes(), t0);
        assert_eq!(sent(&drain(&mut core)[0]).0, master);
        core.frame_sent(master);
    }
    core.handle_frame(
        v,
        frame(Action::IceCandidate, None, Some("c")).as_bytes(),
        t0,
    );
    assert_eq!(status_of(&drain(&mut core)[0]).1.status_code, "429");
    // 5 per second: 200 ms later exactly one more offer.
    let t1 = t0 + Duration::from_millis(200);
    core.handle_frame(v, offer_frame(None, None, "o").as_bytes(), t1);
    assert_eq!(sent(&drain(&mut core)[0]).0, master);
    core.frame_sent(master);
    core.handle_frame(v, offer_frame(None, Some("x"), "o").as_bytes(), t1);
    assert_eq!(status_of(&drain(&mut core)[0]).0, v);
}

#[test]
fn a_sender_that_keeps_flooding_is_closed() {
    let config = ServiceConfig {
        sdp_rate: Some(RateLimit::new(5, 5)),
        flood_limit: Some(RateLimit::new(1, 20)),
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let flooder = core.connect(&arn, viewer("flood"), t0).unwrap();
    let mut forwarded = 0;
    let mut closed_after = None;
    for i in 0..100 {
        core.handle_frame(flooder, offer_frame(None, None, "o").as_bytes(), t0);
        for out in drain(&mut core) {
            match out {
                Output::Send { to, .. } if to == master => {
                    forwarded += 1;
                    core.frame_sent(master);
                }
                Output::Close { conn, reason } => {
                    assert_eq!(conn, flooder);
                    assert!(reason.contains("flooding"), "{reason}");
                    closed_after = Some(i);
                }
                other => panic!("{other:?}"),
            }
        }
        if closed_after.is_some() {
            break;
        }
    }
    assert_eq!(forwarded, 5);
    // 5 allowed, then 20 refusals of allowance, the 21st refusal closes it.
    assert_eq!(closed_after, Some(5 + 20));
    assert_eq!(core.viewer_count(&arn), 0);
    // Its late frames change nothing; the master was never touched.
    core.handle_frame(flooder, offer_frame(None, None, "o").as_bytes(), t0);
    assert!(drain(&mut core).is_empty());
    assert!(core.has_master(&arn));
}

#[test]
fn one_sender_gets_only_its_share_of_a_recipients_queue() {
    let config = ServiceConfig {
        sdp_rate: None,
        ice_rate: None,
        flood_limit: None,
        connection_queue: 4,
        max_queued_per_sender: 2,
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    let a = core.connect(&arn, viewer("a"), t0).unwrap();
    let b = core.connect(&arn, viewer("b"), t0).unwrap();
    let c = core.connect(&arn, viewer("c"), t0).unwrap();
    let ice = |cid: &str| frame(Action::IceCandidate, None, Some(cid));
    let deliver = |core: &mut RoutingCore, from, cid: &str| {
        core.handle_frame(from, ice(cid).as_bytes(), t0);
        drain(core)
    };
    // The master reads nothing for now. A's share is 2.
    assert_eq!(sent(&deliver(&mut core, a, "a1")[0]).0, master);
    assert_eq!(sent(&deliver(&mut core, a, "a2")[0]).0, master);
    let out = deliver(&mut core, a, "a3");
    let (to, s) = status_of(&out[0]);
    assert_eq!((to, s.status_code.as_str()), (a, "429"));
    // B still gets in, up to the queue's capacity of 4.
    assert_eq!(sent(&deliver(&mut core, b, "b1")[0]).0, master);
    assert_eq!(sent(&deliver(&mut core, b, "b2")[0]).0, master);
    assert_eq!(core.queued_frames(master), 4);
    // A full queue refuses the sender; the recipient is not dropped for it.
    let out = deliver(&mut core, c, "c1");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(status_of(&out[0]).0, c);
    assert!(core.has_master(&arn));
    // As the master's frames are written, room comes back (A's first two went first).
    core.frame_sent(master);
    core.frame_sent(master);
    assert_eq!(sent(&deliver(&mut core, a, "a4")[0]).0, master);
    assert_eq!(sent(&deliver(&mut core, c, "c2")[0]).0, master);
}

#[test]
fn a_connection_that_does_not_read_its_status_responses_is_closed() {
    let config = ServiceConfig {
        flood_limit: None,
        connection_queue: 2,
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    let master = core.connect(&arn, ConnectRole::Master, t0).unwrap();
    // Two refusals fill its queue (nothing is written: it does not read); the third closes it.
    for cid in ["1", "2"] {
        core.handle_frame(
            master,
            frame(Action::SdpAnswer, Some("nobody"), Some(cid)).as_bytes(),
            t0,
        );
        assert_eq!(status_of(&drain(&mut core)[0]).0, master);
    }
    core.handle_frame(
        master,
        frame(Action::SdpAnswer, Some("nobody"), Some("3")).as_bytes(),
        t0,
    );
    let out = drain(&mut core);
    assert!(
        matches!(&out[..], [Output::Close { conn, reason }] if *conn == master && reason.contains("status responses")),
        "{out:?}"
    );
    assert!(!core.has_master(&arn));
}

#[test]
fn connects_per_channel_are_rate_limited_in_virtual_time() {
    let config = ServiceConfig {
        connect_rate: Some(RateLimit::new(3, 3)),
        ..Default::default()
    };
    let (mut core, arn, t0) = setup(config);
    for id in ["a", "b", "c"] {
        core.connect(&arn, viewer(id), t0).unwrap();
    }
    assert_eq!(
        core.connect(&arn, viewer("d"), t0),
        Err(ConnectError::RateLimited { per_second: 3 })
    );
    // Refused connects did not use up anything; a third of a second later one more fits.
    let t1 = t0 + Duration::from_millis(334);
    core.connect(&arn, ConnectRole::Master, t1).unwrap();
    assert!(core.connect(&arn, viewer("d"), t1).is_err());
    // Another channel has its own allowance.
    let other = core.create_channel("other", SystemTime::now()).unwrap().arn;
    core.connect(&other, ConnectRole::Master, t1).unwrap();
}

#[test]
fn channels_are_capped_but_restored_ones_are_kept() {
    let config = ServiceConfig {
        max_channels: 2,
        ..Default::default()
    };
    let (mut core, _, _) = setup(config);
    core.create_channel("b", SystemTime::now()).unwrap();
    assert_eq!(
        core.create_channel("c", SystemTime::now()),
        Err(ChannelError::LimitExceeded { limit: 2 })
    );
    // Channels saved before a lowered limit are not lost on restart.
    let mut info = core.channel_by_name("b").unwrap();
    info.name = "restored".into();
    info.arn = info.arn.replace("/b/", "/restored/");
    core.restore_channel(info).unwrap();
    assert_eq!(core.channels().len(), 3);
}
