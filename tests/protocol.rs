//! Byte-exact Phoenix protocol exchanges over real sockets (spec §4–§7).

mod common;

use common::{Client, TestServer};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

#[test]
fn heartbeat_v2_and_v1() {
    let server = TestServer::start("");
    let mut v2 = server.connect();
    v2.send(r#"[null,"4","phoenix","heartbeat",{}]"#);
    assert_eq!(
        v2.recv_text(),
        r#"[null,"4","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );

    let mut v1 = server.connect_v1();
    v1.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"4"}"#);
    assert_eq!(
        v1.recv_json(),
        serde_json::json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"4"})
    );
}

#[test]
fn absent_vsn_means_v1() {
    let server = TestServer::start("");
    let mut client = Client::connect(&server.ws_url(None));
    client.send(r#"{"topic":"room:a","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#);
    assert_eq!(
        client.recv_json(),
        serde_json::json!({"topic":"room:a","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"})
    );
}

#[test]
fn numeric_refs_are_echoed_as_numbers() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client.send(r#"[7,7,"room:a","phx_join",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"[7,7,"room:a","phx_reply",{"status":"ok","response":{}}]"#
    );
}

#[test]
fn join_refusals() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client.send(r#"["3","3","nope:1","phx_join",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"[null,"3","nope:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
    client.send(r#"["4","4","room:forbidden","phx_join",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"["4","4","room:forbidden","phx_reply",{"status":"error","response":{"reason":"unauthorized"}}]"#
    );
}

