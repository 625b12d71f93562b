//! Reconnection backoff, as the seed system does it: after a failure wait 5, 10, 20, 40, then
//! 60 s between attempts, forever; a success resets the sequence.
//!
//! Pure state, no clock: the caller sleeps for the returned delay. That keeps the policy testable
//! and lets the event stream announce each delay before it is waited.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// Delay before the first retry after a failure.
    #[serde(with = "crate::config::duration_secs")]
    pub initial: Duration,
    /// The delay doubles up to this cap.
    #[serde(with = "crate::config::duration_secs")]
    pub max: Duration,
    /// An attempt that has not completed after this long counts as failed.
    #[serde(with = "crate::config::duration_secs")]
    pub attempt_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(15),
        }
    }
}

/// The retry sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// Record a failed attempt; returns how long to wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        // 2^failures, saturating: after ~30 failures the shift would overflow.
        let factor = 1u32.checked_shl(self.failures).unwrap_or(u32::MAX);
        self.failures = self.failures.saturating_add(1);
        self.config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max)
    }

    /// Record a success: the next failure starts the sequence again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Duration {
        self.config.attempt_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_seed_sequence_and_caps() {
        let mut b = Backoff::new(BackoffConfig::default());
        let secs: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(b.failures(), 8);
    }

    #[test]
    fn reset_restarts_and_many_failures_do_not_overflow() {
        let mut b = Backoff::new(BackoffConfig::default());
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(5));
    }
}
