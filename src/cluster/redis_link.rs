//! The Redis side of the bus: the connection, the publisher task that
//! sends what the main task queues, and the handler of what Redis pushes.
//!
//! Two kinds of connection, one behaviour:
//!
//! - **one Redis** (`sharded = false`): one multiplexed connection over
//!   RESP3 publishes (`PUBLISH`), subscribes (`SUBSCRIBE`) and receives; a
//!   command that fails drops it and the next one connects again (the
//!   owner's heartbeat or check brings it back and subscribes again);
//! - **a Redis Cluster** (`sharded = true`): a cluster connection using
//!   sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`), so each topic's messages
//!   travel only through the Redis shard owning its channel's slot.
//!
//! Consecutive publishes go out as pipelines, in the order queued (on a
//! Redis Cluster one pipeline per channel, whose messages share a slot),
//! so one origin's broadcasts to one topic stay in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use super::envelope::{self, Envelope, Received};
use super::history;
use super::lifecycle::Ask;
use super::ClusterStatus;
use crate::fanout::broadcast::NodeId;
use crate::history::owner_shard;
use crate::shard::history_cluster::HistoryRead;
use crate::shard::inbox::{ShardInbox, ShardMessage};

/// Messages one pipeline carries at most.
pub const PIPELINE_MAX: usize = 512;
/// Deadline of connecting to Redis and of each command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the main task hears from the publisher and from Redis.
pub enum Event {
    /// A non-broadcast envelope from another node.
    Received(Vec<u8>),
    /// The connection to Redis ended.
    Disconnected,
    /// A pipeline went through (with its round trip) or failed.
    Sent(Result<Duration, String>),
    /// A broadcast came from this node: a sign of life.
    Heard(NodeId),
    /// Redis confirmed the subscriptions to these topics' channels.
    Subscribed(Vec<String>),
    /// A lifecycle script's answer.
    Lifecycle(Ask, Value),
}

/// One thing for the publisher to do, in order.
pub enum Op {
    /// Publish `bytes` on `channel`; `queued` bytes are released after.
    Publish {
        /// The channel.
        channel: String,
        /// The envelope.
        bytes: Vec<u8>,
        /// Bytes counted against `cluster.queue_bytes`.
        queued: usize,
    },
    /// Run a history topic's publish script (`channel` is the topic's
    /// channel: on a Redis Cluster the script's keys share its slot). Goes
    /// in the same pipelines as publishes, in order.
    PublishHistory {
        /// The topic's channel.
        channel: String,
        /// The `EVAL`.
        command: redis::Cmd,
        /// Bytes counted against `cluster.queue_bytes`.
        queued: usize,
    },
    /// Read a history topic's stream and send what was read to the owner
    /// shard's inbox.
    ReadHistory {
        /// The topic.
        topic: String,
        /// The `EVAL` of the read script.
        command: redis::Cmd,
        /// The owner shard.
        reply: ShardInbox,
    },
    /// Run a lifecycle script (`cluster/lifecycle.rs`); its answer goes to
    /// the main task.
    Lifecycle {
        /// The `EVAL`.
        command: redis::Cmd,
        /// What the answer is about.
        ask: Ask,
    },
    /// Listen to these channels; the topics among them are confirmed to
    /// the main task once Redis answered.
    Subscribe(Vec<String>, Vec<String>),
    /// Stop listening to these channels.
    Unsubscribe(Vec<String>),
    /// Signal when everything before this went out.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// One command of a publish pipeline.
pub enum Outgoing {
    /// A message for a channel (`PUBLISH`, or `SPUBLISH` on a Redis Cluster).
    Message(Vec<u8>),
    /// A history topic's publish script.
    Script(redis::Cmd),
}

/// The connection to Redis.
pub enum Link {
    /// One Redis (or a replica set behind one address), connected on
    /// first use and after failures. Not redis-rs's `ConnectionManager`:
    /// it hands pushes to the handler through an unbounded queue, so a
    /// flood on a subscribed channel faster than the handler grows memory
    /// without bound. A plain connection calls the handler as it reads, so
    /// a slow handler slows the reading, and Redis's own output-buffer
    /// limit for pub/sub clients bounds what waits (Redis then drops the
    /// connection, and the owner reconnects and subscribes again).
    Single {
        /// Makes connections.
        client: Box<redis::Client>,
        /// Timeouts and the push handler.
        config: redis::AsyncConnectionConfig,
        /// The live connection, if any.
        connection: Option<MultiplexedConnection>,
    },
    /// A Redis Cluster, connected on first use and after failures.
    Cluster {
        /// Makes connections.
        client: Box<ClusterClient>,
        /// The live connection, if any.
        connection: Option<ClusterConnection>,
    },
}

impl Link {
    /// The link for `info`, handing pushes (messages, disconnections) to
    /// `on_push` in the connection's task. Must run inside a tokio runtime;
    /// connects lazily. Also the Phoenix PubSub bridge's connection.
    pub fn new<F>(info: ConnectionInfo, sharded: bool, on_push: F) -> RedisResult<Link>
    where
        F: Fn(PushInfo) + Send + Sync + Clone + 'static,
    {
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis);
        let sender = move |push_info: PushInfo| -> Result<(), std::convert::Infallible> {
            on_push(push_info);
            Ok(())
        };
        if sharded {
            let client = ClusterClientBuilder::new(vec![info])
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(REDIS_TIMEOUT)
                .response_timeout(REDIS_TIMEOUT)
                .retries(1)
                .push_sender(sender)
                .build()?;
            return Ok(Link::Cluster {
                client: Box::new(client),
                connection: None,
            });
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_push_sender(sender);
        Ok(Link::Single {
            client: Box::new(redis::Client::open(info)?),
            config,
            connection: None,
        })
    }

