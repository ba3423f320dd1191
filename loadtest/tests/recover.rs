//! `cinder-load recover` end to end, against a small in-test server that
//! keeps topic history the way Cinder's protocol describes it: positions in
//! the ref slot of broadcasts, `recovered`/`position` in join replies, the
//! missed broadcasts pushed right after the reply. Its faults (a duplicate,
//! a refusal to recover) must make the run fail with exit status 3.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// How the test server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// It does not.
    None,
    /// The last replayed broadcast is sent twice.
    Duplicate,
    /// It says `recovered: false` and replays nothing.
    Refuse,
}

/// History shared by every "node" of the test server, and what it saw.
struct History {
    fault: Fault,
    /// Per topic: payloads in publish order (offset = index + 1).
    topics: Mutex<HashMap<String, Vec<(String, Value)>>>,
    /// Plain joins and joins with `since`, per node.
    plain_joins: Vec<AtomicU64>,
    since_joins: Vec<AtomicU64>,
    stop: AtomicBool,
}

/// Starts `nodes` listeners sharing one history; returns their ports.
fn serve(nodes: usize, fault: Fault) -> (Vec<u16>, Arc<History>) {
    let history = Arc::new(History {
        fault,
        topics: Mutex::new(HashMap::new()),
        plain_joins: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        since_joins: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
    });
    let mut ports = Vec::new();
    for node in 0..nodes {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let history = history.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if history.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let history = history.clone();
                std::thread::spawn(move || {
                    let _ = connection(stream, node, &history);
                });
            }
        });
    }
    (ports, history)
}

/// One accepted connection: a WebSocket upgrade or publish requests.
fn connection(stream: TcpStream, node: usize, history: &History) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if request_line.starts_with("GET /socket/websocket") {
            let accept = cinder_load::wire::accept_key(&headers["sec-websocket-key"]);
            write!(
                stream,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )?;
            return websocket(reader, stream, node, history);
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let body: Value = serde_json::from_slice(&body).unwrap();
        let messages = match body.get("messages") {
            Some(list) => list.as_array().unwrap().clone(),
            None => vec![body],
        };
        let mut topics = history.topics.lock().unwrap();
        for m in &messages {
            topics
                .entry(m["topic"].as_str().unwrap().to_string())
                .or_default()
                .push((
                    m["event"].as_str().unwrap().to_string(),
                    m["payload"].clone(),
                ));
        }
        drop(topics);
        let answer = b"{\"ok\":true}";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )?;
        stream.write_all(answer)?;
    }
}

/// Reads client frames and answers joins (V2 only) until the client closes.
fn websocket(
    mut reader: BufReader<TcpStream>,
    mut stream: TcpStream,
    node: usize,
    history: &History,
) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head)?;
        let opcode = head[0] & 0x0F;
        let mut len = u64::from(head[1] & 0x7F);
        if len == 126 {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext)?;
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            reader.read_exact(&mut ext)?;
            len = u64::from_be_bytes(ext);
        }
        let mut mask = [0u8; 4];
        reader.read_exact(&mut mask)?;
        let mut payload = vec![0u8; len as usize];
        reader.read_exact(&mut payload)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        if opcode == 0x8 {
            return Ok(());
        }
        let message: Value = serde_json::from_slice(&payload).unwrap();
        let (join_ref, reference, topic, event) = (
            message[0].clone(),
            message[1].clone(),
            message[2].as_str().unwrap().to_string(),
            message[3].as_str().unwrap(),
        );
        if event != "phx_join" {
            let reply =
                json!([join_ref, reference, topic, "phx_reply", {"status": "ok", "response": {}}]);
            send(&mut stream, &reply)?;
            continue;
        }
        let held = history
            .topics
            .lock()
            .unwrap()
            .get(&topic)
            .cloned()
            .unwrap_or_default();
        let current = format!("mtest:{}", held.len());
        let since = message[4]
            .get("since")
            .and_then(Value::as_str)
            .map(|s| s.rsplit_once(':').unwrap().1.parse::<usize>().unwrap());
        let Some(since) = since else {
            history.plain_joins[node].fetch_add(1, Ordering::Relaxed);
            let reply = json!([join_ref, reference, topic, "phx_reply",
                {"status": "ok", "response": {"position": current}}]);
            send(&mut stream, &reply)?;
            continue;
        };
        history.since_joins[node].fetch_add(1, Ordering::Relaxed);
        let recovered = history.fault != Fault::Refuse;
        let reply = json!([join_ref, reference, topic, "phx_reply",
            {"status": "ok", "response": {"recovered": recovered, "position": current}}]);
        send(&mut stream, &reply)?;
        if !recovered {
            continue;
        }
        for (offset, (event, payload)) in held.iter().enumerate().skip(since) {
            let push = json!([null, format!("mtest:{}", offset + 1), topic, event, payload]);
            send(&mut stream, &push)?;
            if history.fault == Fault::Duplicate && offset + 1 == held.len() {
                send(&mut stream, &push)?;
            }
        }
    }
}

