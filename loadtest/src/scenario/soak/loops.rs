//! The soak's WebSocket clients on one mio event loop: healthy
//! subscribers, churning clients and slow consumers.
//!
//! - *Healthy* subscribers join once and stay; every message published to
//!   their topic must reach each of them exactly once (a [`Tracker`] each).
//!   Only they count for loss and latency.
//! - *Churning* clients connect, join (a broadcast or a presence topic),
//!   stay `--churn-hold`, leave, and close the WebSocket with a handshake.
//! - *Slow consumers* join the heavy `PREFIX:slow` topic and then, for
//!   `--slow-stall`, either read nothing or read a few KiB a second; the
//!   server is expected to close them meanwhile. Then they read at full
//!   speed to see what it did: its 1008 close frame, or the connection
//!   ended without it (the server drops a slow consumer's connection 10 s
//!   after its close frame, which may not have reached the kernel yet). On
//!   loopback the server's kernel send buffer alone holds megabytes, so only
//!   reading it all shows the verdict; a trickle never would in time.
//!
//! Healthy deliveries go through one [`LoopContext`], everything else
//! through another, so churners' and slow consumers' traffic never mixes
//! with the measured figures. The main thread asks for a minute's figures
//! with a [`SettleRequest`]; the loop answers between two polls.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::minute::{settle_range, Owed};
use super::state::{SoakShared, MINUTE_NS};
use crate::client::{Client, ConnSpec, Failure, Phase, Target};
use crate::clock;
use crate::phoenix::Serializer;
use crate::tracker::Tracker;
use crate::worker::{new_histogram, LoopContext, Shared, WindowStats, MAX_WINDOWS};

/// Connections still handshaking or joining before new healthy ones wait.
const MAX_PENDING: usize = 256;
/// How long a churning or slow client may take to join, leave or close.
const STEP_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long a slow consumer reading at full speed again waits to be
/// closed before it counts as not closed.
const SLOW_GIVE_UP_NS: u64 = 30_000_000_000;
/// How often a trickling slow consumer reads (what its small receive
/// buffer holds).
const TRICKLE_EVERY_NS: u64 = 1_000_000_000;
/// A trickling slow consumer's receive buffer (the kernel doubles it).
const TRICKLE_RCVBUF: usize = 4096;

/// What one loop runs.
#[derive(Debug, Clone)]
pub struct LoopPlan {
    /// The healthy subscribers it owns (`topic` indexes the healthy topics).
    pub healthy: Vec<ConnSpec>,
    /// Where clients connect.
    pub target: Arc<Target>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Churning clients started per second by this loop.
    pub churn_rate: f64,
    /// How long a churning client stays joined.
    pub churn_hold: Duration,
    /// Topics of churning and slow clients: the broadcast topics, then the
    /// presence topics, then the slow consumers' topic.
    pub other_topics: Vec<Arc<str>>,
    /// How many of `other_topics` are broadcast topics.
    pub broadcast_topics: usize,
    /// How many of `other_topics` are presence topics.
    pub presence_topics: usize,
    /// Share of churning clients that join a presence topic.
    pub presence_share: f64,
    /// Slow consumers (one loop has them).
    pub slow: Option<SlowPlan>,
    /// First connection index of this loop's churning and slow clients
    /// (indexes only seed WebSocket keys and masks).
    pub index_base: usize,
}

/// The slow consumers.
#[derive(Debug, Clone)]
pub struct SlowPlan {
    /// Started per minute, alternately stalled and trickling.
    pub per_minute: u32,
    /// How long a stalled one reads nothing.
    pub stall: Duration,
}

/// The main thread's question: what arrived of the messages in `ranges`.
#[derive(Debug, Clone)]
pub struct SettleRequest {
    /// The minute whose latency window to hand over (`None`: the final
    /// count over the whole run).
    pub minute: Option<u32>,
    /// Per healthy topic: the sequence numbers to settle, `start..end`.
    pub ranges: Arc<Vec<(u64, u64)>>,
    /// Per healthy topic: sequence numbers of failed publish requests.
    pub uncertain: Arc<Vec<Vec<u64>>>,
    /// When publishing began: subscribers that joined later are not charged.
    pub start_ns: u64,
}

/// A loop's answer.
#[derive(Debug)]
pub struct Settled {
    /// Owed, received and lost deliveries of the requested ranges.
    pub owed: Owed,
    /// Duplicate deliveries to healthy subscribers since the start.
    pub duplicates: u64,
    /// The minute's deliveries and latency.
    pub window: Option<WindowStats>,
    /// Deliveries of the previous minute that arrived after it was settled.
    pub late: u64,
    /// Healthy subscribers joined now.
    pub healthy_joined: u64,
    /// Join latency of churning clients since the last request.
    pub churn_join: Histogram<u64>,
}

