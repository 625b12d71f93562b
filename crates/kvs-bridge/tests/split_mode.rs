//! Both state machines back to back through the real framing, in virtual time: the wake
//! handshake, queueing and refusals, the wedge regression, heartbeats, sleep, commands, ICE
//! servers, and a corrupting link.

mod common;

use std::time::Instant;

use common::{ms, secs, Harness, Rng, MS};
use kvs_bridge::frame::{Deframer, DeframerConfig, Framer, DEFAULT_MAX_MESSAGE};
use kvs_bridge::{
    CandidateMessage, Command, CommandDone, CommandError, CommandKind, CommandResponse,
    CommandValue, ControlSetting, CorrelationId, IceCandidate, IceServer, MediaConfig, MediaOutput,
    MediaPhase, MediaPresence, MediaSideCore, Message, MessageError, MessageType, PeerId,
    RefusalReason, RelayConfig, RelayOutput, RelayState, RespondError, SdpMessage,
    SignalingSideCore, Status, ViewerMessage,
};

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn offer(p: &str, n: u32) -> ViewerMessage {
    ViewerMessage::Offer(SdpMessage {
        peer: peer(p),
        correlation_id: CorrelationId::new(format!("corr-{n}")).unwrap(),
        sdp: format!("offer {n}"),
    })
}

fn cand(p: &str, n: u32) -> ViewerMessage {
    ViewerMessage::IceCandidate(CandidateMessage {
        peer: peer(p),
        correlation_id: CorrelationId::none(),
        candidate: IceCandidate {
            candidate: format!("candidate {n}"),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        },
    })
}

/// What the media application saw, as short strings in order.
fn media_view(events: &[MediaOutput]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            MediaOutput::Offer(m) => Some(format!("{} {}", m.peer, m.sdp)),
            MediaOutput::IceCandidate(m) => Some(format!("{} {}", m.peer, m.candidate.candidate)),
            MediaOutput::TriggerOffer(m) => Some(format!("{} trigger", m.peer)),
            MediaOutput::IceServers(list) => Some(format!("ice {}", list.len())),
            _ => None,
        })
        .collect()
}

fn refusals(events: &[RelayOutput]) -> Vec<(String, RefusalReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            RelayOutput::Refuse(r) => Some((r.peer.to_string(), r.reason.clone())),
            _ => None,
        })
        .collect()
}

fn count_wakes(events: &[RelayOutput]) -> usize {
    events.iter().filter(|e| **e == RelayOutput::Wake).count()
}

fn viewer(h: &mut Harness, m: ViewerMessage) {
    let now = h.now;
    h.relay.handle_viewer(now, m);
    h.pump();
}

/// Media booted and handler ready at the current time.
fn media_up(h: &mut Harness) {
    h.boot_media();
    h.set_handler_ready();
}

#[test]
fn boot_asks_without_waking_and_a_media_side_announces_itself() {
    let mut h = Harness::default_config();
    assert_eq!(h.relay.state(), RelayState::WaitingForWakeup);
    assert_eq!(h.relay.stats().ready_queries, 1, "ReadyQuery at boot");
    assert!(h.take_relay_events().is_empty(), "no Wake at boot");
    h.advance_to(ms(50));
    media_up(&mut h);
    assert_eq!(h.relay.state(), RelayState::Ready);
    assert_eq!(
        h.take_relay_events(),
        vec![
            RelayOutput::StateChanged(RelayState::Ready),
            RelayOutput::MediaStatus(MediaPresence::Awake { viewers: 0 }),
        ]
    );
}

#[test]
fn offer_before_the_media_side_is_awake_wakes_queues_and_flushes_in_order() {
    let mut h = Harness::default_config();
    h.advance_to(ms(100));
    viewer(&mut h, offer("A", 1));
    viewer(&mut h, cand("A", 2));
    viewer(&mut h, cand("A", 3));
    viewer(&mut h, offer("B", 4));
    viewer(&mut h, cand("B", 5));
    let events = h.take_relay_events();
    assert_eq!(events, vec![RelayOutput::Wake], "one Wake per attempt");
    assert_eq!(h.relay.queued(), 5);
    assert_eq!(h.relay.stats().ready_queries, 2, "boot + wake");

    // The process starts; the retried ReadyQuery (at 600 ms) reaches it before its handler
    // is registered and is not answered.
    h.advance_to(ms(400));
    h.boot_media();
    h.advance_to(ms(700));
    assert_eq!(h.relay.stats().ready_queries, 3);
    assert_eq!(h.media().stats().ready_queries_unanswered, 1);
    assert!(h.take_media_events().is_empty());
    assert_eq!(h.relay.state(), RelayState::WaitingForWakeup);

    h.advance_to(ms(900));
    h.set_handler_ready();
    assert_eq!(h.relay.state(), RelayState::Ready);
    assert_eq!(
        media_view(&h.take_media_events()),
        [
            "A offer 1",
            "A candidate 2",
            "A candidate 3",
            "B offer 4",
            "B candidate 5"
        ]
    );
    assert_eq!(h.relay.queued(), 0);
    assert!(!h.relay.is_waking());
    assert!(refusals(&h.take_relay_events()).is_empty());

    // Ready: straight through, no wake.
    viewer(&mut h, cand("B", 6));
    assert_eq!(media_view(&h.take_media_events()), ["B candidate 6"]);
    assert_eq!(count_wakes(&h.take_relay_events()), 0);

    // The media side answers; the answer and candidates go out through KVS.
    let now = h.now;
    h.media()
        .send_answer(
            now,
            SdpMessage {
                peer: peer("A"),
                correlation_id: CorrelationId::none(),
                sdp: "answer".into(),
            },
        )
        .unwrap();
    h.pump();
    assert!(matches!(
        h.take_relay_events().as_slice(),
        [RelayOutput::Answer(a)] if a.sdp == "answer" && a.peer.as_str() == "A"
    ));
}

