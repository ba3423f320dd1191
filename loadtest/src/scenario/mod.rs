//! The scenarios, and the session machinery they share: starting the
//! worker threads, waiting for joins, showing progress, and merging what the
//! workers measured.

pub mod ceiling;
pub mod chat;
pub mod connect;
pub mod fanout;
pub mod idle;
pub mod presence;
pub mod recover;
pub mod soak;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::ConnArgs;
use crate::client::{ConnSpec, Target};
use crate::clock;
use crate::proc_stats;
use crate::report::{Connections, Latency, Report, Setup, NOT_AVAILABLE};
use crate::worker::{self, ChatPlan, ClientOutcome, Shared, WindowStats, WorkerPlan, WorkerResult};

/// Connections in flight, driven by worker threads.
pub struct Session {
    /// State shared with the workers.
    pub shared: Arc<Shared>,
    /// Topic names by number.
    pub topics: Vec<Arc<str>>,
    /// Where the clients connect: the first `--url` (the push publisher's).
    pub target: Arc<Target>,
    /// Every `--url`, in order; [`ConnSpec::node`] indexes it.
    pub targets: Vec<Arc<Target>>,
    conns: usize,
    setup_timeout: Duration,
    handles: Vec<std::thread::JoinHandle<std::io::Result<WorkerResult>>>,
    progress: Progress,
}

/// What all workers measured, merged.
#[derive(Debug)]
pub struct Collected {
    /// Every connection, by global index.
    pub clients: Vec<ClientOutcome>,
    /// Per-window deliveries, merged over workers.
    pub windows: Vec<WindowStats>,
    /// Connection outcomes.
    pub connections: Connections,
    /// Connect + join phase figures.
    pub setup: Setup,
    /// Heartbeat replies.
    pub heartbeat_replies: u64,
    /// Unmeasured messages.
    pub other_messages: u64,
}

impl Session {
    /// Plans the connections of `args` over its threads and starts them.
    pub fn start(args: &ConnArgs, chat: Option<ChatPlan>, quiet: bool) -> Result<Session, String> {
        Session::start_with(args, chat, quiet, |_| true)
    }

