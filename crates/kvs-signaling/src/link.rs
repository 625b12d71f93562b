//! The signaling link's policy, sans-IO: keep-alive pings, renewing the connection before the
//! service's age limit (open the new one first, switch, let the old one drain), and what to do
//! when the old connection dies while the new one is still opening.
//!
//! [`LinkCore`] takes inputs stamped with `now` and yields [`LinkOutput`]s and its next
//! deadline; it never touches a socket. The tokio driver in [`crate::client`] owns the
//! WebSocket connections, performs the outputs and reports back. Connections are named by
//! [`ConnId`]s the core hands out.
//!
//! Must not touch: sockets, TLS, URLs and presigning (the driver opens connections), the wire
//! format (that is [`crate::codec`]), reconnection after the link ends (the application's).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::client::{encode_outgoing, Role, SignalingEvent};
use crate::codec::SignalingMessage;

/// Names one WebSocket connection of a link.
pub type ConnId = u64;

/// How a link keeps its connection alive and fresh.
#[derive(Debug, Clone)]
pub struct LinkPolicy {
    /// Keep-alive ping interval (the C SDK uses 10 s).
    pub ping_interval: Duration,
    /// Renew the connection after this long; `None` never renews.
    pub renew_after: Option<Duration>,
    /// How long a failed renewal waits before it tries again (the old connection still works).
    pub renew_retry: Duration,
    /// How long a replaced connection may keep delivering what was already in flight.
    pub drain_time: Duration,
    /// Messages held while the link moves to its renewal connection; more are dropped.
    pub max_held: usize,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            ping_interval: Duration::from_secs(10),
            renew_after: None,
            renew_retry: Duration::from_secs(30),
            drain_time: Duration::from_secs(5),
            max_held: 64,
        }
    }
}

/// What happened, as the driver reports it.
#[derive(Debug)]
pub enum LinkInput<'a> {
    /// A text or binary frame arrived on `conn`.
    Frame { conn: ConnId, bytes: &'a [u8] },
    /// `conn` ended (closed by the service, an error).
    Lost { conn: ConnId, reason: String },
    /// Sending `text` on `conn` failed; the connection is unusable.
    SendFailed {
        conn: ConnId,
        text: String,
        reason: String,
    },
    /// The connection asked for by [`LinkOutput::OpenRenewal`] is open.
    RenewalOpened { conn: ConnId },
    /// Opening it failed.
    RenewalFailed { conn: ConnId, reason: String },
    /// The application queued a message.
    Send(SignalingMessage),
    /// The application closed its end (or stopped listening).
    AppClosed { reason: String },
}

/// What the core asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkOutput {
    /// Send a text frame on `conn`.
    Transmit { conn: ConnId, text: String },
    /// Send a keep-alive ping on `conn`.
    Ping { conn: ConnId },
    /// Open a new connection to the service and report it as `conn`.
    OpenRenewal { conn: ConnId },
    /// Say goodbye on a replaced connection, but keep reading it until [`LinkOutput::Drop`].
    CloseGracefully { conn: ConnId },
    /// Stop reading `conn` and drop it.
    Drop { conn: ConnId },
    /// Tell the application.
    Event(SignalingEvent),
    /// The link is over: close what is left (`normal`: with a normal close frame).
    End { normal: bool },
}

/// One signaling link's state machine. See the module doc.
#[derive(Debug)]
pub struct LinkCore {
    role: Role,
    policy: LinkPolicy,
    current: ConnId,
    next_id: ConnId,
    next_ping: Instant,
    renew_at: Option<Instant>,
    /// The renewal connection being opened.
    renewing: Option<ConnId>,
    /// Why the current connection ended while a renewal was under way: the link waits for the
    /// renewal instead of ending.
    current_lost: Option<String>,
    /// Replaced connections still delivering, with the instant they are dropped.
    draining: Vec<(ConnId, Instant)>,
    /// Frames waiting for the renewal connection.
    held: VecDeque<String>,
    ended: bool,
    out: VecDeque<LinkOutput>,
}

impl LinkCore {
    /// A link whose first connection (named [`LinkCore::current`]) opened at `now`.
    pub fn new(role: Role, policy: LinkPolicy, now: Instant) -> Self {
        LinkCore {
            role,
            renew_at: policy.renew_after.map(|after| now + after),
            next_ping: now + policy.ping_interval,
            policy,
            current: 0,
            next_id: 1,
            renewing: None,
            current_lost: None,
            draining: Vec::new(),
            held: VecDeque::new(),
            ended: false,
            out: VecDeque::new(),
        }
    }

    /// The connection messages go out on.
    pub fn current(&self) -> ConnId {
        self.current
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn poll_output(&mut self) -> Option<LinkOutput> {
        self.out.pop_front()
    }

    /// When [`LinkCore::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let ping = self.current_lost.is_none().then_some(self.next_ping);
        let renew = self.renew_at.filter(|_| self.renewing.is_none());
        let drain = self.draining.iter().map(|(_, at)| *at).min();
        [ping, renew, drain].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self.current_lost.is_none() && self.next_ping <= now {
            self.out.push_back(LinkOutput::Ping { conn: self.current });
            self.next_ping = now + self.policy.ping_interval;
        }
        if self.renewing.is_none() && self.renew_at.is_some_and(|at| at <= now) {
            self.renew_at = None;
            let conn = self.next_id;
            self.next_id += 1;
            self.renewing = Some(conn);
            debug!("renewing the signaling connection");
            self.out.push_back(LinkOutput::OpenRenewal { conn });
        }
        let out = &mut self.out;
        self.draining.retain(|&(conn, until)| {
            let keep = until > now;
            if !keep {
                out.push_back(LinkOutput::Drop { conn });
            }
            keep
        });
    }

