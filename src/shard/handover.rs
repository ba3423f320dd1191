//! Moving a connection to another shard: a long-poll request whose session
//! lives elsewhere travels with its whole connection — socket, unsent
//! output, unread input and the parsed request — through the owner's inbox,
//! so everything about a session stays on one shard (`docs/architecture.md`).

use mio::{Interest, Token};

use super::connection::Connection;
use super::http::Handled;
use super::inbox::ShardMessage;
use super::Shard;
use crate::metrics::ShardMetrics;
use crate::transport::http::Request;

/// A connection moving to the shard that owns its session.
#[derive(Debug)]
pub struct HandOver {
    /// The connection, deregistered from the old shard's poll.
    pub connection: Connection,
    /// The request to handle on arrival.
    pub request: Request,
}

impl Shard {
    /// Moves a connection whose request belongs to another shard's session
    /// to that shard, with its unsent output and unread input.
    pub(super) fn hand_over(&mut self, key: usize, owner: usize, request: Request, rest: &[u8]) {
        let Some(mut connection) = self.connections.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut connection.socket);
        ShardMetrics::sub(&self.metrics[self.id].connections, 1);
        connection.pending_input.extend_from_slice(rest);
        connection.flush_scheduled = false;
        ShardMetrics::add(&self.metrics[self.id].longpoll_handovers, 1);
        self.peers[owner].send(ShardMessage::HandOver(Box::new(HandOver {
            connection,
            request,
        })));
    }

    /// Adopts a connection handed over by another shard and handles its request.
    pub(super) fn adopt(&mut self, hand_over: HandOver) {
        let HandOver {
            mut connection,
            request,
        } = hand_over;
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut connection.socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot register a handed-over connection");
            return;
        }
        self.next_serial += 1;
        connection.serial = self.next_serial;
        connection.last_active = self.now;
        entry.insert(connection);
        ShardMetrics::add(&self.metrics[self.id].connections, 1);
        self.schedule_flush(key);
        match self.handle_request(key, request) {
            Handled::KeepAlive => self.process_input(key, &mut []),
            Handled::Close => self.start_closing(key),
            Handled::HandOver { owner, request } => {
                // Cannot happen (this shard owns the session); never loop.
                tracing::warn!(owner, path = %request.path, "long-poll request handed over twice");
                self.start_closing(key);
            }
            Handled::Upgraded | Handled::Parked | Handled::Held => {}
        }
    }
}