#[test]
fn wedge_regression_no_offer_reaches_the_application_before_its_handler() {
    let mut h = Harness::default_config();
    h.boot_media(); // connected, handler not registered yet
    h.advance_to(ms(10));
    viewer(&mut h, offer("A", 1));
    h.advance_to(ms(1800));
    // Every ReadyQuery arrived and none was answered.
    assert_eq!(h.media().stats().ready_queries_unanswered, 4);
    assert_eq!(h.relay.state(), RelayState::WaitingForWakeup);

    // A signaling side that is confused (thinks the media side is ready) sends an offer
    // anyway: it is refused, not dropped, and not delivered.
    let mut stray = Vec::new();
    let msg = Message::Offer(SdpMessage {
        peer: peer("Z"),
        correlation_id: CorrelationId::none(),
        sdp: "stray".into(),
    });
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&msg.to_bytes(), &mut stray)
        .unwrap();
    let now = h.now;
    h.media().handle_link_bytes(now, &stray);
    h.pump();
    assert_eq!(
        refusals(&h.take_relay_events()),
        vec![(
            "Z".to_string(),
            RefusalReason::Media {
                code: Status::NOT_READY,
                reason: "camera is starting".into()
            }
        )]
    );

    let ready_at = h.at();
    h.set_handler_ready();
    let offers: Vec<_> = h
        .media_events
        .iter()
        .filter(|(_, e)| matches!(e, MediaOutput::Offer(_)))
        .collect();
    assert_eq!(offers.len(), 1, "A's offer, once, and not Z's");
    assert!(offers.iter().all(|(at, _)| *at >= ready_at));
    assert_eq!(media_view(&h.take_media_events()), ["A offer 1"]);
}

