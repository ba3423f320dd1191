//! `cinder-load` against a real Cinder: its figures must be exact, and its
//! loss and duplicate detection must see what a faulty path does.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cinder_load::cli::{Cli, Command};
use cinder_load::report::Report;
use cinder_load::scenario::{chat, connect, fanout};
use clap::Parser;
use common::TestServer;

fn parse(args: &[&str]) -> Command {
    let mut argv = vec!["cinder-load"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("valid arguments").command
}

fn run_fanout(args: &[&str]) -> Report {
    let Command::Fanout(args) = parse(args) else {
        unreachable!()
    };
    fanout::run(&args).expect("fanout runs")
}

#[test]
fn fanout_over_http_delivers_every_message_exactly_once() {
    let server = TestServer::start("");
    let url = server.ws_url(None);
    let publish = format!("http://{}/api/broadcast", server.addr);
    let report = run_fanout(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        &publish,
        "--conns",
        "40",
        "--topics",
        "3",
        "--threads",
        "2",
        "--topic-prefix",
        "room",
        "--rate",
        "400",
        "--duration",
        "500ms",
        "--runs",
        "2",
        "--quiet",
    ]);
    assert_eq!(report.connections.joined, 40);
    let t = &report.totals;
    assert!(t.published > 100, "published {}", t.published);
    assert_eq!((t.lost, t.duplicates, t.unexpected), (0, 0, 0));
    assert_eq!(t.received, t.expected);
    // Three topics of 14, 13 and 13 subscribers, published round-robin.
    let per_window: u64 = report.windows.iter().map(|w| w.expected).sum();
    assert_eq!(per_window, t.expected);
    assert_eq!(
        report.windows.iter().map(|w| w.received).sum::<u64>(),
        t.received
    );
    assert!(report
        .windows
        .iter()
        .all(|w| w.latency.samples == w.received && w.latency.p50_us > 0.0));
}

#[test]
fn fanout_by_client_push_with_batches_at_max_rate_and_v1() {
    // A publisher pushing as fast as it can is far above the default
    // per-connection event rate limit; benchmarks lift it.
    let server = TestServer::start("[socket]\nclient_events_per_second = 0\n");
    let url = server.ws_url(None);
    for serializer in ["v2", "v1"] {
        let report = run_fanout(&[
            "fanout",
            "--url",
            &url,
            "--conns",
            "20",
            "--topic-prefix",
            "room",
            "--rate",
            "max",
            "--batch",
            "4",
            "--duration",
            "300ms",
            "--serializer",
            serializer,
            "--quiet",
        ]);
        let t = &report.totals;
        assert!(t.published > 0);
        assert_eq!((t.lost, t.duplicates), (0, 0), "{serializer}");
        assert_eq!(t.received, t.published * 20, "{serializer}");
    }
}

#[test]
fn chat_counts_every_push_for_every_room_member() {
    let server = TestServer::start("");
    let Command::Chat(args) = parse(&[
        "chat",
        "--url",
        &server.ws_url(None),
        "--conns",
        "20",
        "--topics",
        "4",
        "--topic-prefix",
        "room",
        "--rate",
        "20",
        "--duration",
        "500ms",
        "--quiet",
    ]) else {
        unreachable!()
    };
    let report = chat::run(&args).expect("chat runs");
    let t = &report.totals;
    assert!(t.published > 50, "pushed {}", t.published);
    // Rooms of 5: each accepted push is owed to its 5 members.
    assert_eq!(t.expected, t.published * 5);
    assert_eq!(
        (t.lost, t.duplicates, t.unexpected, t.push_errors),
        (0, 0, 0, 0)
    );
}

#[test]
fn refused_joins_are_counted_as_failures() {
    let server = TestServer::start("");
    let Command::Connect(args) = parse(&[
        "connect",
        "--url",
        &server.ws_url(None),
        "--conns",
        "5",
        "--topic-prefix",
        "nowhere",
        "--quiet",
    ]) else {
        unreachable!()
    };
    let report = connect::run(&args).expect("connect runs");
    assert_eq!(report.connections.upgraded, 5);
    assert_eq!(report.connections.joined, 0);
    assert_eq!(report.connections.failed_before_join, 5);
    assert_eq!(report.connections.failures.get("join refused"), Some(&5));
}

/// A proxy that, on the first connection through it, drops the broadcast
/// with sequence 3 and sends the one with sequence 5 twice.
fn faulty_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let first = Arc::new(AtomicBool::new(true));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let server = TcpStream::connect(upstream).unwrap();
            let faulty = first.swap(false, Ordering::SeqCst);
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
            std::thread::spawn(move || relay_frames(server, client, faulty));
        }
    });
    addr
}

fn relay_frames(mut from: TcpStream, mut to: TcpStream, faulty: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut head_done = false;
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let _ = to.write_all(&buf[..end + 4]);
            buf.drain(..end + 4);
            head_done = true;
        }
        while let Some(frame) = cinder_load::wire::parse_frame(&buf, 1 << 20).unwrap() {
            let bytes = &buf[..frame.end];
            let payload = &bytes[frame.payload_start..];
            let copies = if !faulty {
                1
            } else if contains(payload, b"\"q\":3,") {
                0
            } else if contains(payload, b"\"q\":5,") {
                2
            } else {
                1
            };
            for _ in 0..copies {
                if to.write_all(bytes).is_err() {
                    return;
                }
            }
            buf.drain(..frame.end);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    cinder_load::payload::find(haystack, needle).is_some()
}

#[test]
fn lost_and_duplicated_deliveries_are_detected_exactly() {
    let server = TestServer::start("");
    let proxy = faulty_proxy(server.addr);
    let url = format!("ws://{proxy}/socket/websocket");
    let publish = format!("http://{}/api/broadcast", server.addr);
    let report = run_fanout(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        &publish,
        "--conns",
        "4",
        "--topic-prefix",
        "room",
        "--rate",
        "100",
        "--duration",
        "300ms",
        "--drain-timeout",
        "2s",
        "--max-pending",
        "1",
        "--quiet",
    ]);
    let t = &report.totals;
    assert!(t.published >= 10, "published {}", t.published);
    assert_eq!(t.lost, 1, "{t:?}");
    assert_eq!(t.duplicates, 1, "{t:?}");
    assert_eq!(t.received, t.expected - 1);
}

#[test]
fn a_run_that_loses_messages_exits_non_zero_and_still_writes_its_json() {
    let server = TestServer::start("");
    let proxy = faulty_proxy(server.addr);
    let url = format!("ws://{proxy}/socket/websocket");
    let publish = format!("http://{}/api/broadcast", server.addr);
    let json = std::env::temp_dir().join(format!("cinder-load-lost-{}.json", std::process::id()));
    let cli = Cli::try_parse_from([
        "cinder-load",
        "fanout",
        "--url",
        &url,
        "--publish",
        &publish,
        "--conns",
        "4",
        "--topic-prefix",
        "room",
        "--rate",
        "100",
        "--duration",
        "300ms",
        "--drain-timeout",
        "2s",
        "--max-pending",
        "1",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .expect("valid arguments");
    assert_eq!(cinder_load::app::run(&cli), cinder_load::outcome::EXIT_LOST);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(written["totals"]["lost"], 1);
}
