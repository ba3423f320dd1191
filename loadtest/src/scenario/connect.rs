//! `connect`: a connect + join storm.

use crate::cli::ConnectArgs;
use crate::report::Report;
use crate::scenario::{
    base_report, complete_report, server_sample, warn_about_server_pid, Session,
};

/// Opens every connection, joins, and reports the rates and latencies.
pub fn run(args: &ConnectArgs) -> Result<Report, String> {
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
    let rss_before = server_sample(pid);
    let session = Session::start(&args.conn, None, args.output.quiet)?;
    session.wait_joined();
    let rss_joined = server_sample(pid);
    let collected = session.finish()?;
    let mut report = base_report("connect", &args.conn);
    complete_report(
        &mut report,
        collected,
        pid,
        [rss_before, rss_joined, rss_joined],
    );
    Ok(report)
}
