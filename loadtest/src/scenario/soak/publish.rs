//! The soak's publisher: measured messages to the healthy topics at a
//! fixed rate, and heavy messages to the slow consumers' topic, through the
//! HTTP publish API.
//!
//! Every 5 ms it publishes what is due, in requests of at most `--batch`
//! messages. Each message carries its topic's next sequence number and the
//! minute it was published in (as the stamp's window, modulo
//! [`MAX_WINDOWS`]); at each new minute the publisher records every topic's
//! next sequence number, so minute m's messages of topic t are exactly
//! `boundaries[m][t] .. boundaries[m+1][t]`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::state::{SoakShared, MINUTE_NS};
use crate::clock;
use crate::payload::Stamp;
use crate::publisher::{MessageShape, Publisher};
use crate::worker::MAX_WINDOWS;

/// Batches one turn may send before the minute is looked at again.
const MAX_BATCHES_PER_TURN: usize = 64;

/// What the publisher sends.
pub struct PublishPlan {
    /// Where messages go.
    pub publisher: Publisher,
    /// The healthy topics and their messages.
    pub healthy: MessageShape,
    /// Messages per second over the healthy topics.
    pub rate: f64,
    /// Most messages per request.
    pub batch: usize,
    /// The slow consumers' topic (one topic) and its rate.
    pub slow: Option<(MessageShape, f64)>,
    /// How long to publish.
    pub minutes: u32,
}

/// Publishes until the run's last minute ends (or the soak stops).
pub fn run(mut plan: PublishPlan, soak: Arc<SoakShared>) {
    let start = soak.start_ns.load(Ordering::Relaxed);
    let end = start + u64::from(plan.minutes) * MINUTE_NS;
    let topics = plan.healthy.topics.len();
    let batch = plan.batch.max(1);
    let counters = &soak.counters;
    let mut next_seq = vec![0u64; topics];
    let (mut sent, mut slow_sent, mut next_topic) = (0u64, 0u64, 0usize);
    let mut messages = Vec::with_capacity(batch);
    while !soak.stopped() {
        let now = clock::now_ns();
        if now >= end {
            break;
        }
        let minute = ((now - start) / MINUTE_NS) as usize;
        if let Ok(mut boundaries) = soak.boundaries.lock() {
            while boundaries.len() <= minute {
                boundaries.push(next_seq.clone());
            }
        }
        let window = (minute % MAX_WINDOWS) as u32;
        let elapsed = (now - start) as f64 / 1e9;
        let due = (elapsed * plan.rate) as u64;
        for _ in 0..MAX_BATCHES_PER_TURN {
            if sent >= due {
                break;
            }
            let count = (due - sent).min(batch as u64);
            messages.clear();
            let sent_ns = clock::now_ns();
            for _ in 0..count {
                let topic = next_topic;
                next_topic = (next_topic + 1) % topics;
                let seq = next_seq[topic];
                next_seq[topic] += 1;
                messages.push((
                    topic,
                    Stamp {
                        sender: 0,
                        seq,
                        window,
                        sent_ns,
                    },
                ));
            }
            sent += count;
            counters.published.fetch_add(count, Ordering::Relaxed);
            if let Err(e) = plan.publisher.send(&plan.healthy, &messages) {
                // Their fate is unknown: excused from loss if missing.
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                soak.note_failure(format!("publish: {e}"));
                if let Ok(mut uncertain) = soak.uncertain.lock() {
                    for (topic, stamp) in &messages {
                        uncertain[*topic].push(stamp.seq);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some((shape, rate)) = &plan.slow {
            let due = (elapsed * rate) as u64;
            while slow_sent < due {
                let message = [(
                    0,
                    Stamp {
                        sender: 0,
                        seq: slow_sent,
                        window,
                        sent_ns: clock::now_ns(),
                    },
                )];
                slow_sent += 1;
                counters.slow_published.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = plan.publisher.send(shape, &message) {
                    soak.note_failure(format!("publish (slow topic): {e}"));
                }
            }
        }
        let next = now + 5_000_000;
        let after = clock::now_ns();
        if next > after {
            std::thread::sleep(Duration::from_nanos(next - after));
        }
    }
    if let Ok(mut boundaries) = soak.boundaries.lock() {
        while boundaries.len() <= plan.minutes as usize {
            boundaries.push(next_seq.clone());
        }
    }
}
