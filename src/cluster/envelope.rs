//! The bus envelope: what one node publishes to Redis for the others.
//!
//! Every message starts with the format version, the kind and the sending
//! node, so a node reads nothing more of its own echoes than those 10
//! bytes. The rest depends on the kind (all integers big-endian, texts with
//! a 16-bit length, byte strings with a 32-bit length, lists with a 32-bit
//! count); `docs/cluster.md` draws each one.
//!
//! Decoding is all or nothing: a message is returned whole or refused with
//! an [`EnvelopeError`], never half-read, and counts are checked against
//! the bytes left before anything is reserved, so forged lengths cannot
//! make a node allocate more than the message itself holds.

use std::sync::Arc;

use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::{Broadcast, DecodeError, NodeId};
use crate::history::Position;
use crate::presence::{Meta, MetaData, PresenceDiff};
use crate::protocol::message::Payload;
use crate::transport::http::Request;
use crate::wire::{put_bytes, put_text, ReadError, Reader};

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

/// One bus message.
#[derive(Debug)]
pub enum Envelope {
    /// A broadcast for a topic's subscribers on every node.
    Broadcast(Arc<Broadcast>),
    /// A broadcast to a history topic, with its position in the topic's
    /// stream. Redis's publish script writes it (the position is only
    /// known there: see [`history_parts`]); the stream keeps it as it is.
    HistoryBroadcast(Arc<Broadcast>),
    /// "I am alive": sent every `heartbeat_ms`, with the node's name and
    /// how many heartbeats it has sent (a restarted node starts again at
    /// 1 under a new node id).
    Heartbeat {
        /// The node's configured or generated name.
        name: String,
        /// Heartbeats sent by this node so far.
        sequence: u64,
    },
    /// The node's presence changes of one turn of one shard, for one topic.
    PresenceDiff(PresenceDiff),
    /// Every presence the node owns: the answer to a [`Envelope::SyncRequest`]
    /// and what a node sends after (re)connecting. Receivers replace all they
    /// held of that node with it.
    PresenceSnapshot(Vec<PresenceDiff>),
    /// "Send me your presences": a node that starts or reconnects asks
    /// every other node (`target: None`) for its snapshot; a node that
    /// hears a node new to it asks that node alone.
    SyncRequest {
        /// The node that should answer; `None`: every node.
        target: Option<NodeId>,
    },
    /// Close this identity's connections on every node.
    Disconnect(DisconnectTarget),
    /// The node is shutting down: its presences leave now, not after
    /// `node_timeout_ms`.
    Leaving,
    /// A long-poll request for a session this node owns, forwarded by the
    /// node the client's request landed on (sent on the owner's channel).
    LongPollRequest(Box<ForwardedRequest>),
    /// The owner's whole HTTP answer to a forwarded request (sent on the
    /// forwarding node's channel).
    LongPollAnswer {
        /// The forwarding node's id of the request.
        id: u64,
        /// The HTTP response, as the owner wrote it.
        response: Vec<u8>,
    },
}

/// A long-poll request travelling to the node that owns its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRequest {
    /// The forwarding node's id of the request (its shard in the top 16
    /// bits), echoed in the answer.
    pub id: u64,
    /// The owner's shard holding the session.
    pub shard: u16,
    /// The request.
    pub request: Request,
}

/// A decoded message and its sender.
#[derive(Debug)]
pub struct Received {
    /// The node that published it.
    pub from: NodeId,
    /// The message.
    pub envelope: Envelope,
}

/// Why bytes from the bus were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short, a length past the end, or text that is not UTF-8.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] ReadError),
    /// Written by a Cinder with another format version.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// A kind byte this build does not know.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// Bytes follow the message.
    #[error("{0} bytes after the envelope")]
    Trailing(usize),
    /// The broadcast inside is malformed.
    #[error("bad broadcast in envelope: {0}")]
    Broadcast(#[from] DecodeError),
    /// A broadcast's JSON payload is not valid JSON.
    #[error("a broadcast payload is not valid JSON")]
    Payload,
    /// A presence meta is not a JSON object.
    #[error("a presence meta is not a JSON object")]
    Meta,
    /// A history broadcast's position does not parse.
    #[error("a history broadcast's position is malformed")]
    Position,
    /// A disconnect names an unknown target kind.
    #[error("unknown disconnect target {0}")]
    Target(u8),
}

