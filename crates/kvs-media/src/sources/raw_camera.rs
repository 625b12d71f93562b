//! The raw-capture camera: I420 pictures of exactly `width * height * 3 / 2` bytes read from a
//! command's standard output (any camera a host has, through e.g.
//! `ffmpeg -f v4l2 -i /dev/video0 -f rawvideo -pix_fmt yuv420p -`), encoded in-process with
//! the shared OpenH264 encoder, so keyframes on request and bitrate changes work as with the
//! test pattern.
//!
//! It owns the picture buffer, the pacing at `fps` and the keyframe decision. Pacing: the
//! camera takes one picture per frame slot; reading blocks, so a producer writing faster than
//! real time (an `ffmpeg` without `-re`) is held back by the pipe. A keyframe request (the
//! trigger or [`VideoCapture::request_keyframe`]) applies to the very next picture encoded,
//! and the trigger also ends the wait for the slot (as with the test pattern). The command
//! itself — spawning, stall and exit detection, restarts — is [`super::command`]'s.

use super::command::{CommandOptions, CommandSource};
use super::h264_encoder::{H264EncoderConfig, LiveH264};
use kvs_platform::{CaptureError, EncodedFrame, VideoCapture, VideoFormat};
use openh264::formats::YUVSource;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Settings of a [`RawCommandCamera`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawVideoConfig {
    /// The command, its stall timeout and restart policy.
    pub command: CommandOptions,
    /// The command's picture size: even, 16..=3840 x 16..=2160.
    pub width: u32,
    pub height: u32,
    /// Frames per second the camera takes (1..=120); the command should produce as many.
    pub fps: u32,
    /// Initial target bitrate (bits/s); [`VideoCapture::set_bitrate`] changes it live.
    pub bitrate_bps: u32,
    /// Frames between IDR frames; 0 = only the first frame and requested ones.
    pub keyframe_interval: u32,
    /// Wait for each frame's slot (true for live use; false: as fast as the command writes).
    pub paced: bool,
}

impl RawVideoConfig {
    /// `command` producing `width`x`height` I420 at `fps`; 1 Mbit/s, an IDR every 30 frames.
    pub fn new(command: CommandOptions, width: u32, height: u32, fps: u32) -> Self {
        Self {
            command,
            width,
            height,
            fps,
            bitrate_bps: 1_000_000,
            keyframe_interval: 30,
            paced: true,
        }
    }

    /// Bytes of one I420 picture.
    pub fn picture_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3 / 2
    }
}

/// One I420 picture as read: the Y, U and V planes back to back.
struct RawPicture {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl YUVSource for RawPicture {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }
    fn y(&self) -> &[u8] {
        &self.data[..self.width * self.height]
    }
    fn u(&self) -> &[u8] {
        let y = self.width * self.height;
        &self.data[y..y + y / 4]
    }
    fn v(&self) -> &[u8] {
        let y = self.width * self.height;
        &self.data[y + y / 4..y + y / 2]
    }
}

/// A camera reading raw I420 from a command. See the [module docs](self).
pub struct RawCommandCamera {
    config: RawVideoConfig,
    source: CommandSource,
    live: LiveH264,
    /// The last picture read (`None` before the first).
    picture: Option<RawPicture>,
    /// Pictures taken so far (the next one's index).
    index: u64,
}

impl std::fmt::Debug for RawCommandCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCommandCamera")
            .field("config", &self.config)
            .field("index", &self.index)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RawCommandCamera {
    /// A camera with `config`; fails on an invalid size, rate, bitrate or command. The command
    /// starts with [`VideoCapture::start`].
    pub fn new(config: RawVideoConfig) -> Result<Self, CaptureError> {
        let encoder = H264EncoderConfig {
            width: config.width,
            height: config.height,
            fps: config.fps,
            bitrate_bps: config.bitrate_bps,
            keyframe_interval: config.keyframe_interval,
        };
        Ok(Self {
            live: LiveH264::new(encoder, config.paced, "raw video")?,
            source: CommandSource::new(config.command.clone(), config.picture_bytes(), "picture")?,
            picture: None,
            index: 0,
            config,
        })
    }

    /// Pictures encoded so far.
    pub fn frames_produced(&self) -> u64 {
        self.index
    }

    /// Times the command was restarted after a failure.
    pub fn restarts(&self) -> u64 {
        self.source.restarts()
    }
}

