//! VP8 cameras from IVF: a file looped and paced by its own timestamps ([`Vp8FileCamera`]),
//! and a pipe read as frames arrive ([`StdinVp8Camera`], e.g.
//! `ffmpeg … -c:v libvpx -f ivf - | kvs-webrtc --vp8-stdin`).
//!
//! IVF carries a timebase and a pts per frame, so unlike Annex-B no frame rate is configured:
//! the file plays at the rate it was written, and a pipe's frames keep the producer's
//! timestamps. Frames are slices of the file's bytes (no copies); a pipe's frames are read
//! into one buffer each, never larger than the frame bound.

use crate::ivf::{FrameHeader, IvfFile, IvfHeader, DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_LEN};
use crate::pacer::{LatePolicy, Pacer, PacerConfig};
use crate::vp8::FrameTag;
use bytes::Bytes;
use kvs_platform::{CaptureError, EncodedFrame, FrameKind, VideoCapture, VideoCodec, VideoFormat};
use std::io::{ErrorKind, Read};
use std::path::Path;

/// Used when a file has a single frame (no interval to measure): 30 fps.
const FALLBACK_INTERVAL_US: u64 = 33_333;

fn check_fourcc(header: &IvfHeader) -> Result<(), CaptureError> {
    if &header.fourcc != b"VP80" {
        return Err(CaptureError::InvalidInput(format!(
            "IVF FourCC {:?} is not VP8 (VP80)",
            header.fourcc_str()
        )));
    }
    Ok(())
}

/// Settings of a [`Vp8FileCamera`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8FileConfig {
    /// Largest file accepted.
    pub max_file_bytes: u64,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Block until each frame is due (false: as fast as asked, same timestamps).
    pub paced: bool,
}

impl Default for Vp8FileConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: super::DEFAULT_MAX_FILE_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            paced: true,
        }
    }
}

/// A looping VP8 IVF file. Frames before the first keyframe are dropped at open, so every
/// loop starts with a keyframe; timestamps are the file's, offset by one loop's length per
/// loop, so they keep rising.
#[derive(Debug)]
pub struct Vp8FileCamera {
    config: Vp8FileConfig,
    /// Each frame, its time since the first frame (µs) and kind.
    frames: Vec<(Bytes, u64, FrameKind)>,
    /// One loop's duration: the last frame's time plus one mean frame interval.
    loop_us: u64,
    width: u32,
    height: u32,
    fps: u32,
    next: usize,
    loops: u64,
    pacer: Pacer,
}

impl Vp8FileCamera {
    /// Open and validate `path`.
    pub fn open(path: impl AsRef<Path>, config: Vp8FileConfig) -> Result<Self, CaptureError> {
        let max = config.max_file_bytes;
        super::open_file(path.as_ref(), max, |data| Self::from_bytes(data, config))
    }

    /// Validate an in-memory IVF file: VP8, every frame whole, at least one keyframe.
    pub fn from_bytes(data: Bytes, config: Vp8FileConfig) -> Result<Self, CaptureError> {
        let invalid = |m: String| CaptureError::InvalidInput(m);
        let file =
            IvfFile::parse(&data, config.max_frame_bytes).map_err(|e| invalid(e.to_string()))?;
        check_fourcc(&file.header)?;
        let mut frames = Vec::new();
        let mut first_pts: Option<u64> = None;
        let mut size = None;
        let mut last_us = 0;
        let mut last_rel_pts = 0u64;
        for frame in file.frames() {
            let frame = frame.map_err(|e| invalid(e.to_string()))?;
            let tag = FrameTag::parse(frame.data);
            let kind = match &tag {
                Ok(t) if t.key => FrameKind::Key,
                _ => FrameKind::Delta,
            };
            if frames.is_empty() && kind != FrameKind::Key {
                continue; // undecodable lead-in
            }
            if let Ok(FrameTag {
                size: Some(s @ (w, h)),
                ..
            }) = tag
            {
                if size.is_none() {
                    size = Some(s);
                } else if size != Some(s) {
                    tracing::info!(width = w, height = h, "VP8 file changes size mid-stream");
                }
            }
            let base = *first_pts.get_or_insert(frame.pts);
            // Timestamps never go back (a file could say anything).
            last_rel_pts = last_rel_pts.max(frame.pts.saturating_sub(base));
            let us = file.header.pts_to_us(last_rel_pts).max(last_us);
            last_us = us;
            let bytes = data.slice(frame.offset..frame.offset + frame.data.len());
            frames.push((bytes, us, kind));
        }
        let Some((width, height)) = size else {
            return Err(invalid("no VP8 keyframe found".into()));
        };
        // n frames spread evenly over [0, last] last n/(n-1) × last in all (computed in pts
        // units, so a 1/15 timebase loops at exactly 3 s, not 2.999999).
        let loop_us = match frames.len() as u64 {
            0 | 1 => FALLBACK_INTERVAL_US,
            n => (file.header.pts_to_us(last_rel_pts.saturating_mul(n)) / (n - 1)).max(n),
        };
        let interval = (loop_us / (frames.len() as u64).max(1)).max(1);
        let fps = (1_000_000 / interval).clamp(1, 240) as u32;
        tracing::info!(
            frames = frames.len(),
            width,
            height,
            fps,
            "VP8 IVF file loaded"
        );
        Ok(Self {
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Reanchor,
                default_frame_interval_us: interval,
                ..PacerConfig::default()
            }),
            config,
            frames,
            loop_us: loop_us.max(last_us + 1),
            width: u32::from(width),
            height: u32::from(height),
            fps,
            next: 0,
            loops: 0,
        })
    }

    /// Frames in one loop of the file.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl VideoCapture for Vp8FileCamera {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::Vp8,
            width: self.width,
            height: self.height,
            fps: self.fps,
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.pacer.reset();
        self.next = 0;
        Ok(())
    }

    fn stop(&mut self) {
        self.pacer.reset();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        let (data, us, kind) = self.frames[self.next].clone();
        let nominal = self.loops.saturating_mul(self.loop_us).saturating_add(us);
        self.next += 1;
        if self.next == self.frames.len() {
            self.next = 0;
            self.loops += 1;
        }
        let ts = super::paced_timestamp(&mut self.pacer, self.config.paced, nominal);
        Ok(Some(EncodedFrame::new(data, ts, kind)))
    }
}

