//! The command line: one argument struct per scenario, shared pieces
//! flattened in, and the parsers for durations, rates and address ranges.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::phoenix::Serializer;

/// Load generator for Phoenix Channels servers (Cinder or any other).
#[derive(Debug, Parser)]
#[command(
    name = "cinder-load",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 when the run completed and no message was lost; \
                  1 when it could not run; 2 for bad arguments; \
                  3 when messages were lost (one `LOST …` line per run on stderr)."
)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// C subscribers; a publisher broadcasts to their topics; measures
    /// deliveries/s, latency, loss and duplicates.
    Fanout(FanoutArgs),
    /// Every client pushes into a shared room and receives the room's broadcasts.
    Chat(ChatArgs),
    /// Connect + join storm: handshakes/s, joins/s and their latency.
    Connect(ConnectArgs),
    /// Holds C joined connections; with --server-pid reports the server's RSS per connection.
    Idle(IdleArgs),
    /// A presence join storm: every client joins one presence-enabled
    /// topic; counts the presence_state and presence_diff traffic.
    Presence(PresenceArgs),
    /// A reconnect storm on history topics: C clients join and keep their
    /// position, leave, M messages per topic are published, then all
    /// rejoin with `since` at once; measures recoveries/s and join → last
    /// replayed message latency, and checks every client got exactly the
    /// missed messages, in order.
    ///
    /// With several --url, every client rejoins on the next one after the
    /// URL it first joined on (round robin shifted by one), so each
    /// recovery crosses nodes.
    Recover(RecoverArgs),
    /// Starts the Cinder binary with each shard count and runs a scenario against each.
    Sweep(SweepArgs),
    /// Mixed load for a long time (healthy subscribers, churn, presence,
    /// long-poll, slow consumers, abusive connections); one line per minute
    /// with the server's RSS, fds and connections, deliveries/s, latency
    /// and lost messages, then a chart.
    Soak(SoakArgs),
    /// The machine's own limit: one pre-encoded frame per write() to C loopback sockets, no protocol.
    Ceiling(CeilingArgs),
    /// Internal: the reading side of `ceiling`, run as a child process.
    #[command(hide = true)]
    Drain(DrainArgs),
}

/// How to reach the server and how many connections to hold.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// WebSocket endpoint of the server (`vsn` is added from --serializer).
    /// Repeat it, or give a comma list, to spread the connections over
    /// several servers (cluster nodes): each topic's subscribers are dealt
    /// out over the URLs round robin, or by --split.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:4000/socket/websocket"
    )]
    pub urls: Vec<String>,
    /// With several --url: the share of the connections each one gets, in
    /// the order of the URLs, e.g. `1,3` (a quarter on the first, three
    /// quarters on the second). Default: equal shares.
    #[arg(long, value_delimiter = ',')]
    pub split: Vec<u32>,
    /// Number of client connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Number of topics; connection i joins `PREFIX:(i mod T)`.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Topic prefix (the server's routes must let clients join `PREFIX:N`).
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// New connections per second over all threads (0 = as fast as --max-pending allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connections still handshaking or joining, per thread, before new ones wait.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// Source addresses to spread connections over, e.g. `127.0.0.2-127.0.0.40`
    /// or `127.0.0.2,127.0.0.3` (each address has its own 64k ports).
    #[arg(long, value_parser = parse_src_ips)]
    pub src_ips: Option<SrcIps>,
    /// Event-loop threads for the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Wire format: v2 (JSON arrays, the JS client's default) or v1 (objects).
    #[arg(long, value_enum, default_value = "v2")]
    pub serializer: Serializer,
    /// Heartbeat period per connection, as the JS client sends them.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub heartbeat: Duration,
    /// Extra connect parameter `key=value` added to the URL (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Auth token sent in the `base64url.bearer.phx.<token>` subprotocol.
    #[arg(long)]
    pub auth_token: Option<String>,
    /// How long connecting and joining may take before the run goes on
    /// with the connections that made it.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub setup_timeout: Duration,
}

/// Where results go and what else to observe.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// PID of the server process: its CPU time and RSS are read from /proc
    /// (a warning says so if it is not a running `cinder`).
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// How the measured windows run.
#[derive(Debug, Clone, Args)]
pub struct MeasureArgs {
    /// Length of each measured window.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Measured windows on the same connections; the report gives each one
    /// and their median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Size of each message's payload JSON in bytes (at least ~60: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// After a window, how long to wait for deliveries still in flight.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub drain_timeout: Duration,
    /// Event name of the measured messages.
    #[arg(long, default_value = "msg")]
    pub event: String,
}

