//! Backend hooks against a real HTTP backend started by the test: allowing,
//! refusing, slow and absent backends — and a shard that keeps delivering
//! to everyone else while a hook is stuck.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::backend::backend;
use common::{Client, TestServer};

fn config(url: &str, timeout_ms: u64) -> String {
    format!(
        "[webhook]\nurl = \"{url}\"\ntimeout_ms = {timeout_ms}\n\n\
         [[channel]]\npattern = \"hook:*\"\njoin = \"webhook\"\nclient_events = \"webhook\"\n"
    )
}

fn join_reply(client: &mut Client, topic: &str, r: &str) -> serde_json::Value {
    client.send(&format!(
        r#"["{r}","{r}","{topic}","phx_join",{{"pin":42}}]"#
    ));
    client.recv_json()
}

fn decide(path: &str, body: &serde_json::Value) -> (u16, String, Duration) {
    let topic = body["topic"].as_str().unwrap_or("");
    match (path, topic) {
        ("/hooks/join", "hook:banned") => (
            403,
            r#"{"response":{"reason":"banned"}}"#.into(),
            Duration::ZERO,
        ),
        ("/hooks/join", _) => (
            200,
            r#"{"response":{"welcome":true}}"#.into(),
            Duration::ZERO,
        ),
        ("/hooks/event", _) if body["event"] == "save" => (
            200,
            r#"{"reply":{"saved":1},"broadcast":{"event":"saved","payload":{"by":"backend"}}}"#
                .into(),
            Duration::ZERO,
        ),
        ("/hooks/event", _) => (
            422,
            r#"{"response":{"reason":"bad event"}}"#.into(),
            Duration::ZERO,
        ),
        _ => (404, "{}".into(), Duration::ZERO),
    }
}