const BROADCAST: u8 = 1;
const HEARTBEAT: u8 = 2;
const PRESENCE_DIFF: u8 = 3;
const PRESENCE_SNAPSHOT: u8 = 4;
const SYNC_REQUEST: u8 = 5;
const DISCONNECT: u8 = 6;
const LEAVING: u8 = 7;
const LONGPOLL_REQUEST: u8 = 8;
const LONGPOLL_ANSWER: u8 = 9;
const HISTORY_BROADCAST: u8 = 10;

/// The smallest encoded meta: key, `phx_ref` and JSON, each an empty text.
const MIN_META: usize = 6;
/// The smallest encoded diff: a topic and two empty lists.
const MIN_DIFF: usize = 10;

impl Envelope {
    /// Encodes this message as sent by `from`.
    pub fn encode(&self, from: NodeId) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        out.push(self.kind());
        out.extend_from_slice(&from.0.to_be_bytes());
        match self {
            Envelope::Broadcast(broadcast) => out.extend_from_slice(&broadcast.to_bytes()),
            Envelope::HistoryBroadcast(broadcast) => {
                let position = broadcast.position().map(ToString::to_string);
                put_text(&mut out, position.as_deref().unwrap_or(""));
                out.extend_from_slice(&broadcast.to_bytes());
            }
            Envelope::Heartbeat { name, sequence } => {
                put_text(&mut out, name);
                out.extend_from_slice(&sequence.to_be_bytes());
            }
            Envelope::PresenceDiff(diff) => put_diff(&mut out, diff),
            Envelope::PresenceSnapshot(topics) => {
                out.extend_from_slice(&(topics.len() as u32).to_be_bytes());
                for diff in topics {
                    put_diff(&mut out, diff);
                }
            }
            Envelope::Disconnect(target) => {
                let (kind, id) = match target {
                    DisconnectTarget::UserId(id) => (0, id),
                    DisconnectTarget::SocketId(id) => (1, id),
                };
                out.push(kind);
                put_text(&mut out, id);
            }
            Envelope::SyncRequest { target } => {
                // Node ids are random 64-bit numbers; 0 stands for "all".
                out.extend_from_slice(&target.map_or(0, |node| node.0).to_be_bytes());
            }
            Envelope::Leaving => {}
            Envelope::LongPollRequest(forwarded) => put_request(&mut out, forwarded),
            Envelope::LongPollAnswer { id, response } => {
                out.extend_from_slice(&id.to_be_bytes());
                put_bytes(&mut out, response);
            }
        }
        out
    }

    fn kind(&self) -> u8 {
        match self {
            Envelope::Broadcast(_) => BROADCAST,
            Envelope::HistoryBroadcast(_) => HISTORY_BROADCAST,
            Envelope::Heartbeat { .. } => HEARTBEAT,
            Envelope::PresenceDiff(_) => PRESENCE_DIFF,
            Envelope::PresenceSnapshot(_) => PRESENCE_SNAPSHOT,
            Envelope::SyncRequest { .. } => SYNC_REQUEST,
            Envelope::Disconnect(_) => DISCONNECT,
            Envelope::Leaving => LEAVING,
            Envelope::LongPollRequest(_) => LONGPOLL_REQUEST,
            Envelope::LongPollAnswer { .. } => LONGPOLL_ANSWER,
        }
    }
}

/// The sender of a message, read from its first 10 bytes alone: enough to
/// drop a node's own echoes without decoding them.
pub fn sender(bytes: &[u8]) -> Option<NodeId> {
    let node = bytes.get(2..10)?;
    Some(NodeId(u64::from_be_bytes(node.try_into().ok()?)))
}

/// Whether a message is a broadcast of this format version, read from its
/// first 2 bytes.
pub fn is_broadcast(bytes: &[u8]) -> bool {
    bytes.get(..2) == Some(&[VERSION, BROADCAST][..])
}

/// Whether a message is a history broadcast of this format version: it
/// goes to the topic's owner shard, the publishing node's own echo too.
pub fn is_history_broadcast(bytes: &[u8]) -> bool {
    bytes.get(..2) == Some(&[VERSION, HISTORY_BROADCAST][..])
}

/// A history broadcast's envelope without its position: the bytes before
/// the position's 16-bit length and the bytes after the position. Redis's
/// publish script joins them around the position it assigns.
pub fn history_parts(broadcast: &Broadcast, from: NodeId) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(10);
    head.push(VERSION);
    head.push(HISTORY_BROADCAST);
    head.extend_from_slice(&from.0.to_be_bytes());
    (head, broadcast.to_bytes())
}

