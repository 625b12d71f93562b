//! Changes to a running device, asked by remote control (RainMaker params) or the application.
//!
//! Owns the vocabulary ([`Control`]) and the interface ([`DeviceControl`]) between whoever
//! decides (a remote-control node, an app) and whoever acts (the classic device, split mode's
//! signaling side commanding its media side). It must not know where a request came from or
//! how it reached us (MQTT, an API call).

use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

/// The refusal code viewers get while the owner has switched streaming off.
pub const STREAM_OFF: &str = "STREAM_OFF";
/// Its reason, as viewers see it.
pub const STREAM_OFF_REASON: &str = "the camera's owner switched streaming off";

/// One change, applied at once to the running device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Off: every session is closed with a reason, capture stops, new offers are refused with
    /// a reason. On: capture resumes and offers are taken again.
    Streaming(bool),
    /// The camera's picture size; the next keyframe comes at the new size and live viewers keep
    /// playing.
    Resolution { width: u32, height: u32 },
    /// The video encoder's target bitrate.
    BitrateKbps(u32),
    /// Audio sent or not (live sessions keep their negotiated tracks; silence is not sent).
    Audio(bool),
    /// Most concurrent viewers. Lowering it never drops a live viewer: it only refuses new ones.
    MaxViewers(usize),
}

/// Why a change was not applied (the reported value stays as it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("not supported by this device: {0}")]
    Unsupported(String),
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("the device is not running")]
    Stopped,
}

pub type ControlFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ControlError>> + Send + 'a>>;

/// A device that takes [`Control`]s.
pub trait DeviceControl: Send + Sync {
    fn apply(&self, control: Control) -> ControlFuture<'_>;
    /// The number of live viewer sessions, and changes to it.
    fn viewers(&self) -> watch::Receiver<usize>;
}