#[test]
fn the_backend_decides_joins_and_handles_events() {
    let (url, calls) = backend(decide);
    let server = TestServer::start(&config(&url, 2000));
    let mut alice = Client::connect(&server.ws_url(Some("2.0.0")));
    let mut bob = Client::connect(&server.ws_url(Some("2.0.0")));
    let reply = join_reply(&mut alice, "hook:lobby", "1");
    assert_eq!(
        reply[4],
        serde_json::json!({"status":"ok","response":{"welcome":true}}),
        "{reply}"
    );
    let (path, body, _) = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(path, "/hooks/join");
    assert_eq!(body["topic"], "hook:lobby");
    assert_eq!(body["payload"], serde_json::json!({"pin":42}));
    assert!(body["user_id"].is_null());
    let reply = join_reply(&mut bob, "hook:banned", "1");
    assert_eq!(
        reply[4],
        serde_json::json!({"status":"error","response":{"reason":"banned"}}),
        "{reply}"
    );
    let reply = join_reply(&mut bob, "hook:lobby", "2");
    assert_eq!(reply[4]["status"], "ok");

    alice.send(r#"["1","9","hook:lobby","save",{"text":"hi"}]"#);
    // Both members get the backend's broadcast; alice also gets her reply.
    let mut alice_got = [alice.recv_json(), alice.recv_json()];
    alice_got.sort_by_key(|m| m[3].as_str().unwrap_or("").to_string());
    assert_eq!(alice_got[0][3], "phx_reply");
    assert_eq!(
        alice_got[0][4],
        serde_json::json!({"status":"ok","response":{"saved":1}})
    );
    assert_eq!(alice_got[1][3], "saved");
    let broadcast = bob.recv_json();
    assert_eq!(broadcast[3], "saved");
    assert_eq!(broadcast[4], serde_json::json!({"by":"backend"}));
    alice.send(r#"["1","10","hook:lobby","nope",{}]"#);
    let reply = alice.recv_json();
    assert_eq!(
        reply[4],
        serde_json::json!({"status":"error","response":{"reason":"bad event"}})
    );
}

/// Answers with objects holding what `serde_json::Value` would misread.
fn verbatim(path: &str, _: &serde_json::Value) -> (u16, String, Duration) {
    let answer = match path {
        "/hooks/join" => r#"{"response":{"$serde_json::private::RawValue":"1","n":1e400}}"#,
        _ => {
            r#"{"reply":{"n":99999999999999999999},"broadcast":{"event":"echoed","payload":{"$serde_json::private::RawValue":"{\"admin\":true}","big":18446744073709551616}}}"#
        }
    };
    (200, answer.into(), Duration::ZERO)
}

/// Client payloads reach the backend, and the backend's objects reach
/// clients, as the exact JSON they were written as: numbers beyond 64 bits
/// stay whole, and a key that serde_json's `Value` treats specially
/// (`$serde_json::private::RawValue`, which makes it read the key's string
/// as the object) stays an ordinary key.
#[test]
fn payloads_pass_between_clients_and_the_backend_byte_for_byte() {
    let (url, calls) = backend(verbatim);
    let server = TestServer::start(&config(&url, 2000));
    let mut client = server.connect();
    let tricky = r#"{"$serde_json::private::RawValue":"{\"x\":1}","n":99999999999999999999}"#;
    client.send(&format!(r#"["1","1","hook:raw","phx_join",{tricky}]"#));
    assert_eq!(
        client.recv_text(),
        r#"["1","1","hook:raw","phx_reply",{"status":"ok","response":{"$serde_json::private::RawValue":"1","n":1e400}}]"#
    );
    let (_, _, raw) = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(raw.contains(&format!(r#""payload":{tricky}"#)), "{raw}");
    client.send(&format!(r#"["1","2","hook:raw","echo",{tricky}]"#));
    let (_, _, raw) = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(raw.contains(&format!(r#""payload":{tricky}"#)), "{raw}");
    let mut got = [client.recv_text(), client.recv_text()];
    got.sort();
    assert_eq!(
        got,
        [
            r#"["1","2","hook:raw","phx_reply",{"status":"ok","response":{"n":99999999999999999999}}]"#,
            r#"[null,null,"hook:raw","echoed",{"$serde_json::private::RawValue":"{\"admin\":true}","big":18446744073709551616}]"#,
        ]
    );
}

fn slow(_: &str, _: &serde_json::Value) -> (u16, String, Duration) {
    (200, "{}".into(), Duration::from_secs(3))
}

#[test]
fn a_slow_backend_times_out_without_stalling_the_shard() {
    let (url, _) = backend(slow);
    let server = TestServer::start_with_shards(1, &config(&url, 1500));
    let mut waiting = Client::connect(&server.ws_url(Some("2.0.0")));
    let mut other = Client::connect(&server.ws_url(Some("2.0.0")));
    other.join("room:live", "1");
    let started = Instant::now();
    waiting.send(r#"["1","1","hook:slow","phx_join",{}]"#);
    // While the hook waits, the same shard keeps serving everyone else.
    for i in 0..5 {
        let (status, _) = server.publish(&format!(
            r#"{{"topic":"room:live","event":"tick","payload":{{"i":{i}}}}}"#
        ));
        assert_eq!(status, 200);
        let got = other.recv_json();
        assert_eq!(got[4]["i"], i);
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "deliveries waited for the hook"
    );
    let reply = waiting.recv_json();
    assert_eq!(
        reply[4],
        serde_json::json!({"status":"error","response":{"reason":"backend timeout"}})
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline was not applied"
    );
}

#[test]
fn an_absent_backend_answers_backend_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let server = TestServer::start(&config(&url, 1000));
    let mut client = Client::connect(&server.ws_url(Some("2.0.0")));
    let reply = join_reply(&mut client, "hook:x", "1");
    assert_eq!(
        reply[4],
        serde_json::json!({"status":"error","response":{"reason":"backend unavailable"}})
    );
}

#[test]
fn webhook_routes_need_a_url() {
    let err = cinder::Config::parse("[[channel]]\npattern = \"x:*\"\njoin = \"webhook\"\n", "t")
        .unwrap_err();
    assert!(err.to_string().contains("channel[0]"), "{err}");
    let err = cinder::Config::parse("[webhook]\nurl = \"ftp://x\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("webhook.url"), "{err}");
}

fn connect_decider(path: &str, body: &serde_json::Value) -> (u16, String, Duration) {
    if path != "/hooks/connect" {
        return (404, "{}".into(), Duration::ZERO);
    }
    match body["params"]["token"].as_str() {
        Some("good") => (
            200,
            r#"{"user_id":"alice","channels":["room:*"]}"#.into(),
            Duration::ZERO,
        ),
        Some("slow") => (200, "{}".into(), Duration::from_secs(3)),
        Some("broken") => (500, "oops".into(), Duration::ZERO),
        _ => (403, r#"{"reason":"bad token"}"#.into(), Duration::ZERO),
    }
}

fn connect_config(url: &str) -> String {
    format!(
        "[socket.auth]\nmode = \"webhook\"\n\n[webhook]\nurl = \"{url}\"\ntimeout_ms = 500\n\n\
         [[channel]]\npattern = \"user:{{user_id}}\"\njoin = \"public\"\n"
    )
}

fn upgrade(server: &TestServer, token: &str) -> (u16, String) {
    server.http(&format!(
        "GET /socket/websocket?vsn=2.0.0&token={token} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: test-agent\r\n\r\n"
    ))
}

#[test]
fn the_backend_decides_who_connects_and_who_they_are() {
    let (url, calls) = backend(connect_decider);
    let server = TestServer::start(&connect_config(&url));
    let mut alice = Client::connect(&format!("{}&token=good", server.ws_url(Some("2.0.0"))));
    let (path, body, _) = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(path, "/hooks/connect");
    assert_eq!(body["params"]["token"], "good");
    assert_eq!(body["params"]["vsn"], "2.0.0");
    assert!(
        body["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{body}"
    );
    alice.join("user:alice", "1");
    let reply = join_reply(&mut alice, "user:bob", "2");
    assert_eq!(reply[4]["response"]["reason"], "unauthorized", "{reply}");

    let (status, body) = upgrade(&server, "nope");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bad token"), "{body}");
    let (_, forwarded, _) = calls.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        forwarded["headers"]["user-agent"], "test-agent",
        "{forwarded}"
    );
    let (status, body) = upgrade(&server, "broken");
    assert_eq!(status, 503, "{body}");
    let (status, body) = upgrade(&server, "slow");
    assert_eq!(
        (status, body.contains("backend timeout")),
        (503, true),
        "{body}"
    );
}

/// One long-poll request on a fresh connection; returns the JSON body.
fn longpoll(server: &TestServer, method: &str, query: &str, body: &str) -> serde_json::Value {
    let (status, text) = server.http(&format!(
        "{method} /socket/longpoll?{query} HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

#[test]
fn the_backend_decides_long_poll_sessions_too() {
    let (url, _calls) = backend(connect_decider);
    let server = TestServer::start(&connect_config(&url));
    let opened = longpoll(&server, "GET", "vsn=2.0.0&token=good", "");
    assert_eq!(opened["status"], 410, "{opened}");
    let token = opened["token"].as_str().unwrap();
    // The backend said this is alice: her private topic is hers.
    let body = r#"["1","1","user:alice","phx_join",{}]"#;
    let posted = longpoll(&server, "POST", &format!("vsn=2.0.0&token={token}"), body);
    assert_eq!(posted, serde_json::json!({"status": 200}));
    let polled = longpoll(&server, "GET", &format!("vsn=2.0.0&token={token}"), "");
    assert!(
        polled["messages"][0]
            .as_str()
            .unwrap()
            .contains(r#""status":"ok""#),
        "{polled}"
    );
    let refused = longpoll(&server, "GET", "vsn=2.0.0&token=nope", "");
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["reason"], "bad token");
}

fn slow_joins(path: &str, _: &serde_json::Value) -> (u16, String, Duration) {
    match path {
        "/hooks/join" => (200, r#"{"response":{}}"#.into(), Duration::from_millis(300)),
        _ => (404, "{}".into(), Duration::ZERO),
    }
}

#[test]
fn a_long_poll_post_waits_for_its_hooked_join_and_408s_past_the_window() {
    let (url, _calls) = backend(slow_joins);
    let server = TestServer::start(&format!(
        "{}\n[socket.longpoll]\nwindow_ms = 1000\n",
        config(&url, 5000)
    ));
    let token = longpoll(&server, "GET", "vsn=2.0.0", "")["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The join waits 300 ms for the backend: the POST is answered after it,
    // and the line after the join ran after it (its reply follows the join's).
    let lines =
        "[\"1\",\"1\",\"hook:a\",\"phx_join\",{}]\n[\"1\",\"2\",\"hook:a\",\"phx_leave\",{}]";
    let started = Instant::now();
    let posted = longpoll(&server, "POST", &format!("vsn=2.0.0&token={token}"), lines);
    assert_eq!(posted, serde_json::json!({"status": 200}));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let polled = longpoll(&server, "GET", &format!("vsn=2.0.0&token={token}"), "");
    let events: Vec<String> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let m: serde_json::Value = serde_json::from_str(m.as_str().unwrap()).unwrap();
            format!(
                "{} {}",
                m[1].as_str().unwrap_or("null"),
                m[3].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(events, vec!["1 phx_reply", "2 phx_reply", "1 phx_close"]);
    // Eight slow joins in a row (2.4 s) exceed the 1 s window: 408, later
    // lines dropped.
    let lines = (0..8)
        .map(|i| format!("[\"{i}\",\"{i}\",\"hook:t{i}\",\"phx_join\",{{}}]"))
        .collect::<Vec<_>>()
        .join("\n");
    let posted = longpoll(&server, "POST", &format!("vsn=2.0.0&token={token}"), &lines);
    assert_eq!(posted, serde_json::json!({"status": 408}));
}

#[test]
fn a_hooked_join_on_a_presence_route_gets_its_diff_then_its_state_after_the_reply() {
    let (url, _calls) = backend(decide);
    let server = TestServer::start(&format!(
        "[webhook]\nurl = \"{url}\"\ntimeout_ms = 2000\n\n\
         [[channel]]\npattern = \"hook:*\"\njoin = \"webhook\"\npresence = true\npresence_key = \"name\"\n"
    ));
    let mut client = server.connect();
    client.send(r#"["1","1","hook:room","phx_join",{"name":"ann","meta":{"mood":"ok"}}]"#);
    let reply = client.recv_json();
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["response"]["welcome"], true, "{reply}");
    // As on Phoenix: the diff announcing the joiner, then a state that
    // already holds it.
    let diff = client.recv_json();
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["joins"]["ann"]["metas"][0]["mood"], "ok", "{diff}");
    let state = client.recv_json();
    assert_eq!(
        (state[0].as_str(), state[3].as_str()),
        (Some("1"), Some("presence_state"))
    );
    assert_eq!(state[4]["ann"]["metas"][0]["mood"], "ok", "{state}");
}
