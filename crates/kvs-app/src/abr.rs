//! Adaptive bitrate: the encoder's target from the viewers' bandwidth estimates (sans-IO).
//!
//! Owns the policy only: which estimate counts, the bounds, the hysteresis, what happens to a
//! viewer far below the others. Inputs carry `now`; the device driver feeds it the engine's
//! `PeerEvent::BitrateEstimate`s and departures and applies what [`BitrateController`]
//! returns to the camera (`set_bitrate`) and the event bus (`BitrateChanged`). It must not
//! touch sessions, the camera or any clock itself.
//!
//! The policy:
//! - **Lowest viewer wins**: one encoder feeds every viewer the same frames, so the target
//!   follows the lowest estimate among the viewers, × [`HEADROOM`] (the estimate covers the
//!   whole path: video packet overhead, and a little spare keeps the queue at the bottleneck
//!   empty) less what the audio takes on the same path ([`AUDIO_RESERVE_BPS`] when there is a
//!   microphone), clamped to `[min, max]`. The camera holds the target even where its encoder
//!   cannot go that low (it skips pictures: `kvs_media::rate_hold`).
//! - **Fall fast**: an estimate that puts the target more than [`FALL_MARGIN`] below the
//!   current one takes effect at once.
//! - **Rise slowly, stepwise**: the target goes up only after every viewer's estimate has
//!   allowed [`RISE_MARGIN`] more for [`RISE_HOLD`] without interruption, and then by at most
//!   [`RISE_STEP`] (×1.25) of the current target; the next step needs another full hold. A
//!   fall restarts the hold, so a target never goes up and down within one hold (no flapping).
//! - **Outliers**: a viewer whose estimate is below the floor (`min`) does not drag the
//!   others below it: the floor holds, and that viewer is reported *constrained* (in the
//!   event's reason) — it keeps receiving the stream at the floor rate and str0m's pacer
//!   queues for it (bounded: str0m raises the pacing rate to empty its queue within 2 s), so
//!   it sees freezes or losses while the others stay at the floor or above. Keyframe-only
//!   was not chosen: it would need a second fan-out policy per viewer in the engine, and a
//!   viewer that cannot take the floor cannot take keyframes of a floor-rate stream either.
//!   A viewer without an estimate yet (just connected) does not count until it has one.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `[adaptive_bitrate]`: congestion feedback (TWCC) on every session and the encoder's target
/// following it. Environment: `KVS_WEBRTC_ADAPTIVE_BITRATE__ENABLED=true`,
/// `…__MIN_KBPS`, `…__MAX_KBPS`; command line: `--adaptive-bitrate`, `--min-kbps`,
/// `--max-kbps`.
///
/// Off by default: str0m's congestion control costs ~90 KB of heap per viewer, close to
/// doubling what a viewer costs without it (docs/BENCHMARKS.md), beyond the 1.5× the
/// project allows for a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveBitrateConfig {
    pub enabled: bool,
    /// The floor: the target never goes below it (see the module doc on outliers).
    pub min_kbps: u32,
    /// The ceiling, also what the estimator probes for.
    pub max_kbps: u32,
}

impl Default for AdaptiveBitrateConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            min_kbps: 150,
            max_kbps: 2500,
        }
    }
}

impl AdaptiveBitrateConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(50..=50_000).contains(&self.min_kbps) || !(50..=50_000).contains(&self.max_kbps) {
            return Err(format!(
                "adaptive_bitrate.min_kbps and max_kbps must be 50..=50000, got {} and {}",
                self.min_kbps, self.max_kbps
            ));
        }
        if self.min_kbps > self.max_kbps {
            return Err(format!(
                "adaptive_bitrate.min_kbps ({}) must not exceed max_kbps ({})",
                self.min_kbps, self.max_kbps
            ));
        }
        Ok(())
    }

    /// The controller's bounds, starting from the encoder's configured bitrate; `audio`: a
    /// microphone streams beside the camera (its share is taken off the estimates).
    pub fn bounds(&self, initial_bps: u64, audio: bool) -> AbrBounds {
        AbrBounds {
            min_bps: u64::from(self.min_kbps) * 1000,
            max_bps: u64::from(self.max_kbps) * 1000,
            initial_bps,
            reserved_bps: if audio { AUDIO_RESERVE_BPS } else { 0 },
        }
    }
}

