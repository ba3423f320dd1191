//! Client→server decoding: V1 objects, V2 arrays, V2 binary
//! pushes. Every malformed input is an `Err`, never a panic; the caller
//! closes the connection (1011, or 1007 for [`DecodeError::InvalidUtf8`]).
//!
//! Text frames are parsed by simd-json into a tape (a flat list of nodes in
//! document order). Fields are then re-emitted as compact JSON text straight
//! from the tape, so key order and duplicate keys inside a payload survive
//! exactly as the client sent them.
//!
//! Binary frames share nothing with text ones but the message they decode
//! to and the error type; they are decoded in `decode/binary.rs`.

mod binary;

use simd_json::{ErrorType, Node, StaticNode};
use smallvec::SmallVec;

use crate::protocol::message::{
    write_json_string_into, ByteSink, ClientMessage, Name, Payload, RawJson, Serializer,
};

pub use self::binary::decode_binary;

/// Why a client frame could not be decoded.
#[derive(thiserror::Error, Debug, PartialEq)]
pub enum DecodeError {
    /// A text frame that is not one valid JSON value.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// A text frame whose bytes are not UTF-8 (the transport usually catches
    /// this first and closes with 1007).
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// V2: the JSON value is not an array.
    #[error("expected a JSON array [join_ref, ref, topic, event, payload]")]
    NotArray,
    /// V2: the array has fewer than five elements (the count is given).
    #[error("expected at least 5 array elements, got {0}")]
    TooFewElements(usize),
    /// V1: the JSON value is not an object.
    #[error("expected a JSON object with topic, event, payload and ref")]
    NotObject,
    /// V1: a required key is absent.
    #[error("missing key {0:?}")]
    MissingKey(&'static str),
    /// Binary: the frame ends before its header or the lengths it declares.
    #[error("binary frame truncated: {needed} bytes needed, {len} present")]
    Truncated {
        /// Bytes the header says the frame must have at least.
        needed: usize,
        /// Bytes it has.
        len: usize,
    },
    /// Binary: the first byte is not 0, the only kind a client may send.
    #[error("binary frame kind {0} is not a client push (kind 0)")]
    UnknownKind(u8),
    /// Binary: a header string is not UTF-8 (the field is named).
    #[error("binary frame {0} is not valid UTF-8")]
    FieldNotUtf8(&'static str),
}

/// Decodes a text frame. `text` is mutable because simd-json parses in place
/// (it unescapes strings into the buffer, so the text is garbage afterwards).
pub fn decode_text(serializer: Serializer, text: &mut [u8]) -> Result<ClientMessage, DecodeError> {
    let tape = simd_json::to_tape(text).map_err(|e| match e.error() {
        ErrorType::InvalidUtf8 => DecodeError::InvalidUtf8,
        _ => DecodeError::NotJson(e.to_string()),
    })?;
    match serializer {
        Serializer::V1 => decode_object(&tape.0),
        Serializer::V2 => decode_array(&tape.0),
    }
}

/// `[join_ref, ref, topic, event, payload, ...]`; elements past the fifth
/// are ignored, as Phoenix does.
fn decode_array(nodes: &[Node<'_>]) -> Result<ClientMessage, DecodeError> {
    match nodes.first() {
        Some(Node::Array { len, .. }) if *len >= 5 => {}
        Some(Node::Array { len, .. }) => return Err(DecodeError::TooFewElements(*len)),
        _ => return Err(DecodeError::NotArray),
    }
    // The elements follow their array node in order; each field reader
    // returns where the next element starts.
    let (join_ref, at) = read_raw(nodes, 1)?;
    let (msg_ref, at) = read_raw(nodes, at)?;
    let (topic, at) = read_name(nodes, at)?;
    let (event, at) = read_name(nodes, at)?;
    let mut payload = Vec::new();
    write_value(nodes, at, &mut payload)?;
    Ok(ClientMessage {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// `{"topic":..,"event":..,"payload":..,"ref":..}` plus optional `join_ref`;
/// other keys are ignored and a repeated key's last value wins.
fn decode_object(nodes: &[Node<'_>]) -> Result<ClientMessage, DecodeError> {
    let Some(&Node::Object { len, .. }) = nodes.first() else {
        return Err(DecodeError::NotObject);
    };
    // Where each known key's value starts on the tape.
    let (mut topic, mut event, mut payload, mut msg_ref, mut join_ref) =
        (None, None, None, None, None);
    let mut at = 1;
    for _ in 0..len {
        let Some(&Node::String(key)) = nodes.get(at) else {
            return Err(malformed());
        };
        let value = at + 1;
        match key {
            "topic" => topic = Some(value),
            "event" => event = Some(value),
            "payload" => payload = Some(value),
            "ref" => msg_ref = Some(value),
            "join_ref" => join_ref = Some(value),
            _ => {}
        }
        at = skip_value(nodes, value)?;
    }
    let topic = topic.ok_or(DecodeError::MissingKey("topic"))?;
    let event = event.ok_or(DecodeError::MissingKey("event"))?;
    let payload = payload.ok_or(DecodeError::MissingKey("payload"))?;
    let msg_ref = msg_ref.ok_or(DecodeError::MissingKey("ref"))?;
    let join_ref = match join_ref {
        Some(at) => read_raw(nodes, at)?.0,
        None => RawJson::null(),
    };
    let mut payload_text = Vec::new();
    write_value(nodes, payload, &mut payload_text)?;
    Ok(ClientMessage {
        join_ref,
        msg_ref: read_raw(nodes, msg_ref)?.0,
        topic: read_name(nodes, topic)?.0,
        event: read_name(nodes, event)?.0,
        payload: Payload::Json(payload_text),
    })
}

/// A tape that does not have the shape simd-json promises; unreachable in
/// practice, but an error is cheaper than trusting that.
fn malformed() -> DecodeError {
    DecodeError::NotJson("malformed parse tape".to_owned())
}

/// Reads the value at `at` as compact JSON text; returns it and the index
/// after it.
fn read_raw(nodes: &[Node<'_>], at: usize) -> Result<(RawJson, usize), DecodeError> {
    let mut text = SmallVec::<[u8; 16]>::new();
    let next = write_value(nodes, at, &mut text)?;
    Ok((RawJson::from_small_vec(text), next))
}

/// Reads a topic or event: a string as itself, anything else as JSON text.
fn read_name(nodes: &[Node<'_>], at: usize) -> Result<(Name, usize), DecodeError> {
    match nodes.get(at) {
        Some(Node::String(s)) => Ok((Name::Str((*s).to_owned()), at + 1)),
        _ => read_raw(nodes, at).map(|(raw, next)| (Name::Other(raw), next)),
    }
}

/// Returns the index after the value starting at `at`, without writing it.
fn skip_value(nodes: &[Node<'_>], mut at: usize) -> Result<usize, DecodeError> {
    // Nodes still to visit: a container adds its elements (objects: a key
    // and a value per entry). Counting rather than trusting the tape's
    // `count` field keeps this correct whatever that field includes.
    let mut pending: usize = 1;
    while pending > 0 {
        let node = nodes.get(at).ok_or_else(malformed)?;
        at += 1;
        pending -= 1;
        match *node {
            Node::Array { len, .. } => pending = pending.saturating_add(len),
            Node::Object { len, .. } => pending = pending.saturating_add(len.saturating_mul(2)),
            Node::String(_) | Node::Static(_) => {}
        }
    }
    Ok(at)
}

/// One open container while writing: how many elements are still to come
/// and whether it is an object (whose elements are preceded by keys).
struct Open {
    remaining: usize,
    object: bool,
}

/// Writes the value starting at `at` as compact JSON; returns the index after
/// it. Iterative, with an explicit stack, because simd-json accepts any
/// nesting depth and recursion could overflow the thread's stack.
fn write_value<S: ByteSink>(
    nodes: &[Node<'_>],
    mut at: usize,
    out: &mut S,
) -> Result<usize, DecodeError> {
    let mut stack: SmallVec<[Open; 8]> = SmallVec::new();
    loop {
        let node = nodes.get(at).ok_or_else(malformed)?;
        at += 1;
        let opened = match *node {
            Node::String(s) => {
                write_json_string_into(out, s);
                None
            }
            Node::Static(value) => {
                write_static(out, value);
                None
            }
            Node::Array { len, .. } => open(out, b'[', b']', len, false),
            Node::Object { len, .. } => open(out, b'{', b'}', len, true),
        };
        match opened {
            Some(container) => stack.push(container),
            // A scalar or an empty container is complete: close every
            // container it completes, then separate it from the next element.
            None => loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(at);
                };
                top.remaining = top.remaining.saturating_sub(1);
                if top.remaining > 0 {
                    out.push_byte(b',');
                    break;
                }
                out.push_byte(if top.object { b'}' } else { b']' });
                stack.pop();
            },
        }
        // The next node starts an element of the innermost container; in an
        // object that element is a key, then its value.
        if stack.last().is_some_and(|top| top.object) {
            let Some(&Node::String(key)) = nodes.get(at) else {
                return Err(malformed());
            };
            write_json_string_into(out, key);
            out.push_byte(b':');
            at += 1;
        }
    }
}

/// Writes a container's opening bracket; an empty one is written whole.
fn open<S: ByteSink>(out: &mut S, start: u8, end: u8, len: usize, object: bool) -> Option<Open> {
    out.push_byte(start);
    if len == 0 {
        out.push_byte(end);
        return None;
    }
    Some(Open {
        remaining: len,
        object,
    })
}

fn write_static<S: ByteSink>(out: &mut S, value: StaticNode) {
    match value {
        StaticNode::Null => out.push_bytes(b"null"),
        StaticNode::Bool(true) => out.push_bytes(b"true"),
        StaticNode::Bool(false) => out.push_bytes(b"false"),
        StaticNode::I64(n) => {
            if n < 0 {
                out.push_byte(b'-');
            }
            write_u64(out, n.unsigned_abs());
        }
        StaticNode::U64(n) => write_u64(out, n),
        // Shortest round-tripping form (via serde_json): `1.5`, `1e+300`.
        // simd-json never yields NaN or infinity, but JSON has no spelling
        // for them, so `null` stands in rather than invalid text.
        StaticNode::F64(f) => match serde_json::Number::from_f64(f) {
            Some(number) => out.push_bytes(number.to_string().as_bytes()),
            None => out.push_bytes(b"null"),
        },
    }
}

fn write_u64<S: ByteSink>(out: &mut S, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10 < 10`, so the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_bytes(digits.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(text: &str) -> Result<ClientMessage, DecodeError> {
        decode_text(Serializer::V2, &mut text.as_bytes().to_vec())
    }

    fn v1(text: &str) -> Result<ClientMessage, DecodeError> {
        decode_text(Serializer::V1, &mut text.as_bytes().to_vec())
    }

    fn raw(text: &str) -> RawJson {
        RawJson::from_json_text(text.as_bytes())
    }

    fn json(text: &str) -> Payload {
        Payload::Json(text.as_bytes().to_vec())
    }

    #[test]
    fn v2_client_join() {
        let m = v2(r#"["3","3","room:lobby","phx_join",{"nick":"ann"}]"#).unwrap();
        assert_eq!(m.join_ref, RawJson::from_string("3"));
        assert_eq!(m.msg_ref, RawJson::from_string("3"));
        assert_eq!(m.topic, Name::Str("room:lobby".into()));
        assert_eq!(m.event, Name::Str("phx_join".into()));
        assert_eq!(m.payload, json(r#"{"nick":"ann"}"#));
    }

    #[test]
    fn v2_heartbeat_with_null_join_ref() {
        let m = v2(r#"[null,"4","phoenix","heartbeat",{}]"#).unwrap();
        assert!(m.join_ref.is_null());
        assert_eq!(m.msg_ref.as_bytes(), br#""4""#);
        assert_eq!(m.topic.as_str(), Some("phoenix"));
        assert_eq!(m.payload, json("{}"));
    }

    #[test]
    fn v2_extra_elements_ignored_and_whitespace_dropped() {
        let m = v2(" [ \"1\" , \"2\" , \"t\" , \"e\" , { \"a\" : [ 1 , 2 ] } , 6 , {\"x\":[]} ]\n")
            .unwrap();
        assert_eq!(m.msg_ref, RawJson::from_string("2"));
        assert_eq!(m.payload, json(r#"{"a":[1,2]}"#));
    }

    #[test]
    fn numbers_as_refs_stay_numbers() {
        let m = v2(r#"[7,-12,"t","e",null]"#).unwrap();
        assert_eq!(m.join_ref, raw("7"));
        assert_eq!(m.msg_ref, raw("-12"));
        assert_eq!(m.payload, json("null"));
        let m = v2(
            r#"[18446744073709551615,-9223372036854775808,"t","e",[1.5,0.25,-0.5,1e300,1.0,2E2]]"#,
        )
        .unwrap();
        assert_eq!(m.join_ref, raw("18446744073709551615"));
        assert_eq!(m.msg_ref, raw("-9223372036854775808"));
        assert_eq!(m.payload, json("[1.5,0.25,-0.5,1e+300,1.0,200.0]"));
    }

    #[test]
    fn refs_and_names_that_are_not_strings() {
        let m = v2(r#"[{"a":1},[true,false],42,null,"p"]"#).unwrap();
        assert_eq!(m.join_ref, raw(r#"{"a":1}"#));
        assert_eq!(m.msg_ref, raw("[true,false]"));
        assert_eq!(m.topic, Name::Other(raw("42")));
        assert_eq!(m.event, Name::Other(RawJson::null()));
        assert_eq!(m.payload, json(r#""p""#));
        let m = v2(r#"[null,null,{"t":[]},["e",{}],{}]"#).unwrap();
        assert_eq!(m.topic, Name::Other(raw(r#"{"t":[]}"#)));
        assert_eq!(m.event, Name::Other(raw(r#"["e",{}]"#)));
    }

    #[test]
    fn strings_are_unescaped_then_reescaped() {
        let m = v2(r#"["a\"b","\u0041\n","room:\u00e9\/x","e\\",{"k\t":"\ud83d\ude00\u0001"}]"#)
            .unwrap();
        assert_eq!(m.join_ref.as_bytes(), br#""a\"b""#);
        assert_eq!(m.msg_ref.as_bytes(), br#""A\n""#);
        assert_eq!(m.topic, Name::Str("room:é/x".into()));
        assert_eq!(m.event, Name::Str("e\\".into()));
        assert_eq!(m.payload, json("{\"k\\t\":\"😀\\u0001\"}"));
    }

    #[test]
    fn payload_key_order_and_duplicates_survive() {
        let m = v2(r#"[null,null,"t","e",{"z":1,"a":2,"z":3,"m":{"y":[],"b":{}}}]"#).unwrap();
        assert_eq!(
            m.payload,
            json(r#"{"z":1,"a":2,"z":3,"m":{"y":[],"b":{}}}"#)
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let depth = 100_000;
        let text = format!(
            r#"[null,null,"t","e",{}{}]"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let m = v2(&text).unwrap();
        let Payload::Json(p) = m.payload else {
            panic!("json")
        };
        assert_eq!(p.len(), depth * 2);
        let text = format!(
            r#"{{"topic":"t","x":{}{},"event":"e","payload":1,"ref":null}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(v1(&text).unwrap().event.as_str(), Some("e"));
    }

    #[test]
    fn v1_object() {
        let m = v1(r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#).unwrap();
        assert!(m.join_ref.is_null());
        assert_eq!(m.msg_ref, RawJson::from_string("1"));
        assert_eq!(m.topic.as_str(), Some("room:lobby"));
        assert_eq!(m.event.as_str(), Some("phx_join"));
        assert_eq!(m.payload, json("{}"));
    }

    #[test]
    fn v1_null_fields_extra_keys_and_join_ref() {
        let m =
            v1(r#"{"ref":null,"payload":null,"event":null,"topic":null,"x":{"ref":1}}"#).unwrap();
        assert!(m.msg_ref.is_null() && m.join_ref.is_null());
        assert_eq!(m.topic, Name::Other(RawJson::null()));
        assert_eq!(m.event, Name::Other(RawJson::null()));
        assert_eq!(m.payload, json("null"));
        let m = v1(r#"{"join_ref":5,"topic":"t","event":"e","payload":[1],"ref":6,"ref":"7"}"#)
            .unwrap();
        assert_eq!(m.join_ref, raw("5"));
        assert_eq!(m.msg_ref, RawJson::from_string("7"), "last duplicate wins");
        assert_eq!(m.payload, json("[1]"));
    }

    #[test]
    fn error_not_json() {
        for bad in [
            "",
            "[",
            "[1,2",
            "{\"a\"}",
            "nul",
            "[1] x",
            "[\"\\x\"]",
            "1e999999",
            " ",
        ] {
            assert!(matches!(v2(bad), Err(DecodeError::NotJson(_))), "{bad:?}");
            assert!(matches!(v1(bad), Err(DecodeError::NotJson(_))), "{bad:?}");
        }
    }

    #[test]
    fn error_invalid_utf8() {
        let mut text = b"[null,null,\"\xff\",\"e\",{}]".to_vec();
        assert_eq!(
            decode_text(Serializer::V2, &mut text),
            Err(DecodeError::InvalidUtf8)
        );
        assert_eq!(
            DecodeError::InvalidUtf8.to_string(),
            "text is not valid UTF-8"
        );
    }

    #[test]
    fn error_v2_shape() {
        assert_eq!(v2(r#"{"topic":"t"}"#), Err(DecodeError::NotArray));
        assert_eq!(v2("\"x\""), Err(DecodeError::NotArray));
        assert_eq!(v2("[]"), Err(DecodeError::TooFewElements(0)));
        assert_eq!(
            v2(r#"[null,"1","t","e"]"#),
            Err(DecodeError::TooFewElements(4))
        );
        assert_eq!(
            DecodeError::TooFewElements(4).to_string(),
            "expected at least 5 array elements, got 4"
        );
    }

    #[test]
    fn error_v1_shape() {
        // A V2 array on a V1 connection: Phoenix's "expected a map".
        assert_eq!(v1(r#"[null,"1","t","e",{}]"#), Err(DecodeError::NotObject));
        assert_eq!(v1("7"), Err(DecodeError::NotObject));
        let full = [
            ("topic", r#""t""#),
            ("event", r#""e""#),
            ("payload", "{}"),
            ("ref", "null"),
        ];
        for (missing, _) in full {
            let fields: Vec<String> = full
                .iter()
                .filter(|(k, _)| *k != missing)
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let text = format!("{{{}}}", fields.join(","));
            assert_eq!(v1(&text), Err(DecodeError::MissingKey(missing)), "{text}");
        }
        assert_eq!(
            DecodeError::MissingKey("ref").to_string(),
            "missing key \"ref\""
        );
    }
}
