//! # The media side: [`MediaSideCore`], the streaming process that sleeps.
//!
//! Owns the media side of the wake handshake (Ready only once the driver declared its handler
//! registered — the fix of upstream's "wedge"), turning link messages into application
//! outputs and application events into link messages, heartbeats, and the sleep policy
//! (20 s without a viewer after waking or after the last offer, 10 s after the last viewer
//! left). Sans-IO: inputs carry `now`, outputs are polled, [`MediaSideCore::poll_timeout`]
//! says when to call [`MediaSideCore::handle_timeout`].
//!
//! It must not touch WebRTC sessions (offers and candidates leave as outputs, answers come
//! back as inputs), the camera, power management (it emits [`MediaOutput::Sleep`]; powering
//! down is the driver's business), sockets, or clocks.
//!
//! Outputs are produced in causal order: the MediaStatus "sleeping" bytes come out before
//! [`MediaOutput::Sleep`], so a driver that writes every `Transmit` before acting on `Sleep`
//! never powers down with the announcement unsent.

use std::time::{Duration, Instant};

use crate::command::{self, CommandDone, CommandError, Incoming, Outstanding, RespondError};
use crate::frame::{DeframerConfig, DeframerStats, FrameError};
use crate::link::{Out, Outbox};
use crate::message::{
    CandidateMessage, Command, CommandResponse, CorrelationId, ErrorReply, IceServer,
    IceServerList, MediaState, MediaStatus, Message, MessageError, MessageType, PeerId, PeerRef,
    Refusal, SdpMessage, Status,
};

/// Timers and limits of the media side. `Default` is the documented design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    pub link: DeframerConfig,
    pub heartbeat_interval: Duration,
    /// Silence after which the signaling side is reported lost.
    pub peer_timeout: Duration,
    /// Sleep when no viewer joined this long after waking (or after the last offer).
    pub idle_after_wake: Duration,
    /// Sleep this long after the last viewer left.
    pub idle_after_last_viewer: Duration,
    /// Requests to the signaling side outstanding at once (GetTime).
    pub max_outstanding_requests: usize,
    pub command_timeout: Duration,
    /// Requests from the signaling side the application may leave unanswered at once.
    pub max_incoming_requests: usize,
    /// An unanswered incoming request stops counting (for the table bound and for sleep)
    /// after this long: the requester gave up long before.
    pub incoming_stale_after: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            link: DeframerConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(15),
            idle_after_wake: Duration::from_secs(20),
            idle_after_last_viewer: Duration::from_secs(10),
            max_outstanding_requests: 4,
            command_timeout: Duration::from_secs(2),
            max_incoming_requests: 8,
            incoming_stale_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaPhase {
    /// Awake, but the application's handler is not registered: no Ready, nothing delivered.
    Starting,
    /// Ready: messages flow.
    Awake,
    /// Sleep was emitted; the driver is powering down (or waiting for
    /// [`MediaSideCore::handle_wake`]).
    Sleeping,
}

/// What the driver (and the application behind it) must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaOutput {
    /// Write these bytes to the link, in order.
    Transmit(Vec<u8>),
    /// A viewer's offer: create a session and answer with [`MediaSideCore::send_answer`].
    Offer(SdpMessage),
    /// A viewer's trickled candidate.
    IceCandidate(CandidateMessage),
    /// Create an offer for this viewer and send it with [`MediaSideCore::send_offer`].
    TriggerOffer(PeerRef),
    /// A viewer's answer to an offer the device made after a trigger.
    Answer(SdpMessage),
    /// The current ICE server list: use it for new sessions.
    IceServers(Vec<IceServer>),
    /// The signaling side asks something (a snapshot, the resolution, a remote-control change
    /// [`Command::SetControl`] to apply to the running pipeline); answer with
    /// [`MediaSideCore::respond`] (for SetControl: [`CommandResponse::Applied`]).
    CommandRequest { request_id: u32, command: Command },
    /// A command asked with [`MediaSideCore::request`] finished.
    CommandDone(CommandDone),
    /// Power down now (after writing every `Transmit` before it).
    Sleep,
    /// Nothing from the signaling side for the peer timeout.
    SignalingLost,
    /// The signaling side is heard again after [`MediaOutput::SignalingLost`].
    SignalingBack,
}

/// Counters for health reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub messages_received: u64,
    pub parse_errors: u64,
    /// ReadyQuery received before the handler was ready (deliberately not answered).
    pub ready_queries_unanswered: u64,
    /// Offers refused because the handler was not ready or the side was going to sleep.
    pub offers_refused: u64,
    /// Candidates (and answers) received while no session could exist (not ready, or
    /// sleeping).
    pub candidates_dropped: u64,
    pub unexpected: u64,
    pub error_replies_received: u64,
    pub late_responses: u64,
    pub sleeps: u64,
}

