//! The figures of a run: built by the scenarios, printed as a table for
//! people and written as JSON (`--json FILE`) for scripts.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Printed where a figure could not be measured (no `--server-pid`, or
/// `/proc/PID` unreadable), instead of a misleading 0.
pub const NOT_AVAILABLE: &str = "n/a";

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Number of samples.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Summarizes a histogram of nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// How the connections fared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Connections attempted.
    pub requested: u64,
    /// Upgrades that succeeded.
    pub upgraded: u64,
    /// Joins answered ok.
    pub joined: u64,
    /// Connections that failed before joining (incl. refused joins).
    pub failed_before_join: u64,
    /// Joined connections the server closed during the run.
    pub dropped_after_join: u64,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
}

/// Connect + join phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    /// From the first connect to the last join.
    pub seconds: f64,
    /// Upgrades per second over the phase.
    pub handshakes_per_sec: f64,
    /// Joins per second over the phase.
    pub joins_per_sec: f64,
    /// TCP connect start → 101 received.
    pub handshake_latency: Latency,
    /// `phx_join` sent → ok reply.
    pub join_latency: Latency,
}

/// One measured window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowReport {
    /// Window number.
    pub index: u32,
    /// What the window was: `max`, `rate`, `25% of max`, …
    pub label: String,
    /// Target publish (fanout) or push (chat) rate, messages/s, if fixed.
    pub target_rate: Option<f64>,
    /// Publishing time in seconds.
    pub seconds: f64,
    /// Messages published (fanout) or pushed (chat).
    pub published: u64,
    /// Messages per second achieved.
    pub publish_rate: f64,
    /// Deliveries owed: each message × the subscribers of its topic.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Deliveries per second, from the window's start to its last delivery.
    pub deliveries_per_sec: f64,
    /// Send → receive latency of the window's deliveries.
    pub latency: Latency,
    /// Server CPU time (user + sys) during the window, ms (with --server-pid).
    pub server_cpu_ms: Option<f64>,
    /// Server CPU time per delivery, µs.
    pub server_cpu_per_delivery_us: Option<f64>,
    /// This load generator's CPU time per delivery, µs.
    pub client_cpu_per_delivery_us: f64,
    /// Failed publish requests.
    pub publish_errors: u64,
    /// `fanout`: the deliveries made by each `--url`'s server, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_node: Vec<NodeDeliveries>,
    /// `fanout`: CPU time of each `--watch-pid` process over the window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<WatchedCpu>,
}

/// The deliveries one server (one `--url`) made in a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeDeliveries {
    /// The server's WebSocket URL.
    pub url: String,
    /// Distinct deliveries to the connections on it.
    pub received: u64,
    /// Those per second, over the same time as the window's total.
    pub deliveries_per_sec: f64,
}

/// A watched process's CPU time over a window (`--watch-pid NAME=PID`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchedCpu {
    /// Its label.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// User + system CPU time over the window (with its drain), ms;
    /// `None` when `/proc/PID` could not be read.
    pub cpu_ms: Option<f64>,
}

/// Medians over the windows of the main measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Median {
    /// Windows the medians are taken over.
    pub windows: usize,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Publish rate.
    pub publish_rate: f64,
    /// p50 latency.
    pub p50_us: f64,
    /// p90 latency.
    pub p90_us: f64,
    /// p99 latency.
    pub p99_us: f64,
    /// p99.9 latency.
    pub p999_us: f64,
    /// Max latency.
    pub max_us: f64,
    /// Server CPU per delivery.
    pub server_cpu_per_delivery_us: Option<f64>,
}

impl Median {
    /// Medians of `windows` (empty input gives zeros).
    pub fn of(windows: &[WindowReport]) -> Median {
        let pick = |f: &dyn Fn(&WindowReport) -> f64| median(windows.iter().map(f).collect());
        let cpu: Vec<f64> = windows
            .iter()
            .filter_map(|w| w.server_cpu_per_delivery_us)
            .collect();
        Median {
            windows: windows.len(),
            deliveries_per_sec: pick(&|w| w.deliveries_per_sec),
            publish_rate: pick(&|w| w.publish_rate),
            p50_us: pick(&|w| w.latency.p50_us),
            p90_us: pick(&|w| w.latency.p90_us),
            p99_us: pick(&|w| w.latency.p99_us),
            p999_us: pick(&|w| w.latency.p999_us),
            max_us: pick(&|w| w.latency.max_us),
            server_cpu_per_delivery_us: (!cpu.is_empty()).then(|| median(cpu)),
        }
    }
}

