//! The test-pattern camera: scrolling colour bars, a bouncing box, a frame counter and the
//! wall-clock time (UTC, hh:mm:ss.mmm — handy to eyeball end-to-end latency), encoded live with
//! OpenH264 as Constrained Baseline (profile 66 with constraint_set0/1, what `42e01f` viewers
//! decode).

use super::font;
use super::h264_encoder::{H264EncoderConfig, LiveH264};
use kvs_platform::{CaptureError, Clock, EncodedFrame, SystemClock, VideoCapture, VideoFormat};
use openh264::formats::YUVSource;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Settings of a [`TestPatternCamera`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPatternConfig {
    /// Even, 16..=3840.
    pub width: u32,
    /// Even, 16..=2160.
    pub height: u32,
    /// 1..=120.
    pub fps: u32,
    /// Initial target bitrate (bits/s); [`VideoCapture::set_bitrate`] changes it live.
    pub bitrate_bps: u32,
    /// Frames between IDR frames (GOP length); 0 = only the first frame and requested ones.
    pub keyframe_interval: u32,
    /// Block in `next_frame` until each frame is due (true for live use; false produces frames
    /// as fast as they are asked for, with the same nominal timestamps — for tests and files).
    pub paced: bool,
}

impl Default for TestPatternConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 30,
            bitrate_bps: 1_000_000,
            keyframe_interval: 30,
            paced: true,
        }
    }
}

/// The picture sizes the test pattern draws: even, 16..=3840 x 16..=2160. The error says what
/// is wrong with the size, for the caller's own error type.
pub(crate) fn check_size(width: u32, height: u32) -> Result<(), &'static str> {
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err("must be even");
    }
    if !(16..=3840).contains(&width) || !(16..=2160).contains(&height) {
        return Err("out of range 16x16..3840x2160");
    }
    Ok(())
}

/// The frame counter and clock texts drawn into the pattern, in buffers reused for every frame.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub(crate) counter: String,
    pub(crate) clock: String,
}

impl Overlay {
    /// Frame `index` as a six-digit counter and `unix_time` as the UTC time of day,
    /// hh:mm:ss.mmm.
    pub(crate) fn render(&mut self, index: u64, unix_time: Duration) {
        use std::fmt::Write;
        self.counter.clear();
        let _ = write!(self.counter, "{index:06}");
        let ms = unix_time.as_millis() as u64 % 86_400_000;
        self.clock.clear();
        let _ = write!(
            self.clock,
            "{:02}:{:02}:{:02}.{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        );
    }
}

/// An I420 picture buffer (BT.601 limited range), allocated once and redrawn for every frame.
pub(crate) struct Picture {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) y: Vec<u8>,
    pub(crate) u: Vec<u8>,
    pub(crate) v: Vec<u8>,
}

impl YUVSource for Picture {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }
    fn y(&self) -> &[u8] {
        &self.y
    }
    fn u(&self) -> &[u8] {
        &self.u
    }
    fn v(&self) -> &[u8] {
        &self.v
    }
}

/// 75% colour bars in BT.601 limited-range YUV: white, yellow, cyan, green, magenta, red, blue,
/// black.
const BARS: [(u8, u8, u8); 8] = [
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
    (16, 128, 128),
];

