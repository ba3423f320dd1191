//! The fan-out hot path: topic table operations, the real
//! [`cinder::fanout::deliver::deliver`] queuing a shared frame on many
//! outboxes, and the vectored flush.

use std::io::{self, IoSlice, Write};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use slab::Slab;

use cinder::fanout::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
use cinder::fanout::deliver::{deliver, FrameSinks, Queued};
use cinder::fanout::frame::{EncodedFrame, FrameKind};
use cinder::fanout::topics::{ClientId, TopicTable};
use cinder::protocol::message::{Payload, Serializer};
use cinder::shard::outbox::{FlushStats, Outbox};

const V2: FrameKind = FrameKind::of(Serializer::V2);

/// In-memory WebSocket sinks: what the shard's sinks do for a WebSocket
/// client (a shared frame pushed on its outbox), without the sockets.
struct Outboxes(Slab<Outbox>);

impl FrameSinks for Outboxes {
    #[inline]
    fn queue(&mut self, client: ClientId, frame: &EncodedFrame) -> Queued {
        self.0[client.0].push_shared(frame.clone());
        Queued::Queued
    }
}

/// A socket that accepts everything, like a fast reader on loopback.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn broadcast(payload_size: usize) -> Broadcast {
    let payload = format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(payload_size.saturating_sub(10))
    );
    let content = Content::new(
        "room:lobby".into(),
        "new_msg".into(),
        Payload::Json(payload.into_bytes()),
    )
    .unwrap();
    let origin = Origin {
        node: NodeId(1),
        shard: 0,
        sender: None,
    };
    Broadcast::new(content, BroadcastId(1), origin, 0)
}

fn topic_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_table");
    group.bench_function("subscribe_unsubscribe", |b| {
        let mut table = TopicTable::new();
        for i in 0..10_000 {
            table.subscribe("room:lobby", V2, ClientId(i));
        }
        b.iter(|| {
            let slot = table.subscribe("room:lobby", V2, ClientId(99_999));
            table.unsubscribe("room:lobby", V2, slot);
        })
    });
    group.bench_function("lookup", |b| {
        let mut table = TopicTable::new();
        for i in 0..10_000 {
            table.subscribe(&format!("room:{i}"), V2, ClientId(i));
        }
        b.iter(|| table.get("room:5000").map(|s| s.len()))
    });
    group.finish();
}

/// One broadcast to 10k in-memory subscribers through the real `deliver`
/// (a shared frame pushed on each outbox), then one flush each.
fn fanout_10k(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 10_000;
    let mut group = c.benchmark_group("fanout_10k");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for size in [64usize, 1024] {
        group.bench_function(format!("queue_{size}b"), |b| {
            let mut table = TopicTable::new();
            let mut outboxes = Outboxes(Slab::new());
            for _ in 0..SUBSCRIBERS {
                let key = outboxes.0.insert(Outbox::default());
                table.subscribe("room:lobby", V2, ClientId(key));
            }
            let mut over_limit = Vec::new();
            b.iter_batched(
                || broadcast(size),
                |broadcast| {
                    let set = table.get("room:lobby").unwrap();
                    deliver(&broadcast, set, None, &mut outboxes, &mut over_limit);
                    let mut stats = FlushStats::default();
                    for (_, outbox) in outboxes.0.iter_mut() {
                        outbox.flush(&mut Sink, &mut stats).unwrap();
                    }
                    stats.bytes
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Queue + vectored flush of a burst of frames on one connection.
fn outbox_flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(32));
    let broadcast = broadcast(64);
    let frame = broadcast.frame(V2).unwrap().clone();
    group.bench_function("queue_32_then_flush", |b| {
        let mut outbox = Outbox::default();
        b.iter(|| {
            for _ in 0..32 {
                outbox.push_shared(frame.clone());
            }
            outbox
                .push_owned(br#"["1","2","room:lobby","phx_reply",{"status":"ok","response":{}}]"#);
            let mut stats = FlushStats::default();
            outbox.flush(&mut Sink, &mut stats).unwrap();
            stats.calls
        })
    });
    group.finish();
}

criterion_group!(benches, topic_table, fanout_10k, outbox_flush);
criterion_main!(benches);
