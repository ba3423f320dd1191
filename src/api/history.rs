//! `GET /api/history?topic=…&since=…&limit=…`: a history topic's held
//! broadcasts, oldest first.
//!
//! The answer:
//!
//! ```json
//! {"topic":"room:1","position":"n5c1e0a93f2:57","complete":true,
//!  "messages":[{"position":"n5c1e0a93f2:56","event":"new_msg",
//!               "payload":{"body":"hi"},"published_at_ms":1764800000000}, …]}
//! ```
//!
//! `position` is the topic's newest; `complete` says whether every
//! broadcast after `since` is held (when `false`, `reason` says why, as a
//! join's `recovered: false` would). At most `limit` messages are returned:
//! ask again with the last one's position as `since` for the next page.

use std::sync::Arc;

use crate::fanout::broadcast::Broadcast;
use crate::history::{Position, RecoveryFailure};
use crate::protocol::message::{write_json_string, Payload};
use crate::transport::query::{last_value, parse_pairs};

/// The endpoint's path.
pub const PATH: &str = "/api/history";

/// A valid request's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The topic.
    pub topic: String,
    /// Broadcasts after this position; all held ones when `None`.
    pub since: Option<Position>,
    /// Most broadcasts to return.
    pub limit: usize,
}

/// Reads the query string; the error is the `400` answer's reason.
pub fn parse_query(query: &str, max_limit: usize) -> Result<HistoryQuery, String> {
    let pairs = parse_pairs(query);
    let topic = last_value(&pairs, "topic")
        .filter(|t| !t.is_empty())
        .ok_or("the topic query parameter is required: /api/history?topic=room:1")?;
    let since = match last_value(&pairs, "since").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            Some(Position::parse(text).ok_or("since is not a position this server gives out")?)
        }
    };
    let limit = match last_value(&pairs, "limit") {
        None => max_limit,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max_limit).contains(n))
            .ok_or_else(|| format!("limit must be a number from 1 to {max_limit}"))?,
    };
    Ok(HistoryQuery {
        topic: topic.to_string(),
        since,
        limit,
    })
}

/// The answer's JSON body.
pub fn page_json(
    topic: &str,
    position: &Position,
    messages: &[Arc<Broadcast>],
    complete: Result<(), RecoveryFailure>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + messages.len() * 96);
    out.extend_from_slice(br#"{"topic":"#);
    write_json_string(&mut out, topic);
    out.extend_from_slice(br#","position":"#);
    write_json_string(&mut out, &position.to_string());
    match complete {
        Ok(()) => out.extend_from_slice(br#","complete":true"#),
        Err(reason) => {
            out.extend_from_slice(br#","complete":false,"reason":"#);
            write_json_string(&mut out, reason.as_str());
        }
    }
    out.extend_from_slice(br#","messages":["#);
    for (i, broadcast) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"position":"#);
        let position = broadcast
            .position()
            .map(ToString::to_string)
            .unwrap_or_default();
        write_json_string(&mut out, &position);
        out.extend_from_slice(br#","event":"#);
        write_json_string(&mut out, broadcast.event());
        out.extend_from_slice(br#","payload":"#);
        match broadcast.payload() {
            Payload::Json(json) => out.extend_from_slice(json),
            // Binary payloads are refused on history topics.
            Payload::Binary(_) => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(
            format!(r#","published_at_ms":{}}}"#, broadcast.published_at_ms()).as_bytes(),
        );
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let query = parse_query("topic=room%3A1&since=e1%3A5&limit=10", 100).unwrap();
        assert_eq!(query.topic, "room:1");
        assert_eq!(query.since, Position::parse("e1:5"));
        assert_eq!(query.limit, 10);
        assert_eq!(parse_query("topic=t", 100).unwrap().limit, 100);
        assert!(parse_query("since=e1:5", 100).is_err());
        assert!(parse_query("topic=t&since=17", 100).is_err());
        assert!(parse_query("topic=t&limit=0", 100).is_err());
        assert!(parse_query("topic=t&limit=101", 100).is_err());
    }

    #[test]
    fn the_page_is_json() {
        let position = Position::parse("e1:0").unwrap();
        let body = page_json("t\"", &position, &[], Err(RecoveryFailure::Trimmed));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["topic"], "t\"");
        assert_eq!(value["complete"], false);
        assert_eq!(value["reason"], "trimmed");
        assert_eq!(value["messages"], serde_json::json!([]));
    }
}
