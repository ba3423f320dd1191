//! `sweep`: start the Cinder binary at each shard count, run the same
//! scenario against each, and tabulate and chart the results — the way to
//! pick a shard count for a machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{SweepArgs, SweepScenario};
use crate::report::{write_json, Report};
use crate::scenario::{chat, fanout};

/// One shard count's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepRow {
    /// Shards the server ran.
    pub shards: usize,
    /// Median deliveries per second.
    pub deliveries_per_sec: f64,
    /// Median publish (or push) rate.
    pub publish_rate: f64,
    /// Median p50 latency, µs.
    pub p50_us: f64,
    /// Median p99 latency, µs.
    pub p99_us: f64,
    /// Median p99.9 latency, µs.
    pub p999_us: f64,
    /// Median server CPU per delivery, µs.
    pub server_cpu_per_delivery_us: f64,
    /// Server RSS per joined connection, bytes.
    pub rss_per_connection_bytes: f64,
    /// Lost deliveries.
    pub lost: u64,
    /// Duplicated deliveries.
    pub duplicates: u64,
}

/// The whole sweep.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// One row per shard count.
    pub rows: Vec<SweepRow>,
    /// The full report of each run.
    pub runs: Vec<Report>,
}

/// Runs the sweep.
pub fn run(args: &SweepArgs) -> Result<SweepReport, String> {
    let server_bin = match &args.server_bin {
        Some(path) => path.clone(),
        None => default_server_bin()?,
    };
    if !server_bin.exists() {
        return Err(format!(
            "server binary {} not found (build it with `cargo build --release`, or pass --server-bin)",
            server_bin.display()
        ));
    }
    let mut sweep = SweepReport::default();
    for &shards in &args.shards {
        let mut server = start_server(&server_bin, args, shards)?;
        let pid = server.id();
        let ws = format!("ws://127.0.0.1:{}/socket/websocket", args.port);
        let result = match &args.scenario {
            SweepScenario::Fanout(fanout_args) => {
                let mut run_args = fanout_args.clone();
                run_args.conn.url = ws;
                run_args.publish = fanout_args
                    .publish
                    .as_ref()
                    .map(|url| rebase(url, args.port));
                run_args.output.server_pid = Some(pid);
                run_args.output.json = None;
                fanout::run(&run_args)
            }
            SweepScenario::Chat(chat_args) => {
                let mut run_args = chat_args.clone();
                run_args.conn.url = ws;
                run_args.output.server_pid = Some(pid);
                run_args.output.json = None;
                chat::run(&run_args)
            }
        };
        stop_server(&mut server);
        let report = result.map_err(|e| format!("with --shards {shards}: {e}"))?;
        let median = report.median.clone().unwrap_or_default();
        sweep.scenario = report.scenario.clone();
        sweep.rows.push(SweepRow {
            shards,
            deliveries_per_sec: median.deliveries_per_sec,
            publish_rate: median.publish_rate,
            p50_us: median.p50_us,
            p99_us: median.p99_us,
            p999_us: median.p999_us,
            server_cpu_per_delivery_us: median.server_cpu_per_delivery_us.unwrap_or(0.0),
            rss_per_connection_bytes: report
                .server
                .as_ref()
                .map_or(0.0, |s| s.rss_per_connection_bytes),
            lost: report.totals.lost,
            duplicates: report.totals.duplicates,
        });
        sweep.runs.push(report);
    }
    if let Some(path) = &args.json {
        write_json(&sweep, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    crate::chart::sweep_svg(&sweep, &args.svg)
        .map_err(|e| format!("{}: {e}", args.svg.display()))?;
    Ok(sweep)
}

impl SweepReport {
    /// Prints the table.
    pub fn print(&self) {
        println!("shard sweep ({})", self.scenario);
        println!(
            "{:>6} {:>14} {:>10} {:>9} {:>9} {:>10} {:>12} {:>10} {:>6} {:>6}",
            "shards",
            "deliveries/s",
            "msgs/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "srv µs/dlv",
            "B/conn",
            "lost",
            "dups"
        );
        for r in &self.rows {
            println!(
                "{:>6} {:>14.0} {:>10.0} {:>9.1} {:>9.1} {:>10.1} {:>12.3} {:>10.0} {:>6} {:>6}",
                r.shards,
                r.deliveries_per_sec,
                r.publish_rate,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.server_cpu_per_delivery_us,
                r.rss_per_connection_bytes,
                r.lost,
                r.duplicates
            );
        }
    }
}

fn default_server_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(exe.with_file_name("cinder"))
}

/// Replaces the authority of an http:// URL with 127.0.0.1:port.
fn rebase(url: &str, port: u16) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let path = rest.find('/').map_or("/api/broadcast", |at| &rest[at..]);
    format!("http://127.0.0.1:{port}{path}")
}

fn start_server(bin: &PathBuf, args: &SweepArgs, shards: usize) -> Result<Child, String> {
    let mut command = Command::new(bin);
    command
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{}", args.port),
            "--shards",
            &shards.to_string(),
        ])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(config) = &args.server_config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    for _ in 0..200 {
        if healthy(args.port) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the server exited at start ({status}); is port {} free?",
                args.port
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_server(&mut child);
    Err(format!(
        "the server did not answer /healthz on port {} within 10 s",
        args.port
    ))
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn stop_server(child: &mut Child) {
    // SAFETY: kill() on the PID of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    #[test]
    fn rebase_keeps_the_path() {
        assert_eq!(
            super::rebase("http://10.0.0.1:4000/api/broadcast", 4100),
            "http://127.0.0.1:4100/api/broadcast"
        );
        assert_eq!(
            super::rebase("http://h", 1),
            "http://127.0.0.1:1/api/broadcast"
        );
    }
}
