//! # Core layer: WebRTC peer connections
//!
//! One engine owns every viewer session. [`core::PeerCore`] is sans-IO: it holds every str0m
//! `Rtc`, takes commands, datagrams, frames and time as inputs and yields datagrams to send,
//! events and its next timeout. [`engine::PeerEngine`] is the thin tokio driver around it: it
//! owns the UDP sockets (one per bind address, shared by all sessions) and the task.
//!
//! It owns ICE, DTLS, SRTP, RTP packetisation and data channels (through str0m), the per-session
//! fan-out gates and timing. It must not talk to signaling (the application relays SDP and
//! candidates as [`PeerCommand`]s and [`PeerEvent`]s) nor open media devices.

pub mod api;
pub mod candidate;
pub mod core;
pub mod engine;
pub mod viewer;

pub use api::{
    AudioCodec, Datagram, IceServer, PeerCommand, PeerConfig, PeerError, PeerEvent, SessionStats,
    SessionTiming, VideoCodec,
};
pub use engine::{FrameSink, PeerEngine, PeerHandle};
