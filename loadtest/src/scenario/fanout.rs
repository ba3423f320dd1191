//! `fanout`: C subscribers over T topics, one publisher.

use std::sync::atomic::Ordering;

use crate::cli::{FanoutArgs, Rate, WatchPid};
use crate::proc_stats;
use crate::publisher::{
    self, HttpPublisher, MessageShape, Publisher, PushPublisher, WindowPlan, WindowPublished,
};
use crate::report::{
    Median, NodeDeliveries, Report, ServerMemory, Totals, WatchedCpu, WindowReport,
};
use crate::scenario::{
    base_report, complete_report, merged_latency, server_sample, warn_about_server_pid,
    window_figures, Collected, Session,
};

/// A window as the main thread saw it; latency and deliveries come from the
/// workers when the run ends.
struct WindowRun {
    index: u32,
    label: String,
    target_rate: Option<f64>,
    published: WindowPublished,
    server_cpu_ns: Option<u64>,
    client_cpu_ns: u64,
    /// CPU time of each `--watch-pid` process over the window.
    watched_cpu_ns: Vec<Option<u64>>,
}

/// Runs the scenario and returns its report.
pub fn run(args: &FanoutArgs) -> Result<Report, String> {
    if args.measure.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if !args.latency_at.is_empty() && args.rate != Rate::Max {
        return Err(
            "--latency-at needs --rate max (it is a percentage of the measured maximum)".into(),
        );
    }
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
    let rss_before = server_sample(pid);
    let session = Session::start(&args.conn, None, args.output.quiet)?;
    let joined = session.wait_joined();
    let rss_joined = server_sample(pid);
    if joined == 0 {
        let collected = session.finish()?;
        return Err(format!(
            "no connection joined: {:?}",
            collected.connections.failures
        ));
    }
    if !args.publish_after.is_zero() {
        session.phase("waiting to publish");
        std::thread::sleep(args.publish_after);
    }
    session.phase("publisher");
    let shape = MessageShape {
        topics: session.topics.clone(),
        event: args.measure.event.clone(),
        payload_bytes: args.measure.payload_bytes,
    };
    let mut publisher = match &args.publish {
        Some(url) => Publisher::Http(HttpPublisher::new(url, args.api_key.clone())?),
        None => Publisher::Push(
            PushPublisher::connect(&session.target, args.conn.serializer, &session.topics)
                .map_err(|e| e.to_string())?,
        ),
    };
    let mut next_seq = vec![0u64; session.topics.len()];
    let mut runs = Vec::new();
    let mut window = 0u32;
    let mut measure = |session: &Session, label: String, rate: Rate, runs: &mut Vec<WindowRun>| {
        session.phase(format!("window {window} ({label})"));
        let plan = WindowPlan {
            window,
            duration: args.measure.duration,
            rate,
            batch: args.batch,
            in_flight: args.window.max(args.batch as u64),
        };
        let cpu_before = server_sample(pid).map(|s| s.cpu_ns);
        let watched_before = watched_cpu(&args.watch_pids);
        let client_before = proc_stats::self_cpu_ns();
        let received_before = session.shared.received.load(Ordering::Relaxed);
        let published = publisher::run_window(
            &mut publisher,
            &shape,
            &plan,
            &session.shared,
            &mut next_seq,
        );
        session.phase(format!("window {window} draining"));
        session.drain(
            received_before + published.expected,
            args.measure.drain_timeout,
        );
        let server_cpu_ns =
            cpu_before.and_then(|before| Some(server_sample(pid)?.cpu_ns.saturating_sub(before)));
        let watched_cpu_ns = watched_before
            .iter()
            .zip(watched_cpu(&args.watch_pids))
            .map(|(before, after)| Some(after?.saturating_sub((*before)?)))
            .collect();
        runs.push(WindowRun {
            index: window,
            label,
            target_rate: match rate {
                Rate::PerSecond(r) => Some(r),
                Rate::Max => None,
            },
            published,
            server_cpu_ns,
            client_cpu_ns: proc_stats::self_cpu_ns() - client_before,
            watched_cpu_ns,
        });
        window += 1;
    };
    for _ in 0..args.measure.runs {
        let label = match args.rate {
            Rate::Max => "max".to_string(),
            Rate::PerSecond(r) => format!("{r} msg/s"),
        };
        measure(&session, label, args.rate, &mut runs);
    }
    let max_rate = crate::report::median(runs.iter().map(|r| publish_rate(&r.published)).collect());
    let main_windows = runs.len();
    for pct in &args.latency_at {
        let rate = (max_rate * pct / 100.0).max(1.0);
        measure(
            &session,
            format!("{pct}% of max"),
            Rate::PerSecond(rate),
            &mut runs,
        );
    }
    let first_publish_ns = runs.first().map_or(u64::MAX, |r| r.published.started_ns);
    let rss_end = server_sample(pid);
    let collected = session.finish()?;

    let mut report = Report {
        publish: args.publish.clone(),
        payload_bytes: args.measure.payload_bytes,
        rate: match args.rate {
            Rate::Max => "max".into(),
            Rate::PerSecond(r) => r.to_string(),
        },
        batch: args.batch,
        ..base_report("fanout", &args.conn)
    };
    let windows: Vec<WindowReport> = runs
        .iter()
        .map(|r| window_report(r, &collected, args))
        .collect();
    report.median = Some(Median::of(&windows[..main_windows]));
    report.latency_at = windows[main_windows..].to_vec();
    report.windows = windows[..main_windows].to_vec();
    report.totals = settle(&collected, &runs, &next_seq, first_publish_ns);
    complete_report(
        &mut report,
        collected,
        pid,
        [rss_before, rss_joined, rss_end],
    );
    Ok(report)
}

