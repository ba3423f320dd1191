//! The shards' event queues, read back in the order the events were made.
//!
//! Each shard has its own bounded queue, but the events about one topic
//! come from several of them: a client's `leave` from the client's shard,
//! the `channel_vacated` it causes from the topic's owner shard (or the
//! bus). The owner hears of the leave only after the leave was queued, so
//! the events have an order — and reading the queues round robin could
//! still deliver the vacated first. So every event gets a number when it is
//! queued, under one short lock that covers numbering and queueing (never
//! held while anything waits: a full queue refuses at once), which makes
//! the numbers dense and their order the order of the queues' writes. The
//! reader keeps each queue's head and always takes the next number.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Instant;

/// One queued event.
#[derive(Debug)]
pub struct Queued {
    /// Its number among every queue's events.
    pub seq: u64,
    /// When it was queued.
    pub enqueued: Instant,
    /// The event's JSON object.
    pub json: Vec<u8>,
}

/// The producers' side: numbers events as they are queued.
#[derive(Debug, Default)]
pub struct Numbering {
    next: Mutex<u64>,
}

impl Numbering {
    /// Queues `json` on `queue` with the next number, or refuses at once
    /// when the queue is full (the number is not used).
    pub fn push(
        &self,
        queue: &SyncSender<Queued>,
        json: Vec<u8>,
    ) -> Result<(), TrySendError<Queued>> {
        // A panic while holding this lock cannot leave the counter torn.
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        queue.try_send(Queued {
            seq: *next,
            enqueued: Instant::now(),
            json,
        })?;
        *next += 1;
        Ok(())
    }
}

/// The reader's side: the queues merged by number.
#[derive(Debug)]
pub struct MergedQueues {
    receivers: Vec<Receiver<Queued>>,
    heads: Vec<Option<Queued>>,
    expected: u64,
}

/// How often [`MergedQueues::next`] looks again for the next number
/// before taking the smallest it has (the next one is always found on the
/// second look; more is only a guard).
const LOOKS: usize = 3;

impl MergedQueues {
    /// Merges `receivers`.
    pub fn new(receivers: Vec<Receiver<Queued>>) -> MergedQueues {
        let heads = receivers.iter().map(|_| None).collect();
        MergedQueues {
            receivers,
            heads,
            expected: 0,
        }
    }

    /// Fills empty heads; whether any event is waiting.
    pub fn ready(&mut self) -> bool {
        let mut any = false;
        for (head, receiver) in self.heads.iter_mut().zip(&self.receivers) {
            if head.is_none() {
                *head = receiver.try_recv().ok();
            }
            any |= head.is_some();
        }
        any
    }

    /// The next event in the order they were queued, if any is waiting.
    pub fn pop_next(&mut self) -> Option<Queued> {
        for look in 1..=LOOKS {
            if !self.ready() {
                return None;
            }
            let (at, seq) = self
                .heads
                .iter()
                .enumerate()
                .filter_map(|(i, head)| head.as_ref().map(|q| (i, q.seq)))
                .min_by_key(|(_, seq)| *seq)?;
            // A head numbered past the next means the next one was queued
            // before it (the lock orders them) and was not yet in sight.
            if seq == self.expected || look == LOOKS {
                self.expected = seq + 1;
                return self.heads[at].take();
            }
        }
        None
    }

    /// Empties every queue; how many events that dropped.
    pub fn discard_all(&mut self) -> usize {
        let mut count = 0;
        while self.pop_next().is_some() {
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn events_come_back_in_the_order_they_were_queued_across_queues() {
        let numbering = Numbering::default();
        let (a, a_rx) = sync_channel(8);
        let (b, b_rx) = sync_channel(8);
        for (queue, text) in [(&b, "1"), (&a, "2"), (&b, "3"), (&a, "4"), (&a, "5")] {
            numbering.push(queue, text.as_bytes().to_vec()).unwrap();
        }
        let mut merged = MergedQueues::new(vec![a_rx, b_rx]);
        let order: Vec<String> = std::iter::from_fn(|| merged.pop_next())
            .map(|q| String::from_utf8(q.json).unwrap())
            .collect();
        assert_eq!(order, ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn a_full_queue_refuses_without_using_a_number() {
        let numbering = Numbering::default();
        let (a, a_rx) = sync_channel(1);
        let (b, b_rx) = sync_channel(4);
        numbering.push(&a, b"first".to_vec()).unwrap();
        assert!(numbering.push(&a, b"refused".to_vec()).is_err());
        numbering.push(&b, b"second".to_vec()).unwrap();
        let mut merged = MergedQueues::new(vec![a_rx, b_rx]);
        assert_eq!(merged.pop_next().unwrap().seq, 0);
        assert_eq!(merged.pop_next().unwrap().seq, 1);
        assert!(merged.pop_next().is_none());
    }

    #[test]
    fn threads_queueing_at_once_are_read_in_number_order() {
        let numbering = Arc::new(Numbering::default());
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..4).map(|_| sync_channel(1000)).unzip();
        let writers: Vec<_> = senders
            .into_iter()
            .map(|queue| {
                let numbering = numbering.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        numbering.push(&queue, Vec::new()).unwrap();
                    }
                })
            })
            .collect();
        let mut merged = MergedQueues::new(receivers);
        let mut seen = Vec::new();
        while seen.len() < 2000 {
            if let Some(queued) = merged.pop_next() {
                seen.push(queued.seq);
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(seen, (0..2000).collect::<Vec<u64>>());
        assert_eq!(merged.discard_all(), 0);
    }
}