#[test]
fn ready_too_late_refuses_pending_viewers_and_the_next_offer_wakes_again() {
    let mut h = Harness::default_config();
    viewer(&mut h, offer("A", 1));
    viewer(&mut h, cand("A", 2));
    viewer(&mut h, offer("B", 3));
    h.advance_to(ms(1999));
    assert!(refusals(
        &h.relay_events
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
    )
    .is_empty());
    h.advance_to(secs(2));
    let events = h.take_relay_events();
    let budget = secs(2);
    assert_eq!(
        refusals(&events),
        vec![
            ("A".to_string(), RefusalReason::WakeTimeout { budget }),
            ("B".to_string(), RefusalReason::WakeTimeout { budget }),
        ]
    );
    let RelayOutput::Refuse(r) = events
        .iter()
        .find(|e| matches!(e, RelayOutput::Refuse(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        r.correlation_id.as_str(),
        "corr-1",
        "the offer's correlation id"
    );
    assert_eq!(r.reason.status(), Status::UNAVAILABLE);
    assert_eq!(
        r.reason.to_string(),
        "camera did not wake up within 2000 ms"
    );
    assert_eq!(h.relay.queued(), 0);
    assert!(!h.relay.is_waking());
    // Boot, wake, and retries at 0.5, 1.0 and 1.5 s.
    assert_eq!(h.relay.stats().ready_queries, 5);

    h.advance_to(secs(3));
    viewer(&mut h, offer("C", 4));
    assert_eq!(count_wakes(&h.take_relay_events()), 1);
    assert_eq!(h.relay.stats().wakes, 2);
    h.advance_to(ms(3300));
    media_up(&mut h);
    assert_eq!(media_view(&h.take_media_events()), ["C offer 4"]);
}

#[test]
fn a_ready_after_the_budget_delivers_nothing_refused() {
    let mut h = Harness::default_config();
    viewer(&mut h, offer("A", 1));
    h.advance_to(secs(1));
    h.boot_media();
    h.advance_to(ms(2500));
    h.set_handler_ready();
    assert_eq!(h.relay.state(), RelayState::Ready);
    assert_eq!(refusals(&h.take_relay_events()).len(), 1);
    assert!(media_view(&h.take_media_events()).is_empty());
}

#[test]
fn queue_overflow_refuses_the_viewer_instead_of_dropping() {
    let mut h = Harness::default_config();
    viewer(&mut h, offer("B", 100));
    viewer(&mut h, cand("B", 101));
    viewer(&mut h, offer("A", 0));
    for n in 1..24 {
        viewer(&mut h, cand("A", n));
    }
    assert_eq!(h.relay.queued(), 2 + 24);
    assert!(refusals(&h.take_relay_events()).is_empty());
    viewer(&mut h, cand("A", 24));
    assert_eq!(
        refusals(&h.take_relay_events()),
        vec![("A".to_string(), RefusalReason::QueueFull { limit: 24 })]
    );
    assert_eq!(h.relay.queued(), 2, "A's messages are gone, B's kept");
    viewer(&mut h, cand("A", 25));
    assert_eq!(h.relay.stats().dropped_without_offer, 1);
    media_up(&mut h);
    assert_eq!(
        media_view(&h.take_media_events()),
        ["B offer 100", "B candidate 101"]
    );
}

#[test]
fn too_many_pending_viewers_are_refused_and_a_reoffer_replaces_the_held_one() {
    let config = RelayConfig {
        max_pending_viewers: 2,
        ..RelayConfig::default()
    };
    let mut h = Harness::new(config, MediaConfig::default());
    viewer(&mut h, offer("A", 1));
    viewer(&mut h, cand("A", 2));
    viewer(&mut h, offer("B", 3));
    viewer(&mut h, offer("C", 4));
    assert_eq!(
        refusals(&h.take_relay_events()),
        vec![(
            "C".to_string(),
            RefusalReason::TooManyPendingViewers { limit: 2 }
        )]
    );
    viewer(&mut h, offer("A", 5));
    assert_eq!(h.relay.stats().superseded, 2);
    media_up(&mut h);
    assert_eq!(
        media_view(&h.take_media_events()),
        ["B offer 3", "A offer 5"]
    );
}

#[test]
fn heartbeat_loss_is_detected_at_exactly_fifteen_seconds() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    h.media().viewer_joined(now); // keep it awake
    h.pump();
    h.advance_to(secs(7));
    assert_eq!(h.relay.state(), RelayState::Ready);
    // Both sides heard each other's heartbeat at 5 s; then the wire is cut.
    h.link_up = false;
    h.take_relay_events();
    h.advance_to(secs(20) - MS);
    assert_eq!(h.relay.state(), RelayState::Ready);
    assert!(h.take_media_events().is_empty());
    h.advance_to(secs(20));
    assert_eq!(h.relay.state(), RelayState::WaitingForWakeup);
    assert_eq!(
        h.take_relay_events(),
        vec![
            RelayOutput::StateChanged(RelayState::WaitingForWakeup),
            RelayOutput::MediaStatus(MediaPresence::Gone),
        ]
    );
    assert_eq!(h.take_media_events(), vec![MediaOutput::SignalingLost]);
    assert_eq!(h.relay.stats().media_lost, 1);

    // The wire comes back: the media side's next heartbeat (25 s) makes the signaling side
    // ask, and the Ready brings both back in step without a wake.
    h.advance_to(secs(21));
    h.link_up = true;
    h.advance_to(secs(25));
    assert_eq!(h.relay.state(), RelayState::Ready);
    let events = h.take_relay_events();
    assert!(events.contains(&RelayOutput::StateChanged(RelayState::Ready)));
    assert_eq!(count_wakes(&events), 0);
    assert!(h.take_media_events().contains(&MediaOutput::SignalingBack));
}

#[test]
fn media_side_sleeps_at_exactly_twenty_seconds_idle() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(20) - MS);
    assert_eq!(h.media().phase(), MediaPhase::Awake);
    h.take_relay_events();
    h.advance_to(secs(20));
    assert!(h.media.is_none(), "powered down");
    assert_eq!(
        h.media_events.last().map(|(at, e)| (*at, e.clone())),
        Some((secs(20), MediaOutput::Sleep))
    );
    // The announcement went out before the Sleep output.
    assert_eq!(
        h.take_relay_events(),
        vec![
            RelayOutput::StateChanged(RelayState::WaitingForWakeup),
            RelayOutput::MediaStatus(MediaPresence::Sleeping),
        ]
    );
    h.advance_to(secs(21));
    viewer(&mut h, offer("A", 1));
    assert_eq!(count_wakes(&h.take_relay_events()), 1);
}

#[test]
fn media_side_sleeps_ten_seconds_after_the_last_viewer_left() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(1));
    let now = h.now;
    h.media().viewer_joined(now);
    h.media().viewer_joined(now);
    h.pump();
    h.advance_to(secs(30));
    let now = h.now;
    h.media().viewer_left(now);
    h.pump();
    h.advance_to(secs(45));
    assert_eq!(
        h.media().phase(),
        MediaPhase::Awake,
        "one viewer is still there"
    );
    let now = h.now;
    h.media().viewer_left(now);
    h.media().viewer_left(now); // an extra leave saturates
    h.pump();
    assert_eq!(h.media().viewers(), 0);
    h.advance_to(secs(55) - MS);
    assert_eq!(h.media().phase(), MediaPhase::Awake);
    h.advance_to(secs(55));
    assert!(h.media.is_none());
    assert!(h
        .relay_events
        .iter()
        .any(|(at, e)| *at == secs(55) && *e == RelayOutput::MediaStatus(MediaPresence::Sleeping)));
    // The viewer count was reported on every change.
    assert!(h
        .relay_events
        .iter()
        .any(|(_, e)| *e == RelayOutput::MediaStatus(MediaPresence::Awake { viewers: 2 })));
}

#[test]
fn an_offer_re_arms_the_idle_timer() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(15));
    viewer(&mut h, offer("A", 1));
    h.advance_to(secs(35) - MS);
    assert_eq!(h.media().phase(), MediaPhase::Awake);
    h.advance_to(secs(35));
    assert!(h.media.is_none());
}

