//! The device runtime's policy, sans-IO: when to connect to signaling and when to give up on an
//! attempt, the backoff between attempts, GO_AWAY, when to fetch ICE servers, which viewer
//! offered what, and how the peer engine's events become signaling messages and app events.
//!
//! [`DeviceCore`] takes inputs stamped with `now` ([`DeviceCore::handle_input`],
//! [`DeviceCore::handle_timeout`]) and yields [`DeviceOutput`]s and the instant it must be
//! woken next ([`DeviceCore::poll_timeout`]). It owns no socket, task, clock or channel: the
//! tokio driver in [`super::driver`] performs the outputs and feeds back what happened. Tests
//! drive it in virtual time (`core_tests.rs`).
//!
//! Must not touch: the signaling protocol (messages arrive decoded), sessions (the peer engine
//! owns them; this only tracks which viewers have one), capture devices.

use crate::backoff::{Backoff, BackoffConfig};
use crate::events::{AppEvent, EventKind};
use kvs_peer::{PeerCommand, PeerEvent, SessionStats, SessionTiming};
use kvs_signaling::{IceServer, MessageKind, Payload, SignalingEvent, SignalingMessage};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Refresh ICE servers at this share of the shortest TTL (their TURN credentials expire).
const ICE_REFRESH_AT_PERCENT: u32 = 80;
/// No sooner than this after a fetch, unless that would be after expiry (then at 90 % of the
/// TTL): a short TTL must not make the device hammer the service.
const ICE_REFRESH_MIN: Duration = Duration::from_secs(1);
/// Never sooner than this: a TTL of zero must not make a fetch loop.
const ICE_REFRESH_FLOOR: Duration = Duration::from_millis(100);
/// Retry delays of a failed ICE fetch: 5, 10, 20, 40, then 60 s.
const ICE_RETRY_MIN: Duration = Duration::from_secs(5);
const ICE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Most viewers with an offer in flight or a session at once. The engine refuses sessions
/// beyond its own limit; this bounds the bookkeeping a flood of offers with made-up client ids
/// could grow before the engine has answered them.
pub const MAX_TRACKED_VIEWERS: usize = 256;

/// When the device refreshes ICE servers whose shortest TTL is `ttl`, counted from the fetch.
pub fn ice_refresh_delay(ttl: Duration) -> Duration {
    let at_percent = ttl * ICE_REFRESH_AT_PERCENT / 100;
    at_percent
        .max(ICE_REFRESH_MIN.min(ttl * 9 / 10))
        .max(ICE_REFRESH_FLOOR)
}

/// What happened, as the driver reports it.
#[derive(Debug)]
pub enum DeviceInput {
    /// The connect attempt asked for by [`DeviceOutput::Connect`] succeeded; the driver now
    /// holds the link.
    Connected { attempt: u64 },
    /// The connect attempt failed.
    ConnectFailed { attempt: u64, reason: String },
    /// Something on the signaling link. [`SignalingEvent::Disconnected`] means the driver no
    /// longer has a link.
    Signaling(SignalingEvent),
    /// The ICE server fetch asked for by [`DeviceOutput::FetchIceServers`] ended.
    IceServers(Result<Vec<IceServer>, String>),
    /// An event of the peer engine.
    Peer(PeerEvent),
    /// The engine refused a command ([`DeviceOutput::Peer`]); `peer_id` names the viewer it
    /// was about, if any.
    PeerCommandFailed {
        peer_id: Option<String>,
        error: String,
    },
    /// Streaming switched on or off by the owner (remote control, the application).
    SetStreaming(bool),
}

pub use crate::control::STREAM_OFF;
use crate::control::STREAM_OFF_REASON;
/// Sessions close this long after their viewers were told why (over signaling, which is
/// slower than the DTLS close over UDP): the reason arrives first. No media flows meanwhile.
pub const STREAM_OFF_CLOSE_AFTER: Duration = Duration::from_millis(300);

