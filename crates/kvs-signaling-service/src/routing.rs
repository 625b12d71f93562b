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
//!
//! Limits (all from [`ServiceConfig`]): channels held, connects per channel per second, SDP
//! messages and ICE candidates per connection per second. A refused message is not forwarded.
//! A sender that keeps sending refused messages (its flood allowance runs out) is closed.
//! The core also counts the frames it has handed the edge for each connection and not yet seen
//! written ([`RoutingCore::frame_sent`]): a recipient's queue never holds more than
//! `connection_queue` frames, nor more than `max_queued_per_sender` from one sender — a frame
//! that does not fit is refused to its *sender*, so one flooding viewer cannot get the master
//! dropped. Only a connection that does not read its own status responses is closed for a full
//! queue; one that stops reading altogether is closed by the edge's send timeout.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvs_signaling_codec::{
    base64_decoded_len, salvage_correlation_id, validate_client_id, Action, ClientFrame,
    CodecError, ServiceFrame, StatusResponse,
};
use tracing::{debug, info, warn};

use crate::ratelimit::TokenBucket;
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
    #[error("the service already holds its maximum of {limit} signaling channels")]
    LimitExceeded { limit: usize },
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
    #[error("too many connects to this channel: at most {per_second} per second")]
    RateLimited { per_second: u32 },
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
    /// Connects allowed to this channel; made on the first connect.
    connects: Option<TokenBucket>,
}

/// One registered connection.
#[derive(Debug)]
struct Conn {
    arn: String,
    endpoint: Endpoint,
    sdp: Option<TokenBucket>,
    ice: Option<TokenBucket>,
    /// How many refused messages the connection may still send before it is closed.
    flood: Option<TokenBucket>,
    /// Who sent each frame handed to the edge for this connection and not yet written,
    /// oldest first (`None`: the service itself). The edge writes frames in order, so
    /// [`RoutingCore::frame_sent`] pops the front.
    queued: VecDeque<Option<ConnectionId>>,
    /// How many entries of `queued` each sender has.
    queued_by: HashMap<ConnectionId, usize>,
}

/// Why a frame could not be queued towards a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueFull {
    /// The recipient has `connection_queue` frames waiting.
    Recipient,
    /// The sender already has its share of the recipient's queue.
    SenderShare,
}

