//! A KVS-compatible signaling service (data plane now; REST control plane, SigV4 and TLS to follow).
//!
//! It is what the device program runs on its embedded default (no AWS account): a local
//! service speaking the KVS WebSocket data-plane protocol, so masters and viewers written for
//! real KVS work against it unchanged.
//!
//! - [`routing`]: the sans-IO routing core (channels, connections, routing, stored messages,
//!   status responses, GO_AWAY) with time passed in.
//! - [`server`]: the axum/tokio edge — [`router`], [`serve`], [`spawn`], [`spawn_router`].
//!
//! This crate must not touch peer connections or media, and it is no client: the clients are
//! in `kvs-signaling`.

use std::time::Duration;

pub mod routing;
pub mod server;

pub use crate::routing::{
    ChannelError, ChannelInfo, ConnectError, ConnectRole, ConnectionId, Output, RoutingCore,
};
pub use crate::server::{router, serve, spawn, spawn_router, ServiceHandle, ServiceState};

/// Settings of the service. Defaults follow the real service's limits.
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
    /// Frames queued towards one connection before it counts as stuck and is dropped.
    pub connection_queue: usize,
    /// A connection that receives nothing for this long is closed (KVS: 10 min).
    pub idle_timeout: Duration,
    /// Where a plain browser `GET /` (no WebSocket upgrade, no channel ARN) is redirected, so a
    /// web page can share the data plane's address. `None` answers such requests with the
    /// rest-json 400 the real service gives.
    pub landing_page: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            region: "us-west-2".into(),
            account_id: "000000000000".into(),
            max_viewers_per_channel: 10,
            message_ttl: Duration::from_secs(60),
            max_payload_bytes: kvs_signaling::codec::MAX_PAYLOAD_BYTES,
            max_pending_per_recipient: 64,
            connection_queue: 256,
            idle_timeout: Duration::from_secs(600),
            landing_page: None,
        }
    }
}
