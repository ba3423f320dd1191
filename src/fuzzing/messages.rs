//! The fuzz target over client messages, text and binary.

use super::*;

/// Client message decoding. The first byte picks the form (V1 text, V2
/// text, V2 binary); the rest is the frame's payload.
pub fn client_message(data: &[u8]) {
    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => text_message(Serializer::V1, frame),
        1 => text_message(Serializer::V2, frame),
        _ => binary_message(frame),
    }
}

fn text_message(serializer: Serializer, frame: &[u8]) {
    let decoded = decode_text(serializer, &mut frame.to_vec());
    check_json_verdict(frame, &decoded);
    let Ok(message) = decoded else {
        return;
    };
    check_fields(&message);
    check_verbatim_path(serializer, frame, &message);
    let Payload::Json(payload) = &message.payload else {
        panic!("a text frame decoded to a binary payload");
    };
    for to in [Serializer::V1, Serializer::V2] {
        // The server only ever encodes string events (a message with any
        // other event is answered, never relayed), so only those round-trip.
        let Some(event) = message.event.as_str() else {
            return;
        };
        let mut encoded = Vec::new();
        encode_text(
            &mut encoded,
            to,
            &message.join_ref,
            &message.msg_ref,
            &message.topic,
            event,
            payload,
        );
        let again = decode_text(to, &mut encoded.clone()).unwrap_or_else(|e| {
            panic!(
                "{serializer:?} message re-encoded as {to:?} did not decode ({e}): {}",
                String::from_utf8_lossy(&encoded)
            )
        });
        let mut expected = message.clone();
        if to == Serializer::V1 {
            // V1 has no join_ref on the wire.
            expected.join_ref = RawJson::null();
        }
        assert_eq!(
            again,
            expected,
            "{serializer:?} message re-encoded as {to:?} decoded differently: {}",
            String::from_utf8_lossy(&encoded)
        );
    }
}

/// The decoder refuses as JSON (`NotJson`, `InvalidUtf8`,
/// `UnpairedSurrogate`) exactly the frames serde_json refuses as JSON, lone
/// surrogate escapes included; it may only refuse valid JSON for its shape.
/// Frames serde_json cannot judge (floats beyond `f64`, nesting past its
/// recursion limit) are not compared.
fn check_json_verdict(frame: &[u8], decoded: &Result<ClientMessage, DecodeError>) {
    let json = match std::str::from_utf8(frame).map(serde_json::from_str::<AnyJson>) {
        Err(_) => false,
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let why = e.to_string();
            if why.contains("number out of range") || why.contains("recursion limit") {
                return;
            }
            false
        }
    };
    let refused_as_json = matches!(
        decoded,
        Err(DecodeError::NotJson(_) | DecodeError::InvalidUtf8 | DecodeError::UnpairedSurrogate(_))
    );
    assert_ne!(
        json,
        refused_as_json,
        "serde_json and the decoder disagree on whether this is JSON ({decoded:?}): {}",
        String::from_utf8_lossy(frame)
    );
}

/// Any JSON value, read by serde_json with every string and key decoded (so
/// a lone surrogate escape is an error) but without `serde_json::Value`,
/// which, with serde_json's `raw_value` feature on (as in this crate), reads
/// an object whose first key is `$serde_json::private::RawValue` as the JSON
/// text of that key's string: it refuses `{"$serde_json::private::RawValue":"e"}`,
/// which is valid JSON.
struct AnyJson;

impl<'de> serde::Deserialize<'de> for AnyJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AnyJson, D::Error> {
        deserializer.deserialize_any(AnyJson)
    }
}

impl<'de> serde::de::Visitor<'de> for AnyJson {
    type Value = AnyJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_unit<E>(self) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
        while seq.next_element::<AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
        while map.next_key::<String>()?.is_some() {
            map.next_value::<AnyJson>()?;
        }
        Ok(AnyJson)
    }
}

/// A float anywhere sends a frame to the decoder's verbatim path; one in an
/// ignored place (a sixth V2 element, an unknown V1 key) must not change the
/// message, so both paths decode alike.
fn check_verbatim_path(serializer: Serializer, frame: &[u8], message: &ClientMessage) {
    let Some(end) = frame
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    else {
        return;
    };
    let extra: &[u8] = match serializer {
        Serializer::V2 => b",-0.0",
        Serializer::V1 => b",\"fuzz_ignored\":-0.0",
    };
    let mut forced = frame[..end].to_vec();
    forced.extend_from_slice(extra);
    forced.extend_from_slice(&frame[end..]);
    let again = decode_text(serializer, &mut forced.clone());
    assert_eq!(
        again.as_ref(),
        Ok(message),
        "with a float in an ignored place the message decoded differently: {}",
        String::from_utf8_lossy(&forced)
    );
}

