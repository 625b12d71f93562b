//! [`PeerCore`] against [`crate::viewer::ViewerCore`]s in virtual time (see [`crate::sim`]):
//! every instant asserted here is virtual, so the assertions are exact where the behaviour
//! defines the instant, and no test sleeps.

use super::*;
use crate::sim::*;
use crate::viewer::ViewerEvent;

const FRAME: Duration = Duration::from_millis(33);
const AUDIO_FRAME: Duration = Duration::from_millis(20);
const MS: Duration = Duration::from_millis(1);

fn connected(peer: &'static str) -> impl Fn(&PeerEvent) -> bool {
    move |e| matches!(e, PeerEvent::Connected { peer_id } if peer_id == peer)
}

fn closed(peer: &'static str) -> impl Fn(&PeerEvent) -> bool {
    move |e| matches!(e, PeerEvent::Closed { peer_id, .. } if peer_id == peer)
}

fn keyframe_requested(e: &PeerEvent) -> bool {
    matches!(e, PeerEvent::KeyframeRequested { .. })
}

/// Run until the device reports `pick`, or panic after `limit`; the event's instant.
fn wait_device(sim: &mut Sim, limit: Duration, pick: impl Fn(&PeerEvent) -> bool) -> Instant {
    let found = sim.run_until(limit, |s| s.device_event(&pick).is_some());
    assert!(found, "no such device event; saw\n{}", sim.dump());
    sim.device_event(&pick).unwrap().0
}

/// The failure of `peer`: (instant of Failed, reason), checking Closed follows at once.
/// The first answer the device gave.
fn first_answer(sim: &Sim) -> String {
    sim.device_events
        .iter()
        .find_map(|(_, e)| match e {
            PeerEvent::LocalAnswer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        })
        .expect("the device answered")
}

fn failure(sim: &Sim, peer: &'static str) -> (Instant, String) {
    let i = sim
        .device_events
        .iter()
        .position(|(_, e)| matches!(e, PeerEvent::Failed { peer_id, .. } if peer_id == peer))
        .expect("the session failed");
    let (t, PeerEvent::Failed { reason, .. }) = &sim.device_events[i] else {
        unreachable!()
    };
    let (t_closed, next) = &sim.device_events[i + 1];
    assert!(closed(peer)(next), "Closed follows Failed, got {next:?}");
    assert_eq!(t_closed, t, "Failed and Closed at the same instant");
    (*t, reason.clone())
}

/// The video frames the simulation's camera pushed, in order.
fn pushed_video(sim: &Sim) -> Vec<&Pushed> {
    let cam = sim.camera.as_ref().expect("the camera runs");
    cam.pushed
        .iter()
        .filter(|p| p.kind == FanoutKind::Video)
        .collect()
}

/// A simulation with one viewer ("viewer-1") 10 ms away in each direction.
fn sim_with_one_viewer(config: PeerConfig) -> (Sim, usize) {
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.viewers[v].up.delay = 10 * MS;
    sim.viewers[v].down.delay = 10 * MS;
    (sim, v)
}

