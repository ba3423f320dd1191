//! Counters each shard keeps about itself, read by `GET /metrics`.
//!
//! Every counter has exactly one writer (its shard thread), so updates are
//! relaxed atomic adds on a cache line nobody else writes: no lock and no
//! contention on the hot path. Readers sum all shards when rendering.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::history::RecoveryFailure;

/// The counters of one shard.
#[derive(Debug, Default)]
#[repr(align(128))] // keep shards' counters on separate cache lines
pub struct ShardMetrics {
    /// Connections currently open (HTTP and WebSocket).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Accepts refused because the shard was full.
    pub refused: AtomicU64,
    /// WebSocket upgrades completed.
    pub websocket_upgrades: AtomicU64,
    /// Channels currently joined.
    pub channels: AtomicU64,
    /// Broadcasts published from this shard (API or client events).
    pub broadcasts: AtomicU64,
    /// Frames of broadcasts queued to subscribers on this shard.
    pub deliveries: AtomicU64,
    /// Binary broadcasts not delivered to V1 or long-poll subscribers (they
    /// have no binary form).
    pub binary_skipped_v1: AtomicU64,
    /// Client messages received over WebSocket.
    pub client_messages: AtomicU64,
    /// Connections closed for exceeding the send buffer limit.
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed for protocol errors (bad frames, bad JSON, too big).
    pub protocol_closes: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closes: AtomicU64,
    /// Client events refused by the per-connection rate limit.
    pub rate_limited: AtomicU64,
    /// Times accepting paused because the shard's accept rate was used up.
    pub accept_throttled: AtomicU64,
    /// Long-poll sessions currently open.
    pub longpoll_sessions: AtomicU64,
    /// Long-poll requests moved to the shard owning their session.
    pub longpoll_handovers: AtomicU64,
    /// Long-poll requests forwarded to the cluster node owning their session.
    pub longpoll_forwarded: AtomicU64,
    /// Presence diffs sent (one per changed topic per shard per loop turn).
    pub presence_diffs: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_written: AtomicU64,
    /// Vectored write calls made.
    pub write_calls: AtomicU64,
    /// Joins on history topics that asked to recover (`since`).
    pub recoveries: AtomicU64,
    /// Of those, joins that got every missed broadcast.
    pub recovered: AtomicU64,
    /// Of those, joins told `recovered: false`, by [`RecoveryFailure`]
    /// (in [`RecoveryFailure::ALL`] order).
    pub recovery_failed: [AtomicU64; 4],
    /// Broadcasts pushed to recovering clients.
    pub replayed: AtomicU64,
    /// Estimated memory of the histories this shard owns (gauge).
    pub history_bytes: AtomicU64,
    /// Topics with a history on this shard (gauge).
    pub history_topics: AtomicU64,
    /// Topic histories dropped to stay under `history.memory_limit`.
    pub history_evicted: AtomicU64,
    /// Cluster: missing offsets of a history topic filled from Redis.
    pub history_gaps_filled: AtomicU64,
    /// Cluster: gaps that could not be filled (subscribers got `phx_error`).
    pub history_gaps_lost: AtomicU64,
}

