//! # Core layer: the media pipeline
//!
//! This crate owns everything between a media device and the peer connections that is about the
//! *media itself*, not about transport:
//!
//! - [`annexb`]: Annex-B start codes and the streaming access-unit assembler shared by H.264
//!   and H.265 (each codec gives its boundary rules).
//! - [`h264`]: zero-copy Annex-B parsing, NAL headers, a streaming access-unit assembler,
//!   keyframe detection and an SPS parser (picture size, profile/level).
//! - [`h265`]: H.265 NAL headers (2 bytes), access-unit boundaries, IRAP keyframes.
//! - [`ivf`]: the IVF container (VP8 files and pipes), zero-copy, and [`vp8`]: the VP8 frame
//!   tag (keyframes, picture size).
//! - [`ogg`]: Ogg page parsing and an Ogg/Opus reader (plus a small writer used for fixtures).
//! - [`pacer`]: a sans-IO frame pacer that says when each frame is due.
//! - [`rate_hold`]: which pictures a live encoder skips to hold its target bitrate.
//! - [`sources`]: host implementations of the `kvs_platform` capture traits (a test-pattern
//!   camera and tone microphone that encode live, file sources that loop, and a camera that
//!   reads H.264 from a pipe).
//! - [`fanout`]: fan-out of encoded frames to sessions.
//! - [`rtp`]: RTP payload formats (H.264 RFC 6184, H.265 RFC 7798, VP8 RFC 7741, Opus): a frame is cut into payloads once
//!   and every session sends the same shared payloads.
//! - [`g711`]: G.711 µ-law/A-law companding and the 48 ↔ 8 kHz rate changes.
//! - [`talkback`]: the speaker side of talk-back, sans-IO: who holds the floor, a jitter
//!   buffer bounded in time, decoding viewers' Opus and G.711 into 48 kHz PCM.
//! - [`receive`]: media *from* viewers: RTP → H.264 access units (reorder, loss → wait for
//!   an IDR), per-session MP4 recording, decoding for a `VideoPlayer`.
//! - [`snapshot`]: an I420 picture (or the test pattern right now) as a baseline JPEG, for
//!   split mode's snapshot requests.
//!
//! It must not know about signaling, RTP/WebRTC sessions (SSRCs, sequence numbers, SRTP) or
//! the application framework: it produces [`kvs_platform::EncodedFrame`]s and their RTP
//! payloads, and nothing else. Every parser here is fed data
//! from files or pipes and must return typed errors — never panic — on malformed input.

pub mod annexb;
pub mod fanout;
pub mod g711;
pub mod h264;
pub mod h265;
pub mod ivf;
pub mod ogg;
pub mod pacer;
pub mod rate_hold;
pub mod receive;
pub mod rtp;
pub mod snapshot;
pub mod sources;
pub mod talkback;
pub mod vp8;
