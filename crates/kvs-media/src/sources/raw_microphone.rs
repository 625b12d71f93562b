//! The raw-capture microphone: interleaved S16LE PCM at any rate and channel count read from a
//! command's standard output (e.g. `arecord -f S16_LE -r 48000 -c 1 -t raw` or
//! `ffmpeg -f pulse -i default -f s16le -ac 1 -ar 48000 -`), mixed down to mono, brought to
//! 48 kHz and encoded every 20 ms with the shared audio encoder in the codecs the viewers
//! negotiate (Opus; PCMU/PCMA at 8 kHz).
//!
//! It owns the conversion ([`PcmConverter`]: a pure function of the bytes, fuzzed) and the
//! pacing at one period per 20 ms (reading blocks, so a producer faster than real time is held
//! back by the pipe). The command itself is [`super::command`]'s.

use super::audio_encoder::{AudioEncoder, FRAME_SAMPLES, FRAME_US, SAMPLE_RATE};
use super::command::{CommandOptions, CommandSource};
use crate::pacer::{LatePolicy, Pacer, PacerConfig};
use kvs_platform::{AudioCapture, AudioCodec, AudioFormat, CaptureError, EncodedFrame};

/// Periods per second (20 ms each).
const PERIODS_PER_SECOND: u32 = 50;

/// Interleaved S16LE at `rate` with `channels` to 48 kHz mono, one 20 ms period at a time:
/// channels averaged, then linear interpolation (one input sample of delay, so periods join
/// without a seam). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PcmConverter {
    rate: u32,
    channels: u16,
    /// The last mono sample of the previous period.
    previous: f32,
    mono: Vec<f32>,
}

impl PcmConverter {
    /// `rate` 8000..=192000 and a multiple of 50 (whole samples per 20 ms), `channels` 1..=8.
    pub fn new(rate: u32, channels: u16) -> Result<Self, CaptureError> {
        if !(8_000..=192_000).contains(&rate) || !rate.is_multiple_of(PERIODS_PER_SECOND) {
            return Err(CaptureError::InvalidInput(format!(
                "raw audio rate {rate} Hz: must be 8000..=192000 and a multiple of 50"
            )));
        }
        if !(1..=8).contains(&channels) {
            return Err(CaptureError::InvalidInput(format!(
                "raw audio channels {channels}: must be 1..=8"
            )));
        }
        Ok(Self {
            rate,
            channels,
            previous: 0.0,
            mono: Vec::with_capacity((rate / PERIODS_PER_SECOND) as usize),
        })
    }

    /// Input samples (per channel) in one period.
    fn frames_per_period(&self) -> usize {
        (self.rate / PERIODS_PER_SECOND) as usize
    }

    /// Bytes of one 20 ms period of input.
    pub fn period_bytes(&self) -> usize {
        self.frames_per_period() * usize::from(self.channels) * 2
    }

    /// One period of input (exactly [`period_bytes`](Self::period_bytes)) into 960 samples.
    pub fn convert(
        &mut self,
        period: &[u8],
        out: &mut [f32; FRAME_SAMPLES],
    ) -> Result<(), CaptureError> {
        if period.len() != self.period_bytes() {
            return Err(CaptureError::InvalidInput(format!(
                "a 20 ms period of {} Hz x {} S16LE is {} bytes, got {}",
                self.rate,
                self.channels,
                self.period_bytes(),
                period.len()
            )));
        }
        let channels = usize::from(self.channels);
        self.mono.clear();
        for frame in period.chunks_exact(channels * 2) {
            let sum: i32 = frame
                .chunks_exact(2)
                .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            self.mono.push(sum as f32 / (channels as f32 * 32_768.0));
        }
        let n = self.mono.len();
        if self.rate == SAMPLE_RATE {
            out.copy_from_slice(&self.mono);
        } else {
            // Output sample k sits at input position k * n / 960 on [previous, mono...].
            for (k, o) in out.iter_mut().enumerate() {
                let pos = k * n;
                let (i, frac) = (pos / FRAME_SAMPLES, (pos % FRAME_SAMPLES) as f32);
                let a = if i == 0 {
                    self.previous
                } else {
                    self.mono[i - 1]
                };
                let b = self.mono[i];
                *o = a + (b - a) * frac / FRAME_SAMPLES as f32;
            }
        }
        self.previous = self.mono[n - 1];
        Ok(())
    }
}

