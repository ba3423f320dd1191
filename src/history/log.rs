//! One topic's history: the last broadcasts of one stream life, and the
//! answer to "what did I miss since this position?".
//!
//! A [`TopicLog`] holds the broadcasts with consecutive offsets ending at
//! the newest one; older ones leave by count (`history`) and by age
//! (`history_ttl_ms`). It never reads a clock: callers pass `now_ms`.

use std::collections::VecDeque;
use std::sync::Arc;

use super::position::{Epoch, Position};
use crate::fanout::broadcast::Broadcast;

/// A route's history settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Broadcasts kept per topic.
    pub count: usize,
    /// Age after which a broadcast is no longer kept, in milliseconds.
    pub ttl_ms: u64,
}

/// Why a recovery could not be offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryFailure {
    /// The position names another life of the stream (a restart, a stream
    /// that was dropped, or a position from somewhere else).
    Epoch,
    /// Broadcasts after the position were dropped (by count or age).
    Trimmed,
    /// The position is not one this stream gave out (malformed, or an
    /// offset past the newest broadcast).
    Invalid,
    /// The history could not be read (a cluster node without Redis).
    Unavailable,
}

impl RecoveryFailure {
    /// Every reason, in metrics order.
    pub const ALL: [RecoveryFailure; 4] = [
        RecoveryFailure::Epoch,
        RecoveryFailure::Trimmed,
        RecoveryFailure::Invalid,
        RecoveryFailure::Unavailable,
    ];

    /// The reason's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryFailure::Epoch => "epoch",
            RecoveryFailure::Trimmed => "trimmed",
            RecoveryFailure::Invalid => "invalid",
            RecoveryFailure::Unavailable => "unavailable",
        }
    }
}

/// What a join on a history topic is told.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The topic's current position: the client has seen everything up to
    /// it once the replay is delivered.
    pub position: Position,
    /// `None` when the join did not ask to recover; otherwise whether the
    /// broadcasts after its `since` are all in `replay`.
    pub outcome: Option<Result<(), RecoveryFailure>>,
    /// The broadcasts to push after the reply, oldest first.
    pub replay: Vec<Arc<Broadcast>>,
}

impl Recovery {
    /// The answer when no history can be read for the topic: a position of
    /// no stream's life (`seed` tells answers apart), and `recovered:
    /// false` for `failure` when the join asked to recover.
    pub fn without_history(asked: bool, failure: RecoveryFailure, seed: u64) -> Recovery {
        Recovery {
            position: Position {
                epoch: Epoch::generate('x', seed),
                offset: 0,
            },
            outcome: asked.then_some(Err(failure)),
            replay: Vec::new(),
        }
    }
}

/// What a [`TopicLog`] can say about the broadcasts after a position.
#[derive(Debug, Clone)]
pub enum Since {
    /// All of them (maybe none), oldest first.
    Held(Vec<Arc<Broadcast>>),
    /// Not all of them.
    Missing(RecoveryFailure),
}

/// The retained broadcasts of one topic.
#[derive(Debug)]
pub struct TopicLog {
    epoch: Epoch,
    /// Offset of the newest broadcast (0: none yet in this life).
    last: u64,
    /// Consecutive offsets ending at `last`, oldest first.
    entries: VecDeque<Arc<Broadcast>>,
    /// Estimated memory of `entries`.
    bytes: usize,
    /// Last publish, join or read (the idle clock of dropping the log).
    pub(super) touched_ms: u64,
}

/// Fixed cost of a log, counted against the memory limit with its entries.
pub const LOG_OVERHEAD: usize = 256;

impl TopicLog {
    /// An empty log of a new life of the stream, whose newest offset is `last`.
    pub fn new(epoch: Epoch, last: u64, now_ms: u64) -> TopicLog {
        TopicLog {
            epoch,
            last,
            entries: VecDeque::new(),
            bytes: 0,
            touched_ms: now_ms,
        }
    }

