//! Bad input gets the spec's answer (close code or HTTP status) and never
//! disturbs other connections (spec §13).

mod common;

use common::{http_exchange, RawSocket, TestServer};

/// A joined bystander that must keep receiving broadcasts.
fn bystander(server: &TestServer) -> common::Client {
    let mut client = server.connect();
    client.join("room:ok", "1");
    client
}

fn assert_bystander_still_served(server: &TestServer, client: &mut common::Client) {
    let (status, _) = server.publish(r#"{"topic":"room:ok","event":"still","payload":{}}"#);
    assert_eq!(status, 200);
    assert_eq!(client.recv_text(), r#"[null,null,"room:ok","still",{}]"#);
}

#[test]
fn malformed_messages_close_with_1011() {
    let server = TestServer::start("");
    let mut other = bystander(&server);
    for bad in [
        &b"not json"[..],
        br#"{"topic":"a"}"#,
        br#"["1","1","room:a"]"#,
        b"[",
        br#"{"topic":"room:a","event":"phx_join","payload":{},"ref":"1"}"#, // V1 object on V2
    ] {
        let mut raw = RawSocket::connect(server.addr);
        raw.send_frame(0x81, bad, true);
        assert_eq!(
            raw.expect_close(),
            1011,
            "input {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x82, &[5, 0, 0, 0, 0], true); // binary kind 5
    assert_eq!(raw.expect_close(), 1011);
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x82, &[0, 9, 9], true); // truncated kind 0 header
    assert_eq!(raw.expect_close(), 1011);
    assert_bystander_still_served(&server, &mut other);
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start("");
    let mut other = bystander(&server);
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x81, b"[null,\"1\",\"\xff\xfe\",\"x\",{}]", true);
    assert_eq!(raw.expect_close(), 1007);
    assert_bystander_still_served(&server, &mut other);
}

#[test]
fn oversized_messages_close_with_1009() {
    let server = TestServer::start("[socket]\nmax_message_size = 4096\n");
    let mut other = bystander(&server);
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x81, &vec![b' '; 5000], true);
    assert_eq!(raw.expect_close(), 1009);
    // Fragments adding up past the limit, too.
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x01, &vec![b' '; 3000], true);
    raw.send_frame(0x80, &vec![b' '; 3000], true);
    assert_eq!(raw.expect_close(), 1009);
    assert_bystander_still_served(&server, &mut other);
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = TestServer::start("");
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x01, br#"[null,"1","phoe"#, true);
    raw.send_frame(0x89, b"ping", true); // a control frame between fragments
    raw.send_frame(0x80, br#"nix","heartbeat",{}]"#, true);
    let mut reader = std::io::BufReader::new(raw.stream.try_clone().unwrap());
    use std::io::Read;
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("phx_reply") {
        let n = reader.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains(r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#),
        "{text}"
    );
}

#[test]
fn unmasked_frames_close_with_1002() {
    let server = TestServer::start("");
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x81, br#"[null,"1","phoenix","heartbeat",{}]"#, false);
    assert_eq!(raw.expect_close(), 1002);
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0xC1, b"{}", true); // RSV1 without an extension
    assert_eq!(raw.expect_close(), 1002);
}

#[test]
fn client_close_is_echoed() {
    let server = TestServer::start("");
    let mut raw = RawSocket::connect(server.addr);
    raw.send_frame(0x88, &[0x03, 0xe8], true); // 1000
    assert_eq!(raw.expect_close(), 1000);
}

#[test]
fn bad_upgrades_get_http_errors() {
    let server = TestServer::start("");
    let upgrade = |query: &str, extra: &str| {
        format!(
            "GET /socket/websocket{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    for vsn in [
        "?vsn=3.0.0",
        "?vsn=2.1.0",
        "?vsn=2",
        "?vsn=abc",
        "?vsn[]=2.0.0",
    ] {
        let (status, body) = server.http(&upgrade(vsn, ""));
        assert_eq!(status, 403, "vsn {vsn}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    // A plain GET without upgrade headers.
    let (status, _) = server.http("GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 400);
    // A token subprotocol that is not base64.
    let (status, _) = server.http(&upgrade(
        "?vsn=2.0.0",
        "Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.%%%\r\n",
    ));
    assert_eq!(status, 400);
    let (status, _) = server.http(
        &upgrade("?vsn=2.0.0", "Sec-WebSocket-Version: 8\r\n")
            .replace("Sec-WebSocket-Version: 13\r\n", ""),
    );
    assert_eq!(status, 426);
}

#[test]
fn garbage_http_gets_400_and_unknown_paths_404() {
    let server = TestServer::start("");
    let (status, body) = http_exchange(server.addr, b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.http("GET /nope HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 404);
    assert_eq!(body, r#"{"error":"not found"}"#);
    let (status, _) =
        server.http("GET /api/broadcast HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 405);
    let (status, body) =
        server.http("GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn bad_publish_bodies_get_400_with_a_reason() {
    let server = TestServer::start("[api]\nmax_batch = 2\n");
    for (body, needle) in [
        ("not json", "invalid request body"),
        (r#"{"topic":"a","event":"e","payload":[1]}"#, "JSON object"),
        (r#"{"topic":"a","payload":{}}"#, "event"),
        (
            r#"{"messages":[{"topic":"a","event":"e","payload":{}},{"topic":"a","event":"e","payload":{}},{"topic":"a","event":"e","payload":{}}]}"#,
            "at most 2",
        ),
    ] {
        let (status, reply) = server.publish(body);
        assert_eq!(status, 400, "{body}");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("JSON error body");
        assert!(reply["error"].as_str().unwrap().contains(needle), "{reply}");
    }
}

#[test]
fn http_keep_alive_serves_pipelined_requests() {
    let server = TestServer::start("");
    let body = r#"{"topic":"a","event":"e","payload":{}}"#;
    let one = format!(
        "POST /api/broadcast HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let request =
        format!("{one}{one}GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    let (status, text) = server.http(&request);
    assert_eq!(status, 200);
    assert!(text.contains(r#"{"status":"ok"}"#), "{text}");
    // Three responses on one connection, in order.
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}"); // after the first head
    assert_eq!(text.matches(r#"{"ok":true,"count":1}"#).count(), 2);
}

/// Numbers simd-json cannot hold (beyond 64 bits, beyond `f64`) or would
/// re-spell (`1.0e2`, `-0`) are relayed byte for byte, as Phoenix relays
/// them and the publish API accepts them; the sender is not closed.
#[test]
fn big_numbers_in_client_events_are_relayed_verbatim() {
    let server = TestServer::start("");
    let mut sender = server.connect();
    let mut other = server.connect();
    sender.join("room:nums", "1");
    other.join("room:nums", "1");
    let mut v1 = server.connect_v1();
    v1.send(r#"{"topic":"room:nums","event":"phx_join","payload":{},"ref":"1"}"#);
    assert_eq!(
        v1.recv_text(),
        r#"{"topic":"room:nums","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#
    );
    for payload in [
        r#"{"n":99999999999999999999,"f":1e309}"#,
        r#"{"big":1606938044258990275541962092341162602522202993782792835301376,"tiny":-1e-400,"e":1.0e2,"z":-0,"x":[1E400,-0.0,2.50]}"#,
    ] {
        sender.send(&format!(r#"["1","2","room:nums","shout",{payload}]"#));
        let relayed = format!(r#"[null,null,"room:nums","shout",{payload}]"#);
        assert_eq!(sender.recv_text(), relayed);
        assert_eq!(
            sender.recv_text(),
            r#"["1","2","room:nums","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(other.recv_text(), relayed);
        assert_eq!(
            v1.recv_text(),
            format!(r#"{{"topic":"room:nums","event":"shout","payload":{payload},"ref":null}}"#)
        );
    }
    // A V1 sender, with whitespace (dropped) around the numbers.
    v1.send(r#"{"topic":"room:nums","event":"shout","payload":{ "n" : 18446744073709551616 , "f" : 1e-400 },"ref":"2"}"#);
    let relayed = r#"[null,null,"room:nums","shout",{"n":18446744073709551616,"f":1e-400}]"#;
    assert_eq!(other.recv_text(), relayed);
    assert_eq!(sender.recv_text(), relayed);
    sender.sync("3");
}

/// A `\u` escape of half a surrogate pair is refused like invalid UTF-8
/// (1007) wherever it is, instead of becoming another character: a join to
/// `room:\ud800x` must not join `room:\u0000x`, and a payload must not be
/// relayed changed. One shard, so a heartbeat reply proves nothing came.
#[test]
fn lone_surrogate_escapes_close_with_1007_and_alias_nothing() {
    let server = TestServer::start_with_shards(1, "");
    let mut nul_room = server.connect();
    nul_room.join(r"room:\u0000x", "1");
    let mut x_room = server.connect();
    x_room.join("room:x", "1");
    for bad in [
        r#"["1","1","room:\ud800x","phx_join",{}]"#,
        r#"["1","1","room:\udc00x","phx_join",{}]"#,
        r#"["1","1","room:\ud800\u0000x","phx_join",{}]"#,
        r#"[null,"2","room:\ud800x","shout",{"s":1}]"#,
        r#"{"topic":"room:\ud800x","event":"phx_join","payload":{},"ref":"1"}"#, // V1 on V2: still 1007
    ] {
        let mut raw = RawSocket::connect(server.addr);
        raw.send_frame(0x81, bad.as_bytes(), true);
        assert_eq!(raw.expect_close(), 1007, "{bad}");
    }
    for payload in [
        r#"{"s":"\ud800"}"#,
        r#"{"s":"\udc00"}"#,
        r#"{"s":"\ude00\ud83d"}"#,
        r#"{"s":"\ud800\ue000"}"#,
        r#"{"\ud800":1}"#,
        r#"{"n":1e999,"s":"\ud800"}"#,
    ] {
        let mut sender = server.connect();
        sender.join("room:x", "1");
        sender.send(&format!(r#"["1","2","room:x","shout",{payload}]"#));
        assert_eq!(sender.expect_close(), 1007, "{payload}");
    }
    let mut v1 = server.connect_v1();
    v1.send(r#"{"topic":"room:\ud800x","event":"phx_join","payload":{},"ref":"1"}"#);
    assert_eq!(v1.expect_close(), 1007);
    nul_room.sync("2");
    x_room.sync("2");
    // A well-formed pair, and an escaped backslash before `u`, pass as sent.
    let mut sender = server.connect();
    sender.join("room:x", "1");
    sender.send(r#"["1","2","room:x","shout",{"s":"\ud83d\ude00","t":"\\ud800"}]"#);
    let relayed = r#"[null,null,"room:x","shout",{"s":"😀","t":"\\ud800"}]"#;
    assert_eq!(x_room.recv_text(), relayed);
    nul_room.sync("3");
}
