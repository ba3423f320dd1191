//! The bus thread: this node's one connection to Redis.
//!
//! It runs a single-threaded tokio runtime with two tasks (the second, and
//! the connection itself, live in [`super::redis_link`]):
//!
//! - the **main task** owns the state: Redis up or down, the
//!   [`Membership`], the presence [`Ledger`] and the topic [`Interest`]. It
//!   reads the shards' queues, heartbeats, expires silent nodes and
//!   lingering topics, and handles control messages from other nodes;
//! - the **publisher** sends what the main task queued, in order, as
//!   pipelines (one round trip for everything that queued up meanwhile),
//!   and reports each pipeline's outcome back.
//!
//! Messages from Redis arrive as RESP3 pushes on the same connection. A
//! broadcast is handled right where it arrives: decoded once and handed to
//! every shard's inbox (one `Arc` for all). Everything else goes to the
//! main task. A node's own echoes are dropped after reading 10 bytes.
//!
//! Redis up and down: any failed command (or the connection's end) makes
//! Redis *down*: the outage is logged once, queued messages are dropped
//! and counted, and the shards keep serving their own clients. The next
//! heartbeat that succeeds makes it *up* again: the node subscribes to
//! its channels again, re-announces its presences (a snapshot) and asks
//! the others for theirs, so every node's view converges.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{ConnectionInfo, IntoConnectionInfo};
use tokio::sync::mpsc;

use super::envelope::{self, Envelope};
use super::history::{self, HistoryKeys};
use super::interest::{Interest, Joined};
use super::ledger::Ledger;
use super::lifecycle::{Ask, ClusterLifecycle};
use super::membership::Membership;
use super::redis_link::{publisher, Event, Link, Op, PushHandler, PIPELINE_MAX};
use super::{BusQueues, ClusterConfig, ClusterStatus, Control, Outbound};
use crate::fanout::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
use crate::history::Epoch;
use crate::lifecycle::delivery::EventProducer;
use crate::lifecycle::event::EventSet;
use crate::presence::{PresenceDiff, PresenceSync};
use crate::protocol::message::Payload;
use crate::shard::forward::Forwarded;
use crate::shard::history_cluster::HistoryRead;
use crate::shard::inbox::{ShardInbox, ShardMessage};

/// How long a topic stays subscribed after its last local subscriber left.
const INTEREST_LINGER: Duration = Duration::from_secs(2);
/// How often the main task checks timers (node timeouts, lingering topics).
const TICK: Duration = Duration::from_millis(100);

