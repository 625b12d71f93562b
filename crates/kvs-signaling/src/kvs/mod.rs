//! The Amazon Kinesis Video Streams signaling client: control plane over HTTPS with SigV4,
//! data plane over a presigned WSS URL.
//!
//! - [`api`]: the control plane's request and answer shapes, errors, endpoint names (pure).
//! - [`client`]: [`KvsSignalingClient`], a [`crate::SignalingClient`] for either role that
//!   resolves (and optionally creates) the channel, finds its endpoints, fetches ICE servers
//!   with their TTL, presigns every connect, corrects for clock skew and renews connections
//!   before the service's one-hour limit.
//!
//! Must not touch: reconnection policy and backoff (the application layer), peer connections.

pub mod api;
pub mod client;

pub use api::{ApiError, ChannelEndpoints, ChannelRef, EndpointFlavour};
pub use client::{KvsClientConfig, KvsSignalingClient};
