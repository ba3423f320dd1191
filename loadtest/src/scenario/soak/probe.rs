//! Readings of the server: RSS and CPU time from `/proc/PID`, open file
//! descriptors (entries of `/proc/PID/fd`), and its own counters from
//! `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::http::{self, Endpoints};
use super::minute::{parse_prometheus, Span};
use super::state::{SoakShared, MINUTE_NS};
use crate::proc_stats;

/// One reading; a part that could not be read is `None`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSample {
    /// Resident set size.
    pub rss_bytes: Option<u64>,
    /// User + system CPU time.
    #[serde(skip)]
    pub cpu_ns: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<u64>,
    /// `/metrics`, summed over shards.
    #[serde(skip)]
    pub metrics: Option<BTreeMap<String, f64>>,
    /// `cinder_connections` (the reading's own connection included).
    pub connections: Option<u64>,
}

/// Reads the server.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The server's PID, if given.
    pub pid: Option<u32>,
    /// Where `/metrics` is.
    pub endpoints: Endpoints,
}

impl Probe {
    /// Takes a reading now.
    pub fn sample(&self) -> ServerSample {
        let proc_sample = self.pid.and_then(|pid| proc_stats::sample(pid).ok());
        let metrics = http::get(&self.endpoints, "/metrics", Duration::from_secs(10))
            .ok()
            .filter(|response| response.status == 200)
            .map(|response| parse_prometheus(&String::from_utf8_lossy(&response.body)));
        ServerSample {
            rss_bytes: proc_sample.map(|s| s.rss_bytes),
            cpu_ns: proc_sample.map(|s| s.cpu_ns),
            fds: self.pid.and_then(|pid| count_fds(pid).ok()),
            connections: super::minute::gauge(metrics.as_ref(), "cinder_connections"),
            metrics,
        }
    }
}

/// The server's RSS span of each minute (index: minute from 0).
pub type RssSpans = Arc<Mutex<Vec<Span>>>;

/// Reads the server's RSS every `every` from the soak's start until it
/// stops, keeping each minute's smallest and largest reading: one reading
/// a minute cannot tell a transient buffer from a floor that rises.
pub fn sample_rss(pid: u32, every: Duration, soak: Arc<SoakShared>, spans: RssSpans) {
    let start = soak.start_ns.load(std::sync::atomic::Ordering::Relaxed);
    let every_ns = every.as_nanos() as u64;
    for tick in 0u64.. {
        if soak.sleep_until(start + tick * every_ns) {
            return;
        }
        let Ok(sample) = proc_stats::sample(pid) else {
            continue;
        };
        let minute = ((crate::clock::now_ns() - start) / MINUTE_NS) as usize;
        if let Ok(mut spans) = spans.lock() {
            if spans.len() <= minute {
                spans.resize(minute + 1, Span::default());
            }
            spans[minute].add(sample.rss_bytes);
        }
    }
}

/// How many file descriptors process `pid` has open.
pub fn count_fds(pid: u32) -> std::io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_fds() {
        // Other tests open files concurrently: only a floor is certain
        // (stdin, stdout, stderr and the file held here).
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(count_fds(std::process::id()).unwrap() >= 4);
        drop(file);
        assert!(count_fds(u32::MAX).is_err());
    }
}
