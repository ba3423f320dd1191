//! Lifecycle events across two nodes and a private `redis-server`: a topic
//! is occupied and vacated for the whole cluster, a presence key added and
//! removed for the whole cluster — each once, by one node — and a node
//! killed with `kill -9` vacates what only it held after the node timeout.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::backend::{backend, backend_on};
use common::cluster::{free_port, Node, Redis, CONVERGE};
use common::events::{events_within, join_as, kinds, ok, quiet_for, shape};
use serde_json::Value;

/// The webhook and a presence route with lifecycle, for every node.
fn extra(url: &str) -> String {
    format!(
        "[webhook]\nurl = \"{url}\"\nevents_batch_ms = 20\n\
         [[channel]]\npattern = \"party:*\"\njoin = \"public\"\nlifecycle = true\n\
         presence = true\npresence_key = \"name\"\n"
    )
}

fn two_nodes(redis: &Redis, url: &str) -> (Node, Node) {
    let a = Node::start(&redis.url(), "node-a", 2, &extra(url));
    let b = Node::start(&redis.url(), "node-b", 2, &extra(url));
    a.wait_cluster(2);
    b.wait_cluster(2);
    (a, b)
}

/// Enough for a change to go through a node's bus, Redis and the
/// delivery thread, and for a duplicate from the other node to show.
const SETTLE: Duration = Duration::from_millis(800);