/// `fanout`: one publisher, many subscribers.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub measure: MeasureArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
    /// Messages per second over all topics, or `max`: closed loop, at most
    /// --window messages per topic in flight (published, not yet received by all).
    #[arg(long, value_parser = parse_rate, default_value = "max")]
    pub rate: Rate,
    /// Publish through this HTTP endpoint (e.g. http://127.0.0.1:4000/api/broadcast);
    /// without it the publisher pushes on its own WebSocket and the server's
    /// channel must rebroadcast client events.
    #[arg(long)]
    pub publish: Option<String>,
    /// Messages per HTTP request (`{"messages":[…]}` when above 1) or per
    /// write of pushes.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// With `--rate max`: messages per topic in flight.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// `Authorization: Bearer` key for the HTTP publish API.
    #[arg(long)]
    pub api_key: Option<String>,
    /// How long to wait after the last join before the first publish, e.g.
    /// for cluster nodes to subscribe to the topics on their bus.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub publish_after: Duration,
    /// Another process whose CPU time (user + sys, from /proc) is read over
    /// each window, as `NAME=PID` (repeatable): another cluster node, the
    /// bus's Redis. Reported per window next to the deliveries each --url made.
    #[arg(long = "watch-pid", value_parser = parse_watch_pid)]
    pub watch_pids: Vec<WatchPid>,
    /// After the max-rate windows, one window at each of these percentages
    /// of the measured maximum publish rate (e.g. `25,50,90`), for latency
    /// under partial load. Needs `--rate max`.
    #[arg(long, value_delimiter = ',')]
    pub latency_at: Vec<f64>,
}

/// `chat`: everyone talks, everyone listens.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub measure: MeasureArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
    /// Pushes per second per client.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
}

/// `connect`: a connect + join storm.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
}

/// `idle`: hold joined connections and watch the server's memory.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
    /// How long to hold the connections once all are joined.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold: Duration,
}

/// `presence`: a join storm into one presence-enabled topic.
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
    /// How long presence traffic must be quiet before the storm counts as over.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,
}

/// `recover`: clients come back to history topics and recover what they
/// missed while away.
///
/// With several `--url`, every client rejoins on the URL after the one it
/// first joined on (round robin shifted by one), so each recovery crosses
/// nodes.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("conns", |a| a.default_value("10000")),
    mut_arg("topics", |a| a.default_value("10")),
    mut_arg("topic_prefix", |a| a.default_value("hist:bench")),
    mut_arg("src_ips", |a| a.default_value("127.0.0.2-127.0.0.9")),
)]
pub struct RecoverArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub conn: ConnArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
    /// Messages published to every topic while the clients are away (the
    /// route's `history` must hold them all).
    #[arg(long, default_value_t = 100)]
    pub messages: u64,
    /// HTTP publish API (default: `/api/broadcast` on the first --url's host).
    #[arg(long)]
    pub publish: Option<String>,
    /// `Authorization: Bearer` key for the HTTP publish API.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Messages per publish request (`{"messages":[…]}` when above 1).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Size of each message's payload JSON in bytes (at least ~60: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Event name of the published messages.
    #[arg(long, default_value = "msg")]
    pub event: String,
    /// How long to wait after the publish API accepted the last message
    /// before the clients come back (e.g. for cluster nodes to take it in).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub rejoin_after: Duration,
    /// How long the storm may take; a client still short of messages then
    /// has lost them.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub recover_timeout: Duration,
    /// Once every client has rejoined (or failed), how long nothing may
    /// arrive before what is still missing counts as lost.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// Another process whose CPU time (user + sys, from /proc) is read over
    /// the storm, as `NAME=PID` (repeatable): another cluster node, Redis.
    #[arg(long = "watch-pid", value_parser = parse_watch_pid)]
    pub watch_pids: Vec<WatchPid>,
}

/// `sweep`: the same scenario against the server at several shard counts.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Shard counts to run, e.g. `1,2,4`.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub shards: Vec<usize>,
    /// The Cinder binary (default: `cinder` next to this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Port the server is started on (127.0.0.1); the sweep refuses to
    /// start if another process holds it.
    #[arg(long, default_value_t = 4100)]
    pub port: u16,
    /// Config file passed to each server with --config.
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// Where to write the chart.
    #[arg(long, default_value = "sweep.svg")]
    pub svg: PathBuf,
    /// Write every run's figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The scenario and its options (its --url, --publish and --server-pid
    /// are set by the sweep).
    #[command(subcommand)]
    pub scenario: SweepScenario,
}

/// Scenarios a sweep can run.
#[derive(Debug, Subcommand)]
pub enum SweepScenario {
    /// See `cinder-load fanout --help`.
    Fanout(FanoutArgs),
    /// See `cinder-load chat --help`.
    Chat(ChatArgs),
}