    /// The single connection, connecting if there is none.
    async fn single(
        client: &redis::Client,
        config: &redis::AsyncConnectionConfig,
        connection: &mut Option<MultiplexedConnection>,
    ) -> RedisResult<MultiplexedConnection> {
        if let Some(connection) = connection {
            return Ok(connection.clone());
        }
        let fresh = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        *connection = Some(fresh.clone());
        Ok(fresh)
    }

    /// The cluster connection, connecting if there is none.
    async fn cluster(
        client: &ClusterClient,
        connection: &mut Option<ClusterConnection>,
    ) -> RedisResult<ClusterConnection> {
        if let Some(connection) = connection {
            return Ok(connection.clone());
        }
        let fresh = client.get_async_connection().await?;
        *connection = Some(fresh.clone());
        Ok(fresh)
    }

    /// Publishes `messages` in order.
    pub async fn publish(&mut self, messages: Vec<(String, Outgoing)>) -> RedisResult<()> {
        match self {
            Link::Single {
                client,
                config,
                connection,
            } => {
                let mut live = Self::single(client, config, connection).await?;
                let mut pipe = redis::pipe();
                for (channel, outgoing) in messages {
                    match outgoing {
                        Outgoing::Message(bytes) => pipe.cmd("PUBLISH").arg(channel).arg(bytes),
                        Outgoing::Script(command) => pipe.add_command(command),
                    }
                    .ignore();
                }
                forget_on_error(pipe.exec_async(&mut live).await, connection)
            }
            Link::Cluster { client, connection } => forget_on_error(
                Self::spublish(client, connection, messages).await,
                connection,
            ),
        }
    }

    /// `SPUBLISH`es on a Redis Cluster: one pipeline per channel (its
    /// messages share a slot, and keep their order), all at once.
    async fn spublish(
        client: &ClusterClient,
        connection: &mut Option<ClusterConnection>,
        messages: Vec<(String, Outgoing)>,
    ) -> RedisResult<()> {
        let connection = Self::cluster(client, connection).await?;
        let mut by_channel: Vec<(String, redis::Pipeline)> = Vec::new();
        for (channel, outgoing) in messages {
            let at = match by_channel.iter().position(|(c, _)| *c == channel) {
                Some(at) => at,
                None => {
                    by_channel.push((channel.clone(), redis::pipe()));
                    by_channel.len() - 1
                }
            };
            let pipe = &mut by_channel[at].1;
            match outgoing {
                Outgoing::Message(bytes) => pipe.cmd("SPUBLISH").arg(channel).arg(bytes),
                Outgoing::Script(command) => pipe.add_command(command),
            }
            .ignore();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, pipe) in by_channel {
            let mut connection = connection.clone();
            tasks.spawn(async move { pipe.exec_async(&mut connection).await });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "publish task failed",
                    e.to_string(),
                )))
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }

    /// Runs one command and returns its answer (routed by its key on a
    /// Redis Cluster).
    pub async fn query(&mut self, command: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Link::Single {
                client,
                config,
                connection,
            } => {
                let mut live = Self::single(client, config, connection).await?;
                forget_on_error(command.query_async(&mut live).await, connection)
            }
            Link::Cluster { client, connection } => {
                let mut live = Self::cluster(client, connection).await?;
                forget_on_error(command.query_async(&mut live).await, connection)
            }
        }
    }

    /// Subscribes (`listen`) or unsubscribes from `channels`.
    pub async fn subscription(&mut self, channels: &[String], listen: bool) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self {
            Link::Single {
                client,
                config,
                connection,
            } => {
                let mut live = Self::single(client, config, connection).await?;
                forget_on_error(
                    if listen {
                        live.subscribe(channels).await
                    } else {
                        live.unsubscribe(channels).await
                    },
                    connection,
                )
            }
            Link::Cluster { client, connection } => {
                let mut live = Self::cluster(client, connection).await?;
                // One command per channel: channels of one command must
                // share a slot.
                for channel in channels {
                    let result = if listen {
                        live.ssubscribe(channel).await
                    } else {
                        live.sunsubscribe(channel).await
                    };
                    forget_on_error(result, connection)?;
                }
                Ok(())
            }
        }
    }
}

