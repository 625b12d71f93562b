//! # The signaling side: [`SignalingSideCore`], the always-on relay.
//!
//! Owns the wake handshake (WaitingForWakeup / Ready), the bounded per-viewer queue of viewer
//! messages held while the media side wakes, viewer refusals (never a silent drop), link
//! liveness (heartbeats, 15 s death), the ICE server list the media side gets, and the
//! commands the application asks of the media side. Sans-IO: inputs carry `now`, outputs are
//! polled, [`SignalingSideCore::poll_timeout`] says when to call
//! [`SignalingSideCore::handle_timeout`].
//!
//! It must not touch KVS (viewer messages arrive typed; refusals and answers leave as outputs
//! the driver turns into KVS messages), the wake mechanism (it emits [`RelayOutput::Wake`];
//! a GPIO, a process start or a signal is the driver's business), sockets, or clocks.
//!
//! Driver loop:
//!
//! ```text
//! loop {
//!     while let Some(out) = core.poll_output() { route(out) }   // Transmit → link, Wake → GPIO…
//!     select! {
//!         bytes = link.read()  => core.handle_link_bytes(now, &bytes),
//!         m = kvs.recv()       => core.handle_viewer(now, m),
//!         _ = sleep_until(core.poll_timeout()) => core.handle_timeout(now),
//!     }
//! }
//! ```
//!
//! Outputs are produced in causal order (an event and the link bytes around it keep their
//! order), and their number per call is bounded by the input of that call: drain them after
//! every input.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::command::{self, CommandDone, CommandError, Incoming, Outstanding, RespondError};
use crate::frame::{DeframerConfig, DeframerStats};
use crate::link::{Out, Outbox};
use crate::message::{
    CandidateMessage, Command, CommandResponse, ControlSetting, CorrelationId, ErrorReply,
    IceServer, IceServerList, MediaState, Message, MessageError, PeerId, PeerRef, SdpMessage,
    Status, ValueError,
};

/// Limits and timers of the signaling side. `Default` is the documented design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub link: DeframerConfig,
    /// How long the media side has to answer Ready after a wake.
    pub wake_budget: Duration,
    /// ReadyQuery is repeated this often within the budget (a query sent while the media side
    /// was still booting is lost on a UART).
    pub ready_query_interval: Duration,
    /// Viewer messages held per viewer while waking (the offer included).
    pub max_queued_per_viewer: usize,
    /// Viewers held while waking.
    pub max_pending_viewers: usize,
    pub heartbeat_interval: Duration,
    /// Silence after which the media side is considered gone.
    pub peer_timeout: Duration,
    /// Requests to the media side outstanding at once.
    pub max_outstanding_requests: usize,
    pub snapshot_timeout: Duration,
    /// Timeout of the other commands (GetResolution, GetTime, SetControl).
    pub command_timeout: Duration,
    /// Requests from the media side the application may leave unanswered at once.
    pub max_incoming_requests: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            link: DeframerConfig::default(),
            wake_budget: Duration::from_secs(2),
            ready_query_interval: Duration::from_millis(500),
            max_queued_per_viewer: 24,
            max_pending_viewers: 8,
            heartbeat_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(15),
            max_outstanding_requests: 8,
            snapshot_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            max_incoming_requests: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayState {
    /// The media side is asleep, booting, or gone: viewer messages are held (waking it).
    WaitingForWakeup,
    /// The media side declared its handler registered: messages go straight through.
    Ready,
}

/// What the media side is, as far as the signaling side knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaPresence {
    Awake {
        viewers: u16,
    },
    Sleeping,
    /// Silent past the peer timeout, or its link went away.
    Gone,
}

/// A message from a viewer, as the KVS client delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerMessage {
    Offer(SdpMessage),
    /// The viewer's answer to an offer the device made (after a trigger).
    Answer(SdpMessage),
    IceCandidate(CandidateMessage),
    /// The viewer wants the device to make the offer.
    TriggerOffer(PeerRef),
}