/// Share of the lowest estimate given to the media (video packet overhead and spare).
pub const HEADROOM: f64 = 0.85;
/// What the audio takes on the path: 64 kbit/s (Opus as encoded here, or G.711) plus 50
/// packets a second of ~70 bytes of headers (IP, UDP, RTP with extensions, SRTP tag). Under a
/// 600 kbit/s cap this is ~15 % of the path, which the video must leave free.
pub const AUDIO_RESERVE_BPS: u64 = 64_000 + 50 * 70 * 8;
/// A new target this much below the current one applies at once.
pub const FALL_MARGIN: f64 = 0.95;
/// The estimates must allow this much more than the current target before a rise is held.
pub const RISE_MARGIN: f64 = 1.10;
/// How long the estimates must keep allowing a rise before one step is taken.
pub const RISE_HOLD: Duration = Duration::from_secs(2);
/// The most one rise step multiplies the target by.
pub const RISE_STEP: f64 = 1.25;
/// Viewers whose estimates are kept (a bound against a flood of peer ids; the engine's own
/// session limit is far lower).
pub const MAX_TRACKED: usize = 256;

/// Bounds and starting point of the target, in bit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbrBounds {
    pub min_bps: u64,
    pub max_bps: u64,
    /// The encoder's starting target (clamped into the bounds).
    pub initial_bps: u64,
    /// What other streams take on the same path (audio), off the estimate before the video.
    pub reserved_bps: u64,
}

/// Why the target changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// The lowest estimate fell under the target.
    Congestion,
    /// The estimates allowed more for [`RISE_HOLD`].
    Recovery,
    /// The viewer with the lowest estimate left.
    ViewerLeft,
}

impl ChangeReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeReason::Congestion => "congestion",
            ChangeReason::Recovery => "recovery",
            ChangeReason::ViewerLeft => "viewer-left",
        }
    }
}

/// A new encoder target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitrateChange {
    pub bps: u64,
    pub reason: ChangeReason,
    /// The lowest estimate among the viewers when the change was made.
    pub lowest_estimate_bps: u64,
    /// Viewers whose estimate is below the floor (kept at the floor, not followed).
    pub constrained: Vec<String>,
}

/// The sans-IO controller (see the module doc).
#[derive(Debug)]
pub struct BitrateController {
    bounds: AbrBounds,
    target: u64,
    estimates: HashMap<String, u64>,
    /// Since when the estimates have allowed a rise, uninterrupted.
    rise_since: Option<Instant>,
}

impl BitrateController {
    pub fn new(bounds: AbrBounds) -> Self {
        let target = bounds.initial_bps.clamp(bounds.min_bps, bounds.max_bps);
        Self {
            bounds,
            target,
            estimates: HashMap::new(),
            rise_since: None,
        }
    }

    /// The current target in bit/s.
    pub fn target_bps(&self) -> u64 {
        self.target
    }

    /// What the estimators should probe for: the estimate the next rise step needs, not the
    /// ceiling — probing far above what is sent floods a narrow path with padding.
    pub fn probe_bps(&self) -> u64 {
        let next = self.target as f64 * RISE_STEP * RISE_MARGIN;
        let reserved = self.bounds.reserved_bps as f64;
        ((next.min(self.bounds.max_bps as f64) + reserved) / HEADROOM) as u64
    }

    /// A viewer's new estimate; returns the change to apply, if any.
    pub fn estimate(&mut self, peer_id: &str, bps: u64, now: Instant) -> Option<BitrateChange> {
        if !self.estimates.contains_key(peer_id) && self.estimates.len() >= MAX_TRACKED {
            return None;
        }
        self.estimates.insert(peer_id.to_owned(), bps);
        self.evaluate(now, None)
    }

    /// A viewer left (closed, failed): its estimate no longer counts.
    pub fn remove(&mut self, peer_id: &str, now: Instant) -> Option<BitrateChange> {
        let lowest_before = self.lowest();
        self.estimates.remove(peer_id)?;
        let reason = (self.lowest() != lowest_before).then_some(ChangeReason::ViewerLeft);
        self.evaluate(now, reason)
    }

    fn lowest(&self) -> Option<u64> {
        self.estimates.values().copied().min()
    }

