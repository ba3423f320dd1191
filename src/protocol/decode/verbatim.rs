//! The slow path of text decoding: serde_json's `RawValue` keeps each field
//! as the client's text, so numbers come out exactly as they came in.
//!
//! The tape path cannot do that: simd-json keeps a number only as an `i64`,
//! `u64` or `f64`. It refuses integers beyond 64 bits and floats beyond
//! `f64` (`99999999999999999999`, `1e309`), and any float it does take is
//! written back in another spelling (`1.0e2` → `100.0`, `1e-400` → `0.0`),
//! as is `-0` (→ `0`). Messages with such numbers are decoded here instead,
//! with the same rules and errors as the tape path and the same output for
//! everything but the numbers: compact JSON, strings re-escaped alike.

use std::collections::HashMap;

use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::DecodeError;
use crate::protocol::message::{
    write_json_string_into, ByteSink, ClientMessage, Name, Payload, RawJson, Serializer,
};

/// Decodes a text frame without converting its numbers. `text` is the frame
/// as the client sent it (unlike the tape path, this one does not write to it).
pub(super) fn decode_verbatim(
    serializer: Serializer,
    text: &[u8],
) -> Result<ClientMessage, DecodeError> {
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8)?;
    // Validates the whole frame (one value, nothing after it) without
    // converting any number; the value's text excludes surrounding space.
    let value: &RawValue = serde_json::from_str(text).map_err(not_json)?;
    match serializer {
        Serializer::V1 => decode_object(value.get()),
        Serializer::V2 => decode_array(value.get()),
    }
}

/// `[join_ref, ref, topic, event, payload, ...]`, as the tape path.
fn decode_array(value: &str) -> Result<ClientMessage, DecodeError> {
    if !value.starts_with('[') {
        return Err(DecodeError::NotArray);
    }
    let elements: Vec<&RawValue> = serde_json::from_str(value).map_err(not_json)?;
    let [join_ref, msg_ref, topic, event, payload, ..] = elements.as_slice() else {
        return Err(DecodeError::TooFewElements(elements.len()));
    };
    Ok(ClientMessage {
        join_ref: read_raw(join_ref)?,
        msg_ref: read_raw(msg_ref)?,
        topic: read_name(topic)?,
        event: read_name(event)?,
        payload: read_payload(payload)?,
    })
}

/// `{"topic":..,"event":..,"payload":..,"ref":..}` plus optional `join_ref`,
/// as the tape path: other keys are ignored and a repeated key's last value
/// wins (the map keeps the last insertion).
fn decode_object(value: &str) -> Result<ClientMessage, DecodeError> {
    if !value.starts_with('{') {
        return Err(DecodeError::NotObject);
    }
    let fields: HashMap<String, &RawValue> = serde_json::from_str(value).map_err(not_json)?;
    let field = |key: &'static str| fields.get(key).copied().ok_or(DecodeError::MissingKey(key));
    let (topic, event, payload, msg_ref) = (
        field("topic")?,
        field("event")?,
        field("payload")?,
        field("ref")?,
    );
    Ok(ClientMessage {
        join_ref: match fields.get("join_ref") {
            Some(join_ref) => read_raw(join_ref)?,
            None => RawJson::null(),
        },
        msg_ref: read_raw(msg_ref)?,
        topic: read_name(topic)?,
        event: read_name(event)?,
        payload: read_payload(payload)?,
    })
}

fn read_raw(value: &RawValue) -> Result<RawJson, DecodeError> {
    let mut text = SmallVec::<[u8; 16]>::new();
    compact(value.get(), &mut text)?;
    Ok(RawJson::from_small_vec(text))
}

/// A string as itself, anything else as compact JSON text.
fn read_name(value: &RawValue) -> Result<Name, DecodeError> {
    if value.get().starts_with('"') {
        return serde_json::from_str(value.get())
            .map(Name::Str)
            .map_err(not_json);
    }
    read_raw(value).map(Name::Other)
}

fn read_payload(value: &RawValue) -> Result<Payload, DecodeError> {
    let mut text = Vec::with_capacity(value.get().len());
    compact(value.get(), &mut text)?;
    Ok(Payload::Json(text))
}

fn not_json(error: serde_json::Error) -> DecodeError {
    DecodeError::NotJson(error.to_string())
}

/// Appends `json`, one valid JSON value, as compact JSON: whitespace outside
/// strings is dropped, numbers and literals are copied byte for byte, and a
/// string with escapes is unescaped and re-escaped the way the tape path
/// writes strings (`"\u0041"` → `"A"`), so both paths give the same text for
/// the same message. A string without escapes is already in that form.
pub(super) fn compact<S: ByteSink>(json: &str, out: &mut S) -> Result<(), DecodeError> {
    let bytes = json.as_bytes();
    // Bytes from `run` up to `at` are still to be copied as they are.
    let (mut at, mut run) = (0, 0);
    while let Some(&b) = bytes.get(at) {
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_bytes(bytes.get(run..at).unwrap_or_default());
                at += 1;
                run = at;
            }
            b'"' => {
                let end = string_end(bytes, at)?;
                let string = bytes.get(at..end).unwrap_or_default();
                if string.contains(&b'\\') {
                    out.push_bytes(bytes.get(run..at).unwrap_or_default());
                    let unescaped: String = serde_json::from_slice(string).map_err(not_json)?;
                    write_json_string_into(out, &unescaped);
                    run = end;
                }
                at = end;
            }
            _ => at += 1,
        }
    }
    out.push_bytes(bytes.get(run..).unwrap_or_default());
    Ok(())
}

/// The index after the closing quote of the string opening at `open`.
fn string_end(bytes: &[u8], open: usize) -> Result<usize, DecodeError> {
    let mut at = open + 1;
    loop {
        match bytes.get(at) {
            Some(b'"') => return Ok(at + 1),
            // The escaped byte cannot end the string, whatever it is.
            Some(b'\\') => at += 2,
            Some(_) => at += 1,
            None => return Err(DecodeError::NotJson("unterminated string".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compacted(json: &str) -> String {
        let mut out = Vec::new();
        compact(json, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn compact_drops_whitespace_outside_strings_only() {
        assert_eq!(
            compacted(" { \"a b\" :\t[ 1 ,\n2.50e+3 , \"x y\" , true , null ] }\r\n"),
            r#"{"a b":[1,2.50e+3,"x y",true,null]}"#
        );
        assert_eq!(compacted("99999999999999999999"), "99999999999999999999");
        assert_eq!(compacted("[ ]"), "[]");
    }

    #[test]
    fn compact_reescapes_strings_like_the_tape_path() {
        assert_eq!(
            compacted(r#"[ "\u0041\/\"\\" , "\u00e9\ud83d\ude00\u0001" ]"#),
            "[\"A/\\\"\\\\\",\"é😀\\u0001\"]"
        );
        // An escaped quote or backslash does not end the string early.
        assert_eq!(compacted(r#"[ "a\" ]" , "b\\" ]"#), r#"["a\" ]","b\\"]"#);
    }

    #[test]
    fn compact_refuses_a_cut_string() {
        let mut out = Vec::new();
        assert!(matches!(
            compact("\"abc", &mut out),
            Err(DecodeError::NotJson(_))
        ));
    }
}
