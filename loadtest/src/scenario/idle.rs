//! `idle`: hold joined connections (with heartbeats) and watch the
//! server's memory.

use crate::cli::IdleArgs;
use crate::report::Report;
use crate::scenario::{
    base_report, complete_report, server_sample, warn_about_server_pid, Session,
};

/// Connects and joins everything, holds it for `--hold`, and reports the
/// server's RSS before, at full join and at the end.
pub fn run(args: &IdleArgs) -> Result<Report, String> {
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
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
    let mut report = base_report("idle", &args.conn);
    complete_report(
        &mut report,
        collected,
        pid,
        [rss_before, rss_joined, rss_end],
    );
    Ok(report)
}
