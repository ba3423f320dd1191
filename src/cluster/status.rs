//! What the bus reports about itself: Redis up or down, the nodes it
//! sees, and its counters, written by the bus thread (and the shards, for
//! what they could not hand it) and read by `/healthz` and `/metrics`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds, in seconds, of the publish round-trip histogram's buckets.
const RTT_BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Whether a Redis connection answers, and since when: the bus's and the
/// Phoenix PubSub bridge's.
#[derive(Debug, Default)]
pub struct RedisHealth {
    up: AtomicBool,
    /// Unix milliseconds of the last change of `up`.
    since_ms: AtomicU64,
}

impl RedisHealth {
    /// Records whether Redis answers, as of `now_ms`.
    pub fn set(&self, up: bool, now_ms: u64) {
        if self.up.swap(up, Ordering::AcqRel) != up || self.since_ms.load(Ordering::Acquire) == 0 {
            self.since_ms.store(now_ms, Ordering::Release);
        }
    }

    /// Whether Redis answered last time it was asked.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// `"redis":"up"|"down","since":<ms>`, for a `/healthz` object.
    pub fn json_fields(&self) -> String {
        format!(
            r#""redis":"{}","since":{}"#,
            if self.up() { "up" } else { "down" },
            self.since_ms.load(Ordering::Acquire)
        )
    }
}

/// The bus's state and counters.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    redis: RedisHealth,
    /// Other nodes heard within `node_timeout_ms`.
    nodes_up: AtomicU64,
    /// Topics whose channel this node listens to.
    topics: AtomicU64,
    /// Bus messages published to Redis.
    pub sent: AtomicU64,
    /// Bus messages received from other nodes.
    pub received: AtomicU64,
    /// Bus messages not sent (queue full, or Redis failed them).
    pub dropped: AtomicU64,
    /// Messages from Redis that were not valid envelopes.
    pub malformed: AtomicU64,
    /// Times the connection to Redis came back after being lost.
    pub reconnects: AtomicU64,
    /// Nodes that joined (first heard, or heard again after being down).
    pub nodes_joined: AtomicU64,
    /// Nodes declared down (silent, or leaving).
    pub nodes_left: AtomicU64,
    /// The names of the nodes heard (never forgotten: a name comes back
    /// with its node), for the Phoenix PubSub bridge to tell a Cinder
    /// node's broadcast, delivered through the cluster already.
    names: Mutex<HashSet<String>>,
    rtt_buckets: [AtomicU64; RTT_BUCKETS.len()],
    rtt_count: AtomicU64,
    rtt_sum_us: AtomicU64,
}

impl ClusterStatus {
    /// Records whether Redis answers, as of `now_ms`.
    pub fn set_redis(&self, up: bool, now_ms: u64) {
        self.redis.set(up, now_ms);
    }

    /// Whether Redis answered last time it was asked.
    pub fn redis_up(&self) -> bool {
        self.redis.up()
    }

    /// Records the number of other nodes up and of topics listened to.
    pub fn set_counts(&self, nodes_up: usize, topics: usize) {
        self.nodes_up.store(nodes_up as u64, Ordering::Relaxed);
        self.topics.store(topics as u64, Ordering::Relaxed);
    }

    /// Records the name of a node heard (by its heartbeat).
    pub fn note_name(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if !names.contains(name) {
            names.insert(name.to_string());
        }
    }

    /// Whether `name` is the name of a node of this cluster ever heard.
    pub fn is_node_name(&self, name: &str) -> bool {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.contains(name)
    }

    /// Records one publish round trip to Redis.
    pub fn record_rtt(&self, rtt: Duration) {
        let seconds = rtt.as_secs_f64();
        if let Some(i) = RTT_BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.rtt_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.rtt_count.fetch_add(1, Ordering::Relaxed);
        self.rtt_sum_us
            .fetch_add(rtt.as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The `cluster` object of `/healthz`: Redis up or down since when, and
    /// the nodes up, this one included.
    pub fn health_json(&self) -> String {
        format!(
            r#"{{{},"nodes":{}}}"#,
            self.redis.json_fields(),
            self.nodes_up.load(Ordering::Relaxed) + 1
        )
    }

    /// The bus's metrics in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        #[rustfmt::skip]
        let rows: [(&str, &str, u64, &str); 10] = [
            ("cinder_cluster_redis_up",                 "gauge",   u64::from(self.redis_up()), "1 while Redis answers, 0 while it does not."),
            ("cinder_cluster_nodes",                    "gauge",   load(&self.nodes_up) + 1,   "Nodes up, this one included."),
            ("cinder_cluster_topics",                   "gauge",   load(&self.topics),         "Topics whose Redis channel this node listens to."),
            ("cinder_cluster_messages_sent_total",      "counter", load(&self.sent),           "Bus messages published to Redis."),
            ("cinder_cluster_messages_received_total",  "counter", load(&self.received),       "Bus messages received from other nodes."),
            ("cinder_cluster_messages_dropped_total",   "counter", load(&self.dropped),        "Bus messages not sent: queue full or Redis unreachable."),
            ("cinder_cluster_messages_malformed_total", "counter", load(&self.malformed),      "Messages on the bus that were not valid envelopes."),
            ("cinder_cluster_redis_reconnects_total",   "counter", load(&self.reconnects),     "Times the connection to Redis came back after being lost."),
            ("cinder_cluster_nodes_joined_total",       "counter", load(&self.nodes_joined),   "Nodes seen coming up."),
            ("cinder_cluster_nodes_left_total",         "counter", load(&self.nodes_left),     "Nodes declared down (silent for node_timeout_ms, or leaving)."),
        ];
        crate::metrics::write_rows(out, &rows);
        let name = "cinder_cluster_publish_rtt_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Round trip of a publish to Redis (one pipeline of bus messages).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in RTT_BUCKETS.iter().zip(&self.rtt_buckets) {
            cumulative += load(bucket);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = load(&self.rtt_count);
        let sum = load(&self.rtt_sum_us) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_metrics_say_what_the_bus_knows() {
        let status = ClusterStatus::default();
        assert_eq!(
            status.health_json(),
            r#"{"redis":"down","since":0,"nodes":1}"#
        );
        status.set_redis(true, 1_000);
        status.set_redis(true, 2_000);
        status.set_counts(2, 5);
        assert_eq!(
            status.health_json(),
            r#"{"redis":"up","since":1000,"nodes":3}"#
        );
        status.record_rtt(Duration::from_micros(300));
        status.record_rtt(Duration::from_secs(3));
        ClusterStatus::add(&status.sent, 4);
        let mut text = String::new();
        status.render_prometheus(&mut text);
        assert!(text.contains("cinder_cluster_messages_sent_total 4"));
        assert!(text.contains("cinder_cluster_nodes 3"));
        assert!(text.contains("cinder_cluster_publish_rtt_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("cinder_cluster_publish_rtt_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("cinder_cluster_publish_rtt_seconds_count 2"));
    }
}
