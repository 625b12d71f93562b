//! The sans-IO routing core of the local KVS-compatible signaling service.
//!
//! Owns: the channel registry (name → ARN), who is connected to each channel (one master,
//! viewers by client id), routing of client frames between them, the undelivered-message store
//! (kept for the channel's message TTL), and the STATUS_RESPONSE / GO_AWAY frames the service
//! sends. Modelled on str0m: one object, inputs are method calls with the current time passed
//! in, outputs are drained with [`RoutingCore::poll_output`].
//!
//! Must not touch: sockets, tasks, clocks, HTTP, authentication. The tokio/axum edge in
//! [`crate::server`] feeds this core and carries out its outputs.
//!
//! Routing rules (see `docs/KVS-SIGNALING.md` §2):
//! - viewer → master: the frame's recipient is ignored and `senderClientId` is set to the
//!   viewer's client id;
//! - master → viewer: the frame must name `recipientClientId`; the delivered frame carries no
//!   `senderClientId`;
//! - a message whose recipient is not connected is stored for the message TTL and delivered
//!   when it connects. A newer offer from the same sender replaces everything that sender had
//!   still queued for that recipient (the old negotiation is dead). Master → viewer messages
//!   are stored only for viewers seen within the TTL; others are "recipient unknown";
//! - failures are answered with STATUS_RESPONSE only when the frame had a correlation id.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvs_signaling_codec::{
    base64_decoded_len, salvage_correlation_id, validate_client_id, Action, ClientFrame,
    CodecError, ServiceFrame, StatusResponse,
};
use tracing::{debug, info, warn};

use crate::ServiceConfig;

/// Identifies one WebSocket connection inside the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// The role a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectRole {
    Master,
    Viewer { client_id: String },
}

/// A signaling channel as the service describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: String,
    /// `arn:aws:kinesisvideo:<region>:<account>:channel/<name>/<13-digit creation ms>`.
    pub arn: String,
    pub created_at: SystemTime,
    /// How long undelivered messages for this channel are kept (MessageTtlSeconds, 5–120 s).
    pub message_ttl: Duration,
    /// Opaque version string; DeleteSignalingChannel may require it (`CurrentVersion`).
    pub version: String,
}

/// Why a channel cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid channel name: {0}")]
    InvalidName(&'static str),
    #[error("channel `{}` already exists", .0.name)]
    AlreadyExists(Box<ChannelInfo>),
    #[error("no channel with ARN `{0}`")]
    NotFound(String),
    #[error("the channel's version is `{current}`, not `{given}`")]
    VersionMismatch { current: String, given: String },
    #[error("MessageTtlSeconds must be between 5 and 120")]
    InvalidTtl,
}

/// The range KVS accepts for `MessageTtlSeconds`.
pub const MESSAGE_TTL_RANGE: std::ops::RangeInclusive<u64> = 5..=120;

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no channel with ARN `{0}`")]
    UnknownChannel(String),
    #[error("invalid X-Amz-ClientId: {0}")]
    InvalidClientId(CodecError),
    #[error("channel already has {limit} viewers connected")]
    ViewerLimit { limit: usize },
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// What the I/O edge must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame on the connection.
    Send { to: ConnectionId, text: String },
    /// Close the connection (after sending what was queued before).
    Close { conn: ConnectionId, reason: String },
}

/// Who inside a channel a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Endpoint {
    Master,
    Viewer(String),
}

/// An undelivered, already rendered service frame.
#[derive(Debug)]
struct Pending {
    expires: Instant,
    /// `None` when the master sent it.
    sender: Option<String>,
    text: String,
}

#[derive(Debug)]
struct Channel {
    info: ChannelInfo,
    master: Option<ConnectionId>,
    viewers: HashMap<String, ConnectionId>,
    pending: HashMap<Endpoint, VecDeque<Pending>>,
    /// Viewers connected now or within the TTL (value: when last seen), so the master may
    /// still address them.
    known_viewers: HashMap<String, Instant>,
}

/// The routing core. See the module docs for the rules.
#[derive(Debug)]
pub struct RoutingCore {
    config: ServiceConfig,
    channels: HashMap<String, Channel>,
    arn_by_name: HashMap<String, String>,
    connections: HashMap<ConnectionId, (String, Endpoint)>,
    next_id: u64,
    outputs: VecDeque<Output>,
    shutting_down: bool,
}