    /// The stream's life.
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Offset of the newest broadcast.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The current position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.last,
        }
    }

    /// The position the next broadcast gets (single node: this log is the
    /// topic's sequencer).
    pub fn next_position(&self) -> Position {
        Position {
            epoch: self.epoch.clone(),
            offset: self.last + 1,
        }
    }

    /// Estimated memory, the log's own included.
    pub fn bytes(&self) -> usize {
        self.bytes + LOG_OVERHEAD
    }

    /// Broadcasts held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Offset of the oldest broadcast held (`last + 1` when none is).
    fn first(&self) -> u64 {
        self.last + 1 - self.entries.len() as u64
    }

    /// Appends the broadcast at `last + 1` (its position says so) and
    /// drops what the retention no longer allows. Returns the change in
    /// memory.
    pub fn push(&mut self, broadcast: Arc<Broadcast>, retention: Retention, now_ms: u64) -> isize {
        debug_assert_eq!(
            broadcast.position().map(|p| p.offset),
            Some(self.last + 1),
            "appended out of order"
        );
        let before = self.bytes as isize;
        self.last += 1;
        self.bytes += retained_size(&broadcast);
        self.entries.push_back(broadcast);
        self.touched_ms = now_ms;
        while self.entries.len() > retention.count {
            self.pop_oldest();
        }
        self.expire(retention, now_ms);
        self.bytes as isize - before
    }

    /// Drops the broadcasts older than the retention's age. Returns the
    /// memory released.
    pub fn expire(&mut self, retention: Retention, now_ms: u64) -> usize {
        let before = self.bytes;
        while self
            .entries
            .front()
            .is_some_and(|b| b.published_at_ms().saturating_add(retention.ttl_ms) <= now_ms)
        {
            self.pop_oldest();
        }
        before - self.bytes
    }

    fn pop_oldest(&mut self) {
        if let Some(oldest) = self.entries.pop_front() {
            self.bytes -= retained_size(&oldest);
        }
    }

    /// The broadcasts after `since`, if all of them are held (recent
    /// enough for `retention`). Read-only: expiry is the owner's tick.
    pub fn since(&self, since: &Position, retention: Retention, now_ms: u64) -> Since {
        if since.epoch != self.epoch {
            return Since::Missing(RecoveryFailure::Epoch);
        }
        if since.offset > self.last {
            return Since::Missing(RecoveryFailure::Invalid);
        }
        if since.offset + 1 < self.first() {
            return Since::Missing(RecoveryFailure::Trimmed);
        }
        let skip = (since.offset + 1 - self.first()) as usize;
        let replay: Vec<Arc<Broadcast>> = self.entries.iter().skip(skip).cloned().collect();
        if replay
            .first()
            .is_some_and(|b| b.published_at_ms().saturating_add(retention.ttl_ms) <= now_ms)
        {
            return Since::Missing(RecoveryFailure::Trimmed);
        }
        Since::Held(replay)
    }

    /// What a join with `since` (or none) is told; touches the log.
    pub fn recover(
        &mut self,
        since: Option<&Position>,
        retention: Retention,
        now_ms: u64,
    ) -> Recovery {
        self.touched_ms = now_ms;
        let position = self.position();
        let Some(since) = since else {
            return Recovery {
                position,
                outcome: None,
                replay: Vec::new(),
            };
        };
        match self.since(since, retention, now_ms) {
            Since::Held(replay) => Recovery {
                position,
                outcome: Some(Ok(())),
                replay,
            },
            Since::Missing(failure) => Recovery {
                position,
                outcome: Some(Err(failure)),
                replay: Vec::new(),
            },
        }
    }

    /// Up to `limit` broadcasts after `since` (all held ones when `None`),
    /// oldest first, and whether every broadcast after `since` is among
    /// what is held.
    pub fn read(
        &mut self,
        since: Option<&Position>,
        limit: usize,
        retention: Retention,
        now_ms: u64,
    ) -> (Vec<Arc<Broadcast>>, Result<(), RecoveryFailure>) {
        self.touched_ms = now_ms;
        let (mut held, complete) = match since {
            None => (self.live_entries(retention, now_ms), Ok(())),
            Some(since) => match self.since(since, retention, now_ms) {
                Since::Held(held) => (held, Ok(())),
                Since::Missing(RecoveryFailure::Trimmed) => {
                    // What is left is still worth reading.
                    let held = self.live_entries(retention, now_ms);
                    (held, Err(RecoveryFailure::Trimmed))
                }
                Since::Missing(failure) => (Vec::new(), Err(failure)),
            },
        };
        held.truncate(limit);
        (held, complete)
    }

    fn live_entries(&self, retention: Retention, now_ms: u64) -> Vec<Arc<Broadcast>> {
        self.entries
            .iter()
            .filter(|b| b.published_at_ms().saturating_add(retention.ttl_ms) > now_ms)
            .cloned()
            .collect()
    }
}

