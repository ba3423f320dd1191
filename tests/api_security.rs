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
