//! `soak`: a running server under mixed load for a long time, read every
//! minute.
//!
//! One process holds all the clients:
//! - healthy WebSocket subscribers on `PREFIX:0 … PREFIX:T-1`, whose every
//!   delivery is checked (sequence numbers per topic: lost, duplicated) and
//!   timed — the only clients loss and latency are about;
//! - churning clients: connect, join (a broadcast or a presence topic),
//!   leave, close, `--churn-rate` a second;
//! - a publisher at `--rate` through the HTTP API, plus heavy messages to
//!   the slow consumers' topic;
//! - long-poll clients doing the real exchange ([`longpoll`]);
//! - slow consumers the server should close, and abusive connections it
//!   should refuse ([`abuse`]).
//!
//! Every minute one line: the server's RSS, open fds, connections and CPU,
//! the healthy deliveries/s and latency of the minute's messages, lost and
//! duplicated deliveries, and what the other clients saw. The figures go to
//! `--json` (rewritten each minute) and a chart to `--svg`. Loss is counted
//! twice: per minute, `--settle` after it ended, and once more over the
//! whole run at the end; the run fails (exit 3) if that total is not 0.

pub mod abuse;
pub mod http;
pub mod longpoll;
pub mod loops;
pub mod minute;
pub mod probe;
pub mod publish;
pub mod state;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::Serialize;

