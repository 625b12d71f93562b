//! The pipe camera: Annex-B H.264 read from stdin (or any `Read`), split into access units as
//! bytes arrive — e.g. `ffmpeg ... -f h264 - | kvs-webrtc --video-stdin`.
//!
//! Not paced: the producer is live, so frames are emitted as soon as they are complete.
//! Timestamps are, by default, the *arrival time* (µs since the first frame arrived): a live
//! producer's output rate is the truth, and a fixed rate would drift against its clock. Set
//! [`StdinH264Config::fps`] for producers that write faster than real time (a file piped in
//! with `cat`) — then frame `n` gets `n / fps` — but pacing such input is the producer's job.

use crate::annexb::{AccessUnit, AccessUnitAssembler, AccessUnitRules};
use crate::h264::{find_sps, AccessUnitInfo, DEFAULT_MAX_ACCESS_UNIT_BYTES};
use kvs_platform::{CaptureError, EncodedFrame, VideoCapture, VideoCodec, VideoFormat};
use std::io::{ErrorKind, Read};
use std::time::Instant;

/// Settings of a [`StdinH264Camera`] (and of `StdinH265Camera`, whose `StdinH265Config` is this type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdinH264Config {
    /// `None`: timestamps from arrival time. `Some(fps)`: frame `n` is stamped `n / fps`.
    pub fps: Option<u32>,
    /// Largest access unit accepted (larger ones are dropped with an error).
    pub max_access_unit_bytes: usize,
    /// Bytes asked of the reader per `read` call.
    pub read_chunk_bytes: usize,
}

impl Default for StdinH264Config {
    fn default() -> Self {
        Self {
            fps: None,
            max_access_unit_bytes: DEFAULT_MAX_ACCESS_UNIT_BYTES,
            read_chunk_bytes: 64 * 1024,
        }
    }
}

/// Annex-B read from a pipe and cut into access units as bytes arrive, each stamped by the
/// pipe cameras' timestamp policy (see the [module docs](self)); the H.264 and H.265 pipe
/// cameras are this with their codec's boundary rules.
#[derive(Debug)]
pub(super) struct AnnexBPipe<R, U: AccessUnitRules> {
    reader: R,
    assembler: AccessUnitAssembler<U>,
    chunk: Vec<u8>,
    eof: bool,
    /// `None`: timestamps from arrival time. `Some(fps)`: frame `n` is stamped `n / fps`.
    fps: Option<u32>,
    first_arrival: Option<Instant>,
    frames: u64,
}

impl<R: Read, U: AccessUnitRules> AnnexBPipe<R, U>
where
    U::Error: std::fmt::Display,
{
    pub(super) fn new(
        reader: R,
        fps: Option<u32>,
        max_access_unit_bytes: usize,
        read_chunk_bytes: usize,
    ) -> Self {
        Self {
            reader,
            assembler: AccessUnitAssembler::new(max_access_unit_bytes),
            chunk: vec![0; read_chunk_bytes.clamp(1, 1 << 20)],
            eof: false,
            fps,
            first_arrival: None,
            frames: 0,
        }
    }

    /// Blocks until a complete access unit has arrived and returns it with its timestamp;
    /// `Ok(None)` once the pipe is closed and everything was delivered. An oversized access
    /// unit gives `InvalidInput` once; the stream continues after it.
    pub(super) fn next_unit(&mut self) -> Result<Option<(AccessUnit<U>, u64)>, CaptureError> {
        loop {
            if let Some(au) = self.assembler.pop() {
                let ts = match self.fps {
                    Some(fps) => self.frames * 1_000_000 / u64::from(fps.max(1)),
                    None => {
                        let first = *self.first_arrival.get_or_insert_with(Instant::now);
                        first.elapsed().as_micros() as u64
                    }
                };
                self.frames += 1;
                return Ok(Some((au, ts)));
            }
            if self.eof {
                return Ok(None);
            }
            let n = match self.reader.read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                self.eof = true;
                self.assembler.finish();
                continue;
            }
            self.assembler
                .push(&self.chunk[..n])
                .map_err(|e| CaptureError::InvalidInput(format!("{} from pipe: {e}", U::CODEC)))?;
        }
    }
}

