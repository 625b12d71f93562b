//! Holding a live encoder to its target bitrate: which pictures to skip (sans-IO).
//!
//! Owns one decision: whether the next picture should be encoded at all. OpenH264's rate
//! control cannot go below what its highest quantiser gives for the content — the test
//! pattern at 640x480/30 fps stays at ~430–480 kbit/s whatever lower target it is given
//! (measured: target 300 → 433–443 kbit/s, 400 → 458–485), and turning its own frame
//! skipping on did not change that. Under a narrow path (adaptive bitrate asking for
//! 300–400 kbit/s) that overshoot is exactly what keeps the bottleneck's queue full. So the
//! live cameras keep a leaky bucket here: encoded bits go in, the target drains it, and while
//! it holds more than [`BURST`] worth of the target the next picture is skipped (a lower frame
//! rate instead of a queue; what libwebrtc's frame dropper does too).
//!
//! A keyframe's bits beyond one frame's share are spread over the next [`KEYFRAME_SPREAD`]
//! of pictures, so an encoder that meets its average — a big keyframe, then smaller delta
//! frames — never loses the pictures right after its keyframes. A forced keyframe (a viewer's
//! request, a new viewer) is never skipped: the caller asks only for the others.
//!
//! Time is the pictures' own timestamps (µs), so paced and unpaced cameras behave alike and it
//! is tested without a clock. It must not touch the encoder or the camera.

use std::time::Duration;

/// The most the bucket may hold before pictures are skipped, as time at the target rate:
/// also the most a systematic overshoot can add to a bottleneck's queue.
pub const BURST: Duration = Duration::from_millis(300);
/// How long a keyframe's excess is spread over.
pub const KEYFRAME_SPREAD: Duration = Duration::from_millis(500);

/// The leaky bucket of one live encoder (see the module doc).
#[derive(Debug, Clone)]
pub struct RateHold {
    target_bps: u64,
    fps: u32,
    /// Bits above what the target allowed so far.
    excess_bits: f64,
    /// A keyframe's bits still to be counted, and how many per picture.
    spread_bits: f64,
    spread_per_picture: f64,
    last_ts_us: Option<u64>,
    skipped: u64,
}

impl RateHold {
    pub fn new(target_bps: u64, fps: u32) -> Self {
        Self {
            target_bps,
            fps: fps.max(1),
            excess_bits: 0.0,
            spread_bits: 0.0,
            spread_per_picture: 0.0,
            last_ts_us: None,
            skipped: 0,
        }
    }

    /// A new target (the bucket keeps what it holds: a fall drains it more slowly).
    pub fn set_target(&mut self, target_bps: u64) {
        self.target_bps = target_bps;
    }

    /// Pictures skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The picture at `ts_us` is due: drain what the time since the last one allows, count a
    /// share of a keyframe's excess, and say whether to skip it. A caller forcing a keyframe
    /// encodes it anyway and does not ask.
    pub fn should_skip(&mut self, ts_us: u64) -> bool {
        self.advance(ts_us);
        let skip = self.excess_bits > self.target_bps as f64 * BURST.as_secs_f64();
        if skip {
            self.skipped += 1;
        }
        skip
    }

    /// Time passes to `ts_us` (also called for forced keyframes, which do not ask).
    pub fn advance(&mut self, ts_us: u64) {
        if let Some(last) = self.last_ts_us {
            // Timestamps that go backwards (a restarted camera) drain nothing.
            let dt = ts_us.saturating_sub(last) as f64 / 1e6;
            self.excess_bits = (self.excess_bits - self.target_bps as f64 * dt).max(0.0);
        }
        self.last_ts_us = Some(ts_us);
        let share = self.spread_per_picture.min(self.spread_bits);
        self.spread_bits -= share;
        self.excess_bits += share;
    }

    /// A picture was encoded into `bytes`.
    pub fn encoded(&mut self, bytes: usize, keyframe: bool) {
        let bits = bytes as f64 * 8.0;
        if !keyframe {
            self.excess_bits += bits;
            return;
        }
        let one_picture = self.target_bps as f64 / f64::from(self.fps);
        self.excess_bits += bits.min(one_picture);
        let pictures = (KEYFRAME_SPREAD.as_secs_f64() * f64::from(self.fps)).max(1.0);
        // Anything still spread from an earlier keyframe is added to this one's.
        self.spread_bits += (bits - one_picture).max(0.0);
        self.spread_per_picture = self.spread_bits / pictures;
    }