#[test]
fn connects_and_streams_starting_with_a_keyframe() {
    let (mut sim, v) = sim_with_one_viewer(PeerConfig::default());
    sim.start_camera(FRAME, Some(AUDIO_FRAME));
    let t0 = sim.now;
    sim.signal(v);

    // The answer and candidates go out with the offer.
    let at_offer: Vec<&PeerEvent> = sim.device_events.iter().map(|(_, e)| e).collect();
    assert!(
        matches!(at_offer[0], PeerEvent::Requested { .. }),
        "{at_offer:?}"
    );
    assert!(matches!(at_offer[1], PeerEvent::LocalAnswer { .. }));
    let host = |c: &str| c.contains("10.0.0.1 5000 typ host");
    assert!(matches!(at_offer[2], PeerEvent::LocalCandidate { candidate, .. } if host(candidate)));
    assert!(matches!(at_offer[3], PeerEvent::GatheringComplete { .. }));
    assert!(sim.device_events.iter().all(|(t, _)| *t == t0));

    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    assert!(
        sim.device_event(|e| matches!(e, PeerEvent::Connecting { .. }))
            .is_some_and(|(t, _)| t < t_conn),
        "ICE checking before connected"
    );
    // ICE and DTLS over a 20 ms round trip: a few round trips, no retransmission.
    assert!(
        t_conn - t0 < Duration::from_millis(200),
        "{:?}",
        t_conn - t0
    );
    // A keyframe is asked for at the connect instant, and only once.
    assert_eq!(sim.device_event_times(keyframe_requested), vec![t_conn]);

    let found = sim.run_until(Duration::from_secs(2), |s| s.viewers[v].video().len() >= 20);
    assert!(found, "the viewer receives video");
    assert!(sim.viewers[v].connected_at().is_some());

    let video = pushed_video(&sim);
    // The camera's first frame (an IDR, at the offer) and the deltas after it came before
    // the connection: none of them is sent.
    assert_eq!(video[0].frame.kind, kvs_platform::FrameKind::Key);
    assert_eq!(video[0].at, t0);
    let first_after = video
        .iter()
        .position(|p| p.at > t_conn && p.frame.kind == kvs_platform::FrameKind::Key)
        .expect("an IDR after the keyframe request");
    assert!(first_after > 1, "deltas were pushed before the connection");
    assert!(video[..first_after].iter().all(|p| p.at <= t_conn));

    let received = sim.viewers[v].video();
    assert!(
        received[0].1.keyframe,
        "the first video frame is a keyframe"
    );
    // Exactly the frames from that IDR on, whole and in order.
    for (i, (_, f)) in received.iter().enumerate() {
        assert_eq!(f.data, video[first_after + i].frame.data, "video frame {i}");
        assert!(f.contiguous);
    }
    // One-way delay 10 ms: the IDR arrives 10 ms after it was pushed.
    assert_eq!(received[0].0, video[first_after].at + 10 * MS);
    assert!(sim.viewers[v].audio_count() > 0, "audio too");
    assert_eq!(sim.unroutable, 0);
}

#[test]
fn a_session_not_connected_in_time_fails_and_closes() {
    let config = PeerConfig::default();
    let timeout = config.connect_timeout;
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.viewers[v].up.rule = Rule::DropAll;
    sim.viewers[v].down.rule = Rule::DropAll;
    // Frames keep waking the device, as a camera does: the deadline must hold regardless.
    sim.start_camera(FRAME, None);
    let t_offer = sim.now;
    sim.signal(v);
    assert_eq!(sim.device.session_count(), 1);

    wait_device(
        &mut sim,
        timeout + Duration::from_secs(5),
        closed("viewer-1"),
    );
    let (t_failed, reason) = failure(&sim, "viewer-1");
    assert!(reason.contains("not connected within"), "{reason}");
    // At the deadline: not before it, and not one poll interval later.
    assert_eq!(t_failed, t_offer + timeout);
    assert!(sim
        .device_event(|e| matches!(e, PeerEvent::Connected { .. }))
        .is_none());
    assert_eq!(sim.device.session_count(), 0);
    assert!(sim.device.addr_cache.is_empty());

    // Only the offer arrives (no candidate ever), and the deadline is off str0m's 1 s timer
    // grid: it still holds to the instant, though frames keep waking the device.
    let timeout = Duration::from_millis(2500);
    let mut sim = Sim::new(PeerConfig {
        connect_timeout: timeout,
        ..PeerConfig::default()
    });
    let v = sim.add_viewer("viewer-1");
    sim.start_camera(FRAME, None);
    let t_offer = sim.now;
    sim.send_offer(v, true).unwrap();
    wait_device(
        &mut sim,
        timeout + Duration::from_secs(5),
        closed("viewer-1"),
    );
    let (t_failed, reason) = failure(&sim, "viewer-1");
    assert!(reason.contains("not connected within"), "{reason}");
    assert_eq!(t_failed, t_offer + timeout);
    assert!(sim.viewers[v].down.delivered.is_empty());

    // ICE gets through but DTLS never does: the deadline covers the whole connection.
    let mut sim = Sim::new(PeerConfig {
        connect_timeout: timeout,
        ..PeerConfig::default()
    });
    let v = sim.add_viewer("viewer-1");
    sim.viewers[v].up.rule = Rule::DropIf(is_dtls);
    let t_offer = sim.now;
    sim.signal(v);
    wait_device(
        &mut sim,
        timeout + Duration::from_secs(5),
        closed("viewer-1"),
    );
    assert!(sim.device.sessions.is_empty());
    let (t_failed, reason) = failure(&sim, "viewer-1");
    assert!(reason.contains("not connected within"), "{reason}");
    assert_eq!(t_failed, t_offer + timeout);
    assert!(sim.viewers[v].up.dropped > 0, "ClientHellos were lost");
    assert!(
        sim.device_event(|e| matches!(e, PeerEvent::Connecting { .. }))
            .is_some(),
        "ICE was checking"
    );
}

