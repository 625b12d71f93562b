//! # Platform layer
//!
//! The bottom layer of kvs-webrtc, the Rust counterpart of the seed SDK's "foundation layer".
//! It owns the *contracts* that everything above relies on for things a device provides:
//! time ([`clock`]), atomic file replacement ([`fs`]), and the capture devices — camera and
//! microphone ([`media`]), and the speaker that plays talk-back audio ([`speaker`]), the display that shows viewers' video
//! ([`video_player`]). Each contract comes with a host implementation so the SDK runs on
//! an ordinary computer. A contract is added here when something uses it (split mode's wake
//! line and the display of two-way media come with those features).
//!
//! It must not know about signaling, WebRTC, codecs' bitstreams or the application: those are
//! the core layer's. Nothing here may depend on another kvs-webrtc crate.

pub mod clock;
pub mod fs;
pub mod media;
#[cfg(feature = "sound-card")]
pub mod sound_card;
pub mod speaker;
pub mod video_player;

pub use clock::{Clock, SystemClock};
pub use fs::write_atomic;
pub use media::{
    AudioCapture, AudioCodec, AudioFormat, CaptureError, EncodedFrame, FrameKind, VideoCapture,
    VideoCodec, VideoFormat,
};
pub use speaker::{AudioPlayer, CommandPlayer, PcmFormat, PlaybackError, WavFilePlayer};
pub use video_player::{
    CommandVideoPlayer, I420Frame, RawFilePlayer, VideoPlayer, VideoPlayerError,
};
