//! Token buckets with time passed in, for the service's rate limits.
//!
//! Owns: the arithmetic of one bucket (refill at a steady rate up to a burst, take one token
//! per event) and the [`RateLimit`] setting it is built from.
//! Must not touch: clocks (callers pass `now`), what is being limited or what happens to
//! refused events — the routing core decides that.

use std::time::{Duration, Instant};

/// A rate limit: `per_second` events on average, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second (the sustained rate).
    pub per_second: u32,
    /// Tokens the bucket holds when full (the largest burst). 0 refuses everything.
    pub burst: u32,
}

impl RateLimit {
    pub const fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

/// One token bucket. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    /// Tokens now, in millitokens so a slow rate still refills between close events without
    /// floating point drift.
    millitokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            limit,
            millitokens: u64::from(limit.burst) * 1000,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last one (callers on several threads) adds nothing.
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed.is_zero() {
            return;
        }
        let cap = u64::from(self.limit.burst) * 1000;
        // millitokens = elapsed_ms * per_second; saturating keeps absurd gaps harmless.
        let gained = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.limit.per_second));
        self.millitokens = self.millitokens.saturating_add(gained).min(cap);
        // Advance only by the whole milliseconds counted, so sub-millisecond remainders are
        // not lost when events come in quick succession.
        self.last += Duration::from_millis(elapsed.as_millis() as u64);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        u32::try_from(self.millitokens / 1000).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(RateLimit::new(5, 10), t0);
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 10);
        // 5 per second: after 200 ms exactly one more.
        let t = t0 + Duration::from_millis(200);
        assert!(b.try_take(t));
        assert!(!b.try_take(t));
        // Many small steps add up (no rounding loss).
        let mut t = t;
        let mut taken = 0;
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            if b.try_take(t) {
                taken += 1;
            }
        }
        assert_eq!(taken, 5);
        // Never more than the burst, however long the pause.
        assert_eq!(b.available(t + Duration::from_secs(3600)), 10);
    }

    #[test]
    fn zero_burst_refuses_and_time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut none = TokenBucket::new(RateLimit::new(100, 0), t0);
        assert!(!none.try_take(t0 + Duration::from_secs(1)));
        let mut b = TokenBucket::new(RateLimit::new(1, 1), t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }
}