#[test]
fn a_media_side_that_went_to_sleep_refuses_a_racing_offer() {
    let mut h = Harness::default_config();
    h.boot_media();
    h.set_handler_ready();
    // The driver keeps the core after Sleep (state retained) to see what a racing offer gets.
    h.advance_to(secs(20));
    assert!(h.media.is_none());
    let mut media = kvs_bridge::MediaSideCore::new(MediaConfig::default(), h.now);
    media.set_handler_ready(h.now);
    media.handle_timeout(h.now + secs(20));
    assert_eq!(media.phase(), MediaPhase::Sleeping);
    let mut wire = Vec::new();
    let msg = Message::Offer(SdpMessage {
        peer: peer("R"),
        correlation_id: CorrelationId::none(),
        sdp: "race".into(),
    });
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(&msg.to_bytes(), &mut wire)
        .unwrap();
    media.handle_link_bytes(h.now + secs(20), &wire);
    let mut replies = Vec::new();
    let mut d = Deframer::new(DeframerConfig::default());
    while let Some(out) = media.poll_output() {
        if let MediaOutput::Transmit(b) = out {
            d.feed(&b, h.now, |m| replies.push(Message::parse(m).unwrap()));
        }
    }
    assert!(replies.iter().any(
        |m| matches!(m, Message::Refusal(r) if r.code == Status::SLEEPING && r.peer.as_str() == "R")
    ));
    // Woken again with its state retained, it announces itself.
    media.handle_wake(h.now + secs(21));
    assert_eq!(media.phase(), MediaPhase::Awake);
}

fn done_events(events: &[RelayOutput]) -> Vec<CommandDone> {
    events
        .iter()
        .filter_map(|e| match e {
            RelayOutput::CommandDone(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn command_requests(events: &[MediaOutput]) -> Vec<(u32, Command)> {
    events
        .iter()
        .filter_map(|e| match e {
            MediaOutput::CommandRequest {
                request_id,
                command,
            } => Some((*request_id, *command)),
            _ => None,
        })
        .collect()
}

#[test]
fn snapshot_round_trip_wakes_the_media_side_and_chunks_the_jpeg() {
    let mut h = Harness::default_config();
    let now = h.now;
    let rid = h
        .relay
        .request(now, Command::GetSnapshot { quality: 0 })
        .unwrap();
    h.pump();
    assert_eq!(count_wakes(&h.take_relay_events()), 1);
    h.advance_to(ms(300));
    media_up(&mut h);
    let requests = command_requests(&h.take_media_events());
    assert_eq!(requests, vec![(rid, Command::GetSnapshot { quality: 0 })]);
    h.advance_to(ms(600));
    let jpeg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let now = h.now;
    h.media()
        .respond(now, rid, CommandResponse::Snapshot(Ok(jpeg.clone())))
        .unwrap();
    h.pump();
    let done = done_events(&h.take_relay_events());
    assert_eq!(
        done,
        vec![CommandDone {
            request_id: rid,
            command: Command::GetSnapshot { quality: 0 },
            result: Ok(CommandValue::Snapshot(jpeg)),
        }]
    );
    // Answering twice is refused locally.
    assert_eq!(
        h.media()
            .respond(now, rid, CommandResponse::Snapshot(Err(Status::BUSY))),
        Err(RespondError::UnknownRequest(rid))
    );
}

#[test]
fn snapshot_times_out_at_five_seconds_and_a_late_answer_is_ignored() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(1));
    let now = h.now;
    let rid = h
        .relay
        .request(now, Command::GetSnapshot { quality: 50 })
        .unwrap();
    h.pump();
    assert_eq!(command_requests(&h.take_media_events()).len(), 1);
    h.advance_to(secs(6) - MS);
    assert!(done_events(&h.take_relay_events()).is_empty());
    h.advance_to(secs(6));
    assert_eq!(
        done_events(&h.take_relay_events()),
        vec![CommandDone {
            request_id: rid,
            command: Command::GetSnapshot { quality: 50 },
            result: Err(CommandError::Timeout),
        }]
    );
    h.advance_to(ms(6500));
    let now = h.now;
    h.media()
        .respond(now, rid, CommandResponse::Snapshot(Ok(vec![1, 2, 3])))
        .unwrap();
    h.pump();
    assert!(done_events(&h.take_relay_events()).is_empty());
    assert_eq!(h.relay.stats().late_responses, 1);
}

#[test]
fn commands_are_bounded_and_fail_when_the_wake_fails() {
    let mut h = Harness::default_config();
    let now = h.now;
    for _ in 0..8 {
        h.relay.request(now, Command::GetResolution).unwrap();
    }
    assert_eq!(
        h.relay.request(now, Command::GetResolution),
        Err(CommandError::TooManyOutstanding { limit: 8 })
    );
    h.pump();
    h.advance_to(secs(2));
    let done = done_events(&h.take_relay_events());
    assert_eq!(done.len(), 8);
    assert!(done
        .iter()
        .all(|d| d.result == Err(CommandError::Unavailable)));
}

#[test]
fn too_large_and_mismatched_answers_reach_the_requester_as_errors() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    let a = h
        .relay
        .request(now, Command::GetSnapshot { quality: 90 })
        .unwrap();
    let b = h.relay.request(now, Command::GetResolution).unwrap();
    h.pump();
    let huge = vec![0u8; DEFAULT_MAX_MESSAGE + 1];
    assert_eq!(
        h.media()
            .respond(now, a, CommandResponse::Snapshot(Ok(huge))),
        Err(RespondError::TooLarge)
    );
    assert!(matches!(
        h.media().respond(now, b, CommandResponse::Time(Ok(1))),
        Err(RespondError::KindMismatch { .. })
    ));
    h.pump();
    let done = done_events(&h.take_relay_events());
    assert_eq!(done[0].result, Err(CommandError::Remote(Status::TOO_LARGE)));
    assert_eq!(done[1].result, Err(CommandError::Remote(Status::INTERNAL)));
}

#[test]
fn get_time_from_the_media_side_is_corrected_by_half_the_round_trip() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(1));
    let sent = h.now;
    let rid = h.media().request(sent, Command::GetTime).unwrap();
    h.pump();
    let asked: Vec<_> = h
        .take_relay_events()
        .into_iter()
        .filter(|e| matches!(e, RelayOutput::CommandRequest { .. }))
        .collect();
    let [RelayOutput::CommandRequest {
        request_id,
        command: Command::GetTime,
    }] = asked.as_slice()
    else {
        panic!("{asked:?}");
    };
    h.advance(ms(40));
    let unix = 1_760_000_000_000_000u64;
    let now = h.now;
    h.relay
        .respond(now, *request_id, CommandResponse::Time(Ok(unix)))
        .unwrap();
    h.pump();
    let done: Vec<_> = h
        .take_media_events()
        .into_iter()
        .filter_map(|e| match e {
            MediaOutput::CommandDone(d) => Some(d),
            _ => None,
        })
        .collect();
    let [CommandDone {
        request_id: got,
        result: Ok(CommandValue::Time(sample)),
        ..
    }] = done.as_slice()
    else {
        panic!("{done:?}");
    };
    assert_eq!(*got, rid);
    assert_eq!(sample.sent, sent);
    assert_eq!(sample.round_trip(), ms(40));
    assert_eq!(sample.corrected_unix_micros(), unix + 20_000);
}