    fn evaluate(&mut self, now: Instant, left: Option<ChangeReason>) -> Option<BitrateChange> {
        let lowest = self.lowest()?;
        let wanted = self
            .video_share(lowest)
            .clamp(self.bounds.min_bps, self.bounds.max_bps);
        let change = |bps: u64, reason: ChangeReason, this: &Self| BitrateChange {
            bps,
            reason,
            lowest_estimate_bps: lowest,
            constrained: this.constrained(),
        };
        if (wanted as f64) < self.target as f64 * FALL_MARGIN {
            self.target = wanted;
            self.rise_since = None;
            return Some(change(wanted, ChangeReason::Congestion, self));
        }
        if (wanted as f64) < self.target as f64 * RISE_MARGIN || self.target >= self.bounds.max_bps
        {
            // Within the band: hold. An interrupted rise starts its hold again.
            self.rise_since = None;
            return None;
        }
        let since = *self.rise_since.get_or_insert(now);
        if now.saturating_duration_since(since) < RISE_HOLD {
            return None;
        }
        let step = ((self.target as f64 * RISE_STEP) as u64).max(self.target + 1);
        self.target = wanted.min(step).min(self.bounds.max_bps);
        // The next step needs a full hold of its own.
        self.rise_since = Some(now);
        Some(change(
            self.target,
            left.unwrap_or(ChangeReason::Recovery),
            self,
        ))
    }

    /// What an estimate leaves the video (before the bounds).
    fn video_share(&self, estimate_bps: u64) -> u64 {
        ((estimate_bps as f64 * HEADROOM) as u64).saturating_sub(self.bounds.reserved_bps)
    }

