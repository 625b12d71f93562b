//! Media device contracts: camera (video capture) and microphone (audio capture), mirroring the
//! seed SDK's media interfaces (init/start/stop/get frame/release frame; bitrate; JPEG
//! snapshot). The speaker (talk-back audio) is [`crate::speaker`].
//!
//! Captures hand out *encoded* frames: on the seed's devices the camera or a hardware encoder
//! produces H.264, and the microphone path produces Opus. Releasing a frame is dropping it;
//! [`EncodedFrame::data`] is a reference-counted [`Bytes`] so fanning one frame out to many
//! viewers never copies it.
//!
//! Capture calls block (device drivers do); the application framework runs each capture on its
//! own thread. A capture paces itself: `next_frame` returns when the frame is due.

use bytes::Bytes;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Whether a video frame can be decoded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// An I/IDR frame (with its parameter sets): a decoder can start here.
    Key,
    /// A P or B frame: needs the frames before it. (Every audio frame decodes on its own, so
    /// audio frames are always `Key`.)
    Delta,
}

/// One encoded media frame: a complete H.264 or H.265 access unit in Annex-B form, one VP8
/// frame, or one audio packet
/// (Opus, or 20 ms of G.711).
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The encoded bytes, shared without copying.
    pub data: Bytes,
    /// Presentation time in microseconds on the capture's own monotonic timeline.
    pub timestamp_us: u64,
    /// Key (independently decodable) or delta.
    pub kind: FrameKind,
    /// For audio: the codec of this packet, when the capture produces several
    /// ([`AudioCapture::codecs`]); `None` means the capture's [`AudioFormat::codec`].
    pub audio_codec: Option<AudioCodec>,
}

impl EncodedFrame {
    /// A frame of `kind` at `timestamp_us`.
    pub fn new(data: impl Into<Bytes>, timestamp_us: u64, kind: FrameKind) -> Self {
        Self {
            data: data.into(),
            timestamp_us,
            kind,
            audio_codec: None,
        }
    }

    /// The same frame, tagged as an audio packet of `codec`.
    pub fn with_audio_codec(mut self, codec: AudioCodec) -> Self {
        self.audio_codec = Some(codec);
        self
    }

    /// True for frames a decoder can start from.
    pub fn is_key(&self) -> bool {
        self.kind == FrameKind::Key
    }
}

impl fmt::Debug for EncodedFrame {
    // Frames are large; print their shape, not their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("len", &self.data.len())
            .field("timestamp_us", &self.timestamp_us)
            .field("kind", &self.kind)
            .field("audio_codec", &self.audio_codec)
            .finish()
    }
}

/// Video codecs the SDK can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// H.264, sent with packetization-mode 1.
    H264,
    /// VP8 (RFC 7741); frames are whole VP8 frames as an IVF file holds them.
    Vp8,
    /// H.265/HEVC (RFC 7798); frames are Annex-B access units.
    H265,
}

impl VideoCodec {
    /// The name in SDP and in the browser's `mimeType` (`video/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::H264 => "H264",
            Self::Vp8 => "VP8",
            Self::H265 => "H265",
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Audio codecs the SDK can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// Opus, 48 kHz RTP clock.
    Opus,
    /// G.711 µ-law (RTP payload type 0), 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law (RTP payload type 8), 8 kHz, one byte per sample.
    Pcma,
}

impl AudioCodec {
    /// The RTP clock rate (and, for these codecs, the sample rate) in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Opus => 48_000,
            Self::Pcmu | Self::Pcma => 8_000,
        }
    }

    /// The name in SDP and in the browser's `mimeType` (`audio/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Opus => "opus",
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
        }
    }
}

impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a video capture produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFormat {
    pub codec: VideoCodec,
    /// Pixels; 0 when unknown until the first keyframe (e.g. a stream from stdin).
    pub width: u32,
    pub height: u32,
    /// Nominal frames per second; 0 when unknown.
    pub fps: u32,
}

/// What an audio capture produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub codec: AudioCodec,
    pub sample_rate: u32,
    pub channels: u16,
    /// Duration of one frame in microseconds (20 ms = 20_000 for the defaults).
    pub frame_duration_us: u32,
}

/// Errors from media devices.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The device does not offer this operation (e.g. bitrate on a file source).
    #[error("not supported by this media device: {0}")]
    Unsupported(&'static str),
    /// The source's data is malformed; the message says where and why.
    #[error("invalid media input: {0}")]
    InvalidInput(String),
    /// Reading the underlying device, file or pipe failed.
    #[error("media I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The encoder or decoder failed.
    #[error("codec error: {0}")]
    Codec(String),
}

/// A camera that yields encoded video.
pub trait VideoCapture: Send {
    /// The format frames will have.
    fn format(&self) -> VideoFormat;
    /// Begin producing frames.
    fn start(&mut self) -> Result<(), CaptureError>;
    /// Stop producing frames; `start` may be called again.
    fn stop(&mut self);
    /// Block until the next frame is due and return it; `Ok(None)` at the end of the stream.
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError>;
    /// Make the next frame a keyframe. Returns false when the source cannot (a file, a pipe):
    /// the pipeline then waits for the source's next keyframe.
    fn request_keyframe(&mut self) -> bool {
        false
    }
    /// A flag any thread may set to make the coming frame a keyframe. A paced source checks
    /// it right before it encodes, so a request made while it waits still applies to that
    /// frame (a request through [`request_keyframe`](Self::request_keyframe), made between
    /// frames, lands one frame later); whoever sets it also unparks the capture thread, and a
    /// source may then encode at once instead of waiting for the frame's slot. The source
    /// clears it. `None` (the default): only `request_keyframe`.
    fn keyframe_trigger(&self) -> Option<Arc<AtomicBool>> {
        None
    }
    /// Change the picture size; the next frame is a keyframe at the new size (a decoder
    /// follows the new SPS without renegotiation).
    fn set_resolution(&mut self, _width: u32, _height: u32) -> Result<(), CaptureError> {
        Err(CaptureError::Unsupported("set_resolution"))
    }
    /// Change the target bitrate in bits per second.
    fn set_bitrate(&mut self, _bits_per_second: u32) -> Result<(), CaptureError> {
        Err(CaptureError::Unsupported("set_bitrate"))
    }
    /// The target bitrate, if the source has one.
    fn bitrate(&self) -> Option<u32> {
        None
    }
    /// A JPEG still of the current picture.
    fn snapshot_jpeg(&mut self, _quality: u8) -> Result<Vec<u8>, CaptureError> {
        Err(CaptureError::Unsupported("snapshot_jpeg"))
    }
}

/// A microphone that yields encoded audio.
pub trait AudioCapture: Send {
    fn format(&self) -> AudioFormat;
    fn start(&mut self) -> Result<(), CaptureError>;
    fn stop(&mut self);
    /// Block until the next frame is due and return it; `Ok(None)` at the end of the stream.
    /// A capture with several [`codecs`](Self::codecs) returns each period's packets one
    /// after the other, each tagged with [`EncodedFrame::audio_codec`].
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError>;
    /// The codecs this capture produces, in preference order (the first is its
    /// [`AudioFormat::codec`]). A source of raw PCM (the tone) may encode the same period
    /// in several codecs so that each viewer gets the one it negotiated.
    fn codecs(&self) -> Vec<AudioCodec> {
        vec![self.format().codec]
    }
}
