//! Shared helpers of the end-to-end tests: an in-process server on an
//! ephemeral port, a blocking WebSocket client, and raw HTTP.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub mod backend;
pub mod cluster;
pub mod events;

use cinder::{Config, ServerHandle};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{client::IntoClientRequest, Message, WebSocket};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The routes most tests use (the JS suite uses the same).
pub const TEST_ROUTES: &str = r#"
[[channel]]
pattern = "room:forbidden"
join = "deny"

[[channel]]
pattern = "room:*"
join = "public"
client_events = "broadcast"

[[channel]]
pattern = "from:*"
join = "public"
client_events = "broadcast_from"

[[channel]]
pattern = "quiet:*"
join = "public"
client_events = "deny"
"#;

/// A server running in this process; stopped when dropped.
pub struct TestServer {
    handle: Option<ServerHandle>,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Two shards, the test routes, and `extra` TOML appended (sections
    /// other than `[server]`, which this sets).
    pub fn start(extra: &str) -> TestServer {
        TestServer::start_with_shards(2, extra)
    }

    /// Like [`TestServer::start`] with a given shard count.
    pub fn start_with_shards(shards: usize, extra: &str) -> TestServer {
        let text =
            format!("[server]\nbind = \"127.0.0.1:0\"\nshards = {shards}\n{extra}\n{TEST_ROUTES}");
        let config = Config::parse(&text, "test").expect("test config");
        let handle = cinder::start(config).expect("server starts");
        let addr = handle.local_addr();
        TestServer {
            handle: Some(handle),
            addr,
        }
    }

    /// `ws://ADDR/socket/websocket?vsn=VSN`.
    pub fn ws_url(&self, vsn: Option<&str>) -> String {
        match vsn {
            Some(v) => format!("ws://{}/socket/websocket?vsn={v}", self.addr),
            None => format!("ws://{}/socket/websocket", self.addr),
        }
    }

    /// Connects a V2 client.
    pub fn connect(&self) -> Client {
        Client::connect(&self.ws_url(Some("2.0.0")))
    }

    /// Connects a V1 client.
    pub fn connect_v1(&self) -> Client {
        Client::connect(&self.ws_url(Some("1.0.0")))
    }

    /// Stops the server gracefully and waits for it.
    pub fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().expect("clean stop");
        }
    }

    /// Sends a raw HTTP request and returns (status, body).
    pub fn http(&self, request: &str) -> (u16, String) {
        http_exchange(self.addr, request.as_bytes())
    }

    /// `POST /api/broadcast` with a JSON body; returns (status, body).
    pub fn publish(&self, body: &str) -> (u16, String) {
        let request = format!(
            "POST /api/broadcast HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        self.http(&request)
    }

    /// A counter summed over shards, read from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_per_shard(name).iter().sum()
    }

    /// A counter's value on each shard, in shard order.
    pub fn metric_per_shard(&self, name: &str) -> Vec<u64> {
        let (_, body) = self.http("GET /metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.stop();
        }
    }
}

/// Sends bytes on a fresh TCP connection and reads the whole response
/// (the request should ask for `connection: close`).
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).expect("write request");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A blocking WebSocket client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    /// Connects and completes the handshake.
    pub fn connect(url: &str) -> Client {
        Client::connect_request(url.into_client_request().unwrap())
    }

    /// Connects with a prepared request (extra headers, subprotocols).
    pub fn connect_request(request: tungstenite::handshake::client::Request) -> Client {
        let uri = request.uri().clone();
        let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) = tungstenite::client::client(request, stream).expect("websocket handshake");
        Client { ws }
    }

    /// Sends a text frame.
    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Sends a binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).expect("send");
    }

    /// The next data message (text or binary), skipping pings and pongs.
    pub fn recv(&mut self) -> Message {
        self.recv_within(WAIT)
    }

    /// The next data message, waiting up to `wait`: for a test whose
    /// server has heavy work to do first (a debug build on a busy machine).
    pub fn recv_within(&mut self, wait: Duration) -> Message {
        self.ws.get_mut().set_read_timeout(Some(wait)).unwrap();
        let deadline = Instant::now() + wait;
        loop {
            assert!(Instant::now() < deadline, "no message within {wait:?}");
            match self.ws.read().expect("read a message") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next text message.
    pub fn recv_text(&mut self) -> String {
        self.recv_text_within(WAIT)
    }

    /// The next text message, waiting up to `wait` (see [`Client::recv_within`]).
    pub fn recv_text_within(&mut self, wait: Duration) -> String {
        match self.recv_within(wait) {
            Message::Text(text) => text.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// The next text message, parsed.
    pub fn recv_json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.recv_text()).expect("valid JSON")
    }

    /// Joins `topic` with join_ref = ref = `r` (V2) and checks the ok reply.
    pub fn join(&mut self, topic: &str, r: &str) {
        self.send(&format!(r#"["{r}","{r}","{topic}","phx_join",{{}}]"#));
        assert_eq!(
            self.recv_text(),
            format!(r#"["{r}","{r}","{topic}","phx_reply",{{"status":"ok","response":{{}}}}]"#)
        );
    }

    /// Sends a heartbeat and waits for its reply: everything the server sent
    /// before the reply has then been read, so it proves "nothing else came".
    pub fn sync(&mut self, r: &str) {
        self.send(&format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#));
        assert_eq!(
            self.recv_text(),
            format!(r#"[null,"{r}","phoenix","phx_reply",{{"status":"ok","response":{{}}}}]"#)
        );
    }

    /// Reads until the server's close frame and returns its code.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close within {WAIT:?}");
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
                Ok(Message::Close(None)) => return u16::from(CloseCode::Status),
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }
}

/// A raw TCP connection that has completed a WebSocket upgrade, for sending
/// frames tungstenite would refuse to produce (unmasked, invalid UTF-8...).
pub struct RawSocket {
    pub stream: TcpStream,
}

impl RawSocket {
    /// Upgrades with `vsn=2.0.0` and consumes the 101 response.
    pub fn connect(addr: SocketAddr) -> RawSocket {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let request = format!(
            "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("101 response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        RawSocket { stream }
    }

    /// Writes a client frame, masked (with a zero mask, which is legal and
    /// keeps the payload readable) unless `masked` is false.
    pub fn send_frame(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![first_byte];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n < 65536 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&[0, 0, 0, 0]);
        }
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).expect("write frame");
    }

    /// Reads server frames until a close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close frame");
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).expect("frame header");
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                self.stream.read_exact(&mut ext).unwrap();
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0u8; 8];
                self.stream.read_exact(&mut ext).unwrap();
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            if head[0] & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}