    pub fn handle_input(&mut self, now: Instant, input: LinkInput<'_>) {
        if self.ended {
            return;
        }
        match input {
            LinkInput::Frame { conn, bytes } => {
                if conn == self.current || self.draining.iter().any(|(c, _)| *c == conn) {
                    self.deliver(bytes);
                }
            }
            LinkInput::Lost { conn, reason } => self.lost(conn, reason, None),
            LinkInput::SendFailed { conn, text, reason } => {
                self.lost(conn, format!("send failed: {reason}"), Some(text))
            }
            LinkInput::RenewalOpened { conn } if self.renewing == Some(conn) => {
                self.switch_to(now, conn)
            }
            LinkInput::RenewalFailed { conn, reason } if self.renewing == Some(conn) => {
                self.renewing = None;
                match self.current_lost.take() {
                    Some(lost) => self.end(format!("{lost}; renewing failed too: {reason}"), false),
                    None => {
                        warn!(error = %reason, "renewing the signaling connection failed; the current one stays");
                        self.renew_at = Some(now + self.policy.renew_retry);
                    }
                }
            }
            // A renewal we no longer wait for: the driver drops what it opened.
            LinkInput::RenewalOpened { conn } => self.out.push_back(LinkOutput::Drop { conn }),
            LinkInput::RenewalFailed { .. } => {}
            LinkInput::Send(msg) => match encode_outgoing(&self.role, &msg) {
                Ok(text) if self.current_lost.is_some() => self.hold(text),
                Ok(text) => self.out.push_back(LinkOutput::Transmit {
                    conn: self.current,
                    text,
                }),
                Err(e) => {
                    error!(kind = ?msg.kind, peer = ?msg.peer_client_id, error = %e, "signaling message not sent");
                }
            },
            LinkInput::AppClosed { reason } => self.end(reason, true),
        }
    }

    /// Decodes one service frame for the application. Malformed frames are logged and skipped.
    fn deliver(&mut self, bytes: &[u8]) {
        match SignalingMessage::parse_service_frame(bytes) {
            Ok(msg) => {
                debug!(kind = ?msg.kind, peer = ?msg.peer_client_id, "signaling message received");
                self.out
                    .push_back(LinkOutput::Event(SignalingEvent::Message(msg)));
            }
            Err(e) => warn!(error = %e, "ignoring malformed signaling frame from the service"),
        }
    }

    fn hold(&mut self, text: String) {
        if self.held.len() >= self.policy.max_held {
            error!("signaling message dropped: too many waiting for the renewed connection");
            return;
        }
        self.held.push_back(text);
    }

    fn lost(&mut self, conn: ConnId, reason: String, unsent: Option<String>) {
        if let Some(i) = self.draining.iter().position(|(c, _)| *c == conn) {
            self.draining.swap_remove(i);
            self.out.push_back(LinkOutput::Drop { conn });
            return;
        }
        if conn != self.current || self.current_lost.is_some() {
            return;
        }
        // The service closes the old connection as soon as the new one is in, which can be
        // before the new one's handshake finished on our side: with a renewal under way, wait
        // for it instead of ending the link.
        if self.renewing.is_some() {
            debug!(%reason, "signaling connection ended during its renewal; waiting for the new one");
            self.current_lost = Some(reason);
            if let Some(text) = unsent {
                self.held.push_front(text);
            }
            return;
        }
        self.end(reason, false);
    }

    fn switch_to(&mut self, now: Instant, conn: ConnId) {
        self.renewing = None;
        let old = std::mem::replace(&mut self.current, conn);
        let after = self.policy.renew_after.unwrap_or_default();
        self.renew_at = self.policy.renew_after.map(|a| now + a);
        self.next_ping = now + self.policy.ping_interval;
        let reason = match self.current_lost.take() {
            Some(lost) => {
                self.out.push_back(LinkOutput::Drop { conn: old });
                format!(
                    "connection renewed after {} s (the old one ended: {lost})",
                    after.as_secs()
                )
            }
            None => {
                self.out
                    .push_back(LinkOutput::CloseGracefully { conn: old });
                self.draining.push((old, now + self.policy.drain_time));
                format!("connection renewed after {} s", after.as_secs())
            }
        };
        for text in self.held.drain(..) {
            self.out.push_back(LinkOutput::Transmit { conn, text });
        }
        info!(%reason, "signaling connection renewed");
        self.out
            .push_back(LinkOutput::Event(SignalingEvent::Renewed { reason }));
    }

    fn end(&mut self, reason: String, normal: bool) {
        self.ended = true;
        self.held.clear();
        info!(%reason, "signaling disconnected");
        self.out.push_back(LinkOutput::End { normal });
        self.out
            .push_back(LinkOutput::Event(SignalingEvent::Disconnected { reason }));
    }
}

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
