//! Rate limits: token buckets for client events per connection and for
//! accepted connections per shard.
//!
//! Sans-IO like the protocol: callers pass the time, so the limits are unit
//! tested without sleeping.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one client event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: answer with an error reply.
    Refuse,
    /// Over the limit for a sustained second: close the connection.
    Close,
}

/// Client events per second for one connection. A client over its budget
/// gets error replies; one that keeps sending refused events — more in one
/// second than its whole per-second budget, i.e. at least twice the rate —
/// is closed, since it is ignoring the replies.
#[derive(Debug, Clone)]
pub struct EventLimiter {
    bucket: TokenBucket,
    close_after: u32,
    window_start: Instant,
    refused_in_window: u32,
}

impl EventLimiter {
    /// A limiter allowing `rate_per_sec` with bursts of `burst`.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> EventLimiter {
        EventLimiter {
            bucket: TokenBucket::new(rate_per_sec, burst, now),
            close_after: rate_per_sec.max(10),
            window_start: now,
            refused_in_window: 0,
        }
    }

    /// Judges one event arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.bucket.try_take(now) {
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.refused_in_window > self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!((0..8).filter(|_| bucket.try_take(start)).count(), 5);
        let later = start + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| bucket.try_take(later)).count(), 3);
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| bucket.try_take(much_later)).count(), 5);
    }

    #[test]
    fn sustained_excess_closes() {
        let start = Instant::now();
        let mut limiter = EventLimiter::new(10, 10, start);
        let verdicts: Vec<Verdict> = (0..40).map(|_| limiter.check(start)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[10..20].iter().all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts[20], Verdict::Close);
        // A client that backs off after a refusal is never closed.
        let mut polite = EventLimiter::new(10, 10, start);
        for second in 0..5u64 {
            for i in 0..12u64 {
                let now = start + Duration::from_secs(second) + Duration::from_millis(i * 80);
                assert_ne!(polite.check(now), Verdict::Close);
            }
        }
    }
}