#[test]
fn a_session_disconnected_too_long_fails_and_closes() {
    let config = PeerConfig::default();
    let timeout = config.disconnected_timeout;
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.start_camera(FRAME, None);
    sim.signal(v);
    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    sim.run_for(Duration::from_secs(1));

    // Cut the network both ways.
    let t_cut = sim.now;
    sim.viewers[v].up.rule = Rule::DropAll;
    sim.viewers[v].down.rule = Rule::DropAll;
    let t_disc = wait_device(&mut sim, Duration::from_secs(60), |e| {
        matches!(e, PeerEvent::Disconnected { .. })
    });
    assert!(t_disc > t_cut && t_conn < t_cut);
    eprintln!("DISC after {:?}", t_disc - t_cut);
    wait_device(
        &mut sim,
        timeout + Duration::from_secs(5),
        closed("viewer-1"),
    );
    let (t_failed, reason) = failure(&sim, "viewer-1");
    assert!(
        reason.contains("ICE disconnected for more than"),
        "{reason}"
    );
    assert_eq!(t_failed, t_disc + timeout);
    assert_eq!(sim.device.session_count(), 0);
}

/// The viewer's ClientHello overtakes its STUN answers to the device's checks (held on the
/// way until it has arrived, then `after` more): the device cannot place it yet.
fn client_hello_first(after: Duration) -> (Sim, usize, Instant) {
    let mut sim = Sim::new(PeerConfig::default());
    let v = sim.add_viewer("viewer-1");
    sim.viewers[v].up.rule = Rule::HoldUntil {
        hold: is_stun_success,
        release: is_client_hello,
        after,
    };
    sim.signal(v);
    let found = sim.run_until(Duration::from_secs(1), |s| {
        !s.viewers[0].up.delivered_at(is_client_hello).is_empty()
    });
    assert!(found, "the viewer sent a ClientHello");
    let t_hello = sim.now;
    assert!(sim.viewers[v].up.held() > 0, "STUN answers were held back");
    assert_eq!(
        sim.device.held_datagrams.len(),
        1,
        "the ClientHello is held, no session takes it yet"
    );
    assert!(sim.device_event(connected("viewer-1")).is_none());
    (sim, v, t_hello)
}

#[test]
fn an_early_client_hello_is_held_and_applied_without_a_retransmission() {
    let (mut sim, v, t_hello) = client_hello_first(20 * MS);
    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    // Connected as soon as the STUN answers arrive, not after the viewer's DTLS
    // retransmission timer (≥ 750 ms).
    assert_eq!(t_conn, t_hello + 20 * MS);
    assert!(t_conn - sim.start < Duration::from_millis(200));
    assert_eq!(sim.viewers[v].up.delivered_at(is_client_hello).len(), 1);
    assert!(sim.device.held_datagrams.is_empty());
}

#[test]
fn a_held_datagram_past_its_ttl_is_discarded() {
    let (mut sim, v, t_hello) = client_hello_first(600 * MS);
    // Discarded at its TTL exactly.
    sim.run_to(t_hello + HELD_DATAGRAM_TTL - MS);
    assert_eq!(sim.device.held_datagrams.len(), 1);
    sim.run_for(MS);
    assert_eq!(sim.now, t_hello + HELD_DATAGRAM_TTL);
    assert!(sim.device.held_datagrams.is_empty());

    // The STUN answers arrive at +600 ms; the stale ClientHello is not applied: the device
    // sends no DTLS until the viewer retransmits it, and connects only then.
    let t_conn = wait_device(&mut sim, Duration::from_secs(3), connected("viewer-1"));
    let hellos = sim.viewers[v].up.delivered_at(is_client_hello);
    assert_eq!(hellos.len(), 2, "one retransmission");
    assert!(hellos[1] >= t_hello + 750 * MS, "RTO 1 s ± 25 %");
    let device_dtls = sim.viewers[v].down.delivered_at(is_dtls);
    assert!(
        device_dtls[0] >= hellos[1],
        "nothing answered the stale one"
    );
    assert!(t_conn >= hellos[1]);
}

