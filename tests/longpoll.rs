//! The long-poll transport byte by byte (spec §9): session creation, token
//! handling, ndjson POSTs, held polls, expiry, the 403/408/410 cases, CORS,
//! hand-over between shards, forced disconnect and the buffer limit.

mod common;

use std::time::{Duration, Instant};

use common::{http_exchange, TestServer};
use serde_json::{json, Value};

/// One request on a fresh connection (so requests spread over the shards);
/// returns (HTTP status, full head, JSON body or Null).
fn request(
    server: &TestServer,
    method: &str,
    path_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut text = format!("{method} {path_query} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    use std::io::{Read, Write};
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_string(), json)
}

const LP: &str = "/socket/longpoll";

/// Opens a session; returns its token.
fn open(server: &TestServer, query: &str) -> String {
    let (status, head, body) = request(server, "GET", &format!("{LP}?{query}"), &[], "");
    assert_eq!(status, 200);
    assert_eq!(body["status"], 410, "{body}");
    assert_eq!(body["messages"], json!([]));
    assert!(head.contains("content-type: application/json; charset=utf-8"));
    assert!(head.contains("access-control-allow-origin: *"));
    assert!(head.contains("cache-control: no-store"));
    body["token"].as_str().unwrap().to_string()
}

fn post(server: &TestServer, token: &str, lines: &[&str]) -> Value {
    let (status, _, body) = request(
        server,
        "POST",
        &format!("{LP}?vsn=2.0.0&token={token}"),
        &[("content-type", "application/x-ndjson")],
        &lines.join("\n"),
    );
    assert_eq!(status, 200);
    body
}

fn poll(server: &TestServer, token: &str) -> Value {
    let (status, _, body) = request(
        server,
        "GET",
        &format!("{LP}?vsn=2.0.0&token={token}"),
        &[],
        "",
    );
    assert_eq!(status, 200);
    body
}

/// Polls until `count` messages arrived (answers may split them); returns
/// them parsed.
fn messages(server: &TestServer, token: &str, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < count && Instant::now() < deadline {
        let body = poll(server, token);
        assert_eq!(body["token"], token);
        for m in body["messages"].as_array().unwrap() {
            got.push(serde_json::from_str(m.as_str().unwrap()).unwrap());
        }
    }
    assert_eq!(got.len(), count, "{got:?}");
    got
}

#[test]
fn a_session_joins_pushes_and_polls_its_replies_across_shards() {
    let server = TestServer::start_with_shards(4, "");
    let token = open(&server, "vsn=2.0.0&");
    assert_eq!(
        post(
            &server,
            &token,
            &[
                r#"["1","1","room:lp","phx_join",{}]"#,
                r#"["1","2","room:lp","msg",{"n":1}]"#,
            ]
        ),
        json!({"status": 200})
    );
    let got = messages(&server, &token, 3);
    assert_eq!(
        got,
        vec![
            json!(["1", "1", "room:lp", "phx_reply", {"status": "ok", "response": {}}]),
            json!([null, null, "room:lp", "msg", {"n": 1}]),
            json!(["1", "2", "room:lp", "phx_reply", {"status": "ok", "response": {}}]),
        ]
    );
    // Broadcasts published while nobody polls wait for the next poll.
    for n in 0..5 {
        server.publish(&format!(
            r#"{{"topic":"room:lp","event":"b","payload":{{"n":{n}}}}}"#
        ));
    }
    let got = messages(&server, &token, 5);
    let ns: Vec<i64> = got.iter().map(|m| m[4]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    // Four shards, a fresh connection per request: most requests landed on
    // a shard that did not own the session and were handed over.
    assert!(server.metric("cinder_longpoll_handovers_total") > 0);
    assert_eq!(server.metric("cinder_longpoll_sessions"), 1);
}

#[test]
fn the_session_token_is_the_last_token_param_or_the_header() {
    let server = TestServer::start("");
    // The app's own `token` param comes first; the session token is appended.
    let token = open(&server, "token=app-token&vsn=2.0.0&");
    let path = format!("{LP}?token=app-token&vsn=2.0.0&token={token}");
    let (_, _, body) = request(
        &server,
        "POST",
        &path,
        &[("content-type", "application/x-ndjson")],
        r#"["1","1","room:t","phx_join",{}]"#,
    );
    assert_eq!(body, json!({"status": 200}));
    // The header wins over the query parameter.
    let (_, _, body) = request(
        &server,
        "GET",
        &format!("{LP}?vsn=2.0.0&token=forged"),
        &[("x-phoenix-longpoll-token", &token)],
        "",
    );
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["token"], token.as_str());
}

