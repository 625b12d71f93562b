//! Time as the device sees it.
//!
//! Protocol code in the core layer takes time as an argument (sans-IO); this trait is how the
//! edges obtain it, so a test or a device port can supply its own.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync {
    /// Monotonic time, for timers and pacing.
    fn now(&self) -> Instant;
    /// Wall-clock time as a duration since the Unix epoch (for signatures, logs, expiry).
    fn unix_time(&self) -> Duration;
}

/// The host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_time(&self) -> Duration {
        // A host clock set before 1970 is a misconfiguration; report the epoch rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2020_and_monotonic() {
        let clock = SystemClock;
        assert!(clock.unix_time() > Duration::from_secs(1_577_836_800));
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
