//! A camera for the fan-out benchmark: two seconds of 640x480 30 fps H.264 at a set bitrate,
//! encoded once at start from a moving noise picture (which, unlike the test pattern, fills
//! whatever bitrate it is given), then replayed in a loop, paced in real time.
//!
//! The fan-out figures measure what the SDK spends per viewer, so the stream must really be
//! at the stated bitrate, and the encoder must not run while they are taken.

use anyhow::{Context, Result};
use bytes::Bytes;
use kvs_platform::{CaptureError, EncodedFrame, FrameKind, VideoCapture, VideoCodec, VideoFormat};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};
use std::time::{Duration, Instant};

const WIDTH: usize = 640;
const HEIGHT: usize = 480;
const FPS: u64 = 30;
const FRAMES: usize = 60;
const GOP: u32 = 30;

struct Noise {
    y: Vec<u8>,
    uv: Vec<u8>,
}

impl YUVSource for Noise {
    fn dimensions(&self) -> (usize, usize) {
        (WIDTH, HEIGHT)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (WIDTH, WIDTH / 2, WIDTH / 2)
    }
    fn y(&self) -> &[u8] {
        &self.y
    }
    fn u(&self) -> &[u8] {
        &self.uv
    }
    fn v(&self) -> &[u8] {
        &self.uv
    }
}

pub struct LoopCamera {
    frames: Vec<(Bytes, FrameKind)>,
    next: usize,
    sent: u64,
    started: Option<Instant>,
    keyframe_wanted: bool,
    bitrate: u32,
}

impl LoopCamera {
    /// Encode the loop (takes about a second).
    pub fn new(bitrate_bps: u32) -> Result<Self> {
        let cfg = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(FPS as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .profile(Profile::Baseline)
            .usage_type(UsageType::CameraVideoRealTime)
            .intra_frame_period(IntraFramePeriod::from_num_frames(GOP))
            .scene_change_detect(false)
            .num_threads(1);
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), cfg)
            .context("creating the loop encoder")?;
        // A noise tile that slides a little every frame: every macroblock changes, the way a
        // busy scene does, so the rate controller spends the whole budget.
        let mut seed: u32 = 0x9e37_79b9;
        let tile: Vec<u8> = (0..256 * 256)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                16 + (seed % 220) as u8
            })
            .collect();
        let mut pic = Noise {
            y: vec![0; WIDTH * HEIGHT],
            uv: vec![128; WIDTH * HEIGHT / 4],
        };
        let mut frames = Vec::with_capacity(FRAMES);
        for i in 0..FRAMES {
            for row in 0..HEIGHT {
                for col in 0..WIDTH {
                    pic.y[row * WIDTH + col] = tile[((row + i) % 256) * 256 + (col + 2 * i) % 256];
                }
            }
            let ts = Timestamp::from_millis(i as u64 * 1000 / FPS);
            let bitstream = encoder.encode_at(&pic, ts).context("encoding the loop")?;
            let kind = match bitstream.frame_type() {
                FrameType::IDR => FrameKind::Key,
                FrameType::Skip | FrameType::Invalid => continue,
                _ => FrameKind::Delta,
            };
            frames.push((Bytes::from(bitstream.to_vec()), kind));
        }
        anyhow::ensure!(
            frames.first().is_some_and(|f| f.1 == FrameKind::Key),
            "the loop does not start with a keyframe"
        );
        Ok(Self {
            frames,
            next: 0,
            sent: 0,
            started: None,
            keyframe_wanted: false,
            bitrate: bitrate_bps,
        })
    }

    /// The loop's real bitrate (bits per second).
    pub fn measured_bitrate(&self) -> f64 {
        let bytes: usize = self.frames.iter().map(|f| f.0.len()).sum();
        bytes as f64 * 8.0 * FPS as f64 / self.frames.len() as f64
    }
}

impl VideoCapture for LoopCamera {
    fn format(&self) -> VideoFormat {
        VideoFormat {
            codec: VideoCodec::H264,
            width: WIDTH as u32,
            height: HEIGHT as u32,
            fps: FPS as u32,
        }
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }

    fn stop(&mut self) {}

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = started + Duration::from_micros(self.sent * 1_000_000 / FPS);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if std::mem::take(&mut self.keyframe_wanted) {
            // Jump to the next keyframe of the loop: an IDR resets every decoder's references.
            self.next = self.frames[self.next..]
                .iter()
                .position(|f| f.1 == FrameKind::Key)
                .map_or(0, |p| self.next + p);
        }
        let (data, kind) = self.frames[self.next].clone();
        self.next = (self.next + 1) % self.frames.len();
        let ts = self.sent * 1_000_000 / FPS;
        self.sent += 1;
        Ok(Some(EncodedFrame::new(data, ts, kind)))
    }

    fn request_keyframe(&mut self) -> bool {
        self.keyframe_wanted = true;
        true
    }

    fn bitrate(&self) -> Option<u32> {
        Some(self.bitrate)
    }
}