#[test]
fn leave_replies_then_closes_and_stops_delivery() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client.join("room:lobby", "3");
    client.send(r#"["3","6","room:lobby","phx_leave",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"["3","6","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        client.recv_text(),
        r#"["3","3","room:lobby","phx_close",{}]"#
    );
    let (status, _) = server.publish(r#"{"topic":"room:lobby","event":"x","payload":{}}"#);
    assert_eq!(status, 200);
    client.sync("7"); // the broadcast, had it come, would precede this reply
    client.send(r#"["3","8","room:lobby","new_msg",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"[null,"8","room:lobby","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
}

#[test]
fn duplicate_join_closes_the_old_instance() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client.join("room:lobby", "3");
    client.send(r#"["5","5","room:lobby","phx_join",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"["5","5","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        client.recv_text(),
        r#"["3","3","room:lobby","phx_close",{}]"#
    );
    server.publish(r#"{"topic":"room:lobby","event":"once","payload":{}}"#);
    assert_eq!(client.recv_text(), r#"[null,null,"room:lobby","once",{}]"#);
    client.sync("9"); // exactly once: only one subscription exists
}

#[test]
fn stale_join_refs_are_dropped_silently() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client.join("room:a", "3");
    client.send(r#"["2","4","room:a","new_msg",{}]"#);
    client.sync("5"); // no reply and no broadcast came before the heartbeat reply
}

#[test]
fn client_event_policies() {
    let server = TestServer::start("");
    let mut a = server.connect();
    let mut b = server.connect();
    for c in [&mut a, &mut b] {
        c.join("room:1", "1");
        c.join("from:1", "2");
        c.join("quiet:1", "3");
    }
    a.send(r#"["1","10","room:1","new_msg",{"body":"hi"}]"#);
    // Phoenix's observed order: the sender's copy of the broadcast, then the reply.
    assert_eq!(
        a.recv_text(),
        r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
    );
    assert_eq!(
        a.recv_text(),
        r#"["1","10","room:1","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        b.recv_text(),
        r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
    );

    a.send(r#"["2","11","from:1","new_msg",{"n":1}]"#);
    assert_eq!(
        a.recv_text(),
        r#"["2","11","from:1","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(b.recv_text(), r#"[null,null,"from:1","new_msg",{"n":1}]"#);
    a.sync("12"); // the sender did not get its own broadcast_from

    a.send(r#"["3","13","quiet:1","new_msg",{}]"#);
    assert_eq!(
        a.recv_text(),
        r#"["3","13","quiet:1","phx_reply",{"status":"error","response":{"reason":"unhandled event"}}]"#
    );
    b.sync("14");
}

#[test]
fn api_broadcast_reaches_subscribers_on_every_shard_in_order() {
    let server = TestServer::start("");
    // SO_REUSEPORT spreads connections by hash; with 16 clients both shards
    // hold some (the chance of all on one shard is 2^-15).
    let mut clients: Vec<Client> = (0..16).map(|_| server.connect()).collect();
    let mut v1 = server.connect_v1();
    for c in clients.iter_mut() {
        c.join("room:all", "1");
    }
    v1.send(r#"{"topic":"room:all","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#);
    v1.recv_text();
    let per_shard = server.metric_per_shard("cinder_channels");
    assert_eq!(per_shard.len(), 2);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "subscribers on every shard: {per_shard:?}"
    );
    let (status, body) =
        server.publish(r#"{"topic":"room:all","event":"first","payload":{"n":1}}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"count":1}"#));
    let (status, body) = server.publish(
        r#"{"messages":[{"topic":"room:all","event":"second","payload":{"n":2}},
                        {"topic":"room:all","event":"third","payload":{"n":3}}]}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true,"count":2}"#));
    for c in clients.iter_mut() {
        assert_eq!(c.recv_text(), r#"[null,null,"room:all","first",{"n":1}]"#);
        assert_eq!(c.recv_text(), r#"[null,null,"room:all","second",{"n":2}]"#);
        assert_eq!(c.recv_text(), r#"[null,null,"room:all","third",{"n":3}]"#);
    }
    for (n, event) in [(1, "first"), (2, "second"), (3, "third")] {
        assert_eq!(
            v1.recv_json(),
            serde_json::json!({"topic":"room:all","event":event,"payload":{"n":n},"ref":null})
        );
    }
    assert_eq!(server.metric("cinder_deliveries_total"), 17 * 3);
}

#[test]
fn binary_push_is_rebroadcast_as_a_binary_frame() {
    let server = TestServer::start("");
    let mut a = server.connect();
    let mut b = server.connect();
    let mut v1 = server.connect_v1();
    a.join("room:bin", "3");
    b.join("room:bin", "1");
    v1.send(r#"{"topic":"room:bin","event":"phx_join","payload":{},"ref":"1"}"#);
    v1.recv_text();
    // Kind 0 client push: join_ref "3", ref "7", topic "room:bin", event "upload".
    let mut frame = vec![0, 1, 1, 8, 6];
    frame.extend_from_slice(b"37room:binupload");
    frame.extend_from_slice(&[1, 2, 3]);
    a.send_binary(&frame);
    let mut expected = vec![2, 8, 6];
    expected.extend_from_slice(b"room:binupload");
    expected.extend_from_slice(&[1, 2, 3]);
    assert_eq!(a.recv(), Message::binary(expected.clone()));
    assert_eq!(
        a.recv_text(),
        r#"["3","7","room:bin","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(b.recv(), Message::binary(expected));
    // V1 has no binary form: skipped and counted.
    v1.send(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"9"}"#);
    assert_eq!(v1.recv_json()["ref"], "9");
    assert_eq!(server.metric("cinder_binary_skipped_v1_total"), 1);
}

#[test]
fn api_binary_broadcast() {
    let server = TestServer::start("");
    let mut a = server.connect();
    a.join("room:b", "1");
    let (status, _) =
        server.publish(r#"{"topic":"room:b","event":"tick","payload_base64":"/w=="}"#);
    assert_eq!(status, 200);
    assert_eq!(
        a.recv(),
        Message::binary(b"\x02\x06\x04room:btick\xff".to_vec())
    );
}

#[test]
fn auth_token_subprotocol_is_accepted_and_phoenix_echoed() {
    let server = TestServer::start("");
    let mut request = server.ws_url(Some("2.0.0")).into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu"
            .parse()
            .unwrap(),
    );
    // tungstenite fails the handshake unless the server selects one of the
    // offered protocols, like browsers and `ws` do.
    let mut client = Client::connect_request(request);
    client.join("room:a", "1");
}

#[test]
fn channel_limit_is_enforced() {
    let server = TestServer::start("[socket]\nmax_channels = 2\n");
    let mut client = server.connect();
    client.join("room:1", "1");
    client.join("room:2", "2");
    client.send(r#"["3","3","room:3","phx_join",{}]"#);
    assert_eq!(
        client.recv_text(),
        r#"["3","3","room:3","phx_reply",{"status":"error","response":{"reason":"too many channels joined"}}]"#
    );
}

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = TestServer::start("");
    let mut client = server.connect();
    client
        .ws
        .send(Message::Ping(b"abc".to_vec().into()))
        .unwrap();
    match client.ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"abc"),
        other => panic!("expected a pong, got {other:?}"),
    }
}
