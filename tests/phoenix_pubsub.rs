//! The Phoenix PubSub bridge against a private `redis-server`: the real
//! messages of a Phoenix app (`tests/fixtures/phoenix-pubsub-redis/`)
//! published on the app's channel reach Cinder's clients exactly as the
//! fixtures' README says — and nothing else does; Cinder's broadcasts are
//! published there as terms that Erlang/OTP itself reads back as a Phoenix
//! node's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cinder::phoenix_pubsub::encode::{encode, CompressionLevel};
use cinder::protocol::message::Payload;
use common::cluster::{wait_until, Redis};
use common::{Client, TestServer};
use serde_json::{json, Value};
use tungstenite::Message;

const CHANNEL: &str = "phx:Elixir.Peer.PubSub.Adapter";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/phoenix-pubsub-redis")
        .join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A broadcast of `event` to room:lobby from app node `phoenix_app_1`.
fn marker(event: &str) -> Vec<u8> {
    let payload = Payload::Json(b"{}".to_vec());
    encode(
        "phoenix_app_1",
        "room:lobby",
        event,
        &payload,
        CompressionLevel::NONE,
    )
    .unwrap()
}

fn server(redis: &Redis, extra: &str) -> TestServer {
    let server = TestServer::start(&format!(
        "[phoenix_pubsub]\nredis = \"{}\"\nname = \"Peer.PubSub\"\nnode_name = \"cinder-1\"\n{extra}\n",
        redis.url()
    ));
    wait_until("the bridge subscribed", || {
        bridge_health(&server)["redis"] == "up"
    });
    server
}

