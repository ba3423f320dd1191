//! `sweep`: start the Cinder binary at each shard count, run the same
//! scenario against each, and tabulate and chart the results — the way to
//! pick a shard count for a machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Rate, SweepArgs, SweepScenario};
use crate::format::{human, human_duration};
use crate::outcome::{self, Loss};
use crate::report::{write_json, Report, NOT_AVAILABLE};
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
    /// Median server CPU per delivery, µs (`None` when `/proc` could not
    /// be read: not a measured 0).
    pub server_cpu_per_delivery_us: Option<f64>,
    /// Server RSS per joined connection, bytes (`None` as above).
    pub rss_per_connection_bytes: Option<f64>,
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
    /// The scenario's settings in one line (`1k conns · 10 topics · …`),
    /// for the table heading and the chart title.
    pub parameters: String,
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
    if args.shards.contains(&0) {
        return Err("--shards: every shard count must be at least 1".into());
    }
    let mut sweep = SweepReport {
        parameters: describe(&args.scenario),
        ..SweepReport::default()
    };
    for &shards in &args.shards {
        // Checked before every start, not once: another process may take
        // the port between two runs.
        ensure_port_free(args.port)?;
        let mut server = start_server(&server_bin, args, shards)?;
        let pid = server.id();
        let ws = format!("ws://127.0.0.1:{}/socket/websocket", args.port);
        let result = match &args.scenario {
            SweepScenario::Fanout(fanout_args) => {
                let mut run_args = fanout_args.clone();
                run_args.conn.urls = vec![ws];
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
                run_args.conn.urls = vec![ws];
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
            server_cpu_per_delivery_us: median.server_cpu_per_delivery_us,
            rss_per_connection_bytes: report
                .server
                .as_ref()
                .and_then(|s| s.rss_per_connection_bytes),
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
    /// The runs that lost deliveries, each named with its shard count.
    pub fn losses(&self) -> Vec<Loss> {
        outcome::losses(self.rows.iter().zip(&self.runs).map(|(row, report)| {
            (
                format!(
                    "{} at {} shard{}",
                    report.scenario,
                    row.shards,
                    if row.shards == 1 { "" } else { "s" }
                ),
                report,
            )
        }))
    }

    /// Prints the table.
    pub fn print(&self) {
        println!("shard sweep ({}: {})", self.scenario, self.parameters);
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
        let or_na = |value: Option<f64>, decimals: usize| {
            value.map_or(NOT_AVAILABLE.into(), |v| format!("{v:.decimals$}"))
        };
        for r in &self.rows {
            println!(
                "{:>6} {:>14.0} {:>10.0} {:>9.1} {:>9.1} {:>10.1} {:>12} {:>10} {:>6} {:>6}",
                r.shards,
                r.deliveries_per_sec,
                r.publish_rate,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                or_na(r.server_cpu_per_delivery_us, 3),
                or_na(r.rss_per_connection_bytes, 0),
                r.lost,
                r.duplicates
            );
        }
    }
}

/// The scenario's settings in one line, e.g. `1k conns · 1 topic · 64 B
/// payload · rate max (64 in flight per topic) · batch 16 · HTTP publish ·
/// 3 × 5 s windows · vsn 2.0.0 · 1 client thread`. A chart without them
/// cannot be compared with another one.
pub fn describe(scenario: &SweepScenario) -> String {
    let plural = |n: usize, what: &str| {
        format!(
            "{} {what}{}",
            human(n as f64),
            if n == 1 { "" } else { "s" }
        )
    };
    let (conn, measure) = match scenario {
        SweepScenario::Fanout(a) => (&a.conn, &a.measure),
        SweepScenario::Chat(a) => (&a.conn, &a.measure),
    };
    let mut parts = vec![
        plural(conn.conns, "conn"),
        plural(conn.topics, "topic"),
        format!("{} B payload", measure.payload_bytes),
    ];
    match scenario {
        SweepScenario::Fanout(a) => {
            parts.push(match a.rate {
                Rate::Max => format!("rate max ({} in flight per topic)", a.window),
                Rate::PerSecond(r) => format!("{} msg/s", human(r)),
            });
            if a.batch > 1 {
                parts.push(format!("batch {}", a.batch));
            }
            let via = if a.publish.is_some() { "HTTP" } else { "push" };
            parts.push(format!("{via} publish"));
        }
        SweepScenario::Chat(a) => parts.push(format!("{} push/s per client", human(a.rate))),
    }
    parts.push(format!(
        "{} × {} {}",
        measure.runs,
        human_duration(measure.duration),
        if measure.runs == 1 {
            "window"
        } else {
            "windows"
        }
    ));
    parts.push(format!("vsn {}", conn.serializer.vsn()));
    parts.push(plural(conn.threads, "client thread"));
    parts.join(" · ")
}

/// Fails unless 127.0.0.1:`port` is free. Cinder binds with `SO_REUSEPORT`,
/// so if another Cinder (or anything else using `SO_REUSEPORT`) already
/// listens there, the new server starts fine and the kernel splits the
/// connections between the two: the sweep would measure the wrong server.
/// Binding once *without* `SO_REUSEPORT` fails if any socket holds the port.
/// (std sets `SO_REUSEADDR`, so the TIME_WAIT leftovers of the previous
/// run's server do not count as in use.)
pub fn ensure_port_free(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpListener::bind(addr) {
        Ok(_probe) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "{addr} is already in use by another process; stop it or pick another --port \
             (`ss -ltnp 'sport = :{port}'` shows who holds it)"
        )),
        Err(e) => Err(format!("cannot use {addr} for the server: {e}")),
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
    use super::*;

    #[test]
    fn a_port_held_by_a_reuseport_listener_is_refused() {
        // What a running Cinder looks like: SO_REUSEPORT, listening.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(8).unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        let error = ensure_port_free(port).unwrap_err();
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(error.contains("already in use"), "{error}");
        drop(socket);
        ensure_port_free(port).unwrap();
    }

    #[test]
    fn describes_the_scenario_settings() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "cinder-load",
            "sweep",
            "fanout",
            "--conns",
            "10000",
            "--topics",
            "1",
            "--rate",
            "max",
            "--batch",
            "16",
            "--publish",
            "http://h/api/broadcast",
            "--duration",
            "5s",
            "--runs",
            "3",
        ])
        .unwrap();
        let crate::cli::Command::Sweep(sweep) = cli.command else {
            panic!("not a sweep")
        };
        assert_eq!(
            describe(&sweep.scenario),
            "10k conns · 1 topic · 64 B payload · rate max (64 in flight per topic) · \
             batch 16 · HTTP publish · 3 × 5 s windows · vsn 2.0.0 · 1 client thread"
        );
    }

    #[test]
    fn every_lossy_step_is_named_with_its_shard_count() {
        let step = |shards, lost| {
            let mut report = Report {
                scenario: "chat".into(),
                ..Report::default()
            };
            report.totals.lost = lost;
            report.totals.expected = 100;
            (
                SweepRow {
                    shards,
                    lost,
                    ..SweepRow::default()
                },
                report,
            )
        };
        let (rows, runs) = [step(1, 0), step(2, 3), step(4, 1)].into_iter().unzip();
        let sweep = SweepReport {
            rows,
            runs,
            ..SweepReport::default()
        };
        let losses = sweep.losses();
        let runs: Vec<&str> = losses.iter().map(|l| l.run.as_str()).collect();
        assert_eq!(runs, ["chat at 2 shards", "chat at 4 shards"]);
        assert_eq!(outcome::exit_code(&losses), outcome::EXIT_LOST);
    }

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
