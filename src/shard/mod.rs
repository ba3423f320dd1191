//! A shard: one thread, one `mio::Poll`, its own connections, clients and
//! topic table.
//!
//! The loop's invariants (mio is edge-triggered, so these are what keep it
//! from stalling):
//!
//! 1. Every readiness event is a hint. Handlers read until `WouldBlock`,
//!    accept until `WouldBlock`, and tolerate events for connections that are
//!    already gone (their keys may even have been reused: a spurious read on a
//!    fresh socket just finds nothing).
//! 2. Output is never written where it is produced. Producing output puts the
//!    connection on the flush list; at the end of each turn every listed
//!    connection gets one vectored write covering everything queued for it,
//!    so a burst of broadcasts costs one syscall per connection, not one per
//!    message.
//! 3. A write that would block leaves the rest queued; the writable edge that
//!    follows puts the connection back on the flush list.
//! 4. Nothing blocks: other shards are reached through their inboxes, the
//!    backend through the hook pool.
//!
//! A turn is: poll; handle each event (accept, read, inbox); then the end of
//! the turn — presence diffs, long-poll answers, the flush — and, every
//! [`TICK`], the timers. The clock is read once per turn and passed down as
//! `now`. Each feature keeps its state in its own component and exposes the
//! same entry points, called from here:
//!
//! | component | state | inbox message | end of turn | tick |
//! | --- | --- | --- | --- | --- |
//! | [`connection`] (+ `connection_io`) | sockets, phases, outboxes, request parsers | — | flush | idle, request, closing and slow-consumer timeouts |
//! | [`clients`] + `channels` | channel-layer clients, sinks, topics | `Broadcast`, `Disconnect` | — | — |
//! | [`longpoll`] | session tokens, polls to answer | `HandOver` | answer polls | expire polls, POSTs, sessions |
//! | `subscriptions` (cluster) | joins held until the node listens to their topic | `Subscribed` | — | release joins held too long |
//! | [`forward`] | long-poll requests forwarded to and from other nodes | `Forwarded`, `ForwardAnswer` | — | `504` for unanswered forwards |
//! | [`presence`] | tracked presences, the replica | `Presence` | diffs out, states to joiners | — |
//! | [`hooks`] | the hook pool | `Hook` | — | — |
//! | [`lifecycle`] + `occupancy` | the queue to the events' delivery thread; owned topics' shards and presence keys on this node | `Occupancy` | topics lost this turn to their owners | — |
//! | [`history`] (+ [`history_cluster`]) | owned topics' histories, joins waiting for their position | `Sequence`, `RecoveryAsk`, `RecoveryAnswer`, `Sequenced`, `HistoryRead` | — | expire histories |

pub mod channels;
pub mod clients;
pub mod connection;
mod connection_io;
pub mod forward;
pub mod handover;
pub mod history;
mod history_api;
pub mod history_cluster;
pub mod hooks;
mod http;
pub mod inbox;
pub mod lifecycle;
pub mod longpoll;
mod occupancy;
pub mod outbox;
pub mod presence;
mod subscriptions;
mod table;
mod websocket;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use self::clients::Clients;
use self::connection::{Connection, ConnectionKey, Connections, Phase};
use self::hooks::Hooks;
use self::inbox::{InboxReceiver, ShardInbox, ShardMessage};
use self::longpoll::LongPoll;
use self::presence::Presence;
use crate::config::Config;
use crate::fanout::broadcast::NodeId;
use crate::fanout::deliver::Distributor;
use crate::fanout::topics::{ClientId, TopicTable};
use crate::hooks::HookPool;
use crate::limits::{EventLimit, TokenBucket};
use crate::longpoll::token::TokenSigner;
use crate::metrics::ShardMetrics;
use crate::protocol::channels::Action;
use crate::transport::stream::Stream;

/// The listening socket's token. Connection tokens are slab keys, which never
/// reach these reserved values.
const LISTENER: Token = Token(usize::MAX - 1);
/// The inbox waker's token.
const WAKER: Token = Token(usize::MAX - 2);

