//! A broadcast and the frames it is encoded into, once per wire format.
//!
//! A [`Broadcast`] is created once by its publisher (the HTTP API or a client
//! event) and shared by every shard through an `Arc`. The first shard that
//! has a subscriber of a given serializer encodes the finished WebSocket frame
//! into an [`EncodedFrame`]; every other subscriber, on every shard, queues a
//! clone of that `Arc`. Nothing is encoded for a serializer no subscriber
//! uses, and nothing is ever encoded twice (this is Phoenix's "fastlane",
//! generalised to the frame bytes).

use std::sync::{Arc, OnceLock};

use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::protocol::encode::{encode_binary_broadcast, encode_text};
use crate::protocol::message::{Name, Payload, RawJson, Serializer};
use crate::transport::frame::write_frame;

/// The most bytes a binary frame's topic or event may hold (one length byte).
const BINARY_FIELD_MAX: usize = 255;

/// Why a broadcast cannot be published. Checked at publish time so a bad
/// message is refused to its publisher instead of failing on some shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic is empty.
    #[error("topic must be a non-empty string")]
    EmptyTopic,
    /// The event is empty.
    #[error("event must be a non-empty string")]
    EmptyEvent,
    /// A JSON payload must be an object (Phoenix refuses anything else on V2).
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    /// A binary broadcast's topic or event does not fit its one-byte length.
    #[error("{field} is {len} bytes; binary frames allow at most 255")]
    FieldTooLong {
        /// `topic` or `event`.
        field: &'static str,
        /// The actual length in bytes.
        len: usize,
    },
}

/// One finished WebSocket frame, shared by every connection it is queued on.
///
/// Cloning is one atomic increment. The bytes are the complete frame (header
/// and body), ready for `writev`; [`EncodedFrame::body`] exposes the message
/// text without the header for transports that are not WebSocket.
#[derive(Debug, Clone)]
pub struct EncodedFrame(Arc<FrameBytes>);

#[derive(Debug)]
struct FrameBytes {
    bytes: Box<[u8]>,
    body_start: usize,
}

impl EncodedFrame {
    /// Frames `body` as one final, unmasked WebSocket frame of `opcode`.
    pub fn new(opcode: OpCode, body: &[u8]) -> EncodedFrame {
        let mut bytes = Vec::with_capacity(body.len() + 10);
        write_frame(&mut bytes, opcode, body);
        let body_start = bytes.len() - body.len();
        EncodedFrame(Arc::new(FrameBytes {
            bytes: bytes.into_boxed_slice(),
            body_start,
        }))
    }

    /// The whole frame, header included.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// The message without the WebSocket header.
    pub fn body(&self) -> &[u8] {
        &self.0.bytes[self.0.body_start..]
    }

    /// Total length in bytes, header included.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    /// Whether the frame is empty (never true for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }
}

/// The connection a `broadcast_from` must skip: a slab key on the shard where
/// the broadcast was published. Only that shard compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The publishing shard.
    pub shard: usize,
    /// The sender's connection key on that shard.
    pub connection: usize,
}

/// A message for every subscriber of a topic.
#[derive(Debug)]
pub struct Broadcast {
    topic: String,
    event: String,
    payload: Payload,
    exclude: Option<Sender>,
    /// One lazily encoded frame per serializer (V1, V2); `None` inside means
    /// the payload has no form in that serializer (binary on V1).
    frames: [OnceLock<Option<EncodedFrame>>; 2],
}