/// The media side's state machine. See the module docs.
#[derive(Debug)]
pub struct MediaSideCore {
    config: MediaConfig,
    out: Outbox<MediaOutput>,
    phase: MediaPhase,
    handler_ready: bool,
    viewers: u16,
    /// The idle timer runs from here for `idle_for` (only while there is no viewer).
    idle_anchor: Instant,
    idle_for: Duration,
    last_rx: Instant,
    signaling_lost: bool,
    next_heartbeat: Instant,
    ice_servers: Option<IceServerList>,
    /// A list arrived before the handler was ready: deliver it when it is.
    ice_undelivered: bool,
    outstanding: Outstanding,
    incoming: Incoming,
    stats: MediaStats,
}

impl MediaSideCore {
    /// The media side just woke (or started). It says nothing until
    /// [`MediaSideCore::set_handler_ready`]: a Ready before that is exactly upstream's wedge.
    pub fn new(config: MediaConfig, now: Instant) -> Self {
        MediaSideCore {
            out: Outbox::new(config.link),
            outstanding: Outstanding::new(config.max_outstanding_requests),
            incoming: Incoming::new(config.max_incoming_requests, config.incoming_stale_after),
            idle_for: config.idle_after_wake,
            config,
            phase: MediaPhase::Starting,
            handler_ready: false,
            viewers: 0,
            idle_anchor: now,
            last_rx: now,
            signaling_lost: false,
            next_heartbeat: now,
            ice_servers: None,
            ice_undelivered: false,
            stats: MediaStats::default(),
        }
    }