impl ViewerMessage {
    pub fn peer(&self) -> &PeerId {
        match self {
            ViewerMessage::Offer(m) | ViewerMessage::Answer(m) => &m.peer,
            ViewerMessage::IceCandidate(m) => &m.peer,
            ViewerMessage::TriggerOffer(m) => &m.peer,
        }
    }
    fn correlation_id(&self) -> &CorrelationId {
        match self {
            ViewerMessage::Offer(m) | ViewerMessage::Answer(m) => &m.correlation_id,
            ViewerMessage::IceCandidate(m) => &m.correlation_id,
            ViewerMessage::TriggerOffer(m) => &m.correlation_id,
        }
    }
    /// Offers and trigger-offers start a session (and may wake the media side).
    fn starts_session(&self) -> bool {
        matches!(
            self,
            ViewerMessage::Offer(_) | ViewerMessage::TriggerOffer(_)
        )
    }
    fn into_message(self) -> Message {
        match self {
            ViewerMessage::Offer(m) => Message::Offer(m),
            ViewerMessage::Answer(m) => Message::Answer(m),
            ViewerMessage::IceCandidate(m) => Message::IceCandidate(m),
            ViewerMessage::TriggerOffer(m) => Message::TriggerOffer(m),
        }
    }
}

/// Why a viewer is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// More messages for this viewer than the queue holds while waking.
    QueueFull { limit: usize },
    /// More viewers waiting for the wake than allowed.
    TooManyPendingViewers { limit: usize },
    /// The media side did not answer Ready within the wake budget.
    WakeTimeout { budget: Duration },
    /// A message of this viewer exceeds the link's message limit.
    TooLarge,
    /// The media side refused it.
    Media { code: Status, reason: String },
}

impl RefusalReason {
    /// A status code for the KVS refusal.
    pub fn status(&self) -> Status {
        match self {
            RefusalReason::QueueFull { .. } | RefusalReason::TooManyPendingViewers { .. } => {
                Status::BUSY
            }
            RefusalReason::WakeTimeout { .. } => Status::UNAVAILABLE,
            RefusalReason::TooLarge => Status::TOO_LARGE,
            RefusalReason::Media { code, .. } => *code,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::QueueFull { limit } => write!(
                f,
                "camera waking up: more than {limit} messages for this viewer"
            ),
            RefusalReason::TooManyPendingViewers { limit } => {
                write!(f, "camera waking up: already {limit} viewers waiting")
            }
            RefusalReason::WakeTimeout { budget } => {
                write!(f, "camera did not wake up within {} ms", budget.as_millis())
            }
            RefusalReason::TooLarge => write!(f, "message too large for the camera link"),
            RefusalReason::Media { code, reason } => write!(f, "camera refused ({code}): {reason}"),
        }
    }
}

/// A viewer to refuse through KVS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerRefusal {
    pub peer: PeerId,
    /// The correlation id of the viewer's offer (empty if it had none).
    pub correlation_id: CorrelationId,
    pub reason: RefusalReason,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayOutput {
    /// Write these bytes to the link, in order.
    Transmit(Vec<u8>),
    /// Wake the media side (GPIO, process start, signal). Once per wake attempt.
    Wake,
    /// Send this answer to the viewer through KVS.
    Answer(SdpMessage),
    /// Send the device's offer to the viewer through KVS (after a trigger).
    Offer(SdpMessage),
    /// Send this device candidate to the viewer through KVS.
    IceCandidate(CandidateMessage),
    /// Refuse this viewer through KVS.
    Refuse(ViewerRefusal),
    /// The media side's presence changed.
    MediaStatus(MediaPresence),
    StateChanged(RelayState),
    /// The media side asked for ICE servers and none are known: fetch them and call
    /// [`SignalingSideCore::set_ice_servers`].
    IceServersNeeded,
    /// The media side asks something of the application (e.g. GetTime); answer with
    /// [`SignalingSideCore::respond`].
    CommandRequest {
        request_id: u32,
        command: Command,
    },
    /// A command asked with [`SignalingSideCore::request`] finished.
    CommandDone(CommandDone),
}

/// Counters for health reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub wakes: u64,
    pub wake_timeouts: u64,
    pub ready_queries: u64,
    pub queued: u64,
    pub flushed: u64,
    pub refused: u64,
    /// Candidates of a viewer with no held offer while the media side is not ready (there is
    /// no session anywhere they could belong to).
    pub dropped_without_offer: u64,
    /// Held messages replaced by a new offer of the same viewer.
    pub superseded: u64,
    pub media_lost: u64,
    pub messages_received: u64,
    pub parse_errors: u64,
    pub error_replies_received: u64,
    /// Valid messages this side does not take (wrong direction).
    pub unexpected: u64,
    /// Responses to no outstanding request (late, after a timeout).
    pub late_responses: u64,
}

