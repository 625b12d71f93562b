//! # Core layer, sans-IO: the split-mode link.
//!
//! Split mode runs two processes (or chips): an always-on *signaling side* that holds the KVS
//! signaling WebSocket, and a *media side* that streams and sleeps until a viewer's offer
//! arrives. They talk over a framed byte link: a Unix socket, TCP, or a serial line that drops
//! and corrupts bytes. This crate is that link, without any I/O:
//!
//! - [`frame`]: frames (magic, version, flags, message id, lengths, header check, CRC-32C),
//!   chunking of messages above 8 KiB, a streaming [`Deframer`] that resynchronises after
//!   garbage and reassembles within size and time bounds.
//! - [`message`]: the typed, versioned [`Message`] with an explicit little-endian layout.
//! - [`command`]: request ids, timeouts and results of GetResolution / GetSnapshot / GetTime /
//!   SetControl (remote control of the running media side).
//! - [`relay`]: [`SignalingSideCore`], the signaling side's state machine (wake handshake,
//!   bounded queue, refusals, heartbeats, ICE servers, commands).
//! - [`media`]: [`MediaSideCore`], the media side's state machine (Ready only after the
//!   handler is registered, sleep policy, heartbeats).
//!
//! Both state machines follow the str0m/quinn-proto shape: inputs carry `now: Instant`,
//! outputs are polled, `poll_timeout` says when timers are due. The wire format, the
//! handshakes and their sequence diagrams are in `docs/LINK.md`.
//!
//! This crate must not do I/O, read a clock, spawn threads or know about KVS or WebRTC
//! beyond the strings it carries: drivers (tokio tasks, GPIO, process control) live in the
//! programs that use it.

pub mod command;
pub mod frame;
mod link;
pub mod media;
pub mod message;
pub mod relay;

pub use command::{CommandDone, CommandError, CommandValue, RespondError};
pub use frame::{Deframer, DeframerConfig, DeframerStats, FrameError, Framer};
pub use media::{MediaConfig, MediaOutput, MediaPhase, MediaSideCore, MediaStats};
pub use message::{
    CandidateMessage, Command, CommandKind, CommandResponse, ControlSetting, CorrelationId,
    IceCandidate, IceServer, IceServerList, MediaState, MediaStatus, Message, MessageError,
    MessageType, PeerId, PeerRef, Refusal, Resolution, SdpMessage, Status, TimeSample, ValueError,
};
pub use relay::{
    MediaPresence, RefusalReason, RelayConfig, RelayOutput, RelayState, RelayStats,
    SignalingSideCore, ViewerMessage, ViewerRefusal,
};