/// The median of some numbers (mean of the middle two for even counts).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Delivery correctness over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Messages published or pushed (accepted by the server).
    pub published: u64,
    /// Deliveries owed.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Owed deliveries that never arrived.
    pub lost: u64,
    /// Deliveries that arrived more than once (extra copies counted).
    pub duplicates: u64,
    /// Measured messages nobody published (or beyond what was published).
    pub unexpected: u64,
    /// Pushes answered with an error (chat, push publishing).
    pub push_errors: u64,
}

/// The server's memory (with --server-pid). A reading is `None` (JSON
/// `null`, printed `n/a`) when `/proc/PID` could not be read: a made-up 0
/// would look like a measurement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerMemory {
    /// The server's PID.
    pub pid: u32,
    /// RSS before any connection was opened.
    pub rss_before_bytes: Option<u64>,
    /// RSS once every connection had joined.
    pub rss_joined_bytes: Option<u64>,
    /// RSS at the end of the run.
    pub rss_end_bytes: Option<u64>,
    /// (RSS joined − RSS before) ÷ joined connections.
    pub rss_per_connection_bytes: Option<f64>,
}

/// Everything a scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// WebSocket URL.
    pub url: String,
    /// HTTP publish URL, if used.
    pub publish: Option<String>,
    /// `v1` or `v2`.
    pub serializer: String,
    /// Connections requested.
    pub conns: usize,
    /// Topics.
    pub topics: usize,
    /// Client threads.
    pub threads: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Rate setting as given.
    pub rate: String,
    /// Messages per publish request.
    pub batch: usize,
    /// Connection outcomes.
    pub connections: Connections,
    /// Connect + join phase.
    pub setup: Setup,
    /// Measured windows.
    pub windows: Vec<WindowReport>,
    /// Medians over `windows`.
    pub median: Option<Median>,
    /// Windows at fractions of the maximum rate.
    pub latency_at: Vec<WindowReport>,
    /// Correctness over the run.
    pub totals: Totals,
    /// Server memory, with --server-pid.
    pub server: Option<ServerMemory>,
    /// Heartbeat replies received.
    pub heartbeat_replies: u64,
    /// Messages that were not measured broadcasts or replies.
    pub other_messages: u64,
    /// `presence`: what the join storm cost.
    pub presence: Option<PresenceReport>,
    /// `recover`: the reconnect storm and what the clients recovered.
    pub recover: Option<RecoverReport>,
}

/// What a presence join storm cost (the `presence` scenario).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceReport {
    /// Members that joined the room.
    pub members: u64,
    /// `presence_state` pushes received (one per join).
    pub states: u64,
    /// `presence_diff` messages received, over all members.
    pub diffs: u64,
    /// Metas those diffs carried, over all members.
    pub diff_entries: u64,
    /// Bytes of presence messages received, over all members.
    pub bytes: u64,
    /// Diff messages if every join were its own diff delivered to everyone
    /// already joined: members × (members + 1) / 2.
    pub unbatched_diffs: u64,
    /// `unbatched_diffs / diffs`.
    pub batching_factor: f64,
    /// First connect → last presence message, in seconds.
    pub seconds: f64,
    /// Server CPU time over the storm, with --server-pid.
    pub server_cpu_ms: Option<f64>,
}

