//! # Platform layer
//!
//! The bottom layer of kvs-webrtc, the Rust counterpart of the seed SDK's "foundation layer".
//! It owns the *contracts* that everything above relies on for things a device provides:
//! time ([`clock`]), persistent key/value storage ([`storage`]) and atomic file replacement
//! ([`fs`]), power and wake-up ([`power`]), and media devices — camera, microphone, display,
//! speaker ([`media`]).
//! Each contract comes with a host implementation so the SDK runs on an ordinary computer.
//!
//! It must not know about signaling, WebRTC, codecs' bitstreams or the application: those are
//! the core layer's. Nothing here may depend on another kvs-webrtc crate.

pub mod clock;
pub mod fs;
pub mod media;
pub mod power;
pub mod storage;

pub use clock::{Clock, SystemClock};
pub use fs::write_atomic;
pub use media::{
    AudioCapture, AudioCodec, AudioFormat, AudioPlayer, CaptureError, EncodedFrame, FrameKind,
    VideoCapture, VideoCodec, VideoFormat, VideoPlayer,
};