/// Fields are valid UTF-8 and refs, non-string names and JSON payloads are
/// valid JSON values.
fn check_fields(message: &ClientMessage) {
    let mut json: Vec<(&str, &[u8])> = vec![
        ("join_ref", message.join_ref.as_bytes()),
        ("ref", message.msg_ref.as_bytes()),
    ];
    for (field, name) in [("topic", &message.topic), ("event", &message.event)] {
        match name {
            Name::Str(s) => assert!(
                std::str::from_utf8(s.as_bytes()).is_ok(),
                "{field} is not UTF-8"
            ),
            Name::Other(raw) => {
                assert!(
                    raw.as_bytes().first() != Some(&b'"'),
                    "a string {field} kept as raw JSON"
                );
                json.push((field, raw.as_bytes()));
            }
        }
    }
    if let Payload::Json(payload) = &message.payload {
        json.push(("payload", payload));
    }
    for (field, text) in json {
        assert!(
            std::str::from_utf8(text).is_ok(),
            "{field} is not UTF-8: {text:?}"
        );
        assert!(
            is_json(text),
            "{field} is not one JSON value: {}",
            String::from_utf8_lossy(text)
        );
    }
    assert_eq!(
        message.join_ref.is_null(),
        message.join_ref.as_bytes() == b"null"
    );
}

/// Whether `text` is one JSON value (serde_json's nesting limit aside).
fn is_json(text: &[u8]) -> bool {
    match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
        Ok(_) => true,
        Err(e) => e.to_string().contains("recursion limit"),
    }
}

pub(super) fn binary_message(frame: &[u8]) {
    let decoded = decode_binary(frame);
    let expected = reference_binary(frame);
    match (&decoded, &expected) {
        (Ok(message), Ok(())) => {
            check_fields(message);
            let again = write_binary_push(message);
            assert_eq!(again, frame, "a binary push re-encoded to other bytes");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the decoder and the format disagree"),
        (a, b) => panic!("decode_binary gave {a:?}, the format says {b:?}"),
    }
}

/// The client push format by the book: `0, J, R, T, E`, the four UTF-8
/// strings, the payload.
fn reference_binary(frame: &[u8]) -> Result<(), DecodeError> {
    let truncated = |needed| DecodeError::Truncated {
        needed,
        len: frame.len(),
    };
    match frame.first() {
        None => return Err(truncated(5)),
        Some(0) => {}
        Some(&kind) => return Err(DecodeError::UnknownKind(kind)),
    }
    if frame.len() < 5 {
        return Err(truncated(5));
    }
    let needed = 5 + frame[1..5].iter().map(|&n| usize::from(n)).sum::<usize>();
    if frame.len() < needed {
        return Err(truncated(needed));
    }
    let mut at = 5;
    for (i, field) in ["join_ref", "ref", "topic", "event"]
        .into_iter()
        .enumerate()
    {
        let len = usize::from(frame[1 + i]);
        if std::str::from_utf8(&frame[at..at + len]).is_err() {
            return Err(DecodeError::FieldNotUtf8(field));
        }
        at += len;
    }
    Ok(())
}

/// A decoded binary push written back in the client's format.
fn write_binary_push(message: &ClientMessage) -> Vec<u8> {
    let text = |raw: &RawJson| {
        if raw.is_null() {
            String::new()
        } else {
            raw.as_str().expect("binary refs are strings")
        }
    };
    let fields = [
        text(&message.join_ref),
        text(&message.msg_ref),
        message.topic.as_str().expect("a string topic").to_owned(),
        message.event.as_str().expect("a string event").to_owned(),
    ];
    let mut out = vec![0];
    out.extend(
        fields
            .iter()
            .map(|f| u8::try_from(f.len()).expect("short fields")),
    );
    for field in &fields {
        out.extend_from_slice(field.as_bytes());
    }
    let Payload::Binary(payload) = &message.payload else {
        panic!("a binary frame decoded to a JSON payload");
    };
    out.extend_from_slice(payload);
    out
}
