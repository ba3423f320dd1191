//! Abusive connections, a few each minute: the server must refuse or
//! close every one of them without its other clients noticing.
//!
//! - *garbage*: bytes that are not HTTP (a TLS hello fragment and junk);
//! - *oversized headers*: a 32 KiB header (the server's limit is 16 KiB);
//! - *bad frame*: a real upgrade, then a frame no client may send
//!   (unmasked, reserved bit, reserved opcode, or an oversized control frame);
//! - *slowloris*: a request head dribbled one byte a second, which the
//!   server must drop after its HTTP idle timeout.
//!
//! Each ends as [`Outcome::Refused`] (an HTTP error status, a close frame,
//! or the connection closed) or [`Outcome::NotRefused`] (answered as if
//! valid, or still open at the deadline).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::http::{parse_head, Endpoints};
use super::state::{SoakShared, MINUTE_NS};
use crate::clock;
use crate::wire::{self, opcode};

/// How long an abusive connection may wait for the server's verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a slowloris dribbles before it counts as not refused.
const SLOWLORIS_LIMIT_NS: u64 = 60_000_000_000;
/// When in each minute the abuse starts.
const OFFSET_NS: u64 = 15_000_000_000;

/// What the server did with an abusive connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused or closed, as it should be; how.
    Refused(String),
    /// Let through or left open; how.
    NotRefused(String),
}

/// How reading the server's answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing more came before the deadline; the connection is open.
    Timeout,
    /// A complete answer arrived (an HTTP head, or a close frame).
    Answered,
}

/// Judges what a bad HTTP request got back.
pub fn judge_http(answer: &[u8], end: End) -> Outcome {
    match parse_head(answer) {
        Ok(Some((_, status, _, _))) if status >= 400 => Outcome::Refused(format!("HTTP {status}")),
        Ok(Some((_, status, _, _))) => Outcome::NotRefused(format!("answered HTTP {status}")),
        _ if !answer.is_empty() && end == End::Timeout => {
            Outcome::NotRefused("unparsable answer, connection left open".into())
        }
        _ => match end {
            End::Closed | End::Answered => Outcome::Refused("closed without an answer".into()),
            End::Timeout => Outcome::NotRefused(format!(
                "no answer, still open after {} s",
                VERDICT_TIMEOUT.as_secs()
            )),
        },
    }
}

/// Judges what a WebSocket that sent a malformed frame got back: the
/// server's frames after the upgrade.
pub fn judge_frames(frames: &[u8], end: End) -> Outcome {
    let mut at = 0;
    while let Ok(Some(frame)) = wire::parse_frame(&frames[at..], 1 << 20) {
        let payload = &frames[at + frame.payload_start..at + frame.end];
        if frame.opcode == opcode::CLOSE {
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 1005,
            };
            return Outcome::Refused(format!("close {code}"));
        }
        at += frame.end;
    }
    match end {
        End::Closed | End::Answered => Outcome::Refused("closed without a close frame".into()),
        End::Timeout => {
            Outcome::NotRefused(format!("still open after {} s", VERDICT_TIMEOUT.as_secs()))
        }
    }
}

/// Makes `rounds` rounds of abusive connections every minute, 15 s into
/// it, until the soak stops.
pub fn run(endpoints: Endpoints, rounds: u32, soak: Arc<SoakShared>) {
    let start = soak.start_ns.load(Ordering::Relaxed);
    let mut slowloris = Vec::new();
    let mut attempt = 0usize;
    for minute in 0u64.. {
        if soak.sleep_until(start + minute * MINUTE_NS + OFFSET_NS) {
            break;
        }
        for _ in 0..rounds {
            let (e, s) = (endpoints.clone(), soak.clone());
            slowloris.push(std::thread::spawn(move || {
                if let Some(outcome) = dribble(&e, &s) {
                    record(&s, "slowloris", outcome);
                }
            }));
            record(&soak, "garbage", garbage(&endpoints));
            record(&soak, "oversized headers", oversized(&endpoints));
            let (kind, outcome) = bad_frame(&endpoints, attempt);
            record(&soak, kind, outcome);
            attempt += 1;
        }
        slowloris.retain(|handle| !handle.is_finished());
    }
    for handle in slowloris {
        let _ = handle.join();
    }
}