/// What the core asks the driver to do.
#[derive(Debug, Clone)]
pub enum DeviceOutput {
    /// Open a signaling connection and report [`DeviceInput::Connected`] or
    /// [`DeviceInput::ConnectFailed`] with this attempt number.
    Connect { attempt: u64 },
    /// Give up on a connect attempt (it took too long): stop it and ignore its result.
    AbortConnect { attempt: u64 },
    /// Drop the signaling link (GO_AWAY, or a link for an attempt already given up).
    CloseLink,
    /// Fetch the ICE servers and report [`DeviceInput::IceServers`]; `bypass_cache` when the
    /// cached ones are expiring or the service asked for fresh ones.
    FetchIceServers { bypass_cache: bool },
    /// Send on the signaling link; publish `then` once it is handed over.
    Send {
        message: SignalingMessage,
        then: Option<AppEvent>,
    },
    /// A command for the peer engine.
    Peer(PeerCommand),
    /// Ask the camera for a keyframe.
    RequestKeyframe,
    /// Stop (true) or resume (false) the capture threads.
    PauseCapture(bool),
    /// Publish an application event.
    Event(AppEvent),
    /// The device's state changed.
    State(DeviceState),
}

/// Where the device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Connecting to signaling (first time or again).
    SignalingConnecting,
    /// Waiting before the next signaling attempt.
    SignalingBackoff,
    /// Connected to signaling; `viewers` sessions are live.
    Ready { viewers: usize },
    /// Shut down.
    Stopped,
}

/// Settings of the core (the parts of [`crate::DeviceConfig`] it needs).
#[derive(Debug, Clone, Default)]
pub struct CoreConfig {
    pub reconnect: BackoffConfig,
    /// Echo data-channel messages back to their sender.
    pub data_channel_echo: bool,
}

/// Where signaling stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No link; the next attempt is due at this instant.
    Waiting {
        next_attempt: Instant,
    },
    /// An attempt is under way; it is given up at `deadline`.
    Connecting {
        attempt: u64,
        deadline: Instant,
    },
    Up,
}

/// One viewer the device has heard from.
#[derive(Debug, Default)]
struct Viewer {
    /// The correlation id of its last offer, to answer a refusal against.
    offer_correlation: Option<String>,
    /// The engine created a session for it (until [`PeerEvent::Closed`]).
    has_session: bool,
}

/// Background refresh of the ICE servers: fetched once signaling is up, again at 80 % of the
/// shortest TTL or when the service sends RECONNECT_ICE_SERVER, retried with backoff on
/// failure. Never blocks signaling or media.
#[derive(Debug, Default)]
struct IceRefresh {
    in_flight: bool,
    /// When to fetch next; `None` while a fetch runs or when nothing expires.
    next: Option<Instant>,
    /// The next fetch must bypass the client's cache.
    bypass_cache: bool,
    /// Fetch again as soon as the one in flight ends (asked for while it ran).
    again_after_flight: bool,
    failures: u32,
    /// A list was handed to the peer engine at least once.
    fetched: bool,
}

/// A signaling link up at least this long counts as stable: when it is lost while viewers
/// watch, the first reconnect goes at once instead of after the backoff.
const STABLE_LINK: Duration = Duration::from_secs(30);

/// The device runtime's state machine. See the module doc.
#[derive(Debug)]
pub struct DeviceCore {
    config: CoreConfig,
    backoff: Backoff,
    /// When the signaling link last came up.
    up_since: Option<Instant>,
    link: Link,
    next_attempt_id: u64,
    ice: IceRefresh,
    viewers: HashMap<String, Viewer>,
    state: Option<DeviceState>,
    /// Off while the owner has switched streaming off.
    streaming: bool,
    /// Sessions to close at this instant (streaming was switched off).
    closing: Option<(Instant, Vec<String>)>,
    out: VecDeque<DeviceOutput>,
}

