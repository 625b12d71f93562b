//! The tone microphone: a 48 kHz mono sine (440 Hz by default) with a short higher beep at the
//! start of every second so a listener can tell it is live, encoded in 20 ms frames to Opus
//! with the pure-Rust `opus-rs` encoder and/or to G.711 (PCMU, PCMA: the same samples brought
//! down to 8 kHz, see [`crate::g711`]). With several codecs each period gives one packet per
//! codec, tagged, and every viewer is sent the one it negotiated.

use super::audio_encoder::{AudioEncoder, FRAME_SAMPLES, FRAME_US, SAMPLE_RATE};
use crate::pacer::{LatePolicy, Pacer, PacerConfig};
use kvs_platform::{AudioCapture, AudioCodec, AudioFormat, CaptureError, EncodedFrame};
use std::time::Instant;
/// Beep: the first 100 ms of each second, at twice the tone's frequency.
const BEEP_SAMPLES: u64 = 4_800;

/// Settings of a [`ToneMicrophone`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneConfig {
    pub frequency_hz: f32,
    /// Peak amplitude, 0.0..=1.0.
    pub amplitude: f32,
    /// Replace the first 100 ms of every second with a tone at twice the frequency.
    pub beep_each_second: bool,
    pub bitrate_bps: u32,
    /// Block in `next_frame` until each frame is due (false: as fast as asked, same
    /// timestamps).
    pub paced: bool,
    /// Codecs to encode each period to, in preference order (not empty).
    pub codecs: &'static [AudioCodec],
}

/// Every codec the tone can produce, Opus first.
pub const ALL_TONE_CODECS: &[AudioCodec] = &[AudioCodec::Opus, AudioCodec::Pcmu, AudioCodec::Pcma];

impl Default for ToneConfig {
    fn default() -> Self {
        Self {
            frequency_hz: 440.0,
            amplitude: 0.3,
            beep_each_second: true,
            bitrate_bps: 64_000,
            paced: true,
            codecs: &[AudioCodec::Opus],
        }
    }
}

/// A live tone encoded to Opus. See the [module docs](self).
pub struct ToneMicrophone {
    config: ToneConfig,
    /// Encodes each period; holds this period's packets in the other codecs, returned
    /// before the next period.
    encoder: AudioEncoder,
    /// Samples generated so far.
    sample: u64,
    phase: f64,
    pcm: [f32; FRAME_SAMPLES],
    pacer: Pacer,
    frame_index: u64,
}

impl std::fmt::Debug for ToneMicrophone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToneMicrophone")
            .field("config", &self.config)
            .field("frame_index", &self.frame_index)
            .finish_non_exhaustive()
    }
}

impl ToneMicrophone {
    pub fn new(config: ToneConfig) -> Result<Self, CaptureError> {
        if !(20.0..=20_000.0).contains(&config.frequency_hz) {
            return Err(CaptureError::InvalidInput(format!(
                "tone frequency {} Hz out of range 20..=20000",
                config.frequency_hz
            )));
        }
        if !(0.0..=1.0).contains(&config.amplitude) {
            return Err(CaptureError::InvalidInput(format!(
                "tone amplitude {} out of range 0..=1",
                config.amplitude
            )));
        }
        let encoder = AudioEncoder::new(config.codecs, config.bitrate_bps)?;
        Ok(Self {
            config,
            encoder,
            sample: 0,
            phase: 0.0,
            pcm: [0.0; FRAME_SAMPLES],
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Skip,
                default_frame_interval_us: FRAME_US,
                ..PacerConfig::default()
            }),
            frame_index: 0,
        })
    }

    fn generate(&mut self) {
        let base = f64::from(self.config.frequency_hz);
        let amp = f64::from(self.config.amplitude);
        for s in self.pcm.iter_mut() {
            let beeping =
                self.config.beep_each_second && self.sample % u64::from(SAMPLE_RATE) < BEEP_SAMPLES;
            let freq = if beeping { base * 2.0 } else { base };
            *s = (amp * (self.phase * std::f64::consts::TAU).sin()) as f32;
            self.phase = (self.phase + freq / f64::from(SAMPLE_RATE)).fract();
            self.sample += 1;
        }
    }

    /// One period in every configured codec: the first is returned, the others queued.
    fn encode(&mut self, ts_us: u64) -> Result<EncodedFrame, CaptureError> {
        self.generate();
        self.encoder.encode(&self.pcm, ts_us)
    }
}

impl AudioCapture for ToneMicrophone {
    fn codecs(&self) -> Vec<AudioCodec> {
        self.config.codecs.to_vec()
    }

    fn format(&self) -> AudioFormat {
        self.encoder.format()
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.pacer.reset();
        Ok(())
    }

