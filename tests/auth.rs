//! The `jwt` connect policy over real sockets: tokens in the connect params
//! and in the auth-token subprotocol, and every refusal answered with 403.

mod common;

use base64::Engine as _;
use cinder::auth::{mint_hs256, now_secs, Claims};
use common::{Client, TestServer};
use tungstenite::client::IntoClientRequest;

const JWT: &str = "[socket.auth]\nmode = \"jwt\"\nsecret = \"dev-secret\"\n";

fn token(secret: &str, sub: &str, exp_offset: i64) -> String {
    let claims = Claims {
        sub: sub.into(),
        channels: None,
        exp: Some((now_secs() as i64 + exp_offset) as u64),
        nbf: None,
        iat: None,
    };
    mint_hs256(secret, &claims)
}

/// Sends an upgrade request and returns (status, body).
fn upgrade(server: &TestServer, query: &str, extra: &str) -> (u16, String) {
    server.http(&format!(
        "GET /socket/websocket?vsn=2.0.0{query} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}Connection: close\r\n\r\n"
    ))
}

#[test]
fn a_valid_token_in_the_params_connects_and_joins() {
    let server = TestServer::start(JWT);
    let url = format!(
        "{}&token={}",
        server.ws_url(Some("2.0.0")),
        token("dev-secret", "alice", 60)
    );
    let mut client = Client::connect(&url);
    client.join("room:1", "1");
}

#[test]
fn a_valid_token_in_the_auth_token_subprotocol_connects() {
    let server = TestServer::start(JWT);
    let encoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token("dev-secret", "bob", 60));
    let mut request = server.ws_url(Some("2.0.0")).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("phoenix, base64url.bearer.phx.{encoded}")
            .parse()
            .unwrap(),
    );
    let mut client = Client::connect_request(request);
    client.join("room:2", "1");
}