/// Everything the bus thread needs.
pub struct BusSetup {
    /// `[cluster]`.
    pub config: ClusterConfig,
    /// This process's node id (random per start).
    pub node: NodeId,
    /// This node's name.
    pub name: String,
    /// Every shard's inbox.
    pub shards: Arc<[ShardInbox]>,
    /// The bus's ends of the shards' queues.
    pub queues: BusQueues,
    /// Shared with the handle: state and counters.
    pub status: Arc<ClusterStatus>,
    /// The bus's queue to the lifecycle events' delivery thread and the
    /// kinds the backend wants, when events are on.
    pub events: Option<(EventProducer, EventSet)>,
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The Redis URL does not parse.
    #[error("cluster.redis: {0}")]
    Url(redis::RedisError),
    /// The runtime or thread could not be created.
    #[error("cannot start the cluster bus: {0}")]
    Io(#[from] io::Error),
}

/// The running bus thread.
pub struct BusThread {
    stop: mpsc::UnboundedSender<()>,
    thread: JoinHandle<()>,
}

impl BusThread {
    /// Tells the other nodes this one is leaving (its presences leave at
    /// once everywhere), then stops the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts the bus thread. Redis need not be up: the bus connects when it
/// can, and the node serves its own clients meanwhile.
pub fn spawn(setup: BusSetup) -> Result<BusThread, BusError> {
    let url = setup.config.redis.clone().unwrap_or_default();
    let info = url.as_str().into_connection_info().map_err(BusError::Url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stop_rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("cinder-bus".into())
        .spawn(move || runtime.block_on(run(setup, info, stop_rx)))?;
    Ok(BusThread { stop, thread })
}

/// Redis, as far as this node knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RedisState {
    /// Never reached yet.
    Connecting,
    /// Answering.
    Up,
    /// Lost at this instant.
    Down(Instant),
}

async fn run(setup: BusSetup, info: ConnectionInfo, mut stop: mpsc::UnboundedReceiver<()>) {
    let BusSetup {
        config,
        node,
        name,
        shards,
        queues,
        status,
        events: lifecycle_events,
    } = setup;
    let BusQueues {
        broadcasts: mut broadcasts_rx,
        control: mut control_rx,
        queued_bytes,
    } = queues;
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let push = PushHandler {
        node,
        shards: shards.clone(),
        status: status.clone(),
        events: events.clone(),
    };
    let push = Arc::new(push);
    let on_push = move |info| push.on_push(info);
    let link = match Link::new(info, config.sharded, on_push) {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(%error, "cluster: cannot set up the Redis connection; running as one node");
            return;
        }
    };
    let (ops, ops_rx) = mpsc::unbounded_channel();
    tokio::spawn(publisher(
        link,
        ops_rx,
        events,
        status.clone(),
        queued_bytes.clone(),
    ));
    let lifecycle = lifecycle_events.map(|events| {
        let grace = Duration::from_millis(config.node_timeout_ms);
        ClusterLifecycle::new(&config.namespace, node, events, shards.len(), grace)
    });
    let mut bus = Bus {
        channels: Channels::new(&config.namespace, config.sharded),
        lifecycle,
        node_timeout_ms: config.node_timeout_ms,
        node,
        name,
        shards,
        status,
        ops,
        queued_bytes,
        state: RedisState::Connecting,
        membership: Membership::new(Duration::from_millis(config.node_timeout_ms)),
        ledger: Ledger::default(),
        interest: Interest::new(INTEREST_LINGER),
        heartbeats: 0,
        stamped: 0,
        epochs: 0,
    };
    let mut heartbeat = tokio::time::interval(Duration::from_millis(config.heartbeat_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK);
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    loop {
        tokio::select! {
            biased;
            _ = stop.recv() => {
                bus.leave(&mut events_rx).await;
                return;
            }
            Some(event) = events_rx.recv() => bus.on_event(event),
            Some(control) = control_rx.recv() => bus.on_control(control),
            count = broadcasts_rx.recv_many(&mut batch, PIPELINE_MAX) => {
                if count == 0 {
                    // Every shard is gone: the server is stopping, and the
                    // stop may not have come yet. Leave as for a stop.
                    bus.leave(&mut events_rx).await;
                    return;
                }
                for outbound in batch.drain(..) {
                    bus.publish_broadcast(outbound);
                }
            }
            _ = heartbeat.tick() => bus.heartbeat(),
            _ = tick.tick() => bus.on_tick(Instant::now()),
        }
    }
}

/// The channel names of one cluster.
struct Channels {
    prefix: String,
    sharded: bool,
}

impl Channels {
    fn new(namespace: &str, sharded: bool) -> Channels {
        Channels {
            prefix: namespace.to_string(),
            sharded,
        }
    }

    /// Heartbeats, presence, disconnects: every node listens.
    fn control(&self) -> String {
        format!("{}:ctl", self.prefix)
    }

    /// Messages for one node alone (forwarded long-poll requests and their
    /// answers).
    fn node(&self, node: NodeId) -> String {
        format!("{}:n:{:016x}", self.prefix, node.0)
    }

    /// A history topic's keys in Redis.
    fn history(&self, topic: &str) -> HistoryKeys {
        HistoryKeys::new(&self.prefix, topic, self.sharded)
    }