/// Checks a channel name: 1–256 characters of `[a-zA-Z0-9_.-]`.
pub fn validate_channel_name(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() || name.len() > 256 {
        return Err(ChannelError::InvalidName("must be 1 to 256 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(ChannelError::InvalidName(
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

impl RoutingCore {
    pub fn new(config: ServiceConfig) -> Self {
        RoutingCore {
            config,
            channels: HashMap::new(),
            arn_by_name: HashMap::new(),
            connections: HashMap::new(),
            next_id: 1,
            outputs: VecDeque::new(),
            shutting_down: false,
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Creates a channel with the service's default message TTL; `now` becomes its creation
    /// time (and the ARN's 13-digit suffix).
    pub fn create_channel(
        &mut self,
        name: &str,
        now: SystemTime,
    ) -> Result<ChannelInfo, ChannelError> {
        let ttl = self.config.message_ttl;
        self.create_channel_with_ttl(name, ttl, now)
    }

    /// Creates a channel whose undelivered messages are kept for `message_ttl` (5–120 s).
    pub fn create_channel_with_ttl(
        &mut self,
        name: &str,
        message_ttl: Duration,
        now: SystemTime,
    ) -> Result<ChannelInfo, ChannelError> {
        validate_channel_name(name)?;
        if !MESSAGE_TTL_RANGE.contains(&message_ttl.as_secs()) || message_ttl.subsec_nanos() != 0 {
            return Err(ChannelError::InvalidTtl);
        }
        if let Some(existing) = self.channel_by_name(name) {
            return Err(ChannelError::AlreadyExists(Box::new(existing)));
        }
        let millis = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            % 10_000_000_000_000;
        let arn = format!(
            "arn:aws:kinesisvideo:{}:{}:channel/{}/{:013}",
            self.config.region, self.config.account_id, name, millis
        );
        let info = ChannelInfo {
            name: name.to_string(),
            arn,
            created_at: now,
            message_ttl,
            version: channel_version(now, self.next_id),
        };
        self.insert_channel(info.clone());
        info!(channel = %info.name, arn = %info.arn, "signaling channel created");
        Ok(info)
    }

    /// Puts back a channel known from before (persisted across restarts). Replaces a channel
    /// of the same name.
    pub fn restore_channel(&mut self, info: ChannelInfo) -> Result<(), ChannelError> {
        validate_channel_name(&info.name)?;
        if let Some(old) = self.arn_by_name.get(&info.name).cloned() {
            self.delete_channel(&old, None)?;
        }
        self.insert_channel(info);
        Ok(())
    }

    fn insert_channel(&mut self, info: ChannelInfo) {
        self.arn_by_name.insert(info.name.clone(), info.arn.clone());
        self.channels.insert(
            info.arn.clone(),
            Channel {
                info,
                master: None,
                viewers: HashMap::new(),
                pending: HashMap::new(),
                known_viewers: HashMap::new(),
            },
        );
    }

    /// Deletes a channel, closing its connections. With `current_version`, the channel's
    /// version must match.
    pub fn delete_channel(
        &mut self,
        arn: &str,
        current_version: Option<&str>,
    ) -> Result<ChannelInfo, ChannelError> {
        let channel = self
            .channels
            .get(arn)
            .ok_or_else(|| ChannelError::NotFound(arn.to_string()))?;
        if let Some(given) = current_version {
            if given != channel.info.version {
                return Err(ChannelError::VersionMismatch {
                    current: channel.info.version.clone(),
                    given: given.to_string(),
                });
            }
        }
        let channel = self.channels.remove(arn).expect("checked above");
        self.arn_by_name.remove(&channel.info.name);
        let mut conns: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, (a, _))| a == arn)
            .map(|(c, _)| *c)
            .collect();
        conns.sort();
        for conn in conns {
            self.connections.remove(&conn);
            self.outputs.push_back(Output::Close {
                conn,
                reason: "channel deleted".into(),
            });
        }
        info!(channel = %channel.info.name, arn, "signaling channel deleted");
        Ok(channel.info)
    }

    pub fn channel_by_name(&self, name: &str) -> Option<ChannelInfo> {
        let arn = self.arn_by_name.get(name)?;
        self.channel_by_arn(arn)
    }

    pub fn channel_by_arn(&self, arn: &str) -> Option<ChannelInfo> {
        self.channels.get(arn).map(|c| c.info.clone())
    }

    /// All channels, in no particular order.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.channels.values().map(|c| c.info.clone()).collect()
    }

    /// Number of viewers connected to a channel.
    pub fn viewer_count(&self, arn: &str) -> usize {
        self.channels.get(arn).map_or(0, |c| c.viewers.len())
    }

    /// Whether a master is connected to a channel.
    pub fn has_master(&self, arn: &str) -> bool {
        self.channels.get(arn).is_some_and(|c| c.master.is_some())
    }

    /// Number of stored, undelivered messages in a channel.
    pub fn pending_count(&self, arn: &str) -> usize {
        self.channels
            .get(arn)
            .map_or(0, |c| c.pending.values().map(VecDeque::len).sum())
    }

    /// Registers a new connection. Replaces an existing master (or viewer with the same client
    /// id) — the old connection gets a [`Output::Close`] — and delivers stored messages.
    pub fn connect(
        &mut self,
        channel_arn: &str,
        role: ConnectRole,
        now: Instant,
    ) -> Result<ConnectionId, ConnectError> {
        if self.shutting_down {
            return Err(ConnectError::ShuttingDown);
        }
        self.purge(now);
        let max_viewers = self.config.max_viewers_per_channel;
        let channel = self
            .channels
            .get_mut(channel_arn)
            .ok_or_else(|| ConnectError::UnknownChannel(channel_arn.to_string()))?;
        let id = ConnectionId(self.next_id);
        let (endpoint, replaced) = match role {
            ConnectRole::Master => (Endpoint::Master, channel.master.replace(id)),
            ConnectRole::Viewer { client_id } => {
                validate_client_id(&client_id).map_err(ConnectError::InvalidClientId)?;
                if !channel.viewers.contains_key(&client_id) && channel.viewers.len() >= max_viewers
                {
                    return Err(ConnectError::ViewerLimit { limit: max_viewers });
                }
                let replaced = channel.viewers.insert(client_id.clone(), id);
                remember_viewer(channel, &client_id, now, max_viewers);
                (Endpoint::Viewer(client_id), replaced)
            }
        };
        self.next_id += 1;
        if let Some(old) = replaced {
            self.connections.remove(&old);
            info!(
                conn = old.0,
                ?endpoint,
                "connection replaced by a newer one"
            );
            self.outputs.push_back(Output::Close {
                conn: old,
                reason: "replaced by a newer connection".into(),
            });
        }
        if let Some(queue) = channel.pending.remove(&endpoint) {
            for p in queue.into_iter().filter(|p| p.expires > now) {
                self.outputs.push_back(Output::Send {
                    to: id,
                    text: p.text,
                });
            }
        }
        debug!(conn = id.0, ?endpoint, channel = %channel.info.name, "connected");
        self.connections
            .insert(id, (channel_arn.to_string(), endpoint));
        Ok(id)
    }

    /// Forgets a connection (idempotent; a replaced connection is already forgotten).
    pub fn disconnect(&mut self, conn: ConnectionId, now: Instant) {
        let Some((arn, endpoint)) = self.connections.remove(&conn) else {
            return;
        };
        let max_viewers = self.config.max_viewers_per_channel;
        let Some(channel) = self.channels.get_mut(&arn) else {
            return;
        };
        match &endpoint {
            Endpoint::Master => {
                if channel.master == Some(conn) {
                    channel.master = None;
                }
            }
            Endpoint::Viewer(id) => {
                if channel.viewers.get(id) == Some(&conn) {
                    channel.viewers.remove(id);
                }
                let id = id.clone();
                remember_viewer(channel, &id, now, max_viewers);
            }
        }
        debug!(conn = conn.0, ?endpoint, "disconnected");
    }

    /// Handles one text frame received on `conn`.
    pub fn handle_frame(&mut self, conn: ConnectionId, bytes: &[u8], now: Instant) {
        self.purge(now);
        let Some((arn, from)) = self.connections.get(&conn).cloned() else {
            return;
        };
        let frame = match ClientFrame::parse(bytes) {
            Ok(f) => f,
            Err(e) => {
                warn!(conn = conn.0, error = %e, "refusing malformed client frame");
                if let Some(cid) = salvage_correlation_id(bytes) {
                    self.status(conn, cid, "InvalidArgumentException", 400, e.to_string());
                }
                return;
            }
        };
        let decoded_len = base64_decoded_len(&frame.message_payload);
        if decoded_len > self.config.max_payload_bytes {
            warn!(
                conn = conn.0,
                len = decoded_len,
                "refusing oversized payload"
            );
            if let Some(cid) = frame.correlation_id.clone() {
                let limit = self.config.max_payload_bytes;
                self.status(
                    conn,
                    cid,
                    "InvalidArgumentException",
                    400,
                    format!("messagePayload exceeds {limit} bytes"),
                );
            }
            return;
        }
        let (to, sender) = match from {
            Endpoint::Viewer(id) => (Endpoint::Master, Some(id)),
            Endpoint::Master => match &frame.recipient_client_id {
                None => {
                    self.refuse(
                        &frame,
                        conn,
                        400,
                        "InvalidArgumentException",
                        "recipientClientId is required",
                    );
                    return;
                }
                Some(r) if validate_client_id(r).is_err() => {
                    self.refuse(
                        &frame,
                        conn,
                        400,
                        "InvalidArgumentException",
                        "recipientClientId is not a valid client id",
                    );
                    return;
                }
                Some(r) => (Endpoint::Viewer(r.clone()), None),
            },
        };
        let text = ServiceFrame {
            message_type: frame.action.message_type(),
            sender_client_id: sender.clone(),
            message_payload: Some(frame.message_payload.clone()),
            status_response: None,
        }
        .emit();
        let Some(channel) = self.channels.get_mut(&arn) else {
            return;
        };
        let ttl = channel.info.message_ttl;
        let live = match &to {
            Endpoint::Master => channel.master,
            Endpoint::Viewer(id) => channel.viewers.get(id).copied(),
        };
        if let Some(target) = live {
            self.outputs.push_back(Output::Send { to: target, text });
            return;
        }
        if let Endpoint::Viewer(id) = &to {
            if !channel.known_viewers.contains_key(id) {
                self.refuse(
                    &frame,
                    conn,
                    404,
                    "ResourceNotFoundException",
                    "recipient is not connected",
                );
                return;
            }
        }
        let queue = channel.pending.entry(to.clone()).or_default();
        if frame.action == Action::SdpOffer {
            queue.retain(|p| p.sender != sender);
        }
        if queue.len() >= self.config.max_pending_per_recipient {
            self.refuse(
                &frame,
                conn,
                429,
                "ClientLimitExceededException",
                "too many undelivered messages for this recipient",
            );
            return;
        }
        debug!(?to, action = ?frame.action, "recipient not connected; message stored");
        queue.push_back(Pending {
            expires: now + ttl,
            sender,
            text,
        });
    }

    /// Sends GO_AWAY to every connection, then closes them; new connects are refused.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        let mut conns: Vec<ConnectionId> = self.connections.keys().copied().collect();
        conns.sort();
        let go_away = ServiceFrame::go_away().emit();
        for conn in conns {
            self.outputs.push_back(Output::Send {
                to: conn,
                text: go_away.clone(),
            });
            self.outputs.push_back(Output::Close {
                conn,
                reason: "service shutting down".into(),
            });
        }
        self.connections.clear();
        for channel in self.channels.values_mut() {
            channel.master = None;
            channel.viewers.clear();
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Drops expired stored messages and forgets viewers not seen within the TTL.
    pub fn purge(&mut self, now: Instant) {
        for channel in self.channels.values_mut() {
            let ttl = channel.info.message_ttl;
            channel.pending.retain(|_, q| {
                q.retain(|p| p.expires > now);
                !q.is_empty()
            });
            let connected = &channel.viewers;
            channel
                .known_viewers
                .retain(|id, seen| connected.contains_key(id) || now.duration_since(*seen) < ttl);
        }
    }

    fn refuse(
        &mut self,
        frame: &ClientFrame,
        conn: ConnectionId,
        code: u16,
        error_type: &str,
        description: &str,
    ) {
        debug!(conn = conn.0, action = ?frame.action, description, "message refused");
        if let Some(cid) = frame.correlation_id.clone() {
            self.status(conn, cid, error_type, code, description.to_string());
        }
    }

    fn status(
        &mut self,
        conn: ConnectionId,
        correlation_id: String,
        error_type: &str,
        code: u16,
        description: String,
    ) {
        let text = ServiceFrame::status(StatusResponse::failure(
            correlation_id,
            error_type,
            code,
            description,
        ))
        .emit();
        self.outputs.push_back(Output::Send { to: conn, text });
    }
}

/// Marks a viewer as seen now, keeping the set bounded (oldest forgotten first).
/// A version string that changes with every channel created (time and a counter).
fn channel_version(now: SystemTime, counter: u64) -> String {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{:x}{:04x}", micros, counter & 0xffff)
}

fn remember_viewer(channel: &mut Channel, id: &str, now: Instant, max_viewers: usize) {
    channel.known_viewers.insert(id.to_string(), now);
    let cap = max_viewers.saturating_mul(8).max(16);
    while channel.known_viewers.len() > cap {
        let oldest = channel
            .known_viewers
            .iter()
            .filter(|(k, _)| !channel.viewers.contains_key(*k))
            .min_by_key(|(_, t)| **t)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                channel.known_viewers.remove(&k);
                channel.pending.remove(&Endpoint::Viewer(k));
            }
            None => break,
        }
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