    /// The camera (re)started: nothing owed.
    pub fn reset(&mut self) {
        *self = Self::new(self.target_bps, self.fps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPS: u32 = 30;
    const FRAME_US: u64 = 1_000_000 / FPS as u64;

    /// Run `seconds` of pictures through `hold`; `size(i, keyframe_due)` says how many bytes
    /// the encoder would make of picture `i`. Returns the bits encoded and pictures skipped.
    fn run(
        hold: &mut RateHold,
        seconds: u64,
        gop: u64,
        size: impl Fn(u64, bool) -> usize,
    ) -> (u64, u64) {
        let mut bits = 0;
        let mut skipped = 0;
        for i in 0..seconds * u64::from(FPS) {
            let keyframe = i % gop == 0;
            let ts = i * FRAME_US;
            if keyframe {
                hold.advance(ts);
            } else if hold.should_skip(ts) {
                skipped += 1;
                continue;
            }
            let bytes = size(i, keyframe);
            hold.encoded(bytes, keyframe);
            bits += bytes as u64 * 8;
        }
        (bits, skipped)
    }

    #[test]
    fn an_encoder_that_meets_its_target_loses_no_picture_even_after_big_keyframes() {
        // 1 Mbit/s, a keyframe every second holding 30 % of the second's bits.
        let mut hold = RateHold::new(1_000_000, FPS);
        let key = 300_000 / 8;
        let delta = 700_000 / 8 / 29;
        let (bits, skipped) = run(&mut hold, 20, 30, |_, k| if k { key } else { delta });
        assert_eq!(skipped, 0);
        assert!(
            (bits as f64 / 20.0 - 1_000_000.0).abs() < 10_000.0,
            "{bits}"
        );
    }

    #[test]
    fn an_overshooting_encoder_is_held_to_its_target_by_skipping_pictures() {
        // The encoder makes 470 kbit/s worth of pictures whatever it is asked: held at 300.
        let mut hold = RateHold::new(300_000, FPS);
        let per_picture = 470_000 / 8 / FPS as usize;
        let (bits, skipped) = run(&mut hold, 30, 30, |_, _| per_picture);
        let kbps = bits as f64 / 30.0 / 1000.0;
        assert!(kbps <= 300.0 * 1.02 && kbps > 280.0, "{kbps} kbit/s");
        // About a third of the pictures go: 1 − 300/470.
        let share = skipped as f64 / (30.0 * f64::from(FPS));
        assert!((0.30..0.40).contains(&share), "{share}");
        assert_eq!(hold.skipped(), skipped);
    }

    #[test]
    fn a_lower_target_takes_effect_and_a_higher_one_stops_the_skipping() {
        let per_picture = 450_000 / 8 / FPS as usize;
        let mut hold = RateHold::new(1_000_000, FPS);
        assert_eq!(run(&mut hold, 5, 60, |_, _| per_picture).1, 0);
        hold.set_target(350_000);
        let (bits, skipped) = run(&mut hold, 10, 60, |_, _| per_picture);
        assert!(skipped > 0);
        assert!(bits as f64 / 10.0 <= 350_000.0 * 1.05 + 300_000.0 * 0.3 / 10.0);
        hold.set_target(600_000);
        // The bucket drains within BURST of the rise; after that nothing is skipped.
        run(&mut hold, 1, 60, |_, _| per_picture);
        assert_eq!(run(&mut hold, 10, 60, |_, _| per_picture).1, 0);
    }

    #[test]
    fn timestamps_going_backwards_and_a_reset_drain_nothing_and_clear_the_debt() {
        let mut hold = RateHold::new(100_000, FPS);
        hold.advance(5_000_000);
        hold.encoded(100_000, false);
        assert!(hold.should_skip(1_000), "800 kbit owed, no time passed");
        hold.reset();
        assert!(!hold.should_skip(1_000));
    }
}
