//! `chat`: every client pushes into its room and receives the room's
//! broadcasts (sender included, as a `broadcast` route sends them).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cli::ChatArgs;
use crate::report::{Median, Report, Totals, WindowReport};
use crate::scenario::{
    base_report, complete_report, merged_latency, server_sample, warn_about_server_pid,
    window_figures, Collected, Session,
};
use crate::worker::ChatPlan;
use crate::{clock, proc_stats};

/// Runs the scenario and returns its report.
pub fn run(args: &ChatArgs) -> Result<Report, String> {
    if args.measure.runs == 0 || args.rate <= 0.0 {
        return Err("--runs must be at least 1 and --rate above 0".into());
    }
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
    let rss_before = server_sample(pid);
    let chat = ChatPlan {
        rate_per_client: args.rate,
        payload_bytes: args.measure.payload_bytes,
        event: args.measure.event.clone(),
    };
    let session = Session::start(&args.conn, Some(chat), args.output.quiet)?;
    let joined = session.wait_joined();
    let rss_joined = server_sample(pid);
    if joined == 0 {
        let collected = session.finish()?;
        return Err(format!(
            "no connection joined: {:?}",
            collected.connections.failures
        ));
    }
    let shared = session.shared.clone();
    let first_push_ns = clock::now_ns();
    let mut windows = Vec::new();
    let mut starts = Vec::new();
    for window in 0..args.measure.runs as u32 {
        session.phase(format!("window {window}"));
        let cpu_before = server_sample(pid).map(|s| s.cpu_ns);
        let client_before = proc_stats::self_cpu_ns();
        let acked_before = shared.pushes_acked.load(Ordering::Relaxed);
        let expected_before = shared.chat_expected.load(Ordering::Relaxed);
        let received_before = shared.received.load(Ordering::Relaxed);
        shared.window.store(window, Ordering::Release);
        let started_ns = clock::now_ns();
        shared.pushing.store(true, Ordering::Release);
        std::thread::sleep(args.measure.duration);
        shared.pushing.store(false, Ordering::Release);
        let ended_ns = clock::now_ns();
        session.phase(format!("window {window} draining"));
        // Acks of the last pushes are still on their way: let them land
        // before reading what the window owes.
        std::thread::sleep(Duration::from_millis(100));
        let expected = shared.chat_expected.load(Ordering::Relaxed) - expected_before;
        session.drain(received_before + expected, args.measure.drain_timeout);
        let seconds = (ended_ns - started_ns) as f64 / 1e9;
        let published = shared.pushes_acked.load(Ordering::Relaxed) - acked_before;
        windows.push(WindowReport {
            index: window,
            label: format!("{} push/s each", args.rate),
            target_rate: Some(args.rate * joined as f64),
            seconds,
            published,
            publish_rate: published as f64 / seconds,
            expected,
            server_cpu_ms: cpu_before
                .and_then(|b| Some(server_sample(pid)?.cpu_ns.saturating_sub(b) as f64 / 1e6)),
            client_cpu_per_delivery_us: (proc_stats::self_cpu_ns() - client_before) as f64 / 1000.0,
            ..WindowReport::default()
        });
        starts.push(started_ns);
    }
    let rss_end = server_sample(pid);
    let collected = session.finish()?;
    for (w, &started_ns) in windows.iter_mut().zip(&starts) {
        let stats = collected.windows.get(w.index as usize);
        let (received, per_sec) = window_figures(stats, started_ns);
        w.received = received;
        w.deliveries_per_sec = per_sec;
        w.latency = merged_latency(stats);
        if received > 0 {
            w.server_cpu_per_delivery_us = w.server_cpu_ms.map(|ms| ms * 1000.0 / received as f64);
            w.client_cpu_per_delivery_us /= received as f64;
        }
    }
    let mut report = Report {
        payload_bytes: args.measure.payload_bytes,
        rate: format!("{} per client", args.rate),
        batch: 1,
        median: Some(Median::of(&windows)),
        windows,
        ..base_report("chat", &args.conn)
    };
    report.totals = settle(&collected, args.conn.topics, first_push_ns);
    complete_report(
        &mut report,
        collected,
        pid,
        [rss_before, rss_joined, rss_end],
    );
    Ok(report)
}

/// Every receiver owes each acked push of every member of its room.
fn settle(collected: &Collected, topics: usize, first_push_ns: u64) -> Totals {
    // acked[topic][slot]: pushes the server accepted from that member.
    let mut acked: Vec<Vec<u64>> = vec![Vec::new(); topics];
    let mut totals = Totals::default();
    for client in &collected.clients {
        let room = &mut acked[client.topic];
        if room.len() <= client.slot as usize {
            room.resize(client.slot as usize + 1, 0);
        }
        room[client.slot as usize] = client.pushes_acked;
        totals.published += client.pushes_acked;
        totals.push_errors += client.push_errors;
    }
    for client in &collected.clients {
        totals.duplicates += client.tracker.duplicates;
        if client.joined_ns == 0 || client.joined_ns > first_push_ns {
            totals.unexpected += client.tracker.settle(&[]).1;
            continue;
        }
        let room = &acked[client.topic];
        let (lost, unexpected) = client.tracker.settle(room);
        let owed: u64 = room.iter().sum();
        totals.expected += owed;
        totals.received += owed - lost;
        totals.lost += lost;
        totals.unexpected += unexpected;
    }
    totals
}