/// How often stored messages of every channel are checked for expiry (a frame or connect only
/// purges its own channel, so the cost per frame does not grow with the number of channels).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The routing core. See the module docs for the rules.
#[derive(Debug)]
pub struct RoutingCore {
    config: ServiceConfig,
    channels: HashMap<String, Channel>,
    arn_by_name: HashMap<String, String>,
    connections: HashMap<ConnectionId, Conn>,
    next_id: u64,
    outputs: VecDeque<Output>,
    shutting_down: bool,
    last_sweep: Option<Instant>,
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
            last_sweep: None,
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
        // Restored channels are not counted against the limit when they are loaded (a lowered
        // limit must not lose data), but no new channel is made while at or above it.
        if self.channels.len() >= self.config.max_channels {
            return Err(ChannelError::LimitExceeded {
                limit: self.config.max_channels,
            });
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
                connects: None,
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
            .filter(|(_, c)| c.arn == arn)
            .map(|(id, _)| *id)
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
        self.sweep(now);
        self.purge_channel(channel_arn, now);
        let max_viewers = self.config.max_viewers_per_channel;
        let connect_rate = self.config.connect_rate;
        let channel = self
            .channels
            .get_mut(channel_arn)
            .ok_or_else(|| ConnectError::UnknownChannel(channel_arn.to_string()))?;
        if let ConnectRole::Viewer { client_id } = &role {
            validate_client_id(client_id).map_err(ConnectError::InvalidClientId)?;
            if !channel.viewers.contains_key(client_id) && channel.viewers.len() >= max_viewers {
                return Err(ConnectError::ViewerLimit { limit: max_viewers });
            }
        }
        // Checked after the definite refusals, so only connects that would succeed spend a
        // token: a refused viewer does not use up the channel's allowance.
        if let Some(limit) = connect_rate {
            let bucket = channel
                .connects
                .get_or_insert_with(|| TokenBucket::new(limit, now));
            if !bucket.try_take(now) {
                return Err(ConnectError::RateLimited {
                    per_second: limit.per_second,
                });
            }
        }
        let id = ConnectionId(self.next_id);
        let (endpoint, replaced) = match role {
            ConnectRole::Master => (Endpoint::Master, channel.master.replace(id)),
            ConnectRole::Viewer { client_id } => {
                let replaced = channel.viewers.insert(client_id.clone(), id);
                remember_viewer(channel, &client_id, now, max_viewers);
                (Endpoint::Viewer(client_id), replaced)
            }
        };
        self.next_id += 1;
        debug!(conn = id.0, ?endpoint, channel = %channel.info.name, "connected");
        let stored = channel.pending.remove(&endpoint);
        let bucket =
            |limit: Option<crate::ratelimit::RateLimit>| limit.map(|l| TokenBucket::new(l, now));
        self.connections.insert(
            id,
            Conn {
                arn: channel_arn.to_string(),
                endpoint: endpoint.clone(),
                sdp: bucket(self.config.sdp_rate),
                ice: bucket(self.config.ice_rate),
                flood: bucket(self.config.flood_limit),
                queued: VecDeque::new(),
                queued_by: HashMap::new(),
            },
        );
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
        if let Some(queue) = stored {
            for p in queue.into_iter().filter(|p| p.expires > now) {
                // The store holds at most `max_pending_per_recipient` per recipient; if the
                // queue is configured smaller, the rest is dropped rather than overflowing.
                if self.enqueue(id, None, p.text).is_err() {
                    debug!(
                        conn = id.0,
                        "stored messages beyond the connection queue dropped"
                    );
                    break;
                }
            }
        }
        Ok(id)
    }

