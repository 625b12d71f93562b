//! The device core in virtual time: every instant asserted is exact, and no test sleeps.

use super::*;
use kvs_signaling::MessagePayload;

/// Drives a core through virtual time and records each output with the instant it appeared.
struct Sim {
    core: DeviceCore,
    t0: Instant,
    now: Instant,
    log: Vec<(Duration, DeviceOutput)>,
    /// The number of the last connect attempt the core asked for.
    attempt: Option<u64>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Sim {
    fn new() -> Self {
        Self::with_config(CoreConfig::default())
    }

    fn with_config(config: CoreConfig) -> Self {
        let t0 = Instant::now();
        let mut sim = Sim {
            core: DeviceCore::new(config, t0),
            t0,
            now: t0,
            log: Vec::new(),
            attempt: None,
        };
        sim.collect();
        sim
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn collect(&mut self) {
        let at = self.elapsed();
        while let Some(o) = self.core.poll_output() {
            if let DeviceOutput::Connect { attempt } = o {
                self.attempt = Some(attempt);
            }
            self.log.push((at, o));
        }
    }

    /// Fire every timer due up to `t` (since start), in order, and move the clock to `t`.
    fn run_until(&mut self, t: Duration) {
        let end = self.t0 + t;
        while let Some(due) = self.core.poll_timeout().filter(|d| *d <= end) {
            self.now = due.max(self.now);
            self.core.handle_timeout(self.now);
            self.collect();
        }
        self.now = end;
    }

    fn input(&mut self, input: DeviceInput) {
        self.core.handle_input(self.now, input);
        self.collect();
    }

    fn take(&mut self) -> Vec<(Duration, DeviceOutput)> {
        std::mem::take(&mut self.log)
    }

    /// The attempt number of the last Connect output.
    fn last_attempt(&self) -> u64 {
        self.attempt.expect("a connect attempt")
    }

    /// Connect successfully at the current instant (an attempt must be under way).
    fn connect(&mut self) {
        let attempt = self.last_attempt();
        self.input(DeviceInput::Connected { attempt });
    }
}

fn connects(log: &[(Duration, DeviceOutput)]) -> Vec<Duration> {
    log.iter()
        .filter(|(_, o)| matches!(o, DeviceOutput::Connect { .. }))
        .map(|(t, _)| *t)
        .collect()
}

fn fetches(log: &[(Duration, DeviceOutput)]) -> Vec<(Duration, bool)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            DeviceOutput::FetchIceServers { bypass_cache } => Some((*t, *bypass_cache)),
            _ => None,
        })
        .collect()
}

fn events(log: &[(Duration, DeviceOutput)], kind: EventKind) -> Vec<(Duration, AppEvent)> {
    log.iter()
        .filter_map(|(t, o)| match o {
            DeviceOutput::Event(e) if e.kind == kind => Some((*t, e.clone())),
            _ => None,
        })
        .collect()
}

