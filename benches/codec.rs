//! Client message decoding (V1 and V2) and broadcast encoding.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use cinder::fanout::broadcast::{Broadcast, BroadcastId, Content, NodeId, Origin};
use cinder::fanout::frame::FrameKind;
use cinder::protocol::decode::decode_text;
use cinder::protocol::message::{Payload, Serializer};

const V2_PUSH: &[u8] =
    br#"["3","17","room:lobby","new_msg",{"body":"hello there","user":{"id":42,"name":"ann"}}]"#;
const V1_PUSH: &[u8] =
    br#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hello there","user":{"id":42,"name":"ann"}},"ref":"17","join_ref":"3"}"#;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, serializer, text) in [
        ("v2", Serializer::V2, V2_PUSH),
        ("v1", Serializer::V1, V1_PUSH),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || text.to_vec(),
                |buf| decode_text(serializer, buf).expect("valid"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_broadcast");
    group.throughput(Throughput::Elements(1));
    for size in [64usize, 1024] {
        let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(size.saturating_sub(10)));
        group.bench_function(format!("v2_text_{size}b"), |b| {
            b.iter_batched(
                || {
                    let content = Content::new(
                        "room:lobby".into(),
                        "new_msg".into(),
                        Payload::Json(payload.clone().into_bytes()),
                    )
                    .unwrap();
                    let origin = Origin {
                        node: NodeId(1),
                        shard: 0,
                        sender: None,
                    };
                    Broadcast::new(content, BroadcastId(1), origin, 0)
                },
                |broadcast| {
                    broadcast
                        .frame(FrameKind::of(Serializer::V2))
                        .map(|f| f.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