impl Picture {
    /// A picture of an even size accepted by [`check_size`] (`draw` relies on it).
    pub(crate) fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            y: vec![0; width * height],
            u: vec![128; width * height / 4],
            v: vec![128; width * height / 4],
        }
    }

    /// Draw frame `index` with the clock text `clock` into the buffer (no allocation).
    pub(crate) fn draw(&mut self, index: u64, counter: &str, clock: &str) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w / 2, h / 2);
        // Bars scroll left by 4 pixels per frame.
        let shift = (index as usize * 4) % w;
        let bar_of = |x: usize| ((x + shift) % w) * BARS.len() / w;
        // Draw one row of each plane, then copy it down.
        for x in 0..w {
            self.y[x] = BARS[bar_of(x)].0;
        }
        for x in 0..cw {
            let (_, u, v) = BARS[bar_of(x * 2)];
            self.u[x] = u;
            self.v[x] = v;
        }
        for row in 1..h {
            self.y.copy_within(0..w, row * w);
        }
        for row in 1..ch {
            self.u.copy_within(0..cw, row * cw);
            self.v.copy_within(0..cw, row * cw);
        }
        // A box bouncing diagonally (positions even, so chroma lines up).
        let size = (w.min(h) / 6) & !1;
        let bounce = |range: usize, speed: usize| {
            if range == 0 {
                return 0;
            }
            let p = (index as usize * speed) % (2 * range);
            (if p < range { p } else { 2 * range - p }) & !1
        };
        let bx = bounce(w - size, 6);
        let by = bounce(h - size, 4);
        for row in by..by + size {
            self.y[row * w + bx..row * w + bx + size].fill(235);
        }
        for row in by / 2..(by + size) / 2 {
            self.u[row * cw + bx / 2..row * cw + (bx + size) / 2].fill(128);
            self.v[row * cw + bx / 2..row * cw + (bx + size) / 2].fill(128);
        }
        // A patch of fresh noise in the bottom-right corner: incompressible detail, so the
        // encoder uses the bitrate it is given, like a real camera (bandwidth tests need that).
        let noise = (w.min(h) / 8) & !1;
        let mut seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for row in h - noise..h {
            for px in &mut self.y[row * w + w - noise..(row + 1) * w] {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *px = 16 + (seed % 220) as u8;
            }
        }
        // Counter and clock on a black box, neutral chroma.
        let scale = (h / 120).clamp(1, 6);
        let margin = scale * 2;
        let (tw1, th) = font::text_box(counter, scale);
        let (tw2, _) = font::text_box(clock, scale);
        font::draw_text(&mut self.y, w, h, margin, margin, scale, counter, 235, 16);
        font::draw_text(
            &mut self.y,
            w,
            h,
            margin,
            margin + th,
            scale,
            clock,
            235,
            16,
        );
        let text_w = (margin + tw1.max(tw2)).min(w);
        let text_h = (margin + 2 * th).min(h);
        for row in margin / 2..text_h.div_ceil(2).min(ch) {
            self.u[row * cw + margin / 2..row * cw + text_w.div_ceil(2).min(cw)].fill(128);
            self.v[row * cw + margin / 2..row * cw + text_w.div_ceil(2).min(cw)].fill(128);
        }
    }
}

/// A live test-pattern camera encoding H.264 with OpenH264. See the [module docs](self).
pub struct TestPatternCamera {
    config: TestPatternConfig,
    live: LiveH264,
    picture: Picture,
    /// Frames drawn so far (the next frame's index).
    index: u64,
    clock: SystemClock,
    /// Reused text buffers for the counter and clock.
    overlay: Overlay,
}

impl std::fmt::Debug for TestPatternCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPatternCamera")
            .field("config", &self.config)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl TestPatternCamera {
    /// A camera with `config`; fails on an invalid size, rate or bitrate.
    pub fn new(config: TestPatternConfig) -> Result<Self, CaptureError> {
        let encoder = H264EncoderConfig {
            width: config.width,
            height: config.height,
            fps: config.fps,
            bitrate_bps: config.bitrate_bps,
            keyframe_interval: config.keyframe_interval,
        };
        Ok(Self {
            live: LiveH264::new(encoder, config.paced, "test pattern")?,
            picture: Picture::new(config.width as usize, config.height as usize),
            index: 0,
            clock: SystemClock,
            overlay: Overlay::default(),
            config,
        })
    }

    /// The configuration in use (with the current bitrate).
    pub fn config(&self) -> &TestPatternConfig {
        &self.config
    }

    /// Frames produced so far.
    pub fn frames_produced(&self) -> u64 {
        self.index
    }

    /// Draw and encode the next picture. Returns `None` if the encoder produced no output.
    fn encode_next(&mut self, ts_us: u64) -> Result<Option<EncodedFrame>, CaptureError> {
        self.overlay.render(self.index, self.clock.unix_time());
        self.picture
            .draw(self.index, &self.overlay.counter, &self.overlay.clock);
        self.index += 1;
        self.live.encode(&self.picture, ts_us)
    }
}

impl VideoCapture for TestPatternCamera {
    fn format(&self) -> VideoFormat {
        self.live.format()
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.live.start();
        Ok(())
    }

    fn stop(&mut self) {
        self.live.stop();
    }