use self::http::Endpoints;
use self::loops::{LoopPlan, SettleRequest, Settled, SlowPlan};
use self::minute::{
    counter_delta, cpu_pct, flatness, gauge, table_header, CounterValues, Flatness, MinuteRow, Owed,
};
use self::probe::{Probe, ServerSample};
use self::publish::PublishPlan;
use self::state::{SoakShared, MINUTE_NS};
use crate::chart::{self, MinutePanel};
use crate::cli::SoakArgs;
use crate::client::{ConnSpec, Target};
use crate::clock;
use crate::format::{human, human_us};
use crate::outcome::Loss;
use crate::phoenix::Serializer;
use crate::publisher::{HttpPublisher, MessageShape, Publisher};
use crate::report::{write_json, Latency};
use crate::scenario::warn_about_server_pid;
use crate::worker::{new_histogram, Shared, WindowStats};

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
    /// The smallest RSS of each minute after the warm-up (read every 5 s):
    /// what a leak would raise, without the transient buffers of the
    /// moment.
    pub rss_floor: Option<Flatness>,
    /// Server open fds after the warm-up.
    pub fds: Option<Flatness>,
    /// Server connections after the warm-up.
    pub connections: Option<Flatness>,
    /// p99 latency after the warm-up.
    pub p99: Option<Flatness>,
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
                    "server RSS at each minute's end; bars: min-max read every 5 s (band: +{FLAT_TOLERANCE_PCT:.0} %)"
                ),
                points: series(&|r| r.rss_bytes.map(minute::mib)),
                format: mib,
                band: band(&self.summary.rss, 1.0 / (1024.0 * 1024.0)),
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
    fn save(&self, args: &SoakArgs) -> Result<(), String> {
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
        judge("RSS floor", &s.rss_floor, &mib);
        judge("open fds", &s.fds, &|v| format!("{v:.0}"));
        judge("connections", &s.connections, &|v| format!("{v:.0}"));
        judge("p99 latency", &s.p99, &|v| human_us(v));
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

/// The settings in one line.
fn describe(args: &SoakArgs) -> String {
    let per_topic = args.conns as f64 / args.topics.max(1) as f64;
    format!(
        "{} healthy subscribers on {} topics · {} msg/s ({} deliveries/s) · {} B · churn {}/s ({:.0} % presence) · {} long-poll · {} slow consumers/min · {} abusive conns/min · {} min, warm-up {}",
        human(args.conns as f64),
        args.topics,
        human(args.rate),
        human(args.rate * per_topic),
        args.payload_bytes,
        human(args.churn_rate),
        args.presence_share * 100.0,
        args.longpoll,
        args.slow_per_minute,
        args.abuse_rounds * 4,
        args.minutes,
        args.warmup
    )
}

fn settings(args: &SoakArgs) -> Settings {
    Settings {
        url: args.url.clone(),
        publish: args.publish.clone(),
        minutes: args.minutes,
        warmup: args.warmup,
        conns: args.conns,
        topics: args.topics,
        rate: args.rate,
        batch: args.batch,
        payload_bytes: args.payload_bytes,
        churn_rate: args.churn_rate,
        churn_hold_ms: args.churn_hold.as_millis() as u64,
        presence_share: args.presence_share,
        presence_topics: args.presence_topics,
        longpoll: args.longpoll,
        slow_per_minute: args.slow_per_minute,
        slow_rate: args.slow_rate,
        slow_payload_bytes: args.slow_payload_bytes,
        slow_stall_s: args.slow_stall.as_secs_f64(),
        abuse_rounds: args.abuse_rounds,
        threads: args.threads,
        settle_s: args.settle.as_secs_f64(),
        server_pid: args.server_pid,
    }
}

fn validate(args: &SoakArgs) -> Result<(), String> {
    if args.minutes == 0 {
        return Err("--minutes must be at least 1".into());
    }
    if args.conns == 0 || args.topics == 0 || args.threads == 0 {
        return Err("--conns, --topics and --threads must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if !(0.0..=1.0).contains(&args.presence_share) {
        return Err("--presence-share must be between 0 and 1".into());
    }
    if args.presence_share > 0.0 && args.presence_topics == 0 {
        return Err("--presence-share needs --presence-topics of at least 1".into());
    }
    if args.settle >= Duration::from_secs(50) {
        return Err(
            "--settle must be shorter than 50 s (a minute is settled before the next one ends)"
                .into(),
        );
    }
    Ok(())
}

/// The client side of the run, handed around by [`run`].
struct Clients {
    soak: Arc<SoakShared>,
    other: Arc<Shared>,
    requests: Vec<mpsc::Sender<SettleRequest>>,
    replies: mpsc::Receiver<Settled>,
    loops: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    helpers: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Asks every loop to settle `ranges` and merges the answers.
    fn settle(
        &self,
        minute: Option<u32>,
        ranges: Vec<(u64, u64)>,
        start_ns: u64,
    ) -> Result<Merged, String> {
        let uncertain = self
            .soak
            .uncertain
            .lock()
            .map_err(|_| "a thread panicked")?
            .clone();
        let request = SettleRequest {
            minute,
            ranges: Arc::new(ranges),
            uncertain: Arc::new(uncertain),
            start_ns,
        };
        for sender in &self.requests {
            sender
                .send(request.clone())
                .map_err(|_| "a client loop ended early (see the failures)".to_string())?;
        }
        let mut merged = Merged {
            window: WindowStats::default(),
            churn_join: new_histogram(),
            ..Merged::default()
        };
        for _ in &self.requests {
            let settled = self
                .replies
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| "a client loop did not answer within 60 s".to_string())?;
            merged.owed.add(settled.owed);
            merged.duplicates += settled.duplicates;
            merged.late += settled.late;
            merged.healthy_joined += settled.healthy_joined;
            if let Some(w) = settled.window {
                merged.window.received += w.received;
                merged
                    .window
                    .latency
                    .add(&w.latency)
                    .map_err(|e| e.to_string())?;
            }
            merged
                .churn_join
                .add(&settled.churn_join)
                .map_err(|e| e.to_string())?;
        }
        Ok(merged)
    }

    /// Stops every thread and waits for them.
    fn stop(self) -> Result<(), String> {
        self.soak.stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for handle in self.loops {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(format!("client event loop failed: {e}")),
                Err(_) => result = Err("a client loop panicked".to_string()),
            }
        }
        for handle in self.helpers {
            if handle.join().is_err() {
                result = Err("a soak thread panicked".to_string());
            }
        }
        result
    }
}

/// What the loops answered, merged.
#[derive(Debug)]
struct Merged {
    owed: Owed,
    duplicates: u64,
    late: u64,
    healthy_joined: u64,
    window: WindowStats,
    churn_join: hdrhistogram::Histogram<u64>,
}

impl Default for Merged {
    fn default() -> Self {
        Merged {
            owed: Owed::default(),
            duplicates: 0,
            late: 0,
            healthy_joined: 0,
            window: WindowStats::default(),
            churn_join: new_histogram(),
        }
    }
}