/// Settings of a [`StdinVp8Camera`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdinVp8Config {
    /// Largest frame accepted; a larger one ends the stream with an error (IVF has no way to
    /// resynchronise past it).
    pub max_frame_bytes: usize,
}

impl Default for StdinVp8Config {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// A VP8 camera reading IVF from a pipe; see the [module docs](self). Not paced: frames are
/// emitted as they arrive, stamped with their IVF pts (since the first frame's).
#[derive(Debug)]
pub struct StdinVp8Camera<R: Read + Send = std::io::Stdin> {
    reader: R,
    config: StdinVp8Config,
    header: Option<IvfHeader>,
    first_pts: Option<u64>,
    frames: u64,
    width: u32,
    height: u32,
    done: bool,
}

impl StdinVp8Camera<std::io::Stdin> {
    /// Read from the process's standard input.
    pub fn stdin(config: StdinVp8Config) -> Self {
        Self::new(std::io::stdin(), config)
    }
}

impl<R: Read + Send> StdinVp8Camera<R> {
    /// Read from `reader`.
    pub fn new(reader: R, config: StdinVp8Config) -> Self {
        Self {
            reader,
            config,
            header: None,
            first_pts: None,
            frames: 0,
            width: 0,
            height: 0,
            done: false,
        }
    }

    /// Fill `buf`; `Ok(false)` on a clean end of stream before its first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool, CaptureError> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(CaptureError::InvalidInput(format!(
                        "VP8 IVF from pipe: stream ended inside a header or frame (frame {})",
                        self.frames
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn read_header(&mut self) -> Result<Option<IvfHeader>, CaptureError> {
        let mut h = [0u8; crate::ivf::FILE_HEADER_LEN];
        if !self.read_full(&mut h)? {
            return Ok(None);
        }
        let header = IvfHeader::parse(&h)
            .map_err(|e| CaptureError::InvalidInput(format!("VP8 IVF from pipe: {e}")))?;
        check_fourcc(&header)?;
        // Skip the rest of a longer header (bounded by the parser).
        let mut rest = vec![0u8; header.header_len - crate::ivf::FILE_HEADER_LEN];
        if !self.read_full(&mut rest)? && !rest.is_empty() {
            return Ok(None);
        }
        Ok(Some(header))
    }
}

impl<R: Read + Send> VideoCapture for StdinVp8Camera<R> {
    /// Width and height are 0 until the first keyframe has arrived.
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::Vp8,
            width: self.width,
            height: self.height,
            fps: 0,
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }

    fn stop(&mut self) {}

    /// Blocks until a whole frame has arrived; `Ok(None)` once the pipe is closed at a frame
    /// boundary. Malformed input (not IVF, not VP8, an oversized or truncated frame) is an
    /// `InvalidInput` error and ends the stream.
    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_frame();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }
}