#[derive(Debug, Clone, Copy)]
struct WakeAttempt {
    deadline: Instant,
    next_query: Instant,
}

#[derive(Debug)]
struct PendingViewer {
    peer: PeerId,
    correlation_id: CorrelationId,
    queued: usize,
}

/// The signaling side's state machine. See the module docs.
#[derive(Debug)]
pub struct SignalingSideCore {
    config: RelayConfig,
    out: Outbox<RelayOutput>,
    state: RelayState,
    presence: Option<MediaPresence>,
    wake: Option<WakeAttempt>,
    last_query: Option<Instant>,
    /// Held viewer messages in arrival order (order across viewers is kept too).
    queue: VecDeque<(PeerId, Message)>,
    pending: Vec<PendingViewer>,
    last_rx: Instant,
    next_heartbeat: Instant,
    ice_servers: Option<IceServerList>,
    /// The media side's latest IceServersRequest not yet answered (no list known).
    ice_request: Option<u32>,
    /// See [`SignalingSideCore::set_wake_settings`].
    wake_settings: Vec<ControlSetting>,
    outstanding: Outstanding,
    incoming: Incoming,
    stats: RelayStats,
}

impl SignalingSideCore {
    /// Starts in WaitingForWakeup and asks the media side whether it is ready (without
    /// waking it: a boot is no reason to wake a sleeping camera).
    pub fn new(config: RelayConfig, now: Instant) -> Self {
        let mut core = SignalingSideCore {
            out: Outbox::new(config.link),
            outstanding: Outstanding::new(config.max_outstanding_requests),
            incoming: Incoming::new(config.max_incoming_requests, Duration::from_secs(30)),
            config,
            state: RelayState::WaitingForWakeup,
            presence: None,
            wake: None,
            last_query: None,
            queue: VecDeque::new(),
            pending: Vec::new(),
            last_rx: now,
            next_heartbeat: now,
            ice_servers: None,
            ice_request: None,
            wake_settings: Vec::new(),
            stats: RelayStats::default(),
        };
        core.send_ready_query(now);
        core
    }

    pub fn state(&self) -> RelayState {
        self.state
    }
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
    pub fn link_stats(&self) -> &DeframerStats {
        self.out.deframer().stats()
    }
    /// Viewer messages currently held for a wake.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
    pub fn is_waking(&self) -> bool {
        self.wake.is_some()
    }

    /// The next output, in causal order.
    pub fn poll_output(&mut self) -> Option<RelayOutput> {
        match self.out.poll()? {
            Out::Bytes(b) => Some(RelayOutput::Transmit(b)),
            Out::Event(e) => Some(e),
        }
    }