/// Size of the shard's read buffer, shared by all its connections.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one readiness event may do before yielding to other connections.
const READS_PER_EVENT: usize = 16;
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(250);
/// Bytes a client may send while its request waits (for the backend, or
/// held by a long-poll session).
const MAX_EARLY_INPUT: usize = 64 * 1024;
/// How long a closing connection waits for its peer before being dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a slow consumer's connection stays open after its close frame
/// was queued: the frames already in the kernel's buffer come first, and a
/// client that resumes reading within this time still reads the 1008.
const SLOW_CONSUMER_GRACE: Duration = Duration::from_secs(10);

/// Everything a shard thread needs, built by the server before spawning it.
pub struct ShardSetup {
    /// This shard's index.
    pub id: usize,
    /// The shard's poll (the inbox waker is registered with it).
    pub poll: Poll,
    /// This shard's listening socket (same address as every other shard).
    pub listener: TcpListener,
    /// Where messages to this shard arrive.
    pub inbox: InboxReceiver,
    /// Inboxes of all shards, indexed by shard id (this one included).
    pub peers: Arc<[ShardInbox]>,
    /// The configuration.
    pub config: Arc<Config>,
    /// Counters of all shards, indexed by shard id.
    pub metrics: Arc<[ShardMetrics]>,
    /// The backend hook pool, when `webhook.url` is set.
    pub hooks: Option<HookPool>,
    /// Signs and verifies long-poll session tokens (one key per process).
    pub signer: TokenSigner,
    /// Random per process start: the node id of broadcasts, in session
    /// tokens and presence refs.
    pub instance: u64,
    /// The cluster bus, when `[cluster]` is on.
    pub cluster: Option<crate::cluster::ClusterHandle>,
    /// Set (before any shard hears `Shutdown`) when the server stops.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The Phoenix PubSub bridge, when `[phoenix_pubsub]` is on.
    pub bridge: Option<crate::phoenix_pubsub::bridge::BridgeHandle>,
    /// This shard's queue to the lifecycle events' delivery thread, and
    /// its counters, when events are on.
    pub events: Option<(
        crate::lifecycle::delivery::EventProducer,
        Arc<crate::lifecycle::delivery::EventMetrics>,
    )>,
}

/// Buffers reused every turn, so the hot path does not allocate.
#[derive(Default)]
struct Scratch {
    read: Vec<u8>,
    text: Vec<u8>,
    actions: Vec<Action>,
    inbox: Vec<ShardMessage>,
    over_limit: Vec<ClientId>,
    dead: Vec<ConnectionKey>,
}

/// A running shard.
pub struct Shard {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: InboxReceiver,
    peers: Arc<[ShardInbox]>,
    config: Arc<Config>,
    metrics: Arc<[ShardMetrics]>,
    /// Accepting was paused (out of descriptors, or the accept rate limit);
    /// the tick resumes it.
    accept_paused: bool,
    /// `server.accept_rate_per_shard`, when set.
    accept_bucket: Option<TokenBucket>,
    /// Set once shutdown began: when the shard exits at the latest.
    stop_deadline: Option<Instant>,
    /// The server is stopping (this shard may not have heard it yet).
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// When the shard started: the origin of the limiters' millisecond clock.
    epoch: Instant,
    /// The per-client event limit, when configured.
    event_limit: Option<EventLimit>,
    scratch: Scratch,
    /// Component: sockets, their phases and outboxes.
    connections: Connections,
    /// Component: channel-layer clients and their sinks.
    clients: Clients,
    /// Which clients subscribe to which topic.
    topics: TopicTable,
    /// Where this shard's broadcasts go.
    distributor: Distributor<ShardInbox>,
    /// Component: long-poll sessions' requests and timers.
    longpoll: LongPoll,
    /// Component: presence tracking and replication.
    presence: Presence,
    /// Component: backend hooks.
    hooks: Hooks,
    /// Component (cluster): joins waiting for the node's subscription.
    awaited: subscriptions::AwaitedTopics,
    /// Component: topic histories and recovering joins.
    history: history::ShardHistory,
    /// Component: lifecycle events for the backend.
    lifecycle: lifecycle::ShardLifecycle,
    /// Where this node's broadcasts go to a Phoenix app, when bridged.
    bridge: Option<crate::phoenix_pubsub::bridge::BridgeHandle>,
}