    fn next_frame(&mut self) -> Result<Option<EncodedFrame>, CaptureError> {
        loop {
            let ts = self.live.wait_for_slot(self.index);
            if let Some(frame) = self.encode_next(ts)? {
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

    fn set_resolution(&mut self, width: u32, height: u32) -> Result<(), CaptureError> {
        if let Err(reason) = check_size(width, height) {
            return Err(CaptureError::InvalidInput(format!(
                "test pattern size {width}x{height} {reason}"
            )));
        }
        if (width, height) == (self.config.width, self.config.height) {
            return Ok(());
        }
        self.live.resize(width, height)?;
        self.picture = Picture::new(width as usize, height as usize);
        self.config.width = width;
        self.config.height = height;
        Ok(())
    }

    fn set_bitrate(&mut self, bits_per_second: u32) -> Result<(), CaptureError> {
        self.live.set_bitrate(bits_per_second)?;
        self.config.bitrate_bps = bits_per_second;
        Ok(())
    }

    fn bitrate(&self) -> Option<u32> {
        Some(self.live.config().bitrate_bps)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::h264::{find_sps, AccessUnitInfo};
    use kvs_platform::FrameKind;
    use openh264::decoder::Decoder;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    pub(crate) fn unpaced(width: u32, height: u32) -> TestPatternCamera {
        TestPatternCamera::new(TestPatternConfig {
            width,
            height,
            paced: false,
            ..TestPatternConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn encodes_decodable_moving_pattern_with_keyframes() {
        let mut cam = unpaced(640, 480);
        assert_eq!(cam.format().width, 640);
        let mut decoder = Decoder::new().unwrap();
        let mut lumas: Vec<Vec<u8>> = Vec::new();
        let mut kinds = Vec::new();
        let mut forced_at = None;
        for i in 0..45 {
            if i == 10 {
                assert!(cam.request_keyframe());
                forced_at = Some(i as usize);
            }
            let f = cam.next_frame().unwrap().unwrap();
            assert_eq!(f.timestamp_us, i * 1_000_000 / 30);
            let info = AccessUnitInfo::scan(&f.data);
            assert_eq!(info.kind(), f.kind, "frame {i}");
            if f.is_key() {
                assert!(info.has_sps && info.has_pps, "keyframe {i} carries SPS+PPS");
                let sps = find_sps(&f.data).unwrap().unwrap();
                assert_eq!((sps.width, sps.height), (640, 480));
                assert!(
                    sps.is_constrained_baseline(),
                    "{:06x}",
                    sps.profile_level_id()
                );
            }
            kinds.push(f.kind);
            let pic = decoder
                .decode(&f.data)
                .unwrap()
                .unwrap_or_else(|| panic!("frame {i} did not decode"));
            assert_eq!(pic.dimensions(), (640, 480));
            let (w, h) = pic.dimensions();
            let stride = pic.strides().0;
            let mut y = Vec::with_capacity(w * h);
            for row in 0..h {
                y.extend_from_slice(&pic.y()[row * stride..row * stride + w]);
            }
            lumas.push(y);
        }
        // The first frame, the forced one, and one GOP (30 frames) after the forced one.
        let keys: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == FrameKind::Key)
            .collect();
        let forced = forced_at.unwrap();
        assert_eq!(keys, vec![0, forced, forced + 30], "{kinds:?}");
        // The pattern moves: consecutive pictures differ in many pixels, not just the text.
        let differing = lumas[5]
            .iter()
            .zip(&lumas[6])
            .filter(|(a, b)| a.abs_diff(**b) > 20)
            .count();
        assert!(
            differing > 640 * 480 / 100,
            "only {differing} pixels changed"
        );
        // And it looks like bars: the decoded picture has the bar levels (±10) in its bottom row.
        let bottom = &lumas[0][479 * 640..];
        assert!(
            (bottom[5] as i32 - 180).abs() < 12,
            "white bar {}",
            bottom[5]
        );
        assert!(
            (bottom[570] as i32 - 16).abs() < 12,
            "black bar {}",
            bottom[570]
        );
    }

    /// Bytes and frames the camera makes in `span_us` of timestamps after its next frame (that
    /// one not counted): pictures skipped to hold a low target count as time too.
    fn bytes_and_frames_over(cam: &mut TestPatternCamera, span_us: u64) -> (u64, u64) {
        let start = cam.next_frame().unwrap().unwrap().timestamp_us;
        let (mut bytes, mut frames) = (0u64, 0u64);
        loop {
            let f = cam.next_frame().unwrap().unwrap();
            if f.timestamp_us >= start + span_us {
                return (bytes, frames);
            }
            bytes += f.data.len() as u64;
            frames += 1;
        }
    }

    /// Ten seconds of the camera's frames after 30 at the default bitrate, then `bps`:
    /// (kbit/s, frames).
    fn rate_over_ten_seconds(width: u32, height: u32, bps: u32) -> (u64, u64) {
        let mut cam = unpaced(width, height);
        for _ in 0..30 {
            cam.next_frame().unwrap();
        }
        cam.set_bitrate(bps).unwrap();
        let (bytes, frames) = bytes_and_frames_over(&mut cam, 10_000_000);
        (bytes * 8 / 10 / 1000, frames)
    }

    #[test]
    fn a_target_below_what_the_encoder_reaches_is_held_by_skipping_pictures() {
        // OpenH264 stays well above 40 kbit/s for this picture whatever it is asked (its
        // highest quantiser): the camera skips pictures so the stream still keeps the target.
        let (kbps, frames) = rate_over_ten_seconds(320, 240, 40_000);
        eprintln!("40 kbit/s asked: {kbps} kbit/s in {frames} frames");
        assert!(kbps <= 42, "asked 40 kbit/s, made {kbps} ({frames} frames)");
        assert!(
            (30..299).contains(&frames),
            "fewer pictures, but still a moving picture: {frames} in 10 s"
        );
        // A target it reaches loses no picture.
        let (kbps, frames) = rate_over_ten_seconds(320, 240, 600_000);
        assert_eq!(frames, 299, "{kbps} kbit/s");
    }

    #[test]
    fn odd_sizes_are_cropped_and_bitrate_changes_apply() {
        let mut cam = unpaced(320, 180);
        let f = cam.next_frame().unwrap().unwrap();
        let sps = find_sps(&f.data).unwrap().unwrap();
        assert_eq!((sps.width, sps.height), (320, 180));

        // Same content, one camera lowered to 60 kbit/s after its first frame, then raised.
        let mut reference = unpaced(320, 240);
        let mut changed = unpaced(320, 240);
        reference.next_frame().unwrap();
        changed.next_frame().unwrap();
        changed.set_bitrate(60_000).unwrap();
        assert_eq!(changed.bitrate(), Some(60_000));
        let bytes = |cam: &mut TestPatternCamera| bytes_and_frames_over(cam, 1_000_000).0;
        let full = bytes(&mut reference);
        let low = bytes(&mut changed);
        assert!(
            low * 2 < full,
            "60 kbit/s gave {low} bytes, 1 Mbit/s gave {full}"
        );
        changed.set_bitrate(1_000_000).unwrap();
        bytes(&mut changed);
        let up = bytes(&mut changed);
        assert!(
            up > low * 3 / 2,
            "raised back: {up} bytes, at 60 kbit/s: {low}"
        );
        assert!(matches!(
            TestPatternCamera::new(TestPatternConfig {
                width: 641,
                ..TestPatternConfig::default()
            }),
            Err(CaptureError::InvalidInput(_))
        ));
    }

    #[test]
    fn a_resolution_change_takes_effect_with_a_keyframe_at_the_new_size() {
        let mut cam = unpaced(640, 480);
        for _ in 0..5 {
            cam.next_frame().unwrap().unwrap();
        }
        cam.set_resolution(320, 240).unwrap();
        assert_eq!((cam.format().width, cam.format().height), (320, 240));
        let f = cam.next_frame().unwrap().unwrap();
        assert_eq!(
            f.kind,
            FrameKind::Key,
            "the first frame at the new size is an IDR"
        );
        let sps = find_sps(&f.data).unwrap().unwrap();
        assert_eq!((sps.width, sps.height), (320, 240));
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let pic = decoder.decode(&f.data).unwrap().expect("a picture");
        assert_eq!(pic.dimensions(), (320, 240));
        // Following frames are deltas at the new size again.
        assert_eq!(cam.next_frame().unwrap().unwrap().kind, FrameKind::Delta);
        assert!(matches!(
            cam.set_resolution(321, 240),
            Err(CaptureError::InvalidInput(_))
        ));
        assert_eq!(
            cam.format().width,
            320,
            "a refused change leaves the size alone"
        );
    }

    #[test]
    fn paced_frames_arrive_at_the_frame_rate() {
        let mut cam = TestPatternCamera::new(TestPatternConfig {
            width: 160,
            height: 120,
            fps: 50,
            ..TestPatternConfig::default()
        })
        .unwrap();
        let start = Instant::now();
        for _ in 0..6 {
            cam.next_frame().unwrap().unwrap();
        }
        // Frame 5 is due 100 ms after frame 0.
        assert!(start.elapsed() >= std::time::Duration::from_millis(100));
    }

    #[test]
    fn a_keyframe_trigger_ends_the_wait_for_the_next_slot() {
        // One frame a second: the second frame's slot is a second after the first.
        let mut cam = TestPatternCamera::new(TestPatternConfig {
            width: 160,
            height: 120,
            fps: 1,
            ..TestPatternConfig::default()
        })
        .unwrap();
        assert!(cam.next_frame().unwrap().unwrap().is_key());
        let trigger = cam.keyframe_trigger().unwrap();
        let capture_thread = std::thread::current();
        let start = Instant::now();
        let requester = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            trigger.store(true, Ordering::Relaxed);
            capture_thread.unpark();
        });
        let frame = cam.next_frame().unwrap().unwrap();
        requester.join().unwrap();
        assert!(frame.is_key(), "the requested keyframe");
        // Well before the slot: only the trigger can have ended the wait.
        assert!(start.elapsed() < std::time::Duration::from_millis(900));
        // It keeps its slot's timestamp.
        assert_eq!(frame.timestamp_us, 1_000_000);
    }
}
