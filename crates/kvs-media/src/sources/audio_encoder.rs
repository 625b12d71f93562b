//! The audio encoder the PCM microphones share (the tone and the raw-capture microphone): one
//! 20 ms period of 48 kHz mono samples becomes one packet per configured codec — Opus with the
//! pure-Rust `opus-rs` encoder, PCMU/PCMA from the same samples brought down to 8 kHz
//! ([`crate::g711`]). With several codecs the packets are tagged and every viewer is sent the
//! one it negotiated; the first is returned, the others wait in [`AudioEncoder::pop_pending`].
//!
//! It owns the encoders and the queue of this period's other packets; it must not know where
//! samples come from or pace anything.

use bytes::Bytes;
use kvs_platform::{AudioCodec, AudioFormat, CaptureError, EncodedFrame, FrameKind};
use opus_rs::{Application, OpusEncoder};
use std::collections::VecDeque;

/// The rate the encoders take.
pub(crate) const SAMPLE_RATE: u32 = 48_000;
/// One period: 20 ms at 48 kHz.
pub(crate) const FRAME_SAMPLES: usize = 960;
pub(crate) const FRAME_US: u64 = 20_000;

/// See the [module docs](self).
pub(crate) struct AudioEncoder {
    codecs: &'static [AudioCodec],
    opus: OpusEncoder,
    out: Vec<u8>,
    low: Vec<i16>,
    pending: VecDeque<EncodedFrame>,
}

impl AudioEncoder {
    /// Encoders for `codecs` (not empty), Opus at `opus_bitrate_bps` (6000..=510000).
    pub(crate) fn new(
        codecs: &'static [AudioCodec],
        opus_bitrate_bps: u32,
    ) -> Result<Self, CaptureError> {
        if codecs.is_empty() {
            return Err(CaptureError::InvalidInput(
                "a microphone needs at least one codec".into(),
            ));
        }
        if !(6_000..=510_000).contains(&opus_bitrate_bps) {
            return Err(CaptureError::InvalidInput(format!(
                "Opus bitrate {opus_bitrate_bps} out of range 6000..=510000"
            )));
        }
        let mut opus = OpusEncoder::new(SAMPLE_RATE as i32, 1, Application::Audio)
            .map_err(|e| CaptureError::Codec(format!("Opus encoder: {e}")))?;
        opus.bitrate_bps = opus_bitrate_bps as i32;
        Ok(Self {
            codecs,
            opus,
            // RFC 6716's maximum packet size.
            out: vec![0; 1275],
            low: Vec::with_capacity(FRAME_SAMPLES / 6),
            pending: VecDeque::new(),
        })
    }

    pub(crate) fn codecs(&self) -> &'static [AudioCodec] {
        self.codecs
    }

    /// The format of the first codec's packets: mono, 20 ms.
    pub(crate) fn format(&self) -> AudioFormat {
        let codec = self.codecs.first().copied().unwrap_or(AudioCodec::Opus);
        AudioFormat {
            codec,
            sample_rate: codec.clock_rate(),
            channels: 1,
            frame_duration_us: FRAME_US as u32,
        }
    }

    /// One period in every codec: the first is returned, the others queued.
    pub(crate) fn encode(
        &mut self,
        pcm: &[f32; FRAME_SAMPLES],
        ts_us: u64,
    ) -> Result<EncodedFrame, CaptureError> {
        let tag = self.codecs.len() > 1;
        let mut first = None;
        for &codec in self.codecs {
            let data = match codec {
                AudioCodec::Opus => {
                    let n = self
                        .opus
                        .encode(pcm, FRAME_SAMPLES, &mut self.out)
                        .map_err(|e| CaptureError::Codec(format!("Opus encode: {e}")))?;
                    Bytes::copy_from_slice(&self.out[..n])
                }
                AudioCodec::Pcmu | AudioCodec::Pcma => {
                    self.low.clear();
                    crate::g711::downsample_48k_to_8k(pcm, &mut self.low);
                    let encode = if codec == AudioCodec::Pcmu {
                        crate::g711::ulaw_encode
                    } else {
                        crate::g711::alaw_encode
                    };
                    self.low.iter().map(|s| encode(*s)).collect()
                }
            };
            let mut frame = EncodedFrame::new(data, ts_us, FrameKind::Key);
            if tag {
                frame = frame.with_audio_codec(codec);
            }
            if first.is_none() {
                first = Some(frame);
            } else {
                self.pending.push_back(frame);
            }
        }
        first.ok_or_else(|| CaptureError::Codec("no codec".into()))
    }

    /// The current period's packets in the other codecs, one by one.
    pub(crate) fn pop_pending(&mut self) -> Option<EncodedFrame> {
        self.pending.pop_front()
    }

    /// Forget the packets not yet handed out (the source stopped).
    pub(crate) fn clear_pending(&mut self) {
        self.pending.clear();
    }
}
