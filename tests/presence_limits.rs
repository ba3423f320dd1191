//! Presence meta limits over real sockets: a presence over
//! `socket.presence_meta_max` is refused with an error join reply and never
//! tracked, a client's presences together stay under
//! `socket.presence_meta_total_max` (leaving frees room), and an update over
//! a limit is refused with the old meta kept.

mod common;

use common::{Client, TestServer};
use serde_json::{json, Value};

/// One shard, so "nothing else came" is proved by a heartbeat round trip.
/// A presence is its key plus its meta object: with the key "u1" (2 bytes),
/// a meta of 254 bytes is the largest allowed, and five presences of 200
/// bytes (1000) fit under the total where a sixth does not.
const CONFIG: &str = r#"
[socket]
presence_meta_max = 256
presence_meta_total_max = 1024

[[channel]]
pattern = "lobby:*"
join = "public"
presence = true
presence_key = "user_id"
"#;

const TOO_LARGE: &str = "presence meta too large";
const TOTAL_TOO_LARGE: &str = "presence meta total too large";

/// A meta object of exactly `n` bytes as compact JSON (`n` ≥ 8).
fn meta_of(n: usize) -> Value {
    let meta = json!({ "p": "x".repeat(n - 8) });
    assert_eq!(meta.to_string().len(), n);
    meta
}

/// Sends a join of `topic` (join_ref = ref = `r`) as `user` with `meta`;
/// returns the reply's payload. An ok join is followed by its diff and its
/// state, both read here.
fn join(client: &mut Client, topic: &str, r: &str, user: &str, meta: &Value) -> Value {
    let payload = json!({"user_id": user, "meta": meta});
    client.send(&json!([r, r, topic, "phx_join", payload]).to_string());
    let reply = client.recv_json();
    assert_eq!(head(&reply), head(&json!([r, r, topic, "phx_reply", {}])));
    if reply[4]["status"] == "ok" {
        let diff = client.recv_json();
        assert_eq!(diff[3], "presence_diff", "{diff}");
        assert!(diff[4]["joins"].get(user).is_some(), "{diff}");
        let state = client.recv_json();
        assert_eq!(state[3], "presence_state", "{state}");
        assert_eq!(state[0], r);
    }
    reply[4].clone()
}

/// The first four fields of a message (refs, topic, event).
fn head(message: &Value) -> &[Value] {
    &message.as_array().expect("a V2 message")[..4]
}