fn ice(n: usize) -> Vec<IceServer> {
    (0..n)
        .map(|i| IceServer {
            urls: vec![format!("turn:10.0.0.{i}:443")],
            username: Some("u".into()),
            credential: Some("p".into()),
            ttl_secs: Some(300),
        })
        .collect()
}

#[test]
fn ice_servers_are_pushed_after_ready_before_offers_and_on_update() {
    let mut h = Harness::default_config();
    let now = h.now;
    h.relay.set_ice_servers(now, ice(2)).unwrap();
    h.pump();
    assert_eq!(h.bytes_to_media, 0, "nobody to push to yet");
    viewer(&mut h, offer("A", 1));
    h.advance_to(ms(200));
    media_up(&mut h);
    assert_eq!(media_view(&h.take_media_events()), ["ice 2", "A offer 1"]);
    assert_eq!(h.media().ice_servers().map(<[_]>::len), Some(2));

    let now = h.now;
    h.relay.set_ice_servers(now, ice(3)).unwrap();
    h.pump();
    assert_eq!(media_view(&h.take_media_events()), ["ice 3"]);

    // The media side may also ask; the same message answers.
    let now = h.now;
    h.media().request_ice_servers(now);
    h.pump();
    assert_eq!(media_view(&h.take_media_events()), ["ice 3"]);

    // A list over the limits is refused where it is given, not on the wire.
    let now = h.now;
    assert!(h.relay.set_ice_servers(now, ice(17)).is_err());
}

#[test]
fn an_ice_request_without_a_list_asks_the_application() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    h.media().request_ice_servers(now);
    h.pump();
    assert!(h
        .take_relay_events()
        .contains(&RelayOutput::IceServersNeeded));
    let now = h.now;
    h.relay.set_ice_servers(now, ice(1)).unwrap();
    h.pump();
    assert_eq!(media_view(&h.take_media_events()), ["ice 1"]);
}

#[test]
fn media_refusals_answers_and_candidates_reach_kvs() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    viewer(&mut h, offer("A", 1));
    let now = h.now;
    h.media().refuse_viewer(
        now,
        peer("A"),
        CorrelationId::new("corr-1").unwrap(),
        Status::BUSY,
        "too many viewers",
    );
    h.media()
        .send_candidate(
            now,
            CandidateMessage {
                peer: peer("B"),
                correlation_id: CorrelationId::none(),
                candidate: IceCandidate::default(),
            },
        )
        .unwrap();
    h.pump();
    let events = h.take_relay_events();
    assert_eq!(
        refusals(&events),
        vec![(
            "A".to_string(),
            RefusalReason::Media {
                code: Status::BUSY,
                reason: "too many viewers".into()
            }
        )]
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, RelayOutput::IceCandidate(c) if c.peer.as_str() == "B")));
}

#[test]
fn trigger_offer_wakes_and_the_device_offer_goes_to_the_viewer() {
    let mut h = Harness::default_config();
    viewer(
        &mut h,
        ViewerMessage::TriggerOffer(kvs_bridge::PeerRef {
            peer: peer("T"),
            correlation_id: CorrelationId::none(),
        }),
    );
    assert_eq!(count_wakes(&h.take_relay_events()), 1);
    media_up(&mut h);
    assert_eq!(media_view(&h.take_media_events()), ["T trigger"]);
    let now = h.now;
    h.media()
        .send_offer(
            now,
            SdpMessage {
                peer: peer("T"),
                correlation_id: CorrelationId::none(),
                sdp: "device offer".into(),
            },
        )
        .unwrap();
    h.pump();
    assert!(h
        .take_relay_events()
        .iter()
        .any(|e| matches!(e, RelayOutput::Offer(o) if o.sdp == "device offer")));
    viewer(
        &mut h,
        ViewerMessage::Answer(SdpMessage {
            peer: peer("T"),
            correlation_id: CorrelationId::none(),
            sdp: "viewer answer".into(),
        }),
    );
    assert!(h
        .take_media_events()
        .iter()
        .any(|e| matches!(e, MediaOutput::Answer(a) if a.sdp == "viewer answer")));
}