    /// A topic's broadcasts. In sharded mode the topic is the hash tag, so
    /// Redis Cluster spreads topics over its shards.
    fn topic(&self, topic: &str) -> String {
        if self.sharded {
            format!("{}:t:{{{topic}}}", self.prefix)
        } else {
            format!("{}:t:{topic}", self.prefix)
        }
    }
}

/// The main task's state.
struct Bus {
    channels: Channels,
    node: NodeId,
    name: String,
    shards: Arc<[ShardInbox]>,
    status: Arc<ClusterStatus>,
    ops: mpsc::UnboundedSender<Op>,
    queued_bytes: Arc<std::sync::atomic::AtomicUsize>,
    state: RedisState,
    membership: Membership,
    ledger: Ledger,
    interest: Interest,
    /// Lifecycle events about topics and presence keys, when on.
    lifecycle: Option<ClusterLifecycle>,
    node_timeout_ms: u64,
    heartbeats: u64,
    /// Presence diffs this bus stamped for the shards.
    stamped: u64,
    /// History epochs this bus proposed.
    epochs: u64,
}

impl Bus {
    /// Queues a broadcast published on this node for the other nodes (a
    /// history topic's through its publish script, for every node).
    fn publish_broadcast(&mut self, outbound: Outbound) {
        let Outbound { broadcast, history } = outbound;
        let queued = super::queued_size(&broadcast);
        // While Redis is down the broadcast could only wait to go stale.
        // (Its bytes were counted by the handle; the publisher releases
        // them once sent.)
        if matches!(self.state, RedisState::Down(_)) {
            self.queued_bytes.fetch_sub(queued, Ordering::AcqRel);
            ClusterStatus::add(&self.status.dropped, 1);
            return;
        }
        let channel = self.channels.topic(broadcast.topic());
        if let Some(retention) = history {
            let keys = self.channels.history(broadcast.topic());
            let command = history::publish_command(
                &keys,
                &channel,
                &broadcast,
                retention,
                &self.new_epoch(),
                self.node,
                self.channels.sharded,
            );
            return self.send(Op::PublishHistory {
                channel,
                command,
                queued,
            });
        }
        let bytes = Envelope::Broadcast(broadcast).encode(self.node);
        self.send(Op::Publish {
            channel,
            bytes,
            queued,
        });
    }

    /// An epoch for a history stream Redis does not have yet: unique to
    /// this node and this moment.
    fn new_epoch(&mut self) -> Epoch {
        self.epochs += 1;
        Epoch::generate('r', self.node.0 ^ self.epochs.rotate_left(40) ^ unix_ms())
    }

    /// Queues a control message, unless Redis is down: then it is dropped
    /// (and counted), since coming back re-announces everything anyway.
    fn publish_control(&mut self, envelope: &Envelope) {
        self.publish_to(self.channels.control(), envelope);
    }

    /// Queues a message for `channel`, unless Redis is down (dropped and
    /// counted: a forwarded long-poll request then times out on its node).
    fn publish_to(&mut self, channel: String, envelope: &Envelope) {
        if matches!(self.state, RedisState::Down(_)) {
            ClusterStatus::add(&self.status.dropped, 1);
            return;
        }
        let op = Op::Publish {
            channel,
            bytes: envelope.encode(self.node),
            queued: 0,
        };
        self.send(op);
    }