impl DeviceCore {
    /// A core that connects to signaling at `now`.
    pub fn new(config: CoreConfig, now: Instant) -> Self {
        let mut core = DeviceCore {
            backoff: Backoff::new(config.reconnect.clone()),
            up_since: None,
            config,
            link: Link::Waiting { next_attempt: now },
            next_attempt_id: 0,
            ice: IceRefresh::default(),
            viewers: HashMap::new(),
            state: None,
            streaming: true,
            closing: None,
            out: VecDeque::new(),
        };
        core.handle_timeout(now);
        core
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<DeviceOutput> {
        self.out.pop_front()
    }

    /// When [`DeviceCore::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = match self.link {
            Link::Waiting { next_attempt } => Some(next_attempt),
            Link::Connecting { deadline, .. } => Some(deadline),
            Link::Up => None,
        };
        let ice = self.ice.next.filter(|_| !self.ice.in_flight);
        let closing = self.closing.as_ref().map(|(at, _)| *at);
        [link, ice, closing].into_iter().flatten().min()
    }

    /// Viewers with a live session.
    pub fn viewer_count(&self) -> usize {
        self.viewers.values().filter(|v| v.has_session).count()
    }

    /// Viewers tracked at all (sessions and offers in flight); bounded by
    /// [`MAX_TRACKED_VIEWERS`].
    pub fn tracked_viewers(&self) -> usize {
        self.viewers.len()
    }

    pub fn is_signaling_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Time passed: start due connect attempts, give up late ones, start due ICE fetches.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing.as_ref().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, peers)) = self.closing.take() {
                for peer_id in peers {
                    self.out
                        .push_back(DeviceOutput::Peer(PeerCommand::CloseSession { peer_id }));
                }
            }
        }
        match self.link {
            Link::Waiting { next_attempt } if next_attempt <= now => self.start_attempt(now),
            Link::Connecting { attempt, deadline } if deadline <= now => {
                self.out.push_back(DeviceOutput::AbortConnect { attempt });
                let reason = format!(
                    "signaling connect timed out after {} s",
                    self.backoff.attempt_timeout().as_secs()
                );
                self.attempt_failed(now, reason);
            }
            _ => {}
        }
        if !self.ice.in_flight && self.ice.next.is_some_and(|at| at <= now) {
            self.ice.next = None;
            self.ice.in_flight = true;
            let bypass_cache = std::mem::take(&mut self.ice.bypass_cache) || self.ice.fetched;
            self.out
                .push_back(DeviceOutput::FetchIceServers { bypass_cache });
        }
    }

    /// Something happened.
    pub fn handle_input(&mut self, now: Instant, input: DeviceInput) {
        match input {
            DeviceInput::Connected { attempt } => self.on_connected(now, attempt),
            DeviceInput::ConnectFailed { attempt, reason } => {
                if matches!(self.link, Link::Connecting { attempt: a, .. } if a == attempt) {
                    self.attempt_failed(now, reason);
                }
            }
            DeviceInput::SetStreaming(on) => self.set_streaming(now, on),
            DeviceInput::Signaling(SignalingEvent::Message(msg)) => self.on_message(now, msg),
            DeviceInput::Signaling(SignalingEvent::Renewed { reason }) => {
                self.event(AppEvent::new(EventKind::SignalingRenewed, reason));
            }
            DeviceInput::Signaling(SignalingEvent::Disconnected { reason }) => {
                if self.link == Link::Up {
                    self.event(AppEvent::new(EventKind::SignalingDisconnected, reason));
                    let stable = self
                        .up_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_LINK);
                    if stable && self.viewer_count() > 0 {
                        // A link that had been up a while, lost with viewers watching: most
                        // likely the network moved (their ICE restarts need signaling), so
                        // the first attempt goes at once; failures then back off as usual.
                        self.link = Link::Waiting { next_attempt: now };
                        self.set_state(DeviceState::SignalingBackoff);
                        self.event(AppEvent::new(
                            EventKind::SignalingReconnectScheduled,
                            "retrying signaling now (viewers are watching)",
                        ));
                    } else {
                        self.schedule_retry(now);
                    }
                }
            }
            DeviceInput::IceServers(result) => self.on_ice_servers(now, result),
            DeviceInput::Peer(event) => self.on_peer_event(event),
            DeviceInput::PeerCommandFailed { peer_id, error } => {
                // A viewer whose offer the engine could not take (bad SDP, engine gone) has no
                // session: forget it, or a stream of bad offers would grow the map forever.
                if let Some(id) = &peer_id {
                    if self.viewers.get(id).is_some_and(|v| !v.has_session) {
                        self.viewers.remove(id);
                    }
                }
                let event = match &peer_id {
                    Some(id) => AppEvent::peer(
                        EventKind::Error,
                        id,
                        format!("peer engine refused a command: {error}"),
                    ),
                    None => AppEvent::new(
                        EventKind::Error,
                        format!("peer engine refused a command: {error}"),
                    ),
                };
                self.event(event.with_status(1));
            }
        }
        self.handle_timeout(now);
    }

    fn event(&mut self, event: AppEvent) {
        self.out.push_back(DeviceOutput::Event(event));
    }

    fn set_state(&mut self, state: DeviceState) {
        if self.state != Some(state) {
            self.state = Some(state);
            self.out.push_back(DeviceOutput::State(state));
        }
    }

    fn update_ready(&mut self) {
        if self.link == Link::Up {
            let viewers = self.viewer_count();
            self.set_state(DeviceState::Ready { viewers });
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        self.next_attempt_id += 1;
        let attempt = self.next_attempt_id;
        self.link = Link::Connecting {
            attempt,
            deadline: now + self.backoff.attempt_timeout(),
        };
        self.event(AppEvent::new(
            EventKind::SignalingConnecting,
            "connecting to signaling",
        ));
        self.set_state(DeviceState::SignalingConnecting);
        self.out.push_back(DeviceOutput::Connect { attempt });
    }

    fn attempt_failed(&mut self, now: Instant, reason: String) {
        self.event(AppEvent::new(EventKind::SignalingError, reason).with_status(1));
        self.schedule_retry(now);
    }

    fn schedule_retry(&mut self, now: Instant) {
        let delay = self.backoff.next_delay();
        self.link = Link::Waiting {
            next_attempt: now + delay,
        };
        self.set_state(DeviceState::SignalingBackoff);
        self.event(AppEvent::new(
            EventKind::SignalingReconnectScheduled,
            format!(
                "retrying signaling in {} s (attempt {})",
                delay.as_secs_f32(),
                self.backoff.failures() + 1
            ),
        ));
    }

    fn on_connected(&mut self, now: Instant, attempt: u64) {
        if !matches!(self.link, Link::Connecting { attempt: a, .. } if a == attempt) {
            // An attempt already given up (or one we never asked for) connected after all.
            self.out.push_back(DeviceOutput::CloseLink);
            return;
        }
        self.backoff.reset();
        self.link = Link::Up;
        self.up_since = Some(now);
        self.event(AppEvent::new(
            EventKind::SignalingConnected,
            "signaling connected",
        ));
        if self.viewer_count() > 0 {
            // An ICE restart offered while signaling was down was lost with it.
            self.out
                .push_back(DeviceOutput::Peer(PeerCommand::SignalingRestored));
        }
        self.update_ready();
        if !self.ice.fetched && !self.ice.in_flight {
            self.ice.next = Some(now);
        }
    }

    fn on_ice_servers(&mut self, now: Instant, result: Result<Vec<IceServer>, String>) {
        self.ice.in_flight = false;
        match result {
            Ok(servers) => {
                self.ice.failures = 0;
                self.ice.fetched = true;
                let shortest_ttl = servers.iter().filter_map(|s| s.ttl).min();
                self.ice.next = shortest_ttl.map(|ttl| now + ice_refresh_delay(ttl));
                let turn = servers
                    .iter()
                    .filter(|s| s.urls.iter().any(|u| u.starts_with("turn")))
                    .count();
                let message = match shortest_ttl {
                    Some(ttl) => format!(
                        "{} ICE servers ({turn} TURN), valid {} s",
                        servers.len(),
                        ttl.as_secs()
                    ),
                    None => format!("{} ICE servers ({turn} TURN)", servers.len()),
                };
                let servers = servers
                    .into_iter()
                    .map(|s| kvs_peer::IceServer {
                        urls: s.urls,
                        username: s.username,
                        credential: s.credential,
                    })
                    .collect();
                self.out
                    .push_back(DeviceOutput::Peer(PeerCommand::SetIceServers { servers }));
                self.event(AppEvent::new(EventKind::SignalingGetIce, message));
            }
            Err(reason) => {
                self.ice.failures += 1;
                let delay = ICE_RETRY_MIN
                    .saturating_mul(1 << self.ice.failures.min(5).saturating_sub(1))
                    .min(ICE_RETRY_MAX);
                self.ice.bypass_cache = true;
                self.ice.next = Some(now + delay);
                self.event(
                    AppEvent::new(
                        EventKind::SignalingError,
                        format!(
                            "fetching ICE servers failed ({reason}); retrying in {} s",
                            delay.as_secs()
                        ),
                    )
                    .with_status(1),
                );
            }
        }
        if std::mem::take(&mut self.ice.again_after_flight) {
            self.ice.bypass_cache = true;
            self.ice.next = Some(now);
        }
    }

    /// Whether the owner lets the device stream.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    fn set_streaming(&mut self, now: Instant, on: bool) {
        if self.streaming == on {
            return;
        }
        self.streaming = on;
        if on {
            self.event(AppEvent::new(
                EventKind::StreamingStarted,
                "streaming switched on",
            ));
            self.out.push_back(DeviceOutput::PauseCapture(false));
            return;
        }
        // Every viewer hears why, then (a moment later) its session closes; capture stops now.
        let mut peers: Vec<String> = self.viewers.keys().cloned().collect();
        peers.sort();
        for peer_id in &peers {
            let correlation = self
                .viewers
                .get_mut(peer_id)
                .and_then(|v| v.offer_correlation.take());
            let refusal = SignalingMessage::refusal_with_code(
                peer_id,
                STREAM_OFF,
                STREAM_OFF_REASON,
                correlation,
            );
            self.send(refusal, None);
        }
        if !peers.is_empty() {
            self.closing = Some((now + STREAM_OFF_CLOSE_AFTER, peers));
        }
        self.event(AppEvent::new(
            EventKind::StreamingStopped,
            "streaming switched off",
        ));
        self.out.push_back(DeviceOutput::PauseCapture(true));
    }

    /// Queue a message for signaling. While signaling is down it is dropped: trickled
    /// candidates then reach the viewer as peer-reflexive ones, and offers are re-sent by
    /// viewers that time out.
    fn send(&mut self, message: SignalingMessage, then: Option<AppEvent>) {
        if self.link != Link::Up {
            tracing::debug!(kind = ?message.kind, "signaling down; message dropped");
            return;
        }
        self.out.push_back(DeviceOutput::Send { message, then });
    }

    fn on_message(&mut self, now: Instant, msg: SignalingMessage) {
        let peer_id = msg.peer_client_id.clone().unwrap_or_default();
        let command = match (msg.kind, msg.payload) {
            (MessageKind::Offer, Payload::Sdp(sdp)) => {
                if peer_id.is_empty() {
                    self.event(
                        AppEvent::new(EventKind::Error, "offer without a sender client id ignored")
                            .with_status(1),
                    );
                    return;
                }
                if !self.streaming {
                    self.event(
                        AppEvent::peer(EventKind::PeerRefused, &peer_id, STREAM_OFF_REASON)
                            .with_status(1),
                    );
                    let refusal = SignalingMessage::refusal_with_code(
                        &peer_id,
                        STREAM_OFF,
                        STREAM_OFF_REASON,
                        msg.correlation_id,
                    );
                    self.send(refusal, None);
                    return;
                }
                if !self.viewers.contains_key(&peer_id) && self.viewers.len() >= MAX_TRACKED_VIEWERS
                {
                    let reason = format!(
                        "too many viewers at once ({MAX_TRACKED_VIEWERS} with a session or an offer in flight)"
                    );
                    self.event(
                        AppEvent::peer(EventKind::PeerRefused, &peer_id, reason.clone())
                            .with_status(1),
                    );
                    let refusal = SignalingMessage::refusal_with_code(
                        &peer_id,
                        "SESSION_LIMIT",
                        reason,
                        msg.correlation_id,
                    );
                    self.send(refusal, None);
                    return;
                }
                self.event(AppEvent::peer(EventKind::ReceivedOffer, &peer_id, ""));
                self.event(AppEvent::peer(
                    EventKind::PeerConnectionRequested,
                    &peer_id,
                    "",
                ));
                self.viewers
                    .entry(peer_id.clone())
                    .or_default()
                    .offer_correlation = msg.correlation_id;
                PeerCommand::RemoteOffer { peer_id, sdp }
            }
            (MessageKind::Answer, Payload::Sdp(sdp)) => {
                self.event(AppEvent::peer(EventKind::ReceivedAnswer, &peer_id, ""));
                PeerCommand::RemoteAnswer { peer_id, sdp }
            }
            (MessageKind::IceCandidate, Payload::Candidate(c)) => {
                self.event(AppEvent::peer(
                    EventKind::ReceivedIceCandidate,
                    &peer_id,
                    c.candidate.clone(),
                ));
                PeerCommand::RemoteCandidate {
                    peer_id,
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_m_line_index: c.sdp_m_line_index,
                }
            }
            (MessageKind::GoAway, _) => {
                self.event(AppEvent::new(
                    EventKind::SignalingDisconnected,
                    "GO_AWAY from signaling; reconnecting now",
                ));
                // Reconnect at once, without backoff; live sessions keep streaming.
                self.out.push_back(DeviceOutput::CloseLink);
                self.link = Link::Waiting { next_attempt: now };
                return;
            }
            (MessageKind::ReconnectIceServer, _) => {
                self.event(AppEvent::new(
                    EventKind::SignalingGetIce,
                    "signaling asked for an ICE server refresh",
                ));
                self.ice.bypass_cache = true;
                if self.ice.in_flight {
                    self.ice.again_after_flight = true;
                } else {
                    self.ice.next = Some(now);
                }
                return;
            }
            (MessageKind::StatusResponse, Payload::Status(status)) => {
                self.event(
                    AppEvent::new(
                        EventKind::SignalingStatus,
                        format!(
                            "delivery failed (correlation id {:?}): {} {}",
                            status.correlation_id,
                            status.error_type,
                            status.description.unwrap_or_default()
                        ),
                    )
                    .with_status(status.status_code.parse().unwrap_or(1)),
                );
                return;
            }
            (kind, _) => {
                self.event(
                    AppEvent::new(
                        EventKind::Error,
                        format!("unexpected {kind:?} message ignored"),
                    )
                    .with_status(1),
                );
                return;
            }
        };
        self.out.push_back(DeviceOutput::Peer(command));
    }

    fn on_peer_event(&mut self, event: PeerEvent) {
        use EventKind as K;
        match event {
            PeerEvent::LocalAnswer { peer_id, sdp } => {
                let then = AppEvent::peer(K::SentAnswer, &peer_id, "");
                self.send(SignalingMessage::answer(&peer_id, sdp), Some(then));
            }
            PeerEvent::LocalOffer { peer_id, sdp } => {
                let then = AppEvent::peer(K::SentOffer, &peer_id, "");
                self.send(SignalingMessage::offer(&peer_id, sdp), Some(then));
            }
            PeerEvent::LocalCandidate {
                peer_id,
                candidate,
                sdp_mid,
                sdp_m_line_index,
            } => {
                let then = AppEvent::peer(K::SentIceCandidate, &peer_id, candidate.clone());
                let msg =
                    SignalingMessage::candidate(&peer_id, candidate, sdp_mid, sdp_m_line_index);
                self.send(msg, Some(then));
            }
            PeerEvent::GatheringComplete { peer_id } => {
                self.event(AppEvent::peer(K::IceGatheringComplete, &peer_id, ""));
            }
            PeerEvent::OfferRefused {
                peer_id,
                reason,
                code,
            } => {
                self.event(AppEvent::peer(K::PeerRefused, &peer_id, reason.clone()).with_status(1));
                // KVS has no client-to-client error message: the refusal travels as an answer
                // whose payload carries the reason (see docs/PROTOCOL.md); viewers show it.
                let correlation = match self.viewers.get_mut(&peer_id) {
                    Some(v) if v.has_session => v.offer_correlation.take(),
                    Some(_) => self
                        .viewers
                        .remove(&peer_id)
                        .and_then(|v| v.offer_correlation),
                    None => None,
                };
                let refusal =
                    SignalingMessage::refusal_with_code(&peer_id, code, reason, correlation);
                self.send(refusal, None);
            }
            PeerEvent::Requested { peer_id } => {
                tracing::debug!(peer = %peer_id, "session created");
                if self.viewers.len() < MAX_TRACKED_VIEWERS || self.viewers.contains_key(&peer_id) {
                    self.viewers.entry(peer_id).or_default().has_session = true;
                }
                self.update_ready();
            }
            PeerEvent::Connecting { peer_id } => {
                self.event(AppEvent::peer(K::PeerConnecting, &peer_id, ""));
            }
            PeerEvent::Connected { peer_id } => {
                self.event(AppEvent::peer(K::PeerConnected, &peer_id, ""));
                self.update_ready();
            }
            PeerEvent::Disconnected { peer_id } => {
                self.event(AppEvent::peer(K::PeerDisconnected, &peer_id, ""));
            }
            PeerEvent::Failed { peer_id, reason } => {
                self.event(AppEvent::peer(K::PeerFailed, &peer_id, reason).with_status(1));
            }
            PeerEvent::DataChannelOpen { peer_id } => {
                self.event(AppEvent::peer(K::DataChannelOpen, &peer_id, ""));
            }
            PeerEvent::DataMessage {
                peer_id,
                data,
                binary,
            } => {
                self.event(AppEvent::peer(
                    K::DataChannelMessage,
                    &peer_id,
                    format!("{} bytes", data.len()),
                ));
                if self.config.data_channel_echo {
                    self.out
                        .push_back(DeviceOutput::Peer(PeerCommand::SendData {
                            peer_id,
                            data,
                            binary,
                        }));
                }
            }
            PeerEvent::KeyframeRequested { .. } => {
                self.out.push_back(DeviceOutput::RequestKeyframe);
            }
            PeerEvent::FirstKeyframeSent { peer_id } => {
                self.event(AppEvent::peer(
                    K::StreamingStarted,
                    &peer_id,
                    "first keyframe sent",
                ));
            }
            PeerEvent::SessionTiming { peer_id, timing } => {
                self.event(AppEvent::peer(
                    K::FirstFrameSent,
                    &peer_id,
                    describe_timing(&timing),
                ));
            }
            PeerEvent::Closed { peer_id, stats } => {
                self.viewers.remove(&peer_id);
                self.event(AppEvent::peer(
                    K::PeerDisconnected,
                    &peer_id,
                    describe_stats(&stats),
                ));
                if self.viewer_count() == 0 {
                    self.event(AppEvent::new(K::StreamingStopped, "no viewers left"));
                }
                self.update_ready();
            }
            PeerEvent::PathSelected { peer_id, path } => {
                self.event(AppEvent::peer(
                    K::IcePairSelected,
                    &peer_id,
                    path.to_string(),
                ));
            }
            PeerEvent::IceRestart { peer_id, reason } => {
                self.event(AppEvent::peer(K::IceRestart, &peer_id, reason));
            }
            PeerEvent::CandidateGathered { kind, addr, from } => {
                let how = if kind == "relay" { "via" } else { "from" };
                self.event(AppEvent::new(
                    K::IceCandidateGathered,
                    format!("{kind} {addr} {how} {from}"),
                ));
            }
            PeerEvent::NatServerError { uri, reason } => {
                self.event(AppEvent::new(K::TurnError, format!("{uri}: {reason}")).with_status(1));
            }
            // Adaptive bitrate's input: the driver hands these to `crate::abr`.
            PeerEvent::BitrateEstimate { .. } => {}
        }
    }
}

/// "answer 3 ms, ICE 20 ms, DTLS 35 ms, first keyframe 41 ms" — each since the offer arrived.
pub fn describe_timing(t: &SessionTiming) -> String {
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "since offer: answer sent {}, ICE connected {}, DTLS connected {}, first keyframe sent {}",
        ms(t.answer_sent),
        ms(t.ice_connected),
        ms(t.dtls_connected),
        ms(t.first_keyframe_sent)
    )
}

fn describe_stats(s: &SessionStats) -> String {
    format!(
        "session closed after {:.1} s: video frames sent {} dropped {}, audio frames sent {} dropped {}, data messages in {} out {}",
        s.duration.as_secs_f32(),
        s.video_frames_sent,
        s.video_frames_dropped,
        s.audio_frames_sent,
        s.audio_frames_dropped,
        s.data_messages_received,
        s.data_messages_sent
    )
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
