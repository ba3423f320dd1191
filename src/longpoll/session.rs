//! A long-poll session's state between requests: the messages waiting for
//! the next poll, and the requests the session is holding.

use std::collections::VecDeque;
use std::time::Instant;

use crate::fanout::broadcast::EncodedFrame;

/// One message waiting for a poll: its frame text, without any WebSocket
/// header.
#[derive(Debug)]
enum Buffered {
    /// A broadcast's frame, shared with every other subscriber; only its
    /// body is sent (the same encoded JSON the WebSockets get).
    Shared(EncodedFrame),
    /// Text made for this session only (replies, pushes).
    Owned(Box<[u8]>),
}

impl Buffered {
    fn text(&self) -> &[u8] {
        match self {
            Buffered::Shared(frame) => frame.body(),
            Buffered::Owned(text) => text,
        }
    }
}

/// Messages buffered between polls, in the order produced. Bounded by the
/// caller like a WebSocket's unsent bytes (the slow-consumer policy).
#[derive(Debug, Default)]
pub struct MessageBuffer {
    messages: VecDeque<Buffered>,
    bytes: usize,
}

impl MessageBuffer {
    /// Buffers a broadcast frame (its body is what a poll sends).
    pub fn push_shared(&mut self, frame: EncodedFrame) {
        self.bytes += frame.body().len();
        self.messages.push_back(Buffered::Shared(frame));
    }

    /// Buffers text made for this session.
    pub fn push_owned(&mut self, text: Vec<u8>) {
        self.bytes += text.len();
        self.messages
            .push_back(Buffered::Owned(text.into_boxed_slice()));
    }

    /// Bytes of message text buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The buffered texts, oldest first.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.messages.iter().map(Buffered::text)
    }

    /// Forgets everything (after it was written into a poll answer).
    pub fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
        if self.messages.capacity() > 64 {
            self.messages = VecDeque::new();
        }
    }
}

/// An HTTP request a session holds open: a poll waiting for messages, or a
/// POST waiting for the backend's answer to one of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRequest {
    /// The connection carrying the request (a key in the shard's slab).
    pub connection: usize,
    /// That connection's serial (guards against the key being reused).
    pub serial: u64,
    /// When the request is answered anyway (`204` for a poll, `408` for a POST).
    pub deadline: Instant,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn buffers_keep_order_and_count_text_bytes() {
        let mut buffer = MessageBuffer::default();
        let frame = EncodedFrame::new(OpCode::Data(Data::Text), b"[null,null,\"t\",\"e\",{}]");
        buffer.push_owned(b"reply".to_vec());
        buffer.push_shared(frame);
        assert_eq!(buffer.bytes(), 5 + 22);
        let texts: Vec<&[u8]> = buffer.texts().collect();
        assert_eq!(
            texts,
            vec![&b"reply"[..], &b"[null,null,\"t\",\"e\",{}]"[..]]
        );
        buffer.clear();
        assert!(buffer.is_empty());
        assert_eq!(buffer.bytes(), 0);
    }
}
