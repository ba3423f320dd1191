//! `connect`: a connect + join storm.

use crate::cli::ConnectArgs;
use crate::report::Report;
use crate::scenario::fanout::memory;
use crate::scenario::{server_sample, Session};

/// Opens every connection, joins, and reports the rates and latencies.
pub fn run(args: &ConnectArgs) -> Result<Report, String> {
    let pid = args.output.server_pid;
    let rss_before = server_sample(pid);
    let session = Session::start(&args.conn, None, args.output.quiet)?;
    session.wait_joined();
    let rss_joined = server_sample(pid);
    let collected = session.finish()?;
    let mut report = Report {
        scenario: "connect".into(),
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
            rss_joined,
            collected.connections.joined,
        ));
    }
    report.connections = collected.connections;
    report.setup = collected.setup;
    report.heartbeat_replies = collected.heartbeat_replies;
    report.other_messages = collected.other_messages;
    Ok(report)
}
