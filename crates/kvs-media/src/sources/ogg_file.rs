//! The Ogg/Opus file microphone: an `.opus`/`.ogg` file, validated and indexed at open, played
//! in a loop, paced by the packets' timestamps.

use crate::ogg::OggOpusReader;
use crate::pacer::{LatePolicy, PaceAction, Pacer, PacerConfig};
use bytes::Bytes;
use kvs_platform::{AudioCapture, AudioCodec, AudioFormat, CaptureError, EncodedFrame, FrameKind};
use std::path::Path;
use std::time::Instant;

/// Settings of an [`OggOpusMicrophone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OggOpusFileConfig {
    /// Largest file accepted.
    pub max_file_bytes: u64,
    /// Block until each packet is due (false: as fast as asked, same timestamps).
    pub paced: bool,
}

impl Default for OggOpusFileConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: super::DEFAULT_MAX_FILE_BYTES,
            paced: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Packet {
    data: Bytes,
    ts_us: u64,
}

/// A looping Ogg/Opus file (mono or stereo, mapping family 0).
#[derive(Debug)]
pub struct OggOpusMicrophone {
    config: OggOpusFileConfig,
    channels: u16,
    frame_duration_us: u32,
    packets: Vec<Packet>,
    /// Length of one loop in µs (end of the last packet).
    loop_us: u64,
    next: usize,
    loops: u64,
    pacer: Pacer,
}

impl OggOpusMicrophone {
    /// Open and validate `path`.
    pub fn open(path: impl AsRef<Path>, config: OggOpusFileConfig) -> Result<Self, CaptureError> {
        let max = config.max_file_bytes;
        super::open_file(path.as_ref(), max, |data| Self::from_bytes(data, config))
    }

    /// Validate an in-memory Ogg/Opus file: headers, every page's CRC, every packet's TOC.
    pub fn from_bytes(data: Bytes, config: OggOpusFileConfig) -> Result<Self, CaptureError> {
        let invalid = |e: crate::ogg::OggError| CaptureError::InvalidInput(e.to_string());
        let mut reader = OggOpusReader::new(data).map_err(invalid)?;
        let channels = u16::from(reader.head().channels);
        let mut packets = Vec::new();
        let mut loop_us = 0;
        let mut first_samples = None;
        while let Some(p) = reader.next_packet().map_err(invalid)? {
            first_samples.get_or_insert(p.samples);
            loop_us = p
                .timestamp_us
                .saturating_add(u64::from(p.samples) * 1_000_000 / 48_000);
            packets.push(Packet {
                data: p.data,
                ts_us: p.timestamp_us,
            });
        }
        let Some(first_samples) = first_samples else {
            return Err(CaptureError::InvalidInput(
                "Ogg/Opus file has no audio packets".into(),
            ));
        };
        let frame_duration_us = first_samples * 1_000_000 / 48_000;
        tracing::info!(
            packets = packets.len(),
            channels,
            loop_us,
            "Ogg/Opus file loaded"
        );
        Ok(Self {
            config,
            channels,
            frame_duration_us,
            packets,
            loop_us,
            next: 0,
            loops: 0,
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Skip,
                default_frame_interval_us: u64::from(frame_duration_us),
                ..PacerConfig::default()
            }),
        })
    }

    /// Packets in one loop of the file.
    pub fn packet_count(&self) -> usize {
        self.packets.len()
    }
}

