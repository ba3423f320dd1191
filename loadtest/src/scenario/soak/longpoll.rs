//! Long-poll clients: the exchange of Phoenix's `LongPoll` transport over
//! plain blocking HTTP/1.1, one thread per client.
//!
//! ```text
//! GET  /socket/longpoll?vsn=2.0.0            → {"status":410,"token":T,"messages":[]}
//! POST /socket/longpoll?vsn=2.0.0&token=T    ["1","1",topic,"phx_join",{}]  → {"status":200}
//! GET  /socket/longpoll?vsn=2.0.0&token=T    → {"status":200,"token":T,"messages":[…]}  (or 204 after the window)
//! ```
//! Polls go over one keep-alive connection; each POST (the join, and a
//! heartbeat every 30 s, as the JS client sends) over its own, since a
//! poll may be held when it is sent. A poll answered `410` means the
//! server ended the session: the client opens a new one and joins again.
//!
//! Each session tracks the sequence numbers it receives; numbers missing
//! between its first and last are counted as gaps (reported, not charged
//! as lost: only the healthy WebSocket subscribers are).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::http::{read_response, write_request, Endpoints};
use super::state::SoakShared;
use crate::clock;
use crate::payload;
use crate::phoenix::{self, Incoming, Serializer};
use crate::tracker::Tracker;

/// How often a session sends a heartbeat.
const HEARTBEAT_NS: u64 = 30_000_000_000;
/// A poll is held at most the server's window (10 s by default).
const POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// The ref of the join (and its join_ref).
const JOIN_REF: u64 = 1;

/// A poll's (or the session opening's) JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PollAnswer {
    /// The logical status: 200, 204, 410, 403…
    pub status: u16,
    /// The session token (for 200, 204 and 410).
    #[serde(default)]
    pub token: Option<String>,
    /// Each message is one frame's JSON text.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// Parses a long-poll answer body.
pub fn parse_answer(body: &[u8]) -> Result<PollAnswer, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "unparsable long-poll answer ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })
}

/// What one session received.
#[derive(Debug, Default)]
pub struct Received {
    tracker: Tracker,
    first: Option<u64>,
    last: u64,
    /// The join's answer, once it came.
    pub joined: Option<bool>,
    /// Measured messages received.
    pub messages: u64,
}

impl Received {
    /// Takes in one message of a poll answer.
    pub fn take(&mut self, message: &str) {
        match phoenix::classify(Serializer::V2, message.as_bytes()) {
            Incoming::Reply {
                reference: Some(JOIN_REF),
                ok,
            } => self.joined = Some(ok),
            Incoming::Broadcast => {
                if let Some(stamp) = payload::parse(message.as_bytes()) {
                    self.tracker.record(stamp.sender, stamp.seq);
                    self.messages += 1;
                    self.first = Some(self.first.map_or(stamp.seq, |f| f.min(stamp.seq)));
                    self.last = self.last.max(stamp.seq);
                }
            }
            _ => {}
        }
    }

    /// Sequence numbers missing between the first and the last received.
    pub fn gaps(&self) -> u64 {
        let Some(first) = self.first else {
            return 0;
        };
        let span = self.last + 1 - first;
        let got =
            self.tracker.distinct_below(0, self.last + 1) - self.tracker.distinct_below(0, first);
        span - got
    }
}

