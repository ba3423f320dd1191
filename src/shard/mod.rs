//! A shard: one thread, one `mio::Poll`, its own connections and topic table.
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
//! 4. Nothing blocks: other shards are reached through their inboxes.
//!
//! Submodules: [`connection`] (a connection's state), [`outbox`] (queued
//! output and the vectored flush), [`inbox`] (cross-shard queues),
//! `http` (requests and the upgrade), `websocket` (frames → protocol →
//! actions, and the fan-out into outboxes), [`longpoll`] (long-poll
//! sessions), [`handover`] (moving a connection to its session's shard),
//! [`hooks`] (backend answers) and `presence` (tracking and per-turn diffs).

pub mod connection;
pub mod handover;
pub mod hooks;
mod http;
pub mod inbox;
pub mod longpoll;
pub mod outbox;
mod presence;
mod websocket;

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::fanout::topics::SubscriptionSlot;
use crate::fanout::topics::TopicTable;
use crate::hooks::HookPool;
use crate::limits::{EventLimit, TokenBucket};
use crate::longpoll::token::TokenSigner;
use crate::metrics::ShardMetrics;
use crate::presence::state::PresenceReplica;
use crate::presence::tracker::LocalPresence;
use crate::presence::RefMinter;
use crate::protocol::message::Serializer;
use crate::shard::connection::{ClientSession, Connection, Phase};
use crate::shard::inbox::{InboxReceiver, ShardInbox, ShardMessage};
use crate::shard::longpoll::LongPollSession;
use crate::shard::outbox::{FlushStats, Flushed};

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
/// Bytes a client may send while its upgrade waits for the backend.
const MAX_EARLY_INPUT: usize = 64 * 1024;