/// Decodes a whole message.
pub fn decode(bytes: &[u8]) -> Result<Received, EnvelopeError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let kind = reader.u8()?;
    let from = NodeId(reader.u64()?);
    let envelope = match kind {
        BROADCAST => Envelope::Broadcast(Arc::new(read_broadcast(&mut reader)?)),
        HISTORY_BROADCAST => {
            let position = Position::parse(&reader.text()?).ok_or(EnvelopeError::Position)?;
            let broadcast = read_broadcast(&mut reader)?.with_position(position);
            Envelope::HistoryBroadcast(Arc::new(broadcast))
        }
        HEARTBEAT => Envelope::Heartbeat {
            name: reader.text()?,
            sequence: reader.u64()?,
        },
        PRESENCE_DIFF => Envelope::PresenceDiff(read_diff(&mut reader)?),
        PRESENCE_SNAPSHOT => {
            let count = reader.count(MIN_DIFF)?;
            let mut topics = Vec::with_capacity(count);
            for _ in 0..count {
                topics.push(read_diff(&mut reader)?);
            }
            Envelope::PresenceSnapshot(topics)
        }
        SYNC_REQUEST => Envelope::SyncRequest {
            target: match reader.u64()? {
                0 => None,
                node => Some(NodeId(node)),
            },
        },
        DISCONNECT => {
            let target = reader.u8()?;
            let id = reader.text()?;
            Envelope::Disconnect(match target {
                0 => DisconnectTarget::UserId(id),
                1 => DisconnectTarget::SocketId(id),
                other => return Err(EnvelopeError::Target(other)),
            })
        }
        LEAVING => Envelope::Leaving,
        LONGPOLL_REQUEST => Envelope::LongPollRequest(Box::new(read_request(&mut reader)?)),
        LONGPOLL_ANSWER => Envelope::LongPollAnswer {
            id: reader.u64()?,
            response: reader.bytes()?.to_vec(),
        },
        other => return Err(EnvelopeError::Kind(other)),
    };
    if !reader.rest().is_empty() {
        return Err(EnvelopeError::Trailing(reader.rest().len()));
    }
    Ok(Received { from, envelope })
}

/// A broadcast's byte form, which runs to the end of the message.
fn read_broadcast(reader: &mut Reader<'_>) -> Result<Broadcast, EnvelopeError> {
    let broadcast = Broadcast::from_bytes(reader.rest())?;
    reader.take(reader.rest().len())?;
    // Its payload is spliced into every subscriber's frame as it is: it
    // must be one JSON object, not just start like one.
    if let Payload::Json(text) = broadcast.payload() {
        if serde_json::from_slice::<&serde_json::value::RawValue>(text).is_err() {
            return Err(EnvelopeError::Payload);
        }
    }
    Ok(broadcast)
}

fn put_request(out: &mut Vec<u8>, forwarded: &ForwardedRequest) {
    let request = &forwarded.request;
    out.extend_from_slice(&forwarded.id.to_be_bytes());
    out.extend_from_slice(&forwarded.shard.to_be_bytes());
    put_text(out, &request.method);
    put_text(out, &request.path);
    put_text(out, &request.query);
    out.extend_from_slice(&(request.headers.len() as u32).to_be_bytes());
    for (name, value) in &request.headers {
        put_text(out, name);
        put_text(out, value);
    }
    put_bytes(out, &request.body);
    out.push(request.minor_version);
}

fn read_request(reader: &mut Reader<'_>) -> Result<ForwardedRequest, EnvelopeError> {
    let id = reader.u64()?;
    let shard = reader.u16()?;
    let method = reader.text()?;
    let path = reader.text()?;
    let query = reader.text()?;
    let count = reader.count(4)?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        headers.push((reader.text()?, reader.text()?));
    }
    let body = reader.bytes()?.to_vec();
    let minor_version = reader.u8()?;
    Ok(ForwardedRequest {
        id,
        shard,
        request: Request {
            method,
            path,
            query,
            headers,
            body,
            // The owner answers and is done: the forwarding node holds the
            // client's connection and decides about keep-alive.
            keep_alive: false,
            minor_version,
        },
    })
}

fn put_diff(out: &mut Vec<u8>, diff: &PresenceDiff) {
    put_text(out, &diff.topic);
    for list in [&diff.joins, &diff.leaves] {
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for (key, meta) in list.iter() {
            put_text(out, key);
            put_text(out, &meta.phx_ref);
            put_bytes_text(out, &meta.json);
        }
    }
}