/// Writes one unmasked text frame.
fn send(stream: &mut TcpStream, message: &Value) -> std::io::Result<()> {
    let text = message.to_string();
    let mut frame = vec![0x81u8];
    if text.len() < 126 {
        frame.push(text.len() as u8);
    } else {
        frame.push(126);
        frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(text.as_bytes());
    stream.write_all(&frame)
}

fn recover(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinder-load"))
        .arg("recover")
        .args(args)
        .output()
        .expect("cinder-load runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "cinder-load-recover-{name}-{}.json",
        std::process::id()
    ))
}

#[test]
fn every_client_recovers_exactly_what_it_missed() {
    let (ports, history) = serve(1, Fault::None);
    let url = format!("ws://127.0.0.1:{}/socket/websocket", ports[0]);
    let json = json_path("clean");
    let out = recover(&[
        "--url",
        &url,
        "--conns",
        "30",
        "--topics",
        "3",
        "--messages",
        "7",
        "--batch",
        "4",
        "--src-ips",
        "127.0.0.1",
        "--settle",
        "200ms",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    history.stop.store(true, Ordering::Relaxed);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("LOST"), "{stderr}");
    assert!(stdout.contains("30 recovered in"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let r = &report["recover"];
    assert_eq!(r["first_joined"], 30);
    assert_eq!(r["published"], 21);
    assert_eq!(r["rejoined"], 30);
    assert_eq!(r["recovered"], 30);
    assert_eq!(r["not_recovered"], 0);
    assert_eq!(r["without_position"], 0);
    assert_eq!(r["latency"]["samples"], 30);
    assert!(r["recoveries_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["totals"]["expected"], 30 * 7);
    assert_eq!(report["totals"]["received"], 30 * 7);
    assert_eq!(history.plain_joins[0].load(Ordering::Relaxed), 30);
    assert_eq!(history.since_joins[0].load(Ordering::Relaxed), 30);
}

#[test]
fn with_several_urls_every_client_rejoins_on_another_one() {
    let (ports, history) = serve(2, Fault::None);
    let urls = format!(
        "ws://127.0.0.1:{}/socket/websocket,ws://127.0.0.1:{}/socket/websocket",
        ports[0], ports[1]
    );
    // Of each topic's 10 clients, 3 first join on the first URL and 7 on
    // the second (a 1:3 split); shifted by one, the rejoins are the other
    // way round.
    let out = recover(&[
        "--url",
        &urls,
        "--split",
        "1,3",
        "--conns",
        "20",
        "--topics",
        "2",
        "--messages",
        "5",
        "--src-ips",
        "127.0.0.1",
        "--settle",
        "200ms",
        "--quiet",
    ]);
    history.stop.store(true, Ordering::Relaxed);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("(each on the next --url)"), "{stdout}");
    let count =
        |v: &[AtomicU64]| -> Vec<u64> { v.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
    assert_eq!(count(&history.plain_joins), vec![6, 14]);
    assert_eq!(count(&history.since_joins), vec![14, 6]);
}

/// A small run (4 clients, 2 topics, 3 messages) against one fake server
/// that misbehaves as `fault` says; returns (exit code, stdout, stderr).
fn faulty_run(fault: Fault) -> (Option<i32>, String, String) {
    let (ports, history) = serve(1, fault);
    let url = format!("ws://127.0.0.1:{}/socket/websocket", ports[0]);
    let out = recover(&[
        "--url",
        &url,
        "--conns",
        "4",
        "--topics",
        "2",
        "--messages",
        "3",
        "--src-ips",
        "127.0.0.1",
        "--settle",
        "200ms",
        "--quiet",
    ]);
    history.stop.store(true, Ordering::Relaxed);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_duplicated_replay_fails_the_run() {
    let (code, stdout, stderr) = faulty_run(Fault::Duplicate);
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "LOST 0 messages in run recover: 12 of 12 owed deliveries arrived; 4 duplicated"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("duplicates 4 (on 4 clients)"), "{stdout}");
}

#[test]
fn a_refused_recovery_fails_the_run() {
    let (code, stdout, stderr) = faulty_run(Fault::Refuse);
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("LOST 12 messages in run recover: 0 of 12 owed deliveries arrived"),
        "{stderr}"
    );
    assert!(stdout.contains("recovered=false 4"), "{stdout}");
}