#[test]
fn keyframe_requests_are_rate_limited_and_a_late_one_goes_out_when_the_interval_ends() {
    let config = PeerConfig::default();
    let interval = config.keyframe_request_min_interval;
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.start_camera(FRAME, None);
    sim.signal(v);
    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    let found = sim.run_until(Duration::from_secs(1), |s| !s.viewers[0].video().is_empty());
    assert!(found);

    let pli_at = |sim: &mut Sim, at: Instant| {
        sim.run_to(at);
        assert_eq!(sim.now, at);
        sim.with_viewer(v, |core, now| core.request_keyframe(now))
            .unwrap();
    };
    // Inside the interval after the connect-time request: held until it ends.
    pli_at(&mut sim, t_conn + 100 * MS);
    sim.run_for(MS);
    assert!(sim.device.sessions["viewer-1"].keyframe_request_pending);
    // Three more inside the next interval: one event, when it ends.
    for at in [600, 700, 800] {
        pli_at(&mut sim, t_conn + at * MS);
    }
    // After a quiet spell: at once.
    pli_at(&mut sim, t_conn + 2000 * MS);
    sim.run_for(Duration::from_secs(1));

    assert_eq!(
        sim.device_event_times(keyframe_requested),
        vec![
            t_conn,
            t_conn + interval,
            t_conn + 2 * interval,
            t_conn + 2000 * MS
        ]
    );
    assert_eq!(sim.device.sessions["viewer-1"].stats.keyframe_requests, 4);
}

#[test]
fn a_candidate_sent_before_the_offer_is_held_and_used() {
    let mut sim = Sim::new(PeerConfig::default());
    let v = sim.add_viewer("viewer-1");
    sim.start_camera(FRAME, None);
    sim.send_viewer_candidate(v).unwrap();
    assert_eq!(sim.device.pending_candidates["viewer-1"].len(), 1);
    sim.run_for(Duration::from_secs(1));

    // The offer and the answer carry no candidates, and the device's candidate never reaches
    // the viewer: the early candidate is the only address either side has.
    sim.send_offer(v, true).unwrap();
    assert!(sim.device.pending_candidates.is_empty());
    sim.deliver_answer(v, true);
    wait_device(&mut sim, Duration::from_secs(5), connected("viewer-1"));
    // The device checked first (the viewer had nothing to check).
    let first_down = sim.viewers[v].down.delivered[0].at;
    assert!(sim.viewers[v].up.delivered[0].at >= first_down);
}

#[test]
fn a_held_candidate_past_its_ttl_is_dropped() {
    let config = PeerConfig::default();
    let ttl = config.pending_candidate_ttl;
    let mut sim = Sim::new(config.clone());
    let v = sim.add_viewer("viewer-1");
    // Frames wake the device every 33 ms: the expiry must not wait for an idle timer.
    sim.start_camera(FRAME, None);
    let t0 = sim.now;
    sim.send_viewer_candidate(v).unwrap();
    sim.run_for(ttl - MS);
    assert_eq!(sim.device.pending_candidates.len(), 1);
    sim.run_for(MS);
    assert_eq!(sim.now, t0 + ttl);
    assert!(
        sim.device.pending_candidates.is_empty(),
        "expired at its TTL"
    );

    sim.send_offer(v, true).unwrap();
    sim.deliver_answer(v, true);
    sim.run_for(Duration::from_secs(3));
    assert!(sim.device_event(connected("viewer-1")).is_none());
    assert!(
        sim.viewers[v].down.delivered.is_empty(),
        "no address to check"
    );

    // Also when the offer comes before the timer turn that would drop the candidate.
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.send_viewer_candidate(v).unwrap();
    sim.now += ttl;
    sim.send_offer(v, true).unwrap();
    sim.deliver_answer(v, true);
    sim.run_for(Duration::from_secs(3));
    assert!(sim.device_event(connected("viewer-1")).is_none());
    assert!(
        sim.viewers[v].down.delivered.is_empty(),
        "no address to check"
    );
}