/// A reconnect storm of clients recovering missed broadcasts (the
/// `recover` scenario). Its connection and setup figures in the [`Report`]
/// are the storm's; the first join is summed up here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    /// Messages published to every topic while the clients were away.
    pub messages_per_topic: u64,
    /// Whether every client rejoined on another `--url` than its first.
    pub cross_node: bool,
    /// First join: clients whose join was answered ok with a position.
    pub first_joined: u64,
    /// First join: first connect → last join, seconds.
    pub first_join_seconds: f64,
    /// Messages the publish API accepted while the clients were away.
    pub published: u64,
    /// Seconds the publishing took.
    pub publish_seconds: f64,
    /// Clients that came back (those with a position).
    pub rejoining: u64,
    /// Clients whose rejoin was answered ok.
    pub rejoined: u64,
    /// Clients that got every missed message exactly once, in publish
    /// order, right after an ok reply saying `recovered: true`.
    pub recovered: u64,
    /// Ok rejoin replies that did not say `recovered: true`.
    pub not_recovered: u64,
    /// Rejoined clients that missed at least one message.
    pub clients_with_gaps: u64,
    /// Messages those clients missed.
    pub missing: u64,
    /// Rejoined clients that got some message more than once.
    pub clients_with_duplicates: u64,
    /// Extra copies, over all clients.
    pub duplicates: u64,
    /// Messages that arrived out of publish order (after a gap, or late).
    pub out_of_order: u64,
    /// Messages that arrived before the rejoin's reply.
    pub before_reply: u64,
    /// Replayed messages without a position in their ref slot.
    pub without_position: u64,
    /// First reconnect → last client's last replayed message, seconds.
    pub storm_seconds: f64,
    /// `recovered` ÷ `storm_seconds`.
    pub recoveries_per_sec: f64,
    /// Per client that got all its messages: `phx_join` sent → the last
    /// of them received.
    pub latency: Latency,
    /// Per rejoined client: `phx_join` sent → ok reply.
    pub reply_latency: Latency,
    /// Server CPU time (user + sys) over the storm, ms (with --server-pid).
    pub server_cpu_ms: Option<f64>,
    /// That per recovered client, µs.
    pub server_cpu_per_recovery_us: Option<f64>,
    /// CPU time of each `--watch-pid` process over the storm.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<WatchedCpu>,
}

impl RecoverReport {
    fn print(&self) {
        println!(
            "first join   {} clients joined and kept their position in {:.2} s",
            self.first_joined, self.first_join_seconds
        );
        println!(
            "published    {} messages ({} per topic) while they were away, in {:.2} s",
            self.published, self.messages_per_topic, self.publish_seconds
        );
        println!(
            "storm        {} rejoining{}, {} rejoined, {} recovered in {:.2} s: {:.0} recoveries/s",
            self.rejoining,
            if self.cross_node {
                " (each on the next --url)"
            } else {
                ""
            },
            self.rejoined,
            self.recovered,
            self.storm_seconds,
            self.recoveries_per_sec
        );
        let ms = |us: f64| us / 1000.0;
        println!(
            "recovery     join → last replayed  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} clients)   join → reply p50 {:.1} ms  p99 {:.1} ms",
            ms(self.latency.p50_us),
            ms(self.latency.p90_us),
            ms(self.latency.p99_us),
            ms(self.latency.max_us),
            self.latency.samples,
            ms(self.reply_latency.p50_us),
            ms(self.reply_latency.p99_us),
        );
        println!(
            "checks       recovered=false {}  clients with gaps {} ({} missing)  duplicates {} (on {} clients)  out of order {}  before reply {}  without position {}",
            self.not_recovered,
            self.clients_with_gaps,
            self.missing,
            self.duplicates,
            self.clients_with_duplicates,
            self.out_of_order,
            self.before_reply,
            self.without_position
        );
        let mut line = format!(
            "storm cpu    server {}  per recovery {}",
            self.server_cpu_ms
                .map_or_else(|| NOT_AVAILABLE.to_string(), |v| format!("{v:.0} ms")),
            self.server_cpu_per_recovery_us
                .map_or_else(|| NOT_AVAILABLE.to_string(), |v| format!("{v:.1} µs")),
        );
        for p in &self.watched {
            let cpu = p
                .cpu_ms
                .map_or(NOT_AVAILABLE.into(), |ms| format!("{ms:.0} ms"));
            line.push_str(&format!("  {} {cpu}", p.name));
        }
        println!("{line}");
    }
}

