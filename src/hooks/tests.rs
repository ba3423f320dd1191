//! The pool against a real HTTP backend on loopback.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A backend answering every request after `delay` with `status` and
/// `body`; sends each received request head+body to the returned channel.
fn backend(delay: Duration, status: u16, body: &'static str) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + length {
                        continue;
                    }
                    let _ = seen.send(text);
                    std::thread::sleep(delay);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                    buf.clear();
                }
            });
        }
    });
    (url, requests)
}

fn pool(url: String, timeout_ms: u64, workers: usize, queue_size: usize) -> HookPool {
    HookPool::start(&HooksConfig {
        url: Some(url),
        timeout_ms,
        workers,
        queue_size,
        secret: Some("s3".into()),
        ..HooksConfig::default()
    })
    .unwrap()
}

fn call(pool: &HookPool, path: &'static str, idempotent: bool) -> mpsc::Receiver<HookOutcome> {
    let (tx, rx) = mpsc::channel();
    pool.submit(
        HookRequest {
            path,
            body: br#"{"topic":"room:1"}"#.to_vec(),
            idempotent,
        },
        Box::new(move |outcome| {
            let _ = tx.send(outcome);
        }),
    );
    rx
}

#[test]
fn a_response_of_any_status_comes_back_with_its_body() {
    let (url, requests) = backend(Duration::ZERO, 200, r#"{"ok":1}"#);
    let pool = pool(url, 2000, 2, 8);
    let outcome = call(&pool, "join", true)
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        outcome,
        HookOutcome::Response {
            status: 200,
            body: br#"{"ok":1}"#.to_vec()
        }
    );
    let request = requests.recv().unwrap();
    assert!(
        request.starts_with("POST /hooks/join HTTP/1.1"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer s3"),
        "{request}"
    );
    assert!(request.contains(r#"{"topic":"room:1"}"#), "{request}");
    let (url, _) = backend(Duration::ZERO, 403, r#"{"reason":"no"}"#);
    let pool = super::pool::HookPool::start(&HooksConfig {
        url: Some(url),
        ..HooksConfig::default()
    })
    .unwrap();
    let outcome = call(&pool, "event", false)
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(outcome, HookOutcome::Response { status: 403, .. }),
        "{outcome:?}"
    );
}

#[test]
fn a_slow_backend_times_out_and_a_missing_one_is_unreachable() {
    let (url, _) = backend(Duration::from_secs(3), 200, "{}");
    let pool = pool(url, 200, 1, 8);
    let started = Instant::now();
    let outcome = call(&pool, "join", false)
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(outcome, HookOutcome::Failed(HookFailure::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let pool = self::pool(url, 1000, 1, 8);
    let outcome = call(&pool, "connect", true)
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert!(
        matches!(outcome, HookOutcome::Failed(HookFailure::Unreachable(_))),
        "{outcome:?}"
    );
    assert_eq!(
        pool.stats()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_full_queue_fails_fast_and_every_caller_hears_back_once() {
    let (url, _) = backend(Duration::from_millis(300), 200, "{}");
    let pool = pool(url, 2000, 1, 1);
    let receivers: Vec<_> = (0..4).map(|_| call(&pool, "event", false)).collect();
    let outcomes: Vec<HookOutcome> = receivers
        .iter()
        .map(|rx| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    let overloaded = outcomes
        .iter()
        .filter(|o| **o == HookOutcome::Failed(HookFailure::Overloaded))
        .count();
    assert!(overloaded >= 2, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, HookOutcome::Response { .. })));
    for rx in &receivers {
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "a completion ran twice"
        );
    }
    pool.shutdown();
    let outcome = call(&pool, "event", false)
        .recv_timeout(Duration::from_secs(1))
        .unwrap();
    assert_eq!(outcome, HookOutcome::Failed(HookFailure::Overloaded));
}