#[test]
fn an_offer_beyond_max_sessions_is_refused_while_the_first_keeps_streaming() {
    let mut sim = Sim::new(PeerConfig {
        max_sessions: 1,
        ..PeerConfig::default()
    });
    let a = sim.add_viewer("viewer-1");
    let b = sim.add_viewer("viewer-2");
    sim.start_camera(FRAME, None);
    sim.signal(a);
    wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    sim.run_for(Duration::from_secs(1));

    // B's candidate comes first, then its offer.
    let t_refused = sim.now;
    sim.send_viewer_candidate(b).unwrap();
    sim.send_offer(b, false).unwrap();
    let (t, e) = sim
        .device_event(|e| e.peer_id() == "viewer-2")
        .expect("an answer for viewer-2");
    assert_eq!(t, t_refused);
    match e {
        PeerEvent::OfferRefused { reason, .. } => {
            assert!(reason.contains("limit of 1"), "{reason}")
        }
        other => panic!("expected OfferRefused, got {other:?}"),
    }
    assert_eq!(sim.device.session_count(), 1);
    assert!(
        sim.device.pending_candidates.is_empty(),
        "the refused peer's candidate is not kept"
    );

    let before = sim.viewers[a].video().len();
    sim.run_for(Duration::from_secs(1));
    let after = sim.viewers[a].video().len();
    // 30 frames a second, each delivered at once.
    assert!(after - before >= 30, "{before} → {after}");
    assert!(sim.viewers[b].events.is_empty());
    assert!(sim.viewers[b].down.delivered.is_empty());
    assert!(sim
        .device_events
        .iter()
        .filter(|(_, e)| e.peer_id() == "viewer-2")
        .all(|(_, e)| matches!(e, PeerEvent::OfferRefused { .. })));
}

#[test]
fn an_unparsable_offer_is_an_error_and_leaves_nothing_behind() {
    let mut sim = Sim::new(PeerConfig::default());
    let v = sim.add_viewer("viewer-1");
    sim.send_viewer_candidate(v).unwrap();
    let err = sim
        .command(PeerCommand::RemoteOffer {
            peer_id: "viewer-1".into(),
            sdp: "v=0\r\nthis is no SDP\r\n".into(),
        })
        .unwrap_err();
    assert!(
        matches!(&err, PeerError::InvalidSdp { peer_id, .. } if peer_id == "viewer-1"),
        "{err}"
    );
    assert_eq!(sim.device.session_count(), 0);
    assert!(sim.device.pending_candidates.is_empty());
    assert!(sim.device.addr_cache.is_empty());
    assert!(sim.device_events.is_empty(), "{:?}", sim.device_events);

    // The peer can still connect with a good offer afterwards.
    sim.signal(v);
    wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    assert!(matches!(
        sim.viewers[v].events.first(),
        Some((_, ViewerEvent::Connected))
    ));
}

#[test]
fn lowering_the_session_limit_keeps_live_sessions_and_refuses_new_ones() {
    let mut sim = Sim::new(PeerConfig {
        max_sessions: 2,
        ..PeerConfig::default()
    });
    let a = sim.add_viewer("viewer-1");
    let b = sim.add_viewer("viewer-2");
    sim.start_camera(FRAME, None);
    sim.signal(a);
    wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));

    let now = sim.now;
    sim.device
        .handle_command(now, PeerCommand::SetMaxSessions { max: 1 })
        .unwrap();
    assert_eq!(sim.device.session_count(), 1, "the live session stays");
    sim.send_offer(b, false).unwrap();
    match sim.device_event(|e| e.peer_id() == "viewer-2") {
        Some((_, PeerEvent::OfferRefused { reason, .. })) => {
            assert!(reason.contains("limit of 1"), "{reason}")
        }
        other => panic!("expected OfferRefused, got {other:?}"),
    }
    let before = sim.viewers[a].video().len();
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.viewers[a].video().len() - before >= 30,
        "viewer-1 keeps streaming"
    );
}