fn record(soak: &SoakShared, kind: &str, outcome: Outcome) {
    let counters = &soak.counters;
    counters.abuse_attempts.fetch_add(1, Ordering::Relaxed);
    let what = match outcome {
        Outcome::Refused(how) => {
            counters.abuse_refused.fetch_add(1, Ordering::Relaxed);
            format!("{kind}: refused ({how})")
        }
        Outcome::NotRefused(how) => {
            counters.abuse_not_refused.fetch_add(1, Ordering::Relaxed);
            format!("{kind}: NOT refused ({how})")
        }
    };
    soak.note_abuse(what);
}

/// Reads until `done` says the answer is complete, the server closes, or
/// the verdict timeout passes.
fn read_answer(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, End) {
    let _ = stream.set_read_timeout(Some(VERDICT_TIMEOUT));
    let deadline = clock::now_ns() + VERDICT_TIMEOUT.as_nanos() as u64;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if done(&answer) {
            return (answer, End::Answered);
        }
        if clock::now_ns() >= deadline {
            return (answer, End::Timeout);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (answer, End::Closed),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (answer, End::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (answer, End::Closed),
        }
    }
}

fn http_head_complete(bytes: &[u8]) -> bool {
    matches!(parse_head(bytes), Ok(Some(_)) | Err(_))
}

fn connect(endpoints: &Endpoints) -> Result<TcpStream, Outcome> {
    endpoints
        .connect(VERDICT_TIMEOUT)
        .map_err(|e| Outcome::Refused(format!("connect failed: {e}")))
}