fn bridge_health(server: &TestServer) -> Value {
    let (status, body) =
        server.http("GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["phoenix_pubsub"].clone()
}

fn metric(server: &TestServer, line: &str) -> u64 {
    let (_, body) = server.http("GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{line} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
}

/// PUBLISHes `bytes` on the app's channel, as an app node would.
fn publish(redis: &Redis, bytes: &[u8]) {
    let reply = redis.command_args(&[b"PUBLISH", CHANNEL.as_bytes(), bytes]);
    assert!(reply.starts_with(':'), "PUBLISH answered {reply}");
}

/// The next message a client gets (text as JSON; binary as its bytes).
enum Got {
    Text(Value),
    Binary(Vec<u8>),
}

fn next(client: &mut Client) -> Got {
    match client.recv() {
        Message::Text(text) => Got::Text(serde_json::from_str(&text).unwrap()),
        Message::Binary(bytes) => Got::Binary(bytes.to_vec()),
        other => panic!("unexpected {other:?}"),
    }
}

/// The V2 binary broadcast frame of `topic`/`event` with `bytes`.
fn binary_frame(topic: &str, event: &str, bytes: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, topic.len() as u8, event.len() as u8];
    frame.extend_from_slice(topic.as_bytes());
    frame.extend_from_slice(event.as_bytes());
    frame.extend_from_slice(bytes);
    frame
}

#[test]
fn an_apps_messages_reach_clients_as_phoenix_would_send_them_and_nothing_else_does() {
    let redis = Redis::start();
    let server = server(&redis, "");
    let mut v2 = server.connect();
    v2.join("room:lobby", "1");
    let mut v1 = server.connect_v1();
    v1.send(r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#);
    v1.recv_json();

    let all = [
        "captured/http-broadcast",
        "captured/tracker-heartbeat-1",
        "captured/channel-broadcast",
        "captured/broadcast-from",
        "captured/binary-broadcast",
        "captured/tracker-heartbeat-2",
        "generated/atom-keys",
        "generated/json-values",
        "generated/compressed",
        "generated/only-other-node",
        "generated/only-cinder",
        "generated/plain-pubsub-message",
        "generated/binary-payload",
        "generated/future-version",
    ];
    for name in all {
        publish(&redis, &fixture(name));
    }
    // A marker published last on the same channel by another app node:
    // once the clients have it, every fixture before it was delivered or
    // dropped.
    publish(&redis, &marker("end"));

    let text =
        |event: &str, payload: Value| Got::Text(json!([null, null, "room:lobby", event, payload]));
    let compress = "compress me ".repeat(40);
    let expected = vec![
        text("new_msg", json!({"body":"hi","n":1})),
        text("new_msg", json!({"body":"hi ws","n":2})),
        text("shout_others", json!({"o":1})),
        Got::Binary(binary_frame("room:lobby", "new_msg", &[255, 0, 1])),
        text("new_msg", json!({"body":"hi","user":{"id":7,"name":"Zoë"}})),
        text("values", serde_json::from_str(r#"{"1":"int key","atom":"some_atom","big":123456789012345678901234567890,"charlist":[97,98,99],"empty":{},"empty_list":[],"f":false,"float":1.5,"list":[1,"two",[3.25]],"neg":-42,"nil":null,"t":true}"#).unwrap()),
        text("new_msg", json!({ "body": compress })),
        text("new_msg", Value::Null), // only-cinder: its payload is checked below
        Got::Binary(binary_frame("room:lobby", "bin", &[0, 1, 2, 255])),
        text("end", json!({})),
    ];
    for (i, want) in expected.iter().enumerate() {
        match (next(&mut v2), want) {
            (Got::Text(got), Got::Text(want)) if want[4].is_null() => {
                assert_eq!(got[3], want[3], "message {i}: {got}");
            }
            (Got::Text(got), Got::Text(want)) => assert_eq!(&got, want, "message {i}"),
            (Got::Binary(got), Got::Binary(want)) => assert_eq!(&got, want, "message {i}"),
            (Got::Text(got), _) => panic!("message {i}: got {got}, wanted a binary frame"),
            (Got::Binary(got), _) => panic!("message {i}: got binary {got:?}, wanted text"),
        }
    }
    // V1 clients get the same text broadcasts, and no binary ones.
    let mut v1_events = Vec::new();
    loop {
        let message = v1.recv_json();
        v1_events.push(message["event"].as_str().unwrap().to_string());
        if message["event"] == "end" {
            break;
        }
    }
    assert_eq!(
        v1_events,
        [
            "new_msg",
            "new_msg",
            "shout_others",
            "new_msg",
            "values",
            "new_msg",
            "new_msg",
            "end"
        ]
    );
    assert_eq!(metric(&server, "cinder_phoenix_pubsub_received_total"), 15);
    assert_eq!(metric(&server, "cinder_phoenix_pubsub_delivered_total"), 10);
    for (reason, count) in [
        ("presence", 2),
        ("other_node", 1),
        ("dispatcher", 1),
        ("version", 1),
        ("own_echo", 0),
        ("malformed", 0),
    ] {
        assert_eq!(
            metric(
                &server,
                &format!("cinder_phoenix_pubsub_ignored_total{{reason=\"{reason}\"}}")
            ),
            count,
            "{reason}"
        );
    }
}

#[test]
fn hostile_bytes_on_the_apps_channel_are_counted_and_harm_no_one() {
    let redis = Redis::start();
    let server = server(&redis, "");
    let mut client = server.connect();
    client.join("room:lobby", "1");
    let real = fixture("captured/http-broadcast");
    let mut hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not a term".to_vec(),
        vec![131],
        vec![131, 80, 255, 255, 255, 255, 120, 156], // compressed, claims 4 GiB
        vec![131, 108, 255, 255, 255, 255],          // a list of 4 billion
        vec![131, 104, 6, 97, 3],                    // truncated envelope
    ];
    hostile.extend((1..real.len()).step_by(7).map(|n| real[..n].to_vec()));
    let deep: Vec<u8> = [131]
        .into_iter()
        .chain(std::iter::repeat_n([104, 1], 100_000).flatten())
        .chain([106])
        .collect();
    hostile.push(deep);
    for bytes in &hostile {
        publish(&redis, bytes);
    }
    publish(&redis, &real);
    let got = client.recv_json();
    assert_eq!(
        got,
        json!([null, null, "room:lobby", "new_msg", {"body":"hi","n":1}])
    );
    assert_eq!(
        metric(
            &server,
            "cinder_phoenix_pubsub_ignored_total{reason=\"malformed\"}"
        ),
        hostile.len() as u64
    );
    assert_eq!(bridge_health(&server)["redis"], "up");
}

/// A subscriber of the app's channel, as one more Phoenix node would be.
struct Subscriber {
    reader: BufReader<TcpStream>,
}

impl Subscriber {
    fn new(redis: &Redis) -> Subscriber {
        let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(format!("SUBSCRIBE {CHANNEL}\r\n").as_bytes())
            .unwrap();
        let mut subscriber = Subscriber {
            reader: BufReader::new(stream),
        };
        let confirmation = subscriber.array();
        assert_eq!(confirmation[0], b"subscribe");
        subscriber
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a RESP line");
        line.trim_end().to_string()
    }

    /// One RESP array of bulk strings (and integers, as text).
    fn array(&mut self) -> Vec<Vec<u8>> {
        let head = self.line();
        let count: usize = head.strip_prefix('*').unwrap().parse().unwrap();
        (0..count)
            .map(|_| {
                let item = self.line();
                if let Some(len) = item.strip_prefix('$') {
                    let mut bytes = vec![0; len.parse::<usize>().unwrap() + 2];
                    self.reader.read_exact(&mut bytes).unwrap();
                    bytes.truncate(bytes.len() - 2);
                    bytes
                } else {
                    item.as_bytes()[1..].to_vec()
                }
            })
            .collect()
    }

    /// The next message's payload.
    fn message(&mut self) -> Vec<u8> {
        let message = self.array();
        assert_eq!(message[0], b"message");
        message[2].clone()
    }
}

/// Whether Erlang/OTP reads `bytes` (`binary_to_term`) as exactly the
/// term written in `expected` (Erlang syntax); fails when `erl` is missing.
fn erlang_reads(bytes: &[u8], expected: &str) -> String {
    let dir = std::env::temp_dir().join(format!("cinder-pubsub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("term-{}.bin", common::cluster::free_port()));
    std::fs::write(&file, bytes).unwrap();
    let program = format!(
        "{{ok, B}} = file:read_file(\"{}\"), T = binary_to_term(B), \
         E = {expected}, io:format(\"~p~n\", [T =:= E]), halt().",
        file.display()
    );
    let output = Command::new("erl")
        .args(["-noshell", "-eval", &program])
        .output()
        .expect(
            "these tests need Erlang/OTP's erl (Debian package erlang-base; .ci/run installs it)",
        );
    let _ = std::fs::remove_file(&file);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
        + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn cinders_broadcasts_reach_the_app_as_a_phoenix_nodes_and_its_echo_is_not_delivered_twice() {
    let redis = Redis::start();
    let server = server(&redis, "compression_level = 6");
    let mut app = Subscriber::new(&redis);
    let mut client = server.connect();
    client.join("room:lobby", "1");

    // Through the HTTP API, with a number beyond 64 bits and a float.
    let (status, _) = server.publish(
        r#"{"topic":"room:lobby","event":"api","payload":{"big":123456789012345678901234567890,"x":1.5,"s":"Zoë","l":[true,null]}}"#,
    );
    assert_eq!(status, 200);
    let term = app.message();
    assert_eq!(
        term[..2],
        [131, 80],
        "compressed, as compression_level = 6 asks"
    );
    let broadcast = |event: &str, payload: &str| {
        format!(
            "{{3, except, 'cinder-1', <<\"room:lobby\">>, #{{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', \
             topic => <<\"room:lobby\">>, event => <<\"{event}\">>, payload => {payload}}}, 'Elixir.Phoenix.Channel.Server'}}"
        )
    };
    assert_eq!(
        erlang_reads(
            &term,
            &broadcast(
                "api",
                "#{<<\"big\">> => 123456789012345678901234567890, <<\"x\">> => 1.5, \
                 <<\"s\">> => <<\"Zo\"/utf8, 235/utf8>>, <<\"l\">> => [true, nil]}"
            )
        ),
        "true"
    );
    // A client's broadcast, and a binary one.
    client.send(r#"["1","2","room:lobby","shout",{"n":1}]"#);
    let term = app.message();
    assert_eq!(
        erlang_reads(&term, &broadcast("shout", "#{<<\"n\">> => 1}")),
        "true"
    );
    client.send_binary(&{
        let mut push = vec![0, 1, 1, 10, 4];
        push.extend_from_slice(b"12room:lobbybits");
        push.extend_from_slice(&[7, 8, 9]);
        push
    });
    let term = app.message();
    assert_eq!(
        erlang_reads(&term, &broadcast("bits", "{binary, <<7,8,9>>}")),
        "true"
    );

    // Redis sent the bridge its own messages back: ignored as echoes, so
    // the client got each broadcast once.
    let mut events = Vec::new();
    while events.len() < 3 {
        match client.recv() {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message[3] != "phx_reply" {
                    events.push(message[3].as_str().unwrap().to_string());
                }
            }
            Message::Binary(_) => events.push("bits".into()),
            _ => {}
        }
    }
    assert_eq!(events, ["api", "shout", "bits"]);
    wait_until("the echoes counted", || {
        metric(
            &server,
            "cinder_phoenix_pubsub_ignored_total{reason=\"own_echo\"}",
        ) == 3
    });
    // Counted once Redis answered the PUBLISH, which may be after the echo.
    wait_until("3 publishes counted", || {
        metric(&server, "cinder_phoenix_pubsub_published_total") == 3
    });
    assert_eq!(metric(&server, "cinder_phoenix_pubsub_delivered_total"), 0);
}

#[test]
fn the_bridge_survives_redis_going_away_and_subscribes_again() {
    let mut redis = Redis::start();
    let server = server(&redis, "");
    let mut client = server.connect();
    client.join("room:lobby", "1");
    redis.kill();
    wait_until("the bridge saw Redis go", || {
        bridge_health(&server)["redis"] == "down"
    });
    // Local service goes on; what was meant for the app is dropped.
    let (status, _) = server.publish(r#"{"topic":"room:lobby","event":"local","payload":{}}"#);
    assert_eq!(status, 200);
    assert_eq!(client.recv_json()[3], "local");
    wait_until("the drop counted", || {
        metric(&server, "cinder_phoenix_pubsub_dropped_total") >= 1
    });
    redis.restart();
    wait_until("the bridge is back", || {
        bridge_health(&server)["redis"] == "up"
    });
    publish(&redis, &fixture("captured/http-broadcast"));
    assert_eq!(client.recv_json()[3], "new_msg");
    assert!(metric(&server, "cinder_phoenix_pubsub_reconnects_total") >= 1);
}

#[test]
fn a_bridge_with_another_name_receives_what_one_named_cinder_1_ignores() {
    // `only` messages follow the node's name: the same fixture is delivered
    // on a node named phoenix_app_2 and ignored on cinder-1 (above).
    let redis = Redis::start();
    let server = TestServer::start(&format!(
        "[phoenix_pubsub]\nredis = \"{}\"\nname = \"Elixir.Peer.PubSub\"\nnode_name = \"phoenix_app_2\"\npublish = false\n",
        redis.url()
    ));
    wait_until("the bridge subscribed", || {
        bridge_health(&server)["redis"] == "up"
    });
    let mut client = server.connect();
    client.join("room:lobby", "1");
    publish(&redis, &fixture("generated/only-cinder"));
    publish(&redis, &fixture("generated/only-other-node"));
    assert_eq!(client.recv_json()[3], "new_msg");
    publish(&redis, &marker("end"));
    assert_eq!(
        client.recv_json()[3],
        "end",
        "only one of the two was for this node"
    );
    assert_eq!(
        metric(&server, "cinder_phoenix_pubsub_published_total"),
        0,
        "publish = false"
    );
}

#[test]
fn with_a_cluster_every_client_gets_each_broadcast_once_whichever_way_it_came() {
    let bus = Redis::start();
    let app_redis = Redis::start();
    let extra = format!(
        "[phoenix_pubsub]\nredis = \"{}\"\nname = \"Peer.PubSub\"\n",
        app_redis.url()
    );
    let a = common::cluster::Node::start(&bus.url(), "node-a", 2, &extra);
    let b = common::cluster::Node::start(&bus.url(), "node-b", 2, &extra);
    for node in [&a, &b] {
        node.wait_cluster(2);
        wait_until("the node's bridge subscribed", || {
            let (_, body) = node.get("/healthz");
            let health: Value = serde_json::from_str(&body).unwrap();
            health["phoenix_pubsub"]["redis"] == "up"
        });
    }
    let mut app = Subscriber::new(&app_redis);
    let mut on_a = a.connect();
    on_a.join("room:lobby", "1");
    let mut on_b = b.connect();
    on_b.join("room:lobby", "1");

    // Published on node A: B's clients get it through the cluster, and
    // B's bridge ignores the app channel's copy (node A's, by its name).
    let (status, _) = a.post(
        "/api/broadcast",
        r#"{"topic":"room:lobby","event":"from_a","payload":{}}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(on_a.recv_json()[3], "from_a");
    assert_eq!(on_b.recv_json()[3], "from_a");
    let term = app.message();
    assert_eq!(
        erlang_reads(
            &term,
            "{3, except, 'node-a', <<\"room:lobby\">>, #{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', \
             topic => <<\"room:lobby\">>, event => <<\"from_a\">>, payload => #{}}, 'Elixir.Phoenix.Channel.Server'}"
        ),
        "true",
        "published by node-a under its cluster name"
    );
    // From the app: every node delivers it to its own clients.
    publish(&app_redis, &fixture("captured/http-broadcast"));
    publish(&app_redis, &marker("end"));
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.recv_json()[3], "new_msg");
        assert_eq!(client.recv_json()[3], "end", "nothing twice");
    }
    let ignored = |node: &common::cluster::Node, reason: &str| {
        node.metric(&format!(
            "cinder_phoenix_pubsub_ignored_total{{reason=\"{reason}\"}}"
        ))
    };
    wait_until("the echoes counted", || {
        ignored(&b, "cinder_peer") == 1 && ignored(&a, "own_echo") == 1
    });
    wait_until("node-a's publish counted", || {
        a.metric("cinder_phoenix_pubsub_published_total") == 1
    });
    assert_eq!(b.metric("cinder_phoenix_pubsub_published_total"), 0);
}