impl ShardMetrics {
    /// Adds `n` to a counter (relaxed: the value is only ever summed for display).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge.
    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Reads one counter out of a shard's set.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// Every exported metric, in output order: name, Prometheus type, the
/// counter it reads, help text. Kept as a table, one metric a row, so adding
/// a counter is one line here.
#[rustfmt::skip]
const METRICS: [(&str, &str, Field, &str); 28] = [
    ("cinder_connections",                      "gauge",   |m| &m.connections,          "Open connections."),
    ("cinder_connections_accepted_total",       "counter", |m| &m.accepted,             "Connections accepted."),
    ("cinder_connections_refused_total",        "counter", |m| &m.refused,              "Connections refused because a shard was full."),
    ("cinder_client_events_rate_limited_total", "counter", |m| &m.rate_limited,         "Client events refused by the per-connection rate limit."),
    ("cinder_accept_throttled_total",           "counter", |m| &m.accept_throttled,     "Times a shard paused accepting because its accept rate was used up."),
    ("cinder_websocket_upgrades_total",         "counter", |m| &m.websocket_upgrades,   "WebSocket upgrades completed."),
    ("cinder_channels",                         "gauge",   |m| &m.channels,             "Channels joined."),
    ("cinder_broadcasts_total",                 "counter", |m| &m.broadcasts,           "Broadcasts published."),
    ("cinder_deliveries_total",                 "counter", |m| &m.deliveries,           "Broadcast frames queued to subscribers."),
    ("cinder_binary_skipped_v1_total",          "counter", |m| &m.binary_skipped_v1,    "Binary broadcasts not sent to V1 or long-poll subscribers (no binary form)."),
    ("cinder_longpoll_sessions",                "gauge",   |m| &m.longpoll_sessions,    "Long-poll sessions open."),
    ("cinder_longpoll_handovers_total",         "counter", |m| &m.longpoll_handovers,   "Long-poll requests moved to the shard owning their session."),
    ("cinder_longpoll_forwarded_total",         "counter", |m| &m.longpoll_forwarded,   "Long-poll requests forwarded to the cluster node owning their session."),
    ("cinder_presence_diffs_total",             "counter", |m| &m.presence_diffs,       "Presence diffs sent (one per changed topic, shard and loop turn)."),
    ("cinder_client_messages_total",            "counter", |m| &m.client_messages,      "Client messages received."),
    ("cinder_slow_consumer_closes_total",       "counter", |m| &m.slow_consumer_closes, "Connections closed as slow consumers."),
    ("cinder_protocol_closes_total",            "counter", |m| &m.protocol_closes,      "Connections closed for protocol errors."),
    ("cinder_idle_closes_total",                "counter", |m| &m.idle_closes,          "Connections closed by the idle timeout."),
    ("cinder_bytes_written_total",              "counter", |m| &m.bytes_written,        "Bytes written to sockets."),
    ("cinder_write_calls_total",                "counter", |m| &m.write_calls,          "Vectored write calls."),
    ("cinder_history_recoveries_total",         "counter", |m| &m.recoveries,           "Joins on history topics that asked to recover (since)."),
    ("cinder_history_recovered_total",          "counter", |m| &m.recovered,            "Recoveries that got every missed broadcast."),
    ("cinder_history_replayed_total",           "counter", |m| &m.replayed,             "Broadcasts pushed to recovering clients."),
    ("cinder_history_bytes",                    "gauge",   |m| &m.history_bytes,        "Estimated memory of the topic histories a shard owns."),
    ("cinder_history_topics",                   "gauge",   |m| &m.history_topics,       "Topics with a history."),
    ("cinder_history_evicted_total",            "counter", |m| &m.history_evicted,      "Topic histories dropped to stay under history.memory_limit."),
    ("cinder_history_gaps_filled_total",        "counter", |m| &m.history_gaps_filled,  "Cluster: missing broadcasts of a history topic read back from Redis."),
    ("cinder_history_gaps_lost_total",          "counter", |m| &m.history_gaps_lost,    "Cluster: gaps that could not be filled (subscribers got phx_error)."),
];

/// One process-wide metric without labels: name, type (`counter` or
/// `gauge`), value, help.
pub type MetricRow<'a> = (&'a str, &'a str, u64, &'a str);

/// Writes process-wide metrics without labels in the Prometheus text
/// format (the cluster bus's, the bridge's, the lifecycle events').
pub fn write_rows(out: &mut String, rows: &[MetricRow<'_>]) {
    for (name, kind, value, help) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Renders all shards' counters in the Prometheus text format.
pub fn render_prometheus(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(4096);
    for (name, kind, field, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, metrics) in shards.iter().enumerate() {
            let value = field(metrics).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {value}");
        }
    }
    let name = "cinder_history_recovery_failed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Recoveries answered recovered: false, by reason.\n# TYPE {name} counter"
    );
    for (shard, metrics) in shards.iter().enumerate() {
        for (reason, counter) in RecoveryFailure::ALL.iter().zip(&metrics.recovery_failed) {
            let value = counter.load(Ordering::Relaxed);
            let reason = reason.as_str();
            let _ = writeln!(
                out,
                "{name}{{shard=\"{shard}\",reason=\"{reason}\"}} {value}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard() {
        let shards = [ShardMetrics::default(), ShardMetrics::default()];
        ShardMetrics::add(&shards[1].deliveries, 7);
        let text = render_prometheus(&shards);
        assert!(text.contains("cinder_deliveries_total{shard=\"1\"} 7"));
        assert!(text.contains("# TYPE cinder_connections gauge"));
        ShardMetrics::add(&shards[0].recovery_failed[1], 2);
        assert!(
            text.contains("cinder_history_recovery_failed_total{shard=\"1\",reason=\"epoch\"} 0")
        );
        let text = render_prometheus(&shards);
        assert!(
            text.contains("cinder_history_recovery_failed_total{shard=\"0\",reason=\"trimmed\"} 2")
        );
    }
}
