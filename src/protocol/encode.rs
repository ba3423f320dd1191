//! Server→client encoding: message bodies only, not WebSocket
//! frames; the caller frames them (text for JSON, binary for V2 binary).
//!
//! Everything appends to a caller-owned buffer so a shard can reuse one
//! scratch `Vec` and a broadcast can be encoded once per serializer.

use crate::protocol::message::{
    first_non_whitespace, write_json_string, Name, RawJson, Serializer,
};

/// Why a server message cannot be encoded; Phoenix raises in the sender for
/// the same cases, so the publisher gets the error.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A binary-frame header field is longer than its one-byte length allows.
    #[error("{field} is {len} bytes; a binary frame allows at most 255")]
    FieldTooLong {
        /// Which field: `join_ref`, `ref`, `topic`, `event` or `status`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A JSON push or broadcast payload that is not an object.
    #[error("a push or broadcast payload must be a JSON object")]
    PayloadNotObject,
}

/// Appends a server message as JSON text in the connection's serializer.
/// V2: `[join_ref,ref,topic,event,payload]`. V1:
/// `{"topic":..,"event":..,"payload":..,"ref":..}` (V1 never emits join_ref).
///
/// `payload_json` must be one valid JSON value; it is copied as it is.
pub fn encode_text(
    out: &mut Vec<u8>,
    serializer: Serializer,
    join_ref: &RawJson,
    msg_ref: &RawJson,
    topic: &Name,
    event: &str,
    payload_json: &[u8],
) {
    debug_assert!(!payload_json.is_empty(), "a payload must be a JSON value");
    out.reserve(payload_json.len() + event.len() + 64);
    let envelope = Envelope {
        serializer,
        join_ref,
        msg_ref,
        topic,
        event,
    };
    envelope.write(out, |out| out.extend_from_slice(payload_json));
}

/// Appends a reply payload `{"status":S,"response":R}`.
pub fn write_reply_payload(out: &mut Vec<u8>, status: &str, response_json: &[u8]) {
    out.extend_from_slice(b"{\"status\":");
    write_json_string(out, status);
    out.extend_from_slice(b",\"response\":");
    out.extend_from_slice(response_json);
    out.push(b'}');
}

/// Appends a whole `phx_reply` message, building the payload in place.
pub fn encode_reply(
    out: &mut Vec<u8>,
    serializer: Serializer,
    join_ref: &RawJson,
    msg_ref: &RawJson,
    topic: &Name,
    status: &str,
    response_json: &[u8],
) {
    out.reserve(response_json.len() + 96);
    let envelope = Envelope {
        serializer,
        join_ref,
        msg_ref,
        topic,
        event: "phx_reply",
    };
    envelope.write(out, |out| write_reply_payload(out, status, response_json));
}

/// Everything of a JSON message but its payload, which the caller writes
/// in place (a reply builds its payload straight into the output).
struct Envelope<'a> {
    serializer: Serializer,
    join_ref: &'a RawJson,
    msg_ref: &'a RawJson,
    topic: &'a Name,
    event: &'a str,
}

impl Envelope<'_> {
    /// Appends the message in the serializer's envelope, with the payload
    /// written by `payload`.
    fn write(&self, out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
        // Both envelopes hold topic, event and payload in that order. V2
        // puts the refs first and separates with bare commas; V1 labels
        // every field and puts the ref last.
        let (before_event, before_payload): (&[u8], &[u8]) = match self.serializer {
            Serializer::V2 => {
                out.push(b'[');
                out.extend_from_slice(self.join_ref.as_bytes());
                out.push(b',');
                out.extend_from_slice(self.msg_ref.as_bytes());
                out.push(b',');
                (b",", b",")
            }
            Serializer::V1 => {
                out.extend_from_slice(b"{\"topic\":");
                (b",\"event\":", b",\"payload\":")
            }
        };
        self.topic.write_json(out);
        out.extend_from_slice(before_event);
        write_json_string(out, self.event);
        out.extend_from_slice(before_payload);
        payload(out);
        match self.serializer {
            Serializer::V2 => out.push(b']'),
            Serializer::V1 => {
                out.extend_from_slice(b",\"ref\":");
                out.extend_from_slice(self.msg_ref.as_bytes());
                out.push(b'}');
            }
        }
    }
}