    fn stop(&mut self) {
        self.pacer.reset();
        self.encoder.clear_pending();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        if let Some(f) = self.encoder.pop_pending() {
            return Ok(Some(f));
        }
        loop {
            let nominal = self.frame_index * FRAME_US;
            self.frame_index += 1;
            if !self.config.paced {
                return self.encode(nominal).map(Some);
            }
            let paced = self.pacer.pace(nominal, Instant::now());
            match paced.action {
                crate::pacer::PaceAction::Skip => {
                    // Keep the waveform continuous: generate (and drop) the late frame.
                    self.generate();
                    continue;
                }
                _ => {
                    super::sleep_until(paced.due);
                    return self.encode(paced.output_ts_us).map(Some);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opus_rs::OpusDecoder;

    /// Decode frames with opus-rs's decoder; count upward zero crossings per second.
    fn decoded_frequency(frames: &[EncodedFrame], from: usize, to: usize) -> f64 {
        let mut dec = OpusDecoder::new(48_000, 1).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0f32; 5760];
        for f in frames {
            let n = dec.decode(&f.data, 5760, &mut buf).unwrap();
            assert_eq!(n, FRAME_SAMPLES, "20 ms per packet");
            pcm.extend_from_slice(&buf[..n]);
        }
        let seg = &pcm[from..to];
        let peak = seg.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!(peak > 0.15, "decoded signal too quiet: peak {peak}");
        let crossings = seg.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f64 * 48_000.0 / (to - from) as f64
    }

    #[test]
    fn tone_decodes_to_440_hz_and_beeps_at_880() {
        let mut mic = ToneMicrophone::new(ToneConfig {
            paced: false,
            ..ToneConfig::default()
        })
        .unwrap();
        assert_eq!(mic.format().frame_duration_us, 20_000);
        let frames: Vec<EncodedFrame> = (0..50)
            .map(|_| mic.next_frame().unwrap().unwrap())
            .collect();
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.timestamp_us, i as u64 * 20_000);
            assert!(f.data.len() > 10 && f.data.len() <= 1275);
        }
        // 64 kbit/s ≈ 160 bytes per 20 ms frame on average.
        let avg = frames.iter().map(|f| f.data.len()).sum::<usize>() / frames.len();
        assert!((60..=400).contains(&avg), "average packet {avg} bytes");
        // Steady tone between 200 ms and 900 ms (skipping codec delay and the beep).
        let f = decoded_frequency(&frames, 9_600, 43_200);
        assert!((f - 440.0).abs() < 15.0, "decoded tone {f} Hz");
        // The beep (first 100 ms, delayed by the codec's lookahead of a few ms).
        let f = decoded_frequency(&frames, 960, 4_320);
        assert!((f - 880.0).abs() < 40.0, "decoded beep {f} Hz");
    }

    #[test]
    fn g711_periods_follow_opus_and_decode_to_the_tone() {
        let mut mic = ToneMicrophone::new(ToneConfig {
            paced: false,
            beep_each_second: false,
            codecs: ALL_TONE_CODECS,
            ..ToneConfig::default()
        })
        .unwrap();
        assert_eq!(mic.codecs(), ALL_TONE_CODECS.to_vec());
        let mut pcmu = Vec::new();
        let mut pcma = Vec::new();
        for period in 0..25u64 {
            for codec in ALL_TONE_CODECS {
                let f = mic.next_frame().unwrap().unwrap();
                assert_eq!(f.audio_codec, Some(*codec));
                assert_eq!(f.timestamp_us, period * 20_000);
                match codec {
                    AudioCodec::Pcmu => {
                        pcmu.extend(f.data.iter().map(|b| crate::g711::ulaw_decode(*b)))
                    }
                    AudioCodec::Pcma => {
                        pcma.extend(f.data.iter().map(|b| crate::g711::alaw_decode(*b)))
                    }
                    AudioCodec::Opus => {}
                }
            }
        }
        for pcm in [pcmu, pcma] {
            assert_eq!(pcm.len(), 25 * 160, "160 samples per 20 ms at 8 kHz");
            let crossings = pcm.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
            let hz = crossings as f64 * 8_000.0 / pcm.len() as f64;
            assert!((hz - 440.0).abs() < 5.0, "G.711 tone {hz} Hz");
            let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(
                (9_000..=10_500).contains(&peak),
                "peak {peak} (0.3 of full scale)"
            );
        }
    }

    #[test]
    fn rejects_bad_config() {
        for cfg in [
            ToneConfig {
                frequency_hz: 0.0,
                ..ToneConfig::default()
            },
            ToneConfig {
                bitrate_bps: 1,
                ..ToneConfig::default()
            },
        ] {
            assert!(matches!(
                ToneMicrophone::new(cfg),
                Err(CaptureError::InvalidInput(_))
            ));
        }
    }
}