/// Where a churning client is.
#[derive(Debug, Clone, Copy)]
enum Churn {
    Joining { deadline: u64 },
    Holding { until: u64 },
    Leaving { deadline: u64 },
    Closing { deadline: u64 },
}

/// Where a slow consumer is.
#[derive(Debug, Clone, Copy)]
enum Slow {
    Joining {
        deadline: u64,
        stall: bool,
    },
    /// Reads nothing until `until`.
    Stalled {
        until: u64,
    },
    /// Reads what the kernel holds every `every` ns (0: every turn); at
    /// `until` a trickle starts draining, a drain gives up.
    Reading {
        next_read: u64,
        every: u64,
        until: u64,
        draining: bool,
    },
}

impl Slow {
    /// Reading at full speed to see what the server did.
    fn draining(now: u64) -> Slow {
        Slow::Reading {
            next_read: now,
            every: 0,
            until: now + SLOW_GIVE_UP_NS,
            draining: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Healthy,
    Churn(Churn),
    Slow(Slow),
}

struct Entry {
    client: Client,
    kind: Kind,
}

/// A healthy subscriber the server dropped: its deliveries still count.
struct Dropped {
    topic: usize,
    joined_ns: u64,
    tracker: Tracker,
}

struct Loop {
    plan: LoopPlan,
    poll: Poll,
    entries: Slab<Entry>,
    churners: BTreeSet<usize>,
    slow: BTreeSet<usize>,
    healthy_opened: usize,
    healthy_pending: usize,
    dropped: Vec<Dropped>,
    healthy: LoopContext,
    healthy_shared: Arc<Shared>,
    other: LoopContext,
    soak: Arc<SoakShared>,
    churn_spawned: u64,
    slow_spawned: u64,
    next_index: usize,
    presence_credit: f64,
    scratch: Vec<u8>,
}

/// Runs one loop until the soak stops.
pub fn run(
    plan: LoopPlan,
    healthy_shared: Arc<Shared>,
    other_shared: Arc<Shared>,
    soak: Arc<SoakShared>,
    requests: Receiver<SettleRequest>,
    replies: Sender<Settled>,
) -> std::io::Result<()> {
    let heartbeat = plan.heartbeat;
    let mut lp = Loop {
        poll: Poll::new()?,
        entries: Slab::new(),
        churners: BTreeSet::new(),
        slow: BTreeSet::new(),
        healthy_opened: 0,
        healthy_pending: 0,
        dropped: Vec::new(),
        healthy: LoopContext::new(Serializer::V2, heartbeat, healthy_shared.clone()),
        healthy_shared,
        other: LoopContext::new(Serializer::V2, heartbeat, other_shared),
        soak: soak.clone(),
        churn_spawned: 0,
        slow_spawned: 0,
        next_index: plan.index_base,
        presence_credit: 0.0,
        scratch: vec![0u8; 256 * 1024],
        plan,
    };
    let mut events = Events::with_capacity(4096);
    let mut next_heartbeat_scan = clock::now_ns();
    while !soak.stopped() {
        let now = clock::now_ns();
        lp.open_healthy();
        if let Some(start) = soak.started() {
            lp.spawn_churners(now, start);
            lp.spawn_slow(now, start);
        }
        lp.timers(now);
        if now >= next_heartbeat_scan {
            next_heartbeat_scan = now + 1_000_000_000;
            lp.heartbeats(now);
        }
        while let Ok(request) = requests.try_recv() {
            let settled = lp.settle(&request);
            let _ = replies.send(settled);
        }
        let timeout = if soak.started().is_some() || lp.healthy_pending > 0 {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        if let Err(e) = lp.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for event in events.iter() {
            lp.handle(
                event.token().0,
                event.is_writable(),
                event.is_readable() || event.is_read_closed(),
            );
        }
        lp.healthy.flush_deliveries();
        lp.other.flush_deliveries();
    }
    for (_, entry) in lp.entries.iter_mut() {
        entry.client.close();
    }
    Ok(())
}

impl Loop {
    /// Opens healthy subscribers, at most [`MAX_PENDING`] at a time.
    fn open_healthy(&mut self) {
        while self.healthy_opened < self.plan.healthy.len() && self.healthy_pending < MAX_PENDING {
            let spec = self.plan.healthy[self.healthy_opened].clone();
            self.healthy_opened += 1;
            if self.open(spec, Kind::Healthy).is_some() {
                self.healthy_pending += 1;
            } else {
                self.healthy_shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Connects one client; `None` (failure noted) if the connect failed.
    fn open(&mut self, spec: ConnSpec, kind: Kind) -> Option<usize> {
        let what = kind_name(&kind);
        match Client::connect(spec, &self.plan.target, None) {
            Ok(mut client) => {
                let entry = self.entries.vacant_entry();
                let key = entry.key();
                if let Err(e) = self.poll.registry().register(
                    &mut client.stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.soak.note_failure(format!("{what}: register: {e}"));
                    return None;
                }
                entry.insert(Entry { client, kind });
                Some(key)
            }
            Err(e) => {
                self.soak.note_failure(format!("{what}: connect: {e}"));
                None
            }
        }
    }

    fn other_spec(&mut self, topic: usize) -> ConnSpec {
        let index = self.next_index;
        self.next_index += 1;
        ConnSpec {
            index,
            topic,
            topic_name: self.plan.other_topics[topic].clone(),
            slot: 0,
            node: 0,
            history: None,
        }
    }

    /// Starts the churning clients due since the load began.
    fn spawn_churners(&mut self, now: u64, start: u64) {
        if self.plan.churn_rate <= 0.0 {
            return;
        }
        let due = (now.saturating_sub(start) as f64 / 1e9 * self.plan.churn_rate) as u64;
        let count = due.saturating_sub(self.churn_spawned).min(200);
        for _ in 0..count {
            self.churn_spawned += 1;
            self.presence_credit += self.plan.presence_share;
            let topic = if self.presence_credit >= 1.0 && self.plan.presence_topics > 0 {
                self.presence_credit -= 1.0;
                self.plan.broadcast_topics
                    + (self.churn_spawned as usize) % self.plan.presence_topics
            } else {
                (self.churn_spawned as usize) % self.plan.broadcast_topics.max(1)
            };
            let spec = self.other_spec(topic);
            self.soak
                .counters
                .churn_started
                .fetch_add(1, Ordering::Relaxed);
            let kind = Kind::Churn(Churn::Joining {
                deadline: now + STEP_TIMEOUT_NS,
            });
            match self.open(spec, kind) {
                Some(key) => {
                    self.churners.insert(key);
                }
                None => {
                    self.soak
                        .counters
                        .churn_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Starts the slow consumers due: `per_minute` a minute, evenly spaced,
    /// alternately stalled and trickling.
    fn spawn_slow(&mut self, now: u64, start: u64) {
        let Some(slow) = &self.plan.slow else {
            return;
        };
        if slow.per_minute == 0 {
            return;
        }
        let interval = MINUTE_NS / u64::from(slow.per_minute);
        let due = now.saturating_sub(start) / interval + 1;
        while self.slow_spawned < due {
            let stall = self.slow_spawned % 2 == 0;
            self.slow_spawned += 1;
            let topic = self.plan.other_topics.len() - 1;
            let spec = self.other_spec(topic);
            self.soak
                .counters
                .slow_started
                .fetch_add(1, Ordering::Relaxed);
            let kind = Kind::Slow(Slow::Joining {
                deadline: now + STEP_TIMEOUT_NS,
                stall,
            });
            match self.open(spec, kind) {
                Some(key) => {
                    self.slow.insert(key);
                    if !stall {
                        // Set before the first byte arrives, so the window
                        // the server may fill stays small.
                        let _ = socket2::SockRef::from(&self.entries[key].client.stream)
                            .set_recv_buffer_size(TRICKLE_RCVBUF);
                    }
                }
                None => {
                    self.soak
                        .counters
                        .slow_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Deadlines and state changes of churning and slow clients.
    fn timers(&mut self, now: u64) {
        let keys: Vec<usize> = self.churners.iter().copied().collect();
        for key in keys {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            let Kind::Churn(state) = entry.kind else {
                continue;
            };
            match state {
                Churn::Joining { deadline } if now >= deadline => {
                    self.fail_churner(key, "join timeout".into());
                }
                Churn::Holding { until } if now >= until => match entry.client.leave(&self.other) {
                    Ok(()) => {
                        entry.kind = Kind::Churn(Churn::Leaving {
                            deadline: now + STEP_TIMEOUT_NS,
                        })
                    }
                    Err(failure) => self.fail_churner(key, format!("leave: {failure}")),
                },
                Churn::Leaving { deadline } if now >= deadline => {
                    self.fail_churner(key, "leave unanswered".into());
                }
                Churn::Closing { deadline } if now >= deadline => {
                    self.fail_churner(key, "close handshake unanswered".into());
                }
                _ => {}
            }
        }
        let keys: Vec<usize> = self.slow.iter().copied().collect();
        for key in keys {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            let Kind::Slow(state) = entry.kind else {
                continue;
            };
            match state {
                Slow::Joining { deadline, .. } if now >= deadline => {
                    self.soak.note_failure("slow consumer: join timeout");
                    self.soak
                        .counters
                        .slow_failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.remove(key);
                }
                Slow::Stalled { until } if now >= until => {
                    entry.kind = Kind::Slow(Slow::draining(now));
                }
                Slow::Reading {
                    until,
                    draining: false,
                    ..
                } if now >= until => {
                    entry.kind = Kind::Slow(Slow::draining(now));
                }
                Slow::Reading {
                    until,
                    draining: true,
                    ..
                } if now >= until => {
                    self.soak
                        .counters
                        .slow_not_closed
                        .fetch_add(1, Ordering::Relaxed);
                    self.soak
                        .note_failure("slow consumer: not closed by the server");
                    entry.client.close();
                    self.remove(key);
                }
                Slow::Reading {
                    next_read,
                    every,
                    until,
                    draining,
                } if now >= next_read => {
                    entry.kind = Kind::Slow(Slow::Reading {
                        next_read: now + every,
                        every,
                        until,
                        draining,
                    });
                    let result = entry.client.on_readable(&mut self.scratch, &mut self.other);
                    self.after(key, result, false);
                }
                _ => {}
            }
        }
    }

    /// Heartbeats for every joined client that is due one.
    fn heartbeats(&mut self, now: u64) {
        let mut broken = Vec::new();
        for (key, entry) in self.entries.iter_mut() {
            let ctx = match entry.kind {
                Kind::Healthy => &self.healthy,
                _ => &self.other,
            };
            if let Err(failure) = entry.client.heartbeat_if_due(now, ctx) {
                broken.push((key, failure));
            }
        }
        for (key, failure) in broken {
            self.after(key, Err(failure), false);
        }
    }

    /// A readiness event for `key`.
    fn handle(&mut self, key: usize, writable: bool, readable: bool) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let was_pending = entry.client.is_pending();
        let (ctx, reads) = match entry.kind {
            Kind::Healthy => (&mut self.healthy, true),
            // A slow consumer reads only while joining, and later on its
            // own schedule (see `timers`).
            Kind::Slow(Slow::Joining { .. }) | Kind::Churn(_) => (&mut self.other, true),
            Kind::Slow(_) => (&mut self.other, false),
        };
        let mut result = Ok(());
        if writable {
            result = entry.client.on_writable(&self.plan.target);
        }
        if result.is_ok() && readable && reads {
            result = entry.client.on_readable(&mut self.scratch, ctx);
        }
        self.after(key, result, was_pending);
    }

    /// Moves a client on after I/O: state changes, or its end.
    fn after(&mut self, key: usize, result: Result<(), Failure>, was_pending: bool) {
        let now = clock::now_ns();
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let counters = &self.soak.counters;
        match (entry.kind, result) {
            (Kind::Healthy, Ok(())) => {
                if was_pending && entry.client.phase == Phase::Joined {
                    self.healthy_pending -= 1;
                }
            }
            (Kind::Healthy, Err(failure)) => self.drop_healthy(key, failure),
            (Kind::Churn(Churn::Joining { .. }), Ok(())) => {
                if entry.client.phase == Phase::Joined {
                    counters.churn_joined.fetch_add(1, Ordering::Relaxed);
                    entry.kind = Kind::Churn(Churn::Holding {
                        until: now + self.plan.churn_hold.as_nanos() as u64,
                    });
                }
            }
            (Kind::Churn(Churn::Leaving { .. }), Ok(())) => match entry.client.leave_reply {
                Some(true) => {
                    counters.churn_left.fetch_add(1, Ordering::Relaxed);
                    entry.client.close();
                    entry.kind = Kind::Churn(Churn::Closing {
                        deadline: now + STEP_TIMEOUT_NS,
                    });
                }
                Some(false) => self.fail_churner(key, "leave refused".into()),
                None => {}
            },
            (
                Kind::Churn(Churn::Closing { .. }),
                Err(Failure::ClosedByServer(_) | Failure::Eof),
            ) => {
                counters.churn_closed.fetch_add(1, Ordering::Relaxed);
                self.remove(key);
            }
            (Kind::Churn(_), Ok(())) => {}
            (Kind::Churn(state), Err(failure)) => {
                let step = match state {
                    Churn::Joining { .. } => "before join",
                    Churn::Holding { .. } => "while joined",
                    Churn::Leaving { .. } => "while leaving",
                    Churn::Closing { .. } => "while closing",
                };
                self.fail_churner(key, format!("{step}: {failure}"));
            }
            (Kind::Slow(Slow::Joining { stall, .. }), Ok(())) => {
                if entry.client.phase == Phase::Joined {
                    let until = now
                        + self
                            .plan
                            .slow
                            .as_ref()
                            .map_or(0, |s| s.stall.as_nanos() as u64);
                    entry.kind = Kind::Slow(if stall {
                        Slow::Stalled { until }
                    } else {
                        Slow::Reading {
                            next_read: now + TRICKLE_EVERY_NS,
                            every: TRICKLE_EVERY_NS,
                            until,
                            draining: false,
                        }
                    });
                }
            }
            (Kind::Slow(_), Ok(())) => {}
            (Kind::Slow(state), Err(failure)) => {
                let counter = match (state, &failure) {
                    (Slow::Joining { .. }, _) => {
                        self.soak
                            .note_failure(format!("slow consumer: before join: {failure}"));
                        &counters.slow_failed
                    }
                    (_, Failure::ClosedByServer(1008)) => &counters.slow_closed_1008,
                    (_, Failure::ClosedByServer(code)) => {
                        self.soak
                            .note_failure(format!("slow consumer: closed with {code}"));
                        &counters.slow_closed_other
                    }
                    _ => &counters.slow_closed_reset,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.remove(key);
            }
        }
    }

    fn fail_churner(&mut self, key: usize, reason: String) {
        self.soak.note_failure(format!("churn: {reason}"));
        self.soak
            .counters
            .churn_failed
            .fetch_add(1, Ordering::Relaxed);
        self.remove(key);
    }

    /// A healthy subscriber failed: its deliveries so far are kept, and
    /// what it misses from now on counts as lost.
    fn drop_healthy(&mut self, key: usize, failure: Failure) {
        let Some(mut entry) = self.remove(key) else {
            return;
        };
        if entry.client.is_pending() {
            self.healthy_pending -= 1;
            self.healthy_shared.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.soak
                .counters
                .healthy_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.soak.note_failure(format!("healthy: {failure}"));
        if entry.client.joined_ns > 0 {
            self.dropped.push(Dropped {
                topic: entry.client.spec.topic,
                joined_ns: entry.client.joined_ns,
                tracker: std::mem::take(&mut entry.client.tracker),
            });
        }
    }

    fn remove(&mut self, key: usize) -> Option<Entry> {
        let mut entry = self.entries.try_remove(key)?;
        let _ = self.poll.registry().deregister(&mut entry.client.stream);
        self.churners.remove(&key);
        self.slow.remove(&key);
        Some(entry)
    }

    /// Answers a [`SettleRequest`].
    fn settle(&mut self, request: &SettleRequest) -> Settled {
        let mut owed = Owed::default();
        let mut duplicates = 0;
        let mut healthy_joined = 0;
        let mut count = |topic: usize, joined_ns: u64, tracker: &Tracker| {
            if joined_ns == 0 || joined_ns > request.start_ns {
                return;
            }
            duplicates += tracker.duplicates;
            let (start, end) = request.ranges.get(topic).copied().unwrap_or((0, 0));
            let uncertain = request
                .uncertain
                .get(topic)
                .map_or(&[][..], |u| u.as_slice());
            owed.add(settle_range(tracker, start, end, uncertain));
        };
        for (_, entry) in self.entries.iter() {
            if let Kind::Healthy = entry.kind {
                let client = &entry.client;
                if client.phase == Phase::Joined {
                    healthy_joined += 1;
                }
                count(client.spec.topic, client.joined_ns, &client.tracker);
            }
        }
        for dropped in &self.dropped {
            count(dropped.topic, dropped.joined_ns, &dropped.tracker);
        }
        let mut take = |minute: u32| {
            self.healthy
                .windows
                .get_mut(minute as usize % MAX_WINDOWS)
                .map(std::mem::take)
        };
        let window = request.minute.and_then(&mut take);
        let late = match request.minute {
            Some(minute) if minute > 0 => take(minute - 1).map_or(0, |w| w.received),
            _ => 0,
        };
        Settled {
            owed,
            duplicates,
            window,
            late,
            healthy_joined,
            churn_join: std::mem::replace(&mut self.other.join, new_histogram()),
        }
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Healthy => "healthy",
        Kind::Churn(_) => "churn",
        Kind::Slow(_) => "slow consumer",
    }
}
