//! A broadcast: what it says, who published it, and its frames.
//!
//! [`Content`] is a validated topic, event and payload: what the HTTP API,
//! a client event, a backend hook or presence wants sent. Publishing stamps
//! it into a [`Broadcast`] with an identity — a [`BroadcastId`], its
//! [`Origin`] (node, shard and, for `broadcast_from`, the sending client)
//! and the publish time — and shares it with every shard through an `Arc`.
//! The first shard with a subscriber of a given [`FrameKind`] encodes the
//! finished frame; every other subscriber, on every shard, queues a clone
//! of that `Arc` (Phoenix's "fastlane", generalised to the frame bytes).
//!
//! On a history topic the broadcast also carries its [`Position`], which
//! its frames hold in the message's `ref` slot (a binary frame has no such
//! slot: binary payloads are refused on history topics).
//!
//! A broadcast also has a byte form ([`Broadcast::to_bytes`]) for carrying
//! it between nodes or into a history store. The payload travels as the
//! bytes it was published with: nothing is re-parsed on either side.

use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::frame::{EncodedFrame, FrameCache, FrameKind};
use super::topics::ClientId;
use crate::history::Position;
use crate::protocol::encode::{encode_binary_broadcast, encode_text};
use crate::protocol::message::{Name, Payload, RawJson, Serializer};
use crate::wire::{put_bytes, put_text, ReadError, Reader};

/// The most bytes a binary frame's topic or event may hold (one length byte).
const BINARY_FIELD_MAX: usize = 255;

/// Why a broadcast cannot be published. Checked when the content is made,
/// so a bad message is refused to its publisher instead of failing on some
/// shard.
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

/// What a broadcast says: a topic, an event and a payload that every wire
/// format can carry (checked once, here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    topic: String,
    event: String,
    payload: Payload,
}

