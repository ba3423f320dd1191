//! `presence`: a join storm into one presence-enabled topic.
//!
//! Every joining client gets a `presence_state`, and every join is announced
//! to the members already there. Announced one by one, N joins cost
//! N × (N + 1) / 2 diff deliveries; a server that batches the joins of a loop
//! turn into one diff sends far fewer. This scenario counts what arrives.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cli::PresenceArgs;
use crate::clock;
use crate::report::{PresenceReport, Report};
use crate::scenario::{
    base_report, complete_report, server_sample, warn_about_server_pid, Session,
};

/// Joins every client to the room, waits until presence traffic has been
/// quiet for `--settle`, and reports it.
pub fn run(args: &PresenceArgs) -> Result<Report, String> {
    if args.conn.topics != 1 {
        return Err("presence: use --topics 1 (every client joins the same room)".into());
    }
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
    let before = server_sample(pid);
    let started_ns = clock::now_ns();
    let session = Session::start(&args.conn, None, args.output.quiet)?;
    session.wait_joined();
    session.phase("presence settling");
    let shared = session.shared.clone();
    let settle_ns = args.settle.as_nanos() as u64;
    let deadline = clock::now_ns() + 120 * 1_000_000_000;
    loop {
        let last = shared.presence_last_ns.load(Ordering::Relaxed);
        let now = clock::now_ns();
        if now >= deadline || (last > 0 && now.saturating_sub(last) > settle_ns) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let joined_sample = server_sample(pid);
    let members = shared.joined.load(Ordering::Relaxed);
    let diffs = shared.presence_diffs.load(Ordering::Relaxed);
    let unbatched = members * (members + 1) / 2;
    let last_ns = shared.presence_last_ns.load(Ordering::Relaxed);
    let presence = PresenceReport {
        members,
        states: shared.presence_states.load(Ordering::Relaxed),
        diffs,
        diff_entries: shared.presence_entries.load(Ordering::Relaxed),
        bytes: shared.presence_bytes.load(Ordering::Relaxed),
        unbatched_diffs: unbatched,
        batching_factor: if diffs > 0 {
            unbatched as f64 / diffs as f64
        } else {
            0.0
        },
        seconds: last_ns.saturating_sub(started_ns) as f64 / 1e9,
        server_cpu_ms: match (before, joined_sample) {
            (Some(a), Some(b)) => Some(b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e6),
            _ => None,
        },
    };
    let collected = session.finish()?;
    let mut report = base_report("presence", &args.conn);
    complete_report(
        &mut report,
        collected,
        pid,
        [before, joined_sample, joined_sample],
    );
    report.presence = Some(presence);
    Ok(report)
}
