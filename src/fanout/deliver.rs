//! Where a broadcast goes and how it reaches each subscriber.
//!
//! The [`Distributor`] decides where a published broadcast goes: it stamps
//! the content with its identity and hands it to every other shard of the
//! process; the publishing shard delivers to its own subscribers at once.
//! The cluster bus plugs in here, next to the shards. (A history topic's
//! broadcasts take one step more first: `shard/history.rs` routes them
//! through the topic's owner, which stamps and positions them, then
//! hands them to the other shards from here.)
//!
//! [`deliver`] is the fan-out itself, the same on every shard for every
//! broadcast: for each frame kind with subscribers, take the broadcast's
//! frame of that kind (encoded once, by whichever shard got there first)
//! and queue a reference to it on every subscriber's sink. No encoding and
//! no copy per subscriber: one `Arc` clone and one queue push.

use std::sync::Arc;

use super::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
use super::frame::{EncodedFrame, FrameKind};
use super::topics::{ClientId, SubscriberSet};
use crate::cluster::ClusterHandle;

/// What a sink did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued; the sink is within its send buffer limit.
    Queued,
    /// Queued, and the sink is now over its send buffer limit: the shard
    /// deals with it after the fan-out.
    OverLimit,
    /// The sink's transport has no form of this frame (a binary frame for
    /// a long-poll client); nothing was queued.
    Unsupported,
}

/// The clients of a shard, as the fan-out sees them: something that takes
/// a frame for a client. Whatever transport carries the client is the
/// sink's business.
pub trait FrameSinks {
    /// Queues `frame` on `client`'s sink.
    fn queue(&mut self, client: ClientId, frame: &EncodedFrame) -> Queued;
}

/// Counts of one delivery, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Frames queued.
    pub delivered: u64,
    /// Subscribers that cannot receive this broadcast's payload (binary for
    /// V1 or long-poll clients).
    pub skipped: u64,
}

/// Queues `broadcast` on the sink of every client in `subscribers` except
/// `sender` (a `broadcast_from`'s sender on this shard). Clients that went
/// over their send buffer limit are appended to `over_limit`.
#[inline]
pub fn deliver(
    broadcast: &Broadcast,
    subscribers: &SubscriberSet,
    sender: Option<ClientId>,
    sinks: &mut impl FrameSinks,
    over_limit: &mut Vec<ClientId>,
) -> Delivery {
    let mut delivery = Delivery::default();
    for kind in FrameKind::ALL {
        let clients = subscribers.of(kind);
        if clients.is_empty() {
            continue;
        }
        let Some(frame) = broadcast.frame(kind) else {
            delivery.skipped += clients.len() as u64;
            continue;
        };
        for (_, &client) in clients.iter() {
            if Some(client) == sender {
                continue;
            }
            match sinks.queue(client, frame) {
                Queued::Queued => delivery.delivered += 1,
                Queued::OverLimit => {
                    delivery.delivered += 1;
                    over_limit.push(client);
                }
                Queued::Unsupported => delivery.skipped += 1,
            }
        }
    }
    delivery
}

/// A way to reach another shard of this process.
pub trait ShardLink {
    /// Hands `broadcast` to that shard, which delivers it to its subscribers.
    fn send_broadcast(&self, broadcast: Arc<Broadcast>);
}

/// Decides where the broadcasts published on one shard go, and stamps them.
#[derive(Debug)]
pub struct Distributor<L> {
    node: NodeId,
    shard: u16,
    /// Every shard's link, indexed by shard (this one's included, unused).
    shards: Arc<[L]>,
    /// Broadcasts published by this shard so far (the id's low bits).
    published: u64,
    /// The cluster bus, when this node is one of several.
    cluster: Option<ClusterHandle>,
}

impl<L: ShardLink> Distributor<L> {
    /// The distributor of shard `shard` of process `node`.
    pub fn new(node: NodeId, shard: usize, shards: Arc<[L]>) -> Distributor<L> {
        Distributor {
            node,
            shard: shard as u16,
            shards,
            published: 0,
            cluster: None,
        }
    }

    /// Also hands every broadcast to the cluster bus, for the other nodes.
    pub fn with_cluster(mut self, cluster: Option<ClusterHandle>) -> Distributor<L> {
        self.cluster = cluster;
        self
    }

    /// The cluster bus, when this node is one of several.
    pub fn cluster(&self) -> Option<&ClusterHandle> {
        self.cluster.as_ref()
    }

    /// The process this distributor publishes for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The shard this distributor publishes for.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Stamps `content` (sent by `sender` when it is a `broadcast_from`)
    /// with this shard's next id, without sending it anywhere: for messages
    /// that travel with something else (a presence diff with its changes).
    pub fn stamp(
        &mut self,
        content: Content,
        sender: Option<ClientId>,
        now_ms: u64,
    ) -> Arc<Broadcast> {
        Arc::new(self.stamp_for(self.shard, content, sender, now_ms))
    }

