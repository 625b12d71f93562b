//! Split mode: an always-on signaling-only process and a streaming-only process that sleeps
//! until a viewer comes, over a framed link (Unix socket, TCP or a serial line).
//!
//! ```text
//!  KVS / local service            signaling-only                     streaming-only
//!  ──────────────────  WSS   ┌──────────────────────┐  link   ┌──────────────────────────┐
//!   viewers' offers  ◄─────► │ SignalingSideCore     │ ◄─────► │ MediaSideCore            │
//!                            │ (wake, queue, refuse) │ frames  │ + the classic Device     │
//!                            │ Waker: exec / signal  │ CRC-32C │   (peer engine, capture) │
//!                            └──────────────────────┘         └──────────────────────────┘
//!                                                                  ▲ media flows directly
//!                                                                  ▼ to viewers (UDP)
//! ```
//!
//! - [`link`]: the carrier (bytes only; framing is `kvs_bridge`'s).
//! - [`signaling_side`]: the signaling-only driver (KVS connection, ICE servers, wake).
//! - [`media_side`]: the streaming-only driver (the classic device behind a link-backed
//!   signaling client; sleep by exiting or by idling in place).
//! - [`wake`]: `--wake exec:` / `signal:` / `none`.
//! - [`convert`]: KVS messages ⇄ link messages.
//!
//! The protocol and its state machines are the sans-IO `kvs_bridge` crate; this module is
//! only the tokio edge. The wire format is in `docs/LINK.md`.

pub mod convert;
pub mod link;
#[cfg(feature = "media")]
pub mod media_side;
pub mod signaling_side;
pub mod wake;

pub use kvs_bridge::{MediaConfig, RelayConfig};
pub use link::{LinkAddr, LinkError};
#[cfg(feature = "media")]
pub use media_side::{MediaSideConfig, MediaSideError, MediaSideExit, SleepMode};
pub use signaling_side::{
    Commander, SignalingSide, SignalingSideConfig, SignalingSideStatus, SplitControl,
};
pub use wake::{WakeMethod, Waker};