/// How long a closing connection waits for its peer before being dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection's key in its shard's slab, which is also its mio token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionKey(pub usize);

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
    /// Random per process start: in session tokens and presence refs.
    pub instance: u64,
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
    connections: Slab<Connection>,
    /// Long-poll sessions owned by this shard.
    sessions: Slab<LongPollSession>,
    /// Sessions that received messages this turn while a poll is held.
    ready_sessions: Vec<usize>,
    signer: TokenSigner,
    /// Random per process start (names anonymous presences).
    instance: u64,
    topics: TopicTable,
    /// The presences this shard owns, and this turn's changes to them.
    presence: LocalPresence,
    /// Every presence topic's state, from all shards' diffs.
    replica: PresenceReplica,
    /// Connections with output queued this turn (invariant 2).
    flush_list: Vec<usize>,
    /// Connections that exceeded the send buffer limit during a fan-out;
    /// closed once the fan-out loop no longer borrows the topic table.
    slow_consumers: Vec<usize>,
    /// The turn's clock, read once per turn.
    now: Instant,
    /// Accepting was paused after running out of file descriptors.
    accept_paused: bool,
    /// The backend hook pool, when configured.
    hooks: Option<HookPool>,
    /// The per-connection client event limit, when configured.
    event_limit: Option<EventLimit>,
    /// When the shard started: the origin of the limiters' millisecond clock.
    epoch: Instant,
    /// Serial number of the next accepted connection.
    next_serial: u64,
    /// `server.accept_rate_per_shard`, when set.
    accept_bucket: Option<TokenBucket>,
    /// Set once shutdown began: when the shard exits at the latest.
    stop_deadline: Option<Instant>,
    /// Reused buffers, so the hot path does not allocate.
    read_buf: Vec<u8>,
    scratch: Vec<u8>,
    actions: Vec<crate::protocol::channels::Action>,
    inbox_batch: Vec<ShardMessage>,
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
        } = setup;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let accept_rate = config.server.accept_rate_per_shard;
        let event_limit = (config.socket.client_events_per_second > 0).then(|| EventLimit {
            rate: config.socket.client_events_per_second,
            burst: config.socket.client_events_burst,
        });
        Ok(Shard {
            id,
            poll,
            listener: Some(listener),
            inbox,
            peers,
            config,
            metrics,
            connections: Slab::with_capacity(1024),
            sessions: Slab::new(),
            ready_sessions: Vec::new(),
            signer,
            instance,
            topics: TopicTable::new(),
            presence: LocalPresence::new(RefMinter::new(instance as u32, id as u16)),
            replica: PresenceReplica::default(),
            flush_list: Vec::new(),
            slow_consumers: Vec::new(),
            now: Instant::now(),
            accept_paused: false,
            hooks,
            event_limit,
            epoch: Instant::now(),
            next_serial: 0,
            accept_bucket: (accept_rate > 0)
                .then(|| TokenBucket::new(accept_rate, accept_rate, Instant::now())),
            stop_deadline: None,
            read_buf: vec![0; READ_CHUNK],
            scratch: Vec::with_capacity(4096),
            actions: Vec::new(),
            inbox_batch: Vec::new(),
        })
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.metrics[self.id]
    }

    /// Milliseconds since the shard started (wraps after 49 days; the
    /// limiters only use differences).
    fn clock_ms(&self) -> u32 {
        self.now.saturating_duration_since(self.epoch).as_millis() as u32
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
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => self.drain_inbox(),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                        if event.is_writable() {
                            self.schedule_flush(key);
                        }
                    }
                }
            }
            // End of the turn: this turn's presence changes leave as one
            // diff per topic, polls with news are answered, then one write
            // per connection.
            if self.presence.has_changes() {
                self.flush_presence();
            }
            if !self.ready_sessions.is_empty() {
                self.answer_ready_polls();
            }
            self.flush_all();
            if self.now >= next_tick {
                next_tick = self.now + TICK;
                self.on_tick();
            }
            if let Some(deadline) = self.stop_deadline {
                if self.connections.is_empty() || self.now >= deadline {
                    tracing::debug!(
                        shard = self.id,
                        left = self.connections.len(),
                        "shard stopped"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Accepts until the listener would block (invariant 1).
    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            if let Some(bucket) = &mut self.accept_bucket {
                if !bucket.try_take(self.now) {
                    // The rest wait in the backlog; the tick resumes.
                    ShardMetrics::add(&self.metrics[self.id].accept_throttled, 1);
                    self.accept_paused = true;
                    return;
                }
            }
            match listener.accept() {
                Ok((mut socket, peer)) => {
                    if self.connections.len() >= self.config.server.max_connections_per_shard {
                        ShardMetrics::add(&self.metrics[self.id].refused, 1);
                        drop(socket);
                        continue;
                    }
                    // Replies are small and latency matters more than packet count.
                    let _ = socket.set_nodelay(true);
                    let entry = self.connections.vacant_entry();
                    let key = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut socket,
                        Token(key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(error = %e, "cannot register a connection");
                        continue;
                    }
                    self.next_serial += 1;
                    entry.insert(Connection::new(socket, peer, self.now, self.next_serial));
                    let metrics = &self.metrics[self.id];
                    ShardMetrics::add(&metrics.accepted, 1);
                    ShardMetrics::add(&metrics.connections, 1);
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

    fn drain_inbox(&mut self) {
        let mut batch = std::mem::take(&mut self.inbox_batch);
        batch.extend(self.inbox.drain());
        for message in batch.drain(..) {
            match message {
                ShardMessage::Broadcast(broadcast) => self.deliver(&broadcast),
                ShardMessage::Disconnect(target) => self.disconnect_local(&target),
                ShardMessage::HookDone(done) => self.on_hook_done(*done),
                ShardMessage::ConnectDone(done) => self.on_connect_done(*done),
                ShardMessage::HandOver(hand_over) => self.adopt(*hand_over),
                ShardMessage::Presence(sync) => self.on_presence_sync(&sync),
                ShardMessage::Shutdown => self.begin_shutdown(),
            }
        }
        self.inbox_batch = batch;
    }

    /// Reads what the socket has and processes it (invariant 1).
    fn on_readable(&mut self, key: usize) {
        let mut buf = std::mem::take(&mut self.read_buf);
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.connections.get_mut(key) else {
                break;
            };
            match conn.socket.read(&mut buf) {
                Ok(0) => {
                    // The peer hung up (or half-closed). A WebSocket's channels
                    // end silently (spec §6.9); an HTTP client that half-closed
                    // after its request still gets the queued response.
                    if conn.outbox.is_empty() || conn.is_closing() {
                        self.remove(key);
                    } else {
                        self.start_closing(key);
                    }
                    break;
                }
                Ok(n) => {
                    conn.last_active = self.now;
                    self.process_input(key, &mut buf[..n]);
                    if n < buf.len() {
                        // A short read means the socket is drained; skip the
                        // extra read() that would only say WouldBlock.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(key);
                    break;
                }
            }
        }
        self.read_buf = buf;
    }

    /// Feeds freshly read bytes to the connection's phase. Input left over
    /// (an incomplete request or frame) is kept on the connection.
    fn process_input(&mut self, key: usize, fresh: &mut [u8]) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return; // after a close, input is read only to notice the hang-up
        }
        let mut input = std::mem::take(&mut conn.pending_input);
        if input.is_empty() {
            // The usual case: process straight from the shard's read buffer
            // and copy only an incomplete tail.
            let consumed = self.process_bytes(key, fresh);
            input.extend_from_slice(&fresh[consumed..]);
        } else {
            input.extend_from_slice(fresh);
            let consumed = self.process_bytes(key, &mut input);
            input.drain(..consumed);
        }
        if let Some(conn) = self.connections.get_mut(key) {
            if input.is_empty() && input.capacity() > 4096 {
                input = Vec::new(); // idle connections keep no buffer
            }
            if !conn.is_closing() {
                conn.pending_input = input;
            }
        }
    }

    /// Processes as many complete requests or frames as `input` holds;
    /// returns how many bytes were used.
    fn process_bytes(&mut self, key: usize, input: &mut [u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            let Some(conn) = self.connections.get(key) else {
                return input.len();
            };
            let step = match conn.phase {
                Phase::Http => self.process_http(key, &mut input[used..]),
                Phase::WebSocket(_) => self.process_websocket(key, &mut input[used..]),
                Phase::Closing { .. } => return input.len(),
                // A client must wait for the 101 (or a held request's
                // answer) before sending more; keep what it sent anyway,
                // within a bound.
                Phase::Authorizing(_) | Phase::Held if input.len() - used > MAX_EARLY_INPUT => {
                    self.start_closing(key);
                    return input.len();
                }
                Phase::Authorizing(_) | Phase::Held => return used,
            };
            match step {
                0 => break,
                n => used += n,
            }
        }
        used
    }

    /// Puts a connection on this turn's flush list.
    fn schedule_flush(&mut self, key: usize) {
        if let Some(conn) = self.connections.get_mut(key) {
            if !conn.flush_scheduled {
                conn.flush_scheduled = true;
                self.flush_list.push(key);
            }
        }
    }

    /// One vectored flush per listed connection (invariant 2).
    fn flush_all(&mut self) {
        let mut stats = FlushStats::default();
        let list = std::mem::take(&mut self.flush_list);
        for &key in &list {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            conn.flush_scheduled = false;
            match conn.outbox.flush(&mut conn.socket, &mut stats) {
                Ok(Flushed::All) => {
                    if let Phase::Closing { write_shut, .. } = &mut conn.phase {
                        if !*write_shut {
                            *write_shut = true;
                            // Half-close: the peer sees EOF after our close
                            // frame, answers, and hangs up; we then drop it.
                            let _ = conn.socket.shutdown(Shutdown::Write);
                        }
                    }
                }
                Ok(Flushed::Blocked) => {}
                Err(_) => self.remove(key),
            }
        }
        let metrics = self.metrics();
        ShardMetrics::add(&metrics.bytes_written, stats.bytes);
        ShardMetrics::add(&metrics.write_calls, stats.calls);
        // Keep the allocation. Nothing in the loop above schedules flushes
        // (removal does not), so the list taken is the only one.
        debug_assert!(self.flush_list.is_empty());
        let mut list = list;
        list.clear();
        self.flush_list = list;
    }

    /// Timeouts: idle WebSockets, idle HTTP, closing connections past their deadline.
    fn on_tick(&mut self) {
        if self.accept_paused {
            self.accept_paused = false;
            self.accept();
        }
        let idle_ws = self.config.idle_timeout();
        let idle_http = self.config.http_idle_timeout();
        let mut expired_ws = Vec::new();
        let mut drop_now = Vec::new();
        for (key, conn) in self.connections.iter() {
            let idle = self.now.saturating_duration_since(conn.last_active);
            match &conn.phase {
                Phase::Http if idle > idle_http => drop_now.push(key),
                Phase::WebSocket(_) if idle > idle_ws => expired_ws.push(key),
                Phase::Closing { deadline, .. } if self.now >= *deadline => drop_now.push(key),
                _ => {}
            }
        }
        for key in drop_now {
            self.remove(key);
        }
        for key in expired_ws {
            ShardMetrics::add(&self.metrics[self.id].idle_closes, 1);
            // Not 1000: JS clients before 1.8.16 reconnect only after other codes.
            self.close_websocket(key, 1001, "idle timeout");
        }
        if !self.sessions.is_empty() {
            self.expire_sessions();
        }
    }

    /// Stops accepting, closes every WebSocket with 1012 (service restart, so
    /// clients reconnect — to this server's successor), and lets the loop run
    /// until everything is flushed or the shutdown timeout passes.
    fn begin_shutdown(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.stop_deadline = Some(self.now + self.config.shutdown_timeout());
        let keys: Vec<usize> = self.connections.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.connections.get(key) else {
                continue;
            };
            match conn.phase {
                Phase::WebSocket(_) => self.close_websocket(key, 1012, "server shutting down"),
                Phase::Http | Phase::Authorizing(_) => self.start_closing(key),
                Phase::Held | Phase::Closing { .. } => {}
            }
        }
        // Held polls get 410, so clients reconnect (to the successor).
        let sessions: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for skey in sessions {
            self.end_session(
                skey | crate::fanout::topics::LONGPOLL_TAG,
                "server shutting down",
            );
        }
    }

    /// Moves a connection to `Closing` after its queued output.
    fn start_closing(&mut self, key: usize) {
        let deadline = self.now + CLOSE_GRACE;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(
            &mut conn.phase,
            Phase::Closing {
                deadline,
                write_shut: false,
            },
        );
        conn.pending_input = Vec::new();
        if let Phase::WebSocket(mut session) = old {
            self.drop_client_subscriptions(key, &mut session.client);
        }
        self.schedule_flush(key);
    }

    /// Removes a connection now: subscriptions, poll registration, socket.
    fn remove(&mut self, key: usize) {
        let Some(mut conn) = self.connections.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if let Phase::WebSocket(session) = &mut conn.phase {
            self.drop_client_subscriptions(key, &mut session.client);
        }
        ShardMetrics::sub(&self.metrics[self.id].connections, 1);
    }

    /// Drops every subscription of a client that is going away (its
    /// channels end silently, spec §6.9; its presences leave).
    fn drop_client_subscriptions(&mut self, key: usize, client: &mut ClientSession) {
        let serializer = client.serializer;
        for (topic, slot) in client.channels.close_all() {
            self.unsubscribe(key, &topic, serializer, slot);
        }
    }

    /// Removes one subscription of client `key` (and its presence there).
    fn unsubscribe(
        &mut self,
        key: usize,
        topic: &str,
        serializer: Serializer,
        slot: SubscriptionSlot,
    ) {
        self.topics.unsubscribe(topic, serializer, slot);
        ShardMetrics::sub(&self.metrics[self.id].channels, 1);
        self.presence.untrack(topic, key);
    }

    /// The channel-layer client behind `key` (a WebSocket, or a tagged
    /// long-poll session key).
    fn client_mut(&mut self, key: usize) -> Option<&mut ClientSession> {
        longpoll::client_of(&mut self.connections, &mut self.sessions, key)
    }

    /// The serial number of the client behind `key`.
    fn client_serial(&self, key: usize) -> Option<u64> {
        if longpoll::is_session(key) {
            self.sessions
                .get(key & !crate::fanout::topics::LONGPOLL_TAG)
                .map(|s| s.serial)
        } else {
            self.connections.get(key).map(|c| c.serial)
        }
    }
}
