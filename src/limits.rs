//! Rate limits: token buckets for client events per connection and for
//! accepted connections per shard.
//!
//! Sans-IO like the protocol: callers pass the time, so the limits are unit
//! tested without sleeping.

use std::time::Instant;

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

/// The shared settings of every connection's [`EventLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimit {
    /// Events per second.
    pub rate: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Client events per second for one connection. A client over its budget
/// gets error replies; one that keeps sending refused events — more in one
/// second than its whole per-second budget, i.e. at least twice the rate —
/// is closed, since it is ignoring the replies.
///
/// Sixteen bytes per connection: the settings live in [`EventLimit`] (one per
/// server), and times are milliseconds on the shard's clock.
#[derive(Debug, Clone)]
pub struct EventLimiter {
    tokens: f32,
    last_ms: u32,
    window_start_ms: u32,
    refused_in_window: u32,
}

impl EventLimiter {
    /// A full bucket at `now_ms`.
    pub fn new(limit: EventLimit, now_ms: u32) -> EventLimiter {
        EventLimiter {
            tokens: limit.burst.max(1) as f32,
            last_ms: now_ms,
            window_start_ms: now_ms,
            refused_in_window: 0,
        }
    }

    /// Judges one event arriving at `now_ms` (milliseconds on a clock that
    /// may wrap; only differences are used).
    pub fn check(&mut self, limit: EventLimit, now_ms: u32) -> Verdict {
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * limit.rate as f32).min(limit.burst.max(1) as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now_ms.wrapping_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        if self.refused_in_window > limit.rate.max(10) {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let limit = EventLimit {
            rate: 10,
            burst: 10,
        };
        let mut limiter = EventLimiter::new(limit, 0);
        let verdicts: Vec<Verdict> = (0..40).map(|_| limiter.check(limit, 0)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[10..20].iter().all(|v| *v == Verdict::Refuse));
        assert_eq!(verdicts[20], Verdict::Close);
        // A client that backs off after a refusal is never closed, and the
        // clock may wrap.
        let start = u32::MAX - 2000;
        let mut polite = EventLimiter::new(limit, start);
        for second in 0..5u32 {
            for i in 0..12u32 {
                let now = start.wrapping_add(second * 1000 + i * 80);
                assert_ne!(polite.check(limit, now), Verdict::Close);
            }
        }
    }

    #[test]
    fn a_limiter_is_small() {
        assert_eq!(std::mem::size_of::<EventLimiter>(), 16);
    }
}