/// Runs one long-poll client on `topic` until the soak stops.
pub fn run(endpoints: Endpoints, topic: Arc<str>, soak: Arc<SoakShared>) {
    while !soak.stopped() {
        if let Err(e) = session(&endpoints, &topic, &soak) {
            soak.counters
                .longpoll_errors
                .fetch_add(1, Ordering::Relaxed);
            soak.note_failure(format!("longpoll: {e}"));
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// One session: open, join, poll until the server ends it or the soak stops.
fn session(endpoints: &Endpoints, topic: &str, soak: &SoakShared) -> Result<(), String> {
    let counters = &soak.counters;
    let path = endpoints.longpoll_path();
    let mut conn = endpoints.connect(POLL_TIMEOUT).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let opened = poll(endpoints, &mut conn, &mut buf, &format!("{path}?vsn=2.0.0"))?;
    if opened.status != 410 {
        return Err(format!("opening a session answered {}", opened.status));
    }
    let mut token = opened.token.ok_or("no token in the 410 answer")?;
    counters.longpoll_sessions.fetch_add(1, Ordering::Relaxed);
    let join = format!(r#"["{JOIN_REF}","{JOIN_REF}","{topic}","phx_join",{{}}]"#);
    post(endpoints, &path, &token, &join)?;
    let mut received = Received::default();
    let mut next_heartbeat = clock::now_ns() + HEARTBEAT_NS;
    let mut next_ref = JOIN_REF + 1;
    let result = loop {
        if soak.stopped() {
            break Ok(());
        }
        if clock::now_ns() >= next_heartbeat {
            next_heartbeat += HEARTBEAT_NS;
            let heartbeat = format!(r#"[null,"{next_ref}","phoenix","heartbeat",{{}}]"#);
            next_ref += 1;
            if let Err(e) = post(endpoints, &path, &token, &heartbeat) {
                break Err(e);
            }
        }
        let answer = match poll(
            endpoints,
            &mut conn,
            &mut buf,
            &format!("{path}?vsn=2.0.0&token={token}"),
        ) {
            Ok(answer) => answer,
            Err(e) => break Err(e),
        };
        counters.longpoll_polls.fetch_add(1, Ordering::Relaxed);
        match answer.status {
            200 | 204 => {
                if let Some(new) = answer.token {
                    token = new;
                }
                let before = received.messages;
                for message in &answer.messages {
                    received.take(message);
                }
                counters
                    .longpoll_messages
                    .fetch_add(received.messages - before, Ordering::Relaxed);
                if received.joined == Some(false) {
                    break Err(format!("join of {topic} refused"));
                }
            }
            410 => {
                counters.longpoll_restarts.fetch_add(1, Ordering::Relaxed);
                break Ok(());
            }
            status => break Err(format!("poll answered {status}")),
        }
    };
    counters
        .longpoll_gaps
        .fetch_add(received.gaps(), Ordering::Relaxed);
    result
}

/// One GET on the keep-alive connection (reconnecting once if the server
/// had closed it).
fn poll(
    endpoints: &Endpoints,
    conn: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    path: &str,
) -> Result<PollAnswer, String> {
    let attempt = |conn: &mut std::net::TcpStream, buf: &mut Vec<u8>| {
        write_request(conn, "GET", path, &endpoints.host, &[], b"", true)?;
        read_response(conn, buf)
    };
    let response = match attempt(conn, buf) {
        Ok(response) => response,
        Err(_) => {
            *conn = endpoints.connect(POLL_TIMEOUT).map_err(|e| e.to_string())?;
            buf.clear();
            attempt(conn, buf).map_err(|e| format!("poll: {e}"))?
        }
    };
    if response.close {
        *conn = endpoints.connect(POLL_TIMEOUT).map_err(|e| e.to_string())?;
        buf.clear();
    }
    if response.status != 200 {
        return Err(format!("poll got HTTP {}", response.status));
    }
    parse_answer(&response.body)
}

/// One POST of one frame, on its own connection; the logical status must be 200.
fn post(endpoints: &Endpoints, path: &str, token: &str, frame: &str) -> Result<(), String> {
    let mut conn = endpoints
        .connect(Duration::from_secs(15))
        .map_err(|e| e.to_string())?;
    write_request(
        &mut conn,
        "POST",
        &format!("{path}?vsn=2.0.0&token={token}"),
        &endpoints.host,
        &[("Content-Type", "application/json")],
        frame.as_bytes(),
        false,
    )
    .map_err(|e| format!("post: {e}"))?;
    let response = read_response(&mut conn, &mut Vec::new()).map_err(|e| format!("post: {e}"))?;
    let answer = parse_answer(&response.body)?;
    if answer.status != 200 {
        return Err(format!("post answered {}", answer.status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_and_without_token_and_messages() {
        let opened = parse_answer(br#"{"status":410,"token":"T1","messages":[]}"#).unwrap();
        assert_eq!(
            opened,
            PollAnswer {
                status: 410,
                token: Some("T1".into()),
                messages: vec![]
            }
        );
        assert_eq!(parse_answer(br#"{"status":200}"#).unwrap().status, 200);
        assert!(parse_answer(b"<html>").is_err());
    }

    #[test]
    fn a_session_sees_its_join_reply_broadcasts_and_gaps() {
        let body = r#"{"status":200,"token":"T2","messages":[
            "[\"1\",\"1\",\"soak:0\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]",
            "[null,null,\"soak:0\",\"msg\",{\"s\":0,\"q\":100,\"w\":0,\"t\":5,\"p\":\"x\"}]",
            "[null,null,\"soak:0\",\"msg\",{\"s\":0,\"q\":101,\"w\":0,\"t\":6,\"p\":\"x\"}]",
            "[null,null,\"soak:0\",\"msg\",{\"s\":0,\"q\":104,\"w\":0,\"t\":7,\"p\":\"x\"}]",
            "[null,null,\"soak:0\",\"msg\",{\"s\":0,\"q\":104,\"w\":0,\"t\":7,\"p\":\"x\"}]"
        ]}"#;
        let answer = parse_answer(body.as_bytes()).unwrap();
        let mut received = Received::default();
        assert_eq!(received.gaps(), 0);
        for message in &answer.messages {
            received.take(message);
        }
        assert_eq!(received.joined, Some(true));
        assert_eq!(received.messages, 4);
        // 100..=104 spans five; 102 and 103 are missing.
        assert_eq!(received.gaps(), 2);
    }
}