/// Not HTTP at all.
fn garbage(endpoints: &Endpoints) -> Outcome {
    let mut stream = match connect(endpoints) {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let junk = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage \x00\xff not http\r\n\r\n";
    if stream.write_all(junk).is_err() {
        return Outcome::Refused("closed while sending".into());
    }
    let (answer, end) = read_answer(&mut stream, http_head_complete);
    judge_http(&answer, end)
}

/// A request head twice the server's limit.
fn oversized(endpoints: &Endpoints) -> Outcome {
    let mut stream = match connect(endpoints) {
        Ok(stream) => stream,
        Err(outcome) => return outcome,
    };
    let mut request = format!(
        "GET {}?vsn=2.0.0 HTTP/1.1\r\nHost: {}\r\nX-Big: ",
        endpoints.websocket_path(),
        endpoints.host
    )
    .into_bytes();
    request.resize(request.len() + 32 * 1024, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let sent = stream.write_all(&request).is_ok();
    let (answer, end) = read_answer(&mut stream, http_head_complete);
    match judge_http(&answer, end) {
        Outcome::Refused(how) if !sent && answer.is_empty() => {
            Outcome::Refused(format!("{how}, while the headers were sent"))
        }
        outcome => outcome,
    }
}

/// A real upgrade, then a frame no client may send. Returns the kind
/// (which malformation) and the outcome.
fn bad_frame(endpoints: &Endpoints, attempt: usize) -> (&'static str, Outcome) {
    let mut frame = Vec::new();
    let mask = [0x11, 0x22, 0x33, 0x44];
    let kind = match attempt % 4 {
        0 => {
            frame.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
            "bad frame (unmasked)"
        }
        1 => {
            wire::encode_frame(&mut frame, opcode::TEXT, b"[]", mask);
            frame[0] |= 0x40;
            "bad frame (reserved bit)"
        }
        2 => {
            wire::encode_frame(&mut frame, 0x3, b"x", mask);
            "bad frame (reserved opcode)"
        }
        _ => {
            wire::encode_frame(&mut frame, opcode::PING, &[0u8; 200], mask);
            "bad frame (control frame over 125 bytes)"
        }
    };
    let mut stream = match connect(endpoints) {
        Ok(stream) => stream,
        Err(outcome) => return (kind, outcome),
    };
    let key = wire::websocket_key(u128::from(clock::now_ns()) << 1 | 1);
    let path = format!("{}?vsn=2.0.0", endpoints.websocket_path());
    let request = wire::upgrade_request(&endpoints.host, &path, &key, None);
    if stream.write_all(&request).is_err() {
        return (kind, Outcome::Refused("closed before the upgrade".into()));
    }
    let (answer, end) = read_answer(&mut stream, |bytes| {
        !matches!(wire::parse_upgrade_response(bytes, &key), Ok(None))
    });
    let head = match wire::parse_upgrade_response(&answer, &key) {
        Ok(Some(head)) => head,
        // The upgrade itself failed: not what this tests, but say so.
        Ok(None) => {
            return (
                kind,
                Outcome::NotRefused(format!("upgrade unanswered ({end:?})")),
            )
        }
        Err(e) => return (kind, Outcome::NotRefused(format!("upgrade failed: {e}"))),
    };
    if stream.write_all(&frame).is_err() {
        return (
            kind,
            Outcome::Refused("closed while sending the frame".into()),
        );
    }
    let leftover = answer[head..].to_vec();
    let (more, end) = read_answer(&mut stream, |bytes| {
        let mut all = leftover.clone();
        all.extend_from_slice(bytes);
        matches!(judge_frames(&all, End::Timeout), Outcome::Refused(_))
    });
    let mut all = answer[head..].to_vec();
    all.extend_from_slice(&more);
    (kind, judge_frames(&all, end))
}

/// A request head dribbled a byte a second. `None` if the soak stopped
/// first.
fn dribble(endpoints: &Endpoints, soak: &SoakShared) -> Option<Outcome> {
    let mut stream = match connect(endpoints) {
        Ok(stream) => stream,
        Err(outcome) => return Some(outcome),
    };
    let started = clock::now_ns();
    let closed = |how: &str| {
        let ms = (clock::now_ns() - started) / 1_000_000;
        soak.counters
            .slowloris_max_ms
            .fetch_max(ms, Ordering::Relaxed);
        Some(Outcome::Refused(format!(
            "{how} after {} s",
            (ms + 500) / 1000
        )))
    };
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nX-Slow: ",
        endpoints.websocket_path(),
        endpoints.host
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return closed("closed");
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut chunk = [0u8; 4096];
    loop {
        if soak.stopped() {
            return None;
        }
        if clock::now_ns() - started > SLOWLORIS_LIMIT_NS {
            return Some(Outcome::NotRefused(format!(
                "still open after {} s",
                SLOWLORIS_LIMIT_NS / 1_000_000_000
            )));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return closed("closed"),
            Ok(n) => {
                return match parse_head(&chunk[..n]) {
                    Ok(Some((_, status, _, _))) => closed(&format!("answered HTTP {status}")),
                    _ => closed("answered"),
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stream.write_all(b"a").is_err() {
                    return closed("closed");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return closed("reset"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_refusals_and_acceptances_are_told_apart() {
        let refused = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            judge_http(refused, End::Answered),
            Outcome::Refused("HTTP 431".into())
        );
        let upgraded = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert!(matches!(
            judge_http(upgraded, End::Answered),
            Outcome::NotRefused(_)
        ));
        assert!(matches!(judge_http(b"", End::Closed), Outcome::Refused(_)));
        assert!(matches!(
            judge_http(b"", End::Timeout),
            Outcome::NotRefused(_)
        ));
        assert!(matches!(
            judge_http(b"\x00junk", End::Timeout),
            Outcome::NotRefused(_)
        ));
    }

    #[test]
    fn a_close_frame_is_a_refusal_with_its_code() {
        // A text frame, then close 1002 with a reason.
        let mut frames = vec![0x81, 0x02, b'h', b'i', 0x88, 0x04];
        frames.extend_from_slice(&1002u16.to_be_bytes());
        frames.extend_from_slice(b"pe");
        assert_eq!(
            judge_frames(&frames, End::Answered),
            Outcome::Refused("close 1002".into())
        );
        assert_eq!(
            judge_frames(&[0x88, 0x00], End::Closed),
            Outcome::Refused("close 1005".into())
        );
        assert!(matches!(
            judge_frames(&[0x81, 0x00], End::Closed),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            judge_frames(&[], End::Timeout),
            Outcome::NotRefused(_)
        ));
    }
}
