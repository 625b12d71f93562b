//! H.265 cameras from Annex-B: a file looped at a configured frame rate ([`H265FileCamera`]),
//! and a pipe read as access units complete ([`StdinH265Camera`], e.g.
//! `ffmpeg … -c:v libx265 -x265-params repeat-headers=1 -f hevc - | kvs-webrtc --h265-stdin`).
//!
//! The counterparts of the H.264 file and pipe cameras, on the shared assembler
//! ([`crate::annexb`]) with H.265's boundary rules; same pacing and timestamp policy (Annex-B
//! carries no timestamps). The picture size is not parsed (0 in [`VideoFormat`]): nothing on
//! the device needs it, and the receiver reads it from the SPS.

use crate::h265::{AccessUnitAssembler, AccessUnitInfo, DEFAULT_MAX_ACCESS_UNIT_BYTES};
use bytes::Bytes;
use kvs_platform::{CaptureError, EncodedFrame, FrameKind, VideoCapture, VideoCodec, VideoFormat};
use std::io::Read;
use std::path::Path;

/// Settings of an [`H265FileCamera`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H265FileConfig {
    /// Playback rate, 1..=240.
    pub fps: u32,
    /// Largest file accepted.
    pub max_file_bytes: u64,
    /// Largest access unit accepted.
    pub max_access_unit_bytes: usize,
    /// Block until each frame is due (false: as fast as asked, same timestamps).
    pub paced: bool,
}

impl Default for H265FileConfig {
    fn default() -> Self {
        Self {
            fps: 30,
            max_file_bytes: super::DEFAULT_MAX_FILE_BYTES,
            max_access_unit_bytes: DEFAULT_MAX_ACCESS_UNIT_BYTES,
            paced: true,
        }
    }
}

/// A looping H.265 file. Access units are slices of the file's bytes; those before the first
/// keyframe (an IRAP picture with its VPS, SPS and PPS) are dropped at open, so every loop
/// starts where a decoder can.
#[derive(Debug)]
pub struct H265FileCamera {
    config: H265FileConfig,
    frames: super::LoopedFrames,
}

impl H265FileCamera {
    /// Open and validate `path`.
    pub fn open(path: impl AsRef<Path>, config: H265FileConfig) -> Result<Self, CaptureError> {
        let max = config.max_file_bytes;
        super::open_file(path.as_ref(), max, |data| Self::from_bytes(data, config))
    }

    /// Validate an in-memory Annex-B H.265 stream: it must hold a VPS, SPS and PPS and an IRAP
    /// picture with them.
    pub fn from_bytes(data: Bytes, config: H265FileConfig) -> Result<Self, CaptureError> {
        let invalid = |m: String| CaptureError::InvalidInput(m);
        if !(1..=240).contains(&config.fps) {
            return Err(invalid(format!("fps {} out of range 1..=240", config.fps)));
        }
        if data.is_empty() {
            return Err(invalid("empty H.265 file".into()));
        }
        let info = AccessUnitInfo::scan(&data);
        if !info.has_parameter_sets() {
            return Err(invalid(
                "no H.265 VPS/SPS/PPS found (not an Annex-B H.265 file?)".into(),
            ));
        }
        if !info.has_irap {
            return Err(invalid("no H.265 IRAP (key) picture found".into()));
        }
        let mut asm = AccessUnitAssembler::new(config.max_access_unit_bytes);
        asm.push(&data)
            .map_err(|e| invalid(format!("not a usable H.265 stream: {e}")))?;
        asm.finish();
        let mut frames = Vec::new();
        while let Some(au) = asm.pop() {
            if frames.is_empty() && au.kind() != FrameKind::Key {
                continue; // undecodable lead-in
            }
            frames.push((au.data.clone(), au.kind()));
        }
        if frames.is_empty() {
            return Err(invalid(
                "no H.265 IRAP picture carrying its VPS/SPS/PPS found".into(),
            ));
        }
        tracing::info!(frames = frames.len(), fps = config.fps, "H.265 file loaded");
        Ok(Self {
            frames: super::LoopedFrames::new(frames, config.fps, config.paced),
            config,
        })
    }

