//! Finished frames and the per-broadcast cache that encodes each kind once.
//!
//! A [`FrameKind`] names one wire form a subscriber can receive. Today that
//! is the serializer (V1 text, V2 text or binary); a compressed variant
//! (permessage-deflate) becomes one more field of the kind and one more slot
//! of the [`FrameCache`], with no change to the delivery loop.

use std::sync::{Arc, OnceLock};

use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::protocol::message::Serializer;
use crate::transport::frame::write_frame;

/// The wire form a subscriber receives a broadcast in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameKind {
    /// The Phoenix serializer the subscriber negotiated.
    pub serializer: Serializer,
}

impl FrameKind {
    /// How many kinds exist: the size of every per-kind table.
    pub const COUNT: usize = 2;

    /// Every kind, in table order.
    pub const ALL: [FrameKind; FrameKind::COUNT] =
        [FrameKind::of(Serializer::V1), FrameKind::of(Serializer::V2)];

    /// The kind for a subscriber of `serializer`.
    pub const fn of(serializer: Serializer) -> FrameKind {
        FrameKind { serializer }
    }

    /// This kind's position in per-kind tables.
    #[inline]
    pub const fn index(self) -> usize {
        match self.serializer {
            Serializer::V1 => 0,
            Serializer::V2 => 1,
        }
    }
}

/// One finished WebSocket frame, shared by every connection it is queued on.
///
/// Cloning is one atomic increment. The bytes are the complete frame (header
/// and body), ready for `writev`; [`EncodedFrame::body`] exposes the message
/// without the header for transports that are not WebSocket (long-poll).
#[derive(Debug, Clone)]
pub struct EncodedFrame(Arc<FrameBytes>);

#[derive(Debug)]
struct FrameBytes {
    bytes: Box<[u8]>,
    body_start: usize,
    binary: bool,
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
            binary: opcode == OpCode::Data(Data::Binary),
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

    /// Whether this is a binary frame (it has no JSON text form).
    #[inline]
    pub fn is_binary(&self) -> bool {
        self.0.binary
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

    /// Whether two handles share one buffer (tests and benches check that
    /// nothing is encoded twice).
    pub fn shares_bytes_with(&self, other: &EncodedFrame) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One lazily encoded frame per [`FrameKind`]. `None` in a filled slot means
/// the broadcast has no form of that kind (binary for V1).
#[derive(Debug, Default)]
pub struct FrameCache {
    slots: [OnceLock<Option<EncodedFrame>>; FrameKind::COUNT],
}

impl FrameCache {
    /// The frame of `kind`, made by `encode` on first use by any thread;
    /// every later caller gets the same buffer.
    #[inline]
    pub fn get_or_encode(
        &self,
        kind: FrameKind,
        encode: impl FnOnce() -> Option<EncodedFrame>,
    ) -> Option<&EncodedFrame> {
        self.slots[kind.index()].get_or_init(encode).as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_tables() {
        for (i, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn the_cache_encodes_once() {
        let cache = FrameCache::default();
        let kind = FrameKind::of(Serializer::V2);
        let first = cache
            .get_or_encode(kind, || {
                Some(EncodedFrame::new(OpCode::Data(Data::Text), b"x"))
            })
            .unwrap()
            .clone();
        let again = cache.get_or_encode(kind, || unreachable!("encoded twice"));
        assert!(first.shares_bytes_with(again.unwrap()));
        let binary = EncodedFrame::new(OpCode::Data(Data::Binary), b"\x02");
        assert!(binary.is_binary() && !first.is_binary());
        assert_eq!(first.body(), b"x");
        assert_eq!(first.bytes(), b"\x81\x01x");
    }
}
