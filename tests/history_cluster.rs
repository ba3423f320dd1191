//! Topic history across nodes, with a `redis-server` of the test's own:
//! a client recovers on another node than the one it lost; a broadcast
//! lost on the way (pub/sub dropped it, the stream has it) is filled in
//! before later ones; one the stream lost too ends the topic's channels
//! with `phx_error`; a stream Redis lost is a new epoch; the API reads the
//! stream on any node; a Redis Cluster keeps history with sharded pub/sub.

mod common;

use common::cluster::{wait_until, Node, Redis, RedisCluster};
use common::Client;
use serde_json::{json, Value};

const HISTORY: &str = r#"
[[channel]]
pattern = "hist:*"
join = "public"
client_events = "broadcast"
history = 50
"#;

fn two_nodes(redis: &str) -> (Node, Node) {
    let a = Node::start(redis, "a", 2, HISTORY);
    let b = Node::start(redis, "b", 2, HISTORY);
    a.wait_cluster(2);
    b.wait_cluster(2);
    (a, b)
}

fn join_with(client: &mut Client, topic: &str, r: &str, payload: &str) -> Value {
    client.send(&format!(r#"["{r}","{r}","{topic}","phx_join",{payload}]"#));
    let reply = client.recv_json();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    reply[4]["response"].clone()
}

fn publish(node: &Node, topic: &str, n: u64) {
    let (status, body) = node.post(
        "/api/broadcast",
        &json!({"topic": topic, "event": "n", "payload": {"n": n}}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
}

/// The next broadcast: (position, n).
fn next(client: &mut Client) -> (String, u64) {
    let frame = client.recv_json();
    assert_eq!(frame[3], "n", "{frame}");
    (
        frame[1].as_str().unwrap().to_string(),
        frame[4]["n"].as_u64().unwrap(),
    )
}

#[test]
fn a_client_recovers_on_another_node() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis.url());
    let mut on_a = a.connect();
    let start = join_with(&mut on_a, "hist:x", "1", "{}");
    assert!(
        start["position"].as_str().unwrap().ends_with(":0"),
        "{start}"
    );
    // Published on B, delivered on A with Redis's positions.
    for n in 0..3 {
        publish(&b, "hist:x", n);
    }
    let seen: Vec<(String, u64)> = (0..3).map(|_| next(&mut on_a)).collect();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let epoch = start["position"]
        .as_str()
        .unwrap()
        .trim_end_matches(":0")
        .to_string();
    assert_eq!(
        seen[2].0,
        format!("{epoch}:3"),
        "the epoch given at join is the stream's"
    );
    drop(on_a);
    for n in 3..6 {
        publish(&a, "hist:x", n);
    }
    let mut on_b = b.connect();
    let response = join_with(
        &mut on_b,
        "hist:x",
        "1",
        &format!(r#"{{"since":"{}"}}"#, seen[2].0),
    );
    assert_eq!(response["recovered"], true, "{response}");
    assert_eq!(response["position"], format!("{epoch}:6"));
    for n in 3..6 {
        assert_eq!(next(&mut on_b), (format!("{epoch}:{}", n + 1), n));
    }
    publish(&a, "hist:x", 6);
    assert_eq!(next(&mut on_b).1, 6);
    on_b.sync("s");
    // The API reads the same history on either node.
    for node in [&a, &b] {
        let (status, body) = node.get("/api/history?topic=hist:x&limit=2");
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["messages"][1]["payload"]["n"], 1);
        assert_eq!(page["position"], format!("{epoch}:7"));
    }
}

/// Appends a broadcast to `topic`'s stream as the publish script does,
/// without publishing it: a message pub/sub lost on its way.
fn append_silently(redis: &Redis, topic: &str, n: u64) {
    use cinder::fanout::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
    use cinder::protocol::message::Payload;
    let content = Content::new(
        topic.into(),
        "n".into(),
        Payload::Json(format!(r#"{{"n":{n}}}"#).into_bytes()),
    )
    .unwrap();
    let origin = Origin {
        node: NodeId(7),
        shard: 0,
        sender: None,
    };
    let broadcast = Broadcast::new(content, BroadcastId(n), origin, now_ms());
    let (head, tail) = cinder::cluster::envelope::history_parts(&broadcast, NodeId(7));
    let script = cinder::cluster::history::PUBLISH_SCRIPT;
    let silent = format!(
        "{}return offset",
        script.split("if ARGV[8]").next().unwrap()
    );
    let reply = redis.command_args(&[
        b"EVAL",
        silent.as_bytes(),
        b"2",
        format!("cinder:h:{topic}").as_bytes(),
        format!("cinder:s:{topic}").as_bytes(),
        b"zunused",
        b"50",
        b"300000",
        b"86700000",
        format!("cinder:t:{topic}").as_bytes(),
        &head,
        &tail,
        b"0",
    ]);
    assert!(reply.starts_with(':'), "{reply}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_broadcast_lost_on_the_bus_is_filled_in_from_the_stream() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis.url());
    let mut on_b = b.connect();
    join_with(&mut on_b, "hist:gap", "1", "{}");
    publish(&a, "hist:gap", 0);
    assert_eq!(next(&mut on_b).1, 0);
    append_silently(&redis, "hist:gap", 1);
    publish(&a, "hist:gap", 2);
    // Offset 3 arrived after 1; B read 2 back from the stream first.
    assert_eq!(next(&mut on_b).1, 1);
    assert_eq!(next(&mut on_b).1, 2);
    on_b.sync("s");
    assert!(b.metric("cinder_history_gaps_filled_total") >= 1);
    assert_eq!(b.metric("cinder_history_gaps_lost_total"), 0);
}

#[test]
fn a_broadcast_the_stream_lost_too_makes_the_clients_rejoin() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis.url());
    let mut on_b = b.connect();
    join_with(&mut on_b, "hist:lost", "1", "{}");
    publish(&a, "hist:lost", 0);
    let (position, _) = next(&mut on_b);
    append_silently(&redis, "hist:lost", 1);
    let epoch = position.split(':').next().unwrap();
    let deleted = redis.command("XDEL cinder:s:hist:lost 0-2");
    assert!(deleted.starts_with(":1"), "{deleted} ({epoch})");
    publish(&a, "hist:lost", 2);
    // Phoenix's crashed channel: phx_error with the join's ref.
    let error = on_b.recv_json();
    assert_eq!(
        error,
        json!(["1", "1", "hist:lost", "phx_error", {}]),
        "{error}"
    );
    assert!(b.metric("cinder_history_gaps_lost_total") >= 1);
    // The rejoin says the truth: broadcasts after its position are gone.
    let response = join_with(
        &mut on_b,
        "hist:lost",
        "2",
        &format!(r#"{{"since":"{position}"}}"#),
    );
    assert_eq!(response["recovered"], false, "{response}");
}

#[test]
fn a_stream_redis_lost_is_a_new_epoch() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis.url());
    let mut on_b = b.connect();
    join_with(&mut on_b, "hist:e", "1", "{}");
    publish(&a, "hist:e", 0);
    let (position, _) = next(&mut on_b);
    drop(on_b);
    redis.command("DEL cinder:h:hist:e cinder:s:hist:e");
    publish(&a, "hist:e", 1);
    let mut again = a.connect();
    let response = join_with(
        &mut again,
        "hist:e",
        "1",
        &format!(r#"{{"since":"{position}"}}"#),
    );
    assert_eq!(response["recovered"], false, "{response}");
    let new_epoch = response["position"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_epoch, position.split(':').next().unwrap());
}

#[test]
fn history_topics_refuse_api_publishes_while_redis_is_down() {
    let mut redis = Redis::start();
    let node = Node::start(&redis.url(), "solo", 2, HISTORY);
    node.wait_cluster(1);
    redis.kill();
    wait_until("the node sees Redis down", || {
        node.cluster_health()["redis"] == "down"
    });
    let (status, body) = node.post(
        "/api/broadcast",
        r#"{"topic":"hist:down","event":"n","payload":{}}"#,
    );
    assert_eq!(status, 503, "{body}");
    let (status, _) = node.post(
        "/api/broadcast",
        r#"{"topic":"room:1","event":"n","payload":{}}"#,
    );
    assert_eq!(status, 200, "plain topics are served locally meanwhile");
    let (status, _) = node.get("/api/history?topic=hist:down");
    assert_eq!(status, 503);
    let mut client = node.connect();
    let response = join_with(&mut client, "hist:down", "1", r#"{"since":"abc:1"}"#);
    assert_eq!(response["recovered"], false, "{response}");
}

#[test]
fn a_redis_cluster_keeps_history_with_sharded_pub_sub() {
    let cluster = RedisCluster::start();
    let keys = "sharded = true";
    let a = Node::start_with(&cluster.url(), "a", 2, keys, HISTORY);
    let b = Node::start_with(&cluster.url(), "b", 2, keys, HISTORY);
    a.wait_cluster(2);
    b.wait_cluster(2);
    let mut on_a = a.connect();
    join_with(&mut on_a, "hist:c1", "1", "{}");
    join_with(&mut on_a, "hist:c2", "2", "{}");
    for n in 0..4 {
        publish(&b, if n % 2 == 0 { "hist:c1" } else { "hist:c2" }, n);
    }
    let seen: Vec<(String, u64)> = (0..4).map(|_| next(&mut on_a)).collect();
    let mut ns: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    ns.sort();
    assert_eq!(ns, vec![0, 1, 2, 3]);
    let first_c1 = seen.iter().find(|(_, n)| *n == 0).unwrap().0.clone();
    drop(on_a);
    let mut on_b = b.connect();
    let response = join_with(
        &mut on_b,
        "hist:c1",
        "1",
        &format!(r#"{{"since":"{first_c1}"}}"#),
    );
    assert_eq!(response["recovered"], true, "{response}");
    assert_eq!(next(&mut on_b).1, 2);
}
