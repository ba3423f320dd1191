//! Cinder nodes as child processes, with a `redis-server` of the test's
//! own as the bus: broadcasts and presence across nodes, nodes killed and
//! restarted, Redis killed and restarted, forced disconnects everywhere.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{wait_until, Node, Redis, CONVERGE};
use common::Client;
use serde_json::{json, Value};

/// Waits until Redis counts `n` subscribers of a topic's channel: the
/// ground truth of "every node that should listen does".
fn wait_subscribers(redis: &Redis, topic: &str, n: usize) {
    let channel = format!("cinder:t:{topic}");
    wait_until(&format!("{n} subscribers of {channel}"), || {
        let reply = redis.command(&format!("PUBSUB NUMSUB {channel}"));
        let count = reply
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .next()
            .and_then(|c| c.parse::<usize>().ok());
        count == Some(n)
    });
}

/// Two nodes of one cluster, both seeing each other.
fn two_nodes(redis: &Redis, extra: &str) -> (Node, Node) {
    let a = Node::start(&redis.url(), "a", 2, extra);
    let b = Node::start(&redis.url(), "b", 2, extra);
    a.wait_cluster(2);
    b.wait_cluster(2);
    (a, b)
}

#[test]
fn broadcasts_cross_nodes_once_and_in_order() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "");
    let mut on_a = a.connect();
    let mut on_b = b.connect();
    let mut also_on_b = b.connect();
    on_a.join("room:x", "1");
    on_b.join("room:x", "1");
    also_on_b.join("room:x", "1");
    wait_subscribers(&redis, "room:x", 2);

    // API publishes on A: every subscriber on both nodes, in order, once.
    for n in 0..200 {
        let (status, _) = a.post(
            "/api/broadcast",
            &format!(r#"{{"topic":"room:x","event":"n","payload":{{"n":{n}}}}}"#),
        );
        assert_eq!(status, 200);
    }
    for client in [&mut on_a, &mut on_b, &mut also_on_b] {
        for n in 0..200 {
            assert_eq!(
                client.recv_text(),
                format!(r#"[null,null,"room:x","n",{{"n":{n}}}]"#)
            );
        }
        client.sync("99");
    }

    // A client event on B reaches A (and everyone on B, the sender too).
    on_b.send(r#"["1","2","room:x","shout",{"from":"b"}]"#);
    let shout = r#"[null,null,"room:x","shout",{"from":"b"}]"#;
    assert_eq!(on_a.recv_text(), shout);
    assert_eq!(also_on_b.recv_text(), shout);
    let mut sender_got = [on_b.recv_text(), on_b.recv_text()];
    sender_got.sort();
    assert_eq!(sender_got[1], shout);
    on_a.sync("100");

    // broadcast_from: everyone but the sender, on both nodes.
    on_a.join("from:y", "3");
    on_b.join("from:y", "3");
    also_on_b.join("from:y", "3");
    wait_subscribers(&redis, "from:y", 2);
    on_b.send(r#"["3","4","from:y","hi",{}]"#);
    assert_eq!(on_a.recv_text(), r#"[null,null,"from:y","hi",{}]"#);
    assert_eq!(also_on_b.recv_text(), r#"[null,null,"from:y","hi",{}]"#);
    let reply = on_b.recv_json();
    assert_eq!(
        reply[3], "phx_reply",
        "the sender gets its reply, not its message"
    );
    on_b.sync("101");
    on_a.sync("102");
    also_on_b.sync("103");

    // Counted on both sides.
    assert!(a.metric("cinder_cluster_messages_sent_total") >= 200);
    assert!(b.metric("cinder_cluster_messages_received_total") >= 200);
}

#[test]
fn a_node_listens_only_to_topics_it_has_subscribers_of() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "");
    let mut on_a = a.connect();
    on_a.join("room:only-a", "1");
    wait_subscribers(&redis, "room:only-a", 1);
    assert_eq!(b.metric("cinder_cluster_topics"), 0);
    // Leaving and rejoining at once keeps the subscription (no churn);
    // leaving for good drops it after the linger.
    on_a.send(r#"["1","2","room:only-a","phx_leave",{}]"#);
    assert_eq!(on_a.recv_json()[3], "phx_reply");
    assert_eq!(on_a.recv_json()[3], "phx_close");
    on_a.join("room:only-a", "3");
    wait_subscribers(&redis, "room:only-a", 1);
    drop(on_a);
    wait_subscribers(&redis, "room:only-a", 0);
}

/// Every member's view of a presence topic, built as the JS client does.
#[derive(Default, Debug, PartialEq)]
struct View(BTreeMap<String, Vec<String>>);

impl View {
    fn apply_state(&mut self, state: &Value) {
        self.0.clear();
        for (key, presence) in state.as_object().unwrap() {
            let refs = presence["metas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["phx_ref"].as_str().unwrap().to_string())
                .collect();
            self.0.insert(key.clone(), refs);
        }
        self.normalize();
    }

    fn apply_diff(&mut self, diff: &Value) {
        for (key, presence) in diff["joins"].as_object().unwrap() {
            let refs = self.0.entry(key.clone()).or_default();
            for meta in presence["metas"].as_array().unwrap() {
                let r = meta["phx_ref"].as_str().unwrap().to_string();
                assert!(!refs.contains(&r), "a duplicate join of {key}: {diff}");
                refs.push(r);
            }
        }
        for (key, presence) in diff["leaves"].as_object().unwrap() {
            let refs = self
                .0
                .get_mut(key)
                .unwrap_or_else(|| panic!("leave of unknown {key}"));
            for meta in presence["metas"].as_array().unwrap() {
                let r = meta["phx_ref"].as_str().unwrap();
                let before = refs.len();
                refs.retain(|x| x != r);
                assert_eq!(refs.len() + 1, before, "a leave of an unknown meta: {diff}");
            }
            if refs.is_empty() {
                self.0.remove(key);
            }
        }
        self.normalize();
    }

    fn normalize(&mut self) {
        for refs in self.0.values_mut() {
            refs.sort();
        }
    }

    /// Key → number of metas.
    fn shape(&self) -> BTreeMap<String, usize> {
        self.0.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }
}

/// A presence member: its client and its view of the topic.
struct Member {
    client: Client,
    view: View,
}

impl Member {
    fn join(node: &Node, topic: &str, key: &str) -> Member {
        let mut client = node.connect();
        client.send(&format!(
            r#"["1","1","{topic}","phx_join",{{"user_id":"{key}"}}]"#
        ));
        let mut member = Member {
            client,
            view: View::default(),
        };
        let reply = member.client.recv_json();
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        member
    }

    /// Reads presence messages until the view has `shape`.
    fn wait_for(&mut self, shape: &[(&str, usize)]) {
        let wanted: BTreeMap<String, usize> =
            shape.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let deadline = Instant::now() + CONVERGE;
        while self.view.shape() != wanted {
            assert!(
                Instant::now() < deadline,
                "view {:?}, wanted {wanted:?}",
                self.view.shape()
            );
            let message = self.client.recv_json();
            match message[3].as_str() {
                Some("presence_state") => self.view.apply_state(&message[4]),
                Some("presence_diff") => self.view.apply_diff(&message[4]),
                _ => {}
            }
        }
    }
}

const PRESENCE: &str = "[[channel]]\npattern = \"lobby:*\"\njoin = \"public\"\npresence = true\npresence_key = \"user_id\"\n";

#[test]
fn presence_spans_nodes_and_a_killed_node_leaves_within_its_timeout() {
    let redis = Redis::start();
    let (a, mut b) = two_nodes(&redis, PRESENCE);
    let mut ann_a = Member::join(&a, "lobby:1", "ann");
    ann_a.wait_for(&[("ann", 1)]);
    // The same user in a second tab on the other node, and another user.
    let mut ann_b = Member::join(&b, "lobby:1", "ann");
    let mut bob_b = Member::join(&b, "lobby:1", "bob");
    let full = [("ann", 2), ("bob", 1)];
    for member in [&mut ann_a, &mut ann_b, &mut bob_b] {
        member.wait_for(&full);
    }
    assert_eq!(ann_a.view, bob_b.view, "the same refs everywhere");
    // GET /api/presence answers the whole cluster from either node.
    for node in [&a, &b] {
        let (_, body) = node.get("/api/presence?topic=lobby:1");
        let state: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(state["ann"]["metas"].as_array().unwrap().len(), 2, "{body}");
        assert_eq!(state["bob"]["metas"].as_array().unwrap().len(), 1, "{body}");
    }

    // kill -9 B: its presences leave A within node_timeout_ms (1.5 s) + 1 s.
    let killed = Instant::now();
    b.kill9();
    ann_a.wait_for(&[("ann", 1)]);
    assert!(
        killed.elapsed() < Duration::from_millis(1500 + 1000 + 500),
        "took {:?}",
        killed.elapsed()
    );
    a.wait_cluster(1);

    // A node started afresh learns the whole state, and adds to it.
    let c = Node::start(&redis.url(), "c", 1, PRESENCE);
    c.wait_cluster(2);
    let mut cat_c = Member::join(&c, "lobby:1", "cat");
    cat_c.wait_for(&[("ann", 1), ("cat", 1)]);
    ann_a.wait_for(&[("ann", 1), ("cat", 1)]);
    assert_eq!(ann_a.view, cat_c.view);
}

#[test]
fn a_graceful_stop_leaves_at_once() {
    let redis = Redis::start();
    let (a, mut b) = two_nodes(&redis, PRESENCE);
    let mut ann_a = Member::join(&a, "lobby:2", "ann");
    let mut bob_b = Member::join(&b, "lobby:2", "bob");
    bob_b.wait_for(&[("ann", 1), ("bob", 1)]);
    ann_a.wait_for(&[("ann", 1), ("bob", 1)]);
    b.terminate();
    ann_a.wait_for(&[("ann", 1)]);
    a.wait_cluster(1);
}

#[test]
fn redis_down_keeps_local_delivery_and_redis_back_converges() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis, PRESENCE);
    let mut ann_a = Member::join(&a, "lobby:3", "ann");
    let mut bob_b = Member::join(&b, "lobby:3", "bob");
    ann_a.wait_for(&[("ann", 1), ("bob", 1)]);
    bob_b.wait_for(&[("ann", 1), ("bob", 1)]);
    let mut reader_a = a.connect();
    reader_a.join("room:r", "1");
    let mut reader_b = b.connect();
    reader_b.join("room:r", "1");
    wait_subscribers(&redis, "room:r", 2);

    redis.kill();
    wait_until("A sees Redis down", || {
        a.cluster_health()["redis"] == "down"
    });
    // Local delivery goes on, and joins and presence on the node work.
    // Nothing waits for Redis meanwhile: every cross-node copy is dropped
    // (and counted) at once, so memory cannot grow with the outage.
    let dropped_before = a.metric("cinder_cluster_messages_dropped_total");
    for n in 0..50 {
        a.post(
            "/api/broadcast",
            &format!(r#"{{"topic":"room:r","event":"n","payload":{{"n":{n}}}}}"#),
        );
    }
    for n in 0..50 {
        assert_eq!(
            reader_a.recv_text(),
            format!(r#"[null,null,"room:r","n",{{"n":{n}}}]"#)
        );
    }
    let mut cat_a = Member::join(&a, "lobby:3", "cat");
    cat_a.wait_for(&[("ann", 1), ("cat", 1)]);
    assert!(
        a.metric("cinder_cluster_messages_dropped_total") >= dropped_before + 50,
        "each of the 50 broadcasts was dropped, not queued"
    );
    // /healthz stays 200 while the node serves.
    assert_eq!(a.get("/healthz").0, 200);
    // Nothing reached B meanwhile.
    reader_b.sync("2");

    redis.restart();
    a.wait_cluster(2);
    b.wait_cluster(2);
    // Every node's presence view converges: no ghost, no missing member.
    let all = [("ann", 1), ("bob", 1), ("cat", 1)];
    for member in [&mut ann_a, &mut bob_b, &mut cat_a] {
        member.wait_for(&all);
    }
    assert_eq!(ann_a.view, bob_b.view);
    // Cross-node delivery again, once subscriptions are back.
    wait_subscribers(&redis, "room:r", 2);
    a.post(
        "/api/broadcast",
        r#"{"topic":"room:r","event":"back","payload":{}}"#,
    );
    assert_eq!(reader_b.recv_text(), r#"[null,null,"room:r","back",{}]"#);
    assert!(a.metric("cinder_cluster_redis_reconnects_total") >= 1);
}

#[test]
fn forced_disconnects_reach_every_node() {
    let redis = Redis::start();
    let auth = "[socket.auth]\nmode = \"jwt\"\nsecret = \"cluster-secret\"\n";
    let (a, b) = two_nodes(&redis, auth);
    let token = |sub: &str| {
        let claims = cinder::auth::Claims {
            sub: sub.into(),
            channels: None,
            exp: Some(cinder::auth::now_secs() + 600),
            nbf: None,
            iat: None,
        };
        cinder::auth::mint_hs256("cluster-secret", &claims)
    };
    let mut alice_b = Client::connect(&b.ws_url(&format!("&token={}", token("alice"))));
    let mut bob_b = Client::connect(&b.ws_url(&format!("&token={}", token("bob"))));
    alice_b.join("room:d", "1");
    bob_b.join("room:d", "1");
    let (status, body) = a.post("/api/disconnect", r#"{"user_id":"alice"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice_b.expect_close(), 1001);
    bob_b.sync("2");
    // Phoenix's form: a "disconnect" broadcast to the socket id.
    let (status, _) = a.post(
        "/api/broadcast",
        r#"{"topic":"user_socket:bob","event":"disconnect","payload":{}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(bob_b.expect_close(), 1001);
}

#[test]
fn malformed_bus_messages_are_counted_and_harm_nobody() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "");
    let mut on_b = b.connect();
    on_b.join("room:m", "1");
    wait_subscribers(&redis, "room:m", 1);
    for junk in [
        "hello",
        "\"\\x01\\x01\"",
        "\"\\x01\\x63\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x09\"",
    ] {
        redis.command(&format!("PUBLISH cinder:t:room:m {junk}"));
        redis.command(&format!("PUBLISH cinder:ctl {junk}"));
    }
    wait_until("malformed counted", || {
        b.metric("cinder_cluster_messages_malformed_total") >= 4
    });
    a.post(
        "/api/broadcast",
        r#"{"topic":"room:m","event":"ok","payload":{}}"#,
    );
    assert_eq!(on_b.recv_text(), r#"[null,null,"room:m","ok",{}]"#);
    assert_eq!(b.cluster_health()["redis"], json!("up"));
}

/// One long-poll request on a fresh connection; returns (status, JSON body).
fn longpoll(node: &Node, method: &str, query: &str, body: &str) -> (u16, Value) {
    let request = format!(
        "{method} /socket/longpoll?vsn=2.0.0{query} HTTP/1.1\r\nhost: t\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = common::http_exchange(node.addr, request.as_bytes());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls through `nodes` in turn until `count` messages came; returns them.
fn poll_messages(nodes: &[&Node], token: &str, count: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    let deadline = Instant::now() + CONVERGE;
    let mut turn = 0;
    while messages.len() < count {
        assert!(Instant::now() < deadline, "only {messages:?}");
        let (status, body) = longpoll(
            nodes[turn % nodes.len()],
            "GET",
            &format!("&token={token}"),
            "",
        );
        turn += 1;
        assert_eq!(status, 200, "{body}");
        for text in body["messages"].as_array().cloned().unwrap_or_default() {
            messages.push(serde_json::from_str(text.as_str().unwrap()).unwrap());
        }
    }
    messages
}

#[test]
fn a_long_poll_session_works_with_requests_alternating_between_nodes() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "");
    // The session opens on A; every later request alternates B, A, B…
    let (status, opened) = longpoll(&a, "GET", "", "");
    assert_eq!((status, opened["status"].clone()), (200, json!(410)));
    let token = opened["token"].as_str().unwrap().to_string();
    let (status, posted) = longpoll(
        &b,
        "POST",
        &format!("&token={token}"),
        r#"["1","1","room:lp","phx_join",{}]"#,
    );
    assert_eq!((status, posted), (200, json!({"status": 200})));
    let reply = poll_messages(&[&b, &a], &token, 1);
    assert_eq!(reply[0][3], "phx_reply");
    assert_eq!(reply[0][4]["status"], "ok");
    // A WebSocket client on B and the long-poll session (on A) chat.
    let mut on_b = b.connect();
    on_b.join("room:lp", "1");
    wait_subscribers(&redis, "room:lp", 2);
    for n in 0..5 {
        let line = format!(r#"["1","{}","room:lp","msg",{{"n":{n}}}]"#, n + 2);
        let (status, _) = longpoll([&a, &b][n % 2], "POST", &format!("&token={token}"), &line);
        assert_eq!(status, 200);
    }
    for n in 0..5 {
        assert_eq!(
            on_b.recv_text(),
            format!(r#"[null,null,"room:lp","msg",{{"n":{n}}}]"#)
        );
    }
    let got = poll_messages(&[&b, &a], &token, 10);
    let broadcasts: Vec<&Value> = got.iter().filter(|m| m[3] == "msg").collect();
    let numbers: Vec<u64> = broadcasts
        .iter()
        .map(|m| m[4]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4], "in order, once: {got:?}");
    assert!(
        b.metric("cinder_longpoll_forwarded_total") > 0,
        "B forwarded requests"
    );
}

#[test]
fn a_long_poll_request_for_a_dead_nodes_session_opens_a_new_one() {
    let redis = Redis::start();
    let (mut a, b) = two_nodes(&redis, "");
    let (_, opened) = longpoll(&a, "GET", "", "");
    let token = opened["token"].as_str().unwrap().to_string();
    a.kill9();
    b.wait_cluster(1);
    let started = Instant::now();
    let (status, answer) = longpoll(&b, "GET", &format!("&token={token}"), "");
    assert_eq!(
        (status, answer["status"].clone()),
        (200, json!(410)),
        "{answer}"
    );
    assert_ne!(answer["token"], json!(token), "a new session, on B");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    // A POST of the dead session is told the session is gone, as Phoenix does.
    let (status, posted) = longpoll(&b, "POST", &format!("&token={token}"), "[]");
    assert_eq!((status, posted), (200, json!({"status": 410})));
}

#[test]
fn sharded_pub_sub_over_a_redis_cluster() {
    let redis = common::cluster::RedisCluster::start();
    let a = Node::start_with(&redis.url(), "a", 1, "sharded = true", PRESENCE);
    let b = Node::start_with(&redis.url(), "b", 1, "sharded = true", PRESENCE);
    a.wait_cluster(2);
    b.wait_cluster(2);
    // Topics hash to different Redis shards; each still crosses nodes, in order.
    let topics = ["room:s1", "room:s2", "room:s3", "room:s4"];
    let mut readers: Vec<Client> = topics
        .iter()
        .map(|topic| {
            let mut reader = b.connect();
            reader.join(topic, "1");
            reader
        })
        .collect();
    let mut probe = 0;
    for (topic, reader) in topics.iter().zip(readers.iter_mut()) {
        // Subscriptions go out asynchronously: probe until one arrives.
        wait_until(&format!("{topic} crosses nodes"), || {
            probe += 1;
            a.post(
                "/api/broadcast",
                &format!(r#"{{"topic":"{topic}","event":"probe","payload":{{}}}}"#),
            );
            reader
                .ws
                .get_mut()
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            matches!(reader.ws.read(), Ok(tungstenite::Message::Text(_)))
        });
        reader
            .ws
            .get_mut()
            .set_read_timeout(Some(common::WAIT))
            .unwrap();
        reader.sync("2"); // any probe still on its way arrives before the reply
    }
    for n in 0..50 {
        for topic in topics {
            a.post(
                "/api/broadcast",
                &format!(r#"{{"topic":"{topic}","event":"n","payload":{{"n":{n}}}}}"#),
            );
        }
    }
    for (topic, reader) in topics.iter().zip(readers.iter_mut()) {
        let mut n = 0;
        while n < 50 {
            let message: Value = reader.recv_json();
            if message[3] == "probe" {
                continue;
            }
            assert_eq!(message, json!([null, null, topic, "n", {"n": n}]));
            n += 1;
        }
    }
    // Presence crosses too.
    let mut ann = Member::join(&a, "lobby:s", "ann");
    let mut bob = Member::join(&b, "lobby:s", "bob");
    ann.wait_for(&[("ann", 1), ("bob", 1)]);
    bob.wait_for(&[("ann", 1), ("bob", 1)]);
}

/// A join's `ok` waits until the node listens to the topic's channel, so a
/// broadcast published on another node right after the reply arrives.
#[test]
fn after_its_join_reply_a_client_gets_broadcasts_from_every_node() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, "");
    let mut on_b = b.connect();
    for n in 0..30 {
        let topic = format!("room:fresh-{n}");
        on_b.join(&topic, &(n + 1).to_string());
        let (status, _) = a.post(
            "/api/broadcast",
            &format!(r#"{{"topic":"{topic}","event":"first","payload":{{}}}}"#),
        );
        assert_eq!(status, 200);
        assert_eq!(
            on_b.recv_text(),
            format!(r#"[null,null,"{topic}","first",{{}}]"#)
        );
    }
}

/// The backend answers every event hook with a broadcast of its own.
fn rebroadcast(path: &str, _: &Value) -> (u16, String, Duration) {
    match path {
        "/hooks/event" => (
            200,
            r#"{"reply":{},"broadcast":{"event":"from_backend","payload":{"ok":true}}}"#.into(),
            Duration::ZERO,
        ),
        _ => (200, r#"{"response":{}}"#.into(), Duration::ZERO),
    }
}

#[test]
fn a_backend_hook_broadcast_reaches_every_node() {
    let redis = Redis::start();
    let (url, _calls) = common::backend::backend(rebroadcast);
    let hooked = format!(
        "[webhook]\nurl = \"{url}\"\n\n[[channel]]\npattern = \"hook:*\"\njoin = \"webhook\"\nclient_events = \"webhook\"\n"
    );
    let (a, b) = two_nodes(&redis, &hooked);
    let mut on_a = a.connect();
    let mut on_b = b.connect();
    on_a.join("hook:x", "1");
    on_b.join("hook:x", "1");
    on_a.send(r#"["1","2","hook:x","ask",{}]"#);
    let expected = r#"[null,null,"hook:x","from_backend",{"ok":true}]"#;
    assert_eq!(on_b.recv_text(), expected);
    let mut sender_got = [on_a.recv_text(), on_a.recv_text()];
    sender_got.sort();
    assert_eq!(sender_got[1], expected);
}