#[test]
fn unknown_version_and_type_are_answered_with_an_error_carrying_the_request_id() {
    let t0 = Instant::now();
    let mut relay = SignalingSideCore::new(RelayConfig::default(), t0);
    while relay.poll_output().is_some() {}
    let mut wire = Vec::new();
    let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
    let mut future = Message::Request {
        request_id: 77,
        command: Command::GetTime,
    }
    .to_bytes();
    future[0] = 5;
    framer.emit(&future, &mut wire).unwrap();
    let mut unknown = Message::Heartbeat.to_bytes();
    unknown[1] = 0x60;
    unknown[4] = 78;
    framer.emit(&unknown, &mut wire).unwrap();
    relay.handle_link_bytes(t0, &wire);
    let mut replies = Vec::new();
    let mut d = Deframer::new(DeframerConfig::default());
    while let Some(out) = relay.poll_output() {
        if let RelayOutput::Transmit(b) = out {
            d.feed(&b, t0, |m| replies.push(Message::parse(m).unwrap()));
        }
    }
    let errors: Vec<_> = replies
        .iter()
        .filter_map(|m| match m {
            Message::Error(e) => Some((e.request_id, e.status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (77, Status::UNSUPPORTED_VERSION),
            (78, Status::UNKNOWN_TYPE)
        ]
    );
    assert_eq!(relay.stats().parse_errors, 2);
}

#[test]
fn the_whole_exchange_survives_a_link_that_adds_garbage() {
    let mut h = Harness::default_config();
    h.garbage = Some(Rng::new(1234));
    let now = h.now;
    h.relay.set_ice_servers(now, ice(4)).unwrap();
    viewer(&mut h, offer("A", 1));
    for n in 2..10 {
        viewer(&mut h, cand("A", n));
    }
    h.advance_to(ms(300));
    media_up(&mut h);
    let view = media_view(&h.take_media_events());
    assert_eq!(view.len(), 10);
    assert_eq!(view[0], "ice 4");
    assert_eq!(view[1], "A offer 1");
    let now = h.now;
    let rid = h
        .relay
        .request(now, Command::GetSnapshot { quality: 0 })
        .unwrap();
    h.pump();
    let jpeg = vec![0xAB; 50_000];
    let now = h.now;
    h.media()
        .respond(now, rid, CommandResponse::Snapshot(Ok(jpeg.clone())))
        .unwrap();
    h.pump();
    let done = done_events(&h.take_relay_events());
    assert_eq!(done[0].result, Ok(CommandValue::Snapshot(jpeg)));
    assert!(h.relay.link_stats().bytes_skipped > 0);
    assert!(h.media().link_stats().bytes_skipped > 0);
}

#[test]
fn a_link_reset_makes_both_sides_handshake_again() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    let rid = h.relay.request(now, Command::GetResolution).unwrap();
    h.take_relay_events();
    // The signaling side's socket saw a reconnect: whatever was asked is lost.
    h.relay.handle_link_reset(now);
    let events: Vec<_> = std::iter::from_fn(|| h.relay.poll_output())
        .filter(|e| !matches!(e, RelayOutput::Transmit(_)))
        .collect();
    assert_eq!(
        events,
        vec![
            RelayOutput::StateChanged(RelayState::WaitingForWakeup),
            RelayOutput::MediaStatus(MediaPresence::Gone),
            RelayOutput::CommandDone(CommandDone {
                request_id: rid,
                command: Command::GetResolution,
                result: Err(CommandError::Unavailable),
            }),
        ]
    );
    // The media side's end reconnects too and announces itself again.
    h.media().handle_link_reset(now);
    h.pump();
    assert_eq!(h.relay.state(), RelayState::Ready);
}

// ---- SetControl: remote control of the running media side ----

#[test]
fn set_control_while_the_media_side_sleeps_wakes_it_and_completes_applied() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(20));
    assert!(h.media.is_none(), "asleep");
    h.take_relay_events();
    h.take_media_events();
    h.advance_to(secs(25));
    let now = h.now;
    let streaming_on = Command::SetControl(ControlSetting::Streaming(true));
    let rid = h.relay.request(now, streaming_on).unwrap();
    h.pump();
    assert_eq!(count_wakes(&h.take_relay_events()), 1, "asking wakes it");
    h.advance_to(secs(25) + ms(300));
    media_up(&mut h);
    assert_eq!(
        command_requests(&h.take_media_events()),
        vec![(rid, streaming_on)]
    );
    h.advance_to(secs(25) + ms(400));
    let now = h.now;
    h.media()
        .respond(now, rid, CommandResponse::Applied(Ok(())))
        .unwrap();
    h.pump();
    assert_eq!(
        done_events(&h.take_relay_events()),
        vec![CommandDone {
            request_id: rid,
            command: streaming_on,
            result: Ok(CommandValue::Applied),
        }]
    );
    // Awake now: the next change goes straight through, and a refusal reaches the requester.
    let bitrate = Command::SetControl(ControlSetting::BitrateKbps(250_000));
    let rid = h.relay.request(now, bitrate).unwrap();
    h.pump();
    assert_eq!(
        command_requests(&h.take_media_events()),
        vec![(rid, bitrate)]
    );
    h.media()
        .respond(
            now,
            rid,
            CommandResponse::Applied(Err(Status::INVALID_ARGUMENT)),
        )
        .unwrap();
    h.pump();
    let events = h.take_relay_events();
    assert_eq!(count_wakes(&events), 0);
    assert_eq!(
        done_events(&events),
        vec![CommandDone {
            request_id: rid,
            command: bitrate,
            result: Err(CommandError::Remote(Status::INVALID_ARGUMENT)),
        }]
    );
}

