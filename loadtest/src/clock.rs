//! The process-wide monotonic clock.
//!
//! Timestamps are nanoseconds since the first call in this process, taken
//! from `Instant` (CLOCK_MONOTONIC). Publisher and receivers live in the same
//! process, so a latency is always a difference of two readings of this clock.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process first read the clock.
pub fn now_ns() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// Starts the clock; call once early so readings stay small.
pub fn init() {
    let _ = now_ns();
}
