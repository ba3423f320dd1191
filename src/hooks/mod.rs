//! Backend hooks: the application decides, over HTTP, who may connect, who
//! may join, and what a client event does — the way Phoenix apps decide in
//! `connect/3`, `join/3` and `handle_in/3`.
//!
//! Calls run on a small worker pool ([`pool`]) and come back to the owning
//! shard through its queue, so a slow or dead backend delays only the
//! connections waiting for it, never a shard. The wire format of each call
//! is in `docs/configuration.md` (section `[webhook]`).

pub mod pool;

use crate::config::config_section;
use crate::lifecycle::event::{EventKind, EventSet};

pub use pool::{HookFailure, HookOutcome, HookPool, HookRequest};

config_section! {
    /// `[webhook]`: where the backend is and how patient to be with it.
    pub struct HooksConfig {
        /// Base URL: calls go to `{url}/connect`, `{url}/join`, `{url}/event`.
        pub url: Option<String> = None,
        /// Deadline of one call (connect, send, response).
        pub timeout_ms: u64 = 3000,
        /// Worker threads making calls.
        pub workers: usize = 4,
        /// Calls waiting for a worker; beyond it calls fail at once as
        /// "backend overloaded" instead of queueing without bound.
        pub queue_size: usize = 1024,
        /// Sent as `Authorization: Bearer <secret>` so the backend can tell
        /// Cinder's calls from anyone else's.
        pub secret: Option<String> = None,
        /// Request headers of a WebSocket upgrade passed to the connect hook.
        pub forward_headers: Vec<String> = vec![
            "cookie".into(),
            "origin".into(),
            "user-agent".into(),
            "x-forwarded-for".into(),
        ],
        /// Lifecycle events sent to `{url}/events` (for routes with
        /// `lifecycle`): any of `leave`, `disconnect`, `channel_occupied`,
        /// `channel_vacated`, `member_added`, `member_removed`.
        pub events: Vec<String> = EventKind::ALL.iter().map(|k| k.as_str().to_string()).collect(),
        /// Events are delivered in batches, at most this late.
        pub events_batch_ms: u64 = 250,
        /// Most events in one batch.
        pub events_max_batch: usize = 500,
        /// Events waiting for delivery, all shards together; beyond it new
        /// ones are dropped (counted, logged once per episode).
        pub events_queue: usize = 100_000,
    }
}

impl HooksConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(("webhook.url", "must start with http:// or https://".into()));
            }
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(("webhook.timeout_ms", "must be between 10 and 60000".into()));
        }
        if !(1..=256).contains(&self.workers) {
            return Err(("webhook.workers", "must be between 1 and 256".into()));
        }
        if self.queue_size == 0 {
            return Err(("webhook.queue_size", "must be at least 1".into()));
        }
        if let Some(unknown) = self.events.iter().find(|e| EventKind::parse(e).is_none()) {
            return Err((
                "webhook.events",
                format!(
                    "{unknown:?} is not an event (leave, disconnect, channel_occupied, channel_vacated, member_added, member_removed)"
                ),
            ));
        }
        if !(1..=60_000).contains(&self.events_batch_ms) {
            return Err((
                "webhook.events_batch_ms",
                "must be between 1 and 60000".into(),
            ));
        }
        if !(1..=10_000).contains(&self.events_max_batch) {
            return Err((
                "webhook.events_max_batch",
                "must be between 1 and 10000".into(),
            ));
        }
        if self.events_queue == 0 {
            return Err(("webhook.events_queue", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The lifecycle events asked for.
    pub fn event_set(&self) -> EventSet {
        EventSet::of(self.events.iter().filter_map(|e| EventKind::parse(e)))
    }
}

/// The short reason a client sees when a hook produced no decision.
pub fn failure_reason(failure: &HookFailure) -> &'static str {
    match failure {
        HookFailure::Timeout => "backend timeout",
        HookFailure::Overloaded => "backend overloaded",
        HookFailure::Unreachable(_) | HookFailure::BadResponse(_) => "backend unavailable",
    }
}

#[cfg(test)]
mod tests;