/// Runs the soak.
pub fn run(args: &SoakArgs) -> Result<SoakReport, String> {
    validate(args)?;
    let pid = args.server_pid;
    warn_about_server_pid(pid);
    let fd_limit =
        crate::system::raise_fd_limit().map_err(|e| format!("cannot raise the fd limit: {e}"))?;
    let need = args.conns as u64 + (args.churn_rate * 15.0) as u64 + 256;
    if need > fd_limit {
        return Err(format!(
            "this soak needs about {need} file descriptors; this process may open {fd_limit}"
        ));
    }
    let target = Arc::new(Target::from_url(&args.url, Serializer::V2, &[], None)?);
    let endpoints = Endpoints::from_ws_url(&args.url)?;
    let publisher = Publisher::Http(HttpPublisher::new(&args.publish, args.api_key.clone())?);
    let healthy_topics: Vec<Arc<str>> = (0..args.topics)
        .map(|t| Arc::from(format!("{}:{t}", args.topic_prefix)))
        .collect();
    let slow_topic: Arc<str> = Arc::from(format!("{}:slow", args.topic_prefix));
    let mut other_topics = healthy_topics.clone();
    other_topics.extend(
        (0..args.presence_topics).map(|t| Arc::from(format!("{}:{t}", args.presence_prefix))),
    );
    other_topics.push(slow_topic.clone());

    let soak = Arc::new(SoakShared::new(args.topics));
    let healthy = Arc::new(Shared::new(args.topics));
    let other = Arc::new(Shared::new(other_topics.len()));
    let (reply_tx, replies) = mpsc::channel();
    let mut clients = Clients {
        soak: soak.clone(),
        other: other.clone(),
        requests: Vec::new(),
        replies,
        loops: Vec::new(),
        helpers: Vec::new(),
    };
    for i in 0..args.threads {
        let specs = (i..args.conns)
            .step_by(args.threads)
            .map(|index| ConnSpec {
                index,
                topic: index % args.topics,
                topic_name: healthy_topics[index % args.topics].clone(),
                slot: 0,
                node: 0,
                history: None,
            })
            .collect();
        let plan = LoopPlan {
            healthy: specs,
            target: target.clone(),
            heartbeat: args.heartbeat,
            churn_rate: args.churn_rate / args.threads as f64,
            churn_hold: args.churn_hold,
            other_topics: other_topics.clone(),
            broadcast_topics: args.topics,
            presence_topics: args.presence_topics,
            presence_share: args.presence_share,
            slow: (i == 0).then_some(SlowPlan {
                per_minute: args.slow_per_minute,
                stall: args.slow_stall,
            }),
            index_base: args.conns + i * 1_000_000_000,
        };
        let (request_tx, requests) = mpsc::channel();
        clients.requests.push(request_tx);
        let (h, o, s, r) = (
            healthy.clone(),
            other.clone(),
            soak.clone(),
            reply_tx.clone(),
        );
        clients.loops.push(
            std::thread::Builder::new()
                .name(format!("soak-loop-{i}"))
                .spawn(move || loops::run(plan, h, o, s, requests, r))
                .map_err(|e| e.to_string())?,
        );
    }
    drop(reply_tx);

    // Healthy subscribers first: loss is counted for those joined before
    // the first message.
    println!("soak: connecting {} healthy subscribers…", args.conns);
    let deadline = clock::now_ns() + args.setup_timeout.as_nanos() as u64;
    loop {
        let joined = healthy.joined.load(Ordering::Relaxed);
        let failed = healthy.failed.load(Ordering::Relaxed);
        if joined + failed >= args.conns as u64 || clock::now_ns() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let joined = healthy.joined.load(Ordering::Relaxed);
    if joined < args.conns as u64 {
        let failures = soak.failures.lock().map(|f| f.clone()).unwrap_or_default();
        if joined == 0 {
            let _ = clients.stop();
            return Err(format!("no healthy subscriber joined: {failures:?}"));
        }
        eprintln!(
            "cinder-load: warning: only {joined} of {} healthy subscribers joined ({failures:?}); going on with them",
            args.conns
        );
    }
    let probe = Probe {
        pid,
        endpoints: endpoints.clone(),
    };
    let rss_spans = probe::RssSpans::default();
    let baseline = probe.sample();

    let mut report = SoakReport {
        scenario: "soak".into(),
        settings: settings(args),
        parameters: describe(args),
        baseline: baseline.clone(),
        ..SoakReport::default()
    };
    report.summary.healthy_subscribers = joined;

    let start = clock::now_ns();
    soak.start_ns.store(start, Ordering::Relaxed);
    soak.running.store(true, Ordering::Release);
    let plan = PublishPlan {
        publisher,
        healthy: MessageShape {
            topics: healthy_topics.clone(),
            event: "msg".into(),
            payload_bytes: args.payload_bytes,
        },
        rate: args.rate,
        batch: args.batch,
        slow: (args.slow_per_minute > 0 && args.slow_rate > 0.0).then(|| {
            (
                MessageShape {
                    topics: vec![slow_topic.clone()],
                    event: "heavy".into(),
                    payload_bytes: args.slow_payload_bytes,
                },
                args.slow_rate,
            )
        }),
        minutes: args.minutes,
    };
    let s = soak.clone();
    clients.helpers.push(
        std::thread::Builder::new()
            .name("soak-publisher".into())
            .spawn(move || publish::run(plan, s))
            .map_err(|e| e.to_string())?,
    );
    for i in 0..args.longpoll {
        let (e, s, topic) = (
            endpoints.clone(),
            soak.clone(),
            healthy_topics[i % args.topics].clone(),
        );
        clients.helpers.push(
            std::thread::Builder::new()
                .name(format!("soak-longpoll-{i}"))
                .spawn(move || longpoll::run(e, topic, s))
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(pid) = pid {
        let (s, spans) = (soak.clone(), rss_spans.clone());
        clients.helpers.push(
            std::thread::Builder::new()
                .name("soak-rss".into())
                .spawn(move || probe::sample_rss(pid, Duration::from_secs(5), s, spans))
                .map_err(|e| e.to_string())?,
        );
    }
    if args.abuse_rounds > 0 {
        let (e, s, rounds) = (endpoints.clone(), soak.clone(), args.abuse_rounds);
        clients.helpers.push(
            std::thread::Builder::new()
                .name("soak-abuse".into())
                .spawn(move || abuse::run(e, rounds, s))
                .map_err(|e| e.to_string())?,
        );
    }

    println!("soak: {}", report.parameters);
    println!("{}", table_header());
    let result = minutes(
        args,
        &clients,
        &probe,
        &rss_spans,
        &baseline,
        start,
        &mut report,
    );
    if let Err(e) = result {
        let _ = clients.stop();
        return Err(e);
    }

    // The whole run once more, now that every delivery had time to land.
    let last = soak
        .boundary(args.minutes as usize)
        .ok_or("the publisher never finished")?;
    let merged = clients.settle(None, last.iter().map(|&end| (0, end)).collect(), start)?;
    report.summary.published = last.iter().sum();
    report.summary.expected = merged.owed.expected;
    report.summary.received = merged.owed.received;
    report.summary.lost = merged.owed.lost;
    report.summary.duplicates = merged.duplicates;
    clients.stop()?;
    finish_summary(&mut report, &soak);
    report.save(args)?;
    println!();
    report.print_summary();
    if let Some(path) = &args.json {
        println!("figures written to {}", path.display());
    }
    println!("chart written to {}", args.svg.display());
    Ok(report)
}

/// The minute loop: waits for each minute's end, reads the server, lets
/// the minute's deliveries settle, asks the loops, prints and saves a row.
fn minutes(
    args: &SoakArgs,
    clients: &Clients,
    probe: &Probe,
    rss_spans: &probe::RssSpans,
    baseline: &ServerSample,
    start: u64,
    report: &mut SoakReport,
) -> Result<(), String> {
    let soak = &clients.soak;
    let mut previous_sample = baseline.clone();
    let mut previous_events = soak.counters.read();
    let mut previous_duplicates = 0;
    let mut previous_diffs = 0;
    let mut previous_at = start;
    let mut previous_client_cpu = crate::proc_stats::self_cpu_ns();
    let mut whole_run = new_histogram();
    let settle_ns = args.settle.as_nanos() as u64;
    for m in 0..args.minutes {
        let end = start + u64::from(m + 1) * MINUTE_NS;
        sleep_until(end);
        let sample = probe.sample();
        let sampled_at = clock::now_ns();
        let client_cpu = crate::proc_stats::self_cpu_ns();
        let loadavg = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| minute::parse_loadavg(&text));
        let events_now = soak.counters.read();
        let diffs_now = clients.other.presence_diffs.load(Ordering::Relaxed);
        sleep_until(end + settle_ns);
        let wait_until = clock::now_ns() + 30_000_000_000;
        let (from, to) = loop {
            if let (Some(from), Some(to)) =
                (soak.boundary(m as usize), soak.boundary(m as usize + 1))
            {
                break (from, to);
            }
            if clock::now_ns() >= wait_until {
                return Err(format!(
                    "the publisher has not reached minute {} (is it stuck on the server?)",
                    m + 2
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let merged = clients.settle(
            Some(m),
            from.iter().zip(&to).map(|(&a, &b)| (a, b)).collect(),
            start,
        )?;
        let latency = Latency::from_histogram(&merged.window.latency);
        let mut span = rss_spans
            .lock()
            .ok()
            .and_then(|spans| spans.get(m as usize).copied())
            .unwrap_or_default();
        if let Some(rss) = sample.rss_bytes {
            span.add(rss);
        }
        let rss_span = (span.count > 0).then_some((span.min, span.max));
        whole_run
            .add(&merged.window.latency)
            .map_err(|e| e.to_string())?;
        let metrics_now = sample.metrics.as_ref();
        let metrics_before = previous_sample.metrics.as_ref();
        let mut events = events_now.since(&previous_events);
        events.slowloris_max_ms = events_now.slowloris_max_ms;
        let row = MinuteRow {
            minute: m + 1,
            rss_bytes: sample.rss_bytes,
            rss_min_bytes: rss_span.map(|s| s.0),
            rss_max_bytes: rss_span.map(|s| s.1),
            fds: sample.fds,
            server_cpu_pct: cpu_pct(
                previous_sample.cpu_ns,
                sample.cpu_ns,
                sampled_at - previous_at,
            ),
            client_cpu_pct: cpu_pct(
                Some(previous_client_cpu),
                Some(client_cpu),
                sampled_at - previous_at,
            )
            .unwrap_or(0.0),
            loadavg,
            server_connections: sample.connections,
            server_channels: gauge(metrics_now, "cinder_channels"),
            server_longpoll_sessions: gauge(metrics_now, "cinder_longpoll_sessions"),
            server_slow_consumer_closes: counter_delta(
                metrics_now,
                metrics_before,
                "cinder_slow_consumer_closes_total",
            ),
            server_protocol_closes: counter_delta(
                metrics_now,
                metrics_before,
                "cinder_protocol_closes_total",
            ),
            published: to.iter().sum::<u64>() - from.iter().sum::<u64>(),
            expected: merged.owed.expected,
            deliveries: merged.window.received,
            deliveries_per_sec: merged.window.received as f64 / 60.0,
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
            p999_us: latency.p999_us,
            max_us: latency.max_us,
            lost: merged.owed.lost,
            duplicates: merged.duplicates.saturating_sub(previous_duplicates),
            healthy_joined: merged.healthy_joined,
            churn_join_p99_us: Latency::from_histogram(&merged.churn_join).p99_us,
            presence_diffs: diffs_now - previous_diffs,
            events,
        };
        println!("{}", row.line());
        report.summary.late += merged.late;
        // Until the final count over the whole run: the minutes' figures.
        let s = &mut report.summary;
        s.published += row.published;
        s.expected += row.expected;
        s.received += row.deliveries;
        s.lost += row.lost;
        s.duplicates += row.duplicates;
        report.minutes.push(row);
        report.summary.minutes_run = m + 1;
        report.summary.latency = Latency::from_histogram(&whole_run);
        finish_summary(report, soak);
        // A chart that cannot be written now will fail at the end too;
        // the run goes on.
        if let Err(e) = report.save(args) {
            eprintln!("cinder-load: warning: {e}");
        }
        previous_duplicates = merged.duplicates;
        previous_diffs = diffs_now;
        previous_events = events_now;
        previous_sample = sample;
        previous_at = sampled_at;
        previous_client_cpu = client_cpu;
    }
    Ok(())
}

/// Fills the summary's verdicts and totals from the rows so far.
fn finish_summary(report: &mut SoakReport, soak: &SoakShared) {
    let warmup = report.settings.warmup;
    let rows = &report.minutes;
    let series = |f: &dyn Fn(&MinuteRow) -> Option<f64>| -> Vec<(u32, f64)> {
        rows.iter()
            .filter_map(|r| Some((r.minute, f(r)?)))
            .collect()
    };
    let s = &mut report.summary;
    s.rss = flatness(
        &series(&|r| r.rss_bytes.map(|b| b as f64)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.rss_floor = flatness(
        &series(&|r| r.rss_min_bytes.map(|b| b as f64)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.fds = flatness(
        &series(&|r| r.fds.map(|f| f as f64)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.connections = flatness(
        &series(&|r| r.server_connections.map(|c| c as f64)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.p99 = flatness(
        &series(&|r| (r.deliveries > 0).then_some(r.p99_us)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.deliveries_per_sec = flatness(
        &series(&|r| Some(r.deliveries_per_sec)),
        warmup,
        FLAT_TOLERANCE_PCT,
    );
    s.events = soak.counters.read();
    let sum = |f: &dyn Fn(&MinuteRow) -> Option<u64>| -> Option<u64> {
        rows.iter().map(f).sum::<Option<u64>>()
    };
    s.server_slow_consumer_closes = sum(&|r| r.server_slow_consumer_closes);
    s.server_protocol_closes = sum(&|r| r.server_protocol_closes);
    report.failures = soak.failures.lock().map(|f| f.clone()).unwrap_or_default();
    report.abuse = soak.abuse.lock().map(|a| a.clone()).unwrap_or_default();
}

fn sleep_until(at_ns: u64) {
    loop {
        let now = clock::now_ns();
        if now >= at_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos((at_ns - now).min(200_000_000)));
    }
}
