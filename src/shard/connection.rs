//! One client connection and the phase it is in.
//!
//! A connection starts as plain HTTP (API calls, health checks, or the
//! WebSocket upgrade request). A successful upgrade replaces the phase with
//! [`Phase::WebSocket`]; any close — by the client, by a protocol error, by
//! the server — moves it to [`Phase::Closing`], where output is flushed, the
//! write side shut, and the socket dropped when the peer hangs up or the
//! deadline passes. See `docs/architecture.md`, "The life of a connection".

use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::connect::Identity;
use crate::limits::EventLimiter;
use crate::protocol::channels::ChannelSet;
use crate::protocol::message::Serializer;
use crate::shard::outbox::Outbox;
use crate::transport::frame::FrameDecoder;

/// What the channel layer knows of a client, whatever carries it (a
/// WebSocket connection or a long-poll session).
#[derive(Debug)]
pub struct ClientSession {
    /// The serializer negotiated by `vsn`.
    pub serializer: Serializer,
    /// The Phoenix channels joined on this socket.
    pub channels: ChannelSet,
    /// Who the connect policy said this is; `None` for anonymous
    /// connections, which then carry no identity allocation at all.
    pub identity: Option<Box<Identity>>,
    /// The client event rate limit, when configured.
    pub limiter: Option<EventLimiter>,
}

impl ClientSession {
    /// The client's identity (anonymous when the policy gave none).
    pub fn identity(&self) -> &Identity {
        self.identity.as_deref().unwrap_or(&ANONYMOUS)
    }
}

/// The WebSocket state of an upgraded connection.
#[derive(Debug)]
pub struct WebSocketSession {
    /// Incremental frame parser (reassembles fragments, enforces the size limit).
    pub decoder: FrameDecoder,
    /// The channels, identity and limits of the client.
    pub client: ClientSession,
}

/// The identity of connections admitted without one.
pub static ANONYMOUS: Identity = Identity {
    user_id: None,
    channels: None,
    socket_id: None,
};

/// What finishing a parked upgrade needs.
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

/// Where a connection is in its life.
// Nearly every connection spends its life as a WebSocket: boxing the session
// would add an allocation per connection and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP requests (keep-alive allowed).
    Http,
    /// A valid upgrade request waits for the backend's connect decision;
    /// nothing has been answered yet.
    Authorizing(Box<PendingUpgrade>),
    /// Upgraded; speaking Phoenix over WebSocket.
    WebSocket(WebSocketSession),
    /// An HTTP request held by a long-poll session (a poll waiting for
    /// messages, or a POST waiting for the backend): further input waits.
    Held,
    /// Going away: flush what is queued, shut the write side, wait for the
    /// peer to hang up, and drop the socket by `deadline` at the latest.
    Closing {
        /// When the socket is dropped whatever the peer does.
        deadline: Instant,
        /// Whether `shutdown(Write)` was already done.
        write_shut: bool,
    },
}

/// A connection owned by a shard.
#[derive(Debug)]
pub struct Connection {
    /// The socket, registered with the shard's poll under this connection's key.
    pub socket: TcpStream,
    /// The peer's address (for logs and, later, connect policies).
    pub peer: SocketAddr,
    /// What the connection is doing.
    pub phase: Phase,
    /// Input received but not yet processed (a partial request or frame).
    /// Empty, with no allocation, whenever the input was consumed whole,
    /// which is the usual case.
    pub pending_input: Vec<u8>,
    /// Output waiting for the socket.
    pub outbox: Outbox,
    /// When the connection last received anything (the idle timeout's clock).
    pub last_active: Instant,
    /// Whether the key is already in the shard's flush list this turn.
    pub flush_scheduled: bool,
    /// Unique per shard: tells this connection from a later one that reuses
    /// its slab key (backend answers arrive late).
    pub serial: u64,
}

impl Connection {
    /// A freshly accepted connection.
    pub fn new(socket: TcpStream, peer: SocketAddr, now: Instant, serial: u64) -> Connection {
        Connection {
            socket,
            peer,
            phase: Phase::Http,
            pending_input: Vec::new(),
            outbox: Outbox::default(),
            last_active: now,
            flush_scheduled: false,
            serial,
        }
    }

    /// The WebSocket session, if upgraded and not closing.
    pub fn websocket(&mut self) -> Option<&mut WebSocketSession> {
        match &mut self.phase {
            Phase::WebSocket(session) => Some(session),
            _ => None,
        }
    }

    /// Whether the connection is on its way out.
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }
}

#[cfg(test)]
mod tests {
    /// Idle connections are the memory budget (< 1 KiB each, see
    /// docs/benchmarks.md): a field added here costs every connection.
    #[test]
    fn a_connection_stays_small() {
        assert!(std::mem::size_of::<super::Connection>() <= 280);
        assert!(std::mem::size_of::<super::WebSocketSession>() <= 128);
    }
}