fn sends(log: &[(Duration, DeviceOutput)]) -> Vec<SignalingMessage> {
    log.iter()
        .filter_map(|(_, o)| match o {
            DeviceOutput::Send { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn states(log: &[(Duration, DeviceOutput)]) -> Vec<DeviceState> {
    log.iter()
        .filter_map(|(_, o)| match o {
            DeviceOutput::State(s) => Some(*s),
            _ => None,
        })
        .collect()
}

fn servers(ttl: Option<Duration>) -> Vec<IceServer> {
    vec![
        IceServer::stun("stun:stun.example:443"),
        IceServer {
            urls: vec!["turn:turn.example:443?transport=udp".into()],
            username: Some("1:u".into()),
            credential: Some("p".into()),
            ttl,
        },
    ]
}

fn message(kind: MessageKind, peer: Option<&str>, payload: MessagePayload) -> SignalingMessage {
    SignalingMessage {
        kind,
        peer_client_id: peer.map(str::to_owned),
        correlation_id: None,
        payload,
    }
}

fn offer(peer: &str, correlation: &str) -> DeviceInput {
    DeviceInput::Signaling(SignalingEvent::Message(
        message(
            MessageKind::Offer,
            Some(peer),
            MessagePayload::Sdp("v=0".into()),
        )
        .with_correlation_id(correlation),
    ))
}

#[test]
fn connects_at_once_then_backs_off_5_10_20_40_60_s_until_a_success_resets_it() {
    let mut sim = Sim::new();
    // Every attempt fails the moment it is made.
    for _ in 0..10 {
        let attempt = sim.last_attempt();
        sim.input(DeviceInput::ConnectFailed {
            attempt,
            reason: "refused".into(),
        });
        let next = sim.core.poll_timeout().expect("a retry is scheduled");
        sim.run_until(next - sim.t0);
    }
    let log = sim.take();
    assert_eq!(
        connects(&log),
        [0, 5, 15, 35, 75, 135, 195, 255, 315, 375, 435].map(|s| secs(s as f64))
    );
    let scheduled = events(&log, EventKind::SignalingReconnectScheduled);
    assert!(scheduled[0].1.message.contains("retrying signaling in 5 s"));
    assert!(scheduled[4]
        .1
        .message
        .contains("retrying signaling in 60 s"));

    // A success resets the sequence: the next loss waits 5 s again.
    sim.connect();
    assert!(sim.core.is_signaling_up());
    assert_eq!(
        fetches(&sim.take()),
        [(secs(435.0), false)],
        "ICE fetched once up"
    );
    sim.run_until(secs(500.0));
    sim.input(DeviceInput::Signaling(SignalingEvent::Disconnected {
        reason: "closed by service".into(),
    }));
    sim.run_until(secs(510.0));
    let log = sim.take();
    assert_eq!(connects(&log), [secs(505.0)]);
    assert_eq!(
        events(&log, EventKind::SignalingDisconnected)[0].0,
        secs(500.0)
    );
}

#[test]
fn a_connect_attempt_that_hangs_is_given_up_after_15_s() {
    let mut sim = Sim::new();
    assert_eq!(sim.core.poll_timeout(), Some(sim.t0 + secs(15.0)));
    sim.run_until(secs(100.0));
    let log = sim.take();
    let aborts: Vec<_> = log
        .iter()
        .filter_map(|(t, o)| match o {
            DeviceOutput::AbortConnect { attempt } => Some((*t, *attempt)),
            _ => None,
        })
        .collect();
    // Attempt at 0 given up at 15, retry 5 s later at 20 given up at 35, retry 10 s later at
    // 45 given up at 60, retry 20 s later at 80 given up at 95; the next is due at 135.
    assert_eq!(
        aborts,
        [
            (secs(15.0), 1),
            (secs(35.0), 2),
            (secs(60.0), 3),
            (secs(95.0), 4)
        ]
    );
    assert_eq!(sim.core.poll_timeout(), Some(sim.t0 + secs(135.0)));
    assert_eq!(connects(&log), [0.0, 20.0, 45.0, 80.0].map(secs));
    let errors = events(&log, EventKind::SignalingError);
    assert_eq!(errors[0].0, secs(15.0));
    assert!(
        errors[0].1.message.contains("timed out after 15 s"),
        "{}",
        errors[0].1
    );

    // The abandoned attempt connecting late is closed, not used.
    sim.input(DeviceInput::Connected { attempt: 2 });
    assert!(matches!(
        sim.take().last(),
        Some((_, DeviceOutput::CloseLink))
    ));
    assert!(!sim.core.is_signaling_up());
    // The current attempt's failure after its give-up instant is not counted twice.
    sim.input(DeviceInput::ConnectFailed {
        attempt: 1,
        reason: "late".into(),
    });
    assert!(sim.take().is_empty());
}

#[test]
fn go_away_reconnects_at_once_and_leaves_sessions_alone() {
    let mut sim = Sim::new();
    sim.connect();
    sim.input(offer("viewer-1", "c1"));
    sim.input(DeviceInput::Peer(PeerEvent::Requested {
        peer_id: "viewer-1".into(),
    }));
    sim.run_until(secs(100.0));
    sim.take();
    let go_away = message(MessageKind::GoAway, None, MessagePayload::None);
    sim.input(DeviceInput::Signaling(SignalingEvent::Message(go_away)));
    let log = sim.take();
    let close_at = log
        .iter()
        .position(|(_, o)| matches!(o, DeviceOutput::CloseLink))
        .expect("link closed");
    let connect_at = log
        .iter()
        .position(|(_, o)| matches!(o, DeviceOutput::Connect { .. }))
        .expect("reconnected");
    assert!(close_at < connect_at);
    assert_eq!(connects(&log), [secs(100.0)], "no backoff after GO_AWAY");
    assert!(
        !log.iter().any(|(_, o)| matches!(o, DeviceOutput::Peer(_))),
        "sessions untouched: {log:?}"
    );
    assert_eq!(sim.core.viewer_count(), 1);
}

#[test]
fn ice_servers_are_fetched_on_connect_and_refreshed_at_80_percent_of_the_ttl() {
    let mut sim = Sim::new();
    sim.run_until(secs(1.0));
    sim.connect();
    assert_eq!(fetches(&sim.take()), [(secs(1.0), false)]);

    sim.run_until(secs(1.5));
    sim.input(DeviceInput::IceServers(Ok(servers(Some(secs(300.0))))));
    let log = sim.take();
    let got = events(&log, EventKind::SignalingGetIce);
    assert!(got[0]
        .1
        .message
        .contains("2 ICE servers (1 TURN), valid 300 s"));
    assert!(log.iter().any(|(_, o)| matches!(
        o,
        DeviceOutput::Peer(PeerCommand::SetIceServers { servers }) if servers.len() == 2
    )));
    // 80 % of 300 s after the answer, bypassing the cache.
    assert_eq!(sim.core.poll_timeout(), Some(sim.t0 + secs(241.5)));
    sim.run_until(secs(300.0));
    assert_eq!(fetches(&sim.take()), [(secs(241.5), true)]);

    // Short TTLs: always before expiry.
    for (ttl, expected) in [(2.0, 1.6), (1.0, 0.9), (0.5, 0.45)] {
        let start = sim.elapsed();
        sim.input(DeviceInput::IceServers(Ok(servers(Some(secs(ttl))))));
        sim.run_until(start + secs(10.0));
        let f = fetches(&sim.take());
        assert_eq!(f[0].0, start + secs(expected), "ttl {ttl}");
    }
    // No TTL: nothing expires, no refresh.
    sim.input(DeviceInput::IceServers(Ok(servers(None))));
    let start = sim.elapsed();
    sim.run_until(start + secs(3600.0));
    assert!(fetches(&sim.take()).is_empty());
}

#[test]
fn the_refresh_delay_is_never_after_expiry_and_never_zero() {
    for ms in [
        125u64, 200, 500, 999, 1000, 1100, 1250, 2000, 30_000, 300_000, 86_400_000,
    ] {
        let ttl = Duration::from_millis(ms);
        let d = ice_refresh_delay(ttl);
        assert!(d < ttl, "ttl {ttl:?} → {d:?}");
        assert!(d >= ttl * 8 / 10, "ttl {ttl:?} → {d:?}");
    }
    assert_eq!(
        ice_refresh_delay(Duration::ZERO),
        Duration::from_millis(100)
    );
    assert_eq!(ice_refresh_delay(secs(300.0)), secs(240.0));
}

#[test]
fn a_failing_ice_fetch_is_retried_5_10_20_40_60_s_bypassing_the_cache() {
    let mut sim = Sim::new();
    sim.connect();
    for _ in 0..7 {
        sim.input(DeviceInput::IceServers(Err("service down".into())));
        let next = sim.core.poll_timeout().unwrap();
        sim.run_until(next - sim.t0);
    }
    let log = sim.take();
    assert_eq!(
        fetches(&log),
        [
            (secs(0.0), false),
            (secs(5.0), true),
            (secs(15.0), true),
            (secs(35.0), true),
            (secs(75.0), true),
            (secs(135.0), true),
            (secs(195.0), true),
            (secs(255.0), true),
        ]
    );
    let errors = events(&log, EventKind::SignalingError);
    assert!(errors[0].1.message.contains("service down"));
    assert!(errors[0].1.message.contains("retrying in 5 s"));
    // A success ends the retries.
    sim.input(DeviceInput::IceServers(Ok(servers(Some(secs(300.0))))));
    assert_eq!(sim.core.poll_timeout(), Some(sim.now + secs(240.0)));
}

#[test]
fn reconnect_ice_server_fetches_at_once_or_right_after_the_fetch_in_flight() {
    let mut sim = Sim::new();
    sim.connect();
    sim.input(DeviceInput::IceServers(Ok(servers(Some(secs(3600.0))))));
    sim.run_until(secs(10.0));
    sim.take();
    let ask = || {
        DeviceInput::Signaling(SignalingEvent::Message(message(
            MessageKind::ReconnectIceServer,
            None,
            MessagePayload::None,
        )))
    };
    sim.input(ask());
    assert_eq!(fetches(&sim.take()), [(secs(10.0), true)]);
    // Asked again while that fetch runs: one more fetch once it ends, not two at once.
    sim.run_until(secs(11.0));
    sim.input(ask());
    assert!(fetches(&sim.take()).is_empty());
    sim.run_until(secs(12.0));
    sim.input(DeviceInput::IceServers(Ok(servers(Some(secs(3600.0))))));
    assert_eq!(fetches(&sim.take()), [(secs(12.0), true)]);
}

#[test]
fn an_offer_beyond_the_viewer_limit_is_refused_against_its_correlation_id() {
    let mut sim = Sim::new();
    sim.connect();
    sim.input(offer("viewer-1", "c1"));
    sim.input(DeviceInput::Peer(PeerEvent::Requested {
        peer_id: "viewer-1".into(),
    }));
    sim.input(offer("viewer-2", "c2"));
    let log = sim.take();
    assert!(log.iter().any(|(_, o)| matches!(
        o,
        DeviceOutput::Peer(PeerCommand::RemoteOffer { peer_id, .. }) if peer_id == "viewer-2"
    )));
    // The engine is at its limit.
    sim.input(DeviceInput::Peer(PeerEvent::OfferRefused {
        peer_id: "viewer-2".into(),
        reason: "session limit of 1 reached".into(),
        code: kvs_peer::api::REFUSED_SESSION_LIMIT,
    }));
    let log = sim.take();
    let refusal = &sends(&log)[0];
    assert_eq!(refusal.kind, MessageKind::Answer);
    assert_eq!(refusal.peer_client_id.as_deref(), Some("viewer-2"));
    assert_eq!(refusal.correlation_id.as_deref(), Some("c2"));
    match &refusal.payload {
        MessagePayload::Refusal(r) => {
            assert_eq!(r.code, "SESSION_LIMIT");
            assert!(r.reason.contains("session limit of 1"));
        }
        other => panic!("not a refusal: {other:?}"),
    }
    assert_eq!(events(&log, EventKind::PeerRefused).len(), 1);
    assert_eq!(
        sim.core.tracked_viewers(),
        1,
        "the refused viewer is forgotten"
    );
    assert_eq!(
        sim.core.viewer_count(),
        1,
        "the first viewer keeps its session"
    );
}

#[test]
fn offers_the_engine_cannot_take_leave_no_bookkeeping_behind() {
    let mut sim = Sim::new();
    sim.connect();
    for i in 0..10_000 {
        let id = format!("bad-{i}");
        sim.input(offer(&id, "c"));
        sim.input(DeviceInput::PeerCommandFailed {
            peer_id: Some(id),
            error: "invalid SDP".into(),
        });
    }
    assert_eq!(sim.core.tracked_viewers(), 0);
    sim.take();

    // Offers the engine has not answered yet are bounded too; the rest are refused.
    for i in 0..(MAX_TRACKED_VIEWERS + 50) {
        sim.input(offer(&format!("flood-{i}"), "c"));
    }
    assert_eq!(sim.core.tracked_viewers(), MAX_TRACKED_VIEWERS);
    let log = sim.take();
    let refused = sends(&log)
        .into_iter()
        .filter(|m| matches!(m.payload, MessagePayload::Refusal(_)))
        .count();
    assert_eq!(refused, 50);

    // A failed renegotiation of a live session keeps the viewer.
    let mut sim = Sim::new();
    sim.connect();
    sim.input(offer("v", "c1"));
    sim.input(DeviceInput::Peer(PeerEvent::Requested {
        peer_id: "v".into(),
    }));
    sim.input(offer("v", "c2"));
    sim.input(DeviceInput::PeerCommandFailed {
        peer_id: Some("v".into()),
        error: "bad renegotiation".into(),
    });
    assert_eq!(sim.core.viewer_count(), 1);
}

#[test]
fn messages_for_signaling_are_dropped_while_it_is_down_and_sent_when_up() {
    let mut sim = Sim::new();
    let candidate = || {
        DeviceInput::Peer(PeerEvent::LocalCandidate {
            peer_id: "v".into(),
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        })
    };
    sim.input(candidate());
    assert!(sends(&sim.take()).is_empty());
    sim.connect();
    sim.input(candidate());
    let log = sim.take();
    let sent: Vec<_> = log
        .iter()
        .filter_map(|(_, o)| match o {
            DeviceOutput::Send { message, then } => Some((message, then)),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.kind, MessageKind::IceCandidate);
    assert_eq!(
        sent[0].1.as_ref().map(|e| e.kind),
        Some(EventKind::SentIceCandidate)
    );
}

#[test]
fn state_follows_signaling_and_viewers() {
    let mut sim = Sim::new();
    sim.connect();
    sim.input(offer("v", "c"));
    sim.input(DeviceInput::Peer(PeerEvent::Requested {
        peer_id: "v".into(),
    }));
    sim.input(DeviceInput::Peer(PeerEvent::Closed {
        peer_id: "v".into(),
        stats: Default::default(),
    }));
    sim.input(DeviceInput::Signaling(SignalingEvent::Disconnected {
        reason: "gone".into(),
    }));
    let log = sim.take();
    assert_eq!(
        states(&log),
        [
            DeviceState::SignalingConnecting,
            DeviceState::Ready { viewers: 0 },
            DeviceState::Ready { viewers: 1 },
            DeviceState::Ready { viewers: 0 },
            DeviceState::SignalingBackoff,
        ]
    );
    assert_eq!(events(&log, EventKind::StreamingStopped).len(), 1);
    assert_eq!(sim.core.tracked_viewers(), 0);
}

#[test]
fn data_channel_messages_are_echoed_only_when_configured() {
    let data = || {
        DeviceInput::Peer(PeerEvent::DataMessage {
            peer_id: "v".into(),
            data: bytes::Bytes::from_static(b"hi"),
            binary: false,
        })
    };
    let mut sim = Sim::new();
    sim.input(data());
    assert!(!sim
        .take()
        .iter()
        .any(|(_, o)| matches!(o, DeviceOutput::Peer(PeerCommand::SendData { .. }))));
    let mut sim = Sim::with_config(CoreConfig {
        data_channel_echo: true,
        ..CoreConfig::default()
    });
    sim.input(data());
    assert!(sim.take().iter().any(|(_, o)| matches!(
        o,
        DeviceOutput::Peer(PeerCommand::SendData { data, .. }) if &data[..] == b"hi"
    )));
}

#[test]
fn streaming_off_tells_every_viewer_why_closes_their_sessions_pauses_capture_and_refuses_offers() {
    let mut sim = Sim::new();
    sim.connect();
    for (peer, corr) in [("viewer-1", "c1"), ("viewer-2", "c2")] {
        sim.input(offer(peer, corr));
        sim.input(DeviceInput::Peer(PeerEvent::Requested {
            peer_id: peer.into(),
        }));
    }
    sim.take();

    sim.input(DeviceInput::SetStreaming(false));
    let log = sim.take();
    let refusals = sends(&log);
    assert_eq!(refusals.len(), 2);
    for (msg, (peer, corr)) in refusals
        .iter()
        .zip([("viewer-1", "c1"), ("viewer-2", "c2")])
    {
        assert_eq!(msg.peer_client_id.as_deref(), Some(peer));
        assert_eq!(msg.correlation_id.as_deref(), Some(corr));
        match &msg.payload {
            MessagePayload::Refusal(r) => assert_eq!(r.code, STREAM_OFF),
            other => panic!("not a refusal: {other:?}"),
        }
    }
    let closes = |log: &[(Duration, DeviceOutput)]| -> Vec<(Duration, String)> {
        log.iter()
            .filter_map(|(t, o)| match o {
                DeviceOutput::Peer(PeerCommand::CloseSession { peer_id }) => {
                    Some((*t, peer_id.clone()))
                }
                _ => None,
            })
            .collect()
    };
    assert!(closes(&log).is_empty(), "told first, closed a moment later");
    assert!(log
        .iter()
        .any(|(_, o)| matches!(o, DeviceOutput::PauseCapture(true))));
    let off_at = sim.elapsed();
    sim.run_until(off_at + secs(1.0));
    let log = sim.take();
    let at = off_at + STREAM_OFF_CLOSE_AFTER;
    assert_eq!(
        closes(&log),
        [(at, "viewer-1".to_string()), (at, "viewer-2".to_string())]
    );
    assert!(!sim.core.is_streaming());

    // Switching off twice does nothing more.
    sim.input(DeviceInput::SetStreaming(false));
    assert!(sim.take().is_empty());

    // An offer while off: refused with the reason, nothing tracked, nothing for the engine.
    sim.input(offer("viewer-3", "c3"));
    let log = sim.take();
    assert!(!log
        .iter()
        .any(|(_, o)| matches!(o, DeviceOutput::Peer(PeerCommand::RemoteOffer { .. }))));
    match &sends(&log)[0].payload {
        MessagePayload::Refusal(r) => assert_eq!(r.code, STREAM_OFF),
        other => panic!("not a refusal: {other:?}"),
    }
    assert!(!sim.core.viewers.contains_key("viewer-3"));

    // On again: capture resumes and offers are taken.
    sim.input(DeviceInput::SetStreaming(true));
    assert!(sim
        .take()
        .iter()
        .any(|(_, o)| matches!(o, DeviceOutput::PauseCapture(false))));
    sim.input(offer("viewer-3", "c4"));
    assert!(sim.take().iter().any(|(_, o)| matches!(
        o,
        DeviceOutput::Peer(PeerCommand::RemoteOffer { peer_id, .. }) if peer_id == "viewer-3"
    )));
}