    fn send(&self, op: Op) {
        // The publisher lives as long as the runtime: a failed send means
        // the thread is ending.
        let _ = self.ops.send(op);
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Interest {
                topic,
                shard,
                interested: true,
            } => {
                let joined = self.interest.join(&topic, shard);
                if joined == Joined::Subscribe && self.state == RedisState::Up {
                    let channels = vec![self.channels.topic(&topic)];
                    self.send(Op::Subscribe(channels, vec![topic]));
                } else if joined == Joined::Ready || self.state != RedisState::Up {
                    // Subscribed already — or Redis is not there, and the
                    // shard's clients are served locally meanwhile.
                    self.subscribed(shard, topic);
                }
            }
            Control::Interest {
                topic,
                shard,
                interested: false,
            } => self.interest.leave(&topic, shard, Instant::now()),
            Control::Presence(sync) => {
                self.ledger.apply(self.node, &sync.diff);
                self.publish_control(&Envelope::PresenceDiff(sync.diff.clone()));
            }
            Control::Disconnect(target) => {
                self.publish_control(&Envelope::Disconnect((*target).clone()));
            }
            Control::Forward { to, request } => {
                if self.membership.name(to).is_none() {
                    // Not a node we hear from: its sessions are gone. The
                    // forwarding shard handles the request itself.
                    if let Some(shard) = self.shards.get((request.id >> 48) as usize) {
                        shard.send(ShardMessage::ForwardAnswer {
                            id: request.id,
                            response: None,
                        });
                    }
                    return;
                }
                let channel = self.channels.node(to);
                self.publish_to(channel, &Envelope::LongPollRequest(request));
            }
            Control::ReadHistory { topic, reply } => {
                if matches!(self.state, RedisState::Down(_)) {
                    let stream = Err("Redis is down".to_string());
                    reply.send(ShardMessage::HistoryRead(Box::new(HistoryRead {
                        topic,
                        stream,
                    })));
                    return;
                }
                let keys = self.channels.history(&topic);
                let command = history::read_command(&keys, &self.new_epoch());
                self.send(Op::ReadHistory {
                    topic,
                    command,
                    reply,
                });
            }
            Control::Lifecycle(change) => {
                let recording = self.state == RedisState::Up;
                if let Some(lifecycle) = &mut self.lifecycle {
                    lifecycle.change(change, recording);
                }
            }
            Control::Answer { to, id, response } => {
                let channel = self.channels.node(to);
                self.publish_to(channel, &Envelope::LongPollAnswer { id, response });
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Received(bytes) => self.on_received(&bytes),
            Event::Disconnected => self.redis_down("the connection closed"),
            Event::Sent(Ok(_)) => self.redis_up(),
            Event::Sent(Err(error)) => self.redis_down(&error),
            Event::Heard(node) => self.heard(node, None),
            Event::Lifecycle(ask, answer) => {
                if let Some(lifecycle) = &mut self.lifecycle {
                    lifecycle.on_answer(ask, answer);
                }
            }
            Event::Subscribed(topics) => {
                for topic in topics {
                    for shard in self.interest.subscribed(&topic) {
                        self.subscribed(shard, topic.clone());
                    }
                }
            }
        }
    }

    /// Tells `shard` the node listens to `topic`: its joins of the topic
    /// may be answered.
    fn subscribed(&self, shard: usize, topic: String) {
        if let Some(inbox) = self.shards.get(shard) {
            inbox.send(ShardMessage::Subscribed(topic));
        }
    }

    fn heartbeat(&mut self) {
        self.heartbeats += 1;
        let envelope = Envelope::Heartbeat {
            name: self.name.clone(),
            sequence: self.heartbeats,
        };
        // Heartbeats go out even while Redis is down: the first that
        // succeeds is how the bus learns Redis is back.
        let op = Op::Publish {
            channel: self.channels.control(),
            bytes: envelope.encode(self.node),
            queued: 0,
        };
        self.send(op);
        // Every live node reaps the silent ones: whichever runs first
        // reports what they held, once.
        if self.state == RedisState::Up {
            if let Some(lifecycle) = &self.lifecycle {
                self.send_lifecycle(lifecycle.reap(self.node_timeout_ms));
            }
        }
    }

    fn send_lifecycle(&self, (command, ask): (redis::Cmd, Ask)) {
        self.send(Op::Lifecycle { command, ask });
    }

