//! Topic history on one node, over real sockets: positions in the ref
//! slot, recovery after a drop (exact frames, exact order), stale, trimmed
//! and foreign positions, a restart's new epoch, replay without gap or
//! duplicate while a publisher hammers the topic, `GET /api/history`, the
//! memory limit, and the backend's join answer.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::backend;
use common::{Client, TestServer};
use serde_json::{json, Value};

const HISTORY: &str = r#"
[[channel]]
pattern = "hist:*"
join = "public"
client_events = "broadcast"
history = 5
history_ttl_ms = 60000

[[channel]]
pattern = "quick:*"
join = "public"
history = 100
history_ttl_ms = 300

[[channel]]
pattern = "lobbyh:*"
join = "public"
presence = true
history = 10
"#;

/// Joins a history topic with `payload`; returns the reply's response.
fn join_with(client: &mut Client, topic: &str, r: &str, payload: &str) -> Value {
    client.send(&format!(r#"["{r}","{r}","{topic}","phx_join",{payload}]"#));
    let reply = client.recv_json();
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    reply[4]["response"].clone()
}

fn publish_n(server: &TestServer, topic: &str, range: std::ops::Range<u64>) {
    let messages: Vec<Value> = range
        .map(|n| json!({"topic": topic, "event": "n", "payload": {"n": n}}))
        .collect();
    let (status, body) = server.publish(&json!({ "messages": messages }).to_string());
    assert_eq!(status, 200, "{body}");
}

/// Reads `count` broadcasts; returns their (position, n).
fn read_broadcasts(client: &mut Client, count: usize) -> Vec<(String, u64)> {
    (0..count)
        .map(|_| {
            let frame = client.recv_json();
            assert_eq!(frame[3], "n", "{frame}");
            (
                frame[1]
                    .as_str()
                    .expect("a position in the ref slot")
                    .to_string(),
                frame[4]["n"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_client_recovers_exactly_what_it_missed_in_order() {
    let server = TestServer::start_with_shards(4, HISTORY);
    let mut client = server.connect();
    let first = join_with(&mut client, "hist:1", "1", "{}");
    let start = first["position"].as_str().unwrap().to_string();
    assert!(
        first.get("recovered").is_none(),
        "no since, no recovered: {first}"
    );
    assert!(start.ends_with(":0") && start.as_bytes()[0].is_ascii_lowercase());

    publish_n(&server, "hist:1", 0..2);
    let seen = read_broadcasts(&mut client, 2);
    let epoch = start.trim_end_matches(":0");
    assert_eq!(seen[0].0, format!("{epoch}:1"));
    assert_eq!(seen[1].0, format!("{epoch}:2"));
    let last_seen = seen[1].0.clone();
    drop(client);

    publish_n(&server, "hist:1", 2..5);
    let mut back = server.connect();
    back.send(&format!(
        r#"["7","7","hist:1","phx_join",{{"since":"{last_seen}"}}]"#
    ));
    // The exact frames: the reply, then the three missed broadcasts.
    assert_eq!(
        back.recv_text(),
        format!(
            r#"["7","7","hist:1","phx_reply",{{"status":"ok","response":{{"position":"{epoch}:5","recovered":true}}}}]"#
        )
    );
    for n in 2..5u64 {
        assert_eq!(
            back.recv_text(),
            format!(r#"[null,"{epoch}:{}","hist:1","n",{{"n":{n}}}]"#, n + 1)
        );
    }
    publish_n(&server, "hist:1", 5..6);
    assert_eq!(
        read_broadcasts(&mut back, 1),
        vec![(format!("{epoch}:6"), 5)]
    );
    back.sync("s");
    assert_eq!(server.metric("cinder_history_recovered_total"), 1);
    assert_eq!(server.metric("cinder_history_replayed_total"), 3);
}

#[test]
fn v1_clients_get_the_position_as_ref_and_plain_topics_keep_null() {
    let server = TestServer::start(HISTORY);
    let mut v1 = server.connect_v1();
    v1.send(r#"{"topic":"hist:v1","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#);
    let reply = v1.recv_json();
    let position = reply["payload"]["response"]["position"]
        .as_str()
        .unwrap()
        .to_string();
    v1.send(r#"{"topic":"room:plain","event":"phx_join","payload":{},"ref":"2","join_ref":"2"}"#);
    assert_eq!(v1.recv_json()["payload"]["status"], "ok");
    publish_n(&server, "hist:v1", 0..1);
    publish_n(&server, "room:plain", 0..1);
    let kept = v1.recv_json();
    assert_eq!(kept["ref"], position.replace(":0", ":1"));
    let plain = v1.recv_json();
    assert_eq!(plain["topic"], "room:plain");
    assert_eq!(plain["ref"], Value::Null);
}

#[test]
fn positions_it_cannot_vouch_for_get_recovered_false() {
    let server = TestServer::start(HISTORY);
    let mut client = server.connect();
    let start = join_with(&mut client, "hist:t", "1", "{}")["position"]
        .as_str()
        .unwrap()
        .to_string();
    publish_n(&server, "hist:t", 0..10); // history = 5: offsets 6..=10 kept
    let seen = read_broadcasts(&mut client, 10);
    let epoch = start.trim_end_matches(":0").to_string();
    let cases = [
        (seen[3].0.clone(), false),     // after offset 4: 5 was trimmed
        (seen[4].0.clone(), true),      // after offset 5: 6..=10 all held
        (format!("{epoch}:11"), false), // past the newest
        ("zz9:3".to_string(), false),   // another stream's life
        ("17".to_string(), false),      // not a position at all
    ];
    for (i, (since, recovered)) in cases.iter().enumerate() {
        let mut again = server.connect();
        let r = format!("r{i}");
        let response = join_with(
            &mut again,
            "hist:t",
            &r,
            &format!(r#"{{"since":"{since}"}}"#),
        );
        assert_eq!(
            response["recovered"], *recovered,
            "since {since}: {response}"
        );
        assert_eq!(response["position"], format!("{epoch}:10"));
        if *recovered {
            assert_eq!(read_broadcasts(&mut again, 5).last().unwrap().1, 9);
        }
        again.sync("s"); // nothing was replayed on a failed recovery
    }
    // A since that is not a string is refused, and no channel is joined.
    let mut bad = server.connect();
    bad.send(r#"["1","1","hist:t","phx_join",{"since":17}]"#);
    let reply = bad.recv_json();
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(
        reply[4]["response"]["reason"],
        "since must be a position string"
    );
    assert_eq!(server.metric("cinder_history_recoveries_total"), 5);
    let (_, metrics) = server.http("GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let failed = |reason: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("cinder_history_recovery_failed_total") && l.contains(reason))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        (failed("trimmed"), failed("invalid"), failed("epoch")),
        (1, 2, 1)
    );
}

#[test]
fn broadcasts_older_than_the_ttl_cannot_be_recovered() {
    let server = TestServer::start(HISTORY);
    let mut client = server.connect();
    let start = join_with(&mut client, "quick:1", "1", "{}")["position"]
        .as_str()
        .unwrap()
        .to_string();
    publish_n(&server, "quick:1", 0..1);
    read_broadcasts(&mut client, 1);
    std::thread::sleep(Duration::from_millis(400)); // history_ttl_ms = 300
    let mut late = server.connect();
    let response = join_with(
        &mut late,
        "quick:1",
        "1",
        &format!(r#"{{"since":"{start}"}}"#),
    );
    assert_eq!(response["recovered"], false, "{response}");
}

#[test]
fn a_restart_is_a_new_epoch() {
    let server = TestServer::start(HISTORY);
    let mut client = server.connect();
    join_with(&mut client, "hist:r", "1", "{}");
    publish_n(&server, "hist:r", 0..1);
    let (position, _) = read_broadcasts(&mut client, 1).remove(0);
    drop(client);
    server.stop();
    let restarted = TestServer::start(HISTORY);
    let mut client = restarted.connect();
    let response = join_with(
        &mut client,
        "hist:r",
        "1",
        &format!(r#"{{"since":"{position}"}}"#),
    );
    assert_eq!(response["recovered"], false);
    let new = response["position"].as_str().unwrap();
    assert_ne!(new.split(':').next(), position.split(':').next());
}

#[test]
fn rejoins_during_a_publish_storm_see_every_message_once_in_order() {
    let server = Arc::new(TestServer::start_with_shards(
        4,
        &HISTORY.replace("history = 5\n", "history = 100000\n"),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                publish_n(&server, "hist:storm", n..n + 5);
                n += 5;
                // Keeps the run's total well inside the history.
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let mut clients: Vec<(Client, Option<String>, Vec<u64>)> = (0..6)
        .map(|_| (server.connect(), None, Vec::new()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut round = 0;
    while Instant::now() < deadline {
        round += 1;
        for (i, (client, position, seen)) in clients.iter_mut().enumerate() {
            if round > 1 {
                *client = server.connect();
            }
            let payload = match position {
                Some(p) => format!(r#"{{"since":"{p}"}}"#),
                None => "{}".to_string(),
            };
            let r = format!("{round}");
            let response = join_with(client, "hist:storm", &r, &payload);
            if position.is_some() {
                assert_eq!(response["recovered"], true, "client {i}: {response}");
            } else {
                *position = Some(response["position"].as_str().unwrap().to_string());
            }
            // Read a few frames (replayed or live), then drop the connection.
            for _ in 0..(3 + i * 7) {
                let frame = client.recv_json();
                let n = frame[4]["n"].as_u64().unwrap();
                if let Some(&previous) = seen.last() {
                    assert_eq!(
                        n,
                        previous + 1,
                        "client {i}: gap or duplicate after {previous}"
                    );
                }
                seen.push(n);
                *position = Some(frame[1].as_str().unwrap().to_string());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    for (i, (_, _, seen)) in clients.iter().enumerate() {
        assert!(seen.len() > 20, "client {i} saw only {}", seen.len());
    }
}

#[test]
fn the_api_reads_history_in_pages() {
    let server = TestServer::start_with_shards(3, HISTORY);
    publish_n(&server, "hist:api", 0..7);
    let get = |query: &str| {
        server.http(&format!(
            "GET /api/history?{query} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
        ))
    };
    let (status, body) = get("topic=hist:api");
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "history = 5");
    assert_eq!(messages[0]["payload"]["n"], 2);
    assert_eq!(messages[0]["event"], "n");
    assert_eq!(page["complete"], true);
    let since = messages[1]["position"].as_str().unwrap();
    let (_, body) = get(&format!("topic=hist:api&since={since}&limit=2"));
    let page: Value = serde_json::from_str(&body).unwrap();
    let ns: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![4, 5]);
    let epoch = since.split(':').next().unwrap();
    let (_, body) = get(&format!("topic=hist:api&since={epoch}:1"));
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (page["complete"].clone(), page["reason"].clone()),
        (json!(false), json!("trimmed"))
    );
    assert_eq!(get("topic=room:plain").0, 404);
    assert_eq!(get("since=a:1").0, 400);
    assert_eq!(get("topic=hist:api&since=nope").0, 400);
    assert_eq!(get("topic=hist:api&limit=0").0, 400);
}

#[test]
fn the_memory_limit_drops_the_oldest_topics_not_the_process() {
    let server =
        TestServer::start_with_shards(2, &format!("[history]\nmemory_limit = 131072\n{HISTORY}"));
    let payload = "x".repeat(1000);
    for topic in 0..200 {
        let messages: Vec<Value> = (0..5)
            .map(|_| json!({"topic": format!("hist:m{topic}"), "event": "n", "payload": {"p": payload}}))
            .collect();
        let (status, _) = server.publish(&json!({ "messages": messages }).to_string());
        assert_eq!(status, 200);
    }
    // The gauges refresh every tick.
    std::thread::sleep(Duration::from_millis(600));
    assert!(server.metric("cinder_history_evicted_total") > 0);
    assert!(server.metric("cinder_history_bytes") <= 131_072);
    let (_, body) = server
        .http("GET /api/history?topic=hist:m199 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["messages"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn binary_pushes_are_refused_on_history_topics() {
    let server = TestServer::start(HISTORY);
    let mut client = server.connect();
    join_with(&mut client, "hist:b", "1", "{}");
    // V2 binary push: kind 0, join_ref "1", ref "2", topic, event "e".
    let mut frame = vec![0u8, 1, 1, 6, 1];
    frame.extend_from_slice(b"12hist:be");
    frame.extend_from_slice(&[1, 2, 3]);
    client.send_binary(&frame);
    let reply = client.recv_json();
    assert_eq!(reply[1], "2");
    assert_eq!(reply[4]["status"], "error");
    assert_eq!(
        reply[4]["response"]["reason"],
        "binary payloads cannot be kept in a topic's history"
    );
}

#[test]
fn presence_and_webhook_joins_get_the_position_too() {
    fn decide(path: &str, _: &Value) -> (u16, String, Duration) {
        match path {
            "/hooks/join" => (
                200,
                r#"{"response":{"role":"admin"}}"#.into(),
                Duration::ZERO,
            ),
            _ => (404, "{}".into(), Duration::ZERO),
        }
    }
    let (url, _calls) = backend(decide);
    let server = TestServer::start(&format!(
        "[webhook]\nurl = \"{url}\"\n\n[[channel]]\npattern = \"hookh:*\"\njoin = \"webhook\"\nhistory = 3\n{HISTORY}"
    ));
    let mut client = server.connect();
    let hooked = join_with(&mut client, "hookh:1", "1", r#"{"since":"abc:0"}"#);
    assert_eq!(hooked["role"], "admin", "{hooked}");
    assert_eq!(hooked["recovered"], false);
    assert!(hooked["position"].as_str().unwrap().ends_with(":0"));
    let presence = join_with(&mut client, "lobbyh:1", "2", "{}");
    assert!(presence["position"].is_string(), "{presence}");
    let pushes: Vec<Value> = (0..2).map(|_| client.recv_json()).collect();
    assert!(
        pushes.iter().any(|p| p[3] == "presence_state"),
        "{pushes:?}"
    );
}