    /// Stamps `content` sent by `sender` on shard `shard` of this process
    /// with this shard's next id: a history topic's owner stamps what
    /// other shards published (the sender is skipped on its own shard).
    pub fn stamp_for(
        &mut self,
        shard: u16,
        content: Content,
        sender: Option<ClientId>,
        now_ms: u64,
    ) -> Broadcast {
        self.published += 1;
        let origin = Origin {
            node: self.node,
            shard,
            sender,
        };
        let id = BroadcastId::new(self.shard, self.published);
        Broadcast::new(content, id, origin, now_ms)
    }

    /// Sends a stamped broadcast to every other shard of this process.
    pub fn to_other_shards(&self, broadcast: &Arc<Broadcast>) {
        for (shard, link) in self.shards.iter().enumerate() {
            if shard != usize::from(self.shard) {
                link.send_broadcast(broadcast.clone());
            }
        }
    }

    /// Stamps `content` and sends it to every other shard and, in a
    /// cluster, to the bus (once, for every other node). Returns the
    /// broadcast for the caller to deliver to its own subscribers, at once
    /// and in publish order.
    pub fn publish(
        &mut self,
        content: Content,
        sender: Option<ClientId>,
        now_ms: u64,
    ) -> Arc<Broadcast> {
        let broadcast = self.stamp(content, sender, now_ms);
        self.to_other_shards(&broadcast);
        if let Some(cluster) = &self.cluster {
            cluster.publish(&broadcast);
        }
        broadcast
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::fanout::topics::TopicTable;
    use crate::protocol::message::{Payload, Serializer};

    /// Sinks that record what they got; client 2 cannot take binary, client
    /// 3 is over its limit after one frame.
    #[derive(Default)]
    struct Recorder(Vec<(ClientId, Vec<u8>)>);

    impl FrameSinks for Recorder {
        fn queue(&mut self, client: ClientId, frame: &EncodedFrame) -> Queued {
            if client == ClientId(2) && frame.is_binary() {
                return Queued::Unsupported;
            }
            self.0.push((client, frame.body().to_vec()));
            if client == ClientId(3) {
                Queued::OverLimit
            } else {
                Queued::Queued
            }
        }
    }

    #[derive(Default)]
    struct Link(Mutex<Vec<Arc<Broadcast>>>);

    impl ShardLink for Link {
        fn send_broadcast(&self, broadcast: Arc<Broadcast>) {
            self.0.lock().unwrap().push(broadcast);
        }
    }

    fn table() -> TopicTable {
        let mut table = TopicTable::new();
        for (client, serializer) in [
            (1, Serializer::V1),
            (2, Serializer::V2),
            (3, Serializer::V2),
        ] {
            table.subscribe("room:1", FrameKind::of(serializer), ClientId(client));
        }
        table
    }

    fn content(payload: Payload) -> Content {
        Content::new("room:1".into(), "e".into(), payload).unwrap()
    }

    #[test]
    fn every_subscriber_but_the_sender_gets_its_kind_of_frame() {
        let links: Arc<[Link]> = vec![Link::default(), Link::default()].into();
        let mut distributor = Distributor::new(NodeId(1), 0, links.clone());
        let broadcast =
            distributor.publish(content(Payload::Json(b"{}".to_vec())), Some(ClientId(2)), 5);
        assert_eq!(
            links[1].0.lock().unwrap().len(),
            1,
            "sent to the other shard"
        );
        assert!(links[0].0.lock().unwrap().is_empty(), "not to itself");
        let table = table();
        let mut sinks = Recorder::default();
        let mut over = Vec::new();
        let sender = broadcast.sender_on(NodeId(1), 0);
        let delivery = deliver(
            &broadcast,
            table.get("room:1").unwrap(),
            sender,
            &mut sinks,
            &mut over,
        );
        assert_eq!(
            delivery,
            Delivery {
                delivered: 2,
                skipped: 0
            }
        );
        assert_eq!(
            sinks.0[0],
            (
                ClientId(1),
                br#"{"topic":"room:1","event":"e","payload":{},"ref":null}"#.to_vec()
            )
        );
        assert_eq!(
            sinks.0[1],
            (ClientId(3), br#"[null,null,"room:1","e",{}]"#.to_vec())
        );
        assert_eq!(over, vec![ClientId(3)]);
    }

    #[test]
    fn binary_skips_what_cannot_carry_it() {
        let links: Arc<[Link]> = vec![Link::default()].into();
        let mut distributor = Distributor::new(NodeId(1), 0, links);
        let broadcast = distributor.publish(content(Payload::Binary(vec![1])), None, 5);
        let mut sinks = Recorder::default();
        let delivery = deliver(
            &broadcast,
            table().get("room:1").unwrap(),
            None,
            &mut sinks,
            &mut Vec::new(),
        );
        // V1 client 1: no binary form; client 2: its sink refuses binary.
        assert_eq!(
            delivery,
            Delivery {
                delivered: 1,
                skipped: 2
            }
        );
        assert_eq!(broadcast.id(), BroadcastId::new(0, 1));
    }
}
