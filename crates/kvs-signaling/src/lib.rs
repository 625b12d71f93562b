//! Core layer: the KVS signaling message codec (sans-IO) and WebSocket signaling clients.
//!
//! - [`codec`]: parse/emit of the KVS data-plane frames and the unified [`SignalingMessage`]
//!   (pure functions, no I/O; also used by the local service and the fuzzers).
//! - [`client`]: the pluggable [`SignalingClient`] interface and its WebSocket implementation
//!   [`WsSignalingClient`] (tokio edge: opens connections, drives the link).
//! - [`link`]: the sans-IO policy of one signaling link ([`link::LinkCore`]): keep-alive
//!   pings, renewal before the service's age limit, draining the replaced connection.
//! - [`kvs`]: the Amazon KVS client ([`KvsSignalingClient`]): control plane over HTTPS with
//!   SigV4, presigned WSS data plane, ICE servers with TTL, clock-skew correction.
//! - [`ice`]: the [`IceServer`] description handed to peer connections.
//!
//! This crate must not touch peer connections, media, or reconnection policy (the application
//! layer owns those).

pub mod client;
pub mod codec;
pub mod ice;
pub mod kvs;
pub mod link;

pub use client::{
    data_plane_url, encode_outgoing, Role, SignalingClient, SignalingError, SignalingEvent,
    SignalingLink, UrlPresigner, WsClientConfig, WsSignalingClient,
};
/// Short name for [`MessagePayload`].
pub use codec::MessagePayload as Payload;
pub use codec::{
    CodecError, IceCandidateInit, IntoPeerId, MessageKind, MessagePayload, PeerRefusal, SdpPayload,
    SdpType, SignalingMessage, StatusResponse,
};
pub use ice::IceServer;
pub use kvs::{ChannelRef, KvsClientConfig, KvsSignalingClient};