#[test]
fn a_viewer_silent_for_two_seconds_gets_an_ice_restart_and_video_resumes_on_the_same_session() {
    let config = PeerConfig::default();
    let after = config
        .nat
        .ice_restart_after
        .expect("restarts on by default");
    let mut sim = Sim::new(config);
    let v = sim.add_viewer("viewer-1");
    sim.start_camera(FRAME, None);
    sim.signal(v);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.viewers[v].video().len() >= 5));
    assert!(sim
        .device_event(|e| matches!(e, PeerEvent::PathSelected { .. }))
        .is_some());

    // The path breaks both ways (a NAT forgot its mapping).
    sim.viewers[v].up.rule = Rule::DropAll;
    sim.viewers[v].down.rule = Rule::DropAll;
    let last_heard = sim.viewers[v]
        .up
        .delivered
        .last()
        .expect("the viewer spoke")
        .at;
    let restarted = wait_device(&mut sim, Duration::from_secs(5), |e| {
        matches!(e, PeerEvent::IceRestart { .. })
    });
    // Detected from silence: the threshold after the last datagram from the viewer, to the
    // instant (a timer of its own, not the next frame's wake-up).
    assert_eq!(restarted - last_heard, after);
    let offer = sim
        .device_event(|e| matches!(e, PeerEvent::LocalOffer { .. }))
        .map(|(_, e)| match e {
            PeerEvent::LocalOffer { sdp, .. } => sdp.clone(),
            _ => unreachable!(),
        })
        .expect("the restart's offer");
    assert_ne!(
        super::sdp_ufrag(&offer),
        None,
        "the offer carries ICE credentials"
    );

    // The path is back; the offer and the answer cross signaling; video resumes, no new session.
    sim.viewers[v].up.rule = Rule::Pass;
    sim.viewers[v].down.rule = Rule::Pass;
    let answer = sim
        .with_viewer(v, |core, now| core.accept_offer(now, &offer))
        .expect("the viewer answers");
    sim.command(PeerCommand::RemoteAnswer {
        peer_id: "viewer-1".into(),
        sdp: answer,
    })
    .expect("the device takes the answer");
    let resumed_from = sim.viewers[v].video().len();
    let back = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(3), |s| s.viewers[v].video().len()
            >= resumed_from + 10),
        "video did not resume\n{}",
        sim.dump()
    );
    assert!(
        sim.now - back < Duration::from_secs(1),
        "{:?}",
        sim.now - back
    );
    assert_eq!(sim.device.session_count(), 1);
    assert!(sim
        .device_event(|e| matches!(e, PeerEvent::Closed { .. } | PeerEvent::Failed { .. }))
        .is_none());
}

/// Talk-back: a viewer offering audio sendrecv gets it answered sendrecv, and what it sends
/// comes out of the device's core as talk packets, in order, payloads intact, with their
/// codec; a viewer offering only PCMU is sent the PCMU packets of a source that gives several
/// codecs, and none of the others.
#[test]
fn talkback_packets_come_out_in_order_and_g711_is_chosen_by_negotiation() {
    let mut sim = Sim::new(PeerConfig {
        talkback: true,
        audio_codecs: vec![AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma],
        ..PeerConfig::default()
    });
    let v = sim.add_audio_viewer("talker", AudioCodec::Pcmu, true);
    sim.signal(v);
    wait_device(&mut sim, Duration::from_secs(5), connected("talker"));
    // The answer's audio m-line is sendrecv with PCMU only.
    let answer = first_answer(&sim);
    let audio = answer.split("m=audio").nth(1).unwrap();
    assert!(audio.contains("a=sendrecv"), "{audio}");
    assert!(
        audio.contains("PCMU/8000") && !audio.to_lowercase().contains("opus"),
        "{audio}"
    );

    // The viewer talks: 50 packets of 20 ms (160 PCMU bytes each).
    sim.run_for(100 * MS);
    for i in 0..50u64 {
        let payload: Vec<u8> = (0..160).map(|k| (i as u8).wrapping_add(k as u8)).collect();
        sim.with_viewer(v, |core, now| core.send_audio(now, i * 160, &payload))
            .expect("audio sent");
        // The device sends each 20 ms in all three codecs.
        let t = sim.elapsed().as_micros() as u64;
        for codec in [AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma] {
            let byte = match codec {
                AudioCodec::Opus => 0x01,
                AudioCodec::Pcmu => 0xff,
                AudioCodec::Pcma => 0xd5,
            };
            let frame = EncodedFrame::new(vec![byte; 160], t, kvs_platform::FrameKind::Key)
                .with_audio_codec(codec);
            sim.push(FanoutKind::Audio, frame);
        }
        sim.run_for(AUDIO_FRAME);
    }
    sim.run_for(100 * MS);
    let mut got = Vec::new();
    sim.with_device(|d, _| {
        while let Some(p) = d.poll_talk_packet() {
            got.push(p);
        }
    });
    assert_eq!(got.len(), 50, "every packet arrived once");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.peer_id, "talker");
        assert_eq!(p.codec, AudioCodec::Pcmu);
        assert_eq!(p.seq, got[0].seq + i as u64, "in order");
        assert_eq!(p.rtp_time - got[0].rtp_time, i as u64 * 160);
        let expected: Vec<u8> = (0..160).map(|k| (i as u8).wrapping_add(k as u8)).collect();
        assert_eq!(&p.payload[..], &expected[..], "payload {i} intact");
    }
    // What the viewer received: PCMU packets only (the 0xff "silence" we pushed).
    let audio: Vec<&crate::viewer::ReceivedFrame> = sim.viewers[v]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ViewerEvent::Audio(f) => Some(f),
            _ => None,
        })
        .collect();
    assert!(audio.len() >= 45, "PCMU frames received: {}", audio.len());
    assert!(audio
        .iter()
        .all(|f| f.data.len() == 160 && f.data.iter().all(|b| *b == 0xff)));
}