/// Checks that a JSON push or broadcast payload is an object, the only JSON
/// payload Phoenix will send; call it at publish time.
pub fn check_push_payload(payload_json: &[u8]) -> Result<(), EncodeError> {
    match first_non_whitespace(payload_json) {
        Some(b'{') => Ok(()),
        _ => Err(EncodeError::PayloadNotObject),
    }
}

/// Appends a V2 binary server push (kind 0; no ref):
/// `0, J, T, E, join_ref, topic, event, payload`. `None` is sent as an empty
/// join_ref, which the JS client treats as null.
pub fn encode_binary_push(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let join_ref = join_ref.unwrap_or("");
    let fields = [("join_ref", join_ref), ("topic", topic), ("event", event)];
    write_binary(out, 0, &fields, payload)
}

/// Appends a V2 binary reply (kind 1):
/// `1, J, R, T, S, join_ref, ref, topic, status, response`.
pub fn encode_binary_reply(
    out: &mut Vec<u8>,
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    status: &str,
    response: &[u8],
) -> Result<(), EncodeError> {
    let fields = [
        ("join_ref", join_ref),
        ("ref", msg_ref),
        ("topic", topic),
        ("status", status),
    ];
    write_binary(out, 1, &fields, response)
}

/// Appends a V2 binary broadcast (kind 2): `2, T, E, topic, event, payload`.
pub fn encode_binary_broadcast(
    out: &mut Vec<u8>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    write_binary(out, 2, &[("topic", topic), ("event", event)], payload)
}