impl<R: Read + Send> StdinVp8Camera<R> {
    fn read_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        let header = match self.header {
            Some(h) => h,
            None => match self.read_header()? {
                Some(h) => *self.header.insert(h),
                None => return Ok(None),
            },
        };
        let mut fh = [0u8; FRAME_HEADER_LEN];
        if !self.read_full(&mut fh)? {
            return Ok(None);
        }
        let fh = FrameHeader::parse(&fh, self.frames, self.config.max_frame_bytes)
            .map_err(|e| CaptureError::InvalidInput(format!("VP8 IVF from pipe: {e}")))?;
        let mut data = vec![0u8; fh.size];
        if !self.read_full(&mut data)? && fh.size > 0 {
            return Err(CaptureError::InvalidInput(format!(
                "VP8 IVF from pipe: stream ended before frame {}",
                self.frames
            )));
        }
        let kind = match FrameTag::parse(&data) {
            Ok(FrameTag {
                key: true,
                size: Some((w, h)),
                ..
            }) => {
                if (u32::from(w), u32::from(h)) != (self.width, self.height) {
                    tracing::info!(width = w, height = h, "pipe VP8 size");
                    self.width = u32::from(w);
                    self.height = u32::from(h);
                }
                FrameKind::Key
            }
            _ => FrameKind::Delta,
        };
        let base = *self.first_pts.get_or_insert(fh.pts);
        let ts = header.pts_to_us(fh.pts.saturating_sub(base));
        self.frames += 1;
        Ok(Some(EncodedFrame::new(data, ts, kind)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivf::testutil::ivf;
    use crate::sources::pipe::tests::Trickle;
    use crate::vp8::testutil::frame;

    /// 3 s at 15 fps (timebase 1/15): a keyframe every 15 frames, preceded by two delta
    /// frames of lead-in.
    fn file() -> Vec<u8> {
        let mut frames = vec![
            (0, frame(false, 0, 0, 40, 1)),
            (1, frame(false, 0, 0, 40, 2)),
        ];
        for i in 0..45u64 {
            frames.push((
                i + 2,
                frame(i.is_multiple_of(15), 352, 288, 100 + i as usize, i as u8),
            ));
        }
        ivf(b"VP80", 352, 288, 1, 15, &frames)
    }

    #[test]
    fn file_loops_from_its_first_keyframe_with_its_own_timing() {
        let mut cam = Vp8FileCamera::from_bytes(
            file().into(),
            Vp8FileConfig {
                paced: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cam.frame_count(), 45);
        let f = cam.format();
        assert_eq!(
            (f.codec, f.width, f.height, f.fps),
            (VideoCodec::Vp8, 352, 288, 15)
        );
        for i in 0..100u64 {
            let fr = cam.next_frame().unwrap().unwrap();
            assert_eq!(fr.timestamp_us, i * 1_000_000 / 15, "frame {i}");
            assert_eq!(fr.is_key(), i.is_multiple_of(15), "frame {i}");
            let header = if fr.is_key() { 10 } else { 3 };
            assert_eq!(fr.data.len(), header + 100 + (i % 45) as usize);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let cfg = Vp8FileConfig::default();
        let err = |d: Vec<u8>| {
            Vp8FileCamera::from_bytes(d.into(), cfg)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"RIFF....WEBPVP8 ".repeat(3)).contains("DKIF"));
        assert!(err(ivf(b"AV01", 1, 1, 1, 30, &[(0, vec![1])])).contains("not VP8"));
        assert!(
            err(ivf(b"VP80", 1, 1, 1, 30, &[(0, frame(false, 0, 0, 9, 0))])).contains("keyframe")
        );
        let mut cut = file();
        cut.truncate(cut.len() - 3);
        assert!(err(cut).contains("truncated"));
        assert!(matches!(
            Vp8FileCamera::open("/nonexistent/a.ivf", cfg),
            Err(CaptureError::Io(_))
        ));
    }

    #[test]
    fn pipe_yields_every_frame_with_ivf_timestamps() {
        let data = file();
        for step in [1, 5, 4096] {
            let mut cam = StdinVp8Camera::new(Trickle { data: &data, step }, Default::default());
            let mut n = 0u64;
            while let Some(f) = cam.next_frame().unwrap() {
                assert_eq!(f.timestamp_us, n * 1_000_000 / 15);
                assert_eq!(f.is_key(), n >= 2 && (n - 2).is_multiple_of(15));
                n += 1;
            }
            assert_eq!(n, 47, "step {step}");
            assert_eq!((cam.format().width, cam.format().height), (352, 288));
        }
    }

    #[test]
    fn pipe_errors_on_bad_or_oversized_input_and_then_stops() {
        let mut cam = StdinVp8Camera::new(
            &b"not an ivf stream at all, really no"[..],
            Default::default(),
        );
        assert!(matches!(
            cam.next_frame(),
            Err(CaptureError::InvalidInput(_))
        ));
        assert!(cam.next_frame().unwrap().is_none());
        let data = file();
        let mut cam = StdinVp8Camera::new(
            &data[..],
            StdinVp8Config {
                max_frame_bytes: 100,
            },
        );
        cam.next_frame().unwrap().unwrap();
        cam.next_frame().unwrap().unwrap();
        let e = cam.next_frame().unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        let mut cam = StdinVp8Camera::new(&data[..100], Default::default());
        cam.next_frame().unwrap().unwrap();
        assert!(cam.next_frame().unwrap_err().to_string().contains("ended"));
        let empty: &[u8] = &[];
        assert!(StdinVp8Camera::new(empty, Default::default())
            .next_frame()
            .unwrap()
            .is_none());
    }
}