/// An H.264 camera reading Annex-B from a pipe. See the [module docs](self).
#[derive(Debug)]
pub struct StdinH264Camera<R: Read + Send = std::io::Stdin> {
    pipe: AnnexBPipe<R, AccessUnitInfo>,
    config: StdinH264Config,
    width: u32,
    height: u32,
}

impl StdinH264Camera<std::io::Stdin> {
    /// Read from the process's standard input.
    pub fn stdin(config: StdinH264Config) -> Self {
        Self::new(std::io::stdin(), config)
    }
}

impl<R: Read + Send> StdinH264Camera<R> {
    /// Read from `reader`.
    pub fn new(reader: R, config: StdinH264Config) -> Self {
        Self {
            pipe: AnnexBPipe::new(
                reader,
                config.fps,
                config.max_access_unit_bytes,
                config.read_chunk_bytes,
            ),
            config,
            width: 0,
            height: 0,
        }
    }

    fn emit(&mut self, au: crate::h264::AccessUnit, ts: u64) -> EncodedFrame {
        if au.info.has_sps {
            match find_sps(&au.data) {
                Some(Ok(sps)) => {
                    if (sps.width, sps.height) != (self.width, self.height) {
                        tracing::info!(width = sps.width, height = sps.height, "pipe H.264 size");
                    }
                    self.width = sps.width;
                    self.height = sps.height;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "unparsable SPS from pipe"),
                None => {}
            }
        }
        let kind = au.kind();
        EncodedFrame::new(au.data, ts, kind)
    }
}

impl<R: Read + Send> VideoCapture for StdinH264Camera<R> {
    /// Width and height are 0 until the first SPS has arrived.
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::H264,
            width: self.width,
            height: self.height,
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
        Ok(self.pipe.next_unit()?.map(|(au, ts)| self.emit(au, ts)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sources::h264_file::tests::encoded_file;

    /// A reader that hands out at most `step` bytes per call (the pipe cameras' tests).
    pub(in crate::sources) struct Trickle<'a> {
        pub data: &'a [u8],
        pub step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn assembles_frames_from_trickling_pipe_until_eof() {
        let file = encoded_file(8);
        for step in [1, 7, 1000, 1 << 20] {
            let mut cam = StdinH264Camera::new(
                Trickle { data: &file, step },
                StdinH264Config {
                    fps: Some(30),
                    ..Default::default()
                },
            );
            assert_eq!(cam.format().width, 0, "unknown before the first SPS");
            let mut joined = Vec::new();
            let mut n = 0u64;
            while let Some(f) = cam.next_frame().unwrap() {
                assert_eq!(f.is_key(), n == 0);
                assert_eq!(f.timestamp_us, n * 1_000_000 / 30);
                joined.extend_from_slice(&f.data);
                n += 1;
            }
            assert_eq!(n, 8, "step {step}");
            assert_eq!(joined, file);
            assert_eq!((cam.format().width, cam.format().height), (160, 120));
            assert!(cam.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn arrival_timestamps_rise_and_garbage_gives_nothing() {
        let file = encoded_file(3);
        let mut cam = StdinH264Camera::new(&file[..], StdinH264Config::default());
        let a = cam.next_frame().unwrap().unwrap().timestamp_us;
        let b = cam.next_frame().unwrap().unwrap().timestamp_us;
        assert_eq!(a, 0);
        assert!(b >= a);
        let junk = vec![0x5a; 10_000];
        let mut cam = StdinH264Camera::new(&junk[..], StdinH264Config::default());
        assert!(cam.next_frame().unwrap().is_none());
    }

    #[test]
    fn oversized_access_unit_is_an_error_then_stream_continues() {
        let mut data = vec![0, 0, 0, 1, 0x65, 0x88];
        data.extend(std::iter::repeat_n(0x42, 100_000));
        data.extend_from_slice(&encoded_file(2));
        let mut cam = StdinH264Camera::new(
            &data[..],
            StdinH264Config {
                max_access_unit_bytes: 50_000,
                read_chunk_bytes: 4096,
                ..Default::default()
            },
        );
        assert!(matches!(
            cam.next_frame(),
            Err(CaptureError::InvalidInput(_))
        ));
        let mut frames = 0;
        loop {
            match cam.next_frame() {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(CaptureError::InvalidInput(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(frames, 2);
    }
}
