//! Phoenix Channels messages, as a load client writes and reads them.
//!
//! Out: joins, pushes and heartbeats in the V2 array form (the JS client's
//! default) or the V1 object form. In: just enough to tell a reply (and its
//! status) from a broadcast without parsing every broadcast's payload —
//! replies are parsed fully, broadcasts are only located.

use std::io::Write;

/// The wire format, chosen with `vsn` on the socket URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Serializer {
    /// `vsn=1.0.0`: JSON objects.
    V1,
    /// `vsn=2.0.0`: JSON arrays (the JS client's default).
    V2,
}

impl Serializer {
    /// The `vsn` query value.
    pub fn vsn(self) -> &'static str {
        match self {
            Serializer::V1 => "1.0.0",
            Serializer::V2 => "2.0.0",
        }
    }
}

/// Appends a `phx_join` for `topic` with `join_ref` (also its ref).
pub fn encode_join(ser: Serializer, out: &mut Vec<u8>, topic: &str, join_ref: u64) {
    encode_join_with(ser, out, topic, join_ref, b"{}");
}

/// Appends a `phx_join` whose payload is `payload` (JSON), e.g.
/// `{"since":"…"}` to recover a history topic's missed broadcasts.
pub fn encode_join_with(
    ser: Serializer,
    out: &mut Vec<u8>,
    topic: &str,
    join_ref: u64,
    payload: &[u8],
) {
    encode_push(
        ser,
        out,
        topic,
        Some(join_ref),
        join_ref,
        "phx_join",
        payload,
    );
}

/// The join payload asking a history topic for what came after `since`
/// (any string is JSON-escaped).
pub fn since_payload(since: &str) -> Vec<u8> {
    let mut payload = b"{\"since\":".to_vec();
    payload.extend_from_slice(serde_json::Value::from(since).to_string().as_bytes());
    payload.push(b'}');
    payload
}

/// Appends a heartbeat on the `phoenix` topic, as the JS client sends it.
pub fn encode_heartbeat(ser: Serializer, out: &mut Vec<u8>, reference: u64) {
    encode_push(ser, out, "phoenix", None, reference, "heartbeat", b"{}");
}

/// Appends any client message; `payload` must be JSON.
pub fn encode_push(
    ser: Serializer,
    out: &mut Vec<u8>,
    topic: &str,
    join_ref: Option<u64>,
    reference: u64,
    event: &str,
    payload: &[u8],
) {
    let join_ref_json = match join_ref {
        Some(r) => format!("\"{r}\""),
        None => "null".to_string(),
    };
    match ser {
        Serializer::V2 => {
            let _ = write!(
                out,
                "[{join_ref_json},\"{reference}\",\"{topic}\",\"{event}\","
            );
            out.extend_from_slice(payload);
            out.push(b']');
        }
        Serializer::V1 => {
            let _ = write!(
                out,
                "{{\"topic\":\"{topic}\",\"event\":\"{event}\",\"ref\":\"{reference}\",\"join_ref\":{join_ref_json},\"payload\":"
            );
            out.extend_from_slice(payload);
            out.push(b'}');
        }
    }
}

/// What a server message is, as far as a load client cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A `phx_reply`: its ref (if numeric) and whether the status was ok.
    Reply {
        /// The ref the reply answers.
        reference: Option<u64>,
        /// `status == "ok"`.
        ok: bool,
    },
    /// `phx_close` or `phx_error` for a channel.
    ChannelEnded,
    /// A `presence_state` push.
    PresenceState,
    /// A `presence_diff` broadcast.
    PresenceDiff,
    /// Any other event: a broadcast or server push.
    Broadcast,
    /// Not a Phoenix message.
    Unparsable,
}

/// Classifies one text message. Only replies are parsed fully.
pub fn classify(ser: Serializer, message: &[u8]) -> Incoming {
    let event = match ser {
        Serializer::V2 => v2_event(message),
        Serializer::V1 => v1_event(message),
    };
    match event {
        None => Incoming::Unparsable,
        Some(b"phx_reply") => parse_reply(ser, message).unwrap_or(Incoming::Unparsable),
        Some(b"phx_close") | Some(b"phx_error") => Incoming::ChannelEnded,
        Some(b"presence_state") => Incoming::PresenceState,
        Some(b"presence_diff") => Incoming::PresenceDiff,
        Some(_) => Incoming::Broadcast,
    }
}

/// What the ok reply to a join on a history topic says about recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAnswer {
    /// `response.recovered`: whether the broadcasts after `since` follow
    /// the reply (`None` when the response has no such boolean).
    pub recovered: Option<bool>,
    /// `response.position`: the topic's current position (`None` when
    /// absent, e.g. on a topic without history).
    pub position: Option<String>,
}