/// Estimated memory a retained broadcast holds: its content, and the
/// frames of both serializers its deliveries encoded (they live as long
/// as the broadcast does).
pub fn retained_size(broadcast: &Broadcast) -> usize {
    let content =
        broadcast.topic().len() + broadcast.event().len() + broadcast.payload().bytes().len();
    // Struct, Arc and queue slot; then the content and two frames of it.
    192 + content * 3 + 2 * 48
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::broadcast::{BroadcastId, Content, NodeId, Origin};
    use crate::protocol::message::Payload;

    const KEEP_3: Retention = Retention {
        count: 3,
        ttl_ms: 1_000,
    };

    fn epoch() -> Epoch {
        Epoch::parse("e1").unwrap()
    }

    fn broadcast(offset: u64, at_ms: u64) -> Arc<Broadcast> {
        let content = Content::new(
            "room:1".into(),
            "e".into(),
            Payload::Json(format!("{{\"n\":{offset}}}").into_bytes()),
        )
        .unwrap();
        let origin = Origin {
            node: NodeId(1),
            shard: 0,
            sender: None,
        };
        Arc::new(
            Broadcast::new(content, BroadcastId(offset), origin, at_ms).with_position(Position {
                epoch: epoch(),
                offset,
            }),
        )
    }

    fn at(offset: u64) -> Position {
        Position {
            epoch: epoch(),
            offset,
        }
    }

    fn offsets(replay: &[Arc<Broadcast>]) -> Vec<u64> {
        replay
            .iter()
            .map(|b| b.position().unwrap().offset)
            .collect()
    }

    fn filled(n: u64) -> TopicLog {
        let mut log = TopicLog::new(epoch(), 0, 0);
        for offset in 1..=n {
            log.push(broadcast(offset, offset * 10), KEEP_3, offset * 10);
        }
        log
    }

    #[test]
    fn recovers_exactly_what_came_after_the_position() {
        let mut log = filled(5);
        assert_eq!(log.len(), 3, "trimmed to the count");
        assert_eq!(log.position(), at(5));
        let recovery = log.recover(Some(&at(3)), KEEP_3, 60);
        assert_eq!(recovery.outcome, Some(Ok(())));
        assert_eq!(offsets(&recovery.replay), vec![4, 5]);
        let oldest_kept = log.recover(Some(&at(2)), KEEP_3, 60);
        assert_eq!(offsets(&oldest_kept.replay), vec![3, 4, 5]);
        let nothing_missed = log.recover(Some(&at(5)), KEEP_3, 60);
        assert_eq!(nothing_missed.outcome, Some(Ok(())));
        assert!(nothing_missed.replay.is_empty());
        let fresh = log.recover(None, KEEP_3, 60);
        assert_eq!((fresh.outcome, fresh.position), (None, at(5)));
    }

    #[test]
    fn refuses_what_it_cannot_vouch_for() {
        let mut log = filled(5);
        let failure = |log: &mut TopicLog, since: Position, now| {
            log.recover(Some(&since), KEEP_3, now)
                .outcome
                .unwrap()
                .unwrap_err()
        };
        assert_eq!(failure(&mut log, at(1), 60), RecoveryFailure::Trimmed);
        assert_eq!(failure(&mut log, at(6), 60), RecoveryFailure::Invalid);
        let other = Position {
            epoch: Epoch::parse("e2").unwrap(),
            offset: 4,
        };
        assert_eq!(failure(&mut log, other, 60), RecoveryFailure::Epoch);
        // Offset 4 was published at 40 ms: at 1040 ms it is too old.
        assert_eq!(failure(&mut log, at(3), 1_040), RecoveryFailure::Trimmed);
        assert!(log
            .recover(Some(&at(4)), KEEP_3, 1_040)
            .outcome
            .unwrap()
            .is_ok());
    }

    #[test]
    fn expiry_and_memory_follow_the_entries() {
        let mut log = filled(3);
        assert!(log.bytes() > LOG_OVERHEAD);
        assert!(log.expire(KEEP_3, 1_020) > 0);
        assert_eq!(log.len(), 1);
        log.expire(KEEP_3, 5_000);
        assert!(log.is_empty());
        assert_eq!(log.bytes(), LOG_OVERHEAD);
        // An empty log still knows where the stream is.
        assert_eq!(log.next_position(), at(4));
        assert_eq!(
            log.recover(Some(&at(3)), KEEP_3, 5_000).outcome,
            Some(Ok(()))
        );
    }

    #[test]
    fn reads_return_what_is_left_with_a_limit() {
        let mut log = filled(5);
        let (held, complete) = log.read(None, 2, KEEP_3, 60);
        assert_eq!((offsets(&held), complete), (vec![3, 4], Ok(())));
        let (held, complete) = log.read(Some(&at(1)), 10, KEEP_3, 60);
        assert_eq!(
            (offsets(&held), complete),
            (vec![3, 4, 5], Err(RecoveryFailure::Trimmed))
        );
        let (held, _) = log.read(Some(&at(4)), 10, KEEP_3, 60);
        assert_eq!(offsets(&held), vec![5]);
    }
}
