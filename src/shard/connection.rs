//! The shard's connections: one byte stream each, the phase it is in, its
//! queued output, and the table that owns them and flushes them.
//!
//! A connection starts as plain HTTP (API calls, health checks, a WebSocket
//! upgrade or a long-poll request). A successful upgrade replaces the phase
//! with [`Phase::WebSocket`], which names the channel-layer client the
//! connection carries; any close — by the client, by a protocol error, by
//! the server — moves it to [`Phase::Closing`], where output is flushed,
//! the write side shut, and the stream dropped when the peer hangs up or
//! the deadline passes. See `docs/architecture.md`, "The life of a client".

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::{Interest, Registry, Token};
use slab::Slab;

use super::outbox::{FlushStats, Flushed, Outbox};
use crate::fanout::topics::ClientId;
use crate::protocol::message::Serializer;
use crate::transport::frame::FrameDecoder;
use crate::transport::http::RequestParser;
use crate::transport::stream::Stream;

/// A connection's key in its shard's table, which is also its mio token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionKey(pub usize);

/// What finishing a parked connect request needs.
#[derive(Debug)]
pub struct PendingUpgrade {
    /// The serializer `vsn` asked for.
    pub serializer: Serializer,
    /// The transport being opened.
    pub transport: PendingTransport,
}

/// The transport a parked connect request opens once admitted.
#[derive(Debug)]
pub enum PendingTransport {
    /// A WebSocket upgrade.
    WebSocket {
        /// The `Sec-WebSocket-Accept` value.
        accept_key: String,
        /// The subprotocol to echo, if any.
        subprotocol: Option<String>,
    },
    /// A long-poll session (its creating GET is answered `410` + token).
    LongPoll {
        /// Whether the GET's connection stays open after the answer.
        keep_alive: bool,
    },
}

/// The WebSocket state of an upgraded connection.
#[derive(Debug)]
pub struct WebSocketPhase {
    /// Incremental frame parser (reassembles fragments, enforces the size limit).
    pub decoder: FrameDecoder,
    /// The channel-layer client this connection carries.
    pub client: ClientId,
}

/// The HTTP state of a connection, between and during requests.
#[derive(Debug, Default)]
pub struct HttpPhase {
    /// The request being parsed (its body is taken as it arrives).
    pub parser: RequestParser,
    /// When the request in progress began to arrive. The whole request —
    /// head and body — must arrive within `server.http_idle_timeout_ms`,
    /// however it dribbles in.
    pub request_started: Option<Instant>,
}

impl Phase {
    /// Reading HTTP requests, none in progress.
    pub fn http() -> Phase {
        Phase::Http(HttpPhase::default())
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP requests (keep-alive allowed).
    Http(HttpPhase),
    /// A valid connect request waits for the backend's decision; nothing
    /// has been answered yet.
    Authorizing(Box<PendingUpgrade>),
    /// Upgraded; speaking Phoenix over WebSocket.
    WebSocket(WebSocketPhase),
    /// An HTTP request held by a long-poll session (a poll waiting for
    /// messages, or a POST waiting for the backend): further input waits.
    Held,
    /// Going away: flush what is queued, shut the write side, wait for the
    /// peer to hang up, and drop the stream by `deadline` at the latest.
    Closing {
        /// When the stream is dropped whatever the peer does.
        deadline: Instant,
        /// Whether the write side was already shut.
        write_shut: bool,
    },
}

/// A connection owned by a shard.
#[derive(Debug)]
pub struct Connection {
    /// The byte stream, registered with the shard's poll under this key.
    pub stream: Stream,
    /// The peer's address (for logs and connect policies).
    pub peer: SocketAddr,
    /// What the connection is doing.
    pub phase: Phase,
    /// Input received but not yet processed (a partial request or frame).
    /// Empty, with no allocation, whenever the input was consumed whole,
    /// which is the usual case.
    pub pending_input: Vec<u8>,
    /// Output waiting for the stream.
    pub outbox: Outbox,
    /// When the connection last received anything (the idle timeout's clock).
    pub last_active: Instant,
    /// Whether the key is already in the flush list this turn.
    pub flush_scheduled: bool,
    /// Since when the unsent bytes have been above `socket.send_buffer_limit`
    /// (cleared when a flush brings them under): how long it has not drained.
    pub backlog_since: Option<Instant>,
    /// Unique per shard: tells this connection from a later one that reuses
    /// its key (backend answers and held requests arrive late).
    pub serial: u64,
}

impl Connection {
    /// A fresh connection over `stream`.
    pub fn new(stream: Stream, peer: SocketAddr, now: Instant) -> Connection {
        Connection {
            stream,
            peer,
            phase: Phase::http(),
            pending_input: Vec::new(),
            outbox: Outbox::default(),
            last_active: now,
            flush_scheduled: false,
            backlog_since: None,
            serial: 0,
        }
    }

    /// The client this connection carries, if upgraded and not closing.
    pub fn client(&self) -> Option<ClientId> {
        match &self.phase {
            Phase::WebSocket(ws) => Some(ws.client),
            _ => None,
        }
    }