#[test]
fn set_control_times_out_at_two_seconds_when_the_media_side_never_answers() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    h.advance_to(secs(1));
    let now = h.now;
    let audio_off = Command::SetControl(ControlSetting::Audio(false));
    let rid = h.relay.request(now, audio_off).unwrap();
    h.pump();
    assert_eq!(
        command_requests(&h.take_media_events()),
        vec![(rid, audio_off)]
    );
    h.advance_to(secs(3) - MS);
    assert!(done_events(&h.take_relay_events()).is_empty());
    h.advance_to(secs(3));
    assert_eq!(
        done_events(&h.take_relay_events()),
        vec![CommandDone {
            request_id: rid,
            command: audio_off,
            result: Err(CommandError::Timeout),
        }]
    );
    // The answer that finally comes is dropped and counted.
    h.advance_to(secs(4));
    let now = h.now;
    h.media()
        .respond(now, rid, CommandResponse::Applied(Ok(())))
        .unwrap();
    h.pump();
    assert!(done_events(&h.take_relay_events()).is_empty());
    assert_eq!(h.relay.stats().late_responses, 1);
}

#[test]
fn set_control_answers_of_the_wrong_kind_are_caught() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    let a = h
        .relay
        .request(now, Command::SetControl(ControlSetting::MaxViewers(1)))
        .unwrap();
    let b = h.relay.request(now, Command::GetResolution).unwrap();
    h.pump();
    assert_eq!(
        h.media().respond(now, a, CommandResponse::Time(Ok(1))),
        Err(RespondError::KindMismatch {
            expected: CommandKind::SetControl,
            got: CommandKind::GetTime,
        })
    );
    assert_eq!(
        h.media().respond(now, b, CommandResponse::Applied(Ok(()))),
        Err(RespondError::KindMismatch {
            expected: CommandKind::GetResolution,
            got: CommandKind::SetControl,
        })
    );
    h.pump();
    let done = done_events(&h.take_relay_events());
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].request_id, a);
    assert_eq!(done[0].result, Err(CommandError::Remote(Status::INTERNAL)));
    assert_eq!(done[1].request_id, b);
    assert_eq!(done[1].result, Err(CommandError::Remote(Status::INTERNAL)));

    // A confused peer answering a resolution request with "applied": a mismatch, not a value.
    let c = h.relay.request(now, Command::GetResolution).unwrap();
    h.pump();
    let mut wire = Vec::new();
    Framer::new(DEFAULT_MAX_MESSAGE)
        .emit(
            &Message::Response {
                request_id: c,
                response: CommandResponse::Applied(Ok(())),
            }
            .to_bytes(),
            &mut wire,
        )
        .unwrap();
    h.relay.handle_link_bytes(now, &wire);
    h.pump();
    assert_eq!(
        done_events(&h.take_relay_events()),
        vec![CommandDone {
            request_id: c,
            command: Command::GetResolution,
            result: Err(CommandError::Mismatch),
        }]
    );
}

/// The raw link messages in these transmitted bytes.
fn transmitted(d: &mut Deframer, now: Instant, bytes: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut raw = Vec::new();
    for b in bytes {
        d.feed(b, now, |m| raw.push(m.to_vec()));
    }
    raw
}

