//! What a soak reports: its settings, one row per minute, and the summary
//! with the verdicts (flat or not, lost or not), printed, written as JSON
//! and drawn as a chart.

use std::collections::BTreeMap;

use serde::Serialize;

use super::blocks::{Block, BLOCK_MINUTES};
use super::minute::{self, flatness, CounterValues, Flatness, MinuteRow};
use super::probe::ServerSample;
use super::state::SoakShared;
use crate::chart::{self, MinutePanel};
use crate::cli::SoakArgs;
use crate::format::{human, human_us};
use crate::outcome::Loss;
use crate::report::{write_json, Latency};

/// How far RSS and fds may move after the warm-up, percent.
pub const FLAT_TOLERANCE_PCT: f64 = 10.0;

/// The settings of a soak, as recorded in its report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings {
    /// WebSocket endpoint.
    pub url: String,
    /// Publish API.
    pub publish: String,
    /// Minutes run.
    pub minutes: u32,
    /// Warm-up minutes (not judged for flatness).
    pub warmup: u32,
    /// Healthy subscribers.
    pub conns: usize,
    /// Healthy topics.
    pub topics: usize,
    /// Messages per second over the healthy topics.
    pub rate: f64,
    /// Messages per request.
    pub batch: usize,
    /// Payload bytes.
    pub payload_bytes: usize,
    /// Churning clients per second.
    pub churn_rate: f64,
    /// How long a churning client stays joined, ms.
    pub churn_hold_ms: u64,
    /// Share of churning clients on presence topics.
    pub presence_share: f64,
    /// Presence topics.
    pub presence_topics: usize,
    /// Long-poll clients.
    pub longpoll: usize,
    /// Slow consumers started per minute.
    pub slow_per_minute: u32,
    /// Messages per second to the slow consumers' topic.
    pub slow_rate: f64,
    /// Their payload bytes.
    pub slow_payload_bytes: usize,
    /// How long a stalled slow consumer reads nothing, s.
    pub slow_stall_s: f64,
    /// Abuse rounds per minute (four connections each).
    pub abuse_rounds: u32,
    /// Client event-loop threads.
    pub threads: usize,
    /// Settle delay, s.
    pub settle_s: f64,
    /// Server PID.
    pub server_pid: Option<u32>,
}

/// What the whole run came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Minutes completed.
    pub minutes_run: u32,
    /// Healthy subscribers joined before publishing began.
    pub healthy_subscribers: u64,
    /// Server RSS after the warm-up (the reading at each minute's end).
    pub rss: Option<Flatness>,
    /// The smallest RSS of each minute after the warm-up (read every
    /// second): what a leak would raise, without the transient buffers of
    /// the moment.
    pub rss_floor: Option<Flatness>,
    /// The mean of each minute's RSS readings after the warm-up: what the
    /// minute held, transient buffers included, without depending on the
    /// moment of one reading.
    pub rss_mean: Option<Flatness>,
    /// Server open fds after the warm-up.
    pub fds: Option<Flatness>,
    /// Server connections after the warm-up.
    pub connections: Option<Flatness>,
    /// p99 latency after the warm-up, minute by minute.
    pub p99: Option<Flatness>,
    /// p99 latency of each whole block of minutes after the warm-up.
    pub p99_blocks: Vec<Block>,
    /// Those blocks' p99s judged together: drift, without the jitter of
    /// single minutes.
    pub p99_per_block: Option<Flatness>,
    /// Deliveries/s after the warm-up.
    pub deliveries_per_sec: Option<Flatness>,
    /// Messages published to the healthy topics.
    pub published: u64,
    /// Deliveries owed to healthy subscribers over the whole run.
    pub expected: u64,
    /// Distinct deliveries they received.
    pub received: u64,
    /// Owed deliveries that never arrived (counted at the very end).
    pub lost: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Deliveries that arrived after their minute was settled.
    pub late: u64,
    /// Latency over the whole run (the minutes' histograms merged).
    pub latency: Latency,
    /// Every counter over the whole run.
    pub events: CounterValues,
    /// Slow-consumer closes the server counted over the run.
    pub server_slow_consumer_closes: Option<u64>,
    /// Protocol-error closes the server counted over the run.
    pub server_protocol_closes: Option<u64>,
}

/// A soak's report: settings, one row per minute, the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakReport {
    /// Always `soak`.
    pub scenario: String,
    /// The settings.
    pub settings: Settings,
    /// The settings in one line (chart title, table heading).
    pub parameters: String,
    /// The server once the healthy subscribers had joined, before the load.
    pub baseline: ServerSample,
    /// One row per minute.
    pub minutes: Vec<MinuteRow>,
    /// The whole run.
    pub summary: Summary,
    /// Failures by reason (churn, healthy, publish, long-poll).
    pub failures: BTreeMap<String, u64>,
    /// Abusive connections by kind and outcome.
    pub abuse: BTreeMap<String, u64>,
}