/// A meta's JSON has a 32-bit length (the meta size limit is a setting).
fn put_bytes_text(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn read_diff(reader: &mut Reader<'_>) -> Result<PresenceDiff, EnvelopeError> {
    let topic = reader.text()?;
    let joins = read_metas(reader)?;
    let leaves = read_metas(reader)?;
    Ok(PresenceDiff {
        topic,
        joins,
        leaves,
    })
}

fn read_metas(reader: &mut Reader<'_>) -> Result<Vec<(Arc<str>, Meta)>, EnvelopeError> {
    let count = reader.count(MIN_META)?;
    let mut metas = Vec::with_capacity(count);
    for _ in 0..count {
        let key: Arc<str> = reader.text()?.into();
        let phx_ref = reader.text()?;
        let json = std::str::from_utf8(reader.bytes()?).map_err(|_| ReadError::Utf8)?;
        // A meta is sent on to clients inside a JSON frame: it must be an
        // object, or a peer (or anyone who can publish to Redis) could
        // break every member's presence frames.
        if !(json.starts_with('{') && json.ends_with('}'))
            || crate::protocol::json_object::JsonObject::parse(json).is_err()
        {
            return Err(EnvelopeError::Meta);
        }
        metas.push((
            key,
            Arc::new(MetaData {
                phx_ref: phx_ref.into_boxed_str(),
                json: json.into(),
            }),
        ));
    }
    Ok(metas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::broadcast::{BroadcastId, Content, Origin};
    use crate::fanout::topics::ClientId;
    use crate::protocol::message::Payload;

    fn meta(phx_ref: &str, json: &str) -> Meta {
        Arc::new(MetaData {
            phx_ref: phx_ref.into(),
            json: json.into(),
        })
    }

    fn diff(topic: &str) -> PresenceDiff {
        PresenceDiff {
            topic: topic.into(),
            joins: vec![("alice".into(), meta("R1", r#"{"n":1,"phx_ref":"R1"}"#))],
            leaves: vec![("bob".into(), meta("R0", r#"{"phx_ref":"R0"}"#))],
        }
    }

    fn round_trip(envelope: Envelope) -> Envelope {
        let bytes = envelope.encode(NodeId(42));
        assert_eq!(sender(&bytes), Some(NodeId(42)));
        let received = decode(&bytes).unwrap();
        assert_eq!(received.from, NodeId(42));
        received.envelope
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let content = Content::new(
            "room:1".into(),
            "msg".into(),
            Payload::Json(b"{\"a\":1}".to_vec()),
        )
        .unwrap();
        let origin = Origin {
            node: NodeId(42),
            shard: 1,
            sender: Some(ClientId(9)),
        };
        let broadcast = Broadcast::new(content, BroadcastId::new(1, 5), origin, 1234);
        let Envelope::Broadcast(back) = round_trip(Envelope::Broadcast(Arc::new(broadcast))) else {
            panic!("not a broadcast");
        };
        assert_eq!(
            (back.topic(), back.event(), back.id(), back.origin()),
            ("room:1", "msg", BroadcastId::new(1, 5), origin)
        );
        let Envelope::Heartbeat { name, sequence } = round_trip(Envelope::Heartbeat {
            name: "cinder-a".into(),
            sequence: 7,
        }) else {
            panic!("not a heartbeat");
        };
        assert_eq!((name.as_str(), sequence), ("cinder-a", 7));
        let Envelope::PresenceDiff(back) = round_trip(Envelope::PresenceDiff(diff("t"))) else {
            panic!("not a diff");
        };
        assert_eq!(back.payload(), diff("t").payload());
        let Envelope::PresenceSnapshot(back) =
            round_trip(Envelope::PresenceSnapshot(vec![diff("a"), diff("b")]))
        else {
            panic!("not a snapshot");
        };
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].topic, "b");
        assert!(matches!(
            round_trip(Envelope::Disconnect(DisconnectTarget::SocketId("s".into()))),
            Envelope::Disconnect(DisconnectTarget::SocketId(id)) if id == "s"
        ));
        assert!(matches!(
            round_trip(Envelope::SyncRequest { target: None }),
            Envelope::SyncRequest { target: None }
        ));
        assert!(matches!(
            round_trip(Envelope::SyncRequest {
                target: Some(NodeId(5))
            }),
            Envelope::SyncRequest {
                target: Some(NodeId(5))
            }
        ));
        assert!(matches!(round_trip(Envelope::Leaving), Envelope::Leaving));
        let forwarded = ForwardedRequest {
            id: 9 << 48 | 3,
            shard: 1,
            request: Request {
                method: "POST".into(),
                path: "/socket/longpoll".into(),
                query: "vsn=2.0.0&token=abc".into(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: b"[\"1\"]".to_vec(),
                keep_alive: false,
                minor_version: 1,
            },
        };
        let Envelope::LongPollRequest(back) =
            round_trip(Envelope::LongPollRequest(Box::new(forwarded.clone())))
        else {
            panic!("not a forwarded request");
        };
        assert_eq!(*back, forwarded);
        assert!(matches!(
            round_trip(Envelope::LongPollAnswer { id: 7, response: b"HTTP/1.1 204".to_vec() }),
            Envelope::LongPollAnswer { id: 7, response } if response == b"HTTP/1.1 204"
        ));
    }

    #[test]
    fn a_history_broadcast_is_its_parts_around_the_position() {
        let content =
            Content::new("h:1".into(), "e".into(), Payload::Json(b"{}".to_vec())).unwrap();
        let origin = Origin {
            node: NodeId(42),
            shard: 0,
            sender: None,
        };
        let broadcast = Broadcast::new(content, BroadcastId(3), origin, 9);
        let (head, tail) = history_parts(&broadcast, NodeId(42));
        let position = "rabc:17";
        let mut bytes = head;
        bytes.extend_from_slice(&(position.len() as u16).to_be_bytes());
        bytes.extend_from_slice(position.as_bytes());
        bytes.extend_from_slice(&tail);
        assert!(is_history_broadcast(&bytes) && !is_broadcast(&bytes));
        let Envelope::HistoryBroadcast(back) = decode(&bytes).unwrap().envelope else {
            panic!("not a history broadcast");
        };
        assert_eq!(
            back.position().map(ToString::to_string).as_deref(),
            Some(position)
        );
        assert_eq!(back.topic(), "h:1");
        let again = Envelope::HistoryBroadcast(back).encode(NodeId(42));
        assert_eq!(again, bytes, "encode writes what the script writes");
        let mut bad = bytes.clone();
        bad[12] = b'R';
        assert_eq!(decode(&bad).unwrap_err(), EnvelopeError::Position);
    }

    #[test]
    fn every_cut_and_every_extra_byte_is_refused() {
        let bytes = Envelope::PresenceSnapshot(vec![diff("a")]).encode(NodeId(1));
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), EnvelopeError::Trailing(1));
    }

    #[test]
    fn unknown_versions_kinds_and_bad_metas_are_refused() {
        let mut bytes = Envelope::Leaving.encode(NodeId(1));
        bytes[0] = 9;
        assert_eq!(decode(&bytes).unwrap_err(), EnvelopeError::Version(9));
        bytes[0] = VERSION;
        bytes[1] = 99;
        assert_eq!(decode(&bytes).unwrap_err(), EnvelopeError::Kind(99));
        let bad = PresenceDiff {
            topic: "t".into(),
            joins: vec![("k".into(), meta("R", "[1]"))],
            leaves: vec![],
        };
        let bytes = Envelope::PresenceDiff(bad).encode(NodeId(1));
        assert_eq!(decode(&bytes).unwrap_err(), EnvelopeError::Meta);
    }

    #[test]
    fn a_broadcast_whose_payload_only_looks_like_an_object_is_refused() {
        // Found by fuzzing: `Content` checks the first non-blank byte only.
        let content = Content::new(
            "room:1".into(),
            "msg".into(),
            Payload::Json(b"\n\r{\t:1}".to_vec()),
        )
        .unwrap();
        let origin = Origin {
            node: NodeId(1),
            shard: 0,
            sender: None,
        };
        let broadcast = Broadcast::new(content, BroadcastId::new(0, 1), origin, 0);
        let bytes = Envelope::Broadcast(Arc::new(broadcast)).encode(NodeId(1));
        assert_eq!(decode(&bytes).unwrap_err(), EnvelopeError::Payload);
    }

    #[test]
    fn forged_counts_reserve_nothing() {
        let mut bytes = vec![VERSION, PRESENCE_SNAPSHOT];
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(EnvelopeError::Malformed(ReadError::Truncated))
        ));
    }
}
