//! `idle`: hold joined connections (with heartbeats) and watch the
//! server's memory.

use crate::cli::IdleArgs;
use crate::report::Report;
use crate::scenario::fanout::memory;
use crate::scenario::{server_sample, Session};

/// Connects and joins everything, holds it for `--hold`, and reports the
/// server's RSS before, at full join and at the end.
pub fn run(args: &IdleArgs) -> Result<Report, String> {
    let pid = args.output.server_pid;
    let rss_before = server_sample(pid);
    let session = Session::start(&args.conn, None, args.output.quiet)?;
    session.wait_joined();
    session.phase("holding");
    // Let the server settle (allocator caches, lazily grown tables) before
    // the joined reading.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rss_joined = server_sample(pid);
    std::thread::sleep(args.hold);
    let rss_end = server_sample(pid);
    let collected = session.finish()?;
    let mut report = Report {
        scenario: "idle".into(),
        url: args.conn.url.clone(),
        serializer: args.conn.serializer.vsn().into(),
        conns: args.conn.conns,
        topics: args.conn.topics,
        threads: args.conn.threads,
        ..Report::default()
    };
    if let Some(pid) = pid {
        report.server = Some(memory(
            pid,
            rss_before,
            rss_joined,
            rss_end,
            collected.connections.joined,
        ));
    }
    report.connections = collected.connections;
    report.setup = collected.setup;
    report.heartbeat_replies = collected.heartbeat_replies;
    report.other_messages = collected.other_messages;
    Ok(report)
}