#[test]
fn topics_and_members_change_once_for_the_whole_cluster() {
    let redis = Redis::start();
    let (url, calls) = backend(ok);
    let (a, b) = two_nodes(&redis, &url);
    let events = |count| events_within(&calls, count, CONVERGE);

    let mut alice_on_a = a.connect();
    join_as(&mut alice_on_a, "party:1", "alice", "1");
    assert_eq!(
        kinds(&events(2)),
        ["channel_occupied party:1", "member_added alice"]
    );
    // Her second tab, on the other node; bob there too.
    let mut alice_on_b = b.connect();
    join_as(&mut alice_on_b, "party:1", "alice", "1");
    let mut bob_on_b = b.connect();
    join_as(&mut bob_on_b, "party:1", "bob", "1");
    let bob = events(1);
    assert_eq!(kinds(&bob), ["member_added bob"]);
    assert_eq!(bob[0]["meta"]["tab"], "1");
    quiet_for(&calls, SETTLE);

    // Node A loses its only subscriber: the topic is still held on B.
    drop(alice_on_a);
    assert_eq!(kinds(&events(2)), ["disconnect ", "leave party:1"]);
    quiet_for(&calls, SETTLE);
    // Alice's last tab goes.
    drop(alice_on_b);
    assert_eq!(
        kinds(&events(3)),
        ["disconnect ", "leave party:1", "member_removed alice"]
    );
    // Bob leaves: the last subscriber anywhere.
    bob_on_b.send(r#"["1","2","party:1","phx_leave",{}]"#);
    let last = events(3);
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
    quiet_for(&calls, SETTLE);
    drop((a, b));
}

#[test]
fn a_killed_node_vacates_what_only_it_held_and_a_stopped_one_what_it_held() {
    let redis = Redis::start();
    let (url, calls) = backend(ok);
    let (mut a, mut b) = two_nodes(&redis, &url);
    let events = |count| events_within(&calls, count, CONVERGE);

    let mut carol_on_a = a.connect();
    join_as(&mut carol_on_a, "party:solo", "carol", "1");
    let mut erin_on_a = a.connect();
    join_as(&mut erin_on_a, "party:shared", "erin", "1");
    let mut dave_on_b = b.connect();
    join_as(&mut dave_on_b, "party:shared", "dave", "1");
    assert_eq!(
        kinds(&events(5)),
        [
            "channel_occupied party:shared",
            "channel_occupied party:solo",
            "member_added carol",
            "member_added dave",
            "member_added erin",
        ]
    );
    quiet_for(&calls, SETTLE);

    // No goodbye from A: after the node timeout, B (the only live node)
    // releases what A held. party:shared is still B's.
    a.kill9();
    let down = events(3);
    assert_eq!(
        kinds(&down),
        [
            "channel_vacated party:solo",
            "member_removed carol",
            "member_removed erin"
        ]
    );
    assert!(down.iter().all(|e| e["reason"] == "node_down"), "{down:?}");
    quiet_for(&calls, SETTLE);

    // B stops gracefully: its client's leave and disconnect, and what it
    // held, all with reason shutdown.
    b.terminate();
    let stopped = events(4);
    assert_eq!(
        kinds(&stopped),
        [
            "channel_vacated party:shared",
            "disconnect ",
            "leave party:shared",
            "member_removed dave"
        ]
    );
    assert!(
        stopped.iter().all(|e| e["reason"] == "shutdown"),
        "{stopped:?}"
    );
    drop((carol_on_a, erin_on_a, dave_on_b));
}

#[test]
fn a_backend_down_for_a_while_gets_every_nodes_events_each_id_once() {
    let redis = Redis::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let (a, b) = two_nodes(&redis, &url);
    let mut clients = Vec::new();
    for (n, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut client = node.connect();
        join_as(&mut client, &format!("party:{n}"), &format!("user{n}"), "1");
        clients.push(client);
    }
    // Two more tabs of user0, on the other node: no event of their own.
    let mut again = b.connect();
    join_as(&mut again, "party:0", "user0", "1");
    std::thread::sleep(SETTLE);
    assert!(
        a.metric("cinder_events_retried_total") > 0,
        "retrying while down"
    );
    // The backend comes up: every event, from both nodes.
    let (_url, calls) = backend_on(port, ok);
    let got = events_within(&calls, 8, CONVERGE);
    let expected: Vec<String> = (0..4)
        .flat_map(|n| {
            [
                format!("channel_occupied party:{n}"),
                format!("member_added user{n}"),
            ]
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(kinds(&got), expected);
    let ids: HashSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 8, "every event has its own id");
    quiet_for(&calls, SETTLE);
    for event in &got {
        let shape: Value = shape(event);
        assert!(shape.get("reason").is_none(), "{shape}");
    }
    assert_eq!(a.metric("cinder_events_dropped_total"), 0);
    assert_eq!(b.metric("cinder_events_dropped_total"), 0);
    drop((clients, again));
}

#[test]
fn what_ends_while_redis_is_away_and_loses_its_data_is_reported_once_it_is_back() {
    let mut redis = Redis::start();
    let (url, calls) = backend(ok);
    let (a, b) = two_nodes(&redis, &url);
    let events = |count| events_within(&calls, count, CONVERGE);
    let mut alice_on_a = a.connect();
    join_as(&mut alice_on_a, "party:r1", "alice", "1");
    let mut bob_on_a = a.connect();
    join_as(&mut bob_on_a, "party:r2", "bob", "1");
    let mut carol_on_b = b.connect();
    join_as(&mut carol_on_b, "party:r2", "carol", "1");
    assert_eq!(
        kinds(&events(5)),
        [
            "channel_occupied party:r1",
            "channel_occupied party:r2",
            "member_added alice",
            "member_added bob",
            "member_added carol"
        ]
    );
    quiet_for(&calls, SETTLE);

    redis.kill();
    for node in [&a, &b] {
        common::cluster::wait_until("Redis is down for the node", || {
            node.cluster_health()["redis"] == "down"
        });
    }
    // Alice and bob close while no node can record it.
    drop(alice_on_a);
    drop(bob_on_a);
    assert_eq!(
        kinds(&events(4)),
        [
            "disconnect ",
            "disconnect ",
            "leave party:r1",
            "leave party:r2"
        ]
    );
    // Redis comes back empty. Party r2 is still carol's (B's): only what
    // nobody holds any more is let go, once, and nothing is occupied again.
    redis.restart();
    let back = events(3);
    assert_eq!(
        kinds(&back),
        [
            "channel_vacated party:r1",
            "member_removed alice",
            "member_removed bob"
        ]
    );
    quiet_for(&calls, SETTLE * 2);
    drop((a, b, carol_on_b));
}