    fn on_tick(&mut self, now: Instant) {
        for node in self.membership.expire(now) {
            tracing::warn!(
                node = node.0,
                "cluster: a node went silent; its presences leave"
            );
            ClusterStatus::add(&self.status.nodes_left, 1);
            let leaves = self.ledger.remove_node(node);
            self.presence_to_shards(node, leaves);
        }
        let gone: Vec<String> = self
            .interest
            .expire(now)
            .iter()
            .map(|topic| self.channels.topic(topic))
            .collect();
        if !gone.is_empty() && self.state == RedisState::Up {
            self.send(Op::Unsubscribe(gone));
        }
        if self.state == RedisState::Up {
            if let Some(flushed) = self.lifecycle.as_mut().and_then(|l| l.flush(now)) {
                self.send_lifecycle(flushed);
            }
        }
        self.status
            .set_counts(self.membership.len(), self.interest.len());
    }

    /// A control message from another node.
    fn on_received(&mut self, bytes: &[u8]) {
        let received = match envelope::decode(bytes) {
            Ok(received) => received,
            Err(error) => {
                ClusterStatus::add(&self.status.malformed, 1);
                tracing::debug!(%error, "cluster: malformed message dropped");
                return;
            }
        };
        let from = received.from;
        let name = match &received.envelope {
            Envelope::Heartbeat { name, .. } => Some(name.as_str()),
            _ => None,
        };
        if let Some(name) = name {
            self.status.note_name(name);
        }
        if !matches!(received.envelope, Envelope::Leaving) {
            let name = name.map(str::to_string);
            self.heard(from, name.as_deref());
        }
        match received.envelope {
            // Broadcasts are handed to the shards where they arrive
            // (`redis_link::PushHandler`) and never come here.
            Envelope::Broadcast(_) | Envelope::HistoryBroadcast(_) => {}
            Envelope::Heartbeat { .. } => {}
            Envelope::PresenceDiff(diff) => {
                let change = self.ledger.apply(from, &diff);
                self.presence_to_shards(from, change.into_iter().collect());
            }
            Envelope::PresenceSnapshot(snapshot) => {
                let changes = self.ledger.replace(from, &snapshot);
                self.presence_to_shards(from, changes);
            }
            Envelope::SyncRequest { target } => {
                if target.is_none_or(|t| t == self.node) {
                    self.announce();
                }
            }
            Envelope::Disconnect(target) => {
                let target = Arc::new(target);
                for shard in self.shards.iter() {
                    shard.send(ShardMessage::Disconnect(target.clone()));
                }
            }
            Envelope::LongPollRequest(forwarded) => {
                if let Some(shard) = self.shards.get(usize::from(forwarded.shard)) {
                    shard.send(ShardMessage::Forwarded(Box::new(Forwarded {
                        from,
                        request: *forwarded,
                    })));
                }
            }
            Envelope::LongPollAnswer { id, response } => {
                if let Some(shard) = self.shards.get((id >> 48) as usize) {
                    shard.send(ShardMessage::ForwardAnswer {
                        id,
                        response: Some(response),
                    });
                }
            }
            Envelope::Leaving => {
                if self.membership.left(from) {
                    tracing::info!(node = from.0, "cluster: a node left");
                    ClusterStatus::add(&self.status.nodes_left, 1);
                }
                let leaves = self.ledger.remove_node(from);
                self.presence_to_shards(from, leaves);
            }
        }
    }

    /// Something came from `node`. A node new to us (started, or back
    /// after being declared down) is asked for everything it owns.
    fn heard(&mut self, node: NodeId, name: Option<&str>) {
        if self.membership.heard(node, name, Instant::now()) {
            ClusterStatus::add(&self.status.nodes_joined, 1);
            tracing::info!(
                node = node.0,
                name = name.unwrap_or(""),
                "cluster: a node is up"
            );
            self.publish_control(&Envelope::SyncRequest { target: Some(node) });
        }
    }