    /// Forgets a connection (idempotent; a replaced connection is already forgotten).
    pub fn disconnect(&mut self, conn: ConnectionId, now: Instant) {
        let Some(Conn { arn, endpoint, .. }) = self.connections.remove(&conn) else {
            return;
        };
        self.shrink_after_disconnects();
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
                    // Like the tables `purge_channel` drops: an empty channel keeps none.
                    if channel.viewers.is_empty() {
                        channel.viewers = HashMap::new();
                    }
                }
                let id = id.clone();
                remember_viewer(channel, &id, now, max_viewers);
            }
        }
        debug!(conn = conn.0, ?endpoint, "disconnected");
    }

    /// A burst of connections that came and went leaves the connection map at its largest
    /// capacity; give most of it back once it is mostly empty.
    fn shrink_after_disconnects(&mut self) {
        let (len, cap) = (self.connections.len(), self.connections.capacity());
        if cap > 256 && len < cap / 8 {
            self.connections.shrink_to(len * 2);
        }
    }

    /// The edge wrote the oldest frame it was handed for `conn` to the socket.
    pub fn frame_sent(&mut self, conn: ConnectionId) {
        let Some(c) = self.connections.get_mut(&conn) else {
            return;
        };
        if let Some(Some(sender)) = c.queued.pop_front() {
            if let Some(n) = c.queued_by.get_mut(&sender) {
                *n -= 1;
                if *n == 0 {
                    c.queued_by.remove(&sender);
                }
            }
        }
    }

    /// Frames handed to the edge for `conn` and not yet written.
    pub fn queued_frames(&self, conn: ConnectionId) -> usize {
        self.connections.get(&conn).map_or(0, |c| c.queued.len())
    }

    /// Hands `text` to the edge for `to`, if its queue (and `from`'s share of it) has room.
    fn enqueue(
        &mut self,
        to: ConnectionId,
        from: Option<ConnectionId>,
        text: String,
    ) -> Result<(), QueueFull> {
        let capacity = self.config.connection_queue.max(1);
        let share = self.config.max_queued_per_sender.max(1);
        let Some(c) = self.connections.get_mut(&to) else {
            // Not registered (already gone): nothing to deliver to.
            return Ok(());
        };
        if c.queued.len() >= capacity {
            return Err(QueueFull::Recipient);
        }
        if let Some(sender) = from {
            let n = c.queued_by.entry(sender).or_insert(0);
            if *n >= share {
                return Err(QueueFull::SenderShare);
            }
            *n += 1;
        }
        c.queued.push_back(from);
        self.outputs.push_back(Output::Send { to, text });
        Ok(())
    }

    /// Closes a connection the service gives up on, and forgets it.
    fn drop_connection(&mut self, conn: ConnectionId, reason: &str, now: Instant) {
        if !self.connections.contains_key(&conn) {
            return;
        }
        warn!(conn = conn.0, reason, "closing a signaling connection");
        self.disconnect(conn, now);
        self.outputs.push_back(Output::Close {
            conn,
            reason: reason.to_string(),
        });
    }

    /// Counts a refused message against the sender's flood allowance; closes it when none is
    /// left.
    fn violation(&mut self, conn: ConnectionId, now: Instant) {
        let exhausted = self
            .connections
            .get_mut(&conn)
            .and_then(|c| c.flood.as_mut())
            .is_some_and(|b| !b.try_take(now));
        if exhausted {
            self.drop_connection(conn, "too many refused messages (flooding)", now);
        }
    }

    /// Handles one text frame received on `conn`.
    pub fn handle_frame(&mut self, conn: ConnectionId, bytes: &[u8], now: Instant) {
        let Some((arn, from)) = self
            .connections
            .get(&conn)
            .map(|c| (c.arn.clone(), c.endpoint.clone()))
        else {
            return;
        };
        self.sweep(now);
        self.purge_channel(&arn, now);
        let frame = match ClientFrame::parse(bytes) {
            Ok(f) => f,
            Err(e) => {
                debug!(conn = conn.0, error = %e, "refusing malformed client frame");
                if let Some(cid) = salvage_correlation_id(bytes) {
                    self.status(
                        conn,
                        cid,
                        "InvalidArgumentException",
                        400,
                        e.to_string(),
                        now,
                    );
                }
                self.violation(conn, now);
                return;
            }
        };
        let decoded_len = base64_decoded_len(&frame.message_payload);
        if decoded_len > self.config.max_payload_bytes {
            debug!(
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
                    now,
                );
            }
            self.violation(conn, now);
            return;
        }
        if let Some(limit) = self.take_rate_token(conn, frame.action, now) {
            let what = match frame.action {
                Action::IceCandidate => "ICE candidates",
                Action::SdpOffer | Action::SdpAnswer => "SDP messages",
            };
            self.refuse(
                &frame,
                conn,
                429,
                "ClientLimitExceededException",
                &format!("rate exceeded: at most {limit} {what} per second per connection"),
                now,
            );
            self.violation(conn, now);
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
                        now,
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
                        now,
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
            if let Err(full) = self.enqueue(target, Some(conn), text) {
                let why = match full {
                    QueueFull::Recipient => "the recipient is not keeping up; message dropped",
                    QueueFull::SenderShare => {
                        "too many of this connection's messages are waiting for the recipient"
                    }
                };
                debug!(conn = conn.0, to = target.0, ?full, "message refused");
                self.refuse(&frame, conn, 429, "ClientLimitExceededException", why, now);
                self.violation(conn, now);
            }
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
                    now,
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
                now,
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

    /// Takes a token from the bucket `action` counts against; on refusal returns the
    /// configured rate for the message.
    fn take_rate_token(&mut self, conn: ConnectionId, action: Action, now: Instant) -> Option<u32> {
        let c = self.connections.get_mut(&conn)?;
        let (bucket, limit) = match action {
            Action::SdpOffer | Action::SdpAnswer => (c.sdp.as_mut(), self.config.sdp_rate),
            Action::IceCandidate => (c.ice.as_mut(), self.config.ice_rate),
        };
        match (bucket, limit) {
            (Some(b), Some(l)) => (!b.try_take(now)).then_some(l.per_second),
            _ => None,
        }
    }

    /// Sends GO_AWAY to every connection, then closes them; new connects are refused.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        let mut conns: Vec<ConnectionId> = self.connections.keys().copied().collect();
        conns.sort();
        let go_away = ServiceFrame::go_away().emit();
        for conn in conns {
            // A connection whose queue is full gets no GO_AWAY, only the close.
            let _ = self.enqueue(conn, None, go_away.clone());
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

    /// Sends GO_AWAY to one connection, then closes and forgets it (the client is expected
    /// to reconnect at once; messages for it meanwhile are stored as for any absent
    /// recipient). False if the connection is unknown.
    pub fn go_away(&mut self, conn: ConnectionId, reason: &str, now: Instant) -> bool {
        if !self.connections.contains_key(&conn) {
            return false;
        }
        // A connection whose queue is full gets no GO_AWAY, only the close.
        let _ = self.enqueue(conn, None, ServiceFrame::go_away().emit());
        info!(conn = conn.0, reason, "sending GO_AWAY to one connection");
        self.disconnect(conn, now);
        self.outputs.push_back(Output::Close {
            conn,
            reason: reason.to_string(),
        });
        true
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Drops expired stored messages and forgets viewers not seen within the TTL, in every
    /// channel. Returns how many stored messages and viewers were dropped.
    pub fn purge(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        for channel in self.channels.values_mut() {
            dropped += purge_channel(channel, now);
        }
        self.last_sweep = Some(now);
        dropped
    }

    /// Purges every channel at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        let due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_INTERVAL);
        if due {
            self.purge(now);
        }
    }

    fn purge_channel(&mut self, arn: &str, now: Instant) {
        if let Some(channel) = self.channels.get_mut(arn) {
            purge_channel(channel, now);
        }
    }

    fn refuse(
        &mut self,
        frame: &ClientFrame,
        conn: ConnectionId,
        code: u16,
        error_type: &str,
        description: &str,
        now: Instant,
    ) {
        debug!(conn = conn.0, action = ?frame.action, description, "message refused");
        if let Some(cid) = frame.correlation_id.clone() {
            self.status(conn, cid, error_type, code, description.to_string(), now);
        }
    }

    /// Queues a STATUS_RESPONSE for `conn`. A connection whose own queue is full is not
    /// reading what we send it while it keeps sending: it is closed.
    fn status(
        &mut self,
        conn: ConnectionId,
        correlation_id: String,
        error_type: &str,
        code: u16,
        description: String,
        now: Instant,
    ) {
        let text = ServiceFrame::status(StatusResponse::failure(
            correlation_id,
            error_type,
            code,
            description,
        ))
        .emit();
        if self.enqueue(conn, None, text).is_err() {
            self.drop_connection(
                conn,
                "connection cannot keep up: it does not read its status responses",
                now,
            );
        }
    }
}

/// Purges one channel; returns how many stored messages and viewers it dropped.
fn purge_channel(channel: &mut Channel, now: Instant) -> usize {
    let ttl = channel.info.message_ttl;
    let before =
        channel.pending.values().map(VecDeque::len).sum::<usize>() + channel.known_viewers.len();
    channel.pending.retain(|_, q| {
        q.retain(|p| p.expires > now);
        !q.is_empty()
    });
    let connected = &channel.viewers;
    channel
        .known_viewers
        .retain(|id, seen| connected.contains_key(id) || now.duration_since(*seen) < ttl);
    let after =
        channel.pending.values().map(VecDeque::len).sum::<usize>() + channel.known_viewers.len();
    // An idle channel holds no tables: after a crowd has come and gone, thousands of idle
    // channels would otherwise each keep their largest tables.
    if channel.known_viewers.is_empty() && channel.known_viewers.capacity() > 0 {
        channel.known_viewers = HashMap::new();
    }
    if channel.pending.is_empty() && channel.pending.capacity() > 0 {
        channel.pending = HashMap::new();
    }
    before - after
}

/// A version string that changes with every channel created (time and a counter).
fn channel_version(now: SystemTime, counter: u64) -> String {
    let micros = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{:x}{:04x}", micros, counter & 0xffff)
}

/// Marks a viewer as seen now, keeping the set bounded (oldest forgotten first).
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
