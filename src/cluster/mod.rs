//! Several Cinder nodes behind one load balancer, with Redis as the bus.
//!
//! Without `[cluster]` none of this runs. With it, one more thread per
//! process, the bus, holds the connection to Redis (on a single-threaded
//! tokio runtime: the shards stay pure mio) and talks to the shards through
//! their inboxes, as the shards talk to each other.
//!
//! | file | what lives there |
//! | --- | --- |
//! | [`envelope`] | the binary form of every bus message, and its all-or-nothing decoder |
//! | [`bus`] | the bus thread: Redis connection, publishing, receiving, the state machine of Redis up and down |
//! | [`history`] | history topics in Redis: keys, the publish and read scripts |
//! | [`redis_link`] | the connection to one Redis or a Redis Cluster, the publisher task, the handler of pushes |
//! | [`membership`] | which other nodes are up (heartbeats, timeouts) |
//! | [`ledger`] | every node's presences, to leave them when a node dies and to re-announce them |
//! | [`lifecycle`] | which node holds which topic and presence key, in Redis: occupied/vacated and member events reported once |
//! | [`interest`] | which topics' channels this node listens to |
//! | [`status`] | `/healthz` and `/metrics` of the bus |
//!
//! What goes where: a broadcast published on a shard is delivered by that
//! node's shards at once (as on one node) and handed to the bus
//! ([`ClusterHandle::publish`]), which publishes it once to the topic's
//! channel. Other nodes listen to a topic's channel only while they have a
//! subscriber of it ([`ClusterHandle::interest`]); each receives the
//! broadcast once, decodes it once, and hands the same `Arc<Broadcast>` to
//! every shard, where it goes through the same `deliver` as a local one.
//! Presence diffs, forced disconnects, heartbeats and snapshots travel on
//! one control channel. `docs/cluster.md` has the guarantees and failures.

pub mod bus;
pub mod envelope;
pub mod history;
pub mod interest;
pub mod ledger;
pub mod lifecycle;
pub mod membership;
pub mod redis_link;
pub mod status;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::config_section;
use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::{Broadcast, NodeId};
use crate::history::Retention;
use crate::lifecycle::occupancy::NodeChange;
use crate::presence::PresenceSync;
use crate::shard::inbox::ShardInbox;
use envelope::ForwardedRequest;
pub use status::ClusterStatus;

config_section! {
    /// `[cluster]`: run as one node of several, with Redis as the bus.
    pub struct ClusterConfig {
        /// Redis URL (`redis://host:port/db`, or `unix://` for a socket). Set, it
        /// enables the cluster; unset (and no `--cluster-redis`), Cinder is
        /// one node.
        pub redis: Option<String> = None,
        /// This node's name, unique in the cluster; default: the host name
        /// and a random suffix.
        pub node_name: Option<String> = None,
        /// Prefix of every Redis channel, so several clusters can share one
        /// Redis.
        pub namespace: String = "cinder".to_string(),
        /// Use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis >= 7) through
        /// a Redis Cluster client, so topics spread over the cluster's shards.
        pub sharded: bool = false,
        /// How often this node announces itself.
        pub heartbeat_ms: u64 = 1_000,
        /// A node silent this long is down: its presences leave everywhere.
        pub node_timeout_ms: u64 = 5_000,
        /// Bus messages waiting for Redis at most; beyond, new ones are
        /// dropped and counted (while Redis is slow or away).
        pub queue_size: usize = 65_536,
        /// Bytes of bus messages waiting for Redis at most.
        pub queue_bytes: usize = 64 * 1024 * 1024,
    }
}