impl Report {
    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
    }

    /// Prints the human table.
    pub fn print(&self) {
        self.print_main();
        if let Some(r) = &self.recover {
            r.print();
        }
        if let Some(p) = &self.presence {
            println!(
                "presence     members {}  states {}  diffs {} (unbatched would be {}, {:.1}× fewer)  metas in diffs {}  bytes {}  in {:.2} s  server cpu {}",
                p.members,
                p.states,
                p.diffs,
                p.unbatched_diffs,
                p.batching_factor,
                p.diff_entries,
                p.bytes,
                p.seconds,
                p.server_cpu_ms
                    .map_or_else(|| NOT_AVAILABLE.to_string(), |ms| format!("{ms:.0} ms")),
            );
        }
    }

    fn print_main(&self) {
        let c = &self.connections;
        println!(
            "{} against {} ({}, {} threads)",
            self.scenario, self.url, self.serializer, self.threads
        );
        println!(
            "connections  requested {}  upgraded {}  joined {}  failed {}  dropped {}",
            c.requested, c.upgraded, c.joined, c.failed_before_join, c.dropped_after_join
        );
        for (reason, count) in &c.failures {
            println!("  failure    {count} × {reason}");
        }
        let s = &self.setup;
        println!(
            "setup        {:.2} s  handshakes/s {:.0}  joins/s {:.0}  handshake p50 {:.0} µs p99 {:.0} µs  join p50 {:.0} µs p99 {:.0} µs",
            s.seconds,
            s.handshakes_per_sec,
            s.joins_per_sec,
            s.handshake_latency.p50_us,
            s.handshake_latency.p99_us,
            s.join_latency.p50_us,
            s.join_latency.p99_us
        );
        if !self.windows.is_empty() || !self.latency_at.is_empty() {
            println!(
                "{:<14} {:>10} {:>12} {:>14} {:>9} {:>9} {:>9} {:>9} {:>10}",
                "window",
                "msgs/s",
                "deliveries",
                "deliveries/s",
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
                "srv µs/dlv"
            );
            for w in self.windows.iter().chain(&self.latency_at) {
                println!(
                    "{:<14} {:>10.0} {:>12} {:>14.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10}",
                    format!("{} {}", w.index, w.label),
                    w.publish_rate,
                    w.received,
                    w.deliveries_per_sec,
                    w.latency.p50_us,
                    w.latency.p99_us,
                    w.latency.p999_us,
                    w.latency.max_us,
                    w.server_cpu_per_delivery_us
                        .map_or(NOT_AVAILABLE.into(), |v| format!("{v:.3}"))
                );
                print_nodes(w);
            }
        }
        if let Some(m) = &self.median {
            if m.windows > 1 {
                println!(
                    "{:<14} {:>10.0} {:>12} {:>14.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10}",
                    "median",
                    m.publish_rate,
                    "",
                    m.deliveries_per_sec,
                    m.p50_us,
                    m.p99_us,
                    m.p999_us,
                    m.max_us,
                    m.server_cpu_per_delivery_us
                        .map_or(NOT_AVAILABLE.into(), |v| format!("{v:.3}"))
                );
            }
        }
        let t = &self.totals;
        println!(
            "totals       published {}  expected {}  received {}  lost {}  duplicates {}  unexpected {}  push errors {}",
            t.published, t.expected, t.received, t.lost, t.duplicates, t.unexpected, t.push_errors
        );
        if let Some(m) = &self.server {
            let mib = |bytes: Option<u64>| {
                bytes.map_or(NOT_AVAILABLE.into(), |b| {
                    format!("{:.1} MiB", b as f64 / 1048576.0)
                })
            };
            println!(
                "server rss   before {}  joined {}  end {}  per connection {}  (pid {})",
                mib(m.rss_before_bytes),
                mib(m.rss_joined_bytes),
                mib(m.rss_end_bytes),
                m.rss_per_connection_bytes
                    .map_or(NOT_AVAILABLE.into(), |b| format!("{b:.0} B")),
                m.pid
            );
        }
    }
}

/// With several `--url` or any `--watch-pid`: a window's deliveries by
/// server and the watched processes' CPU time, one line under its row.
fn print_nodes(w: &WindowReport) {
    let mut line = String::new();
    if w.by_node.len() > 1 {
        for n in &w.by_node {
            line.push_str(&format!(
                "  {} {} ({:.0}/s)",
                n.url, n.received, n.deliveries_per_sec
            ));
        }
    }
    for p in &w.watched {
        let cpu = p
            .cpu_ms
            .map_or(NOT_AVAILABLE.into(), |ms| format!("{ms:.0} ms"));
        line.push_str(&format!("  {} cpu {cpu}", p.name));
    }
    if !line.is_empty() {
        println!("  └{line}");
    }
}

/// Writes any serializable value as pretty JSON.
pub fn write_json<T: Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), value)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn latency_summary_is_in_microseconds() {
        let mut h = crate::worker::new_histogram();
        for ns in 1..=1000u64 {
            h.record(ns * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0);
        assert!((l.max_us - 1000.0).abs() < 1.0);
    }
}
