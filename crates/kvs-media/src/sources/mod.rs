//! Host media sources: implementations of the `kvs_platform` capture traits.
//!
//! - [`TestPatternCamera`]: a live, moving test pattern (frame counter and wall clock drawn in)
//!   encoded to H.264 Constrained Baseline with OpenH264.
//! - [`ToneMicrophone`]: a 440 Hz tone with a beep each second, encoded to Opus (pure Rust).
//! - [`H264FileCamera`] and [`OggOpusMicrophone`]: files, looped and paced.
//! - [`StdinH264Camera`]: an Annex-B H.264 stream from a pipe (or any `Read`), unpaced.
//! - [`Vp8FileCamera`] / [`StdinVp8Camera`]: VP8 in IVF, from a file (looped, paced by its
//!   own timestamps) or a pipe; [`H265FileCamera`] / [`StdinH265Camera`]: Annex-B H.265, as
//!   the H.264 ones.
//! - [`RawCommandCamera`] and [`RawCommandMicrophone`]: raw I420 pictures / S16LE PCM from a
//!   shell command's output (any camera or microphone the host has), encoded live like the
//!   test pattern and the tone; the command is watched for exits and stalls and optionally
//!   restarted ([`CommandOptions`]).
//!
//! The live encoders (OpenH264, Opus/G.711) are shared by the drawing and raw sources
//! (`h264_encoder`, `audio_encoder`).
//!
//! Every source's `next_frame` blocks until its frame is due ([`crate::pacer`] decides when),
//! except the pipe camera, which emits frames as they arrive. Sources own their encoders and
//! buffers; they must not know who consumes the frames (that is [`crate::fanout`]'s job).
//! Bad files are rejected at open time with [`CaptureError::InvalidInput`], not by panicking.

mod audio_encoder;
mod command;
mod font;
mod h264_encoder;
mod h264_file;
mod h265;
mod ogg_file;
mod pipe;
mod raw_camera;
mod raw_microphone;
mod test_pattern;
mod tone;
mod vp8;

pub use command::{CommandOptions, RawCommandError, RestartPolicy, STDERR_TAIL_BYTES};
pub use h264_file::{H264FileCamera, H264FileConfig};
pub use h265::{H265FileCamera, H265FileConfig, StdinH265Camera, StdinH265Config};
pub use ogg_file::{OggOpusFileConfig, OggOpusMicrophone};
pub use pipe::{StdinH264Camera, StdinH264Config};
pub use raw_camera::{RawCommandCamera, RawVideoConfig};
pub use raw_microphone::{PcmConverter, RawAudioConfig, RawCommandMicrophone};
pub(crate) use test_pattern::{check_size, Overlay, Picture};
pub use test_pattern::{TestPatternCamera, TestPatternConfig};
pub use tone::{ToneConfig, ToneMicrophone, ALL_TONE_CODECS};
pub use vp8::{StdinVp8Camera, StdinVp8Config, Vp8FileCamera, Vp8FileConfig};

use kvs_platform::CaptureError;
use std::time::Instant;

/// Default bound on the size of a media file a file source loads into memory: 256 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The timestamp of a frame whose nominal time is `nominal` µs: with `paced`, the pacer's,
/// returned once the frame is due (the capture thread sleeps until then); else `nominal`.
fn paced_timestamp(pacer: &mut crate::pacer::Pacer, paced: bool, nominal: u64) -> u64 {
    if !paced {
        return nominal;
    }
    let p = pacer.pace(nominal, Instant::now());
    sleep_until(p.due);
    p.output_ts_us
}

/// Block the calling (capture) thread until `due`.
fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Block the calling (capture) thread until `due`, or until `early` is set (whoever sets it
/// unparks this thread, see [`kvs_platform::VideoCapture::keyframe_trigger`]).
fn sleep_until_or(due: Instant, early: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    loop {
        let now = Instant::now();
        if now >= due || early.load(Ordering::Relaxed) {
            return;
        }
        std::thread::park_timeout(due - now);
    }
}

/// Read a whole file, refusing ones larger than `max` bytes.
fn read_bounded(path: &std::path::Path, max: u64) -> Result<bytes::Bytes, CaptureError> {
    let len = std::fs::metadata(path)?.len();
    if len > max {
        return Err(CaptureError::InvalidInput(format!(
            "{}: file is {len} bytes, more than the {max}-byte limit",
            path.display()
        )));
    }
    Ok(std::fs::read(path)?.into())
}

/// Read `path` (at most `max` bytes) and validate it with `parse`; an invalid file's error
/// names the file.
fn open_file<T>(
    path: &std::path::Path,
    max: u64,
    parse: impl FnOnce(bytes::Bytes) -> Result<T, CaptureError>,
) -> Result<T, CaptureError> {
    parse(read_bounded(path, max)?).map_err(|e| match e {
        CaptureError::InvalidInput(m) => {
            CaptureError::InvalidInput(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

/// A file's access units played in a loop at a fixed rate (the H.264 and H.265 file cameras):
/// frame `n` is stamped `n / fps`, so timestamps keep rising across loops, and with `paced`
/// each frame is returned when it is due.
#[derive(Debug)]
struct LoopedFrames {
    frames: Vec<(bytes::Bytes, kvs_platform::FrameKind)>,
    next: usize,
    /// Frames emitted so far.
    emitted: u64,
    fps: u32,
    paced: bool,
    pacer: crate::pacer::Pacer,
}

impl LoopedFrames {
    /// `frames` must not be empty, `fps` not 0 (the cameras check both at open).
    fn new(frames: Vec<(bytes::Bytes, kvs_platform::FrameKind)>, fps: u32, paced: bool) -> Self {
        use crate::pacer::{LatePolicy, Pacer, PacerConfig};
        Self {
            frames,
            next: 0,
            emitted: 0,
            fps,
            paced,
            pacer: Pacer::new(PacerConfig {
                late_policy: LatePolicy::Reanchor,
                default_frame_interval_us: 1_000_000 / u64::from(fps.max(1)),
                ..PacerConfig::default()
            }),
        }
    }

    fn len(&self) -> usize {
        self.frames.len()
    }

    /// Start again at the first frame (a keyframe: new viewers can decode at once).
    fn restart(&mut self) {
        self.pacer.reset();
        self.next = 0;
    }

    fn stop(&mut self) {
        self.pacer.reset();
    }

    fn next_frame(&mut self) -> kvs_platform::EncodedFrame {
        let (data, kind) = self.frames[self.next].clone();
        self.next = (self.next + 1) % self.frames.len();
        let nominal = self.emitted * 1_000_000 / u64::from(self.fps.max(1));
        self.emitted += 1;
        let ts = paced_timestamp(&mut self.pacer, self.paced, nominal);
        kvs_platform::EncodedFrame::new(data, ts, kind)
    }
}
