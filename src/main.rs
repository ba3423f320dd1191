//! The `cinder` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use cinder::Config;

/// Exit code for configuration and usage errors (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;
/// Exit code when the server cannot start or fails while running.
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "cinder",
    version,
    about = "A sharded push server that speaks the Phoenix Channels protocol",
    long_about = "A sharded push server that speaks the Phoenix Channels protocol.\n\n\
                  Unmodified Phoenix clients (the `phoenix` npm package and others) connect to \
                  ws://HOST:PORT/socket/websocket; your application publishes with \
                  POST /api/broadcast."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Mint an HS256 JWT for the `jwt` connect policy (for development and
    /// tests; production tokens come from your application).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The HMAC secret (`socket.auth.secret` of the server).
    #[arg(long)]
    secret: String,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Comma-separated topics or patterns for the `channels` claim
    /// (e.g. 'room:*,user:alice').
    #[arg(long)]
    channels: Option<String>,
    /// Lifetime in seconds (`exp` claim).
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (overrides `server.bind`). Default 127.0.0.1:4000.
    #[arg(long, value_name = "ADDR")]
    bind: Option<std::net::SocketAddr>,

    /// Number of shards, i.e. event-loop threads (overrides `server.shards`).
    /// Default: one per core.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,

    /// TOML configuration file. Optional: every setting has a default, and
    /// without a file every topic is public and client events are broadcast.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, `off`,
    /// or a tracing filter such as `cinder=debug,info`). `RUST_LOG` is used
    /// when unset. Anything else is refused (exit code 2).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Run as one node of a cluster with this Redis as the bus (overrides
    /// `cluster.redis`), e.g. redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    cluster_redis: Option<String>,

    /// This node's name in the cluster (overrides `cluster.node_name`).
    /// Default: the host name and a random suffix.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    if args.secret.len() < 8 {
        eprintln!("cinder: --secret must be at least 8 bytes (the server refuses shorter secrets)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let now = cinder::auth::now_secs();
    let claims = cinder::auth::Claims {
        sub: args.sub,
        channels: args.channels.map(|list| {
            cinder::auth::ChannelsClaim::List(cinder::auth::ChannelsClaim::Joined(list).entries())
        }),
        exp: Some(now + args.ttl),
        nbf: None,
        iat: Some(now),
    };
    println!("{}", cinder::auth::mint_hs256(&args.secret, &claims));
    ExitCode::SUCCESS
}

fn serve(args: ServeArgs) -> ExitCode {
    cinder::memory::tune_allocator();
    let filter = match args.log_level.as_deref().map(parse_log_filter).transpose() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("cinder: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(filter, args.log_format);
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("cinder: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::default(),
    };
    if let Some(bind) = args.bind {
        if let Err(e) = config.set_bind(bind) {
            eprintln!("cinder: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if let Some(shards) = args.shards {
        config.server.shards = Some(shards);
    }
    if let Some(url) = args.cluster_redis {
        config.cluster.redis = Some(url);
    }
    if let Some(name) = args.node_name {
        config.cluster.node_name = Some(name);
    }
    if let Err(e) = config.validate() {
        eprintln!("cinder: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }

    // Install the handlers before the shards start so an early signal still
    // triggers a graceful stop.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cinder: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let server = match cinder::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("cinder: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let signal_handle = signals.handle();
    let stopper = server.stop_signal();
    let watcher = std::thread::spawn(move || {
        let mut received = 0;
        for signal in signals.forever() {
            received += 1;
            if received == 1 {
                tracing::info!(signal, "shutting down: closing connections with 1012");
                stopper.stop();
            } else {
                // A second signal means "now": skip the graceful flush.
                tracing::warn!(signal, "second signal, exiting immediately");
                std::process::exit(i32::from(EXIT_FAILURE));
            }
        }
    });
    let result = server.join();
    signal_handle.close();
    let _ = watcher.join();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cinder: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Raises the soft open-file limit to the hard one: every connection is a
/// file descriptor, and the common default soft limit (1024) would cap a
/// server meant for hundreds of thousands of them.
fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The levels `--log-level` names in its error message.
const LOG_LEVELS_HINT: &str =
    "expected error, warn, info, debug, trace, off, or a filter such as cinder=debug";

/// Parses `--log-level`: a level, or a tracing filter (comma-separated
/// directives, each a bare level or one with `=` such as `cinder=debug`).
///
/// `EnvFilter` reads a bare word that is no level as a target enabled at
/// `trace` (`verbose` would log nothing at all, as no target has that name),
/// so a directive without `=` must be a level here.
fn parse_log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    use tracing::level_filters::LevelFilter;
    // `EnvFilter` mis-slices directives with leading blanks, so trim them
    // ("info, cinder=debug" is meant as two directives).
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(format!("empty log level {spec:?} ({LOG_LEVELS_HINT})"));
    }
    for directive in &directives {
        if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "unknown log level {directive:?} ({LOG_LEVELS_HINT})"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(directives.join(","))
        .map_err(|e| format!("invalid log filter {spec:?}: {e} ({LOG_LEVELS_HINT})"))
}

/// Installs the global subscriber: `filter` (from `--log-level`), else
/// `RUST_LOG`, else `info`.
fn init_logging(filter: Option<tracing_subscriber::EnvFilter>, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = filter.unwrap_or_else(|| {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
    });
    // Colours only for a terminal (never into a file or a log collector),
    // and not when NO_COLOR asks otherwise (https://no-color.org).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        // When stderr goes away (a closed pipe, a dead log collector),
        // tracing would report the failed write with `eprintln!`, which
        // panics on that same stderr and kills the logging thread: a shard,
        // or the signal watcher before it stops the server. Drop the lines.
        .log_internal_errors(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
