//! Long-poll across nodes: a request whose session lives on another node.
//!
//! Behind a round-robin load balancer a long-poll client's requests land
//! on any node, as Phoenix allows. The node a request lands on (whose
//! signer knows the cluster's shared `socket.longpoll.secret`) sees from
//! the token that another node owns the session, holds the client's
//! connection, and forwards the request over the bus. The owner handles
//! it like a request of its own on a connection without a socket (a
//! [`Stream::Forwarded`]): the same code holds the poll, buffers, answers
//! and closes; the bytes it writes are the answer, sent back over the bus
//! and written to the client as they are. Both sides are bounded: the
//! forwarding node answers `504` if no answer comes within the poll window
//! and a grace, and an answer may hold [`ANSWER_LIMIT`] bytes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::connection::{Connection, ConnectionKey, HttpPhase, Phase};
use super::http::Handled;
use super::Shard;
use crate::cluster::envelope::ForwardedRequest;
use crate::fanout::broadcast::NodeId;
use crate::longpoll::token::TokenSigner;
use crate::metrics::ShardMetrics;
use crate::transport::http::{write_json_error, Request};
use crate::transport::query::parse_pairs;
use crate::transport::stream::Stream;

/// Bytes an answer to a forwarded request may hold; a larger one is
/// replaced by a `502`.
pub const ANSWER_LIMIT: usize = 16 * 1024 * 1024;
/// How long past the poll window the forwarding node waits for an answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// A request another node forwarded here (the bus's inbox message).
#[derive(Debug)]
pub struct Forwarded {
    /// The node holding the client's connection.
    pub from: NodeId,
    /// The request and that node's id of it.
    pub request: ForwardedRequest,
}

/// One forwarded request waiting for its answer.
#[derive(Debug)]
struct Waiting {
    key: ConnectionKey,
    serial: u64,
    deadline: Instant,
    /// The request, handled here after all if its node is gone.
    request: Request,
}

/// Both sides of forwarding, on one shard.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// Requests forwarded so far (the ids' low bits).
    sent: u64,
    /// Requests this shard forwarded, by id.
    waiting: HashMap<u64, Waiting>,
    /// Requests other nodes forwarded here: the connection answering, and
    /// where its answer goes.
    answering: HashMap<ConnectionKey, (NodeId, u64)>,
}

impl Shard {
    /// Forwards a long-poll request for a session on node `owner` (its
    /// shard `shard`) and holds the client's connection for the answer.
    pub(super) fn forward_longpoll(
        &mut self,
        key: ConnectionKey,
        owner: NodeId,
        shard: u16,
        request: Request,
        now: Instant,
    ) -> Handled {
        let (Some(cluster), Some(connection)) =
            (self.distributor.cluster(), self.connections.get_mut(key))
        else {
            let mut out = Vec::new();
            write_json_error(&mut out, 410, "unknown session", false);
            self.send_bytes(key, &out);
            return Handled::Close;
        };
        connection.phase = Phase::Held;
        let serial = connection.serial;
        let forwarding = &mut self.longpoll.forwarding;
        forwarding.sent += 1;
        let id = (self.id as u64) << 48 | (forwarding.sent & ((1 << 48) - 1));
        let deadline = now + self.config.socket.longpoll.window() + ANSWER_GRACE;
        forwarding.waiting.insert(
            id,
            Waiting {
                key,
                serial,
                deadline,
                request: request.clone(),
            },
        );
        cluster.forward(owner, ForwardedRequest { id, shard, request });
        ShardMetrics::add(&self.metrics().longpoll_forwarded, 1);
        Handled::Held
    }

