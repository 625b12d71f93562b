//! The H.264 file camera: an Annex-B `.h264` file, split into access units at open, played in
//! a loop at a configured frame rate (Annex-B carries no timestamps).

use crate::h264::{AccessUnitAssembler, AccessUnitInfo, Sps, DEFAULT_MAX_ACCESS_UNIT_BYTES};
use bytes::Bytes;
use kvs_platform::{CaptureError, EncodedFrame, VideoCapture, VideoCodec, VideoFormat};
use std::path::Path;

/// Settings of an [`H264FileCamera`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264FileConfig {
    /// Playback rate, 1..=240.
    pub fps: u32,
    /// Largest file accepted.
    pub max_file_bytes: u64,
    /// Largest access unit accepted.
    pub max_access_unit_bytes: usize,
    /// Block until each frame is due (false: as fast as asked, same timestamps).
    pub paced: bool,
}

impl Default for H264FileConfig {
    fn default() -> Self {
        Self {
            fps: 30,
            max_file_bytes: super::DEFAULT_MAX_FILE_BYTES,
            max_access_unit_bytes: DEFAULT_MAX_ACCESS_UNIT_BYTES,
            paced: true,
        }
    }
}

/// A looping H.264 file. Access units are slices of the file's bytes (no copies). Access units
/// before the first keyframe are dropped at open (nothing could decode them), so every loop
/// starts with a keyframe carrying its parameter sets.
#[derive(Debug)]
pub struct H264FileCamera {
    config: H264FileConfig,
    frames: super::LoopedFrames,
    sps: Sps,
}

impl H264FileCamera {
    /// Open and validate `path`.
    pub fn open(path: impl AsRef<Path>, config: H264FileConfig) -> Result<Self, CaptureError> {
        let max = config.max_file_bytes;
        super::open_file(path.as_ref(), max, |data| Self::from_bytes(data, config))
    }

    /// Validate an in-memory Annex-B stream: it must contain an SPS (which must parse), a PPS
    /// and an IDR picture.
    pub fn from_bytes(data: Bytes, config: H264FileConfig) -> Result<Self, CaptureError> {
        let invalid = |m: String| CaptureError::InvalidInput(m);
        if !(1..=240).contains(&config.fps) {
            return Err(invalid(format!("fps {} out of range 1..=240", config.fps)));
        }
        if data.is_empty() {
            return Err(invalid("empty H.264 file".into()));
        }
        // Check what the stream contains first, for a precise error.
        let info = AccessUnitInfo::scan(&data);
        if !info.has_sps {
            return Err(invalid(
                "no H.264 sequence parameter set found (not an Annex-B H.264 file?)".into(),
            ));
        }
        let sps = crate::h264::find_sps(&data)
            .ok_or_else(|| invalid("SPS not found".into()))?
            .map_err(|e| invalid(format!("bad SPS: {e}")))?;
        if !info.has_pps {
            return Err(invalid("no H.264 picture parameter set found".into()));
        }
        if !info.has_idr {
            return Err(invalid("no IDR (key) frame found".into()));
        }
        let mut asm = AccessUnitAssembler::new(config.max_access_unit_bytes);
        asm.push(&data)
            .map_err(|e| invalid(format!("not a usable H.264 stream: {e}")))?;
        asm.finish();
        let mut frames = Vec::new();
        while let Some(au) = asm.pop() {
            if frames.is_empty() && !au.info.has_idr {
                continue; // undecodable lead-in
            }
            frames.push((au.data.clone(), au.kind()));
        }
        if frames.is_empty() {
            return Err(invalid("no IDR (key) frame found".into()));
        }
        if sps.width == 0 || sps.height == 0 {
            return Err(invalid("SPS has an empty picture size".into()));
        }
        tracing::info!(
            frames = frames.len(),
            width = sps.width,
            height = sps.height,
            profile_level_id = format_args!("{:06x}", sps.profile_level_id()),
            "H.264 file loaded"
        );
        Ok(Self {
            frames: super::LoopedFrames::new(frames, config.fps, config.paced),
            config,
            sps,
        })
    }