    /// When [`SignalingSideCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.out.poll_timeout();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if let Some(w) = self.wake {
            consider(Some(w.deadline.min(w.next_query)));
        }
        if self.state == RelayState::Ready {
            consider(Some(self.next_heartbeat));
            consider(Some(self.last_rx + self.config.peer_timeout));
        }
        consider(self.outstanding.next_deadline());
        t
    }

    /// Bytes read from the link (any split).
    pub fn handle_link_bytes(&mut self, now: Instant, data: &[u8]) {
        let mut messages = Vec::new();
        // Collect first: handling a message needs the whole core, the deframer lends its
        // buffer. The list is bounded by `data` (every message takes >= 24 bytes of it).
        self.out.receive(data, now, |m| messages.push(m));
        for m in messages {
            self.on_link_message(now, m);
        }
    }

    /// The link was re-established (socket reconnected): whatever was half-received is
    /// gone, and the media side on the other end must say Ready again.
    pub fn handle_link_reset(&mut self, now: Instant) {
        self.out.reset_receiver();
        if self.state == RelayState::Ready {
            self.lose_media(now, MediaPresence::Gone);
        }
        self.send_ready_query(now);
    }

    /// A message from a viewer (through KVS).
    pub fn handle_viewer(&mut self, now: Instant, message: ViewerMessage) {
        if self.state == RelayState::Ready {
            let peer = message.peer().clone();
            let correlation_id = message.correlation_id().clone();
            self.forward(peer, correlation_id, message.into_message());
            return;
        }
        self.hold(now, message);
    }

    /// The application's current ICE server list (from the KVS control plane). Pushed to the
    /// media side now if it is ready, else after its next Ready.
    pub fn set_ice_servers(
        &mut self,
        now: Instant,
        servers: Vec<IceServer>,
    ) -> Result<(), ValueError> {
        let _ = now;
        let list = IceServerList::new(servers)?;
        self.ice_servers = Some(list);
        if let Some(request_id) = self.ice_request.take() {
            self.push_ice_servers(request_id);
        } else if self.state == RelayState::Ready {
            self.push_ice_servers(0);
        }
        Ok(())
    }

    /// Camera settings sent to the media side after every Ready, before the viewer messages
    /// held for it (it starts from its own configuration each time it wakes). Their results
    /// arrive as [`RelayOutput::CommandDone`]. Setting them wakes nothing.
    pub fn set_wake_settings(&mut self, settings: Vec<ControlSetting>) {
        self.wake_settings = settings;
    }

    /// Asks the media side something (waking it if needed), e.g. a snapshot or a remote-control
    /// change ([`Command::SetControl`]). The result arrives as [`RelayOutput::CommandDone`]
    /// with the returned request id; the timeout (snapshot 5 s, others 2 s) runs from now and
    /// includes the wake.
    pub fn request(&mut self, now: Instant, command: Command) -> Result<u32, CommandError> {
        let timeout = match command {
            Command::GetSnapshot { .. } => self.config.snapshot_timeout,
            Command::GetResolution | Command::GetTime | Command::SetControl(_) => {
                self.config.command_timeout
            }
        };
        let request_id = self.outstanding.start(now, command, timeout)?;
        if self.state == RelayState::Ready {
            self.send_held_requests(now);
        } else {
            self.start_wake(now);
        }
        Ok(request_id)
    }

    /// The application's answer to a [`RelayOutput::CommandRequest`].
    pub fn respond(
        &mut self,
        now: Instant,
        request_id: u32,
        response: CommandResponse,
    ) -> Result<(), RespondError> {
        let _ = now;
        command::respond(&mut self.incoming, &mut self.out, request_id, response)
    }

    /// Timers: ReadyQuery retries, the wake budget, heartbeats, liveness, command timeouts,
    /// stale partial messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.out.expire(now);
        if let Some(w) = self.wake {
            if now >= w.deadline {
                self.fail_wake(now);
            } else if now >= w.next_query {
                self.wake = Some(WakeAttempt {
                    next_query: now + self.config.ready_query_interval,
                    ..w
                });
                self.send_ready_query(now);
            }
        }
        if self.state == RelayState::Ready {
            if now >= self.last_rx + self.config.peer_timeout {
                self.stats.media_lost += 1;
                self.lose_media(now, MediaPresence::Gone);
            } else if now >= self.next_heartbeat {
                self.send(&Message::Heartbeat);
                self.next_heartbeat = now + self.config.heartbeat_interval;
            }
        }
        for o in self.outstanding.remove_where(|o| now >= o.deadline) {
            self.out.event(RelayOutput::CommandDone(command::failed(
                &o,
                CommandError::Timeout,
            )));
        }
    }

    // ---- internals ----

    fn send(&mut self, message: &Message) {
        // Only viewer messages and command responses can exceed the limit; both are handled
        // where they are sent. Everything else is a few hundred bytes at most.
        let _ = self.out.send(message);
    }

    fn send_ready_query(&mut self, now: Instant) {
        self.stats.ready_queries += 1;
        self.last_query = Some(now);
        self.send(&Message::ReadyQuery);
    }

    fn set_state(&mut self, state: RelayState) {
        if self.state != state {
            self.state = state;
            self.out.event(RelayOutput::StateChanged(state));
        }
    }

    fn set_presence(&mut self, presence: MediaPresence) {
        if self.presence != Some(presence) {
            self.presence = Some(presence);
            self.out.event(RelayOutput::MediaStatus(presence));
        }
    }

    fn start_wake(&mut self, now: Instant) {
        if self.wake.is_some() {
            return;
        }
        self.stats.wakes += 1;
        self.wake = Some(WakeAttempt {
            deadline: now + self.config.wake_budget,
            next_query: now + self.config.ready_query_interval,
        });
        self.out.event(RelayOutput::Wake);
        self.send_ready_query(now);
    }

    fn hold(&mut self, now: Instant, message: ViewerMessage) {
        let peer = message.peer().clone();
        let at = self.pending.iter().position(|p| p.peer == peer);
        let index = if message.starts_session() {
            match at {
                Some(i) => {
                    // A new offer from the same viewer replaces its held session attempt.
                    let before = self.queue.len();
                    self.queue.retain(|(p, _)| *p != peer);
                    self.stats.superseded += (before - self.queue.len()) as u64;
                    self.pending[i].queued = 0;
                    self.pending[i].correlation_id = message.correlation_id().clone();
                    i
                }
                None => {
                    if self.pending.len() >= self.config.max_pending_viewers {
                        let limit = self.config.max_pending_viewers;
                        self.refuse(
                            peer,
                            message.correlation_id().clone(),
                            RefusalReason::TooManyPendingViewers { limit },
                        );
                        return;
                    }
                    self.pending.push(PendingViewer {
                        peer: peer.clone(),
                        correlation_id: message.correlation_id().clone(),
                        queued: 0,
                    });
                    self.pending.len() - 1
                }
            }
        } else {
            match at {
                Some(i) => i,
                None => {
                    self.stats.dropped_without_offer += 1;
                    return;
                }
            }
        };
        if self.pending[index].queued >= self.config.max_queued_per_viewer {
            let limit = self.config.max_queued_per_viewer;
            let viewer = self.pending.remove(index);
            self.queue.retain(|(p, _)| *p != peer);
            self.refuse(
                viewer.peer,
                viewer.correlation_id,
                RefusalReason::QueueFull { limit },
            );
            return;
        }
        self.pending[index].queued += 1;
        self.queue.push_back((peer, message.into_message()));
        self.stats.queued += 1;
        self.start_wake(now);
    }

    fn refuse(&mut self, peer: PeerId, correlation_id: CorrelationId, reason: RefusalReason) {
        self.stats.refused += 1;
        self.out.event(RelayOutput::Refuse(ViewerRefusal {
            peer,
            correlation_id,
            reason,
        }));
    }

    fn forward(&mut self, peer: PeerId, correlation_id: CorrelationId, message: Message) {
        if self.out.send(&message).is_err() {
            self.refuse(peer, correlation_id, RefusalReason::TooLarge);
        }
    }

    fn fail_wake(&mut self, _now: Instant) {
        self.stats.wake_timeouts += 1;
        self.wake = None;
        let budget = self.config.wake_budget;
        self.queue.clear();
        for viewer in std::mem::take(&mut self.pending) {
            self.refuse(
                viewer.peer,
                viewer.correlation_id,
                RefusalReason::WakeTimeout { budget },
            );
        }
        for o in self.outstanding.remove_where(|o| o.sent_at.is_none()) {
            self.out.event(RelayOutput::CommandDone(command::failed(
                &o,
                CommandError::Unavailable,
            )));
        }
    }

    /// The media side went to sleep or away: back to waiting; what it was asked is lost.
    fn lose_media(&mut self, _now: Instant, presence: MediaPresence) {
        self.set_state(RelayState::WaitingForWakeup);
        self.set_presence(presence);
        for o in self.outstanding.remove_where(|o| o.sent_at.is_some()) {
            self.out.event(RelayOutput::CommandDone(command::failed(
                &o,
                CommandError::Unavailable,
            )));
        }
        self.incoming.clear();
    }

    fn on_ready(&mut self, now: Instant) {
        self.wake = None;
        self.set_state(RelayState::Ready);
        self.next_heartbeat = now + self.config.heartbeat_interval;
        // ICE servers first: the media side needs them to answer the offers that follow.
        if self.ice_servers.is_some() {
            self.push_ice_servers(0);
        }
        // Then the camera settings (a camera that woke starts from its configuration) and
        // whatever was asked while it slept, so the viewers' offers find them applied.
        for setting in self.wake_settings.clone() {
            let command = Command::SetControl(setting);
            if let Err(e) = self
                .outstanding
                .start(now, command, self.config.command_timeout)
            {
                self.out.event(RelayOutput::CommandDone(CommandDone {
                    request_id: 0,
                    command,
                    result: Err(e),
                }));
            }
        }
        self.send_held_requests(now);
        self.pending.clear();
        while let Some((peer, message)) = self.queue.pop_front() {
            self.stats.flushed += 1;
            let correlation_id = match &message {
                Message::Offer(m) | Message::Answer(m) => m.correlation_id.clone(),
                Message::IceCandidate(m) => m.correlation_id.clone(),
                Message::TriggerOffer(m) => m.correlation_id.clone(),
                _ => CorrelationId::none(),
            };
            self.forward(peer, correlation_id, message);
        }
    }

    fn send_held_requests(&mut self, now: Instant) {
        for o in self.outstanding.send_held(now) {
            self.send(&Message::Request {
                request_id: o.request_id,
                command: o.command,
            });
        }
    }

    fn push_ice_servers(&mut self, request_id: u32) {
        if let Some(servers) = self.ice_servers.clone() {
            self.send(&Message::IceServers {
                request_id,
                servers,
            });
        }
    }

    fn on_link_message(&mut self, now: Instant, parsed: Result<Message, MessageError>) {
        // Anything that came through the framing intact proves the media side is alive.
        self.last_rx = now;
        let message = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.stats.parse_errors += 1;
                if let Some(reply) = e.reply() {
                    self.send(&reply);
                }
                return;
            }
        };
        self.stats.messages_received += 1;
        if self.state == RelayState::WaitingForWakeup
            && !matches!(
                message,
                Message::Ready | Message::Error(_) | Message::MediaStatus(_)
            )
            && self
                .last_query
                .is_none_or(|t| now >= t + self.config.ready_query_interval)
        {
            // The media side talks but we are not in Ready (we restarted, or declared it
            // dead too early): ask, and its Ready brings both sides back in step.
            self.send_ready_query(now);
        }
        match message {
            Message::Ready => self.on_ready(now),
            Message::Heartbeat => {}
            Message::MediaStatus(s) => match s.state {
                MediaState::Awake => self.set_presence(MediaPresence::Awake { viewers: s.viewers }),
                MediaState::Sleeping => {
                    self.lose_media(now, MediaPresence::Sleeping);
                }
            },
            Message::Answer(m) => self.out.event(RelayOutput::Answer(m)),
            Message::Offer(m) => self.out.event(RelayOutput::Offer(m)),
            Message::IceCandidate(m) => self.out.event(RelayOutput::IceCandidate(m)),
            Message::Refusal(r) => self.refuse(
                r.peer,
                r.correlation_id,
                RefusalReason::Media {
                    code: r.code,
                    reason: r.reason,
                },
            ),
            Message::IceServersRequest { request_id } => {
                if self.ice_servers.is_some() {
                    self.push_ice_servers(request_id);
                } else {
                    self.ice_request = Some(request_id);
                    self.out.event(RelayOutput::IceServersNeeded);
                }
            }
            Message::Request {
                request_id,
                command,
            } => {
                if self.incoming.admit(now, request_id, command.kind()) {
                    self.out.event(RelayOutput::CommandRequest {
                        request_id,
                        command,
                    });
                } else {
                    self.send(&Message::Error(ErrorReply::refusing(
                        request_id,
                        command.request_type(),
                        Status::BUSY,
                    )));
                }
            }
            Message::Response {
                request_id,
                response,
            } => match self.outstanding.take(request_id) {
                Some(o) => {
                    let done = command::complete(&o, response, now);
                    self.out.event(RelayOutput::CommandDone(done));
                }
                None => self.stats.late_responses += 1,
            },
            Message::Error(e) => {
                self.stats.error_replies_received += 1;
                if let Some(o) = self.outstanding.take(e.request_id) {
                    self.out.event(RelayOutput::CommandDone(command::failed(
                        &o,
                        CommandError::Remote(e.status),
                    )));
                }
            }
            // Messages only the signaling side sends: a confused or misconnected peer.
            Message::TriggerOffer(_) | Message::IceServers { .. } | Message::ReadyQuery => {
                self.stats.unexpected += 1
            }
        }
    }
}