/// Settings of a [`RawCommandMicrophone`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawAudioConfig {
    /// The command, its stall timeout and restart policy.
    pub command: CommandOptions,
    /// The command's sample rate (Hz) and channel count.
    pub sample_rate: u32,
    pub channels: u16,
    /// Codecs to encode each period to, in preference order (not empty).
    pub codecs: &'static [AudioCodec],
    /// Opus bitrate (bits/s).
    pub bitrate_bps: u32,
    /// One period per 20 ms (false: as fast as the command writes, same timestamps).
    pub paced: bool,
}

impl RawAudioConfig {
    /// `command` writing 48 kHz mono S16LE, encoded to Opus at 64 kbit/s.
    pub fn new(command: CommandOptions) -> Self {
        Self {
            command,
            sample_rate: 48_000,
            channels: 1,
            codecs: &[AudioCodec::Opus],
            bitrate_bps: 64_000,
            paced: true,
        }
    }
}

/// A microphone reading raw PCM from a command. See the [module docs](self).
pub struct RawCommandMicrophone {
    config: RawAudioConfig,
    source: CommandSource,
    converter: PcmConverter,
    encoder: AudioEncoder,
    pcm: [f32; FRAME_SAMPLES],
    pacer: Pacer,
    frame_index: u64,
}

impl std::fmt::Debug for RawCommandMicrophone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCommandMicrophone")
            .field("config", &self.config)
            .field("frame_index", &self.frame_index)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RawCommandMicrophone {
    /// A microphone with `config`; the command starts with [`AudioCapture::start`].
    pub fn new(config: RawAudioConfig) -> Result<Self, CaptureError> {
        let converter = PcmConverter::new(config.sample_rate, config.channels)?;
        let encoder = AudioEncoder::new(config.codecs, config.bitrate_bps)?;
        let source = CommandSource::new(
            config.command.clone(),
            converter.period_bytes(),
            "20 ms audio period",
        )?;
        Ok(Self {
            source,
            converter,
            encoder,
            pcm: [0.0; FRAME_SAMPLES],
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Reanchor,
                default_frame_interval_us: FRAME_US,
                ..PacerConfig::default()
            }),
            frame_index: 0,
            config,
        })
    }

    /// Times the command was restarted after a failure.
    pub fn restarts(&self) -> u64 {
        self.source.restarts()
    }
}

impl AudioCapture for RawCommandMicrophone {
    fn codecs(&self) -> Vec<AudioCodec> {
        self.encoder.codecs().to_vec()
    }

    fn format(&self) -> AudioFormat {
        self.encoder.format()
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.pacer.reset();
        self.source.start()
    }

