//! `cinder-load sweep` end to end: it starts the real `cinder` binary at
//! each shard count, refuses a port another server holds, and draws a chart
//! a person can read.

use std::net::TcpListener;

use cinder_load::cli::{Cli, Command};
use cinder_load::outcome::{EXIT_ERROR, EXIT_OK};
use clap::Parser;

/// A loopback port nothing listens on (bound once, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cinder-load sweep … fanout …` against this package's `cinder` binary.
fn sweep(port: u16, svg: &std::path::Path) -> Cli {
    Cli::try_parse_from([
        "cinder-load",
        "sweep",
        "--shards",
        "1,2",
        "--port",
        &port.to_string(),
        "--server-bin",
        env!("CARGO_BIN_EXE_cinder"),
        "--svg",
        svg.to_str().unwrap(),
        "fanout",
        "--conns",
        "20",
        "--topics",
        "2",
        "--rate",
        "200",
        "--payload-bytes",
        "128",
        "--publish",
        "http://127.0.0.1/api/broadcast",
        "--duration",
        "300ms",
        "--quiet",
    ])
    .expect("valid arguments")
}

/// The content of every `<text>` element of an SVG.
fn texts(svg: &str) -> Vec<String> {
    svg.split("</text>")
        .filter_map(|chunk| Some(chunk.rsplit_once("<text")?.1.split_once('>')?.1.trim()))
        .map(str::to_string)
        .collect()
}

#[test]
fn sweep_runs_each_shard_count_and_draws_a_readable_chart() {
    let svg = std::env::temp_dir().join(format!("cinder-sweep-{}.svg", std::process::id()));
    assert_eq!(cinder_load::app::run(&sweep(free_port(), &svg)), EXIT_OK);
    let chart = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    let texts = texts(&chart);
    let has = |t: &str| texts.iter().any(|x| x == t);
    assert!(has("Cinder shard sweep: fanout"), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("20 conns · 2 topics · 128 B payload · 200 msg/s")),
        "{texts:?}"
    );
    assert!(has("p99 latency") && has("deliveries/s"), "{texts:?}");
    // Whole shard ticks, no raw floats anywhere.
    assert!(has("1") && has("2") && !has("1.5"), "{texts:?}");
    assert!(
        !texts.iter().any(|t| t
            .parse::<f64>()
            .is_ok_and(|v| v >= 10_000.0 || t.ends_with(".0"))),
        "{texts:?}"
    );
}

#[test]
fn sweep_refuses_a_port_another_server_holds() {
    // A Cinder already running on the port, started the same way (it binds
    // with SO_REUSEPORT, so a second one would bind too and share the load).
    let port = free_port();
    let mut other = std::process::Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "1",
        ])
        .args(["--log-level", "error"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let svg = std::env::temp_dir().join(format!("cinder-sweep-busy-{}.svg", std::process::id()));
    let cli = sweep(port, &svg);
    let Command::Sweep(args) = &cli.command else {
        unreachable!()
    };
    // The library call, for the message (the server may refuse a held port
    // itself; the sweep must not even get that far)…
    let error = cinder_load::scenario::sweep::run(args).unwrap_err();
    // …and the whole program, for the exit code.
    let code = cinder_load::app::run(&cli);
    let _ = other.kill();
    let _ = other.wait();
    assert!(
        error.contains(&format!("127.0.0.1:{port} is already in use")),
        "{error}"
    );
    assert_eq!(code, EXIT_ERROR);
    assert!(!svg.exists(), "no chart for a sweep that never ran");
}