/// The error reply payload with `reason`.
fn error(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

/// Leaves `topic` (joined with `r`): reply ok, then `phx_close`.
fn leave(client: &mut Client, topic: &str, r: &str, msg_ref: &str) {
    client.send(&json!([r, msg_ref, topic, "phx_leave", {}]).to_string());
    let reply = client.recv_json();
    assert_eq!(reply[3], "phx_reply", "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    assert_eq!(client.recv_json()[3], "phx_close");
}

/// `GET /api/presence?topic=…`.
fn presence_state(server: &TestServer, topic: &str) -> Value {
    let (status, body) = server.http(&format!(
        "GET /api/presence?topic={topic} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    ));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_join_with_a_too_large_meta_is_refused_and_not_tracked() {
    let server = TestServer::start_with_shards(1, CONFIG);
    let mut watcher = server.connect();
    let reply = join(&mut watcher, "lobby:a", "1", "watcher", &json!({"n": 1}));
    assert_eq!(reply["status"], "ok");

    let mut mallory = server.connect();
    let reply = join(&mut mallory, "lobby:a", "1", "u1", &meta_of(255));
    assert_eq!(reply, error(TOO_LARGE));
    // No state for mallory, no diff for anyone, nobody new in the state.
    mallory.sync("h1");
    watcher.sync("h1");
    assert_eq!(
        presence_state(&server, "lobby:a")
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["watcher"]
    );
    // The join was undone: mallory is not subscribed, its events are
    // refused as on any topic it has not joined.
    let (status, _) = server.publish(r#"{"topic":"lobby:a","event":"news","payload":{}}"#);
    assert_eq!(status, 200);
    assert_eq!(watcher.recv_json()[3], "news");
    mallory.send(r#"["1","2","lobby:a","presence_update",{"meta":{}}]"#);
    let reply = mallory.recv_json();
    assert_eq!(reply[4]["response"]["reason"], "unmatched topic", "{reply}");
    mallory.sync("h2");

    // At the limit it joins; the watcher sees it.
    let reply = join(&mut mallory, "lobby:a", "3", "u1", &meta_of(254));
    assert_eq!(reply["status"], "ok");
    let diff = watcher.recv_json();
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["joins"]["u1"]["metas"][0]["p"], "x".repeat(246));
    // A key that takes the presence over the limit is refused alike.
    let long_key = "k".repeat(255);
    let reply = join(&mut mallory, "lobby:b", "4", &long_key, &json!({}));
    assert_eq!(reply, error(TOO_LARGE));
    mallory.sync("h3");
}

#[test]
fn a_client_total_is_bounded_and_leaving_frees_room() {
    let server = TestServer::start_with_shards(1, CONFIG);
    let mut client = server.connect();
    let meta = meta_of(198); // 200 with the key
    for i in 0..5 {
        let reply = join(
            &mut client,
            &format!("lobby:{i}"),
            &format!("{i}"),
            "u1",
            &meta,
        );
        assert_eq!(reply["status"], "ok", "join {i}: {reply}");
    }
    let reply = join(&mut client, "lobby:5", "5", "u1", &meta);
    assert_eq!(reply, error(TOTAL_TOO_LARGE));
    // A smaller presence still fits (1000 + 20 ≤ 1024); channels without
    // presence are not affected.
    let reply = join(&mut client, "lobby:small", "6", "u1", &meta_of(18));
    assert_eq!(reply["status"], "ok", "{reply}");
    client.join("room:plain", "7");
    client.sync("h1");
    assert_eq!(presence_state(&server, "lobby:5"), json!({}));

    // Leaving one presence topic frees its bytes.
    leave(&mut client, "lobby:0", "0", "8");
    let reply = join(&mut client, "lobby:5", "9", "u1", &meta);
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(presence_state(&server, "lobby:0"), json!({}));
    assert!(presence_state(&server, "lobby:5").get("u1").is_some());

    // A duplicate join replaces the presence: its old bytes are not counted
    // twice, so re-joining a topic at the total still works. (Phoenix's
    // order: the reply, the old instance's close, then the presence pushes.)
    let payload = json!({"user_id": "u1", "meta": meta});
    client.send(&json!(["10", "10", "lobby:5", "phx_join", payload]).to_string());
    let reply = client.recv_json();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let close = client.recv_json();
    assert_eq!(
        head(&close),
        head(&json!(["9", "9", "lobby:5", "phx_close", {}]))
    );
    let diff = client.recv_json();
    assert_eq!(diff[3], "presence_diff", "{diff}");
    assert_eq!(client.recv_json()[3], "presence_state");

    // Closing the connection frees everything: a new connection (which may
    // reuse the old one's slot on the shard) starts afresh.
    let _ = client.ws.close(None);
    let _ = client.ws.flush();
    drop(client);
    let mut watcher = server.connect();
    let deadline = std::time::Instant::now() + common::WAIT;
    while presence_state(&server, "lobby:1") != json!({}) {
        assert!(std::time::Instant::now() < deadline, "presence never left");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for i in 0..5 {
        let reply = join(
            &mut watcher,
            &format!("lobby:{i}"),
            &format!("{i}"),
            "u1",
            &meta,
        );
        assert_eq!(reply["status"], "ok", "join {i}: {reply}");
    }
}

#[test]
fn an_update_over_a_limit_is_refused_and_the_old_meta_stays() {
    let server = TestServer::start_with_shards(1, CONFIG);
    let mut watcher = server.connect();
    assert_eq!(
        join(&mut watcher, "lobby:u", "1", "watcher", &json!({}))["status"],
        "ok"
    );
    let mut client = server.connect();
    assert_eq!(
        join(&mut client, "lobby:u", "1", "u1", &json!({"s": "a"}))["status"],
        "ok"
    );
    assert_eq!(watcher.recv_json()[3], "presence_diff");

    let update = |meta: &Value, r: &str| {
        json!(["1", r, "lobby:u", "presence_update", {"meta": meta}]).to_string()
    };
    client.send(&update(&meta_of(255), "2"));
    let reply = client.recv_json();
    assert_eq!(
        head(&reply),
        head(&json!(["1", "2", "lobby:u", "phx_reply", {}]))
    );
    assert_eq!(reply[4], error(TOO_LARGE));
    client.sync("h1");
    watcher.sync("h1");
    assert_eq!(
        presence_state(&server, "lobby:u")["u1"]["metas"][0]["s"],
        "a"
    );

    // Over the total: five more presences of 200 bytes (1011 with lobby:u's
    // 11), then growing lobby:u to 200 would make 1200.
    let meta = meta_of(198);
    for i in 0..5 {
        let reply = join(
            &mut client,
            &format!("lobby:{i}"),
            &format!("t{i}"),
            "u1",
            &meta,
        );
        assert_eq!(reply["status"], "ok", "join {i}: {reply}");
    }
    client.send(&update(&meta, "3"));
    assert_eq!(client.recv_json()[4], error(TOTAL_TOO_LARGE));
    client.sync("h2");
    watcher.sync("h2");
    assert_eq!(
        presence_state(&server, "lobby:u")["u1"]["metas"][0]["s"],
        "a"
    );

    // Within the limits the update goes through, and everyone sees it.
    client.send(&update(&json!({"s": "b"}), "4"));
    let reply = client.recv_json();
    assert_eq!(reply[4], json!({"status": "ok", "response": {}}));
    let diff = client.recv_json();
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["joins"]["u1"]["metas"][0]["s"], "b");
    assert_eq!(diff[4]["leaves"]["u1"]["metas"][0]["s"], "a");
    assert_eq!(watcher.recv_json()[4], diff[4]);
}

#[test]
fn limits_are_validated() {
    let parse = |socket: &str| {
        cinder::Config::parse(&format!("[socket]\n{socket}\n"), "test")
            .map(|c| (c.socket.presence_meta_max, c.socket.presence_meta_total_max))
    };
    assert_eq!(parse("").unwrap(), (4096, 65536));
    let error = parse("presence_meta_max = 10").unwrap_err().to_string();
    assert!(error.contains("socket.presence_meta_max"), "{error}");
    let error = parse("presence_meta_max = 8192\npresence_meta_total_max = 4096")
        .unwrap_err()
        .to_string();
    assert!(error.contains("socket.presence_meta_total_max"), "{error}");
    assert_eq!(
        parse("presence_meta_max = 64\npresence_meta_total_max = 64").unwrap(),
        (64, 64)
    );
}