    /// Viewers below the floor, sorted.
    fn constrained(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .estimates
            .iter()
            .filter(|(_, &bps)| self.video_share(bps) < self.bounds.min_bps)
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KBPS: u64 = 1000;

    fn controller() -> (BitrateController, Instant) {
        (
            BitrateController::new(AbrBounds {
                min_bps: 150 * KBPS,
                max_bps: 2000 * KBPS,
                initial_bps: 1500 * KBPS,
                reserved_bps: 0,
            }),
            Instant::now(),
        )
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn falls_at_once_to_the_lowest_viewer_with_headroom() {
        let (mut c, t0) = controller();
        assert_eq!(c.estimate("a", 3000 * KBPS, t0), None, "above: held");
        let ch = c.estimate("b", 600 * KBPS, secs(t0, 0.1)).unwrap();
        assert_eq!(ch.bps, 510 * KBPS);
        assert_eq!(ch.reason, ChangeReason::Congestion);
        assert_eq!(ch.lowest_estimate_bps, 600 * KBPS);
        assert!(ch.constrained.is_empty());
        assert_eq!(c.target_bps(), 510 * KBPS);
        // Probing asks for what the next step needs: 510 × 1.25 × 1.1 / 0.85.
        assert_eq!(c.probe_bps() / KBPS, 825);
    }

    #[test]
    fn rises_stepwise_after_the_hold_and_never_above_max() {
        let (mut c, t0) = controller();
        c.estimate("a", 500 * KBPS, t0).unwrap();
        assert_eq!(c.target_bps(), 425 * KBPS);
        // The link is free again: estimates of 5 Mbit/s every 250 ms.
        let mut steps = Vec::new();
        for i in 1..=80 {
            let now = secs(t0, i as f64 * 0.25);
            if let Some(ch) = c.estimate("a", 5000 * KBPS, now) {
                assert_eq!(ch.reason, ChangeReason::Recovery);
                steps.push((i as f64 * 0.25, ch.bps / KBPS));
            }
        }
        // First step one full hold after the first estimate that allowed it (t = 0.25 s).
        assert_eq!(steps[0], (2.25, 531));
        for w in steps.windows(2) {
            assert!(w[1].0 - w[0].0 >= RISE_HOLD.as_secs_f64(), "{steps:?}");
            assert!(
                w[1].1 as f64 <= w[0].1 as f64 * RISE_STEP + 1.0,
                "{steps:?}"
            );
        }
        assert_eq!(steps.last().unwrap().1, 2000, "reaches max: {steps:?}");
        assert_eq!(c.estimate("a", 9000 * KBPS, secs(t0, 30.0)), None);
    }

    #[test]
    fn no_flapping_around_the_target() {
        let (mut c, t0) = controller();
        c.estimate("a", 1000 * KBPS, t0).unwrap();
        assert_eq!(c.target_bps(), 850 * KBPS);
        // Estimates wobbling ±4 % around the link: neither a fall nor a rise.
        for i in 1..200 {
            let wobble = if i % 2 == 0 { 1040 } else { 960 };
            assert_eq!(
                c.estimate("a", wobble * KBPS, secs(t0, i as f64 * 0.1)),
                None
            );
        }
        // A rise interrupted by a dip restarts its hold.
        let t1 = secs(t0, 30.0);
        assert_eq!(c.estimate("a", 2000 * KBPS, t1), None);
        assert_eq!(c.estimate("a", 2000 * KBPS, secs(t0, 31.5)), None);
        assert_eq!(
            c.estimate("a", 1000 * KBPS, secs(t0, 31.6)),
            None,
            "dip within band"
        );
        assert_eq!(
            c.estimate("a", 2000 * KBPS, secs(t0, 32.5)),
            None,
            "hold restarted"
        );
        let ch = c.estimate("a", 2000 * KBPS, secs(t0, 34.5)).unwrap();
        assert_eq!(ch.bps, 1062 * KBPS + 500);
    }

    #[test]
    fn a_viewer_below_the_floor_keeps_the_floor_and_is_marked_constrained() {
        let (mut c, t0) = controller();
        c.estimate("good", 2000 * KBPS, t0);
        let ch = c.estimate("slow", 80 * KBPS, secs(t0, 0.1)).unwrap();
        assert_eq!(ch.bps, 150 * KBPS, "the floor holds");
        assert_eq!(ch.constrained, vec!["slow".to_string()]);
        // The slow viewer leaves: the others' estimate counts again (after the hold).
        assert_eq!(c.remove("slow", secs(t0, 1.0)), None);
        assert_eq!(c.estimate("good", 2000 * KBPS, secs(t0, 2.0)), None);
        let ch = c.estimate("good", 2000 * KBPS, secs(t0, 3.1)).unwrap();
        assert_eq!(ch.bps, 187 * KBPS + 500);
        assert!(ch.constrained.is_empty());
    }

    #[test]
    fn leaving_viewers_and_unknown_ones() {
        let (mut c, t0) = controller();
        assert_eq!(c.remove("nobody", t0), None);
        c.estimate("a", 400 * KBPS, t0).unwrap();
        c.remove("a", t0);
        assert_eq!(
            c.estimate("b", 420 * KBPS, secs(t0, 1.0)),
            None,
            "same band"
        );
        assert_eq!(c.target_bps(), 340 * KBPS);
    }

    #[test]
    fn config_bounds_are_checked() {
        let mut c = AdaptiveBitrateConfig::default();
        assert!(c.validate().is_ok());
        c.min_kbps = 3000;
        assert!(c.validate().unwrap_err().contains("must not exceed"));
        c.min_kbps = 10;
        assert!(c.validate().unwrap_err().contains("50..=50000"));
        let b = AdaptiveBitrateConfig::default().bounds(1_000_000, true);
        assert_eq!(
            (b.min_bps, b.max_bps, b.initial_bps, b.reserved_bps),
            (150_000, 2_500_000, 1_000_000, AUDIO_RESERVE_BPS)
        );
        assert_eq!(
            AdaptiveBitrateConfig::default()
                .bounds(1_000_000, false)
                .reserved_bps,
            0
        );
    }

    #[test]
    fn the_audio_share_is_left_free_and_counted_in_probes_and_the_floor() {
        let mut c = BitrateController::new(AbrBounds {
            min_bps: 150 * KBPS,
            max_bps: 2000 * KBPS,
            initial_bps: 1500 * KBPS,
            reserved_bps: AUDIO_RESERVE_BPS,
        });
        let t0 = Instant::now();
        // A 600 kbit/s path, its estimate ~500: 425 for the media, less the audio's 92.
        let ch = c.estimate("a", 500 * KBPS, t0).unwrap();
        assert_eq!(ch.bps, 425 * KBPS - AUDIO_RESERVE_BPS);
        // Probing for the next step asks for its video and the audio.
        let next_video = (333 * KBPS) as f64 * RISE_STEP * RISE_MARGIN;
        assert_eq!(
            c.probe_bps(),
            ((next_video + AUDIO_RESERVE_BPS as f64) / HEADROOM) as u64
        );
        // An estimate that leaves the video less than the floor: constrained, at the floor.
        let ch = c.estimate("b", 250 * KBPS, secs(t0, 0.1)).unwrap();
        assert_eq!(ch.bps, 150 * KBPS);
        assert_eq!(ch.constrained, vec!["b".to_string()]);
    }

    #[test]
    fn tracked_viewers_are_bounded() {
        let (mut c, t0) = controller();
        for i in 0..MAX_TRACKED + 10 {
            c.estimate(&format!("v{i}"), 3000 * KBPS, t0);
        }
        assert_eq!(c.estimates.len(), MAX_TRACKED);
    }
}
