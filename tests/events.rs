//! Lifecycle events against a real HTTP backend started by the test: every
//! way a channel or a connection ends produces its `leave` and
//! `disconnect`, with the right fields, in order, each id once.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cinder::auth::{mint_hs256, now_secs, Claims};
use common::backend::{backend, backend_on};
use common::events::{events, join_as, kinds, ok, quiet, shape};
use common::{Client, TestServer, WAIT};
use serde_json::{json, Value};

/// A server whose backend asks for `leave` and `disconnect` only.
fn server(url: &str, extra: &str) -> TestServer {
    TestServer::start(&format!(
        "[webhook]\nurl = \"{url}\"\nsecret = \"s3cret-for-events\"\nevents_batch_ms = 20\n\
         events = [\"leave\", \"disconnect\"]\n{extra}\n\
         [[channel]]\npattern = \"game:*\"\njoin = \"public\"\nlifecycle = true\n"
    ))
}

/// A server sending every kind of event (the default), with a presence
/// route keyed by the join payload's `name`.
fn server_all_events(url: &str) -> TestServer {
    TestServer::start(&format!(
        "[webhook]\nurl = \"{url}\"\nevents_batch_ms = 20\n\
         [[channel]]\npattern = \"party:*\"\njoin = \"public\"\nlifecycle = true\n\
         presence = true\npresence_key = \"name\"\n"
    ))
}