/// `soak`: mixed load against a running server for a long time.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// WebSocket endpoint of the server; the long-poll endpoint and
    /// `/metrics` are found next to it.
    #[arg(long, default_value = "ws://127.0.0.1:4000/socket/websocket")]
    pub url: String,
    /// HTTP publish API.
    #[arg(long, default_value = "http://127.0.0.1:4000/api/broadcast")]
    pub publish: String,
    /// `Authorization: Bearer` key for the publish API.
    #[arg(long)]
    pub api_key: Option<String>,
    /// How long to run, in minutes (one report line per minute).
    #[arg(long, default_value_t = 30)]
    pub minutes: u32,
    /// Healthy subscribers: joined for the whole run; every message
    /// published to their topic must reach them exactly once.
    #[arg(long, default_value_t = 2000)]
    pub conns: usize,
    /// Topics of the healthy subscribers (`PREFIX:0` … `PREFIX:T-1`).
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    /// Prefix of the broadcast topics; the slow consumers' topic is `PREFIX:slow`.
    #[arg(long, default_value = "soak")]
    pub topic_prefix: String,
    /// Messages per second published over the healthy topics (e.g. half the
    /// maximum `fanout --rate max` measured on the same topology).
    #[arg(long)]
    pub rate: f64,
    /// Most messages per publish request.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Payload size of the measured messages.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Churning clients started per second: each connects, joins, stays
    /// --churn-hold, leaves, and closes the WebSocket.
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// How long a churning client stays joined.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub churn_hold: Duration,
    /// Share of the churning clients that join a presence topic instead of
    /// a broadcast topic.
    #[arg(long, default_value_t = 0.5)]
    pub presence_share: f64,
    /// Presence topics are `PREFIX:0` … `PREFIX:N-1`; a route must enable presence on them.
    #[arg(long, default_value = "presence")]
    pub presence_prefix: String,
    /// Number of presence topics.
    #[arg(long, default_value_t = 5)]
    pub presence_topics: usize,
    /// Long-poll clients (each on its own thread, joined to a broadcast topic).
    #[arg(long, default_value_t = 4)]
    pub longpoll: usize,
    /// Slow consumers started per minute, alternately one that stops reading
    /// and one that reads a few KiB a second; the server should close them.
    #[arg(long, default_value_t = 2)]
    pub slow_per_minute: u32,
    /// Messages per second published to the slow consumers' topic.
    #[arg(long, default_value_t = 32.0)]
    pub slow_rate: f64,
    /// Payload size of the slow consumers' messages.
    #[arg(long, default_value_t = 8192)]
    pub slow_payload_bytes: usize,
    /// How long a slow consumer stalls (or trickles) before it reads at
    /// full speed to see what the server did.
    #[arg(long, value_parser = parse_duration, default_value = "45s")]
    pub slow_stall: Duration,
    /// Rounds of abusive connections per minute; a round is garbage HTTP,
    /// oversized headers, a malformed WebSocket frame and a slowloris.
    #[arg(long, default_value_t = 1)]
    pub abuse_rounds: u32,
    /// Event-loop threads for the WebSocket clients.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Heartbeat period per WebSocket, as the JS client sends them.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub heartbeat: Duration,
    /// Minutes counted as warm-up: the flatness checks (RSS, fds, p99)
    /// start after them.
    #[arg(long, default_value_t = 5)]
    pub warmup: u32,
    /// How long after a minute ends its deliveries are counted (messages
    /// still missing then are reported lost for that minute; the final
    /// total is counted again at the very end).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub settle: Duration,
    /// How long connecting and joining the healthy subscribers may take.
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub setup_timeout: Duration,
    /// PID of the server: RSS, CPU and open file descriptors from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the per-minute figures and the summary as JSON (rewritten every minute).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to draw the chart (RSS, fds, deliveries/s, p99 per minute).
    #[arg(long, default_value = "soak.svg")]
    pub svg: PathBuf,
}

/// `ceiling`: the bare write loop.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Number of loopback sockets written to.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Payload size; the frame is what a V2 broadcast of it would be.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Frames per write() (1 = one frame per write; above 1 the frames go
    /// in one writev, as a server coalescing them would).
    #[arg(long, default_value_t = 1)]
    pub coalesce: usize,
    /// Writer threads (compare with the server's shard count).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Length of each measured window.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Measured windows; the report gives their median.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Reader threads in the draining child process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `drain`: connect and read until told to stop (the child side of `ceiling`).
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Address to connect to.
    #[arg(long)]
    pub addr: std::net::SocketAddr,
    /// Number of connections.
    #[arg(long)]
    pub conns: usize,
    /// Reader threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// A publish rate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Rate {
    /// Closed loop: as fast as deliveries complete.
    Max,
    /// Messages per second.
    PerSecond(f64),
}