    pub fn phase(&self) -> MediaPhase {
        self.phase
    }
    pub fn viewers(&self) -> u16 {
        self.viewers
    }
    pub fn config(&self) -> &MediaConfig {
        &self.config
    }
    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }
    pub fn link_stats(&self) -> &DeframerStats {
        self.out.deframer().stats()
    }
    /// The latest ICE server list received.
    pub fn ice_servers(&self) -> Option<&[IceServer]> {
        self.ice_servers.as_ref().map(IceServerList::servers)
    }

    /// The next output, in causal order.
    pub fn poll_output(&mut self) -> Option<MediaOutput> {
        match self.out.poll()? {
            Out::Bytes(b) => Some(MediaOutput::Transmit(b)),
            Out::Event(e) => Some(e),
        }
    }

    /// When [`MediaSideCore::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.out.poll_timeout(),
            self.idle_deadline(),
            (self.phase == MediaPhase::Awake).then_some(self.next_heartbeat),
            (self.phase == MediaPhase::Awake && !self.signaling_lost)
                .then_some(self.last_rx + self.config.peer_timeout),
            self.outstanding.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The application's message handler is registered: from now on messages can be
    /// delivered. Sends Ready (once, by itself) and the current status.
    pub fn set_handler_ready(&mut self, now: Instant) {
        if self.handler_ready {
            return;
        }
        self.handler_ready = true;
        if self.phase == MediaPhase::Starting {
            self.phase = MediaPhase::Awake;
            self.announce(now);
        }
    }

    /// Woken again after [`MediaOutput::Sleep`] with state retained (a process or MCU that
    /// did not restart). A restarted process makes a new core instead.
    pub fn handle_wake(&mut self, now: Instant) {
        if self.phase != MediaPhase::Sleeping {
            return;
        }
        self.arm_idle(now, self.config.idle_after_wake);
        if self.handler_ready {
            self.phase = MediaPhase::Awake;
            self.announce(now);
        } else {
            self.phase = MediaPhase::Starting;
        }
    }

    /// Bytes read from the link (any split).
    pub fn handle_link_bytes(&mut self, now: Instant, data: &[u8]) {
        let mut messages = Vec::new();
        // Bounded by `data`: every message takes at least 24 bytes of it.
        self.out.receive(data, now, |m| messages.push(m));
        for m in messages {
            self.on_link_message(now, m);
        }
    }

    /// The link was re-established: drop half-received data and, if ready, say so again
    /// (upstream's "READY after connecting").
    pub fn handle_link_reset(&mut self, now: Instant) {
        self.out.reset_receiver();
        if self.phase == MediaPhase::Awake {
            self.announce(now);
        }
    }

    /// A viewer session started (call once per session, e.g. when the answer is sent).
    pub fn viewer_joined(&mut self, now: Instant) {
        let _ = now;
        self.viewers = self.viewers.saturating_add(1);
        self.send_status();
    }

    /// A viewer session ended. Extra calls saturate at zero.
    pub fn viewer_left(&mut self, now: Instant) {
        if self.viewers == 0 {
            return;
        }
        self.viewers -= 1;
        if self.viewers == 0 {
            self.arm_idle(now, self.config.idle_after_last_viewer);
        }
        self.send_status();
    }

    /// The SDP answer for a viewer. An answer counts as activity (re-arms the idle timer).
    pub fn send_answer(&mut self, now: Instant, answer: SdpMessage) -> Result<(), FrameError> {
        self.arm_idle(now, self.config.idle_after_wake);
        self.out.send(&Message::Answer(answer))
    }

    /// The device's own offer for a viewer (after [`MediaOutput::TriggerOffer`]); counts as
    /// activity like an answer.
    pub fn send_offer(&mut self, now: Instant, offer: SdpMessage) -> Result<(), FrameError> {
        self.arm_idle(now, self.config.idle_after_wake);
        self.out.send(&Message::Offer(offer))
    }

    /// A device candidate for a viewer.
    pub fn send_candidate(
        &mut self,
        now: Instant,
        candidate: CandidateMessage,
    ) -> Result<(), FrameError> {
        let _ = now;
        self.out.send(&Message::IceCandidate(candidate))
    }

    /// Refuses a viewer; the signaling side turns it into a KVS refusal.
    pub fn refuse_viewer(
        &mut self,
        now: Instant,
        peer: PeerId,
        correlation_id: CorrelationId,
        code: Status,
        reason: &str,
    ) {
        let _ = now;
        self.send_refusal(peer, correlation_id, code, reason);
    }

    /// Asks the signaling side for the ICE server list; it arrives as
    /// [`MediaOutput::IceServers`]. Returns the request id.
    pub fn request_ice_servers(&mut self, now: Instant) -> u32 {
        let _ = now;
        let request_id = self.outstanding.next_id();
        self.send(&Message::IceServersRequest { request_id });
        request_id
    }

    /// Asks the signaling side something (GetTime). The result arrives as
    /// [`MediaOutput::CommandDone`].
    pub fn request(&mut self, now: Instant, command: Command) -> Result<u32, CommandError> {
        let request_id = self
            .outstanding
            .start(now, command, self.config.command_timeout)?;
        self.outstanding.send_held(now);
        self.send(&Message::Request {
            request_id,
            command,
        });
        Ok(request_id)
    }

    /// The application's answer to a [`MediaOutput::CommandRequest`].
    pub fn respond(
        &mut self,
        now: Instant,
        request_id: u32,
        response: CommandResponse,
    ) -> Result<(), RespondError> {
        let _ = now;
        command::respond(&mut self.incoming, &mut self.out, request_id, response)
    }

    /// Timers: heartbeats, liveness, sleep, command timeouts, stale partial messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.out.expire(now);
        for o in self.outstanding.remove_where(|o| now >= o.deadline) {
            self.out.event(MediaOutput::CommandDone(command::failed(
                &o,
                CommandError::Timeout,
            )));
        }
        if self.idle_deadline().is_some_and(|d| now >= d) {
            self.go_to_sleep();
            return;
        }
        if self.phase == MediaPhase::Awake {
            if !self.signaling_lost && now >= self.last_rx + self.config.peer_timeout {
                self.signaling_lost = true;
                self.out.event(MediaOutput::SignalingLost);
            }
            if now >= self.next_heartbeat {
                self.send(&Message::Heartbeat);
                self.next_heartbeat = now + self.config.heartbeat_interval;
            }
        }
    }

    // ---- internals ----

    fn send(&mut self, message: &Message) {
        // Only answers, candidates and command responses can exceed the limit; those are
        // sent through `out.send` directly with the error handled.
        let _ = self.out.send(message);
    }

    fn send_status(&mut self) {
        if self.phase == MediaPhase::Awake {
            self.send(&Message::MediaStatus(MediaStatus {
                state: MediaState::Awake,
                viewers: self.viewers,
            }));
        }
    }

    fn send_refusal(
        &mut self,
        peer: PeerId,
        correlation_id: CorrelationId,
        code: Status,
        reason: &str,
    ) {
        self.send(&Message::Refusal(Refusal {
            peer,
            correlation_id,
            code,
            reason: reason.to_owned(),
        }));
    }

    fn announce(&mut self, now: Instant) {
        self.send(&Message::Ready);
        self.send_status();
        self.last_rx = now;
        self.signaling_lost = false;
        self.next_heartbeat = now + self.config.heartbeat_interval;
        if self.ice_undelivered {
            self.ice_undelivered = false;
            if let Some(list) = &self.ice_servers {
                self.out
                    .event(MediaOutput::IceServers(list.servers().to_vec()));
            }
        }
    }

    fn arm_idle(&mut self, now: Instant, for_: Duration) {
        self.idle_anchor = now;
        self.idle_for = for_;
    }

    fn idle_deadline(&self) -> Option<Instant> {
        if self.phase == MediaPhase::Sleeping || self.viewers > 0 {
            return None;
        }
        let idle = self.idle_anchor + self.idle_for;
        // Not while the application still owes an answer to the signaling side.
        Some(self.incoming.busy_until().map_or(idle, |b| idle.max(b)))
    }

    fn go_to_sleep(&mut self) {
        self.stats.sleeps += 1;
        self.send(&Message::MediaStatus(MediaStatus {
            state: MediaState::Sleeping,
            viewers: 0,
        }));
        self.phase = MediaPhase::Sleeping;
        self.out.event(MediaOutput::Sleep);
    }

    /// Why a new session cannot be taken now, if it cannot.
    fn not_taking(&self) -> Option<(Status, &'static str)> {
        match self.phase {
            MediaPhase::Awake => None,
            MediaPhase::Starting => Some((Status::NOT_READY, "camera is starting")),
            MediaPhase::Sleeping => Some((Status::SLEEPING, "camera is going to sleep")),
        }
    }

    fn on_link_message(&mut self, now: Instant, parsed: Result<Message, MessageError>) {
        self.last_rx = now;
        if self.signaling_lost {
            self.signaling_lost = false;
            self.out.event(MediaOutput::SignalingBack);
        }
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
        match message {
            Message::ReadyQuery => {
                if self.phase == MediaPhase::Awake {
                    self.send(&Message::Ready);
                } else {
                    // The wedge fix: no Ready until the handler can take what follows it.
                    self.stats.ready_queries_unanswered += 1;
                }
            }
            Message::Offer(m) => match self.not_taking() {
                Some((code, reason)) => {
                    self.stats.offers_refused += 1;
                    self.send_refusal(m.peer, m.correlation_id, code, reason);
                }
                None => {
                    self.arm_idle(now, self.config.idle_after_wake);
                    self.out.event(MediaOutput::Offer(m));
                }
            },
            Message::TriggerOffer(m) => match self.not_taking() {
                Some((code, reason)) => {
                    self.stats.offers_refused += 1;
                    self.send_refusal(m.peer, m.correlation_id, code, reason);
                }
                None => {
                    self.arm_idle(now, self.config.idle_after_wake);
                    self.out.event(MediaOutput::TriggerOffer(m));
                }
            },
            Message::Answer(m) => {
                if self.phase == MediaPhase::Awake {
                    self.out.event(MediaOutput::Answer(m));
                } else {
                    self.stats.candidates_dropped += 1;
                }
            }
            Message::IceCandidate(m) => {
                if self.phase == MediaPhase::Awake {
                    self.out.event(MediaOutput::IceCandidate(m));
                } else {
                    self.stats.candidates_dropped += 1;
                }
            }
            Message::IceServers { servers, .. } => {
                if self.phase == MediaPhase::Awake {
                    self.out
                        .event(MediaOutput::IceServers(servers.servers().to_vec()));
                    self.ice_undelivered = false;
                } else {
                    self.ice_undelivered = true;
                }
                self.ice_servers = Some(servers);
            }
            Message::Heartbeat => {}
            Message::Request {
                request_id,
                command,
            } => {
                let refusal = match self.not_taking() {
                    Some((status, _)) => Some(status),
                    None if !self.incoming.admit(now, request_id, command.kind()) => {
                        Some(Status::BUSY)
                    }
                    None => None,
                };
                match refusal {
                    Some(status) => self.send(&Message::Error(ErrorReply::refusing(
                        request_id,
                        command.request_type(),
                        status,
                    ))),
                    None => self.out.event(MediaOutput::CommandRequest {
                        request_id,
                        command,
                    }),
                }
            }
            Message::Response {
                request_id,
                response,
            } => match self.outstanding.take(request_id) {
                Some(o) => {
                    let done = command::complete(&o, response, now);
                    self.out.event(MediaOutput::CommandDone(done));
                }
                None => self.stats.late_responses += 1,
            },
            Message::Error(e) => {
                self.stats.error_replies_received += 1;
                if let Some(o) = self.outstanding.take(e.request_id) {
                    self.out.event(MediaOutput::CommandDone(command::failed(
                        &o,
                        CommandError::Remote(e.status),
                    )));
                }
            }
            Message::IceServersRequest { request_id } => {
                self.stats.unexpected += 1;
                self.send(&Message::Error(ErrorReply::refusing(
                    request_id,
                    MessageType::IceServersRequest,
                    Status::UNEXPECTED,
                )));
            }
            // Messages only the media side sends: a confused or misconnected peer.
            Message::Refusal(_) | Message::MediaStatus(_) | Message::Ready => {
                self.stats.unexpected += 1
            }
        }
    }
}
