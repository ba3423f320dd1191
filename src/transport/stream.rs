//! The byte stream under a connection.
//!
//! Everything above this module reads and writes a [`Stream`], never a
//! socket: the HTTP parser, the WebSocket codec, the outbox flush and the
//! hand-over between shards. Today a stream is a plain TCP socket; TLS
//! becomes a second variant that decrypts on read and encrypts on write,
//! with no change to the code above.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// A request another cluster node forwarded here: nothing to read (the
    /// request came whole), and what is written is collected as the answer
    /// to send back over the bus.
    Forwarded(Box<ForwardedStream>),
}

/// The answer being written to a forwarded request.
#[derive(Debug)]
pub struct ForwardedStream {
    /// The bytes written so far (a whole HTTP response once finished).
    pub answer: Vec<u8>,
    /// Bytes the answer may hold; writing more fails the stream.
    pub limit: usize,
    /// Whether the write side was shut: the answer is complete.
    pub finished: bool,
}

impl Stream {
    /// Wraps a freshly accepted socket. Replies are small and latency
    /// matters more than packet count, so Nagle is off.
    pub fn plain(socket: TcpStream) -> Stream {
        let _ = socket.set_nodelay(true);
        Stream::Plain(socket)
    }

    /// A stream for a request forwarded by another node, whose answer may
    /// take `limit` bytes.
    pub fn forwarded(limit: usize) -> Stream {
        Stream::Forwarded(Box::new(ForwardedStream {
            answer: Vec::new(),
            limit,
            finished: false,
        }))
    }

    /// Shuts the write side (after a close frame or a final response): the
    /// peer sees EOF after what was written.
    pub fn shutdown_write(&mut self) {
        match self {
            Stream::Plain(socket) => {
                let _ = socket.shutdown(Shutdown::Write);
            }
            Stream::Forwarded(forwarded) => forwarded.finished = true,
        }
    }

    /// The TCP socket under the stream, to register with a poll (none for a
    /// forwarded request). Readiness is always the socket's, whatever the
    /// variant: a TLS stream would wrap the same socket.
    pub fn socket_mut(&mut self) -> Option<&mut TcpStream> {
        match self {
            Stream::Plain(socket) => Some(socket),
            Stream::Forwarded(_) => None,
        }
    }

    /// A forwarded request's answer, once complete.
    pub fn finished_answer(&mut self) -> Option<&mut ForwardedStream> {
        match self {
            Stream::Forwarded(forwarded) if forwarded.finished => Some(forwarded),
            _ => None,
        }
    }
}

impl ForwardedStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.answer.len() + bytes.len() > self.limit {
            return Err(io::Error::other("forwarded answer over its size limit"));
        }
        self.answer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            // The request came whole; the node that forwarded it holds the
            // client's connection.
            Stream::Forwarded(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Forwarded(forwarded) => forwarded.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write_vectored(bufs),
            Stream::Forwarded(forwarded) => {
                let mut written = 0;
                for buf in bufs {
                    written += forwarded.write(buf)?;
                }
                Ok(written)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
