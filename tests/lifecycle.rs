//! Connection lifecycle: slow consumers, idle timeout, shutdown, and the
//! binary's command line.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, RawSocket, TestServer, WAIT};

#[test]
fn slow_consumers_are_closed_and_others_keep_receiving() {
    let server =
        TestServer::start("[socket]\nsend_buffer_limit = 65536\nslow_consumer_timeout_ms = 500\n");
    let mut healthy = server.connect();
    healthy.join("room:flood", "1");
    // A subscriber that never reads: its kernel buffers fill, then its outbox.
    let mut stuck = RawSocket::connect(server.addr);
    stuck.send_frame(0x81, br#"["1","1","room:flood","phx_join",{}]"#, true);
    std::thread::sleep(Duration::from_millis(100));
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let batch: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"topic":"room:flood","event":"m{i}","payload":{payload}}}"#))
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, batch.join(","));
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    while server.metric("cinder_slow_consumer_closes_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck client was never closed"
        );
        assert_eq!(server.publish(&body).0, 200);
        sent += 50;
        // The healthy client reads everything, so it is never over the limit.
        for _ in 0..50 {
            healthy.recv_text();
        }
    }
    assert!(sent > 0);
    // Memory stayed bounded and the healthy client is still served.
    healthy.sync("99");
    assert_eq!(server.metric("cinder_slow_consumer_closes_total"), 1);
}

#[test]
fn idle_websockets_are_closed_with_1001() {
    let server = TestServer::start("[socket]\nidle_timeout_ms = 1000\n");
    let mut client = server.connect();
    let started = Instant::now();
    assert_eq!(client.expect_close(), 1001);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that keeps sending heartbeats stays.
    let mut alive = server.connect();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        alive.sync(&i.to_string());
    }
}

#[test]
fn shutdown_closes_websockets_with_1012() {
    let server = TestServer::start("");
    let mut clients: Vec<Client> = (0..6).map(|_| server.connect()).collect();
    clients[0].join("room:a", "1");
    server.stop();
    for client in clients.iter_mut() {
        assert_eq!(client.expect_close(), 1012);
    }
}

fn cinder_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cinder"))
}

#[test]
fn sigterm_stops_the_binary_with_exit_code_0() {
    let mut child = cinder_binary()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cinder");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("a log line").expect("utf-8 log");
        let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if let Some(addr) = log["fields"]["local_addr"].as_str() {
            break addr.parse::<std::net::SocketAddr>().unwrap();
        }
    };
    let mut client = Client::connect(&format!("ws://{addr}/socket/websocket?vsn=2.0.0"));
    client.join("room:a", "1");
    let pid = child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(client.expect_close(), 1012);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "cinder did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn invalid_config_names_the_key_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("cinder-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "[socket]\nmax_channels = 0").unwrap();
    let output = cinder_binary()
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("socket.max_channels"), "{stderr}");
    let output = cinder_binary()
        .args(["serve", "--shards", "zero"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let help = cinder_binary().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--bind",
        "--shards",
        "--config",
        "--log-level",
        "--log-format",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}