    /// Publishes everything this node owns (and its name).
    fn announce(&mut self) {
        // With its name first: a node that hears of this one through the
        // snapshot knows its name at once, not a heartbeat later (the
        // Phoenix PubSub bridge tells Cinder nodes' broadcasts by name).
        self.heartbeats += 1;
        self.publish_control(&Envelope::Heartbeat {
            name: self.name.clone(),
            sequence: self.heartbeats,
        });
        let snapshot = self.ledger.snapshot(self.node);
        self.publish_control(&Envelope::PresenceSnapshot(snapshot));
    }

    /// Hands other nodes' presence changes to every shard, each with its
    /// `presence_diff` message, as a shard hands its own to its peers.
    fn presence_to_shards(&mut self, from: NodeId, diffs: Vec<PresenceDiff>) {
        for diff in diffs {
            let content = Content::new(
                diff.topic.clone(),
                "presence_diff".to_string(),
                Payload::Json(diff.payload()),
            );
            let Ok(content) = content else { continue };
            self.stamped += 1;
            let origin = Origin {
                node: from,
                shard: u16::MAX,
                sender: None,
            };
            let id = BroadcastId::new(u16::MAX, self.stamped);
            let broadcast = Arc::new(Broadcast::new(content, id, origin, unix_ms()));
            let sync = Arc::new(PresenceSync { diff, broadcast });
            for shard in self.shards.iter() {
                shard.send(ShardMessage::Presence(sync.clone()));
            }
        }
    }

    fn redis_up(&mut self) {
        match self.state {
            RedisState::Up => return,
            RedisState::Connecting => tracing::info!("cluster: connected to Redis"),
            RedisState::Down(since) => {
                ClusterStatus::add(&self.status.reconnects, 1);
                tracing::warn!(
                    after_s = since.elapsed().as_secs_f64(),
                    "cluster: Redis is back; resubscribing and re-announcing presences"
                );
            }
        }
        self.state = RedisState::Up;
        self.status.set_redis(true, unix_ms());
        let mut channels = vec![self.channels.control(), self.channels.node(self.node)];
        let topics: Vec<String> = self.interest.topics().map(str::to_string).collect();
        channels.extend(topics.iter().map(|t| self.channels.topic(t)));
        self.send(Op::Subscribe(channels, topics));
        if let Some(sync) = self.lifecycle.as_mut().map(ClusterLifecycle::sync) {
            self.send_lifecycle(sync);
        }
        self.announce();
        self.publish_control(&Envelope::SyncRequest { target: None });
    }

    fn redis_down(&mut self, error: &str) {
        if matches!(self.state, RedisState::Down(_)) {
            return;
        }
        if self.state == RedisState::Up {
            tracing::warn!(
                %error,
                "cluster: lost Redis; serving local clients, dropping cross-node messages until it is back"
            );
        } else {
            tracing::warn!(%error, "cluster: cannot reach Redis yet; serving local clients meanwhile");
        }
        if self.state == RedisState::Up {
            if let Some(lifecycle) = &mut self.lifecycle {
                lifecycle.redis_lost();
            }
        }
        self.state = RedisState::Down(Instant::now());
        self.status.set_redis(false, unix_ms());
        for (topic, shard) in self.interest.lost() {
            self.subscribed(shard, topic);
        }
    }

    /// Tells the others this node is leaving and releases its lifecycle
    /// holdings, waiting (briefly) until that and everything queued
    /// before it went out, and handing the events the release reports to
    /// the delivery thread (which stops after the bus).
    async fn leave(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        if self.state != RedisState::Up {
            return;
        }
        self.publish_control(&Envelope::Leaving);
        if let Some(release) = self.lifecycle.as_mut().map(ClusterLifecycle::release) {
            self.send_lifecycle(release);
        }
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.send(Op::Flush(done));
        let _ = tokio::time::timeout(Duration::from_secs(1), flushed).await;
        // The publisher sends an answer before it reaches the flush.
        while let Ok(event) = events.try_recv() {
            if let Event::Lifecycle(ask, answer) = event {
                if let Some(lifecycle) = &mut self.lifecycle {
                    lifecycle.on_answer(ask, answer);
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
