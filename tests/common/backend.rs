//! A real HTTP backend for the hook tests: answers each call with what a
//! handler decides, after the handler's delay, and reports every call.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

/// Decides an answer from the call's path and body: status, body, delay.
pub type Handler = fn(&str, &serde_json::Value) -> (u16, String, Duration);

/// What the backend saw of one call: path, body, and the body's exact text.
pub type Call = (String, serde_json::Value, String);

/// Starts a backend; returns its base URL and a channel of its calls.
pub fn backend(handler: Handler) -> (String, mpsc::Receiver<Call>) {
    backend_on(0, handler)
}

/// [`backend`] on a given port (0: any free one), e.g. to bring a backend
/// up where one was down.
pub fn backend_on(port: u16, handler: Handler) -> (String, mpsc::Receiver<Call>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (seen, calls) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let l = l.to_ascii_lowercase();
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= head_end + 4 + length {
                            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                            let raw = &buf[head_end + 4..head_end + 4 + length];
                            // `Value` refuses some valid JSON (see `verbatim`): such
                            // bodies are judged by their text.
                            let body: serde_json::Value =
                                serde_json::from_slice(raw).unwrap_or_default();
                            let raw = String::from_utf8(raw.to_vec()).unwrap();
                            buf.drain(..head_end + 4 + length);
                            let (status, answer, delay) = handler(&path, &body);
                            let _ = seen.send((path, body, raw));
                            std::thread::sleep(delay);
                            let response = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                                answer.len()
                            );
                            if stream.write_all(response.as_bytes()).is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, calls)
}