    /// Whether the connection is on its way out.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }
}

/// Every connection of a shard, and the list of those with output to flush
/// at the end of the turn.
#[derive(Debug)]
pub struct Connections {
    slab: Slab<Connection>,
    /// Connections with output queued this turn.
    flush_list: Vec<ConnectionKey>,
    /// Serial number of the last connection added.
    last_serial: u64,
    /// `socket.send_buffer_limit`: a flush that gets under it ends a backlog.
    send_buffer_limit: usize,
}

impl Connections {
    /// An empty table with room for `capacity` connections.
    pub fn new(capacity: usize, send_buffer_limit: usize) -> Connections {
        Connections {
            slab: Slab::with_capacity(capacity),
            flush_list: Vec::new(),
            last_serial: 0,
            send_buffer_limit,
        }
    }

    /// Registers `connection` with the poll and adds it, with a new serial.
    pub fn insert(
        &mut self,
        registry: &Registry,
        mut connection: Connection,
    ) -> io::Result<ConnectionKey> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        // A forwarded request has no socket: its output is collected and
        // it is flushed like any other connection.
        if let Some(socket) = connection.stream.socket_mut() {
            registry.register(socket, Token(key), Interest::READABLE | Interest::WRITABLE)?;
        }
        self.last_serial += 1;
        connection.serial = self.last_serial;
        connection.flush_scheduled = false;
        entry.insert(connection);
        Ok(ConnectionKey(key))
    }

    /// Deregisters and removes a connection.
    pub fn remove(&mut self, registry: &Registry, key: ConnectionKey) -> Option<Connection> {
        let mut connection = self.slab.try_remove(key.0)?;
        if let Some(socket) = connection.stream.socket_mut() {
            let _ = registry.deregister(socket);
        }
        Some(connection)
    }

    /// Puts a connection on this turn's flush list (once).
    #[inline]
    pub fn schedule_flush(&mut self, key: ConnectionKey) {
        if let Some(connection) = self.slab.get_mut(key.0) {
            Self::schedule(&mut self.flush_list, key, connection);
        }
    }

    /// [`Connections::schedule_flush`] for a connection already borrowed.
    #[inline]
    pub fn schedule(
        flush_list: &mut Vec<ConnectionKey>,
        key: ConnectionKey,
        connection: &mut Connection,
    ) {
        if !connection.flush_scheduled {
            connection.flush_scheduled = true;
            flush_list.push(key);
        }
    }

    /// Queues a broadcast frame on the connection at `key` and schedules its
    /// flush; returns the connection's unsent bytes after it.
    #[inline]
    pub fn queue_shared(
        &mut self,
        key: ConnectionKey,
        frame: &crate::fanout::frame::EncodedFrame,
    ) -> usize {
        let Some(connection) = self.slab.get_mut(key.0) else {
            debug_assert!(false, "a client's connection {key:?} is gone");
            return 0;
        };
        connection.outbox.push_shared(frame.clone());
        Self::schedule(&mut self.flush_list, key, connection);
        connection.outbox.queued_bytes()
    }

    /// Queues bytes made for one connection and schedules its flush; returns
    /// its unsent bytes after them (0 when the connection is gone).
    pub fn queue_owned(&mut self, key: ConnectionKey, bytes: &[u8]) -> usize {
        let Some(connection) = self.slab.get_mut(key.0) else {
            return 0;
        };
        connection.outbox.push_owned(bytes);
        Self::schedule(&mut self.flush_list, key, connection);
        connection.outbox.queued_bytes()
    }

    /// Flushes one connection now; `Err` means it is dead.
    pub fn flush_one(&mut self, key: ConnectionKey, stats: &mut FlushStats) -> io::Result<Flushed> {
        let Some(connection) = self.slab.get_mut(key.0) else {
            return Ok(Flushed::All);
        };
        let flushed = connection.outbox.flush(&mut connection.stream, stats)?;
        if connection.outbox.queued_bytes() <= self.send_buffer_limit {
            connection.backlog_since = None;
        }
        if flushed == Flushed::All {
            if let Phase::Closing { write_shut, .. } = &mut connection.phase {
                if !*write_shut {
                    *write_shut = true;
                    // Half-close: the peer sees EOF after our close frame,
                    // answers, and hangs up; we then drop it.
                    connection.stream.shutdown_write();
                }
            }
        }
        Ok(flushed)
    }

    /// One vectored flush per listed connection. Connections whose stream
    /// failed are appended to `dead` for the shard to remove.
    pub fn flush_all(&mut self, stats: &mut FlushStats, dead: &mut Vec<ConnectionKey>) {
        let list = std::mem::take(&mut self.flush_list);
        for &key in &list {
            if let Some(connection) = self.slab.get_mut(key.0) {
                connection.flush_scheduled = false;
            }
            // A failed stream, or a forwarded request whose answer is
            // complete, is done with: the shard removes it (and sends a
            // forwarded answer back).
            let failed = self.flush_one(key, stats).is_err();
            let finished = self
                .slab
                .get_mut(key.0)
                .is_some_and(|c| c.stream.finished_answer().is_some());
            if failed || finished {
                dead.push(key);
            }
        }
        // Keep the allocation; nothing above schedules flushes.
        debug_assert!(self.flush_list.is_empty());
        let mut list = list;
        list.clear();
        self.flush_list = list;
    }
}

super::table::keyed_lookups!(Connections, ConnectionKey, Connection);

#[cfg(test)]
mod tests {
    /// Idle connections are the memory budget (< 1 KiB each, see
    /// docs/benchmarks.md): a field added here costs every connection.
    #[test]
    fn a_connection_stays_small() {
        assert!(std::mem::size_of::<super::Connection>() <= 280);
        assert!(std::mem::size_of::<super::WebSocketPhase>() <= 128);
    }
}
