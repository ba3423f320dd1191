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
pub mod blocks;
pub mod http;
pub mod longpoll;
pub mod loops;
pub mod minute;
pub mod probe;
pub mod publish;
pub mod report;
pub mod state;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use self::blocks::LatencyBlocks;
use self::http::Endpoints;
use self::loops::{LoopPlan, SettleRequest, Settled, SlowPlan};
use self::minute::{counter_delta, cpu_pct, gauge, table_header, MinuteRow, Owed};
use self::probe::{Probe, ServerSample};
use self::publish::PublishPlan;
use self::report::finish_summary;
pub use self::report::{Settings, SoakReport, Summary, FLAT_TOLERANCE_PCT};
use self::state::{SoakShared, MINUTE_NS};
use crate::cli::SoakArgs;
use crate::client::{ConnSpec, Target};
use crate::clock;
use crate::format::human;
use crate::phoenix::Serializer;
use crate::publisher::{HttpPublisher, MessageShape, Publisher};
use crate::report::Latency;
use crate::scenario::warn_about_server_pid;
use crate::worker::{new_histogram, Shared, WindowStats};

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
                .spawn(move || probe::sample_rss(pid, Duration::from_secs(1), s, spans))
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
    let mut blocks = LatencyBlocks::new(args.warmup);
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
        let rss_mean = span.mean();
        whole_run
            .add(&merged.window.latency)
            .map_err(|e| e.to_string())?;
        blocks.add_minute(m + 1, &merged.window.latency);
        let metrics_now = sample.metrics.as_ref();
        let metrics_before = previous_sample.metrics.as_ref();
        let mut events = events_now.since(&previous_events);
        events.slowloris_max_ms = events_now.slowloris_max_ms;
        let row = MinuteRow {
            minute: m + 1,
            rss_bytes: sample.rss_bytes,
            rss_min_bytes: rss_span.map(|s| s.0),
            rss_max_bytes: rss_span.map(|s| s.1),
            rss_mean_bytes: rss_mean,
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
        report.summary.p99_blocks = blocks.blocks().to_vec();
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

fn sleep_until(at_ns: u64) {
    loop {
        let now = clock::now_ns();
        if now >= at_ns {
            return;
        }
        std::thread::sleep(Duration::from_nanos((at_ns - now).min(200_000_000)));
    }
}