/// Reads `recovered` and `position` out of a `phx_reply` (its payload's
/// `response`). `None` if `message` is not a reply with a response object.
pub fn join_answer(ser: Serializer, message: &[u8]) -> Option<JoinAnswer> {
    let value: serde_json::Value = serde_json::from_slice(message).ok()?;
    let payload = match ser {
        Serializer::V2 => value.get(4)?,
        Serializer::V1 => value.get("payload")?,
    };
    let response = payload.get("response")?.as_object()?;
    Some(JoinAnswer {
        recovered: response.get("recovered").and_then(|r| r.as_bool()),
        position: response
            .get("position")
            .and_then(|p| p.as_str())
            .map(str::to_string),
    })
}

/// The `ref` slot of a server message when it holds a string (a broadcast
/// on a history topic carries its position there); `None` for `null`, a
/// missing slot or an unparsable message. The string is returned as sent
/// (escapes, if any, are not undone).
pub fn message_ref(ser: Serializer, message: &[u8]) -> Option<&[u8]> {
    let (start, end) = match ser {
        Serializer::V2 => {
            let mut at = skip_ws(message, 0);
            if message.get(at) != Some(&b'[') {
                return None;
            }
            at = skip_ws(message, at + 1);
            at = skip_scalar(message, at)?;
            at = skip_ws(message, at);
            if message.get(at) != Some(&b',') {
                return None;
            }
            let start = skip_ws(message, at + 1);
            (start, skip_scalar(message, start)?)
        }
        Serializer::V1 => {
            let start = skip_ws(message, crate::payload::find(message, b"\"ref\":")? + 6);
            (start, skip_scalar(message, start)?)
        }
    };
    if message.get(start) != Some(&b'"') {
        return None;
    }
    message.get(start + 1..end - 1)
}

fn parse_reply(ser: Serializer, message: &[u8]) -> Option<Incoming> {
    let value: serde_json::Value = serde_json::from_slice(message).ok()?;
    let (reference, payload) = match ser {
        Serializer::V2 => (value.get(1)?, value.get(4)?),
        Serializer::V1 => (value.get("ref")?, value.get("payload")?),
    };
    let reference = reference.as_str().and_then(|r| r.parse().ok());
    let ok = payload.get("status").and_then(|s| s.as_str()) == Some("ok");
    Some(Incoming::Reply { reference, ok })
}

/// The event of a V2 array: the fourth element, found by skipping the first
/// three without parsing the payload that follows.
fn v2_event(message: &[u8]) -> Option<&[u8]> {
    let mut at = skip_ws(message, 0);
    if message.get(at) != Some(&b'[') {
        return None;
    }
    at += 1;
    for _ in 0..3 {
        at = skip_scalar(message, skip_ws(message, at))?;
        at = skip_ws(message, at);
        if message.get(at) != Some(&b',') {
            return None;
        }
        at += 1;
    }
    let start = skip_ws(message, at);
    let end = skip_scalar(message, start)?;
    message.get(start + 1..end - 1)
}

/// The event of a V1 object, found by its key.
fn v1_event(message: &[u8]) -> Option<&[u8]> {
    let key = crate::payload::find(message, b"\"event\":")? + 8;
    let start = skip_ws(message, key);
    let end = skip_scalar(message, start)?;
    message.get(start + 1..end - 1)
}