impl Shard {
    /// Prepares a shard from its setup.
    pub fn new(setup: ShardSetup) -> io::Result<Shard> {
        let ShardSetup {
            id,
            poll,
            mut listener,
            inbox,
            peers,
            config,
            metrics,
            hooks,
            signer,
            instance,
            cluster,
            events,
            stopping,
            bridge,
        } = setup;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let accept_rate = config.server.accept_rate_per_shard;
        let event_limit = (config.socket.client_events_per_second > 0).then(|| EventLimit {
            rate: config.socket.client_events_per_second,
            burst: config.socket.client_events_burst,
        });
        let own_inbox = peers[id].clone();
        let lifecycle =
            lifecycle::ShardLifecycle::new(events, config.webhook.event_set(), instance, id);
        let history = history::ShardHistory::new(
            config.routes.any_history(),
            config.history.memory_limit,
            peers.len(),
            instance ^ (id as u64).rotate_left(48),
        );
        let send_buffer_limit = config.socket.send_buffer_limit;
        Ok(Shard {
            id,
            poll,
            listener: Some(listener),
            inbox,
            distributor: Distributor::new(NodeId(instance), id, peers.clone())
                .with_cluster(cluster),
            peers,
            config,
            metrics,
            accept_paused: false,
            accept_bucket: (accept_rate > 0)
                .then(|| TokenBucket::new(accept_rate, accept_rate, now)),
            stop_deadline: None,
            stopping,
            epoch: now,
            event_limit,
            scratch: Scratch {
                read: vec![0; READ_CHUNK],
                text: Vec::with_capacity(4096),
                ..Scratch::default()
            },
            connections: Connections::new(1024, send_buffer_limit),
            clients: Clients::default(),
            topics: TopicTable::new(),
            longpoll: LongPoll::new(signer),
            presence: Presence::new(instance, id),
            hooks: Hooks::new(
                hooks,
                Arc::new(move |answer| {
                    own_inbox.send(ShardMessage::Hook(answer));
                }),
            ),
            awaited: subscriptions::AwaitedTopics::default(),
            history,
            lifecycle,
            bridge,
        })
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.metrics[self.id]
    }

