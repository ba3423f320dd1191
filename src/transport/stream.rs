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
}

impl Stream {
    /// Wraps a freshly accepted socket. Replies are small and latency
    /// matters more than packet count, so Nagle is off.
    pub fn plain(socket: TcpStream) -> Stream {
        let _ = socket.set_nodelay(true);
        Stream::Plain(socket)
    }

    /// Shuts the write side (after a close frame or a final response): the
    /// peer sees EOF after what was written.
    pub fn shutdown_write(&self) {
        match self {
            Stream::Plain(socket) => {
                let _ = socket.shutdown(Shutdown::Write);
            }
        }
    }

    /// The TCP socket under the stream, to register with a poll. Readiness
    /// is always the socket's, whatever the variant: a TLS stream would wrap
    /// the same socket.
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(socket) => socket,
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
