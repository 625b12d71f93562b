//! # Core layer: WebRTC peer connections on str0m, one engine owning every session.
//!
//! - [`core`]: the sans-IO [`PeerCore`] holding every session's str0m `Rtc`, the per-session
//!   fan-out gates/queues ([`kvs_media::fanout`]), held early candidates and timers. Inputs
//!   carry `now`; outputs (datagrams, events, next timeout) are polled.
//! - [`engine`]: the tokio driver ([`PeerEngine`], [`PeerHandle`], [`FrameSink`]): UDP sockets
//!   (one per bind address, shared by all sessions), the engine task, bounded channels.
//! - [`nat`]: NAT traversal, sans-IO: server-reflexive candidates (STUN Binding per socket) and
//!   relayed candidates (TURN allocations over UDP/TCP/TLS shared by all sessions).
//! - `udp`: batched UDP I/O (segmented sends, `recvmmsg`) and the sans-IO send grouping.
//! - `drain`: the one loop that drains a str0m `Rtc` after every change (used by both cores).
//! - [`viewer`]: a Rust viewer peer (sans-IO core + small driver) for tests and benchmarks,
//!   and [`viewer::SignaledViewer`], which joins one to a device through signaling.
//! - [`codecs`]: video codec negotiation (declare the source's codec, refuse viewers that
//!   cannot receive it).
//! - [`congestion`]: transport-wide congestion control on the sessions (opt-in).
//! - [`api`]: configuration, commands, events, timings, stats, errors.
//! - `sim` (tests only): a virtual-time harness running the device core against viewer cores.
//!
//! This crate owns transport and session state. The engine does not talk to signaling (SDP
//! and candidates arrive as strings from the application); only the viewer join helper does,
//! and only through the [`kvs_signaling::SignalingClient`] trait. It must not know about
//! capture devices or encoders (frames arrive as [`kvs_platform::EncodedFrame`]s; keyframes
//! are *requested* by event).

pub mod api;
pub mod candidate;
pub mod codecs;
pub mod congestion;
pub mod core;
mod drain;
pub mod engine;
pub mod nat;
pub mod queue;
#[cfg(test)]
mod sim;
#[doc(hidden)]
pub mod synthetic;
mod udp;
pub mod viewer;

pub use api::{
    AudioCodec, Datagram, IceServer, PeerCommand, PeerConfig, PeerError, PeerEvent, SessionStats,
    SessionTiming, VideoCodec,
};
pub use core::PeerCore;
pub use engine::{FrameSink, PeerEngine, PeerHandle};
pub use viewer::{
    JoinEvent, ReceivedFrame, SignaledViewer, Viewer, ViewerCore, ViewerEvent, ViewerHandle,
    ViewerJoinError,
};