impl SoakReport {
    /// The run as a loss, if healthy deliveries were lost.
    pub fn losses(&self) -> Vec<Loss> {
        if self.summary.lost == 0 {
            return Vec::new();
        }
        vec![Loss {
            run: "soak".into(),
            lost: self.summary.lost,
            expected: self.summary.expected,
            duplicates: 0,
            out_of_order: 0,
        }]
    }

    /// The chart: RSS, fds, deliveries/s, p99, connections and CPU per minute.
    pub fn chart(&self, path: &std::path::Path) -> Result<(), String> {
        let series = |f: &dyn Fn(&MinuteRow) -> Option<f64>| -> Vec<(f64, f64)> {
            self.minutes
                .iter()
                .filter_map(|r| Some((f64::from(r.minute), f(r)?)))
                .collect()
        };
        let band = |flat: &Option<Flatness>, scale: f64| {
            flat.as_ref().map(|f| {
                (
                    f.min * scale,
                    f.min * scale * (1.0 + FLAT_TOLERANCE_PCT / 100.0),
                )
            })
        };
        let mib = |v: f64| format!("{} MiB", human(v));
        let pct = |v: f64| format!("{} %", human(v));
        let panels = [
            MinutePanel {
                name: format!(
                    "server RSS, mean of each minute's readings (every second); bars: min-max (band: +{FLAT_TOLERANCE_PCT:.0} %)"
                ),
                points: series(&|r| r.rss_mean_bytes.map(minute::mib)),
                format: mib,
                band: band(&self.summary.rss_mean, 1.0 / (1024.0 * 1024.0)),
                floor: 0.0,
                spans: self
                    .minutes
                    .iter()
                    .filter_map(|r| {
                        Some((
                            f64::from(r.minute),
                            minute::mib(r.rss_min_bytes?),
                            minute::mib(r.rss_max_bytes?),
                        ))
                    })
                    .collect(),
            },
            MinutePanel {
                name: "server open fds".into(),
                points: series(&|r| r.fds.map(|f| f as f64)),
                format: human,
                band: band(&self.summary.fds, 1.0),
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: "deliveries/s to healthy subscribers".into(),
                points: series(&|r| Some(r.deliveries_per_sec)),
                format: human,
                band: None,
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: "p99 latency (healthy subscribers)".into(),
                points: series(&|r| (r.deliveries > 0).then_some(r.p99_us)),
                format: human_us,
                band: None,
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: "server connections".into(),
                points: series(&|r| r.server_connections.map(|c| c as f64)),
                format: human,
                band: None,
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: "server CPU (% of one core)".into(),
                points: series(&|r| r.server_cpu_pct),
                format: pct,
                band: None,
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: format!(
                    "machine load average, 1 min ({} cores, shared)",
                    std::thread::available_parallelism().map_or(0, |n| n.get())
                ),
                points: series(&|r| r.loadavg),
                format: human,
                band: None,
                floor: 0.0,
                spans: Vec::new(),
            },
            MinutePanel {
                name: "lost deliveries per minute (healthy subscribers)".into(),
                points: series(&|r| Some(r.lost as f64)),
                format: human,
                band: None,
                floor: 10.0,
                spans: Vec::new(),
            },
        ];
        chart::minutes_svg(
            "Cinder soak: mixed load, read every minute",
            &self.parameters,
            self.settings.minutes,
            self.settings.warmup,
            &panels,
            path,
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the JSON (if asked) and the chart.
    pub(super) fn save(&self, args: &SoakArgs) -> Result<(), String> {
        if let Some(path) = &args.json {
            write_json(self, path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        self.chart(&args.svg)
    }

    /// Prints the summary.
    pub fn print_summary(&self) {
        let s = &self.summary;
        let e = &s.events;
        println!(
            "soak summary: {} of {} minutes, warm-up {} minute{} (flatness judged from minute {})",
            s.minutes_run,
            self.settings.minutes,
            self.settings.warmup,
            if self.settings.warmup == 1 { "" } else { "s" },
            self.settings.warmup + 1
        );
        let judge = |name: &str, flat: &Option<Flatness>, show: &dyn Fn(f64) -> String| match flat {
            Some(f) => println!(
                "  {name:<14} first {} last {} min {} max {}: spread {:.1} %{}, trend {:+.1} %",
                show(f.first),
                show(f.last),
                show(f.min),
                show(f.max),
                f.spread_pct,
                if f.flat {
                    format!(" (flat, within {FLAT_TOLERANCE_PCT:.0} %)")
                } else {
                    format!(" (NOT within {FLAT_TOLERANCE_PCT:.0} %)")
                },
                f.trend_pct
            ),
            None => println!("  {name:<14} n/a (no minute after the warm-up, or not read)"),
        };
        let mib = |v: f64| format!("{:.1} MiB", minute::mib(v as u64));
        judge("server RSS", &s.rss, &mib);
        judge("RSS mean", &s.rss_mean, &mib);
        judge("RSS floor", &s.rss_floor, &mib);
        judge("open fds", &s.fds, &|v| format!("{v:.0}"));
        judge("connections", &s.connections, &|v| format!("{v:.0}"));
        judge("p99 latency", &s.p99, &|v| human_us(v));
        judge("p99 per block", &s.p99_per_block, &|v| human_us(v));
        if !s.p99_blocks.is_empty() {
            let blocks: Vec<String> = s
                .p99_blocks
                .iter()
                .map(|b| format!("{}-{}: {}", b.from_minute, b.to_minute, human_us(b.p99_us)))
                .collect();
            println!(
                "  p99 blocks     {BLOCK_MINUTES} minutes each: {}",
                blocks.join(", ")
            );
        }
        judge("deliveries/s", &s.deliveries_per_sec, &|v| human(v));
        println!(
            "  healthy        {} subscribers, {} dropped; published {}, owed {}, received {}, lost {}, duplicates {}, late {}",
            s.healthy_subscribers, e.healthy_dropped, s.published, s.expected, s.received, s.lost, s.duplicates, s.late
        );
        println!(
            "  latency        p50 {} p99 {} p99.9 {} max {} ({} samples)",
            human_us(s.latency.p50_us),
            human_us(s.latency.p99_us),
            human_us(s.latency.p999_us),
            human_us(s.latency.max_us),
            s.latency.samples
        );
        println!(
            "  churn          started {} joined {} left {} closed {} failed {}",
            e.churn_started, e.churn_joined, e.churn_left, e.churn_closed, e.churn_failed
        );
        let or_na = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
        println!(
            "  slow consumers started {}: closed with 1008 {}, dropped without a close frame {}, other close {}, not closed {}, never joined {}; server counted {} slow-consumer closes",
            e.slow_started, e.slow_closed_1008, e.slow_closed_reset, e.slow_closed_other, e.slow_not_closed, e.slow_failed,
            or_na(s.server_slow_consumer_closes)
        );
        println!(
            "  long-poll      sessions {} (ended by the server {}), polls {}, messages {}, gaps {}, errors {}",
            e.longpoll_sessions, e.longpoll_restarts, e.longpoll_polls, e.longpoll_messages, e.longpoll_gaps, e.longpoll_errors
        );
        println!(
            "  abuse          {} connections: {} refused, {} NOT refused; longest slowloris {:.1} s; server protocol closes {}",
            e.abuse_attempts,
            e.abuse_refused,
            e.abuse_not_refused,
            e.slowloris_max_ms as f64 / 1000.0,
            or_na(s.server_protocol_closes)
        );
        for (what, n) in &self.abuse {
            println!("    {n:>5} × {what}");
        }
        if !self.failures.is_empty() {
            println!("  failures by reason:");
            for (reason, n) in &self.failures {
                println!("    {n:>7} × {reason}");
            }
        }
    }
}

/// Fills the summary's verdicts and totals from the rows so far.
pub(super) fn finish_summary(report: &mut SoakReport, soak: &SoakShared) {
    let warmup = report.settings.warmup;
    let rows = &report.minutes;
    // One series after the warm-up, judged against the tolerance.
    let judge = |f: &dyn Fn(&MinuteRow) -> Option<f64>| {
        let points: Vec<(u32, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.minute, f(r)?)))
            .collect();
        flatness(&points, warmup, FLAT_TOLERANCE_PCT)
    };
    let s = &mut report.summary;
    s.rss = judge(&|r| r.rss_bytes.map(|b| b as f64));
    s.rss_floor = judge(&|r| r.rss_min_bytes.map(|b| b as f64));
    s.rss_mean = judge(&|r| r.rss_mean_bytes.map(|b| b as f64));
    s.fds = judge(&|r| r.fds.map(|f| f as f64));
    s.connections = judge(&|r| r.server_connections.map(|c| c as f64));
    s.p99 = judge(&|r| (r.deliveries > 0).then_some(r.p99_us));
    s.deliveries_per_sec = judge(&|r| Some(r.deliveries_per_sec));
    let block_points: Vec<(u32, f64)> = s
        .p99_blocks
        .iter()
        .map(|b| (b.to_minute, b.p99_us))
        .collect();
    s.p99_per_block = flatness(&block_points, warmup, FLAT_TOLERANCE_PCT);
    s.events = soak.counters.read();
    let sum = |f: &dyn Fn(&MinuteRow) -> Option<u64>| -> Option<u64> {
        rows.iter().map(f).sum::<Option<u64>>()
    };
    s.server_slow_consumer_closes = sum(&|r| r.server_slow_consumer_closes);
    s.server_protocol_closes = sum(&|r| r.server_protocol_closes);
    report.failures = soak.failures.lock().map(|f| f.clone()).unwrap_or_default();
    report.abuse = soak.abuse.lock().map(|a| a.clone()).unwrap_or_default();
}
