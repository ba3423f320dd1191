//! Moving a connection to another shard: a long-poll request whose session
//! lives elsewhere (or a `GET /api/history` of a topic another shard owns)
//! travels with its whole connection — stream, unsent
//! output, unread input and the parsed request — through the owner's inbox,
//! so everything about a session stays on one shard (`docs/architecture.md`).

use std::time::Instant;

use super::connection::{Connection, ConnectionKey};
use super::http::Handled;
use super::Shard;
use crate::metrics::ShardMetrics;
use crate::transport::http::Request;

/// A connection moving to the shard that owns its session (the long-poll
/// component's inbox message).
#[derive(Debug)]
pub struct HandOver {
    /// The connection, deregistered from the old shard's poll.
    pub connection: Connection,
    /// The request to handle on arrival.
    pub request: Request,
}

impl Shard {
    /// Takes a connection whose request belongs to another shard's session
    /// out of this shard, with its unsent output and unread input.
    pub(super) fn release_for_hand_over(
        &mut self,
        key: ConnectionKey,
        request: Request,
        rest: &[u8],
    ) -> Option<HandOver> {
        let mut connection = self.connections.remove(self.poll.registry(), key)?;
        ShardMetrics::sub(&self.metrics().connections, 1);
        connection.pending_input.extend_from_slice(rest);
        Some(HandOver {
            connection,
            request,
        })
    }

    /// Adds a connection that did not come through this shard's listener
    /// (`what` names it in the log if the poll refuses it).
    pub(super) fn take_in(&mut self, connection: Connection, what: &str) -> Option<ConnectionKey> {
        match self.connections.insert(self.poll.registry(), connection) {
            Ok(key) => {
                ShardMetrics::add(&self.metrics().connections, 1);
                Some(key)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register {what}");
                None
            }
        }
    }

    /// Adopts a connection handed over by another shard and handles its request.
    pub(super) fn adopt(&mut self, hand_over: HandOver, now: Instant) {
        let HandOver {
            mut connection,
            request,
        } = hand_over;
        connection.last_active = now;
        let Some(key) = self.take_in(connection, "a handed-over connection") else {
            return;
        };
        self.connections.schedule_flush(key);
        match self.handle_request(key, request, now) {
            Handled::KeepAlive => self.process_input(key, &mut [], now),
            Handled::Close => self.start_closing(key, now),
            Handled::HandOver { owner, request } => {
                // Cannot happen (this shard owns the session); never loop.
                tracing::warn!(owner, path = %request.path, "long-poll request handed over twice");
                self.start_closing(key, now);
            }
            Handled::Upgraded | Handled::Parked | Handled::Held => {}
        }
    }
}
