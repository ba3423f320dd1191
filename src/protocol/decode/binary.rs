//! V2 binary frames from a client: only kind 0, a push, is valid.
//!
//! `0, J, R, T, E, join_ref, ref, topic, event, payload...`: a kind byte,
//! four one-byte lengths, the four header strings, then the payload bytes,
//! which are never parsed.

use super::DecodeError;
use crate::protocol::message::{ClientMessage, Name, Payload, RawJson};

/// Decodes a V2 binary frame. Only kind 0 (client push) is valid from a
/// client: `0, J, R, T, E, join_ref, ref, topic, event, payload...`.
pub fn decode_binary(frame: &[u8]) -> Result<ClientMessage, DecodeError> {
    const HEADER: usize = 5;
    let kind = *frame.first().ok_or(DecodeError::Truncated {
        needed: HEADER,
        len: 0,
    })?;
    if kind != 0 {
        return Err(DecodeError::UnknownKind(kind));
    }
    let Some(&[_, j, r, t, e]) = frame.get(..HEADER) else {
        return Err(DecodeError::Truncated {
            needed: HEADER,
            len: frame.len(),
        });
    };
    let needed = HEADER + [j, r, t, e].iter().map(|&n| usize::from(n)).sum::<usize>();
    if frame.len() < needed {
        return Err(DecodeError::Truncated {
            needed,
            len: frame.len(),
        });
    }
    let rest = frame.get(HEADER..).unwrap_or_default();
    let (join_ref, rest) = take_str(rest, j, "join_ref")?;
    let (msg_ref, rest) = take_str(rest, r, "ref")?;
    let (topic, rest) = take_str(rest, t, "topic")?;
    let (event, payload) = take_str(rest, e, "event")?;
    Ok(ClientMessage {
        // A binary frame cannot say null; the JS client sends "" for "none".
        join_ref: if join_ref.is_empty() {
            RawJson::null()
        } else {
            RawJson::from_string(join_ref)
        },
        msg_ref: RawJson::from_string(msg_ref),
        topic: Name::Str(topic.to_owned()),
        event: Name::Str(event.to_owned()),
        payload: Payload::Binary(payload.to_vec()),
    })
}

/// Splits a UTF-8 field of `len` bytes off the front of `bytes`.
fn take_str<'a>(
    bytes: &'a [u8],
    len: u8,
    field: &'static str,
) -> Result<(&'a str, &'a [u8]), DecodeError> {
    let (head, tail) = bytes
        .split_at_checked(usize::from(len))
        .ok_or(DecodeError::Truncated {
            needed: usize::from(len),
            len: bytes.len(),
        })?;
    let text = std::str::from_utf8(head).map_err(|_| DecodeError::FieldNotUtf8(field))?;
    Ok((text, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_PUSH: [u8; 22] = [
        0x00, 0x01, 0x01, 0x06, 0x06, 0x33, 0x37, 0x72, 0x6f, 0x6f, 0x6d, 0x3a, 0x31, 0x75, 0x70,
        0x6c, 0x6f, 0x61, 0x64, 0x01, 0x02, 0x03,
    ];

    #[test]
    fn binary_client_push_spec_example() {
        let m = decode_binary(&CLIENT_PUSH).unwrap();
        assert_eq!(m.join_ref, RawJson::from_string("3"));
        assert_eq!(m.msg_ref, RawJson::from_string("7"));
        assert_eq!(m.topic, Name::Str("room:1".into()));
        assert_eq!(m.event, Name::Str("upload".into()));
        assert_eq!(m.payload, Payload::Binary(vec![1, 2, 3]));
    }

    #[test]
    fn binary_empty_join_ref_and_payload() {
        let m = decode_binary(&[0, 0, 1, 1, 1, b'9', b't', b'e']).unwrap();
        assert!(m.join_ref.is_null());
        assert_eq!(m.msg_ref, RawJson::from_string("9"));
        assert_eq!(m.payload, Payload::Binary(Vec::new()));
        // Refs with quotes are re-escaped as JSON strings.
        let m = decode_binary(&[0, 1, 1, 0, 0, b'"', b'\\']).unwrap();
        assert_eq!(m.join_ref.as_bytes(), br#""\"""#);
        assert_eq!(m.msg_ref.as_bytes(), br#""\\""#);
        assert_eq!(m.topic, Name::Str(String::new()));
    }

    #[test]
    fn binary_errors() {
        assert_eq!(
            decode_binary(&[]),
            Err(DecodeError::Truncated { needed: 5, len: 0 })
        );
        assert_eq!(
            decode_binary(&[0, 1, 1]),
            Err(DecodeError::Truncated { needed: 5, len: 3 })
        );
        for kind in [1, 2, 3, 0xff] {
            let mut frame = CLIENT_PUSH;
            frame[0] = kind;
            assert_eq!(decode_binary(&frame), Err(DecodeError::UnknownKind(kind)));
        }
        // Lengths pointing past the end of the frame.
        assert_eq!(
            decode_binary(&CLIENT_PUSH[..18]),
            Err(DecodeError::Truncated {
                needed: 19,
                len: 18
            })
        );
        assert_eq!(
            decode_binary(&[0, 255, 255, 255, 255]),
            Err(DecodeError::Truncated {
                needed: 1025,
                len: 5
            })
        );
        let fields = ["join_ref", "ref", "topic", "event"];
        for (i, field) in fields.into_iter().enumerate() {
            let mut frame = vec![0, 1, 1, 1, 1, b'a', b'b', b'c', b'd'];
            frame[5 + i] = 0xc3; // a lone UTF-8 lead byte
            assert_eq!(decode_binary(&frame), Err(DecodeError::FieldNotUtf8(field)));
        }
        // The payload is bytes, not text: anything goes.
        assert!(decode_binary(&[0, 0, 0, 0, 0, 0xff, 0xfe]).is_ok());
        assert_eq!(
            DecodeError::UnknownKind(2).to_string(),
            "binary frame kind 2 is not a client push (kind 0)"
        );
    }
}
