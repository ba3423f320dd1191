//! What the bridge reports about itself: the app's Redis up or down, and
//! its counters, written by the bridge thread (and the shards, for what
//! they could not hand it) and read by `/healthz` and `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::message::Ignored;
use crate::cluster::status::RedisHealth;

/// The labels of ignored messages: the decoder's, and `cinder_peer` (a
/// broadcast another Cinder node of this cluster published, delivered here
/// through the cluster already).
pub const IGNORED_LABELS: [&str; Ignored::LABELS.len() + 1] = {
    let mut labels = ["cinder_peer"; Ignored::LABELS.len() + 1];
    let mut i = 0;
    while i < Ignored::LABELS.len() {
        labels[i] = Ignored::LABELS[i];
        i += 1;
    }
    labels
};

/// The bridge's state and counters.
#[derive(Debug)]
pub struct BridgeStatus {
    /// The app's channel.
    pub channel: String,
    /// This node's name among the app's nodes.
    pub node_name: String,
    redis: RedisHealth,
    /// Messages read from the app's channel.
    pub received: AtomicU64,
    /// Messages handed to the shards as broadcasts.
    pub delivered: AtomicU64,
    ignored: [AtomicU64; IGNORED_LABELS.len()],
    /// Cinder broadcasts published on the app's channel.
    pub published: AtomicU64,
    /// Cinder broadcasts not published: the queue was full, Redis was
    /// away, or the payload could not be written as a term.
    pub dropped: AtomicU64,
    /// Times the connection came back after being lost.
    pub reconnects: AtomicU64,
}

impl BridgeStatus {
    /// The status of a bridge on `channel` as node `node_name`.
    pub fn new(channel: String, node_name: String) -> BridgeStatus {
        BridgeStatus {
            channel,
            node_name,
            redis: RedisHealth::default(),
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            ignored: Default::default(),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        }
    }

    /// Records whether Redis answers, as of `now_ms`.
    pub fn set_redis(&self, up: bool, now_ms: u64) {
        self.redis.set(up, now_ms);
    }

    /// Whether Redis answered last time it was asked.
    pub fn redis_up(&self) -> bool {
        self.redis.up()
    }

    /// Counts one ignored message under `label` (one of [`IGNORED_LABELS`]).
    pub fn ignored(&self, label: &str) {
        if let Some(i) = IGNORED_LABELS.iter().position(|l| *l == label) {
            self.ignored[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The `phoenix_pubsub` object of `/healthz`.
    pub fn health_json(&self) -> String {
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        out.extend_from_slice(self.redis.json_fields().as_bytes());
        out.extend_from_slice(b",\"channel\":");
        crate::protocol::message::write_json_string(&mut out, &self.channel);
        out.extend_from_slice(b",\"node\":");
        crate::protocol::message::write_json_string(&mut out, &self.node_name);
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }

    /// The bridge's metrics in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        #[rustfmt::skip]
        let rows: [(&str, &str, u64, &str); 6] = [
            ("cinder_phoenix_pubsub_redis_up",          "gauge",   u64::from(self.redis_up()), "1 while the app's Redis answers, 0 while it does not."),
            ("cinder_phoenix_pubsub_received_total",    "counter", load(&self.received),       "Messages read from the app's PubSub channel."),
            ("cinder_phoenix_pubsub_delivered_total",   "counter", load(&self.delivered),      "App messages delivered to this node's subscribers as broadcasts."),
            ("cinder_phoenix_pubsub_published_total",   "counter", load(&self.published),      "Cinder broadcasts published on the app's channel."),
            ("cinder_phoenix_pubsub_dropped_total",     "counter", load(&self.dropped),        "Cinder broadcasts not published: queue full, Redis away, or not writable as a term."),
            ("cinder_phoenix_pubsub_reconnects_total",  "counter", load(&self.reconnects),     "Times the connection to the app's Redis came back after being lost."),
        ];
        crate::metrics::write_rows(out, &rows);
        let name = "cinder_phoenix_pubsub_ignored_total";
        let _ = writeln!(
            out,
            "# HELP {name} Messages on the app's channel not delivered, by reason.\n# TYPE {name} counter"
        );
        for (label, counter) in IGNORED_LABELS.iter().zip(&self.ignored) {
            let _ = writeln!(out, "{name}{{reason=\"{label}\"}} {}", load(counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_metrics_say_what_the_bridge_knows() {
        let status = BridgeStatus::new("phx:Elixir.A.Adapter".into(), "cinder-1".into());
        assert_eq!(
            status.health_json(),
            r#"{"redis":"down","since":0,"channel":"phx:Elixir.A.Adapter","node":"cinder-1"}"#
        );
        status.set_redis(true, 5);
        status.ignored("presence");
        status.ignored("cinder_peer");
        status.ignored("no such label");
        BridgeStatus::add(&status.delivered, 2);
        let mut text = String::new();
        status.render_prometheus(&mut text);
        assert!(text.contains("cinder_phoenix_pubsub_redis_up 1"));
        assert!(text.contains("cinder_phoenix_pubsub_delivered_total 2"));
        assert!(text.contains("cinder_phoenix_pubsub_ignored_total{reason=\"presence\"} 1"));
        assert!(text.contains("cinder_phoenix_pubsub_ignored_total{reason=\"cinder_peer\"} 1"));
        assert!(text.contains("cinder_phoenix_pubsub_ignored_total{reason=\"malformed\"} 0"));
        assert!(status
            .health_json()
            .starts_with(r#"{"redis":"up","since":5,"#));
    }
}
