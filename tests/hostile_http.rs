//! Regression tests for what an attack over loopback found, each over a
//! real socket: chunked bodies that never end or are split absurdly,
//! requests that dribble in, a batch bigger than the send buffer limit,
//! pipelined answers nobody reads, RFC details of HTTP and the upgrade,
//! and the close a slow consumer gets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{RawSocket, TestServer, WAIT};

/// Writes `request` and reads until the server closes (or `WAIT` passes).
fn exchange(server: &TestServer, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // The server may answer (and close) before everything is written.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// Whether the server closed the connection: a read returns EOF or a reset.
fn is_closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
}

const CHUNKED_HEAD: &str = "POST /api/broadcast HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";

#[test]
fn endless_trailers_and_extensions_are_refused_and_others_keep_receiving() {
    let server = TestServer::start("");
    let mut healthy = server.connect();
    healthy.join("room:calm", "1");
    // A body that ends, then trailers without end.
    let mut trailers = format!("{CHUNKED_HEAD}2\r\n{{}}\r\n0\r\n").into_bytes();
    for i in 0..20_000 {
        trailers.extend_from_slice(format!("x-pad-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    assert_eq!(status_of(&exchange(&server, &trailers)), 431);
    // One-byte chunks carrying long extensions.
    let mut extensions = CHUNKED_HEAD.as_bytes().to_vec();
    for _ in 0..2_000 {
        extensions.extend_from_slice(format!("1;{}\r\n \r\n", "e".repeat(1000)).as_bytes());
    }
    assert_eq!(status_of(&exchange(&server, &extensions)), 431);
    // The shard was never stalled: the healthy subscriber is served.
    let (status, _) = server.publish(r#"{"topic":"room:calm","event":"still","payload":{}}"#);
    assert_eq!(status, 200);
    assert!(healthy.recv_text().contains("still"));
}

#[test]
fn a_body_in_one_byte_chunks_is_decoded_and_its_wire_size_is_bounded() {
    let server = TestServer::start("[api]\nmax_body_size = 65536\n");
    let mut subscriber = server.connect();
    subscriber.join("room:bytes", "1");
    let body = format!(
        r#"{{"topic":"room:bytes","event":"e","payload":{{"s":"{}"}}}}"#,
        "z".repeat(5_000)
    );
    let mut wire = CHUNKED_HEAD
        .replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n")
        .into_bytes();
    for byte in body.bytes() {
        wire.extend_from_slice(b"1\r\n");
        wire.push(byte);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // Written in small pieces, as an attacker would, to make many reads.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    for piece in wire.chunks(7) {
        stream.write_all(piece).unwrap();
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    assert_eq!(
        status_of(&response),
        200,
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(subscriber.recv_text().contains(&"z".repeat(5_000)));
    // The same body framed in one-byte chunks is over the limit on the wire
    // once its framing passes max_body_size (6 bytes per body byte here).
    let big = format!(
        r#"{{"topic":"room:bytes","event":"e","payload":{{"s":"{}"}}}}"#,
        "z".repeat(20_000)
    );
    let mut wire = CHUNKED_HEAD.as_bytes().to_vec();
    for byte in big.bytes() {
        wire.extend_from_slice(format!("1\r\n{}\r\n", byte as char).as_bytes());
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&exchange(&server, &wire)), 413);
}

#[test]
fn a_request_that_dribbles_in_is_dropped_at_its_deadline() {
    let server = TestServer::start("http_idle_timeout_ms = 1000\n");
    let started = Instant::now();
    let mut dribblers: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let request = b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = vec![false; dribblers.len()];
    // One byte every 100 ms keeps each connection active far more often
    // than the idle timeout, but the request never completes.
    for &byte in request.iter() {
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
        for (i, stream) in dribblers.iter_mut().enumerate() {
            if !closed[i] && stream.write_all(&[byte]).is_err() {
                closed[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, stream) in dribblers.iter_mut().enumerate() {
        closed[i] = closed[i] || is_closed(stream);
    }
    assert!(
        closed.iter().all(|c| *c),
        "dribbling connections still open after {:?}: {closed:?}",
        started.elapsed()
    );
    // A prompt request on a fresh connection is still served.
    let (status, _) = server.http("GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn one_legal_batch_bigger_than_the_send_buffer_does_not_close_fast_readers() {
    // Default limits: max_batch 1000, max_body_size 8 MiB, send_buffer_limit
    // 1 MiB. The slow-consumer timeout is long here so that a debug-built
    // client on a busy machine, reading 8 MB, is not mistaken for a slow one:
    // what is tested is that the batch alone, queued at once, closes no one.
    let server = TestServer::start("[socket]\nslow_consumer_timeout_ms = 60000\n");
    let mut readers: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for (i, reader) in readers.iter_mut().enumerate() {
        reader.join("room:batch", &i.to_string());
    }
    let pad = "p".repeat(8_000);
    let messages: Vec<String> = (0..1000)
        .map(|i| {
            format!(r#"{{"topic":"room:batch","event":"m","payload":{{"i":{i},"pad":"{pad}"}}}}"#)
        })
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, messages.join(","));
    let publisher = {
        let addr = server.addr;
        std::thread::spawn(move || {
            let request = format!(
                "POST /api/broadcast HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            status_of(&response)
        })
    };
    // Each reader reads as fast as it can, one after the other. The first
    // message comes only once a debug build has parsed 8 MB, which on a busy
    // machine takes longer than the usual wait.
    for reader in &mut readers {
        for i in 0..1000 {
            let text = reader.recv_text_within(Duration::from_secs(60));
            assert!(
                text.contains(&format!(r#"{{"i":{i},"#)),
                "message {i} out of order"
            );
        }
    }
    assert_eq!(publisher.join().unwrap(), 200);
    assert_eq!(server.metric("cinder_slow_consumer_closes_total"), 0);
}

#[test]
fn pipelined_answers_nobody_reads_close_the_connection_as_http() {
    let server = TestServer::start("[socket]\nsend_buffer_limit = 65536\n");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n".repeat(5000);
    // Written without reading: the server stops reading once its answers
    // pile up, so the write may not complete.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(&request);
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    // Only whole HTTP responses, then EOF: no WebSocket close frame.
    let mut at = 0;
    let mut responses = 0;
    while at < received.len() {
        let rest = &received[at..];
        assert!(
            rest.starts_with(b"HTTP/1.1 200"),
            "not an HTTP response at byte {at}: {:?}",
            &rest[..rest.len().min(16)]
        );
        let head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("whole head")
            + 4;
        let head = String::from_utf8_lossy(&rest[..head_end]);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        assert!(rest.len() >= head_end + length, "a response cut short");
        at += head_end + length;
        responses += 1;
    }
    assert!(responses > 0 && responses < 5000, "{responses} responses");
}

#[test]
fn rfc_details_of_http_and_the_upgrade() {
    let server = TestServer::start("");
    // 426 names the version the server speaks (RFC 6455 §4.4).
    let upgrade = "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 8\r\n\r\n";
    let response = String::from_utf8(exchange(&server, upgrade.as_bytes())).unwrap();
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nsec-websocket-version: 13\r\n"),
        "{response}"
    );
    // An HTTP/1.0 upgrade is refused.
    let old = upgrade
        .replace("HTTP/1.1", "HTTP/1.0")
        .replace("version: 8", "version: 13");
    assert_eq!(status_of(&exchange(&server, old.as_bytes())), 400);
    // chunked must be the only transfer coding (RFC 9112 §6.3).
    let mixed = "POST /api/broadcast HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(&exchange(&server, mixed.as_bytes())), 400);
    // Expect: 100-continue gets 100 Continue before the body is sent.
    let body = r#"{"topic":"room:x","event":"e","payload":{}}"#;
    let head = format!(
        "POST /api/broadcast HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert_eq!(status_of(&rest), 200);
}

#[test]
fn a_slow_consumer_that_reads_again_sees_its_1008_close() {
    let server =
        TestServer::start("[socket]\nsend_buffer_limit = 65536\nslow_consumer_timeout_ms = 300\n");
    let mut stuck = RawSocket::connect(server.addr);
    stuck.send_frame(0x81, br#"["1","1","room:slow","phx_join",{}]"#, true);
    std::thread::sleep(Duration::from_millis(100));
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let batch: Vec<String> = (0..50)
        .map(|_| format!(r#"{{"topic":"room:slow","event":"m","payload":{payload}}}"#))
        .collect();
    let body = format!(r#"{{"messages":[{}]}}"#, batch.join(","));
    let deadline = Instant::now() + WAIT;
    while server.metric("cinder_slow_consumer_closes_total") == 0 {
        assert!(Instant::now() < deadline, "never closed as slow");
        assert_eq!(server.publish(&body).0, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // It reads again, a few seconds later: after the frames the kernel
    // already held comes the close frame, not an abnormal end.
    std::thread::sleep(Duration::from_secs(2));
    stuck
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(stuck.expect_close(), 1008);
}