    /// [`Session::start`], with `plan` shown each connection's spec before
    /// it is handed to a worker: it may change it (its node, a history
    /// join) or leave the connection out by returning `false`.
    pub fn start_with(
        args: &ConnArgs,
        chat: Option<ChatPlan>,
        quiet: bool,
        mut plan: impl FnMut(&mut ConnSpec) -> bool,
    ) -> Result<Session, String> {
        if args.conns == 0 || args.topics == 0 || args.threads == 0 {
            return Err("--conns, --topics and --threads must be at least 1".into());
        }
        let fd_limit = crate::system::raise_fd_limit()
            .map_err(|e| format!("cannot raise the fd limit: {e}"))?;
        if args.conns as u64 + 64 > fd_limit {
            return Err(format!(
                "--conns {} needs more file descriptors than this process may open ({fd_limit}); run several cinder-load processes",
                args.conns
            ));
        }
        if args.urls.is_empty() {
            return Err("--url is needed".into());
        }
        if !args.split.is_empty() && args.split.len() != args.urls.len() {
            return Err(format!(
                "--split gives {} shares for {} --url",
                args.split.len(),
                args.urls.len()
            ));
        }
        if !args.split.is_empty() && args.split.iter().all(|&w| w == 0) {
            return Err("--split must give some --url a share above 0".into());
        }
        let targets = args
            .urls
            .iter()
            .map(|url| {
                Target::from_url(
                    url,
                    args.serializer,
                    &args.params,
                    args.auth_token.as_deref(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let nodes = crate::spread::spread(args.conns, args.topics, targets.len(), &args.split);
        let topics: Vec<Arc<str>> = (0..args.topics)
            .map(|t| Arc::from(format!("{}:{t}", args.topic_prefix)))
            .collect();
        let src_ips = args
            .src_ips
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        let mut plans: Vec<WorkerPlan> = (0..args.threads)
            .map(|_| WorkerPlan {
                specs: Vec::new(),
                targets: targets.clone(),
                serializer: args.serializer,
                connect_rate: args.connect_rate / args.threads as f64,
                max_pending: args.max_pending.max(1),
                src_ips: src_ips.clone(),
                heartbeat: args.heartbeat,
                chat: chat.clone(),
            })
            .collect();
        let mut conns = 0;
        for (index, &node) in nodes.iter().enumerate() {
            let topic = index % args.topics;
            let mut spec = ConnSpec {
                index,
                topic,
                topic_name: topics[topic].clone(),
                slot: (index / args.topics) as u32,
                node,
                history: None,
            };
            if plan(&mut spec) {
                if spec.node >= targets.len() {
                    return Err(format!(
                        "connection {index} planned on --url number {} of {}",
                        spec.node + 1,
                        targets.len()
                    ));
                }
                plans[conns % args.threads].specs.push(spec);
                conns += 1;
            }
        }
        if conns == 0 {
            return Err("no connection left to open".into());
        }
        let shared = Arc::new(Shared::new(args.topics));
        let handles = worker::spawn_workers(plans, &shared);
        let progress = Progress::start(shared.clone(), conns as u64, quiet);
        Ok(Session {
            shared,
            topics,
            target: targets[0].clone(),
            targets,
            conns,
            setup_timeout: args.setup_timeout,
            handles,
            progress,
        })
    }

    /// Waits until every connection has joined or failed, or the setup
    /// timeout passes. Returns the number joined.
    pub fn wait_joined(&self) -> u64 {
        let deadline = clock::now_ns() + self.setup_timeout.as_nanos() as u64;
        loop {
            let joined = self.shared.joined.load(Ordering::Relaxed);
            let failed = self.shared.failed.load(Ordering::Relaxed);
            if joined + failed >= self.conns as u64 || clock::now_ns() >= deadline {
                return joined;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sets the progress line's phase label.
    pub fn phase(&self, label: impl Into<String>) {
        self.progress.set_phase(label.into());
    }

    /// Waits for deliveries in flight: until `target` distinct deliveries
    /// have arrived, nothing arrived for a second, or `timeout` passed.
    pub fn drain(&self, target: u64, timeout: Duration) {
        let deadline = clock::now_ns() + timeout.as_nanos() as u64;
        let mut last = self.shared.received.load(Ordering::Relaxed);
        let mut last_change = clock::now_ns();
        loop {
            let now = clock::now_ns();
            let received = self.shared.received.load(Ordering::Relaxed);
            if received >= target || now >= deadline || now - last_change > 1_000_000_000 {
                return;
            }
            if received != last {
                last = received;
                last_change = now;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the workers and merges what they measured.
    pub fn finish(self) -> Result<Collected, String> {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.progress.finish();
        let mut clients = Vec::with_capacity(self.conns);
        let mut windows: Vec<WindowStats> = Vec::new();
        let mut handshake = worker::new_histogram();
        let mut join = worker::new_histogram();
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let (mut heartbeat_replies, mut other_messages) = (0, 0);
        let (mut first_start, mut last_upgraded, mut last_joined) = (u64::MAX, 0u64, 0u64);
        for handle in self.handles {
            let result = handle
                .join()
                .map_err(|_| "a worker thread panicked".to_string())?
                .map_err(|e| format!("worker event loop failed: {e}"))?;
            clients.extend(result.clients);
            if windows.len() < result.windows.len() {
                windows.resize_with(result.windows.len(), WindowStats::default);
            }
            for (merged, w) in windows.iter_mut().zip(&result.windows) {
                merged.received += w.received;
                if merged.received_by_node.len() < w.received_by_node.len() {
                    merged.received_by_node.resize(w.received_by_node.len(), 0);
                }
                for (m, n) in merged.received_by_node.iter_mut().zip(&w.received_by_node) {
                    *m += n;
                }
                merged.last_rx_ns = merged.last_rx_ns.max(w.last_rx_ns);
                merged.latency.add(&w.latency).map_err(|e| e.to_string())?;
            }
            handshake
                .add(&result.handshake)
                .map_err(|e| e.to_string())?;
            join.add(&result.join).map_err(|e| e.to_string())?;
            for (reason, n) in result.failures {
                *failures.entry(reason).or_insert(0) += n;
            }
            heartbeat_replies += result.heartbeat_replies;
            other_messages += result.other_messages;
            first_start = first_start.min(result.first_start_ns);
            last_upgraded = last_upgraded.max(result.last_upgraded_ns);
            last_joined = last_joined.max(result.last_joined_ns);
        }
        clients.sort_by_key(|c| c.index);
        let shared = &self.shared;
        let connections = Connections {
            requested: self.conns as u64,
            upgraded: shared.upgraded.load(Ordering::Relaxed),
            joined: shared.joined.load(Ordering::Relaxed),
            failed_before_join: shared.failed.load(Ordering::Relaxed),
            dropped_after_join: shared.dropped.load(Ordering::Relaxed),
            failures,
        };
        let per_sec = |count: u64, end: u64| {
            let seconds = end.saturating_sub(first_start) as f64 / 1e9;
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        let setup = Setup {
            seconds: last_joined.saturating_sub(first_start) as f64 / 1e9,
            handshakes_per_sec: per_sec(connections.upgraded, last_upgraded),
            joins_per_sec: per_sec(connections.joined, last_joined),
            handshake_latency: Latency::from_histogram(&handshake),
            join_latency: Latency::from_histogram(&join),
        };
        Ok(Collected {
            clients,
            windows,
            connections,
            setup,
            heartbeat_replies,
            other_messages,
        })
    }
}

/// Merges windows' histograms.
pub fn merged_latency(stats: Option<&WindowStats>) -> Latency {
    stats.map_or_else(Latency::default, |s| Latency::from_histogram(&s.latency))
}

/// A histogram-free snapshot of a window's deliveries.
pub fn window_figures(stats: Option<&WindowStats>, started_ns: u64) -> (u64, f64) {
    match stats {
        Some(s) if s.received > 0 => {
            let seconds = s.last_rx_ns.saturating_sub(started_ns) as f64 / 1e9;
            (
                s.received,
                if seconds > 0.0 {
                    s.received as f64 / seconds
                } else {
                    0.0
                },
            )
        }
        _ => (0, 0.0),
    }
}

/// Reads the server's CPU and RSS, if a PID was given.
pub fn server_sample(pid: Option<u32>) -> Option<proc_stats::ProcSample> {
    pid.and_then(|pid| proc_stats::sample(pid).ok())
}

/// What is wrong with `--server-pid`, if anything: no such process, or a
/// process that is not a Cinder server. The classic mistake is the PID of
/// `cargo run` (cargo, idle, a few MiB) instead of its `cinder` child, which
/// silently gives ~0 CPU per delivery and ~0 B per connection.
pub fn server_pid_warning(pid: Option<u32>) -> Option<String> {
    let pid = pid?;
    match proc_stats::name(pid) {
        Err(e) => Some(format!(
            "--server-pid {pid}: cannot read /proc/{pid} ({e}); is the server running? \
             Server CPU and RSS are reported as {NOT_AVAILABLE}"
        )),
        Ok(name) if !name.is_cinder() => Some(format!(
            "--server-pid {pid} is `{}`, not a Cinder server (`{}`): the CPU and RSS \
             reported are that process's. With `cargo run`, pass the PID of the server, \
             not cargo's (`pgrep -x {}`)",
            name.exe.as_deref().unwrap_or(&name.comm),
            proc_stats::SERVER_NAME,
            proc_stats::SERVER_NAME
        )),
        Ok(_) => None,
    }
}

/// Prints [`server_pid_warning`] on stderr. Scenarios call this first, so
/// the warning comes before the run rather than after minutes of it.
pub fn warn_about_server_pid(pid: Option<u32>) {
    if let Some(warning) = server_pid_warning(pid) {
        eprintln!("cinder-load: warning: {warning}");
    }
}

/// The progress line: a spinner with live counters, on stderr.
struct Progress {
    bar: Option<ProgressBar>,
    done: Arc<AtomicBool>,
    phase: Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(shared: Arc<Shared>, conns: u64, quiet: bool) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(std::sync::Mutex::new(String::from("connecting")));
        if quiet {
            return Progress {
                bar: None,
                done,
                phase,
                thread: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("valid template"),
        );
        let (bar2, done2, phase2) = (bar.clone(), done.clone(), phase.clone());
        let thread = std::thread::spawn(move || {
            let mut last = (clock::now_ns(), 0u64);
            while !done2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let now = clock::now_ns();
                let received = shared.received.load(Ordering::Relaxed);
                let rate = (received - last.1) as f64 / ((now - last.0) as f64 / 1e9);
                last = (now, received);
                let label = phase2.lock().map(|p| p.clone()).unwrap_or_default();
                bar2.set_message(format!(
                    "{label} | joined {}/{conns} failed {} dropped {} | received {received} ({rate:.0}/s)",
                    shared.joined.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                    shared.dropped.load(Ordering::Relaxed),
                ));
                bar2.tick();
            }
        });
        Progress {
            bar: Some(bar),
            done,
            phase,
            thread: Some(thread),
        }
    }

    fn set_phase(&self, label: String) {
        if let Ok(mut phase) = self.phase.lock() {
            *phase = label;
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Server readings taken before connecting, once all joined, and at the end.
pub type MemorySamples = [Option<proc_stats::ProcSample>; 3];

/// A report with the connection settings of `conn` filled in.
pub fn base_report(scenario: &str, conn: &ConnArgs) -> Report {
    Report {
        scenario: scenario.into(),
        url: conn.urls.join(","),
        serializer: conn.serializer.vsn().into(),
        conns: conn.conns,
        topics: conn.topics,
        threads: conn.threads,
        ..Report::default()
    }
}

/// Moves the session-wide figures into `report`, with the server's memory
/// when its PID was given.
pub fn complete_report(
    report: &mut Report,
    collected: Collected,
    pid: Option<u32>,
    samples: MemorySamples,
) {
    if let Some(pid) = pid {
        let [before, joined, end] = samples;
        // A missing first reading was already warned about at the start;
        // a later one going missing means the server exited mid-run.
        if before.is_some() && (joined.is_none() || end.is_none()) {
            eprintln!(
                "cinder-load: warning: /proc/{pid} vanished during the run (did the server exit?); \
                 its later figures are {NOT_AVAILABLE}"
            );
        }
        report.server = Some(fanout::memory(
            pid,
            before,
            joined,
            end,
            collected.connections.joined,
        ));
    }
    report.connections = collected.connections;
    report.setup = collected.setup;
    report.heartbeat_replies = collected.heartbeat_replies;
    report.other_messages = collected.other_messages;
}
