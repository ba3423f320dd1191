//! The bridge thread: this node as one more node of a Phoenix app's Redis
//! PubSub.
//!
//! Like the cluster bus it runs a single-threaded tokio runtime with one
//! Redis connection (the bus's [`Link`]) and talks to the shards only
//! through their inboxes:
//!
//! - **app → clients**: each message on the app's channel is read where it
//!   arrives (the connection's task) with [`classify`]; a broadcast becomes
//!   one [`Broadcast`] handed to every shard, which delivers it through the
//!   ordinary fan-out (encoded once per wire format). Everything else is
//!   counted by reason ([`super::status`]). With `[cluster]`, a broadcast
//!   another Cinder node published is ignored here: it came through the
//!   cluster already.
//! - **Cinder → app**: a broadcast published on a shard of this node is
//!   handed to the bridge ([`BridgeHandle::publish`], never blocking: a
//!   full queue drops and counts) and published on the app's channel as
//!   the adapter's term, `except` this node.
//!
//! Redis up and down: every second the bridge pings Redis while it is up
//! and tries to (re)connect and subscribe while it is not; while it is
//! down, Cinder's broadcasts for the app are dropped and counted, and the
//! shards serve their clients as ever. Decoding never happens on a shard.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redis::{IntoConnectionInfo, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::config::{PhoenixPubSubConfig, PUBLISH_QUEUE};
use super::encode::{encode, CompressionLevel};
use super::message::classify;
use super::status::BridgeStatus;
use crate::cluster::redis_link::{Link, Outgoing};
use crate::cluster::ClusterStatus;
use crate::fanout::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
use crate::shard::inbox::{ShardInbox, ShardMessage};

/// How often the bridge checks Redis (and reconnects when it is away).
const CHECK: Duration = Duration::from_secs(1);
/// Most broadcasts published in one pipeline.
const PIPELINE_MAX: usize = 256;
/// The shard number of the bridge's broadcasts' ids and origins (no shard
/// of this node has it).
const BRIDGE_SHARD: u16 = u16::MAX - 1;

/// The shards' way to the bridge. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BridgeHandle {
    sender: mpsc::Sender<Content>,
    status: Arc<BridgeStatus>,
    publish: bool,
}

impl BridgeHandle {
    /// Hands a broadcast published on this node to the bridge, for the
    /// app. Never blocks: a full queue drops it (counted).
    pub fn publish(&self, content: &Content) {
        if !self.publish {
            return;
        }
        if self.sender.try_send(content.clone()).is_err() {
            BridgeStatus::add(&self.status.dropped, 1);
        }
    }

    /// The bridge's state and counters.
    pub fn status(&self) -> &Arc<BridgeStatus> {
        &self.status
    }
}

/// The running bridge thread.
pub struct BridgeThread {
    stop: mpsc::UnboundedSender<()>,
    thread: JoinHandle<()>,
}

impl BridgeThread {
    /// Stops the thread (after what it was publishing).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The Redis URL does not parse.
    #[error("phoenix_pubsub.redis: {0}")]
    Url(redis::RedisError),
    /// No node name, or one that is not the cluster node's.
    #[error("{0}")]
    NodeName(String),
    /// The runtime or thread could not be created.
    #[error("cannot start the Phoenix PubSub bridge: {0}")]
    Io(#[from] io::Error),
}

/// Everything the bridge needs.
pub struct BridgeSetup {
    /// `[phoenix_pubsub]`.
    pub config: PhoenixPubSubConfig,
    /// This node's name among the app's nodes.
    pub node_name: String,
    /// This process (the origin node of the app's broadcasts here).
    pub node: NodeId,
    /// Every shard's inbox.
    pub shards: Arc<[ShardInbox]>,
    /// The cluster's status, with `[cluster]`: its node names.
    pub cluster: Option<Arc<ClusterStatus>>,
}

/// Starts the bridge thread; returns the shards' handle to it. Redis need
/// not be up: the bridge connects when it can.
pub fn spawn(setup: BridgeSetup) -> Result<(BridgeHandle, BridgeThread), BridgeError> {
    let url = setup.config.redis.clone().unwrap_or_default();
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(BridgeError::Url)?;
    let channel = super::channel_name(setup.config.name.as_deref().unwrap_or_default());
    let status = Arc::new(BridgeStatus::new(channel, setup.node_name.clone()));
    let (sender, outbound) = mpsc::channel(PUBLISH_QUEUE);
    let handle = BridgeHandle {
        sender,
        status: status.clone(),
        publish: setup.config.publish,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stop_rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("cinder-phoenix-pubsub".into())
        .spawn(move || runtime.block_on(run(setup, info, status, outbound, stop_rx)))?;
    Ok((handle, BridgeThread { stop, thread }))
}

/// Reads the app's messages where they arrive.
#[derive(Clone)]
struct Receiver {
    node_name: String,
    node: NodeId,
    channel: Arc<[u8]>,
    shards: Arc<[ShardInbox]>,
    cluster: Option<Arc<ClusterStatus>>,
    status: Arc<BridgeStatus>,
    sequence: Arc<AtomicU64>,
    lost: mpsc::UnboundedSender<()>,
}

impl Receiver {
    fn on_push(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let from_channel =
                    matches!(data.next(), Some(Value::BulkString(c)) if *c == *self.channel);
                if let (true, Some(Value::BulkString(bytes))) = (from_channel, data.next()) {
                    self.on_message(&bytes);
                }
            }
            PushKind::Disconnection => {
                let _ = self.lost.send(());
            }
            _ => {}
        }
    }