#[test]
fn set_control_to_an_older_media_side_fails_at_once_with_unknown_type() {
    let t0 = Instant::now();
    let mut relay = SignalingSideCore::new(RelayConfig::default(), t0);
    let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
    let mut wire = Vec::new();
    framer.emit(&Message::Ready.to_bytes(), &mut wire).unwrap();
    relay.handle_link_bytes(t0, &wire);
    assert_eq!(relay.state(), RelayState::Ready);
    while relay.poll_output().is_some() {}
    let setting = Command::SetControl(ControlSetting::Resolution {
        width: 640,
        height: 480,
    });
    let rid = relay.request(t0, setting).unwrap();
    let mut sent = Vec::new();
    while let Some(out) = relay.poll_output() {
        if let RelayOutput::Transmit(b) = out {
            sent.push(b);
        }
    }
    let mut d = Deframer::new(DeframerConfig::default());
    let raw = transmitted(&mut d, t0, &sent);
    let [request] = raw.as_slice() else {
        panic!("{raw:?}");
    };
    assert_eq!(request[1], MessageType::SetControlRequest.code());
    // A media side built before 0x16 existed: an unknown type, answered with an Error that
    // carries the request id (what its parser and state machine do with any unknown type).
    let older = MessageError::UnknownType {
        msg_type: request[1],
        request_id: u32::from_le_bytes(request[4..8].try_into().unwrap()),
    };
    let mut wire = Vec::new();
    framer
        .emit(&older.reply().unwrap().to_bytes(), &mut wire)
        .unwrap();
    let answered = t0 + ms(5);
    relay.handle_link_bytes(answered, &wire);
    let done: Vec<_> = std::iter::from_fn(|| relay.poll_output())
        .filter_map(|e| match e {
            RelayOutput::CommandDone(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        done,
        vec![CommandDone {
            request_id: rid,
            command: setting,
            result: Err(CommandError::Remote(Status::UNKNOWN_TYPE)),
        }],
        "a clear error at once, not a timeout"
    );
    assert_eq!(relay.stats().error_replies_received, 1);
}

#[test]
fn a_malformed_set_control_is_answered_by_the_media_side_with_its_request_id() {
    let t0 = Instant::now();
    let mut media = MediaSideCore::new(MediaConfig::default(), t0);
    media.set_handler_ready(t0);
    while media.poll_output().is_some() {}
    let raw = |request_id: u32, payload: &[u8]| {
        let mut b = vec![1, MessageType::SetControlRequest.code(), 0, 0];
        b.extend_from_slice(&request_id.to_le_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b
    };
    let mut framer = Framer::new(DEFAULT_MAX_MESSAGE);
    let mut wire = Vec::new();
    // Bad on/off byte, unknown tag, short value, trailing byte.
    for (rid, payload) in [
        (31, &[0x01, 2][..]),
        (32, &[0x09, 1][..]),
        (33, &[0x03, 1, 2][..]),
        (34, &[0x05, 1, 0][..]),
    ] {
        framer.emit(&raw(rid, payload), &mut wire).unwrap();
    }
    // And a good one after them: it still arrives.
    framer
        .emit(
            &Message::Request {
                request_id: 35,
                command: Command::SetControl(ControlSetting::Audio(true)),
            }
            .to_bytes(),
            &mut wire,
        )
        .unwrap();
    media.handle_link_bytes(t0, &wire);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(out) = media.poll_output() {
        match out {
            MediaOutput::Transmit(b) => sent.push(b),
            other => events.push(other),
        }
    }
    let mut d = Deframer::new(DeframerConfig::default());
    let errors: Vec<_> = transmitted(&mut d, t0, &sent)
        .iter()
        .filter_map(|m| match Message::parse(m).unwrap() {
            Message::Error(e) => Some((e.request_id, e.status, e.msg_type)),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        (31..=34)
            .map(|rid| (rid, Status::MALFORMED, 0x16))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        events,
        vec![MediaOutput::CommandRequest {
            request_id: 35,
            command: Command::SetControl(ControlSetting::Audio(true)),
        }]
    );
    assert_eq!(media.stats().parse_errors, 4);
}

#[test]
fn the_media_side_can_ask_set_control_too() {
    let mut h = Harness::default_config();
    media_up(&mut h);
    let now = h.now;
    let limit = Command::SetControl(ControlSetting::MaxViewers(2));
    let rid = h.media().request(now, limit).unwrap();
    h.pump();
    let asked: Vec<_> = h
        .take_relay_events()
        .into_iter()
        .filter_map(|e| match e {
            RelayOutput::CommandRequest {
                request_id,
                command,
            } => Some((request_id, command)),
            _ => None,
        })
        .collect();
    let [(request_id, command)] = asked.as_slice() else {
        panic!("{asked:?}");
    };
    assert_eq!(*command, limit);
    h.relay
        .respond(now, *request_id, CommandResponse::Applied(Ok(())))
        .unwrap();
    h.pump();
    let done: Vec<_> = h
        .take_media_events()
        .into_iter()
        .filter_map(|e| match e {
            MediaOutput::CommandDone(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        done,
        vec![CommandDone {
            request_id: rid,
            command: limit,
            result: Ok(CommandValue::Applied),
        }]
    );
}

#[test]
fn wake_settings_reach_a_waking_media_side_before_the_offers_and_wake_nothing_themselves() {
    let mut h = Harness::default_config();
    let resolution = ControlSetting::Resolution {
        width: 320,
        height: 240,
    };
    let audio_off = ControlSetting::Audio(false);
    h.relay.set_wake_settings(vec![resolution, audio_off]);
    h.pump();
    assert_eq!(
        count_wakes(&h.take_relay_events()),
        0,
        "settings wake nothing"
    );

    viewer(&mut h, offer("A", 1));
    h.advance_to(ms(200));
    media_up(&mut h);
    let events = h.take_media_events();
    // In order: the settings as commands, then the held offer.
    let order: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            MediaOutput::CommandRequest { command, .. } => Some(format!("{command:?}")),
            MediaOutput::Offer(m) => Some(format!("{} {}", m.peer, m.sdp)),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            format!("{:?}", Command::SetControl(resolution)),
            format!("{:?}", Command::SetControl(audio_off)),
            "A offer 1".to_string(),
        ]
    );
    // Answered like any command.
    let now = h.now;
    for (rid, _) in command_requests(&events) {
        h.media()
            .respond(now, rid, CommandResponse::Applied(Ok(())))
            .unwrap();
    }
    h.pump();
    let done = done_events(&h.take_relay_events());
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|d| d.result == Ok(CommandValue::Applied)));
}