/// Receiving viewers' media (recording) without talk-back: the device still answers the
/// viewer's audio sendrecv, and what the viewer sends comes out of `poll_received` (not as
/// talk packets), in order, with its codec, then `Ended` once the session is gone. A keyframe
/// request to an unknown viewer is an error.
#[test]
fn received_media_comes_out_in_order_and_ends_with_the_session() {
    use kvs_media::receive::{RxItem, RxMedia};
    let mut sim = Sim::new(PeerConfig {
        receive_media: true,
        ..PeerConfig::default()
    });
    let v = sim.add_audio_viewer("camera", AudioCodec::Opus, true);
    sim.signal(v);
    wait_device(&mut sim, Duration::from_secs(5), connected("camera"));
    let answer = first_answer(&sim);
    assert!(answer
        .split("m=audio")
        .nth(1)
        .unwrap()
        .contains("a=sendrecv"));

    sim.run_for(100 * MS);
    for i in 0..20u64 {
        let payload = vec![i as u8; 40];
        sim.with_viewer(v, |core, now| core.send_audio(now, i * 960, &payload))
            .expect("audio sent");
        sim.run_for(AUDIO_FRAME);
    }
    sim.run_for(100 * MS);
    let mut got = Vec::new();
    sim.with_device(|d, _| {
        assert!(d.poll_talk_packet().is_none(), "talk-back is off");
        while let Some(item) = d.poll_received() {
            got.push(item);
        }
    });
    let packets: Vec<_> = got
        .iter()
        .filter_map(|i| match i {
            RxItem::Packet(p) => Some(p),
            RxItem::Ended { .. } => None,
        })
        .collect();
    assert_eq!(packets.len(), 20, "every packet once");
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(p.peer_id, "camera");
        assert_eq!(p.media, RxMedia::Audio(AudioCodec::Opus));
        assert_eq!(p.seq, packets[0].seq + i as u64);
        assert_eq!(&p.payload[..], &vec![i as u8; 40][..]);
    }

    assert!(matches!(
        sim.command(PeerCommand::RequestViewerKeyframe {
            peer_id: "nobody".into()
        }),
        Err(PeerError::UnknownPeer(_))
    ));
    sim.command(PeerCommand::RequestViewerKeyframe {
        peer_id: "camera".into(),
    })
    .expect("a PLI to a live viewer");

    sim.command(PeerCommand::CloseSession {
        peer_id: "camera".into(),
    })
    .unwrap();
    sim.run_for(100 * MS);
    let mut ended = Vec::new();
    sim.with_device(|d, _| {
        while let Some(item) = d.poll_received() {
            ended.push(item);
        }
    });
    assert!(
        ended.contains(&RxItem::Ended {
            peer_id: "camera".into()
        }),
        "{ended:?}"
    );
}

