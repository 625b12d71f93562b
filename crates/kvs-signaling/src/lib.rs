//! Core layer: the WebSocket signaling clients, on the KVS wire codec.
//!
//! - [`codec`]: the `kvs-signaling-codec` crate, re-exported: parse/emit of the KVS data-plane
//!   frames and the unified [`SignalingMessage`] (pure functions, no I/O; the local service and
//!   the fuzzers use that crate directly, without these clients).
//! - [`client`]: the pluggable [`SignalingClient`] interface and its WebSocket implementation
//!   [`WsSignalingClient`] (tokio edge: opens connections, drives the link).
//! - [`link`]: the sans-IO policy of one signaling link ([`link::LinkCore`]): keep-alive
//!   pings, renewal before the service's age limit, draining the replaced connection.
//! - [`kvs`]: the Amazon KVS client ([`KvsSignalingClient`]): control plane over HTTPS with
//!   SigV4, presigned WSS data plane, ICE servers with TTL, clock-skew correction.
//! - [`ice`]: the [`IceServer`] description handed to peer connections (from the codec crate).
//!
//! This crate must not touch peer connections, media, or reconnection policy (the application
//! layer owns those).

pub mod client;
pub mod kvs;
pub mod link;

pub use kvs_signaling_codec as codec;
pub use kvs_signaling_codec::ice;

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
