//! Transport-wide congestion control on the device's sessions, when the application asks for
//! it ([`CongestionControl`] in [`crate::PeerConfig::congestion_control`]).
//!
//! Owns: what each session's str0m `Rtc` is configured with for it (the transport-wide-cc
//! header extension, str0m's bandwidth estimator and the bounds it probes within) and how
//! often a session's estimate is reported ([`EstimateGate`]). It does not decide what the
//! encoder does with the estimates: that policy (lowest viewer, bounds, hysteresis, outliers)
//! belongs to the application (`kvs_app::abr`). It must not touch the shared RTP payloads:
//! sessions still write the same packets; str0m stamps each one with the session's own
//! transport sequence number as it leaves (in RTP mode too) and paces it at 1.1× the estimate.
//!
//! Why it is opt-in: str0m keeps a record of the last 1000 packets sent for the feedback
//! (~88 bytes each, ~88 KB per viewer) plus the estimator's state, which is about as much as
//! the rest of a session (see docs/BENCHMARKS.md).

use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::rtp::Extension;
use str0m::{Rtc, RtcConfig};

/// The header extension id Chrome offers transport-wide sequence numbers with.
const TWCC_EXTENSION_ID: u8 = 3;
/// Least time between two estimates reported for one session. str0m produces one per TWCC
/// feedback (about every 100 ms); the application needs a few a second, not every one.
pub const ESTIMATE_MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Congestion control settings for every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CongestionControl {
    /// Where each session's estimate starts (the encoder's starting target).
    pub initial_bps: u64,
    /// Bounds the estimator works within: it probes for up to `max_bps`, and str0m keeps at
    /// least `min_bps` going (padding) only while the estimate allows it.
    pub min_bps: u64,
    pub max_bps: u64,
    /// What the estimator probes for (`PeerCommand::SetDesiredBitrate`); `None`: `max_bps`.
    pub desired_bps: Option<u64>,
}

impl CongestionControl {
    /// Adds what the sessions need to `rc`: the transport-wide-cc extension and the estimator.
    pub(crate) fn configure(&self, rc: RtcConfig) -> RtcConfig {
        rc.set_extension(TWCC_EXTENSION_ID, Extension::TransportSequenceNumber)
            .enable_bwe(Some(Bitrate::bps(self.initial_bps.max(1))))
    }

    /// Per-session bounds, set on a new `Rtc` and again when the desired bitrate changes.
    /// The minimum given to str0m is 0: a floor
    /// there would make it pad a viewer up to it, which is not what the floor means here
    /// (see `kvs_app::abr`).
    pub(crate) fn start(&self, rtc: &mut Rtc) {
        let desired = self.desired_bps.unwrap_or(self.max_bps).max(1);
        rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
    }
}

/// Lets a session's estimates through at most every [`ESTIMATE_MIN_INTERVAL`], and never the
/// same value twice in a row (str0m repeats its last estimate).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EstimateGate {
    last: Option<(Instant, u64)>,
}

impl EstimateGate {
    /// The estimate in bit/s to report now, if any.
    pub(crate) fn pass(&mut self, kind: &BweKind, now: Instant) -> Option<u64> {
        let BweKind::Twcc { estimate, .. } = kind else {
            return None;
        };
        let bps = estimate.as_u64();
        match self.last {
            Some((at, last)) if last == bps || now < at + ESTIMATE_MIN_INTERVAL => None,
            _ => {
                self.last = Some((now, bps));
                Some(bps)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twcc(kbps: u64) -> BweKind {
        BweKind::Twcc {
            estimate: Bitrate::kbps(kbps),
            can_probe: true,
        }
    }

    #[test]
    fn estimates_are_rate_limited_and_repeats_dropped() {
        let t0 = Instant::now();
        let mut g = EstimateGate::default();
        assert_eq!(g.pass(&twcc(500), t0), Some(500_000));
        assert_eq!(g.pass(&twcc(400), t0 + Duration::from_millis(100)), None);
        let t1 = t0 + ESTIMATE_MIN_INTERVAL;
        assert_eq!(g.pass(&twcc(400), t1), Some(400_000));
        assert_eq!(g.pass(&twcc(400), t1 + Duration::from_secs(1)), None);
        assert_eq!(
            g.pass(&twcc(450), t1 + Duration::from_secs(1)),
            Some(450_000)
        );
    }
}