    /// The owner's answer to a request this shard forwarded: written to the
    /// client as it is. The owner answered "connection: close" (it cannot
    /// know the client's connection), so this connection closes after it.
    /// No answer at all (`None`) means the owner is not up: the session is
    /// gone, and the request is handled here as one with a stale token
    /// (a poll opens a new session, as on a restarted node).
    pub(super) fn on_forward_answer(&mut self, id: u64, response: Option<&[u8]>, now: Instant) {
        let Some(waiting) = self.longpoll.forwarding.waiting.remove(&id) else {
            return; // timed out already
        };
        if !self.holds(waiting.key, waiting.serial) {
            return; // the client went away
        }
        match response {
            Some(response) => {
                self.send_bytes(waiting.key, response);
                self.start_closing(waiting.key, now);
            }
            None => self.handle_here(waiting.key, waiting.request, now),
        }
    }

    /// Handles a request whose session's node is gone, without its token.
    fn handle_here(&mut self, key: ConnectionKey, mut request: Request, now: Instant) {
        let stale = |v: &str| TokenSigner::looks_like_session_token(v);
        request
            .headers
            .retain(|(name, value)| !(name == "x-phoenix-longpoll-token" && stale(value)));
        let pairs = parse_pairs(&request.query);
        request.query = pairs
            .iter()
            .filter(|(k, v)| !(k == "token" && stale(v)))
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        if let Some(connection) = self.connections.get_mut(key) {
            connection.phase = Phase::Http(HttpPhase::default());
        }
        match self.handle_request(key, request, now) {
            Handled::KeepAlive => self.process_input(key, &mut [], now),
            Handled::Close => self.start_closing(key, now),
            Handled::HandOver { .. } => self.start_closing(key, now),
            Handled::Upgraded | Handled::Parked | Handled::Held => {}
        }
    }

    /// Answers `504` to forwarded requests whose owner did not answer in time.
    pub(super) fn forwarding_tick(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .longpoll
            .forwarding
            .waiting
            .iter()
            .filter(|(_, waiting)| now >= waiting.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(waiting) = self.longpoll.forwarding.waiting.remove(&id) else {
                continue;
            };
            if self.holds(waiting.key, waiting.serial) {
                let mut out = Vec::new();
                write_json_error(
                    &mut out,
                    504,
                    "the node owning the session did not answer",
                    false,
                );
                self.send_bytes(waiting.key, &out);
                self.start_closing(waiting.key, now);
            }
        }
    }

    /// Whether connection `key` (of `serial`) still holds a request.
    fn holds(&self, key: ConnectionKey, serial: u64) -> bool {
        self.connections
            .get(key)
            .is_some_and(|c| c.serial == serial && matches!(c.phase, Phase::Held))
    }

    /// A request another node forwarded for a session of this shard:
    /// handled on a socketless connection whose output is the answer.
    pub(super) fn on_forwarded(&mut self, forwarded: Forwarded, now: Instant) {
        let Forwarded { from, request } = forwarded;
        let ForwardedRequest { id, request, .. } = request;
        let peer = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let connection = Connection::new(Stream::forwarded(ANSWER_LIMIT), peer, now);
        let Some(key) = self.take_in(connection, "a forwarded request") else {
            return;
        };
        self.longpoll.forwarding.answering.insert(key, (from, id));
        match self.handle_request(key, request, now) {
            Handled::Held | Handled::Parked => {}
            // Answered at once (or refused): done once flushed.
            _ => self.start_closing(key, now),
        }
    }

    /// A connection is being removed: if it answered a forwarded request,
    /// its answer goes back to the node that asked (a `502` when the answer
    /// is incomplete or over its limit).
    pub(super) fn forwarded_done(&mut self, key: ConnectionKey, stream: &mut Stream) {
        let Some((to, id)) = self.longpoll.forwarding.answering.remove(&key) else {
            return;
        };
        let response = match stream.finished_answer() {
            Some(answer) => std::mem::take(&mut answer.answer),
            None => {
                let mut out = Vec::new();
                write_json_error(&mut out, 502, "the session's node could not answer", false);
                out
            }
        };
        if let Some(cluster) = self.distributor.cluster() {
            cluster.answer(to, id, response);
        }
    }
}

/// Percent-encodes a query component (what `parse_pairs` decoded).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