impl AudioCapture for OggOpusMicrophone {
    fn format(&self) -> AudioFormat {
        AudioFormat {
            codec: AudioCodec::Opus,
            sample_rate: 48_000,
            channels: self.channels,
            frame_duration_us: self.frame_duration_us,
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.pacer.reset();
        Ok(())
    }

    fn stop(&mut self) {
        self.pacer.reset();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        loop {
            let p = self.packets[self.next].clone();
            // Timestamps keep rising across loops: loop k is offset by k file lengths.
            let nominal = self
                .loops
                .saturating_mul(self.loop_us)
                .saturating_add(p.ts_us);
            self.next += 1;
            if self.next == self.packets.len() {
                self.next = 0;
                self.loops += 1;
            }
            if !self.config.paced {
                return Ok(Some(EncodedFrame::new(p.data, nominal, FrameKind::Key)));
            }
            let paced = self.pacer.pace(nominal, Instant::now());
            if paced.action == PaceAction::Skip {
                continue;
            }
            super::sleep_until(paced.due);
            return Ok(Some(EncodedFrame::new(
                p.data,
                paced.output_ts_us,
                FrameKind::Key,
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ogg::{OggOpusWriter, OpusHead};
    use kvs_platform::AudioCapture;

    /// An Ogg/Opus file of `n` 20 ms tone packets, written with our Ogg writer.
    fn tone_file(n: usize) -> Vec<u8> {
        let mut mic = crate::sources::ToneMicrophone::new(crate::sources::ToneConfig {
            paced: false,
            ..Default::default()
        })
        .unwrap();
        let head = OpusHead {
            version: 1,
            channels: 1,
            pre_skip: 312,
            input_sample_rate: 48_000,
            output_gain: 0,
            mapping_family: 0,
        };
        let mut w = OggOpusWriter::new(Vec::new(), 42, &head).unwrap();
        for i in 0..n {
            let f = mic.next_frame().unwrap().unwrap();
            w.write_packet(&f.data, i + 1 == n).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn loops_with_rising_timestamps_and_decodes() {
        let file = tone_file(5);
        let dir = std::env::temp_dir().join(format!("kvs-media-ogg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.opus");
        std::fs::write(&path, &file).unwrap();
        let mut mic = OggOpusMicrophone::open(
            &path,
            OggOpusFileConfig {
                paced: false,
                ..Default::default()
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mic.packet_count(), 5);
        assert_eq!(mic.format().channels, 1);
        assert_eq!(mic.format().frame_duration_us, 20_000);
        let mut dec = opus_rs::OpusDecoder::new(48_000, 1).unwrap();
        let mut pcm = vec![0f32; 5760];
        for i in 0..12u64 {
            let f = mic.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 20_000);
            assert_eq!(dec.decode(&f.data, 5760, &mut pcm).unwrap(), 960);
        }
    }

    #[test]
    fn paced_playback_takes_real_time() {
        let mut mic =
            OggOpusMicrophone::from_bytes(tone_file(3).into(), OggOpusFileConfig::default())
                .unwrap();
        let start = Instant::now();
        let mut last = 0;
        for _ in 0..4 {
            last = mic.next_frame().unwrap().unwrap().timestamp_us;
        }
        assert_eq!(last, 60_000);
        assert!(start.elapsed() >= std::time::Duration::from_millis(60));
    }

    #[test]
    fn rejects_bad_files_at_open() {
        let cfg = OggOpusFileConfig::default();
        let open = |d: Vec<u8>| OggOpusMicrophone::from_bytes(d.into(), cfg);
        assert!(matches!(
            open(Vec::new()),
            Err(CaptureError::InvalidInput(_))
        ));
        let file = tone_file(4);
        let truncated = file[..file.len() - 10].to_vec();
        let err = open(truncated).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut corrupt = file.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        let err = open(corrupt).unwrap_err().to_string();
        assert!(err.contains("CRC"), "{err}");
        // Headers only.
        let head = OpusHead {
            version: 1,
            channels: 2,
            pre_skip: 0,
            input_sample_rate: 0,
            output_gain: 0,
            mapping_family: 0,
        };
        let headers_only = OggOpusWriter::new(Vec::new(), 1, &head)
            .unwrap()
            .into_inner();
        let err = open(headers_only).unwrap_err().to_string();
        assert!(err.contains("no audio packets"), "{err}");
    }
}