impl Content {
    /// Validates a message for publishing.
    pub fn new(topic: String, event: String, payload: Payload) -> Result<Content, PublishError> {
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
        Ok(Content {
            topic,
            event,
            payload,
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
}

/// A Cinder process: random per start, so two processes (or one process
/// before and after a restart) never share broadcast ids or origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub u64);

/// A broadcast's id, unique within its node: the publishing shard in the
/// top 16 bits and that shard's publish counter below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BroadcastId(pub u64);

impl BroadcastId {
    /// The `sequence`-th broadcast published by `shard`.
    pub fn new(shard: u16, sequence: u64) -> BroadcastId {
        BroadcastId(u64::from(shard) << 48 | (sequence & ((1 << 48) - 1)))
    }
}

/// Where a broadcast was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The publishing process.
    pub node: NodeId,
    /// The publishing shard of that process.
    pub shard: u16,
    /// For `broadcast_from`: the client that sent it, which must not get it
    /// back. A client id means something only on its own node and shard.
    pub sender: Option<ClientId>,
}

/// A published message for every subscriber of a topic, with its identity
/// and its lazily encoded frames.
#[derive(Debug)]
pub struct Broadcast {
    id: BroadcastId,
    origin: Origin,
    /// Publish time, in milliseconds since the Unix epoch.
    published_at_ms: u64,
    content: Content,
    /// On a history topic: its place in the topic's stream, sent in the
    /// frames' `ref` slot.
    position: Option<Position>,
    frames: FrameCache,
}

impl Broadcast {
    /// Stamps `content` with its identity.
    pub fn new(
        content: Content,
        id: BroadcastId,
        origin: Origin,
        published_at_ms: u64,
    ) -> Broadcast {
        Broadcast {
            id,
            origin,
            published_at_ms,
            content,
            position: None,
            frames: FrameCache::default(),
        }
    }

    /// The same broadcast at `position` of its topic's history (before any
    /// frame is encoded: the position is part of every frame).
    pub fn with_position(mut self, position: Position) -> Broadcast {
        self.position = Some(position);
        self.frames = FrameCache::default();
        self
    }

    /// Its place in the topic's history, on a history topic.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The id (unique within the origin node).
    pub fn id(&self) -> BroadcastId {
        self.id
    }

    /// Where it was published.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// When it was published (milliseconds since the Unix epoch).
    pub fn published_at_ms(&self) -> u64 {
        self.published_at_ms
    }

    /// What it says.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The topic.
    #[inline]
    pub fn topic(&self) -> &str {
        &self.content.topic
    }

    /// The event name.
    pub fn event(&self) -> &str {
        &self.content.event
    }

    /// The payload as published.
    pub fn payload(&self) -> &Payload {
        &self.content.payload
    }

    /// Whether the payload is binary (no JSON text form: V1 and long-poll
    /// clients cannot receive it).
    pub fn is_binary(&self) -> bool {
        matches!(self.content.payload, Payload::Binary(_))
    }

    /// The client a shard must skip: the sender of a `broadcast_from`, on
    /// the node and shard it was sent from (anywhere else the id names
    /// some other client).
    #[inline]
    pub fn sender_on(&self, node: NodeId, shard: u16) -> Option<ClientId> {
        let origin = &self.origin;
        origin
            .sender
            .filter(|_| origin.node == node && origin.shard == shard)
    }

    /// The frame for subscribers of `kind`, encoded on first use by any
    /// shard. `None` when the payload has no form of that kind (binary on V1).
    #[inline]
    pub fn frame(&self, kind: FrameKind) -> Option<&EncodedFrame> {
        self.frames.get_or_encode(kind, || self.encode(kind))
    }

    fn encode(&self, kind: FrameKind) -> Option<EncodedFrame> {
        let Content {
            topic,
            event,
            payload,
        } = &self.content;
        match (payload, kind.serializer) {
            (Payload::Json(json), serializer) => {
                let mut body = Vec::with_capacity(json.len() + topic.len() + event.len() + 64);
                let msg_ref = match &self.position {
                    Some(position) => RawJson::from_string(&position.to_string()),
                    None => RawJson::null(),
                };
                encode_text(
                    &mut body,
                    serializer,
                    &RawJson::null(),
                    &msg_ref,
                    &Name::Str(topic.clone()),
                    event,
                    json,
                );
                Some(EncodedFrame::new(OpCode::Data(Data::Text), &body))
            }
            (Payload::Binary(bytes), Serializer::V2) => {
                let mut body = Vec::with_capacity(bytes.len() + topic.len() + event.len() + 3);
                // Lengths were checked by `Content::new`, so this cannot fail.
                encode_binary_broadcast(&mut body, topic, event, bytes).ok()?;
                Some(EncodedFrame::new(OpCode::Data(Data::Binary), &body))
            }
            (Payload::Binary(_), Serializer::V1) => None,
        }
    }
}

/// Why bytes are not a broadcast ([`Broadcast::from_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the broadcast does.
    #[error("truncated broadcast")]
    Truncated,
    /// A version this build does not read.
    #[error("unknown broadcast format version {0}")]
    Version(u8),
    /// The topic or event is not UTF-8.
    #[error("topic or event is not UTF-8")]
    Utf8,
    /// An unknown payload kind byte.
    #[error("unknown payload kind {0}")]
    PayloadKind(u8),
    /// Bytes follow the broadcast.
    #[error("{0} bytes after the broadcast")]
    Trailing(usize),
    /// The content would not have been publishable.
    #[error(transparent)]
    Invalid(#[from] PublishError),
}

impl From<ReadError> for DecodeError {
    fn from(error: ReadError) -> DecodeError {
        match error {
            ReadError::Truncated => DecodeError::Truncated,
            ReadError::Utf8 => DecodeError::Utf8,
        }
    }
}

/// The byte form's version.
const FORMAT_VERSION: u8 = 1;
/// `sender` value meaning "no sender" (a plain broadcast).
const NO_SENDER: u32 = u32::MAX;
/// Payload kind bytes.
const PAYLOAD_JSON: u8 = 0;
const PAYLOAD_BINARY: u8 = 1;

impl Broadcast {
    /// The broadcast as bytes, big-endian: version, id, origin node, shard
    /// and sender, publish time, then topic and event (16-bit lengths) and
    /// the payload (kind byte, 32-bit length, bytes as published).
    pub fn to_bytes(&self) -> Vec<u8> {
        let Content {
            topic,
            event,
            payload,
        } = &self.content;
        let (kind, body) = match payload {
            Payload::Json(text) => (PAYLOAD_JSON, text),
            Payload::Binary(bytes) => (PAYLOAD_BINARY, bytes),
        };
        let mut out = Vec::with_capacity(40 + topic.len() + event.len() + body.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.id.0.to_be_bytes());
        out.extend_from_slice(&self.origin.node.0.to_be_bytes());
        out.extend_from_slice(&self.origin.shard.to_be_bytes());
        let sender = self.origin.sender.map_or(NO_SENDER, |c| c.0 as u32);
        out.extend_from_slice(&sender.to_be_bytes());
        out.extend_from_slice(&self.published_at_ms.to_be_bytes());
        // Longer fields cannot be published: a topic or event over 64 KiB is
        // refused by the HTTP and WebSocket size limits long before.
        put_text(&mut out, topic);
        put_text(&mut out, event);
        out.push(kind);
        put_bytes(&mut out, body);
        out
    }

    /// Reads [`Broadcast::to_bytes`]'s form back. The payload is copied as
    /// it is (a JSON payload is checked to be an object by its first byte,
    /// as on publish, never parsed); anything malformed is an error, never
    /// a panic or a partial broadcast.
    pub fn from_bytes(bytes: &[u8]) -> Result<Broadcast, DecodeError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let id = BroadcastId(reader.u64()?);
        let node = NodeId(reader.u64()?);
        let shard = reader.u16()?;
        let sender = match reader.u32()? {
            NO_SENDER => None,
            key => Some(ClientId(key as usize)),
        };
        let published_at_ms = reader.u64()?;
        let topic = reader.text()?;
        let event = reader.text()?;
        let kind = reader.u8()?;
        let body = reader.bytes()?.to_vec();
        if !reader.rest().is_empty() {
            return Err(DecodeError::Trailing(reader.rest().len()));
        }
        let payload = match kind {
            PAYLOAD_JSON => Payload::Json(body),
            PAYLOAD_BINARY => Payload::Binary(body),
            other => return Err(DecodeError::PayloadKind(other)),
        };
        let content = Content::new(topic, event, payload)?;
        let origin = Origin {
            node,
            shard,
            sender,
        };
        Ok(Broadcast::new(content, id, origin, published_at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Payload {
        Payload::Json(text.as_bytes().to_vec())
    }

    fn origin(sender: Option<ClientId>) -> Origin {
        Origin {
            node: NodeId(7),
            shard: 1,
            sender,
        }
    }

    fn broadcast(topic: &str, event: &str, payload: Payload) -> Broadcast {
        let content = Content::new(topic.into(), event.into(), payload).unwrap();
        Broadcast::new(
            content,
            BroadcastId::new(1, 5),
            origin(None),
            1_700_000_000_000,
        )
    }

    const V1: FrameKind = FrameKind::of(Serializer::V1);
    const V2: FrameKind = FrameKind::of(Serializer::V2);

    #[test]
    fn encodes_each_kind_once_and_shares_the_bytes() {
        let b = broadcast("room:1", "new_msg", json(r#"{"body":"hi"}"#));
        let v2 = b.frame(V2).unwrap().clone();
        assert_eq!(
            v2.body(),
            br#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
        );
        assert_eq!(v2.bytes()[0], 0x81);
        assert!(v2.shares_bytes_with(b.frame(V2).unwrap()));
        let v1 = b.frame(V1).unwrap();
        let value: serde_json::Value = serde_json::from_slice(v1.body()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"topic":"room:1","event":"new_msg","payload":{"body":"hi"},"ref":null})
        );
    }

    #[test]
    fn binary_goes_to_v2_only() {
        let b = broadcast("room:1", "tick", Payload::Binary(vec![0xff]));
        let frame = b.frame(V2).unwrap();
        assert_eq!(frame.bytes()[0], 0x82);
        assert_eq!(frame.body(), b"\x02\x06\x04room:1tick\xff");
        assert!(b.frame(V1).is_none());
    }

    #[test]
    fn refuses_what_cannot_be_encoded() {
        let content = |t: &str, p| Content::new(t.into(), "e".into(), p);
        assert_eq!(
            content("t", json("[1]")),
            Err(PublishError::PayloadNotObject)
        );
        assert_eq!(content("", json("{}")), Err(PublishError::EmptyTopic));
        assert!(matches!(
            content(&"x".repeat(256), Payload::Binary(vec![])),
            Err(PublishError::FieldTooLong {
                field: "topic",
                len: 256
            })
        ));
    }

    #[test]
    fn only_the_origin_shard_skips_the_sender() {
        let content = Content::new("t".into(), "e".into(), json("{}")).unwrap();
        let b = Broadcast::new(content, BroadcastId(1), origin(Some(ClientId(3))), 0);
        assert_eq!(b.sender_on(NodeId(7), 1), Some(ClientId(3)));
        assert_eq!(b.sender_on(NodeId(7), 0), None);
        assert_eq!(b.sender_on(NodeId(8), 1), None);
    }

    #[test]
    fn bytes_round_trip_keeps_identity_and_payload_bytes() {
        for payload in [
            json(r#" {"n": 1e400, "s":"\ud83d"} "#),
            Payload::Binary(vec![0, 1, 255]),
        ] {
            let content = Content::new("room:é".into(), "ev".into(), payload).unwrap();
            let b = Broadcast::new(
                content,
                BroadcastId::new(3, 9),
                origin(Some(ClientId(12))),
                42,
            );
            let back = Broadcast::from_bytes(&b.to_bytes()).unwrap();
            assert_eq!(back.content(), b.content());
            assert_eq!(back.id(), b.id());
            assert_eq!(back.origin(), b.origin());
            assert_eq!(back.published_at_ms(), 42);
        }
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let bytes = broadcast("room:1", "e", json("{}")).to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                Broadcast::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Broadcast::from_bytes(&longer).unwrap_err(),
            DecodeError::Trailing(1)
        );
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(
            Broadcast::from_bytes(&version).unwrap_err(),
            DecodeError::Version(9)
        );
        let mut not_object = broadcast("t", "e", json("{}")).to_bytes();
        let last = not_object.len() - 1;
        not_object[last - 1] = b'[';
        not_object[last] = b']';
        assert_eq!(
            Broadcast::from_bytes(&not_object).unwrap_err(),
            DecodeError::Invalid(PublishError::PayloadNotObject)
        );
    }
}