/// A process-wide counter (no shard label) from `/metrics`.
fn counter(server: &TestServer, name: &str) -> u64 {
    let (_, body) = server.http("GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn join(client: &mut Client, topic: &str, r: &str) {
    client.join(topic, r);
}

#[test]
fn leave_replace_and_close_each_tell_the_backend_once() {
    let (url, calls) = backend(ok);
    let server = server(&url, "");
    let mut client = server.connect();
    join(&mut client, "game:1", "1");
    join(&mut client, "room:plain", "2"); // no lifecycle on this route
    client.send(r#"["1","3","game:1","phx_leave",{}]"#);
    client.recv_json();
    client.recv_json();
    let left = events(&calls, 1);
    assert_eq!(
        shape(&left[0]),
        json!({"type":"leave","topic":"game:1","join_ref":"1","reason":"leave"})
    );
    join(&mut client, "game:1", "4");
    client.send(r#"["5","5","game:1","phx_join",{}]"#); // replaces instance 4
    client.recv_json();
    client.recv_json();
    let replaced = events(&calls, 1);
    assert_eq!(shape(&replaced[0])["join_ref"], "4");
    assert_eq!(shape(&replaced[0])["reason"], "leave");
    drop(client);
    let closed = events(&calls, 2);
    assert_eq!(
        shape(&closed[0]),
        json!({"type":"leave","topic":"game:1","join_ref":"5","reason":"closed"})
    );
    assert_eq!(
        shape(&closed[1]),
        json!({"type":"disconnect","reason":"closed"})
    );
    let ids: HashSet<String> = left
        .iter()
        .chain(&replaced)
        .chain(&closed)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    // Counted once the backend's answer is read, just after it got the call.
    common::cluster::wait_until("4 events counted as delivered", || {
        counter(&server, "cinder_events_delivered_total") >= 4
    });
}

fn token(sub: &str) -> String {
    let claims = Claims {
        sub: sub.into(),
        channels: None,
        exp: Some(now_secs() + 600),
        nbf: None,
        iat: None,
    };
    mint_hs256("dev-secret", &claims)
}

#[test]
fn forced_disconnect_idle_timeout_and_shutdown_say_why() {
    let (url, calls) = backend(ok);
    let server = server(
        &url,
        "[socket]\nidle_timeout_ms = 1000\n[socket.auth]\nmode = \"jwt\"\nsecret = \"dev-secret\"\n",
    );
    let connect = |user: &str| {
        Client::connect(&format!(
            "{}&token={}",
            server.ws_url(Some("2.0.0")),
            token(user)
        ))
    };
    let mut forced = connect("alice");
    join(&mut forced, "game:f", "1");
    let (status, _) = server.http(
        "POST /api/disconnect HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         content-length: 19\r\nconnection: close\r\n\r\n{\"user_id\":\"alice\"}",
    );
    assert_eq!(status, 200);
    let got = events(&calls, 2);
    assert_eq!(
        shape(&got[0]),
        json!({"type":"leave","topic":"game:f","join_ref":"1","reason":"forced_disconnect",
               "user_id":"alice","socket_id":"user_socket:alice"})
    );
    assert_eq!(
        shape(&got[1]),
        json!({"type":"disconnect","reason":"forced_disconnect","user_id":"alice","socket_id":"user_socket:alice"})
    );
    // Bob says nothing for a second: closed by the idle timeout. Carol
    // keeps talking and stays.
    let mut idle = connect("bob");
    join(&mut idle, "game:i", "1");
    let mut talking = connect("carol");
    join(&mut talking, "game:t", "1");
    let deadline = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < deadline {
        talking.sync("hb");
        std::thread::sleep(Duration::from_millis(200));
    }
    let timed_out = events(&calls, 2);
    assert_eq!(shape(&timed_out[0])["reason"], "timeout");
    assert_eq!(shape(&timed_out[0])["user_id"], "bob");
    assert_eq!(shape(&timed_out[1])["type"], "disconnect");
    assert_eq!(shape(&timed_out[1])["reason"], "timeout");
    // Shutdown: the last events are delivered before the server is gone.
    server.stop();
    let shutdown = events(&calls, 2);
    assert_eq!(shape(&shutdown[0])["reason"], "shutdown");
    assert_eq!(shape(&shutdown[0])["user_id"], "carol");
    assert_eq!(shape(&shutdown[1])["reason"], "shutdown");
    drop((idle, talking));
}

#[test]
fn a_backend_that_is_down_for_a_while_gets_every_event_later() {
    // A port nobody listens on yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let server = server(&format!("http://127.0.0.1:{port}/hooks"), "");
    for n in 0..5 {
        let mut client = server.connect();
        join(&mut client, &format!("game:{n}"), "1");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        counter(&server, "cinder_events_retried_total") > 0,
        "retrying while down"
    );
    let (_url, calls) = backend_on(port, ok);
    let got = events(&calls, 10);
    let topics: HashSet<&str> = got.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert_eq!(topics.len(), 5);
    assert_eq!(counter(&server, "cinder_events_dropped_total"), 0);
}

#[test]
fn a_slow_consumer_and_an_expired_long_poll_session_say_why() {
    let (url, calls) = backend(ok);
    let server = server(
        &url,
        "[socket]\nsend_buffer_limit = 65536\nslow_consumer_timeout_ms = 500\n\
         [socket.longpoll]\nwindow_ms = 200\n",
    );
    // A long-poll session joins a lifecycle topic, then nobody polls it.
    let lp = "/socket/longpoll?vsn=2.0.0";
    let (_, opened) = server.http(&format!(
        "GET {lp} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    ));
    let token = serde_json::from_str::<Value>(&opened).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let join = r#"["1","1","game:lp","phx_join",{}]"#;
    let (status, _) = server.http(&format!(
        "POST {lp}&token={token} HTTP/1.1\r\nhost: t\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{join}",
        join.len()
    ));
    assert_eq!(status, 200);
    let expired = events(&calls, 2);
    assert_eq!(
        shape(&expired[0]),
        json!({"type":"leave","topic":"game:lp","join_ref":"1","reason":"timeout"})
    );
    assert_eq!(
        shape(&expired[1]),
        json!({"type":"disconnect","reason":"timeout"})
    );

    // A WebSocket subscriber that never reads while broadcasts pile up.
    let mut stuck = common::RawSocket::connect(server.addr);
    stuck.send_frame(0x81, br#"["1","1","game:flood","phx_join",{}]"#, true);
    std::thread::sleep(Duration::from_millis(100));
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let batch: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"topic":"game:flood","event":"m{i}","payload":{payload}}}"#))
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, batch.join(","));
    let deadline = Instant::now() + WAIT;
    while server.metric("cinder_slow_consumer_closes_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stuck client was never closed"
        );
        assert_eq!(server.publish(&body).0, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    let slow = events(&calls, 2);
    assert_eq!(shape(&slow[0])["reason"], "slow_consumer");
    assert_eq!(shape(&slow[0])["topic"], "game:flood");
    assert_eq!(
        shape(&slow[1]),
        json!({"type":"disconnect","reason":"slow_consumer"})
    );
    drop(stuck);
}

#[test]
fn a_topic_is_occupied_and_vacated_once_and_two_tabs_are_one_member() {
    let (url, calls) = backend(ok);
    let server = server_all_events(&url);
    // Four tabs, spread over the two shards by the kernel: alice's two,
    // then bob's two.
    let mut alice_1 = server.connect();
    let mut alice_2 = server.connect();
    let mut bob_1 = server.connect();
    let mut bob_2 = server.connect();
    join_as(&mut alice_1, "party:1", "alice", "1");
    assert_eq!(
        kinds(&events(&calls, 2)),
        ["channel_occupied party:1", "member_added alice"]
    );
    join_as(&mut alice_2, "party:1", "alice", "1");
    join_as(&mut bob_1, "party:1", "bob", "1");
    let bob = events(&calls, 1);
    assert_eq!(kinds(&bob), ["member_added bob"]);
    assert_eq!(bob[0]["meta"]["tab"], "1", "{bob:?}");
    assert!(bob[0]["meta"]["phx_ref"].is_string(), "{bob:?}");
    join_as(&mut bob_2, "party:1", "bob", "1");
    quiet(&calls);
    // Alice closes one tab: its leave and disconnect, nothing else.
    drop(alice_1);
    assert_eq!(kinds(&events(&calls, 2)), ["disconnect ", "leave party:1"]);
    // And the other: now she is gone.
    drop(alice_2);
    assert_eq!(
        kinds(&events(&calls, 3)),
        ["disconnect ", "leave party:1", "member_removed alice"]
    );
    drop(bob_1);
    assert_eq!(kinds(&events(&calls, 2)), ["disconnect ", "leave party:1"]);
    // Bob's last tab leaves the channel: he is removed, the topic vacated.
    bob_2.send(r#"["1","2","party:1","phx_leave",{}]"#);
    let last = events(&calls, 3);
    // In the order they happened: the leave, then its member, then the topic.
    let order: Vec<&str> = last.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(order, ["leave", "member_removed", "channel_vacated"]);
    assert_eq!(
        kinds(&last),
        [
            "channel_vacated party:1",
            "leave party:1",
            "member_removed bob"
        ]
    );
    quiet(&calls);
    // Occupied again by a newcomer, and vacated at shutdown, with its
    // reason.
    join_as(&mut bob_2, "party:1", "bob", "3");
    assert_eq!(
        kinds(&events(&calls, 2)),
        ["channel_occupied party:1", "member_added bob"]
    );
    server.stop();
    let shutdown = events(&calls, 4);
    assert_eq!(
        kinds(&shutdown),
        [
            "channel_vacated party:1",
            "disconnect ",
            "leave party:1",
            "member_removed bob"
        ]
    );
    assert!(
        shutdown.iter().all(|e| e["reason"] == "shutdown"),
        "{shutdown:?}"
    );
    drop(bob_2);
}