fn publish_rate(p: &WindowPublished) -> f64 {
    let seconds = p.ended_ns.saturating_sub(p.started_ns) as f64 / 1e9;
    let total: u64 = p.per_topic.iter().sum();
    if seconds > 0.0 {
        total as f64 / seconds
    } else {
        0.0
    }
}

/// CPU time of each watched process now; `None` for one that cannot be read.
fn watched_cpu(watch: &[WatchPid]) -> Vec<Option<u64>> {
    watch
        .iter()
        .map(|w| proc_stats::sample(w.pid).ok().map(|s| s.cpu_ns))
        .collect()
}

fn window_report(run: &WindowRun, collected: &Collected, args: &FanoutArgs) -> WindowReport {
    let stats = collected.windows.get(run.index as usize);
    let (received, deliveries_per_sec) = window_figures(stats, run.published.started_ns);
    let by_node = args
        .conn
        .urls
        .iter()
        .enumerate()
        .map(|(node, url)| {
            let mine = stats
                .and_then(|s| s.received_by_node.get(node).copied())
                .unwrap_or(0);
            NodeDeliveries {
                url: url.clone(),
                received: mine,
                deliveries_per_sec: if received > 0 {
                    deliveries_per_sec * mine as f64 / received as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    let watched = args
        .watch_pids
        .iter()
        .zip(&run.watched_cpu_ns)
        .map(|(w, ns)| WatchedCpu {
            name: w.name.clone(),
            pid: w.pid,
            cpu_ms: ns.map(|ns| ns as f64 / 1e6),
        })
        .collect();
    let per_delivery = |ns: u64| {
        if received > 0 {
            ns as f64 / 1000.0 / received as f64
        } else {
            0.0
        }
    };
    WindowReport {
        index: run.index,
        label: run.label.clone(),
        target_rate: run.target_rate,
        seconds: run
            .published
            .ended_ns
            .saturating_sub(run.published.started_ns) as f64
            / 1e9,
        published: run.published.per_topic.iter().sum(),
        publish_rate: publish_rate(&run.published),
        expected: run.published.expected,
        received,
        deliveries_per_sec,
        latency: merged_latency(stats),
        server_cpu_ms: run.server_cpu_ns.map(|ns| ns as f64 / 1e6),
        server_cpu_per_delivery_us: run.server_cpu_ns.map(per_delivery),
        client_cpu_per_delivery_us: per_delivery(run.client_cpu_ns),
        publish_errors: run.published.errors.len() as u64,
        by_node,
        watched,
    }
}

/// Exact loss and duplicate accounting over every connection that had
/// joined before publishing began (later joiners could not have seen the
/// earlier messages, so they are not charged with them).
fn settle(
    collected: &Collected,
    runs: &[WindowRun],
    published: &[u64],
    first_publish_ns: u64,
) -> Totals {
    let mut totals = Totals {
        published: published.iter().sum(),
        ..Totals::default()
    };
    let uncertain: Vec<&(usize, u64)> = runs.iter().flat_map(|r| &r.published.uncertain).collect();
    for client in &collected.clients {
        totals.duplicates += client.tracker.duplicates;
        if !client.joined && client.joined_ns == 0 {
            totals.unexpected += client.tracker.settle(&[]).1;
            continue;
        }
        if client.joined_ns > first_publish_ns {
            continue;
        }
        let sent = published[client.topic];
        let (lost, unexpected) = client.tracker.settle(&[sent]);
        let excused = uncertain
            .iter()
            .filter(|(topic, seq)| *topic == client.topic && !client.tracker.has(0, *seq))
            .count() as u64;
        totals.expected += sent - excused;
        totals.received += client.tracker.distinct_below(0, sent);
        totals.lost += lost - excused;
        totals.unexpected += unexpected;
    }
    if let Some(first_error) = runs.iter().flat_map(|r| &r.published.errors).next() {
        eprintln!("publish errors occurred; first: {first_error}");
    }
    totals
}

/// The server's memory figures; a reading that failed stays `None`.
pub fn memory(
    pid: u32,
    before: Option<proc_stats::ProcSample>,
    joined_sample: Option<proc_stats::ProcSample>,
    end: Option<proc_stats::ProcSample>,
    joined: u64,
) -> ServerMemory {
    let before = before.map(|s| s.rss_bytes);
    let at_join = joined_sample.map(|s| s.rss_bytes);
    ServerMemory {
        pid,
        rss_before_bytes: before,
        rss_joined_bytes: at_join,
        rss_end_bytes: end.map(|s| s.rss_bytes),
        rss_per_connection_bytes: match (before, at_join) {
            (Some(before), Some(at_join)) if joined > 0 => {
                Some(at_join.saturating_sub(before) as f64 / joined as f64)
            }
            _ => None,
        },
    }
}