impl VideoCapture for RawCommandCamera {
    fn format(&self) -> VideoFormat {
        self.live.format()
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.live.start();
        self.source.start()
    }

    fn stop(&mut self) {
        self.live.stop();
        self.source.stop();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        loop {
            let ts = self.live.wait_for_slot(self.index);
            let data = self.source.next_chunk()?;
            let picture = self.picture.insert(RawPicture {
                width: self.config.width as usize,
                height: self.config.height as usize,
                data,
            });
            self.index += 1;
            // The keyframe decision is made now, after the read: a request made while the
            // camera waited for the picture applies to this one.
            if let Some(frame) = self.live.encode(&*picture, ts)? {
                return Ok(Some(frame));
            }
        }
    }

    fn request_keyframe(&mut self) -> bool {
        self.live.request_keyframe();
        true
    }

    fn keyframe_trigger(&self) -> Option<Arc<AtomicBool>> {
        Some(self.live.trigger())
    }

    fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), CaptureError> {
        self.live.set_bitrate(bits_per_second)?;
        self.config.bitrate_bps = bits_per_second;
        Ok(())
    }

    fn bitrate(&self) -> Option<u32> {
        Some(self.live.config().bitrate_bps)
    }

    /// The last picture read, as a JPEG.
    fn snapshot_jpeg(&mut self, quality: u8) -> Result<Vec<u8>, CaptureError> {
        let Some(p) = &self.picture else {
            return Err(CaptureError::Unsupported(
                "a snapshot before the first picture",
            ));
        };
        crate::snapshot::encode_i420_jpeg(
            self.config.width,
            self.config.height,
            p.y(),
            p.u(),
            p.v(),
            crate::snapshot::effective_quality(quality),
        )
        .map_err(|e| CaptureError::Codec(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{RawCommandError, RestartPolicy};
    use kvs_platform::FrameKind;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// `ffmpeg` drawing its test source as raw I420 at `w`x`h`, `extra` before the output.
    fn testsrc(w: u32, h: u32, fps: u32, extra: &str) -> String {
        format!(
            "exec ffmpeg -hide_banner -loglevel error -nostdin -f lavfi -i testsrc=size={w}x{h}:rate={fps} {extra} -f rawvideo -pix_fmt yuv420p -"
        )
    }

    fn camera(command: CommandOptions, w: u32, h: u32, paced: bool) -> RawCommandCamera {
        let mut config = RawVideoConfig::new(command, w, h, 15);
        config.paced = paced;
        config.keyframe_interval = 0; // only the first frame and requested ones
        let mut cam = RawCommandCamera::new(config).unwrap();
        cam.start().unwrap();
        cam
    }

    fn command_error(e: CaptureError) -> RawCommandError {
        let CaptureError::Io(io) = e else {
            panic!("not an I/O error: {e}")
        };
        *io.into_inner()
            .expect("an inner error")
            .downcast::<RawCommandError>()
            .expect("a RawCommandError")
    }

    #[test]
    fn ffmpeg_pictures_are_encoded_and_a_request_makes_the_next_frame_key() {
        let mut cam = camera(
            CommandOptions::new(testsrc(160, 120, 15, "")),
            160,
            120,
            false,
        );
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut kinds = Vec::new();
        for i in 0..12 {
            match i {
                5 => assert!(cam.request_keyframe()),
                9 => cam
                    .keyframe_trigger()
                    .unwrap()
                    .store(true, Ordering::Relaxed),
                _ => {}
            }
            let f = cam.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 1_000_000 / 15);
            let pic = decoder
                .decode(&f.data)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} did not decode"));
            assert_eq!(pic.dimensions(), (160, 120));
            kinds.push(f.kind);
        }
        let keys: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == FrameKind::Key)
            .collect();
        assert_eq!(keys, vec![0, 5, 9], "{kinds:?}");
        // The snapshot is the last picture: testsrc's top-left is its white-ish bar area, not
        // black, and the JPEG has the size.
        let jpeg = cam.snapshot_jpeg(80).unwrap();
        let mut d = jpeg_decoder::Decoder::new(&jpeg[..]);
        d.decode().unwrap();
        let info = d.info().unwrap();
        assert_eq!((info.width, info.height), (160, 120));
    }

    #[test]
    fn a_paced_camera_sends_the_requested_keyframe_at_once() {
        // 15 fps: one frame interval is 66.7 ms.
        let mut cam = camera(
            CommandOptions::new(testsrc(320, 240, 15, "")),
            320,
            240,
            true,
        );
        for _ in 0..5 {
            cam.next_frame().unwrap().unwrap();
        }
        let mut waits = Vec::new();
        for round in 0..5 {
            assert_eq!(
                cam.next_frame().unwrap().unwrap().kind,
                FrameKind::Delta,
                "round {round}"
            );
            let trigger = cam.keyframe_trigger().unwrap();
            let capture_thread = std::thread::current();
            // The request comes from another thread while the camera waits for its slot.
            let requester = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(10));
                let asked = Instant::now();
                trigger.store(true, Ordering::Relaxed);
                capture_thread.unpark();
                asked
            });
            let frame = cam.next_frame().unwrap().unwrap();
            let done = Instant::now();
            let asked = requester.join().unwrap();
            assert_eq!(frame.kind, FrameKind::Key, "round {round}");
            waits.push(done.duration_since(asked));
        }
        println!("request -> keyframe out of the camera (320x240, 15 fps): {waits:?}");
        // Generous: the frame interval is 66 ms; only a regression to "next GOP" or a hang fails.
        assert!(
            waits.iter().all(|w| *w < Duration::from_millis(500)),
            "{waits:?}"
        );
    }

    #[test]
    fn an_exit_is_an_error_naming_the_command_its_status_and_stderr() {
        let cmd = "echo 'camera unplugged' >&2; exit 3";
        let mut cam = camera(CommandOptions::new(cmd), 160, 120, false);
        let e = command_error(cam.next_frame().unwrap_err());
        let text = e.to_string();
        assert!(
            matches!(&e, RawCommandError::Exited { status, .. } if status.contains('3')),
            "{text}"
        );
        assert!(
            text.contains(cmd) && text.contains("camera unplugged"),
            "{text}"
        );
    }

    #[test]
    fn a_short_read_at_the_end_is_an_error_not_a_picture() {
        // ffmpeg writes three 160x120 pictures (86400 bytes); the camera expects 320x240
        // (115200 bytes per picture).
        let mut cam = camera(
            CommandOptions::new(testsrc(160, 120, 15, "-frames:v 3")),
            320,
            240,
            false,
        );
        let e = command_error(cam.next_frame().unwrap_err());
        match &e {
            RawCommandError::ShortRead {
                got,
                expected,
                status,
                ..
            } => {
                assert_eq!((*got, *expected), (86_400, 115_200));
                assert!(status.contains('0'), "{status}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("configured size"), "{e}");
    }

    #[test]
    fn a_stalled_command_is_an_error_after_the_timeout_and_is_killed() {
        let pid_file = std::env::temp_dir().join(format!("raw-stall-{}.pid", std::process::id()));
        let cmd = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let mut options = CommandOptions::new(cmd);
        options.stall_timeout = Duration::from_millis(300);
        let mut cam = camera(options, 160, 120, false);
        let start = Instant::now();
        let e = command_error(cam.next_frame().unwrap_err());
        let waited = start.elapsed();
        assert!(matches!(e, RawCommandError::Stalled { .. }), "{e}");
        assert!(e.to_string().contains("stalled"), "{e}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // The stalled process is gone (killed with its group, and reaped).
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(&pid_file);
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the stalled command {pid} still runs");
    }

    #[test]
    fn with_a_restart_policy_a_command_that_exits_is_started_again() {
        let mut options = CommandOptions::new(testsrc(160, 120, 15, "-frames:v 3"));
        options.restart = Some(RestartPolicy {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        });
        let mut cam = camera(options, 160, 120, false);
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        for i in 0..10 {
            let f = cam.next_frame().unwrap().unwrap();
            assert!(decoder.decode(&f.data).unwrap().is_some(), "frame {i}");
        }
        // Three pictures per run: ten frames took four runs.
        assert_eq!(cam.restarts(), 3);
    }
}