/// A process watched over each window (`--watch-pid NAME=PID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPid {
    /// Label in the report.
    pub name: String,
    /// Process id.
    pub pid: u32,
}

/// A set of source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrcIps(pub Vec<Ipv4Addr>);

/// Parses `10s`, `250ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s or 250ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` (use ms, s or m)")),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `max` or a positive number of messages per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Rate::PerSecond(rate)),
        _ => Err(format!("`{text}` is not `max` or a positive rate")),
    }
}

/// Parses `A-B` (an inclusive IPv4 range) or a comma-separated list.
pub fn parse_src_ips(text: &str) -> Result<SrcIps, String> {
    let bad = |part: &str| format!("`{part}` is not an IPv4 address");
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: Ipv4Addr = from.trim().parse().map_err(|_| bad(from))?;
            let to: Ipv4Addr = to.trim().parse().map_err(|_| bad(to))?;
            let (from, to) = (u32::from(from), u32::from(to));
            if to < from || to - from > 65_535 {
                return Err(format!(
                    "`{part}` is not a range of at most 65536 addresses"
                ));
            }
            ips.extend((from..=to).map(Ipv4Addr::from));
        } else {
            ips.push(part.parse().map_err(|_| bad(part))?);
        }
    }
    if ips.is_empty() {
        return Err("no source address given".into());
    }
    Ok(SrcIps(ips))
}

/// Parses `NAME=PID`.
pub fn parse_watch_pid(text: &str) -> Result<WatchPid, String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=PID"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("`{pid}` is not a process id"))?;
    if name.is_empty() {
        return Err(format!("`{text}`: the name is empty"));
    }
    Ok(WatchPid {
        name: name.to_string(),
        pid,
    })
}

/// Parses `key=value`.
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_rates_and_ranges() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_rate("MAX").unwrap(), Rate::Max);
        assert_eq!(parse_rate("100").unwrap(), Rate::PerSecond(100.0));
        assert!(parse_rate("0").is_err());
        let ips = parse_src_ips("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(ips.0.len(), 4);
        assert!(parse_src_ips("127.0.0.4-127.0.0.2").is_err());
    }

    #[test]
    fn every_subcommand_parses_and_documents_its_options() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "cinder-load",
            "sweep",
            "--shards",
            "1,2",
            "fanout",
            "--conns",
            "10",
            "--rate",
            "50",
        ])
        .unwrap();
        let Command::Sweep(sweep) = cli.command else {
            panic!("not a sweep")
        };
        assert_eq!(sweep.shards, vec![1, 2]);
    }

    #[test]
    fn recover_has_its_own_defaults_and_leaves_the_others_alone() {
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).unwrap().command;
        let Command::Recover(args) = parse(&["cinder-load", "recover"]) else {
            panic!("not a recover")
        };
        assert_eq!(args.conn.conns, 10_000);
        assert_eq!(args.conn.topics, 10);
        assert_eq!(args.conn.topic_prefix, "hist:bench");
        assert_eq!(args.conn.src_ips.as_ref().map(|s| s.0.len()), Some(8));
        assert_eq!(args.messages, 100);
        assert_eq!(args.batch, 100);
        assert_eq!(args.publish, None);
        assert_eq!(args.rejoin_after, Duration::ZERO);
        assert_eq!(args.recover_timeout, Duration::from_secs(60));
        let Command::Recover(args) = parse(&[
            "cinder-load",
            "recover",
            "--url",
            "ws://a:1/s,ws://b:2/s",
            "--conns",
            "50",
            "--messages",
            "7",
            "--rejoin-after",
            "500ms",
            "--watch-pid",
            "b=42",
            "--json",
            "r.json",
        ]) else {
            panic!("not a recover")
        };
        assert_eq!(args.conn.urls.len(), 2);
        assert_eq!(args.conn.conns, 50);
        assert_eq!(args.messages, 7);
        assert_eq!(args.rejoin_after, Duration::from_millis(500));
        assert_eq!(args.watch_pids[0].pid, 42);
        assert_eq!(args.output.json, Some(PathBuf::from("r.json")));
        // The shared connection options keep their defaults elsewhere.
        let Command::Fanout(fanout) = parse(&["cinder-load", "fanout"]) else {
            panic!("not a fanout")
        };
        assert_eq!(fanout.conn.conns, 1000);
        assert_eq!(fanout.conn.topics, 1);
        assert_eq!(fanout.conn.topic_prefix, "bench");
        assert_eq!(fanout.conn.src_ips, None);
    }
}