fn skip_ws(message: &[u8], mut at: usize) -> usize {
    while matches!(message.get(at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        at += 1;
    }
    at
}

/// Skips `null` or a string starting at `at`; returns the index after it.
fn skip_scalar(message: &[u8], at: usize) -> Option<usize> {
    match message.get(at)? {
        b'n' => message
            .get(at..at + 4)
            .filter(|w| *w == b"null")
            .map(|_| at + 4),
        b'"' => {
            let mut i = at + 1;
            loop {
                match message.get(i)? {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_both_serializers() {
        let mut out = Vec::new();
        encode_join(Serializer::V2, &mut out, "room:1", 3);
        assert_eq!(out, br#"["3","3","room:1","phx_join",{}]"#);
        out.clear();
        encode_heartbeat(Serializer::V1, &mut out, 9);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["topic"], "phoenix");
        assert_eq!(v["event"], "heartbeat");
        assert_eq!(v["ref"], "9");
        assert!(v["join_ref"].is_null());
    }

    #[test]
    fn classifies_replies_broadcasts_and_closes() {
        let v2 = Serializer::V2;
        assert_eq!(
            classify(
                v2,
                br#"["3","3","room:1","phx_reply",{"status":"ok","response":{}}]"#
            ),
            Incoming::Reply {
                reference: Some(3),
                ok: true
            }
        );
        assert_eq!(
            classify(
                v2,
                br#"[null,"4","room:1","phx_reply",{"status":"error","response":{"reason":"x"}}]"#
            ),
            Incoming::Reply {
                reference: Some(4),
                ok: false
            }
        );
        assert_eq!(
            classify(v2, br#"[null,null,"room:1","msg",{"q":1}]"#),
            Incoming::Broadcast
        );
        assert_eq!(
            classify(v2, br#"["3","3","room:1","phx_close",{}]"#),
            Incoming::ChannelEnded
        );
        assert_eq!(classify(v2, b"garbage"), Incoming::Unparsable);
        let v1 = br#"{"topic":"room:1","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"7","join_ref":"7"}"#;
        assert_eq!(
            classify(Serializer::V1, v1),
            Incoming::Reply {
                reference: Some(7),
                ok: true
            }
        );
        let v1b = br#"{"event":"msg","payload":{"q":1},"ref":null,"topic":"room:1"}"#;
        assert_eq!(classify(Serializer::V1, v1b), Incoming::Broadcast);
    }

    #[test]
    fn broadcasts_with_a_position_in_the_ref_slot_are_measured_like_any_other() {
        use crate::payload::{self, Stamp};
        // A history topic's broadcast carries its position where a plain
        // topic's carries null; nothing else about it changes.
        let v2 =
            br#"[null,"n3f9a1c:17","hist:bench:0","msg",{"s":0,"q":16,"w":2,"t":99,"p":"xx"}]"#;
        let v1 = br#"{"topic":"hist:bench:0","event":"msg","payload":{"s":0,"q":16,"w":2,"t":99,"p":"xx"},"ref":"n3f9a1c:17","join_ref":null}"#;
        let stamp = Stamp {
            sender: 0,
            seq: 16,
            window: 2,
            sent_ns: 99,
        };
        for (ser, message) in [(Serializer::V2, &v2[..]), (Serializer::V1, &v1[..])] {
            assert_eq!(classify(ser, message), Incoming::Broadcast, "{ser:?}");
            assert_eq!(payload::parse(message), Some(stamp), "{ser:?}");
            assert_eq!(
                message_ref(ser, message),
                Some(&b"n3f9a1c:17"[..]),
                "{ser:?}"
            );
        }
        // The fanout's accounting is the same as for a null ref.
        let mut tracker = crate::tracker::Tracker::default();
        for message in [&v2[..], &v1[..]] {
            let stamp = payload::parse(message).unwrap();
            tracker.record(stamp.sender, stamp.seq);
        }
        assert_eq!(tracker.duplicates, 1);
        assert!(tracker.has(0, 16));
        // Spaces around the slots, as another server may write them.
        let spaced = br#"[ null , "a:1" , "t" , "msg" , {"s":0,"q":1,"w":0,"t":5} ]"#;
        assert_eq!(classify(Serializer::V2, spaced), Incoming::Broadcast);
        assert_eq!(message_ref(Serializer::V2, spaced), Some(&b"a:1"[..]));
        // Plain topics: no position.
        let plain_v2 = br#"[null,null,"bench:0","msg",{"q":1}]"#;
        let plain_v1 =
            br#"{"topic":"bench:0","event":"msg","payload":{"q":1},"ref":null,"join_ref":null}"#;
        assert_eq!(message_ref(Serializer::V2, plain_v2), None);
        assert_eq!(message_ref(Serializer::V1, plain_v1), None);
    }

    #[test]
    fn join_replies_tell_recovery_and_position() {
        let v2 = br#"["1","1","hist:bench:0","phx_reply",{"status":"ok","response":{"recovered":true,"position":"n3f9a1c:17"}}]"#;
        let v1 = br#"{"topic":"hist:bench:0","event":"phx_reply","payload":{"status":"ok","response":{"position":"n3f9a1c:0"}},"ref":"1","join_ref":"1"}"#;
        assert_eq!(
            classify(Serializer::V2, v2),
            Incoming::Reply {
                reference: Some(1),
                ok: true
            }
        );
        assert_eq!(
            join_answer(Serializer::V2, v2),
            Some(JoinAnswer {
                recovered: Some(true),
                position: Some("n3f9a1c:17".into())
            })
        );
        assert_eq!(
            join_answer(Serializer::V1, v1),
            Some(JoinAnswer {
                recovered: None,
                position: Some("n3f9a1c:0".into())
            })
        );
        let plain = br#"["1","1","bench:0","phx_reply",{"status":"ok","response":{}}]"#;
        assert_eq!(
            join_answer(Serializer::V2, plain),
            Some(JoinAnswer::default())
        );
        assert_eq!(join_answer(Serializer::V2, b"nope"), None);
    }

    #[test]
    fn a_join_can_ask_to_recover_since_a_position() {
        let payload = since_payload("n3f9a1c:17");
        assert_eq!(payload, br#"{"since":"n3f9a1c:17"}"#);
        let mut out = Vec::new();
        encode_join_with(Serializer::V2, &mut out, "hist:bench:1", 2, &payload);
        assert_eq!(
            out,
            br#"["2","2","hist:bench:1","phx_join",{"since":"n3f9a1c:17"}]"#
        );
        // Whatever the server handed out is sent back as valid JSON.
        let odd = since_payload("a\"b");
        let v: serde_json::Value = serde_json::from_slice(&odd).unwrap();
        assert_eq!(v["since"], "a\"b");
    }
}