    /// Milliseconds since the shard started (wraps after 49 days; the
    /// limiters only use differences).
    fn clock_ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.drain_inbox(now),
                    Token(key) => {
                        let key = ConnectionKey(key);
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, now);
                        }
                        if event.is_writable() {
                            self.connections.schedule_flush(key);
                        }
                    }
                }
            }
            self.end_of_turn(now);
            if now >= next_tick {
                next_tick = now + TICK;
                self.on_tick(now);
            }
            if let Some(deadline) = self.stop_deadline {
                if self.connections.is_empty() || now >= deadline {
                    tracing::debug!(
                        shard = self.id,
                        left = self.connections.len(),
                        "shard stopped"
                    );
                    self.release_occupancy();
                    return Ok(());
                }
            }
        }
    }

    /// Each component's end of turn, in the order their output depends on:
    /// presence diffs (and the states that must follow them), then the
    /// topics lost this turn (after their members), then the long-poll
    /// answers that carry this turn's messages, then one write
    /// per connection (invariant 2).
    fn end_of_turn(&mut self, now: Instant) {
        self.presence_end_of_turn(now);
        self.occupancy_end_of_turn();
        self.longpoll_end_of_turn(now);
        self.flush_all(now);
    }

    /// Each component's timers.
    fn on_tick(&mut self, now: Instant) {
        if self.accept_paused {
            self.accept_paused = false;
            self.accept(now);
        }
        self.connections_tick(now);
        self.longpoll_tick(now);
        self.forwarding_tick(now);
        self.subscriptions_tick(now);
        self.history_tick(now);
    }

    /// Routes the inbox's messages to the components they belong to.
    fn drain_inbox(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.scratch.inbox);
        batch.extend(self.inbox.drain());
        for message in batch.drain(..) {
            match message {
                ShardMessage::Broadcast(broadcast) => self.deliver(&broadcast, now),
                ShardMessage::Disconnect(target) => self.disconnect_local(&target, now),
                ShardMessage::Hook(answer) => self.on_hook_answer(answer, now),
                ShardMessage::HandOver(hand_over) => self.adopt(*hand_over, now),
                ShardMessage::Presence(sync) => self.on_presence_sync(&sync, now),
                ShardMessage::Subscribed(topic) => self.on_subscribed(&topic, now),
                ShardMessage::Forwarded(forwarded) => self.on_forwarded(*forwarded, now),
                ShardMessage::ForwardAnswer { id, response } => {
                    self.on_forward_answer(id, response.as_deref(), now)
                }
                ShardMessage::Sequence(to_sequence) => self.on_sequence(*to_sequence, now),
                ShardMessage::RecoveryAsk(ask) => self.on_recovery_ask_message(*ask, now),
                ShardMessage::RecoveryAnswer(answer) => self.on_recovery_answer(*answer, now),
                ShardMessage::Sequenced(broadcast) => self.on_sequenced(broadcast, now),
                ShardMessage::HistoryRead(read) => self.on_history_read(*read, now),
                ShardMessage::HistoryGap(topic) => self.on_history_gap(&topic, now),
                ShardMessage::Occupancy {
                    topic,
                    shard,
                    occupied,
                } => self.on_occupancy(&topic, shard, occupied),
                ShardMessage::Shutdown => self.begin_shutdown(now),
            }
        }
        self.scratch.inbox = batch;
    }

    /// Sends `message` to every shard but this one.
    fn send_to_peers(&self, mut message: impl FnMut() -> ShardMessage) {
        for (shard, inbox) in self.peers.iter().enumerate() {
            if shard != self.id {
                inbox.send(message());
            }
        }
    }

    /// Accepts until the listener would block (invariant 1).
    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            if let Some(bucket) = &mut self.accept_bucket {
                if !bucket.try_take(now) {
                    // The rest wait in the backlog; the tick resumes.
                    ShardMetrics::add(&self.metrics[self.id].accept_throttled, 1);
                    self.accept_paused = true;
                    return;
                }
            }
            match listener.accept() {
                Ok((socket, peer)) => {
                    if self.connections.len() >= self.config.server.max_connections_per_shard {
                        ShardMetrics::add(&self.metrics().refused, 1);
                        continue;
                    }
                    let connection = Connection::new(Stream::plain(socket), peer, now);
                    if let Err(e) = self.connections.insert(self.poll.registry(), connection) {
                        tracing::warn!(error = %e, "cannot register a connection");
                        continue;
                    }
                    ShardMetrics::add(&self.metrics().accepted, 1);
                    ShardMetrics::add(&self.metrics().connections, 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a transient error:
                    // the pending connections stay queued, and with an
                    // edge-triggered listener no new event may come, so the
                    // tick retries.
                    if !self.accept_paused {
                        tracing::warn!(shard = self.id, error = %e, "accept failed; retrying on the next tick");
                    }
                    self.accept_paused = true;
                    return;
                }
            }
        }
    }

    /// Stops accepting, closes every client — WebSockets with 1012 (service
    /// restart, so clients reconnect to this server's successor), long-poll
    /// sessions with `410` — and lets the loop run until everything is
    /// flushed or the shutdown timeout passes.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.stop_deadline.is_some() {
            return;
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.stop_deadline = Some(now + self.config.shutdown_timeout());
        let clients: Vec<ClientId> = self.clients.iter().map(|(id, _)| id).collect();
        for client in clients {
            self.mark_ending(client, crate::lifecycle::event::EndReason::Shutdown);
            self.close_client(
                client,
                websocket::CLOSE_SERVICE_RESTART,
                "server shutting down",
                now,
            );
        }
        let keys: Vec<ConnectionKey> = self.connections.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(Phase::Http(_) | Phase::Authorizing(_)) =
                self.connections.get(key).map(|c| &c.phase)
            {
                self.start_closing(key, now);
            }
        }
    }
}