/// An offer the device makes when receiving: video sendrecv with a camera, recvonly without;
/// audio sendrecv either way.
#[test]
fn device_offers_receive_video_only_when_configured() {
    for (video, receive, want) in [
        (Some(crate::api::VideoCodec::H264), true, "a=sendrecv"),
        (None, true, "a=recvonly"),
        (Some(crate::api::VideoCodec::H264), false, "a=sendonly"),
    ] {
        let mut sim = Sim::new(PeerConfig {
            video,
            receive_media: receive,
            ..PeerConfig::default()
        });
        sim.command(PeerCommand::CreateOffer {
            peer_id: "v".into(),
        })
        .unwrap();
        sim.run_for(10 * MS);
        let offer = sim
            .device_events
            .iter()
            .find_map(|(_, e)| match e {
                PeerEvent::LocalOffer { sdp, .. } => Some(sdp.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let m_video = offer.split("m=video").nth(1).unwrap_or("");
        let m_video = m_video.split("m=").next().unwrap();
        assert!(
            m_video.contains(want),
            "video {video:?} receive {receive}: {m_video}"
        );
        assert!(m_video.contains("H264"), "{m_video}");
    }
}

/// Loses the 30th RTP datagram (not RTCP: second byte 192..=223), once; a fn pointer for
/// [`Rule::DropIf`], which only the test below uses.
fn lose_one_video_packet(d: &[u8]) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let rtp = d.len() > 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1]);
    rtp && SEEN.fetch_add(1, Ordering::Relaxed) == 30
}

#[test]
fn a_lost_video_packet_is_resent_and_its_frame_arrives_whole() {
    let (mut sim, v) = sim_with_one_viewer(PeerConfig::default());
    sim.viewers[v].down.rule = Rule::DropIf(lose_one_video_packet);
    // Video only, so that every RTP datagram is video.
    sim.start_camera(FRAME, None);
    sim.signal(v);
    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));

    let found = sim.run_until(Duration::from_secs(3), |s| s.viewers[v].video().len() >= 40);
    assert!(found, "the viewer receives video");
    assert_eq!(sim.viewers[v].down.dropped, 1, "one datagram lost");

    let video = pushed_video(&sim);
    let first_after = video
        .iter()
        .position(|p| p.at > t_conn && p.frame.kind == kvs_platform::FrameKind::Key)
        .expect("an IDR after the keyframe request");
    // Every frame from that IDR on arrives whole and in order: the lost packet was
    // served from the resend buffer (no frame skipped, no second keyframe needed).
    let received = sim.viewers[v].video();
    for (i, (_, f)) in received.iter().enumerate() {
        assert_eq!(f.data, video[first_after + i].frame.data, "video frame {i}");
        assert!(f.contiguous, "video frame {i}");
    }
    assert_eq!(
        sim.device_event_times(keyframe_requested),
        vec![t_conn],
        "no keyframe asked for to repair the loss"
    );
}

/// A STUN message (first byte 0 or 1: RFC 7983).
fn is_stun(d: &[u8]) -> bool {
    d.first().is_some_and(|b| *b < 2)
}

#[test]
fn no_check_of_ours_reaches_the_viewer_before_our_answer() {
    let (mut sim, v) = sim_with_one_viewer(PeerConfig::default());
    sim.send_offer(v, false).expect("offer accepted");
    sim.send_viewer_candidate(v).expect("candidate accepted");
    // Signaling is slower than UDP: the answer is still on its way 40 ms later.
    sim.run_for(40 * MS);
    assert!(
        sim.viewers[v].down.delivered_at(is_stun).is_empty(),
        "a check reached the viewer before the answer"
    );
    sim.deliver_answer(v, false);
    sim.deliver_device_candidates(v);
    let answered = sim.now;
    let t_conn = wait_device(&mut sim, Duration::from_secs(2), connected("viewer-1"));
    // The viewer's check (10 ms), our reply and our own check (10 ms), its reply (10 ms), DTLS.
    assert!(
        t_conn - answered < 100 * MS,
        "connected {:?} after the answer",
        t_conn - answered
    );
}

#[test]
fn a_viewer_that_cannot_reach_us_gets_our_checks_once_the_hold_ends() {
    let (mut sim, v) = sim_with_one_viewer(PeerConfig::default());
    // Nothing from the viewer reaches us (our NAT would need a packet of ours first).
    sim.viewers[v].up.rule = Rule::DropAll;
    let t0 = sim.now;
    sim.signal(v);
    let found = sim.run_until(Duration::from_secs(1), |s| {
        !s.viewers[v].down.delivered_at(is_stun).is_empty()
    });
    assert!(found, "the device never checked the viewer");
    let first = sim.viewers[v].down.delivered_at(is_stun)[0];
    // Sent when the hold ends, delivered after the link's 10 ms.
    assert!(
        first >= t0 + REMOTE_CANDIDATE_HOLD && first <= t0 + REMOTE_CANDIDATE_HOLD + 20 * MS,
        "first check delivered {:?} after the offer",
        first - t0
    );
}
