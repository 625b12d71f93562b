//! A KVS-compatible signaling service: REST control plane, WebSocket data plane, SigV4.
//!
//! It is what the device program runs on its embedded default (no AWS account): a local
//! service speaking the KVS WebSocket data-plane protocol, so masters and viewers written for
//! real KVS work against it unchanged.
//!
//! - [`routing`]: the sans-IO routing core (channels, connections, routing, stored messages,
//!   status responses, GO_AWAY) with time passed in.
//! - [`control`]: the sans-IO REST control plane (Create/Describe/List/Delete channel,
//!   GetSignalingChannelEndpoint, GetIceServerConfig) in the real service's shapes.
//! - [`turn`]: TURN credentials for GetIceServerConfig (coturn `use-auth-secret`).
//! - [`store`]: the channel list kept on disk across restarts.
//! - [`tls`]: the local CA kept on disk, server certificates, the rustls listener.
//! - [`ratelimit`]: token buckets (time passed in) for the rate limits.
//! - `listen`: accepting connections — connection caps, TLS handshakes, HTTP/1 with header
//!   deadlines, graceful stop.
//! - [`server`]: the axum/tokio edge — SigV4 verification of every REST call and WebSocket
//!   connect, CORS, [`router`], [`serve`], [`spawn`], [`spawn_router`].
//!
//! This crate must not touch peer connections or media, and it is no client: the clients are
//! in `kvs-signaling`.

use std::path::PathBuf;
use std::time::Duration;

pub mod control;
mod listen;
pub mod ratelimit;
pub mod routing;
pub mod server;
pub mod store;
pub mod tls;
pub mod turn;

pub use crate::ratelimit::RateLimit;
pub use crate::routing::{
    ChannelError, ChannelInfo, ConnectError, ConnectRole, ConnectionId, Output, RoutingCore,
};
pub use crate::server::{
    router, serve, spawn, spawn_router, spawn_tls, ServiceHandle, ServiceState,
};

/// Settings of the service. Defaults follow the real service's limits; `docs/SECURITY.md`
/// lists every limit, its default and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Region written into channel ARNs.
    pub region: String,
    /// 12-digit account id written into channel ARNs.
    pub account_id: String,
    /// Viewers allowed per channel at once (KVS: 10, soft).
    pub max_viewers_per_channel: usize,
    /// How long undelivered messages are kept (KVS MessageTtlSeconds: 60 s).
    pub message_ttl: Duration,
    /// Largest decoded message payload (KVS: 10 KiB; the codec never accepts more).
    pub max_payload_bytes: usize,
    /// Stored undelivered messages per recipient.
    pub max_pending_per_recipient: usize,
    /// Frames waiting to be written to one connection. A frame that would not fit is refused
    /// to its sender (STATUS_RESPONSE), not a reason to drop the recipient.
    pub connection_queue: usize,
    /// Frames from one sender that may wait in one recipient's queue, so one flooding peer
    /// cannot fill it for everyone.
    pub max_queued_per_sender: usize,
    /// A connection whose socket takes no frame for this long has stopped reading: it is
    /// dropped.
    pub send_timeout: Duration,
    /// A connection that receives nothing for this long is closed (KVS: 10 min).
    pub idle_timeout: Duration,
    /// Every connection is closed after this long (KVS: 1 hour); clients reconnect.
    pub max_connection_age: Duration,
    /// Channels the service holds (KVS: 10,000 per account and region). Creating more is
    /// refused with `AccountChannelLimitExceededException`.
    pub max_channels: usize,
    /// WebSocket connects per channel (KVS: 3 per second). `None`: unlimited.
    pub connect_rate: Option<RateLimit>,
    /// SDP offers and answers per connection (KVS: 5 per second). `None`: unlimited.
    pub sdp_rate: Option<RateLimit>,
    /// ICE candidates per connection (KVS: 20 per second). `None`: unlimited.
    pub ice_rate: Option<RateLimit>,
    /// Refused messages a connection may send (rate exceeded, malformed, queue share used up)
    /// before it is closed for flooding. `None`: never closed for that.
    pub flood_limit: Option<RateLimit>,
    /// TCP connections open at once, over every listener of the service.
    pub max_connections: usize,
    /// TCP connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// A client must send a request's headers within this time (and, on a kept-alive
    /// connection, start the next request within it), or the connection is closed.
    pub header_read_timeout: Duration,
    /// A client must send a request's body within this time after its headers.
    pub body_read_timeout: Duration,
    /// Where a plain browser `GET /` (no WebSocket upgrade, no channel ARN) is redirected, so a
    /// web page can share the data plane's address. `None` answers such requests with the
    /// rest-json 400 the real service gives.
    pub landing_page: Option<String>,
    /// Keys whose SigV4 signatures are accepted on every REST call and WebSocket connect.
    /// Empty: no authentication (the embedded default's loopback-only service).
    pub access_keys: Vec<AccessKey>,
    /// Allowed difference between a signer's clock and ours (AWS: 5 minutes).
    pub max_clock_skew: Duration,
    /// What GetIceServerConfig hands out.
    pub ice_servers: turn::IceServerSettings,
    /// Where the channel list is kept across restarts (`channels.json`); `None`: in memory.
    pub state_dir: Option<PathBuf>,
}

/// An access key the service accepts signatures from.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, requests must carry this session token (temporary credentials).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            region: "us-west-2".into(),
            account_id: "000000000000".into(),
            max_viewers_per_channel: 10,
            message_ttl: Duration::from_secs(60),
            max_payload_bytes: kvs_signaling_codec::MAX_PAYLOAD_BYTES,
            max_pending_per_recipient: 64,
            connection_queue: 256,
            max_queued_per_sender: 64,
            send_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_connection_age: Duration::from_secs(3600),
            max_channels: 10_000,
            // The KVS rates; the bursts let a full channel (10 viewers) join and be answered
            // at once.
            connect_rate: Some(RateLimit::new(3, 10)),
            sdp_rate: Some(RateLimit::new(5, 10)),
            ice_rate: Some(RateLimit::new(20, 40)),
            flood_limit: Some(RateLimit::new(5, 50)),
            max_connections: 8192,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            landing_page: None,
            access_keys: Vec::new(),
            max_clock_skew: Duration::from_secs(300),
            ice_servers: turn::IceServerSettings::default(),
            state_dir: None,
        }
    }
}