impl ClusterConfig {
    /// Whether the cluster is on.
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.redis {
            // TLS to Redis (rediss://) is not built in: refuse it here
            // rather than fail every connection later.
            if !(url.starts_with("redis://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                return Err((
                    "cluster.redis",
                    "must be a redis:// (or unix://) URL; TLS to Redis (rediss://) is not supported"
                        .into(),
                ));
            }
        }
        if self
            .node_name
            .as_deref()
            .is_some_and(|n| n.is_empty() || n.len() > 200 || n.chars().any(|c| c.is_control()))
        {
            return Err((
                "cluster.node_name",
                "must be 1 to 200 printable characters".into(),
            ));
        }
        if self.namespace.is_empty() || self.namespace.contains(char::is_whitespace) {
            return Err((
                "cluster.namespace",
                "must be non-empty, without spaces".into(),
            ));
        }
        if self.heartbeat_ms < 50 {
            return Err(("cluster.heartbeat_ms", "must be at least 50".into()));
        }
        if self.node_timeout_ms < 2 * self.heartbeat_ms {
            return Err((
                "cluster.node_timeout_ms",
                "must be at least twice heartbeat_ms (one lost heartbeat must not declare a node down)"
                    .into(),
            ));
        }
        if self.queue_size == 0 || self.queue_bytes < 64 * 1024 {
            return Err((
                "cluster.queue_size",
                "queue_size must be at least 1 and queue_bytes at least 65536".into(),
            ));
        }
        Ok(())
    }
}

/// What a shard tells the bus, besides broadcasts. Never dropped: the bus
/// reads these at once, Redis up or down, so the queue stays short.
#[derive(Debug)]
pub enum Control {
    /// Shard `shard` has its first subscriber of `topic` (`true`), or lost
    /// its last (`false`).
    Interest {
        /// The topic.
        topic: String,
        /// The shard.
        shard: usize,
        /// Whether the shard now has a subscriber.
        interested: bool,
    },
    /// A shard's presence changes of one turn, for one topic.
    Presence(Arc<PresenceSync>),
    /// A forced disconnect, for the other nodes.
    Disconnect(Arc<DisconnectTarget>),
    /// A long-poll request for a session node `to` owns.
    Forward {
        /// The owner.
        to: NodeId,
        /// The request, with this node's id of it.
        request: Box<ForwardedRequest>,
    },
    /// Read a history topic's stream for its owner shard, which gets a
    /// [`crate::shard::history_cluster::HistoryRead`] in its inbox.
    ReadHistory {
        /// The topic.
        topic: String,
        /// The owner shard's inbox.
        reply: ShardInbox,
    },
    /// Lifecycle: a topic or presence key this node began or stopped
    /// holding (from the topic's owner shard); Redis decides whether the
    /// cluster did.
    Lifecycle(NodeChange),
    /// This node's answer to a request node `to` forwarded.
    Answer {
        /// The forwarding node.
        to: NodeId,
        /// Its id of the request.
        id: u64,
        /// The whole HTTP response.
        response: Vec<u8>,
    },
}

/// A broadcast on its way to the bus.
#[derive(Debug)]
pub struct Outbound {
    /// The broadcast.
    pub broadcast: Arc<Broadcast>,
    /// For a history topic, its retention: Redis gives the broadcast its
    /// offset and keeps it.
    pub history: Option<Retention>,
}

/// The shards' and the API's way to the bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    broadcasts: mpsc::Sender<Outbound>,
    control: mpsc::UnboundedSender<Control>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    status: Arc<ClusterStatus>,
}

impl ClusterHandle {
    /// Hands a broadcast published on this node to the bus, for the other
    /// nodes. Never blocks: when the queue is full (Redis slow or away) the
    /// broadcast is counted as dropped; local subscribers have it already.
    pub fn publish(&self, broadcast: &Arc<Broadcast>) {
        self.queue(broadcast, None);
    }

    /// Hands a broadcast to a history topic to the bus: Redis gives it its
    /// offset, keeps it, and sends it to every node listening, this one
    /// too. Dropped (and counted) when the queue is full, like any other.
    pub fn publish_history(&self, broadcast: &Arc<Broadcast>, retention: Retention) {
        self.queue(broadcast, Some(retention));
    }