    /// Frames in one loop of the file.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl VideoCapture for H265FileCamera {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::H265,
            width: 0,
            height: 0,
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

/// Settings of a [`StdinH265Camera`]: the same as the H.264 pipe camera's.
pub type StdinH265Config = super::pipe::StdinH264Config;

/// An H.265 camera reading Annex-B from a pipe; not paced (see [`crate::sources::StdinH264Camera`]
/// for the timestamp policy, which is the same).
#[derive(Debug)]
pub struct StdinH265Camera<R: Read + Send = std::io::Stdin> {
    pipe: super::pipe::AnnexBPipe<R, AccessUnitInfo>,
    config: StdinH265Config,
}

impl StdinH265Camera<std::io::Stdin> {
    /// Read from the process's standard input.
    pub fn stdin(config: StdinH265Config) -> Self {
        Self::new(std::io::stdin(), config)
    }
}

impl<R: Read + Send> StdinH265Camera<R> {
    /// Read from `reader`.
    pub fn new(reader: R, config: StdinH265Config) -> Self {
        Self {
            pipe: super::pipe::AnnexBPipe::new(
                reader,
                config.fps,
                config.max_access_unit_bytes,
                config.read_chunk_bytes,
            ),
            config,
        }
    }
}

impl<R: Read + Send> VideoCapture for StdinH265Camera<R> {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::H265,
            width: 0,
            height: 0,
            fps: self.config.fps.unwrap_or(0),
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }

    fn stop(&mut self) {}

    /// Blocks until a complete access unit has arrived; `Ok(None)` once the pipe is closed and
    /// everything was delivered. An oversized access unit gives `InvalidInput` once; the
    /// stream continues after it.
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        Ok(self.pipe.next_unit()?.map(|(au, ts)| {
            let kind = au.kind();
            EncodedFrame::new(au.data, ts, kind)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h264::testutil::annexb;
    use crate::h265::testutil::nal;

    /// A lead-in delta picture, then 2 × (key + 4 deltas).
    fn stream() -> (Vec<Vec<u8>>, Vec<u8>) {
        let (vps, sps, pps) = (
            nal(32, false, 20, 1),
            nal(33, false, 40, 2),
            nal(34, false, 6, 3),
        );
        let mut aus = vec![annexb(&[&nal(1, true, 300, 0)])];
        for g in 0..2u8 {
            aus.push(annexb(&[&vps, &sps, &pps, &nal(19, true, 3000, g)]));
            for i in 0..4u8 {
                aus.push(annexb(&[&nal(1, true, 200 + usize::from(i), i + g)]));
            }
        }
        let all = aus.concat();
        (aus, all)
    }

    #[test]
    fn file_loops_from_the_first_keyframe() {
        let (aus, all) = stream();
        let mut cam = H265FileCamera::from_bytes(
            all.into(),
            H265FileConfig {
                fps: 25,
                paced: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cam.frame_count(), 10);
        assert_eq!(cam.format().codec, VideoCodec::H265);
        for i in 0..25u64 {
            let f = cam.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 40_000);
            assert_eq!(f.is_key(), i.is_multiple_of(5), "frame {i}");
            assert_eq!(&f.data[..], &aus[1 + (i % 10) as usize][..]);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let cfg = H265FileConfig::default();
        let err = |d: Vec<u8>| {
            H265FileCamera::from_bytes(d.into(), cfg)
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![]).contains("empty"));
        assert!(err(b"\x89PNG\r\n\x1a\n".to_vec()).contains("VPS"));
        let (vps, sps, pps) = (
            nal(32, false, 2, 1),
            nal(33, false, 4, 2),
            nal(34, false, 6, 3),
        );
        assert!(err(annexb(&[&vps, &sps, &pps, &nal(1, true, 9, 0)])).contains("IRAP"));
        // An IRAP whose parameter sets come only after it: nothing to start from.
        assert!(err(annexb(&[&nal(19, true, 9, 0), &vps, &sps, &pps])).contains("carrying"));
        assert!(matches!(
            H265FileCamera::open("/nonexistent/a.h265", cfg),
            Err(CaptureError::Io(_))
        ));
    }

    #[test]
    fn pipe_assembles_access_units_until_eof() {
        let (aus, all) = stream();
        let mut cam = StdinH265Camera::new(
            &all[..],
            StdinH265Config {
                fps: Some(10),
                read_chunk_bytes: 7,
                ..Default::default()
            },
        );
        let mut got = Vec::new();
        while let Some(f) = cam.next_frame().unwrap() {
            assert_eq!(f.timestamp_us, got.len() as u64 * 100_000);
            got.push(f.data.to_vec());
        }
        assert_eq!(got, aus);
        let junk = vec![0x5a; 1000];
        assert!(StdinH265Camera::new(&junk[..], Default::default())
            .next_frame()
            .unwrap()
            .is_none());
    }
}