    fn stop(&mut self) {
        self.pacer.reset();
        self.encoder.clear_pending();
        self.source.stop();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        if let Some(f) = self.encoder.pop_pending() {
            return Ok(Some(f));
        }
        let nominal = self.frame_index * FRAME_US;
        let ts = super::paced_timestamp(&mut self.pacer, self.config.paced, nominal);
        let period = self.source.next_chunk()?;
        self.frame_index += 1;
        self.converter.convert(&period, &mut self.pcm)?;
        self.encoder.encode(&self.pcm, ts).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{RawCommandError, ALL_TONE_CODECS};
    use opus_rs::OpusDecoder;

    /// Upward zero crossings per second of `pcm` at `rate`.
    fn frequency<T: Copy + Into<f64>>(pcm: &[T], rate: f64) -> f64 {
        let crossings = pcm
            .windows(2)
            .filter(|w| w[0].into() < 0.0 && w[1].into() >= 0.0)
            .count();
        crossings as f64 * rate / pcm.len() as f64
    }

    fn sine(rate: u32, channels: u16, extra: &str) -> CommandOptions {
        CommandOptions::new(format!(
            "exec ffmpeg -hide_banner -loglevel error -nostdin -f lavfi -i sine=frequency=440:sample_rate={rate} {extra} -f s16le -ac {channels} -ar {rate} -"
        ))
    }

    #[test]
    fn the_converter_mixes_channels_down_and_keeps_the_pitch_at_48_khz() {
        // 8 kHz stereo: left a 440 Hz sine, right silent → mono at half the level.
        let mut conv = PcmConverter::new(8_000, 2).unwrap();
        assert_eq!(conv.period_bytes(), 160 * 2 * 2);
        let mut out = [0f32; FRAME_SAMPLES];
        let mut all = Vec::new();
        let mut n = 0u64;
        for _ in 0..25 {
            let mut period = Vec::new();
            for _ in 0..160 {
                let s = (0.5
                    * (n as f64 * 440.0 / 8_000.0 * std::f64::consts::TAU).sin()
                    * 32_767.0) as i16;
                period.extend_from_slice(&s.to_le_bytes());
                period.extend_from_slice(&0i16.to_le_bytes());
                n += 1;
            }
            conv.convert(&period, &mut out).unwrap();
            all.extend_from_slice(&out);
        }
        let f = frequency(&all, 48_000.0);
        assert!((f - 440.0).abs() < 5.0, "{f} Hz");
        let peak = all.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((0.23..=0.26).contains(&peak), "peak {peak}");
        assert!(conv.convert(&[0; 10], &mut out).is_err(), "wrong length");
        assert!(PcmConverter::new(44_110, 1).is_err());
        assert!(PcmConverter::new(48_000, 0).is_err());
    }

    #[test]
    fn an_ffmpeg_sine_is_encoded_to_opus_that_decodes_to_440_hz() {
        let mut config = RawAudioConfig::new(sine(48_000, 1, ""));
        config.paced = false;
        let mut mic = RawCommandMicrophone::new(config).unwrap();
        mic.start().unwrap();
        let mut dec = OpusDecoder::new(48_000, 1).unwrap();
        let mut buf = vec![0f32; 5760];
        let mut pcm = Vec::new();
        for i in 0..50u64 {
            let f = mic.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 20_000);
            let n = dec.decode(&f.data, 5760, &mut buf).unwrap();
            assert_eq!(n, FRAME_SAMPLES);
            pcm.extend(buf[..n].iter().map(|s| f64::from(*s)));
        }
        let f = frequency(&pcm[9_600..], 48_000.0);
        assert!((f - 440.0).abs() < 10.0, "decoded {f} Hz");
    }

    #[test]
    fn a_44_1_khz_stereo_command_gives_g711_periods_at_the_pitch() {
        let mut config = RawAudioConfig::new(sine(44_100, 2, ""));
        config.paced = false;
        config.codecs = ALL_TONE_CODECS;
        config.sample_rate = 44_100;
        config.channels = 2;
        let mut mic = RawCommandMicrophone::new(config).unwrap();
        assert_eq!(mic.codecs(), ALL_TONE_CODECS.to_vec());
        mic.start().unwrap();
        let mut pcmu = Vec::new();
        for _ in 0..25 {
            for codec in ALL_TONE_CODECS {
                let f = mic.next_frame().unwrap().unwrap();
                assert_eq!(f.audio_codec, Some(*codec));
                if *codec == AudioCodec::Pcmu {
                    assert_eq!(f.data.len(), 160);
                    pcmu.extend(f.data.iter().map(|b| crate::g711::ulaw_decode(*b)));
                }
            }
        }
        let f = frequency(&pcmu, 8_000.0);
        assert!((f - 440.0).abs() < 5.0, "PCMU {f} Hz");
    }

    #[test]
    fn a_command_that_ends_mid_period_is_an_error() {
        // 1000 samples: one 960-sample period and 40 left over.
        let mut mic =
            RawCommandMicrophone::new(RawAudioConfig::new(sine(48_000, 1, "-t 0.0208333")))
                .unwrap();
        mic.start().unwrap();
        assert!(mic.next_frame().unwrap().is_some());
        let CaptureError::Io(e) = mic.next_frame().unwrap_err() else {
            panic!("an I/O error")
        };
        let e = e
            .into_inner()
            .unwrap()
            .downcast::<RawCommandError>()
            .unwrap();
        assert!(
            matches!(
                *e,
                RawCommandError::ShortRead {
                    got: 80,
                    expected: 1920,
                    ..
                }
            ),
            "{e}"
        );
    }
}