    /// Frames in one loop of the file.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The stream's SPS (size, profile and level).
    pub fn sps(&self) -> &Sps {
        &self.sps
    }
}

impl VideoCapture for H264FileCamera {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::H264,
            width: self.sps.width,
            height: self.sps.height,
            fps: self.config.fps,
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.frames.restart();
        Ok(())
    }

    fn stop(&mut self) {
        self.frames.stop();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        Ok(Some(self.frames.next_frame()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sources::test_pattern::tests::unpaced;

    /// A small Annex-B file made by the test-pattern encoder: `n` frames, IDR every 30.
    pub(crate) fn encoded_file(n: usize) -> Vec<u8> {
        let mut cam = unpaced(160, 120);
        let mut out = Vec::new();
        for _ in 0..n {
            out.extend_from_slice(&cam.next_frame().unwrap().unwrap().data);
        }
        out
    }

    #[test]
    fn loops_file_with_keyframe_flags_and_rising_timestamps() {
        let file = encoded_file(12);
        let dir = std::env::temp_dir().join(format!("kvs-media-h264-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pattern.h264");
        std::fs::write(&path, &file).unwrap();
        let mut cam = H264FileCamera::open(
            &path,
            H264FileConfig {
                fps: 25,
                paced: false,
                ..H264FileConfig::default()
            },
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cam.frame_count(), 12);
        assert_eq!((cam.format().width, cam.format().height), (160, 120));
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut joined = Vec::new();
        for i in 0..30u64 {
            let f = cam.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 40_000);
            assert_eq!(f.is_key(), i % 12 == 0, "frame {i}");
            assert!(
                decoder.decode(&f.data).unwrap().is_some(),
                "frame {i} decodes"
            );
            if i < 12 {
                joined.extend_from_slice(&f.data);
            }
        }
        assert_eq!(joined, file, "one loop reproduces the file byte for byte");
    }

    #[test]
    fn skips_lead_in_before_the_first_keyframe() {
        let file = encoded_file(5);
        // Drop the first access unit (SPS+PPS+IDR) but keep the SPS/PPS appended at the end.
        let mut asm = AccessUnitAssembler::default();
        asm.push(&file).unwrap();
        asm.finish();
        let aus: Vec<_> = std::iter::from_fn(|| asm.pop()).collect();
        let mut data = Vec::new();
        for au in &aus[1..] {
            data.extend_from_slice(&au.data);
        }
        let err =
            H264FileCamera::from_bytes(data.clone().into(), H264FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("parameter set"), "{err}");
        data.extend_from_slice(&aus[0].data);
        let cam = H264FileCamera::from_bytes(data.into(), H264FileConfig::default()).unwrap();
        assert_eq!(cam.frame_count(), 1);
    }

    #[test]
    fn rejects_empty_truncated_and_foreign_files() {
        let cfg = H264FileConfig::default();
        let err = |d: &[u8]| {
            H264FileCamera::from_bytes(Bytes::copy_from_slice(d), cfg)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"").contains("empty"));
        assert!(err(b"\x89PNG\r\n\x1a\n not video at all").contains("sequence parameter set"));
        let file = encoded_file(2);
        // Only the SPS and PPS survive: no picture.
        let pps_end = crate::h264::nal_units(&file)
            .take(2)
            .map(|n| n.len() + 4)
            .sum::<usize>();
        assert!(err(&file[..pps_end]).contains("IDR"));
        // Corrupt SPS (truncated in the middle).
        assert!(err(&file[..10]).contains("SPS"), "{}", err(&file[..10]));
        assert!(matches!(
            H264FileCamera::open("/nonexistent/file.h264", cfg),
            Err(CaptureError::Io(_))
        ));
    }
}