impl Broadcast {
    /// Validates and creates a broadcast. `exclude` makes it a `broadcast_from`.
    pub fn new(
        topic: String,
        event: String,
        payload: Payload,
        exclude: Option<Sender>,
    ) -> Result<Broadcast, PublishError> {
        if topic.is_empty() {
            return Err(PublishError::EmptyTopic);
        }
        if event.is_empty() {
            return Err(PublishError::EmptyEvent);
        }
        match &payload {
            Payload::Json(_) if !payload.is_json_object() => {
                return Err(PublishError::PayloadNotObject)
            }
            Payload::Binary(_) => {
                for (field, len) in [("topic", topic.len()), ("event", event.len())] {
                    if len > BINARY_FIELD_MAX {
                        return Err(PublishError::FieldTooLong { field, len });
                    }
                }
            }
            Payload::Json(_) => {}
        }
        Ok(Broadcast {
            topic,
            event,
            payload,
            exclude,
            frames: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The event name.
    pub fn event(&self) -> &str {
        &self.event
    }

    /// The payload as published.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The connection to skip, for `broadcast_from`.
    pub fn exclude(&self) -> Option<Sender> {
        self.exclude
    }

    /// Whether the payload is binary (no JSON text form: V1 and long-poll
    /// clients cannot receive it).
    pub fn is_binary(&self) -> bool {
        matches!(self.payload, Payload::Binary(_))
    }

    /// The frame for subscribers of `serializer`, encoded on first use.
    /// `None` when the payload cannot be expressed (binary for V1).
    #[inline]
    pub fn frame_for(&self, serializer: Serializer) -> Option<&EncodedFrame> {
        let slot = match serializer {
            Serializer::V1 => &self.frames[0],
            Serializer::V2 => &self.frames[1],
        };
        slot.get_or_init(|| self.encode(serializer)).as_ref()
    }

    fn encode(&self, serializer: Serializer) -> Option<EncodedFrame> {
        match (&self.payload, serializer) {
            (Payload::Json(json), _) => {
                let mut body =
                    Vec::with_capacity(json.len() + self.topic.len() + self.event.len() + 64);
                let topic = Name::Str(self.topic.clone());
                encode_text(
                    &mut body,
                    serializer,
                    &RawJson::null(),
                    &RawJson::null(),
                    &topic,
                    &self.event,
                    json,
                );
                Some(EncodedFrame::new(OpCode::Data(Data::Text), &body))
            }
            (Payload::Binary(bytes), Serializer::V2) => {
                let mut body =
                    Vec::with_capacity(bytes.len() + self.topic.len() + self.event.len() + 3);
                // Lengths were checked in `new`, so this cannot fail.
                encode_binary_broadcast(&mut body, &self.topic, &self.event, bytes).ok()?;
                Some(EncodedFrame::new(OpCode::Data(Data::Binary), &body))
            }
            (Payload::Binary(_), Serializer::V1) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Payload {
        Payload::Json(text.as_bytes().to_vec())
    }

    #[test]
    fn encodes_each_serializer_once_and_shares_the_bytes() {
        let b = Broadcast::new(
            "room:1".into(),
            "new_msg".into(),
            json(r#"{"body":"hi"}"#),
            None,
        )
        .unwrap();
        let v2 = b.frame_for(Serializer::V2).unwrap().clone();
        assert_eq!(
            v2.body(),
            br#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
        );
        assert_eq!(v2.bytes()[0], 0x81);
        let again = b.frame_for(Serializer::V2).unwrap();
        assert!(
            Arc::ptr_eq(&v2.0, &again.0),
            "a second subscriber must share the frame"
        );
        let v1 = b.frame_for(Serializer::V1).unwrap();
        let value: serde_json::Value = serde_json::from_slice(v1.body()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"topic":"room:1","event":"new_msg","payload":{"body":"hi"},"ref":null})
        );
    }

    #[test]
    fn binary_goes_to_v2_only() {
        let b = Broadcast::new(
            "room:1".into(),
            "tick".into(),
            Payload::Binary(vec![0xff]),
            None,
        )
        .unwrap();
        let frame = b.frame_for(Serializer::V2).unwrap();
        assert_eq!(frame.bytes()[0], 0x82);
        assert_eq!(frame.body(), b"\x02\x06\x04room:1tick\xff");
        assert!(b.frame_for(Serializer::V1).is_none());
    }

    #[test]
    fn refuses_what_cannot_be_encoded() {
        assert_eq!(
            Broadcast::new("t".into(), "e".into(), json("[1]"), None).unwrap_err(),
            PublishError::PayloadNotObject
        );
        assert_eq!(
            Broadcast::new("".into(), "e".into(), json("{}"), None).unwrap_err(),
            PublishError::EmptyTopic
        );
        let long = "x".repeat(256);
        assert!(matches!(
            Broadcast::new(long, "e".into(), Payload::Binary(vec![]), None),
            Err(PublishError::FieldTooLong {
                field: "topic",
                len: 256
            })
        ));
    }
}