#[test]
fn missing_expired_forged_and_alg_none_tokens_get_403() {
    let server = TestServer::start(JWT);
    let (status, body) = upgrade(&server, "", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("missing token"), "{body}");
    let cases = [
        (token("dev-secret", "a", -60), "token expired"),
        (token("wrong-secret", "a", 60), "invalid token signature"),
        ("garbage".to_string(), "malformed token"),
    ];
    for (token, reason) in cases {
        let (status, body) = upgrade(&server, &format!("&token={token}"), "");
        assert_eq!(status, 403, "{reason}: {body}");
        assert!(body.contains(reason), "{reason}: {body}");
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(format!(r#"{{"sub":"mallory","exp":{}}}"#, now_secs() + 60))
    );
    let (status, body) = upgrade(&server, &format!("&token={none}"), "");
    assert_eq!(status, 403, "{body}");
    // The server stays healthy for everyone else.
    let (status, _) = upgrade(
        &server,
        &format!("&token={}", token("dev-secret", "ok", 60)),
        "",
    );
    assert_eq!(status, 101);
}

#[test]
fn jwt_config_errors_name_the_key() {
    for (text, key) in [
        ("[socket.auth]\nmode = \"jwt\"\n", "socket.auth"),
        (
            "[socket.auth]\nmode = \"jwt\"\nsecret = \"short\"\n",
            "socket.auth.secret",
        ),
        (
            "[socket.auth]\nmode = \"jwt\"\npublic_key_file = \"/nonexistent.pem\"\n",
            "socket.auth.public_key_file",
        ),
        (
            "[socket.auth]\nmode = \"jwt\"\nsecret = \"long-enough\"\nalgorithm = \"RS256\"\n",
            "socket.auth.algorithm",
        ),
    ] {
        let err = cinder::Config::parse(text, "test").unwrap_err();
        assert!(err.to_string().contains(key), "{text}: {err}");
    }
}

#[test]
fn cinder_token_mints_a_token_the_server_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args([
            "token",
            "--secret",
            "dev-secret",
            "--sub",
            "alice",
            "--channels",
            "room:*,user:alice",
        ])
        .output()
        .expect("cinder token runs");
    assert!(output.status.success());
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let claims = cinder::auth::Verifier::from_secret("dev-secret", None)
        .unwrap()
        .verify(&minted)
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(
        claims.channels.unwrap().entries(),
        vec!["room:*", "user:alice"]
    );
    let server = TestServer::start(JWT);
    let url = format!("{}&token={minted}", server.ws_url(Some("2.0.0")));
    Client::connect(&url).join("room:4", "1");
}

const PRIVATE: &str = "[socket.auth]\nmode = \"jwt\"\nsecret = \"dev-secret\"\n\n\
[[channel]]\npattern = \"user:{user_id}\"\njoin = \"public\"\n\n\
[[channel]]\npattern = \"team:*\"\njoin = \"claims\"\nclient_events = \"broadcast\"\n";

fn connect_as(server: &TestServer, sub: &str, channels: Option<&str>) -> Client {
    let claims = Claims {
        sub: sub.into(),
        channels: channels.map(|c| cinder::auth::ChannelsClaim::Joined(c.into())),
        exp: Some(now_secs() + 60),
        nbf: None,
        iat: None,
    };
    let url = format!(
        "{}&token={}",
        server.ws_url(Some("2.0.0")),
        mint_hs256("dev-secret", &claims)
    );
    Client::connect(&url)
}

fn join_reply(client: &mut Client, topic: &str, r: &str) -> serde_json::Value {
    client.send(&format!(r#"["{r}","{r}","{topic}","phx_join",{{}}]"#));
    client.recv_json()
}

#[test]
fn a_private_user_topic_admits_only_its_owner() {
    let server = TestServer::start_with_shards(2, PRIVATE);
    let mut alice = connect_as(&server, "alice", None);
    let reply = join_reply(&mut alice, "user:alice", "1");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    let reply = join_reply(&mut alice, "user:bob", "2");
    assert_eq!(reply[4]["status"], "error", "{reply}");
    assert_eq!(reply[4]["response"]["reason"], "unauthorized", "{reply}");
}

#[test]
fn claims_joins_follow_the_tokens_channels_claim() {
    let server = TestServer::start_with_shards(2, PRIVATE);
    let mut client = connect_as(&server, "carol", Some("team:red, team:blue*"));
    for (topic, status) in [
        ("team:red", "ok"),
        ("team:blue-2", "ok"),
        ("team:green", "error"),
    ] {
        let reply = join_reply(&mut client, topic, "1");
        assert_eq!(reply[4]["status"], status, "{topic}: {reply}");
    }
    let mut nobody = connect_as(&server, "dave", None);
    let reply = join_reply(&mut nobody, "team:red", "1");
    assert_eq!(reply[4]["response"]["reason"], "unauthorized", "{reply}");
}

#[test]
fn identity_routes_need_an_identity_policy() {
    let err = cinder::Config::parse(
        "[[channel]]\npattern = \"user:{user_id}\"\njoin = \"public\"\n",
        "t",
    )
    .unwrap_err();
    assert!(err.to_string().contains("channel[0]"), "{err}");
}

fn post(server: &TestServer, path: &str, body: &str) -> (u16, String) {
    server.http(&format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn forced_disconnect_closes_every_connection_of_the_user_on_every_shard() {
    let server = TestServer::start_with_shards(2, PRIVATE);
    // Ten connections: all landing on one shard by chance is a 1-in-500 event.
    let mut alices: Vec<Client> = (0..10)
        .map(|_| connect_as(&server, "alice", None))
        .collect();
    let mut bob = connect_as(&server, "bob", None);
    for (i, alice) in alices.iter_mut().enumerate() {
        alice.join("user:alice", &i.to_string());
    }
    let per_shard = server.metric_per_shard("cinder_connections");
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "connections not on both shards: {per_shard:?}"
    );
    let (status, body) = post(&server, "/api/disconnect", r#"{"user_id":"alice"}"#);
    assert_eq!(status, 200, "{body}");
    for alice in &mut alices {
        assert_eq!(alice.expect_close(), 1001);
    }
    bob.join("user:bob", "1");
    let (status, _) = post(&server, "/api/disconnect", r#"{"who":"bob"}"#);
    assert_eq!(status, 400);
}

#[test]
fn a_disconnect_broadcast_to_the_socket_id_closes_it() {
    let server = TestServer::start_with_shards(2, PRIVATE);
    let mut carol = connect_as(&server, "carol", None);
    let mut dave = connect_as(&server, "dave", None);
    carol.join("user:carol", "1");
    let (status, body) = post(
        &server,
        "/api/broadcast",
        r#"{"topic":"user_socket:carol","event":"disconnect","payload":{}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(carol.expect_close(), 1001);
    dave.join("user:dave", "1");
}
