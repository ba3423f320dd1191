//! The publish API behind an API key, over real sockets.

mod common;

use common::{http_exchange, TestServer};

const BODY: &str = r#"{"topic":"room:1","event":"msg","payload":{}}"#;

fn post(server: &TestServer, authorization: Option<&str>) -> (u16, String) {
    let auth = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    http_exchange(server.addr, request.as_bytes())
}

#[test]
fn with_an_api_key_only_the_right_bearer_token_may_publish() {
    let server = TestServer::start("[api]\napi_key = \"s3cret\"\n");
    let (status, body) = post(&server, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");
    assert_eq!(post(&server, Some("Bearer wrong")).0, 401);
    assert_eq!(post(&server, Some("Basic s3cret")).0, 401);
    let (status, body) = post(&server, Some("Bearer s3cret"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""count":1"#), "{body}");
    // Health and metrics stay reachable for probes and scrapers.
    let (status, _) = server.http("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn without_an_api_key_the_loopback_api_is_open() {
    let server = TestServer::start("");
    assert_eq!(post(&server, None).0, 200);
}

#[test]
fn an_open_api_on_a_public_bind_refuses_to_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .expect("cinder runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("api.api_key"), "{stderr}");
}

fn upgrade_with_origin(server: &TestServer, origin: &str) -> u16 {
    let (status, _) = server.http(&format!(
        "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    ));
    status
}

#[test]
fn the_origin_check_refuses_other_sites_with_403() {
    let server = TestServer::start(
        "[socket]\ncheck_origin = [\"https://app.example.com\", \"//*.example.org\"]\n",
    );
    assert_eq!(
        upgrade_with_origin(&server, "https://evil.example.net"),
        403
    );
    assert_eq!(upgrade_with_origin(&server, "http://app.example.com"), 403);
    // Allowed origins and non-browser clients (no Origin) upgrade normally.
    for origin in ["https://app.example.com", "https://chat.example.org"] {
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url(Some("2.0.0")),
        )
        .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        common::Client::connect_request(request).join("room:1", "1");
    }
    common::Client::connect(&server.ws_url(Some("2.0.0"))).join("room:2", "1");
}

#[test]
fn a_bad_origin_setting_is_a_config_error() {
    let err =
        cinder::Config::parse("[socket]\ncheck_origin = [\"//ex*ample.com\"]\n", "t").unwrap_err();
    assert!(err.to_string().contains("socket.check_origin"), "{err}");
}
