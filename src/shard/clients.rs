//! The shard's clients: whatever speaks Phoenix channels here, a WebSocket
//! connection or a long-poll session, behind one [`ClientId`].
//!
//! A client is its channel-layer state ([`ClientSession`]: serializer,
//! channels, identity, rate limit) and its [`Sink`], where messages for it
//! are queued. The fan-out, replies and pushes queue on the sink through
//! [`SinkSet`]; only the sink knows which transport it feeds.

use slab::Slab;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::connection::{ConnectionKey, Connections};
use crate::connect::Identity;
use crate::fanout::deliver::{FrameSinks, Queued};
use crate::fanout::frame::{EncodedFrame, FrameKind};
use crate::fanout::topics::ClientId;
use crate::lifecycle::event::EndReason;
use crate::limits::EventLimiter;
use crate::longpoll::session::LongPollSession;
use crate::protocol::channels::ChannelSet;
use crate::protocol::message::Serializer;
use crate::transport::frame::write_frame;

/// The identity of clients admitted without one.
pub static ANONYMOUS: Identity = Identity {
    user_id: None,
    channels: None,
    socket_id: None,
};

/// What the channel layer knows of a client, whatever carries it.
#[derive(Debug)]
pub struct ClientSession {
    /// The serializer negotiated by `vsn`.
    pub serializer: Serializer,
    /// The Phoenix channels joined by this client.
    pub channels: ChannelSet,
    /// Who the connect policy said this is; `None` for anonymous clients,
    /// which then carry no identity allocation at all.
    pub identity: Option<Box<Identity>>,
    /// The client event rate limit, when configured.
    pub limiter: Option<EventLimiter>,
    /// Why the client is going away, once something decided it (its
    /// `leave` and `disconnect` events say so); `closed` when unset.
    pub ending: Option<EndReason>,
    /// Whether it joined a topic whose route has `lifecycle` (then its end
    /// is a `disconnect` event).
    pub lifecycle: bool,
}

impl ClientSession {
    /// The client's identity (anonymous when the policy gave none).
    pub fn identity(&self) -> &Identity {
        self.identity.as_deref().unwrap_or(&ANONYMOUS)
    }

    /// The frame kind this client receives broadcasts in.
    pub fn frame_kind(&self) -> FrameKind {
        FrameKind::of(self.serializer)
    }
}

/// Where a client's messages go.
#[derive(Debug)]
pub enum Sink {
    /// The outbox of the WebSocket connection at this key.
    WebSocket(ConnectionKey),
    /// A long-poll session's buffer, drained by its polls.
    LongPoll(Box<LongPollSession>),
}

/// A client of the channel layer.
#[derive(Debug)]
pub struct Client {
    /// Unique per shard: tells this client from a later one that reuses its
    /// id (backend answers arrive late).
    pub serial: u64,
    /// Its channel-layer state.
    pub session: ClientSession,
    /// Where its messages go.
    pub sink: Sink,
}

impl Client {
    /// The long-poll session, for a long-poll client.
    pub fn longpoll(&mut self) -> Option<&mut LongPollSession> {
        match &mut self.sink {
            Sink::LongPoll(session) => Some(session),
            Sink::WebSocket(_) => None,
        }
    }
}

/// Every client of a shard.
#[derive(Debug, Default)]
pub struct Clients {
    slab: Slab<Client>,
    last_serial: u64,
}

impl Clients {
    /// Adds a client; returns its id and serial.
    pub fn insert(&mut self, session: ClientSession, sink: Sink) -> (ClientId, u64) {
        self.last_serial += 1;
        let serial = self.last_serial;
        let key = self.slab.insert(Client {
            serial,
            session,
            sink,
        });
        (ClientId(key), serial)
    }

    /// The id the next [`Clients::insert`] will return (a long-poll token
    /// names it before the session exists).
    pub fn next_id(&self) -> (ClientId, u64) {
        (ClientId(self.slab.vacant_key()), self.last_serial + 1)
    }

    /// Removes a client.
    pub fn remove(&mut self, id: ClientId) -> Option<Client> {
        self.slab.try_remove(id.0)
    }

    /// The client `id` if it still has serial `serial`.
    pub fn get_current(&mut self, id: ClientId, serial: u64) -> Option<&mut Client> {
        self.get_mut(id).filter(|c| c.serial == serial)
    }
}

super::table::keyed_lookups!(Clients, ClientId, Client);

/// The shard's sinks, borrowed for one delivery or one reply: what queues a
/// message on a client, whichever transport carries it.
pub struct SinkSet<'a> {
    /// The clients.
    pub clients: &'a mut Clients,
    /// The connections that WebSocket sinks write to.
    pub connections: &'a mut Connections,
    /// Long-poll sessions with a held poll that got messages this turn.
    pub ready_polls: &'a mut Vec<ClientId>,
    /// `socket.send_buffer_limit`.
    pub limit: usize,
}

impl SinkSet<'_> {
    /// Queues a message made for one client (a reply or a push), encoded in
    /// its serializer as `body`.
    pub fn queue_text(&mut self, id: ClientId, body: &[u8]) -> Queued {
        let Some(client) = self.clients.get_mut(id) else {
            return Queued::Unsupported;
        };
        match &mut client.sink {
            Sink::WebSocket(connection) => {
                let mut frame = Vec::with_capacity(body.len() + 10);
                write_frame(&mut frame, OpCode::Data(Data::Text), body);
                let queued = self.connections.queue_owned(*connection, &frame);
                over_limit(queued > self.limit)
            }
            Sink::LongPoll(session) => {
                let buffered = session.buffer_owned(body.to_vec(), self.limit);
                if buffered.wake {
                    self.ready_polls.push(id);
                }
                over_limit(buffered.over_limit)
            }
        }
    }
}

fn over_limit(over: bool) -> Queued {
    if over {
        Queued::OverLimit
    } else {
        Queued::Queued
    }
}

impl FrameSinks for SinkSet<'_> {
    #[inline]
    fn queue(&mut self, id: ClientId, frame: &EncodedFrame) -> Queued {
        let Some(client) = self.clients.get_mut(id) else {
            debug_assert!(false, "subscriber {id:?} has no client");
            return Queued::Unsupported;
        };
        match &mut client.sink {
            Sink::WebSocket(connection) => {
                let queued = self.connections.queue_shared(*connection, frame);
                over_limit(queued > self.limit)
            }
            // A poll answer is JSON text: a binary frame has no form there.
            Sink::LongPoll(_) if frame.is_binary() => Queued::Unsupported,
            Sink::LongPoll(session) => {
                let buffered = session.buffer_shared(frame.clone(), self.limit);
                if buffered.wake {
                    self.ready_polls.push(id);
                }
                over_limit(buffered.over_limit)
            }
        }
    }
}
