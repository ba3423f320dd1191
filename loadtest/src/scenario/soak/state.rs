//! What the soak's threads share: the event counters, the run's clock,
//! the publisher's per-minute sequence boundaries and the failure tallies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::minute::Counters;

/// Nanoseconds in a minute.
pub const MINUTE_NS: u64 = 60_000_000_000;

/// State shared by the main thread, the client loops, the publisher, the
/// long-poll clients and the abuser.
#[derive(Debug, Default)]
pub struct SoakShared {
    /// Event counters.
    pub counters: Counters,
    /// Set when the run is over: every thread stops.
    pub stop: AtomicBool,
    /// Set when the healthy subscribers have joined and the mixed load runs.
    pub running: AtomicBool,
    /// When the load started ([`crate::clock`] ns); minute m covers
    /// `start + m·60 s .. start + (m+1)·60 s`.
    pub start_ns: AtomicU64,
    /// `boundaries[m][t]`: the first sequence number of topic `t`
    /// published in minute `m`; the entry after the last minute holds the
    /// totals. Written by the publisher only.
    pub boundaries: Mutex<Vec<Vec<u64>>>,
    /// Sequence numbers, per topic, of messages in failed publish requests.
    pub uncertain: Mutex<Vec<Vec<u64>>>,
    /// Failures by reason (`churn: …`, `healthy: …`, `publish: …`).
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// Abusive connections by kind and outcome.
    pub abuse: Mutex<BTreeMap<String, u64>>,
}

impl SoakShared {
    /// Shared state for `topics` healthy topics.
    pub fn new(topics: usize) -> SoakShared {
        SoakShared {
            uncertain: Mutex::new(vec![Vec::new(); topics]),
            ..SoakShared::default()
        }
    }

    /// Whether the run is over.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The load's start, once it runs.
    pub fn started(&self) -> Option<u64> {
        self.running
            .load(Ordering::Acquire)
            .then(|| self.start_ns.load(Ordering::Relaxed))
    }

    /// Counts one failure under `reason`.
    pub fn note_failure(&self, reason: impl Into<String>) {
        if let Ok(mut failures) = self.failures.lock() {
            *failures.entry(reason.into()).or_insert(0) += 1;
        }
    }

    /// Counts one abusive connection's outcome under `what`.
    pub fn note_abuse(&self, what: impl Into<String>) {
        if let Ok(mut abuse) = self.abuse.lock() {
            *abuse.entry(what.into()).or_insert(0) += 1;
        }
    }

    /// The boundary row of minute `m`, once the publisher wrote it.
    pub fn boundary(&self, minute: usize) -> Option<Vec<u64>> {
        self.boundaries.lock().ok()?.get(minute).cloned()
    }

    /// Sleeps until `at_ns` or until the run stops; returns whether it
    /// stopped.
    pub fn sleep_until(&self, at_ns: u64) -> bool {
        loop {
            if self.stopped() {
                return true;
            }
            let now = crate::clock::now_ns();
            if now >= at_ns {
                return false;
            }
            let nap = (at_ns - now).min(100_000_000);
            std::thread::sleep(std::time::Duration::from_nanos(nap));
        }
    }
}
