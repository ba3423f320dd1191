//! Client→server decoding: V1 objects, V2 arrays, V2 binary
//! pushes. Every malformed input is an `Err`, never a panic; the caller
//! closes the connection with [`DecodeError::close_code`] (1007 for text
//! that names no characters, 1011 for anything else).
//!
//! Text frames are parsed by simd-json into a tape (a flat list of nodes in
//! document order). Fields are then re-emitted as compact JSON text straight
//! from the tape, so key order and duplicate keys inside a payload survive
//! exactly as the client sent them.
//!
//! Data is never altered, only re-spaced and re-escaped:
//! - `\u` escapes of unpaired UTF-16 surrogates, which simd-json turns into
//!   other characters, are refused first (`decode/surrogates.rs`);
//! - numbers the tape cannot hold or would re-spell (beyond 64 bits, floats,
//!   `-0`) send the message to a slower decoder that copies them verbatim
//!   (`decode/verbatim.rs`), with the same rules and output otherwise.
//!
//! Binary frames share nothing with text ones but the message they decode
//! to and the error type; they are decoded in `decode/binary.rs`.

mod binary;
mod surrogates;
mod verbatim;

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
    /// A `\uXXXX` escape of half a UTF-16 surrogate pair without its other
    /// half (a lone or misordered half): like invalid UTF-8, it names no
    /// character.
    #[error("string escape \\u{0:04x} is an unpaired UTF-16 surrogate")]
    UnpairedSurrogate(u16),
}

impl DecodeError {
    /// The WebSocket close code for a connection that sent this: 1007
    /// (invalid frame payload data) for text that is not valid Unicode,
    /// as for invalid UTF-8 caught by the transport; 1011 otherwise, as
    /// Phoenix closes on a message it cannot decode.
    pub fn close_code(&self) -> u16 {
        match self {
            DecodeError::InvalidUtf8 | DecodeError::UnpairedSurrogate(_) => 1007,
            _ => 1011,
        }
    }
}

/// Decodes a text frame. `text` is mutable because simd-json parses in place
/// (it unescapes strings into the buffer, so the text is garbage afterwards).
pub fn decode_text(serializer: Serializer, text: &mut [u8]) -> Result<ClientMessage, DecodeError> {
    // simd-json writes to the text only to unescape strings, so text without
    // a backslash is still intact for the verbatim decoder after it; text
    // with one is copied first. (A test below pins that behaviour.) The
    // `contains` is a memchr; the surrogate scan runs only past it.
    let pristine = if text.contains(&b'\\') {
        surrogates::check_surrogate_escapes(text)?;
        Some(text.to_vec())
    } else {
        None
    };
    validate_json(text)?;
    match simd_json::to_tape(text) {
        Ok(tape) if !has_inexact_number(&tape.0) => {
            return match serializer {
                Serializer::V1 => decode_object(&tape.0),
                Serializer::V2 => decode_array(&tape.0),
            };
        }
        Ok(_) => {}
        Err(e) => match e.error() {
            ErrorType::InvalidUtf8 => return Err(DecodeError::InvalidUtf8),
            // Numbers simd-json cannot hold, and also malformed ones (`01`,
            // `1.`): serde_json tells them apart below.
            ErrorType::InvalidNumber | ErrorType::InvalidExponent | ErrorType::Overflow => {}
            _ => return Err(DecodeError::NotJson(e.to_string())),
        },
    }
    verbatim::decode_verbatim(serializer, pristine.as_deref().unwrap_or(text))
}

/// Refuses text that is not exactly one JSON value, before simd-json sees
/// it: simd-json accepts a few malformed number tokens (an integer of 20
/// digits running into the next token, a NUL after a digit) and would turn
/// them into other data. serde_json's raw-value parse checks the grammar
/// without building anything and without a nesting limit. UTF-8 is checked
/// first, so invalid UTF-8 still closes with 1007.
fn validate_json(text: &[u8]) -> Result<(), DecodeError> {
    std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8)?;
    serde_json::from_slice::<&serde_json::value::RawValue>(text)
        .map(|_| ())
        .map_err(|e| DecodeError::NotJson(e.to_string()))
}

/// Whether the tape holds a number that would not be written back as the
/// client spelled it: any float (`1.0e2` is written `100.0`, `1e-400` `0.0`)
/// and `-0`, the only integer simd-json stores as a signed zero (`0` is a
/// `U64`). Other integers are written digit for digit as they were read.
/// The whole tape is checked, even fields that are ignored: it is one cheap
/// pass, and the verbatim decoder gives the same answer for them.
fn has_inexact_number(nodes: &[Node<'_>]) -> bool {
    nodes
        .iter()
        .any(|node| matches!(node, Node::Static(StaticNode::F64(_) | StaticNode::I64(0))))
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
        // Not reached from `decode_text`: a tape with a float goes to the
        // verbatim decoder, as this would re-spell it. Kept total: shortest
        // round-tripping form (via serde_json), `null` for NaN or infinity
        // (which simd-json never yields, and JSON cannot spell).
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
mod tests;