#[test]
fn bad_and_unknown_tokens() {
    let server = TestServer::start("");
    let token = open(&server, "vsn=2.0.0");
    let mut forged = token.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    // A GET with a bad token opens a new session; a POST gets 410.
    let (_, _, body) = request(
        &server,
        "GET",
        &format!("{LP}?vsn=2.0.0&token={forged}"),
        &[],
        "",
    );
    assert_eq!(body["status"], 410);
    assert_ne!(body["token"], forged.as_str());
    assert_eq!(
        post(&server, &forged, &[r#"["1","1","room:t","phx_join",{}]"#]),
        json!({"status": 410})
    );
    // A vsn Cinder does not speak: 403.
    let (status, _, body) = request(&server, "GET", &format!("{LP}?vsn=3.0.0"), &[], "");
    assert_eq!((status, body["status"].clone()), (200, json!(403)));
}

#[test]
fn an_empty_poll_is_held_for_the_window_then_answered_204() {
    let server = TestServer::start("[socket.longpoll]\nwindow_ms = 400\n");
    let token = open(&server, "vsn=2.0.0");
    let started = Instant::now();
    let body = poll(&server, &token);
    let held = started.elapsed();
    assert_eq!(body, json!({"status": 204, "token": token, "messages": []}));
    assert!(held >= Duration::from_millis(390), "held {held:?}");
    // A message that arrives during a held poll is answered at once.
    post(&server, &token, &[r#"["1","1","room:h","phx_join",{}]"#]);
    messages(&server, &token, 1);
    let publisher = {
        let addr = server.addr;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let body = r#"{"topic":"room:h","event":"now","payload":{}}"#;
            let request = format!(
                "POST /api/broadcast HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            http_exchange(addr, request.as_bytes())
        })
    };
    let started = Instant::now();
    let body = poll(&server, &token);
    assert_eq!(body["status"], 200);
    assert!(started.elapsed() < Duration::from_millis(390));
    publisher.join().unwrap();
}

#[test]
fn an_unpolled_session_expires() {
    let server = TestServer::start("[socket.longpoll]\nwindow_ms = 200\n");
    let token = open(&server, "vsn=2.0.0");
    post(&server, &token, &[r#"["1","1","room:e","phx_join",{}]"#]);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(server.metric("cinder_longpoll_sessions"), 0);
    assert_eq!(
        post(&server, &token, &[r#"["1","2","room:e","m",{}]"#]),
        json!({"status": 410})
    );
    let (_, _, body) = request(
        &server,
        "GET",
        &format!("{LP}?vsn=2.0.0&token={token}"),
        &[],
        "",
    );
    assert_eq!(body["status"], 410);
    assert_ne!(body["token"], token.as_str(), "a new session");
}

#[test]
fn cors_preflight_and_other_methods() {
    let server = TestServer::start("");
    let (status, head, _) = request(
        &server,
        "OPTIONS",
        LP,
        &[(
            "access-control-request-headers",
            "content-type, x-phoenix-authtoken",
        )],
        "",
    );
    assert_eq!(status, 200);
    for header in [
        "access-control-allow-origin: *",
        "access-control-allow-headers: content-type, x-phoenix-authtoken",
        "access-control-allow-methods: get, post, options",
        "access-control-max-age: 3600",
        "content-length: 0",
    ] {
        assert!(head.contains(header), "{header} in {head}");
    }
    let (status, _, _) = request(&server, "PUT", LP, &[], "");
    assert_eq!(status, 400);
}

#[test]
fn a_single_frame_post_and_a_malformed_line() {
    let server = TestServer::start("");
    // V1 clients POST one JSON object per request, any content type.
    let token = open(&server, "vsn=1.0.0");
    let (_, _, body) = request(
        &server,
        "POST",
        &format!("{LP}?vsn=1.0.0&token={token}"),
        &[("content-type", "application/json")],
        r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
    );
    assert_eq!(body, json!({"status": 200}));
    let got = messages(&server, &token, 1);
    assert_eq!(got[0]["event"], "phx_reply");
    // An undecodable line ends the session, as 1011 does a WebSocket.
    let token = open(&server, "vsn=2.0.0");
    let body = post(&server, &token, &["[not json"]);
    assert_eq!(body["status"], 410, "{body}");
    assert_eq!(
        post(&server, &token, &[r#"["1","1","room:t","phx_join",{}]"#])["status"],
        410
    );
    // A line over socket.max_message_size ends the session, as 1009 does.
    let server = TestServer::start("[socket]\nmax_message_size = 1024\n");
    let token = open(&server, "vsn=2.0.0");
    let big = format!(r#"["1","1","room:t","msg",{{"x":"{}"}}]"#, "y".repeat(2000));
    let body = post(&server, &token, &[&big]);
    assert_eq!(body, json!({"status": 410, "reason": "message too big"}));
}

#[test]
fn connect_policy_refusals_forced_disconnect_and_the_buffer_limit() {
    let server = TestServer::start(
        "[socket]\nsend_buffer_limit = 4096\nslow_consumer_timeout_ms = 200\n[socket.auth]\nmode = \"jwt\"\nsecret = \"lp-secret\"\n",
    );
    let token_for = |sub: &str| {
        let claims = cinder::auth::Claims {
            sub: sub.to_string(),
            channels: None,
            exp: Some(cinder::auth::now_secs() + 600),
            nbf: None,
            iat: None,
        };
        cinder::auth::mint_hs256("lp-secret", &claims)
    };
    // No token, or a bad one: 403.
    let (_, _, body) = request(&server, "GET", &format!("{LP}?vsn=2.0.0"), &[], "");
    assert_eq!(body["status"], 403, "{body}");
    // The token as a connect param, or in X-Phoenix-AuthToken.
    let alice = open(&server, &format!("vsn=2.0.0&token={}", token_for("alice")));
    let (_, _, body) = request(
        &server,
        "GET",
        &format!("{LP}?vsn=2.0.0"),
        &[("x-phoenix-authtoken", &token_for("bob"))],
        "",
    );
    assert_eq!(body["status"], 410, "{body}");
    let bob = body["token"].as_str().unwrap().to_string();
    // Forced disconnect of alice ends her session only.
    let request_body = r#"{"user_id":"alice"}"#;
    let (status, _) = server.http(&format!(
        "POST /api/disconnect HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{request_body}",
        request_body.len()
    ));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        post(&server, &alice, &[r#"["1","1","room:d","phx_join",{}]"#])["status"],
        410
    );
    // Bob joins, then lets more than the buffer limit pile up and does not
    // poll it away: his session is ended as a slow consumer.
    assert_eq!(
        post(&server, &bob, &[r#"["1","1","room:d","phx_join",{}]"#])["status"],
        200
    );
    let big = "x".repeat(1500);
    for _ in 0..4 {
        server.publish(&format!(
            r#"{{"topic":"room:d","event":"big","payload":{{"x":"{big}"}}}}"#
        ));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while server.metric("cinder_slow_consumer_closes_total") == 0 {
        assert!(std::time::Instant::now() < deadline, "never closed as slow");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.metric("cinder_slow_consumer_closes_total"), 1);
    // The gone session's token no longer works: the GET opens a new session
    // (with the client's auth token, as the JS client sends it every time).
    let (_, _, body) = request(
        &server,
        "GET",
        &format!("{LP}?vsn=2.0.0&token={bob}"),
        &[("x-phoenix-authtoken", &token_for("bob"))],
        "",
    );
    assert_eq!(body["status"], 410);
    assert_ne!(body["token"], bob.as_str());
}

#[test]
fn a_binary_push_over_long_poll_reaches_websocket_subscribers() {
    let server = TestServer::start("");
    let mut ws = server.connect();
    ws.join("room:bin", "1");
    let token = open(&server, "vsn=2.0.0");
    post(&server, &token, &[r#"["1","1","room:bin","phx_join",{}]"#]);
    messages(&server, &token, 1);
    // A kind-0 binary push (join_ref "1", ref "2", topic, event, payload),
    // base64 on its own ndjson line, as the JS client sends ArrayBuffers.
    let (topic, event, payload) = (b"room:bin", b"blob", [0u8, 1, 2, 255]);
    let mut frame = vec![0u8, 1, 1, topic.len() as u8, event.len() as u8];
    frame.extend_from_slice(b"12");
    frame.extend_from_slice(topic);
    frame.extend_from_slice(event);
    frame.extend_from_slice(&payload);
    use base64::Engine;
    let line = base64::engine::general_purpose::STANDARD.encode(&frame);
    assert_eq!(post(&server, &token, &[&line]), json!({"status": 200}));
    match ws.recv() {
        tungstenite::Message::Binary(bytes) => assert!(bytes.ends_with(&payload), "{bytes:?}"),
        other => panic!("expected the binary broadcast, got {other:?}"),
    }
    // The long-poll session gets its reply; a binary broadcast has no
    // long-poll form, so it is skipped for the session (and counted).
    let got = messages(&server, &token, 1);
    assert_eq!(got[0][3], "phx_reply");
    assert_eq!(server.metric("cinder_binary_skipped_v1_total"), 1);
}
