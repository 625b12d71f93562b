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
//! - [`server`]: the axum/tokio edge — SigV4 verification of every REST call and WebSocket
//!   connect, CORS, [`router`], [`serve`], [`spawn`], [`spawn_router`].
//!
//! This crate must not touch peer connections or media, and it is no client: the clients are
//! in `kvs-signaling`.

use std::path::PathBuf;
use std::time::Duration;

pub mod control;
pub mod routing;
pub mod server;
pub mod store;
pub mod tls;
pub mod turn;

pub use crate::routing::{
    ChannelError, ChannelInfo, ConnectError, ConnectRole, ConnectionId, Output, RoutingCore,
};
pub use crate::server::{
    router, serve, spawn, spawn_router, spawn_tls, ServiceHandle, ServiceState,
};

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
    /// Every connection is closed after this long (KVS: 1 hour); clients reconnect.
    pub max_connection_age: Duration,
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
            idle_timeout: Duration::from_secs(600),
            max_connection_age: Duration::from_secs(3600),
            landing_page: None,
            access_keys: Vec::new(),
            max_clock_skew: Duration::from_secs(300),
            ice_servers: turn::IceServerSettings::default(),
            state_dir: None,
        }
    }
}
