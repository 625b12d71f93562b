//! A sans-IO frame pacer: when is each frame due?
//!
//! Owns the arithmetic of playing timestamped frames in real time. Sources feed it each frame's
//! *source* timestamp (µs) and the current time; it answers with the [`Instant`] the frame is
//! due, the frame's timestamp on a monotonic *output* timeline, and whether to send, wait, or
//! skip. It never sleeps or reads a clock itself (time is passed in), so it is tested with
//! virtual time.
//!
//! - Anchored at the first frame: frame `t` is due at `anchor + (t − t_first)`.
//! - Looping sources: when timestamps go backwards (a file restarts), the output timeline
//!   continues after the last frame (plus the last frame interval), so it stays monotonic.
//! - Late frames: a frame up to `max_lateness` late is sent at once (the source catches up by
//!   sending the next frames back to back). Beyond that, [`LatePolicy::Reanchor`] moves the
//!   anchor so the frame is due now (the lost time is skipped, the output timeline jumps by it)
//!   and [`LatePolicy::Skip`] tells the caller to drop frames until it is back on schedule.

use std::time::{Duration, Instant};

/// What to do with frames that are later than [`PacerConfig::max_lateness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePolicy {
    /// Send the frame now and shift the schedule (for video: dropping would break decoding).
    Reanchor,
    /// Drop late frames until back on schedule (for audio: every frame stands alone).
    Skip,
}

/// Pacer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerConfig {
    /// Lateness up to which frames are still sent (catching up).
    pub max_lateness: Duration,
    pub late_policy: LatePolicy,
    /// Interval assumed after the last frame before a loop restart when it cannot be inferred
    /// (a single-frame source).
    pub default_frame_interval_us: u64,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            max_lateness: Duration::from_millis(200),
            late_policy: LatePolicy::Reanchor,
            default_frame_interval_us: 33_333,
        }
    }
}

/// What the caller should do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceAction {
    /// The frame is due in the future: wait until `due`, then send it.
    Wait,
    /// The frame is due (or late within the allowance): send it now.
    SendNow,
    /// The frame is too late under [`LatePolicy::Skip`]: drop it.
    Skip,
}

/// The pacer's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paced {
    /// When the frame is due.
    pub due: Instant,
    /// The frame's timestamp on the monotonic output timeline (0 for the first frame).
    pub output_ts_us: u64,
    pub action: PaceAction,
}

/// See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Pacer {
    config: PacerConfig,
    /// (instant, output timestamp) the schedule is anchored at.
    anchor: Option<(Instant, u64)>,
    /// Source timestamp of the previous frame and its output timestamp.
    last: Option<(u64, u64)>,
    /// Output minus source timestamp.
    offset: i128,
    last_interval_us: Option<u64>,
}

impl Pacer {
    pub fn new(config: PacerConfig) -> Self {
        Self {
            config,
            anchor: None,
            last: None,
            offset: 0,
            last_interval_us: None,
        }
    }

    /// Forget the schedule: the next frame anchors a new one (after a stop/start). The output
    /// timeline continues from where it was.
    pub fn reset(&mut self) {
        self.anchor = None;
    }

