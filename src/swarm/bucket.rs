//! A token bucket for bandwidth limits. Pure: the caller passes `now` and sleeps for the
//! returned duration.

use std::time::{Duration, Instant};

/// Allows `rate` bytes per second on average, with bursts of up to `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Take `n` bytes; returns how long to wait before sending them (zero if there are
    /// tokens). Debt is allowed, so large sends are paced rather than refused.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.take(500, t0), Duration::ZERO);
        assert_eq!(b.take(1000, t0), Duration::from_secs(1));
        // After waiting that second, the debt is paid and new tokens accrue.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(0, t1), Duration::ZERO);
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(b.take(200, t2), Duration::ZERO);
        assert!(b.take(100, t2) > Duration::ZERO);
    }

    #[test]
    fn long_idle_does_not_exceed_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(100, later), Duration::ZERO);
        assert_eq!(b.take(100, later), Duration::from_secs(1));
    }
}