    fn queue(&self, broadcast: &Arc<Broadcast>, history: Option<Retention>) {
        let size = queued_size(broadcast);
        if self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            ClusterStatus::add(&self.status.dropped, 1);
            return;
        }
        let outbound = Outbound {
            broadcast: broadcast.clone(),
            history,
        };
        if self.broadcasts.try_send(outbound).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            ClusterStatus::add(&self.status.dropped, 1);
        }
    }

    /// Reports a shard's interest in a topic.
    pub fn interest(&self, topic: &str, shard: usize, interested: bool) {
        let _ = self.control.send(Control::Interest {
            topic: topic.to_string(),
            shard,
            interested,
        });
    }

    /// Hands a change of what this node holds to the bus (lifecycle
    /// events about topics and presence keys).
    pub fn lifecycle(&self, change: NodeChange) {
        let _ = self.control.send(Control::Lifecycle(change));
    }

    /// Hands a shard's presence diff to the bus.
    pub fn presence(&self, sync: &Arc<PresenceSync>) {
        let _ = self.control.send(Control::Presence(sync.clone()));
    }

    /// Forwards a long-poll request to the node owning its session.
    pub fn forward(&self, to: NodeId, request: ForwardedRequest) {
        let _ = self.control.send(Control::Forward {
            to,
            request: Box::new(request),
        });
    }

    /// Sends the answer to a forwarded request back to its node.
    pub fn answer(&self, to: NodeId, id: u64, response: Vec<u8>) {
        let _ = self.control.send(Control::Answer { to, id, response });
    }

    /// Asks the bus to read `topic`'s history stream for the shard whose
    /// inbox is `reply`.
    pub fn read_history(&self, topic: &str, reply: ShardInbox) {
        let _ = self.control.send(Control::ReadHistory {
            topic: topic.to_string(),
            reply,
        });
    }

    /// Whether Redis answers (history topics cannot be published without it).
    pub fn is_up(&self) -> bool {
        self.status.redis_up()
    }

    /// Hands a forced disconnect to the bus.
    pub fn disconnect(&self, target: &Arc<DisconnectTarget>) {
        let _ = self.control.send(Control::Disconnect(target.clone()));
    }

    /// The bus's state and counters.
    pub fn status(&self) -> &Arc<ClusterStatus> {
        &self.status
    }
}

/// The bus's ends of the handle's queues.
pub struct BusQueues {
    broadcasts: mpsc::Receiver<Outbound>,
    control: mpsc::UnboundedReceiver<Control>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Makes the queues between the shards and the bus.
pub fn queues(config: &ClusterConfig) -> (ClusterHandle, BusQueues) {
    let (broadcasts, broadcasts_rx) = mpsc::channel(config.queue_size);
    let (control, control_rx) = mpsc::unbounded_channel();
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        ClusterHandle {
            broadcasts,
            control,
            queued_bytes: queued_bytes.clone(),
            max_bytes: config.queue_bytes,
            status: Arc::new(ClusterStatus::default()),
        },
        BusQueues {
            broadcasts: broadcasts_rx,
            control: control_rx,
            queued_bytes,
        },
    )
}

/// The bytes a broadcast counts against `cluster.queue_bytes` while it
/// waits for Redis: its payload and topic, and the envelope's own.
pub fn queued_size(broadcast: &Broadcast) -> usize {
    broadcast.payload().bytes().len() + broadcast.topic().len() + 64
}

/// The default node name: the host name and a random suffix, so two nodes
/// on one host (or a node and its restarted self) never share a name.
pub fn default_node_name(random: u64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cinder".to_string());
    format!("{host}-{:06x}", random & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_refuses_what_cannot_work() {
        let ok = ClusterConfig {
            redis: Some("redis://127.0.0.1:6379".into()),
            ..ClusterConfig::default()
        };
        assert!(ok.validate().is_ok() && ok.enabled());
        assert!(!ClusterConfig::default().enabled());
        let bad = [
            ClusterConfig {
                redis: Some("http://x".into()),
                ..ClusterConfig::default()
            },
            ClusterConfig {
                heartbeat_ms: 1_000,
                node_timeout_ms: 1_500,
                ..ClusterConfig::default()
            },
            ClusterConfig {
                namespace: String::new(),
                ..ClusterConfig::default()
            },
            ClusterConfig {
                node_name: Some(String::new()),
                ..ClusterConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn default_names_differ_by_their_suffix() {
        assert_ne!(default_node_name(1), default_node_name(2));
    }
}
