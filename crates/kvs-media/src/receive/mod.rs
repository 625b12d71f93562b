//! Media *from* viewers: a viewer that sends its camera (and microphone) is recorded and/or
//! decoded on the device.
//!
//! - [`RxPacket`]: one RTP packet a viewer sent, as the peer engine hands it over (video or
//!   audio, extended sequence number and timestamp, payload).
//! - [`depay`]: RTP (RFC 6184) → H.264 access units, with a bounded reorder window; loss drops
//!   frames until the next IDR and asks for a keyframe (rate-limited).
//! - [`record`]: one fragmented MP4 file per session (H.264 as received + Opus), through the
//!   `muxide` muxer, bounded in bytes.
//! - [`decode`]: the decoding stage for a `kvs_platform::VideoPlayer`: a bounded queue that
//!   drops non-keyframes under backpressure, openh264, and "await the next IDR after an error".
//!
//! All sans-IO and synchronous (the application's receive thread drives them); nothing here
//! knows about sessions, SRTP or sockets. Every input is remote and may be anything: malformed
//! data yields typed errors or dropped frames, never a panic, and every buffer is bounded.

pub mod decode;
pub mod depay;
pub mod record;

use bytes::Bytes;
use kvs_platform::AudioCodec;
use std::time::Instant;

/// What an [`RxPacket`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMedia {
    /// H.264 (RFC 6184 payload), 90 kHz clock.
    Video,
    /// Audio in this codec (Opus: 48 kHz clock; G.711: 8 kHz).
    Audio(AudioCodec),
}

/// One RTP packet a viewer sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RxPacket {
    /// The viewer (signaling client id).
    pub peer_id: String,
    pub media: RxMedia,
    /// Extended RTP sequence number (no wrap-around).
    pub seq: u64,
    /// Extended RTP timestamp, on the codec's clock.
    pub rtp_time: u64,
    /// The RTP marker bit (video: last packet of an access unit).
    pub marker: bool,
    pub payload: Bytes,
    /// When the packet arrived.
    pub arrival: Instant,
}

/// What the peer engine hands the receive thread.
#[derive(Debug, Clone, PartialEq)]
pub enum RxItem {
    Packet(RxPacket),
    /// The viewer's session ended: its recording is finalized, its decoder dropped.
    Ended {
        peer_id: String,
    },
}