/// A command's outcome; a failure drops the connection, so the next
/// command connects again.
fn forget_on_error<T, C>(result: RedisResult<T>, connection: &mut Option<C>) -> RedisResult<T> {
    if result.is_err() {
        *connection = None;
    }
    result
}

/// Sends what the main task queues, in order: consecutive publishes as one
/// pipeline, subscriptions as their own commands. Each outcome goes back
/// to the main task; after a failure, what waits is dropped (and counted)
/// rather than timed out one by one, since the node re-announces itself
/// when Redis is back.
pub async fn publisher(
    mut link: Link,
    mut ops: mpsc::UnboundedReceiver<Op>,
    events: mpsc::UnboundedSender<Event>,
    status: Arc<ClusterStatus>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut batch = VecDeque::with_capacity(PIPELINE_MAX);
    let mut received = Vec::with_capacity(PIPELINE_MAX);
    while ops.recv_many(&mut received, PIPELINE_MAX).await > 0 {
        batch.extend(received.drain(..));
        while let Some(op) = batch.pop_front() {
            let result = match op {
                op @ (Op::Publish { .. } | Op::PublishHistory { .. }) => {
                    let mut messages = Vec::new();
                    let mut release = 0;
                    let mut next = Some(op);
                    while let Some(op) = next.take() {
                        match op {
                            Op::Publish {
                                channel,
                                bytes,
                                queued,
                            } => {
                                messages.push((channel, Outgoing::Message(bytes)));
                                release += queued;
                            }
                            Op::PublishHistory {
                                channel,
                                command,
                                queued,
                            } => {
                                messages.push((channel, Outgoing::Script(command)));
                                release += queued;
                            }
                            _ => unreachable!("only publishes are taken"),
                        }
                        if matches!(
                            batch.front(),
                            Some(Op::Publish { .. } | Op::PublishHistory { .. })
                        ) {
                            next = batch.pop_front();
                        }
                    }
                    let count = messages.len() as u64;
                    let started = Instant::now();
                    let result = link.publish(messages).await;
                    queued_bytes.fetch_sub(release, Ordering::AcqRel);
                    match result {
                        Ok(()) => {
                            let rtt = started.elapsed();
                            status.record_rtt(rtt);
                            ClusterStatus::add(&status.sent, count);
                            Ok(rtt)
                        }
                        Err(error) => {
                            ClusterStatus::add(&status.dropped, count);
                            Err(error.to_string())
                        }
                    }
                }
                Op::ReadHistory {
                    topic,
                    command,
                    reply,
                } => {
                    let started = Instant::now();
                    let answer = link.query(&command).await;
                    let (stream, result) = match answer {
                        Ok(value) => (history::parse_read(&topic, value), Ok(started.elapsed())),
                        Err(error) => (Err(error.to_string()), Err(error.to_string())),
                    };
                    reply.send(ShardMessage::HistoryRead(Box::new(HistoryRead {
                        topic,
                        stream,
                    })));
                    result
                }
                Op::Lifecycle { command, ask } => {
                    let started = Instant::now();
                    match link.query(&command).await {
                        Ok(answer) => {
                            let _ = events.send(Event::Lifecycle(ask, answer));
                            Ok(started.elapsed())
                        }
                        Err(error) => Err(error.to_string()),
                    }
                }
                Op::Subscribe(channels, topics) => {
                    let result = timed(link.subscription(&channels, true)).await;
                    if result.is_ok() && !topics.is_empty() {
                        let _ = events.send(Event::Subscribed(topics));
                    }
                    result
                }
                Op::Unsubscribe(channels) => timed(link.subscription(&channels, false)).await,
                Op::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            let failed = result.is_err();
            let _ = events.send(Event::Sent(result));
            if failed {
                drop_all(&mut batch, &mut ops, &status, &queued_bytes);
            }
        }
    }
}

async fn timed(
    command: impl std::future::Future<Output = RedisResult<()>>,
) -> Result<Duration, String> {
    let started = Instant::now();
    command
        .await
        .map(|()| started.elapsed())
        .map_err(|e| e.to_string())
}

/// Drops everything queued for the publisher, counting the messages.
fn drop_all(
    batch: &mut VecDeque<Op>,
    ops: &mut mpsc::UnboundedReceiver<Op>,
    status: &ClusterStatus,
    queued_bytes: &AtomicUsize,
) {
    while let Ok(op) = ops.try_recv() {
        batch.push_back(op);
    }
    for op in batch.drain(..) {
        match op {
            Op::Publish { queued, .. } | Op::PublishHistory { queued, .. } => {
                queued_bytes.fetch_sub(queued, Ordering::AcqRel);
                ClusterStatus::add(&status.dropped, 1);
            }
            Op::ReadHistory { topic, reply, .. } => {
                let stream = Err("Redis is down".to_string());
                reply.send(ShardMessage::HistoryRead(Box::new(HistoryRead {
                    topic,
                    stream,
                })));
            }
            Op::Flush(done) => {
                let _ = done.send(());
            }
            // The node syncs its lifecycle holdings when Redis is back.
            Op::Subscribe(..) | Op::Unsubscribe(_) | Op::Lifecycle { .. } => {}
        }
    }
}

/// Handles Redis pushes where they arrive (the connection's task): a
/// broadcast goes straight to the shards; anything else to the main task.
pub struct PushHandler {
    /// This node.
    pub node: NodeId,
    /// Every shard's inbox.
    pub shards: Arc<[ShardInbox]>,
    /// Counters.
    pub status: Arc<ClusterStatus>,
    /// The main task's events.
    pub events: mpsc::UnboundedSender<Event>,
}

impl PushHandler {
    /// Handles one push.
    pub fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(bytes)) = info.data.into_iter().nth(1) {
                    self.on_message(bytes);
                }
            }
            PushKind::Disconnection => {
                let _ = self.events.send(Event::Disconnected);
            }
            _ => {}
        }
    }

    fn on_message(&self, bytes: Vec<u8>) {
        if envelope::is_history_broadcast(&bytes) {
            return self.on_history_broadcast(&bytes);
        }
        match envelope::sender(&bytes) {
            Some(node) if node == self.node => return, // our own echo
            Some(_) => {}
            None => {
                ClusterStatus::add(&self.status.malformed, 1);
                return;
            }
        }
        ClusterStatus::add(&self.status.received, 1);
        if !envelope::is_broadcast(&bytes) {
            let _ = self.events.send(Event::Received(bytes));
            return;
        }
        match envelope::decode(&bytes) {
            Ok(received) => {
                if let Envelope::Broadcast(broadcast) = received.envelope {
                    for shard in self.shards.iter() {
                        shard.send(ShardMessage::Broadcast(broadcast.clone()));
                    }
                }
                // A broadcast is also a sign of life of its node.
                let _ = self.events.send(Event::Heard(received.from));
            }
            Err(error) => {
                ClusterStatus::add(&self.status.malformed, 1);
                tracing::debug!(%error, "cluster: malformed broadcast dropped");
            }
        }
    }

    /// A broadcast to a history topic goes to the topic's owner shard,
    /// which checks its offset and delivers it on every shard — the
    /// publishing node's own echo too: its shards deliver it only now,
    /// with the position Redis gave it.
    fn on_history_broadcast(&self, bytes: &[u8]) {
        match envelope::decode(bytes) {
            Ok(Received {
                from,
                envelope: Envelope::HistoryBroadcast(broadcast),
            }) => {
                ClusterStatus::add(&self.status.received, 1);
                let owner = owner_shard(broadcast.topic(), self.shards.len());
                self.shards[owner].send(ShardMessage::Sequenced(broadcast));
                if from != self.node {
                    let _ = self.events.send(Event::Heard(from));
                }
            }
            Ok(_) | Err(_) => {
                ClusterStatus::add(&self.status.malformed, 1);
                tracing::debug!("cluster: malformed history broadcast dropped");
            }
        }
    }
}
