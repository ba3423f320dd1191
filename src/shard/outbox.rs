//! A connection's queue of unsent bytes, flushed with vectored writes.
//!
//! Broadcast frames are queued as shared [`EncodedFrame`] references (no
//! copy); frames made for this connection only (replies, pushes, HTTP
//! responses) are appended to an owned tail buffer so a burst of small
//! replies costs one allocation and one iovec. A flush hands the kernel up to
//! [`MAX_IOVECS`] chunks per `writev`, continuing until the queue is empty or
//! the socket would block.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use smallvec::SmallVec;

use crate::fanout::frame::EncodedFrame;

/// Chunks handed to one `writev`. Linux allows 1024; 64 already amortises the
/// syscall over many frames while keeping the iovec array on the stack.
pub const MAX_IOVECS: usize = 64;

/// Owned tails larger than this start a new chunk rather than growing, so a
/// connection never holds one huge reallocating buffer.
const OWNED_CHUNK_MAX: usize = 64 * 1024;

/// One queued piece of output.
#[derive(Debug)]
enum Chunk {
    /// A broadcast frame shared with other connections.
    Shared(EncodedFrame),
    /// Bytes made for this connection only.
    Owned(Vec<u8>),
}

impl Chunk {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(frame) => frame.bytes(),
            Chunk::Owned(bytes) => bytes,
        }
    }
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket would block; wait for writable readiness.
    Blocked,
}

/// The unsent output of one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head_written: usize,
    /// Unsent bytes over all chunks (what the slow-consumer limit counts).
    queued: usize,
}

/// Counts of one flush, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlushStats {
    /// Bytes the kernel accepted.
    pub bytes: u64,
    /// `writev` calls made.
    pub calls: u64,
}

impl Outbox {
    /// Unsent bytes.
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queues a shared broadcast frame.
    #[inline]
    pub fn push_shared(&mut self, frame: EncodedFrame) {
        self.queued += frame.len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Queues bytes for this connection only, appending to the owned tail
    /// when there is one (order is preserved either way).
    pub fn push_owned(&mut self, bytes: &[u8]) {
        self.queued += bytes.len();
        // The front chunk may be partly written; appending to it is still
        // correct because `head_written` counts from its start.
        if let Some(Chunk::Owned(tail)) = self.chunks.back_mut() {
            if tail.len() + bytes.len() <= OWNED_CHUNK_MAX {
                tail.extend_from_slice(bytes);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
    }

    /// Drops everything not yet started, keeping the partly written front
    /// chunk so the byte stream stays well-formed, and returns the bytes
    /// dropped. Used before a close frame when a consumer is too slow.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_written > 0);
        let mut dropped = 0;
        while self.chunks.len() > keep {
            if let Some(chunk) = self.chunks.pop_back() {
                dropped += chunk.bytes().len();
            }
        }
        self.queued -= dropped;
        dropped
    }

    /// Writes as much as the socket takes, one `writev` per up to
    /// [`MAX_IOVECS`] chunks. Errors other than `WouldBlock` are returned:
    /// the connection is then dead.
    pub fn flush(
        &mut self,
        socket: &mut impl Write,
        stats: &mut FlushStats,
    ) -> io::Result<Flushed> {
        while !self.chunks.is_empty() {
            let result = {
                let mut slices: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = SmallVec::new();
                for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                    let bytes = chunk.bytes();
                    let start = if i == 0 { self.head_written } else { 0 };
                    slices.push(IoSlice::new(&bytes[start..]));
                }
                socket.write_vectored(&slices)
            };
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stats.calls += 1;
            stats.bytes += written as u64;
            self.advance(written);
        }
        // Give back a large ring buffer once drained; idle connections should
        // cost as little memory as possible.
        if self.chunks.capacity() > 64 {
            self.chunks = VecDeque::new();
        }
        Ok(Flushed::All)
    }

    /// Marks `n` bytes written from the front.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                debug_assert!(false, "advanced past the queue");
                return;
            };
            let remaining = front.bytes().len() - self.head_written;
            if n >= remaining {
                n -= remaining;
                self.chunks.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// A socket that accepts at most `budget` bytes per call, then blocks.
    struct Trickle {
        written: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = (self.per_call - n).min(b.len());
                self.written.extend_from_slice(&b[..take]);
                n += take;
                if n == self.per_call {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let frame = EncodedFrame::new(OpCode::Data(Data::Text), b"hello");
        let mut outbox = Outbox::default();
        outbox.push_owned(b"ab");
        outbox.push_shared(frame.clone());
        outbox.push_owned(b"cd");
        outbox.push_owned(b"ef"); // coalesced with "cd"
        assert_eq!(outbox.queued_bytes(), 2 + 7 + 4);
        let mut sock = Trickle {
            written: vec![],
            per_call: 3,
            calls_left: 2,
        };
        let mut stats = FlushStats::default();
        assert_eq!(
            outbox.flush(&mut sock, &mut stats).unwrap(),
            Flushed::Blocked
        );
        assert_eq!(outbox.queued_bytes(), 13 - 6);
        sock.calls_left = 100;
        assert_eq!(outbox.flush(&mut sock, &mut stats).unwrap(), Flushed::All);
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(frame.bytes());
        expected.extend_from_slice(b"cdef");
        assert_eq!(sock.written, expected);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.is_empty());
    }

    #[test]
    fn discard_keeps_the_started_chunk() {
        let frame = EncodedFrame::new(OpCode::Data(Data::Text), b"0123456789");
        let mut outbox = Outbox::default();
        outbox.push_shared(frame.clone());
        outbox.push_shared(frame.clone());
        let mut sock = Trickle {
            written: vec![],
            per_call: 4,
            calls_left: 1,
        };
        outbox.flush(&mut sock, &mut FlushStats::default()).unwrap();
        assert_eq!(outbox.discard_unstarted(), frame.len());
        assert_eq!(outbox.queued_bytes(), frame.len() - 4);
        let mut fresh = Outbox::default();
        fresh.push_shared(frame);
        fresh.discard_unstarted();
        assert!(fresh.is_empty());
    }
}