    /// Schedule the frame with source timestamp `ts_us`, at time `now`.
    pub fn pace(&mut self, ts_us: u64, now: Instant) -> Paced {
        let out_ts = match self.last {
            None => {
                self.offset = -i128::from(ts_us);
                0
            }
            Some((last_src, last_out)) => {
                if ts_us < last_src {
                    // The source looped: continue after the previous frame.
                    let gap = self
                        .last_interval_us
                        .unwrap_or(self.config.default_frame_interval_us);
                    let out = last_out.saturating_add(gap);
                    self.offset = i128::from(out) - i128::from(ts_us);
                    out
                } else {
                    self.last_interval_us = Some(ts_us - last_src).filter(|&d| d > 0);
                    u64::try_from(i128::from(ts_us) + self.offset).unwrap_or(last_out)
                }
            }
        };
        self.last = Some((ts_us, out_ts));

        let (anchor_at, anchor_ts) = *self.anchor.get_or_insert((now, out_ts));
        let mut due = anchor_at + Duration::from_micros(out_ts.saturating_sub(anchor_ts));
        let mut out_ts = out_ts;
        let action = if due > now {
            PaceAction::Wait
        } else if now - due <= self.config.max_lateness {
            PaceAction::SendNow
        } else {
            match self.config.late_policy {
                LatePolicy::Skip => PaceAction::Skip,
                LatePolicy::Reanchor => {
                    let behind = now - due;
                    tracing::debug!(?behind, "pacer re-anchoring after falling behind");
                    // Shift the output timeline by the time lost, so it keeps matching
                    // real time for the receiver.
                    let behind_us = behind.as_micros() as u64;
                    out_ts = out_ts.saturating_add(behind_us);
                    self.offset += i128::from(behind_us);
                    self.last = Some((ts_us, out_ts));
                    self.anchor = Some((now, out_ts));
                    due = now;
                    PaceAction::SendNow
                }
            }
        };
        Paced {
            due,
            output_ts_us: out_ts,
            action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn frames_are_due_relative_to_the_first() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        let a = p.pace(5_000_000, t0);
        assert_eq!(
            (a.due, a.output_ts_us, a.action),
            (t0, 0, PaceAction::SendNow)
        );
        let b = p.pace(5_033_000, t0 + ms(1));
        assert_eq!(b.due, t0 + Duration::from_micros(33_000));
        assert_eq!((b.output_ts_us, b.action), (33_000, PaceAction::Wait));
        // Slightly late: send now, keep the schedule.
        let c = p.pace(5_066_000, t0 + ms(100));
        assert_eq!(c.action, PaceAction::SendNow);
        assert_eq!(c.due, t0 + Duration::from_micros(66_000));
        let d = p.pace(5_099_000, t0 + ms(100));
        assert_eq!(d.action, PaceAction::SendNow, "catching up");
        let e = p.pace(5_132_000, t0 + ms(100));
        assert_eq!(e.action, PaceAction::Wait);
    }

    #[test]
    fn looping_source_keeps_output_monotonic() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        for (i, ts) in [0u64, 20_000, 40_000].iter().enumerate() {
            let r = p.pace(*ts, t0 + Duration::from_micros(*ts));
            assert_eq!(r.output_ts_us, i as u64 * 20_000);
        }
        // Restart: due one interval after the last frame.
        let r = p.pace(0, t0 + ms(59));
        assert_eq!(r.output_ts_us, 60_000);
        assert_eq!(r.due, t0 + ms(60));
        assert_eq!(r.action, PaceAction::Wait);
        let r = p.pace(20_000, t0 + ms(61));
        assert_eq!(r.output_ts_us, 80_000);
        assert_eq!(r.due, t0 + ms(80));
    }

    #[test]
    fn far_behind_reanchors_or_skips() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        p.pace(0, t0);
        // A 2 s stall: re-anchor, output jumps by the time lost.
        let r = p.pace(33_000, t0 + ms(2_033));
        assert_eq!(r.action, PaceAction::SendNow);
        assert_eq!(r.due, t0 + ms(2_033));
        assert_eq!(r.output_ts_us, 2_033_000);
        let r = p.pace(66_000, t0 + ms(2_034));
        assert_eq!(r.due, t0 + ms(2_066));
        assert_eq!(r.output_ts_us, 2_066_000);

        let mut p = Pacer::new(PacerConfig {
            late_policy: LatePolicy::Skip,
            ..PacerConfig::default()
        });
        p.pace(0, t0);
        assert_eq!(p.pace(20_000, t0 + ms(1_000)).action, PaceAction::Skip);
        assert_eq!(p.pace(820_000, t0 + ms(1_000)).action, PaceAction::SendNow);
        assert_eq!(p.pace(1_020_000, t0 + ms(1_000)).action, PaceAction::Wait);
    }

    #[test]
    fn reset_reanchors_without_rewinding_output() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default());
        p.pace(0, t0);
        p.pace(33_000, t0 + ms(33));
        p.reset();
        let r = p.pace(66_000, t0 + ms(10_000));
        assert_eq!((r.due, r.action), (t0 + ms(10_000), PaceAction::SendNow));
        assert_eq!(r.output_ts_us, 66_000);
    }
}