    fn on_message(&self, bytes: &[u8]) {
        BridgeStatus::add(&self.status.received, 1);
        let incoming = match classify(bytes, &self.node_name) {
            Ok(incoming) => incoming,
            Err(ignored) => {
                tracing::trace!(reason = ignored.as_str(), "phoenix_pubsub: message ignored");
                return self.status.ignored(ignored.as_str());
            }
        };
        if self
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.is_node_name(&incoming.sender))
        {
            return self.status.ignored("cinder_peer");
        }
        let content = match Content::new(incoming.topic, incoming.event, incoming.payload) {
            Ok(content) => content,
            // A binary broadcast whose topic or event is too long for the
            // binary frame: Cinder's clients could not be sent it.
            Err(_) => return self.status.ignored("unencodable"),
        };
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let origin = Origin {
            node: self.node,
            shard: BRIDGE_SHARD,
            sender: None,
        };
        let id = BroadcastId::new(BRIDGE_SHARD, sequence);
        let broadcast = Arc::new(Broadcast::new(content, id, origin, unix_ms()));
        // Counted first: a client may have it before this thread goes on.
        BridgeStatus::add(&self.status.delivered, 1);
        for shard in self.shards.iter() {
            shard.send(ShardMessage::Broadcast(broadcast.clone()));
        }
    }
}

/// Redis, as far as the bridge knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never reached yet.
    Connecting,
    /// Answering, and the bridge subscribed.
    Up,
    /// Lost.
    Down,
}

async fn run(
    setup: BridgeSetup,
    info: redis::ConnectionInfo,
    status: Arc<BridgeStatus>,
    mut outbound: mpsc::Receiver<Content>,
    mut stop: mpsc::UnboundedReceiver<()>,
) {
    let (lost, mut lost_rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        node_name: setup.node_name.clone(),
        node: setup.node,
        channel: status.channel.as_bytes().into(),
        shards: setup.shards,
        cluster: setup.cluster,
        status: status.clone(),
        sequence: Arc::new(AtomicU64::new(0)),
        lost,
    };
    let mut link = match Link::new(info, false, move |push| receiver.on_push(push)) {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(%error, "phoenix_pubsub: cannot set up the Redis connection; the bridge is off");
            return;
        }
    };
    // Validated with the config: 0–9.
    let level =
        CompressionLevel::new(setup.config.compression_level).unwrap_or(CompressionLevel::NONE);
    let mut bridge = Bridge {
        state: State::Connecting,
        status,
        node_name: setup.node_name,
        level,
    };
    let mut check = tokio::time::interval(CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(PIPELINE_MAX);
    loop {
        tokio::select! {
            biased;
            _ = stop.recv() => return,
            Some(()) = lost_rx.recv() => bridge.down("the connection closed"),
            count = outbound.recv_many(&mut batch, PIPELINE_MAX) => {
                if count == 0 {
                    return; // every shard is gone
                }
                bridge.publish(&mut link, batch.drain(..)).await;
            }
            _ = check.tick() => bridge.check(&mut link).await,
        }
    }
}

/// The main task's state.
struct Bridge {
    state: State,
    status: Arc<BridgeStatus>,
    node_name: String,
    level: CompressionLevel,
}

impl Bridge {
    /// Publishes Cinder's broadcasts on the app's channel, in order, as
    /// one pipeline; while Redis is away they are dropped and counted.
    async fn publish(&mut self, link: &mut Link, contents: impl Iterator<Item = Content>) {
        let mut messages = Vec::new();
        for content in contents {
            if self.state != State::Up {
                BridgeStatus::add(&self.status.dropped, 1);
                continue;
            }
            let term = encode(
                &self.node_name,
                content.topic(),
                content.event(),
                content.payload(),
                self.level,
            );
            match term {
                Ok(term) => messages.push((self.status.channel.clone(), Outgoing::Message(term))),
                Err(error) => {
                    tracing::debug!(%error, topic = content.topic(), "phoenix_pubsub: broadcast not writable as a term");
                    BridgeStatus::add(&self.status.dropped, 1);
                }
            }
        }
        if messages.is_empty() {
            return;
        }
        let count = messages.len() as u64;
        match link.publish(messages).await {
            Ok(()) => BridgeStatus::add(&self.status.published, count),
            Err(error) => {
                BridgeStatus::add(&self.status.dropped, count);
                self.down(&error.to_string());
            }
        }
    }

    /// Every second: a ping while up; a (re)subscription while not.
    async fn check(&mut self, link: &mut Link) {
        if self.state == State::Up {
            if let Err(error) = link.query(&redis::cmd("PING")).await {
                self.down(&error.to_string());
            }
            return;
        }
        let channel = [self.status.channel.clone()];
        match link.subscription(&channel, true).await {
            Ok(()) => self.up(),
            Err(error) => self.down(&error.to_string()),
        }
    }

    fn up(&mut self) {
        match self.state {
            State::Up => return,
            State::Connecting => tracing::info!(
                channel = %self.status.channel,
                node = %self.node_name,
                "phoenix_pubsub: joined the app's PubSub"
            ),
            State::Down => {
                BridgeStatus::add(&self.status.reconnects, 1);
                tracing::warn!("phoenix_pubsub: the app's Redis is back; subscribed again");
            }
        }
        self.state = State::Up;
        self.status.set_redis(true, unix_ms());
    }

    fn down(&mut self, error: &str) {
        if self.state == State::Down {
            return;
        }
        if self.state == State::Up {
            tracing::warn!(%error, "phoenix_pubsub: lost the app's Redis; Cinder's broadcasts for the app are dropped until it is back");
        } else {
            tracing::warn!(%error, "phoenix_pubsub: cannot reach the app's Redis yet");
        }
        self.state = State::Down;
        self.status.set_redis(false, unix_ms());
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