/// Kind byte, one length byte per field, the fields, then the payload.
/// Every length is checked before anything is appended, so an error leaves
/// `out` as it was.
fn write_binary(
    out: &mut Vec<u8>,
    kind: u8,
    fields: &[(&'static str, &str)],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let mut header_len = 1;
    for &(field, value) in fields {
        if u8::try_from(value.len()).is_err() {
            return Err(EncodeError::FieldTooLong {
                field,
                len: value.len(),
            });
        }
        header_len += 1 + value.len();
    }
    out.reserve(header_len + payload.len());
    out.push(kind);
    for &(_, value) in fields {
        out.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
    }
    for &(_, value) in fields {
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode::{decode_binary, decode_text};
    use crate::protocol::message::{ClientMessage, Payload};

    fn s(text: &str) -> RawJson {
        RawJson::from_string(text)
    }

    fn topic(name: &str) -> Name {
        Name::Str(name.into())
    }

    fn text(
        serializer: Serializer,
        join_ref: &RawJson,
        msg_ref: &RawJson,
        topic: &Name,
        event: &str,
        payload: &str,
    ) -> String {
        let mut out = Vec::new();
        encode_text(
            &mut out,
            serializer,
            join_ref,
            msg_ref,
            topic,
            event,
            payload.as_bytes(),
        );
        String::from_utf8(out).unwrap()
    }

    fn reply(
        serializer: Serializer,
        join_ref: &RawJson,
        msg_ref: &RawJson,
        t: &Name,
        status: &str,
        r: &str,
    ) -> String {
        let mut out = Vec::new();
        encode_reply(
            &mut out,
            serializer,
            join_ref,
            msg_ref,
            t,
            status,
            r.as_bytes(),
        );
        String::from_utf8(out).unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split(' ')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn spec_4_1_v1_examples() {
        let null = RawJson::null();
        assert_eq!(
            reply(
                Serializer::V1,
                &s("1"),
                &s("1"),
                &topic("room:lobby"),
                "ok",
                "{}"
            ),
            r#"{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}"#
        );
        assert_eq!(
            text(
                Serializer::V1,
                &null,
                &null,
                &topic("room:lobby"),
                "new_msg",
                r#"{"body":"hi"}"#
            ),
            r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":null}"#
        );
    }

    #[test]
    fn spec_4_2_v2_examples() {
        let null = RawJson::null();
        let lobby = topic("room:lobby");
        assert_eq!(
            reply(Serializer::V2, &s("3"), &s("3"), &lobby, "ok", "{}"),
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            text(
                Serializer::V2,
                &s("3"),
                &null,
                &lobby,
                "joined",
                r#"{"status":"connected"}"#
            ),
            r#"["3",null,"room:lobby","joined",{"status":"connected"}]"#
        );
        assert_eq!(
            text(
                Serializer::V2,
                &null,
                &null,
                &lobby,
                "new_msg",
                r#"{"body":"hi"}"#
            ),
            r#"[null,null,"room:lobby","new_msg",{"body":"hi"}]"#
        );
    }

    #[test]
    fn spec_6_1_heartbeat_reply() {
        let phoenix = topic("phoenix");
        let null = RawJson::null();
        assert_eq!(
            reply(Serializer::V2, &null, &s("4"), &phoenix, "ok", "{}"),
            r#"[null,"4","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
        assert_eq!(
            reply(Serializer::V1, &null, &s("4"), &phoenix, "ok", "{}"),
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"4"}"#
        );
    }

    #[test]
    fn spec_6_5_unmatched_topic_reply() {
        let response = r#"{"reason":"unmatched topic"}"#;
        assert_eq!(
            reply(
                Serializer::V2,
                &RawJson::null(),
                &s("9"),
                &topic("room:other"),
                "error",
                response
            ),
            r#"[null,"9","room:other","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
        // A topic that is not a string is echoed as the client sent it.
        let odd = Name::Other(RawJson::from_json_text(b"[1]"));
        assert_eq!(
            reply(
                Serializer::V2,
                &RawJson::null(),
                &RawJson::from_json_text(b"9"),
                &odd,
                "error",
                response
            ),
            r#"[null,9,[1],"phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
        );
    }

    #[test]
    fn v1_never_emits_join_ref() {
        let out = text(Serializer::V1, &s("3"), &s("5"), &topic("t"), "e", "{}");
        assert_eq!(out, r#"{"topic":"t","event":"e","payload":{},"ref":"5"}"#);
    }

    #[test]
    fn escaping_in_topic_event_and_status() {
        let out = text(
            Serializer::V2,
            &s("a\"b"),
            &RawJson::null(),
            &topic("r\\\n\u{1}é"),
            "ev\"t",
            "{}",
        );
        assert_eq!(out, r#"["a\"b",null,"r\\\n\u0001é","ev\"t",{}]"#);
        let mut out = Vec::new();
        write_reply_payload(&mut out, "o\"k", b"[]");
        assert_eq!(out, br#"{"status":"o\"k","response":[]}"#);
    }

    #[test]
    fn appends_to_existing_buffer() {
        let mut out = b"xx".to_vec();
        encode_text(
            &mut out,
            Serializer::V2,
            &RawJson::null(),
            &RawJson::null(),
            &topic("t"),
            "e",
            b"{}",
        );
        assert_eq!(out, br#"xx[null,null,"t","e",{}]"#);
    }

    #[test]
    fn spec_4_3_binary_examples() {
        let mut out = Vec::new();
        encode_binary_push(&mut out, Some("3"), "room:1", "frame", &[0x00, 0x01]).unwrap();
        assert_eq!(
            out,
            hex("00 01 06 05 33 72 6f 6f 6d 3a 31 66 72 61 6d 65 00 01")
        );

        out.clear();
        encode_binary_reply(&mut out, "3", "7", "room:1", "ok", &[0xaa, 0xbb]).unwrap();
        assert_eq!(
            out,
            hex("01 01 01 06 02 33 37 72 6f 6f 6d 3a 31 6f 6b aa bb")
        );

        out.clear();
        encode_binary_broadcast(&mut out, "room:1", "tick", &[0xff]).unwrap();
        assert_eq!(out, hex("02 06 04 72 6f 6f 6d 3a 31 74 69 63 6b ff"));

        // The client→server example decodes to the fields the spec names.
        let client = hex("00 01 01 06 06 33 37 72 6f 6f 6d 3a 31 75 70 6c 6f 61 64 01 02 03");
        let m = decode_binary(&client).unwrap();
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            (Some("room:1"), Some("upload"))
        );
    }

    #[test]
    fn binary_push_without_join_ref() {
        let mut out = Vec::new();
        encode_binary_push(&mut out, None, "t", "e", &[]).unwrap();
        assert_eq!(out, [0, 0, 1, 1, b't', b'e']);
    }

    #[test]
    fn binary_field_limits() {
        let ok = "x".repeat(255);
        let long = "x".repeat(256);
        let mut out = Vec::new();
        encode_binary_broadcast(&mut out, &ok, &ok, b"p").unwrap();
        assert_eq!(out.len(), 3 + 255 + 255 + 1);
        assert_eq!(out[..3], [2, 255, 255]);

        let mut out = b"keep".to_vec();
        let too_long = |field| Err(EncodeError::FieldTooLong { field, len: 256 });
        assert_eq!(
            encode_binary_broadcast(&mut out, &long, "e", b""),
            too_long("topic")
        );
        assert_eq!(
            encode_binary_broadcast(&mut out, "t", &long, b""),
            too_long("event")
        );
        assert_eq!(
            encode_binary_push(&mut out, Some(&long), "t", "e", b""),
            too_long("join_ref")
        );
        assert_eq!(
            encode_binary_reply(&mut out, "j", &long, "t", "ok", b""),
            too_long("ref")
        );
        assert_eq!(
            encode_binary_reply(&mut out, "j", "r", "t", &long, b""),
            too_long("status")
        );
        assert_eq!(out, b"keep", "nothing appended on error");
        assert_eq!(
            EncodeError::FieldTooLong {
                field: "topic",
                len: 256
            }
            .to_string(),
            "topic is 256 bytes; a binary frame allows at most 255"
        );
    }

    #[test]
    fn push_payload_must_be_an_object() {
        assert_eq!(check_push_payload(b"{}"), Ok(()));
        assert_eq!(check_push_payload(b" {\"a\":1}"), Ok(()));
        for bad in [&b"[]"[..], b"\"s\"", b"1", b"null", b""] {
            assert_eq!(check_push_payload(bad), Err(EncodeError::PayloadNotObject));
        }
    }

    /// Encodes a client-shaped message in `serializer` and decodes it back.
    fn round_trip(serializer: Serializer, m: &ClientMessage) -> ClientMessage {
        let Payload::Json(payload) = &m.payload else {
            panic!("json payload")
        };
        let event = m.event.as_str().unwrap();
        let mut out = Vec::new();
        encode_text(
            &mut out,
            serializer,
            &m.join_ref,
            &m.msg_ref,
            &m.topic,
            event,
            payload,
        );
        decode_text(serializer, &mut out).unwrap()
    }

    #[test]
    fn round_trip_client_messages() {
        let payloads = [
            r#"{"nick":"ann","tags":["a\"","\\",null],"n":-3,"f":0.5}"#,
            "{}",
            "[1,{}]",
            r#""s""#,
        ];
        let refs = [
            s("3"),
            RawJson::from_json_text(b"7"),
            RawJson::null(),
            s("é\n\""),
        ];
        let topics = [
            topic("room:lobby"),
            topic("ü\u{1}\\"),
            Name::Other(RawJson::from_json_text(b"{\"a\":[1]}")),
        ];
        for payload in payloads {
            for (i, msg_ref) in refs.iter().enumerate() {
                for t in &topics {
                    let m = ClientMessage {
                        join_ref: refs[(i + 1) % refs.len()].clone(),
                        msg_ref: msg_ref.clone(),
                        topic: t.clone(),
                        event: topic("phx_\"join\""),
                        payload: Payload::Json(payload.as_bytes().to_vec()),
                    };
                    assert_eq!(round_trip(Serializer::V2, &m), m);
                    // V1 carries no join_ref back.
                    let v1 = ClientMessage {
                        join_ref: RawJson::null(),
                        ..m.clone()
                    };
                    assert_eq!(round_trip(Serializer::V1, &m), v1);
                }
            }
        }
    }

    #[test]
    fn round_trip_binary_push() {
        // A client push re-encoded by hand in the client layout (kind 0 with a
        // ref) decodes to the same fields; the server kinds are refused.
        let mut frame = vec![0, 1, 2, 6, 3];
        frame.extend_from_slice(b"312room:1e\"v\xde\xad");
        let m = decode_binary(&frame).unwrap();
        assert_eq!(m.msg_ref.as_str().as_deref(), Some("12"));
        assert_eq!(m.event.as_str(), Some("e\"v"));
        assert_eq!(m.payload, Payload::Binary(vec![0xde, 0xad]));
        let mut out = Vec::new();
        encode_binary_broadcast(&mut out, "room:1", "e", b"").unwrap();
        assert!(decode_binary(&out).is_err());
    }
}
