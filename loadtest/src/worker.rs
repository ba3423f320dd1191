//! One event-loop thread owning many client connections.
//!
//! A worker opens its share of the connections (paced by the connect rate
//! and a cap on handshakes in flight), keeps them alive with heartbeats,
//! pushes for `chat`, and records every delivery into per-window latency
//! histograms. The main thread steers it only through [`Shared`] atomics;
//! everything else is thread-local until the worker returns its
//! [`WorkerResult`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::client::{Client, ConnSpec, Failure, Phase, ReplayLog, Target};
use crate::payload::{self, Stamp};
use crate::phoenix::Serializer;
use crate::tracker::Tracker;
use crate::{clock, system};

/// Windows a run may have; stamps naming a later one are ignored.
pub const MAX_WINDOWS: usize = 64;

/// The key every presence meta carries once (`phx_ref_prev` does not match).
const PHX_REF_KEY: &[u8] = b"\"phx_ref\":";

/// State the main thread and all workers share (atomics only).
#[derive(Debug, Default)]
pub struct Shared {
    /// Set to end the run.
    pub stop: AtomicBool,
    /// Distinct measured deliveries so far (all workers).
    pub received: AtomicU64,
    /// Connections whose upgrade succeeded.
    pub upgraded: AtomicU64,
    /// Connections whose join succeeded.
    pub joined: AtomicU64,
    /// Connections that failed before joining.
    pub failed: AtomicU64,
    /// Joined connections that the server later closed.
    pub dropped: AtomicU64,
    /// `chat`: whether clients push now.
    pub pushing: AtomicBool,
    /// The window new pushes are stamped with.
    pub window: AtomicU32,
    /// `chat`: pushes answered ok.
    pub pushes_acked: AtomicU64,
    /// `chat`: deliveries the acked pushes owe (acked × room size at ack time).
    pub chat_expected: AtomicU64,
    /// Joined members per topic.
    pub room_members: Vec<AtomicU64>,
    /// `presence`: `presence_state` pushes received.
    pub presence_states: AtomicU64,
    /// `presence`: `presence_diff` messages received.
    pub presence_diffs: AtomicU64,
    /// `presence`: metas (joins and leaves) carried by those diffs.
    pub presence_entries: AtomicU64,
    /// `presence`: bytes of presence messages received.
    pub presence_bytes: AtomicU64,
    /// `presence`: when the last presence message arrived (clock ns).
    pub presence_last_ns: AtomicU64,
    /// `recover`: clients that received every replayed broadcast.
    pub replays_done: AtomicU64,
}

impl Shared {
    /// Shared state for `topics` topics.
    pub fn new(topics: usize) -> Shared {
        Shared {
            room_members: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            ..Shared::default()
        }
    }
}

/// `chat`: what each client pushes.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    /// Pushes per second per client.
    pub rate_per_client: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Event name.
    pub event: String,
}

/// What one worker does.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// The connections it owns.
    pub specs: Vec<ConnSpec>,
    /// Where they connect, indexed by [`ConnSpec::node`].
    pub targets: Vec<Arc<Target>>,
    /// Wire format.
    pub serializer: Serializer,
    /// New connections per second for this worker (0 = unpaced).
    pub connect_rate: f64,
    /// Handshakes/joins in flight before new connects wait.
    pub max_pending: usize,
    /// Source addresses, used round-robin by connection index.
    pub src_ips: Vec<Ipv4Addr>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Set for `chat`.
    pub chat: Option<ChatPlan>,
}

/// Deliveries of one measured window seen by one worker.
#[derive(Debug, Clone)]
pub struct WindowStats {
    /// Distinct deliveries.
    pub received: u64,
    /// Distinct deliveries by server (indexed by [`ConnSpec::node`]).
    pub received_by_node: Vec<u64>,
    /// Send → receive latency in nanoseconds.
    pub latency: Histogram<u64>,
    /// When the last delivery of this window arrived.
    pub last_rx_ns: u64,
}

/// A new latency histogram: 1 ns to 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Default for WindowStats {
    fn default() -> Self {
        WindowStats {
            received: 0,
            received_by_node: Vec::new(),
            latency: new_histogram(),
            last_rx_ns: 0,
        }
    }
}

/// The worker's view while handling events; clients report into it.
pub struct LoopContext {
    /// Wire format.
    pub serializer: Serializer,
    /// Heartbeat period in nanoseconds.
    pub heartbeat_ns: u64,
    /// Time of the current read.
    pub now_ns: u64,
    /// Per-window delivery figures.
    pub windows: Vec<WindowStats>,
    /// TCP connect start → 101 received.
    pub handshake: Histogram<u64>,
    /// `phx_join` sent → ok reply.
    pub join: Histogram<u64>,
    /// Heartbeat replies received.
    pub heartbeat_replies: u64,
    /// Messages that were not measured broadcasts or known replies.
    pub other_messages: u64,
    /// When the last upgrade completed.
    pub last_upgraded_ns: u64,
    /// When the last join completed.
    pub last_joined_ns: u64,
    /// Deliveries not yet added to [`Shared::received`].
    unpublished_deliveries: u64,
    shared: Arc<Shared>,
}

impl LoopContext {
    /// A context for a loop whose clients speak `serializer`, heartbeat
    /// every `heartbeat` and report into `shared`. Scenarios with their own
    /// event loop (`soak`) build one per kind of client, so the deliveries
    /// of one kind never mix with another's.
    pub fn new(serializer: Serializer, heartbeat: Duration, shared: Arc<Shared>) -> LoopContext {
        LoopContext {
            serializer,
            heartbeat_ns: heartbeat.as_nanos() as u64,
            now_ns: clock::now_ns(),
            windows: Vec::new(),
            handshake: new_histogram(),
            join: new_histogram(),
            heartbeat_replies: 0,
            other_messages: 0,
            last_upgraded_ns: 0,
            last_joined_ns: 0,
            unpublished_deliveries: 0,
            shared,
        }
    }

    /// Adds the deliveries counted since the last call to
    /// [`Shared::received`] (once per loop turn, not per message).
    pub fn flush_deliveries(&mut self) {
        if self.unpublished_deliveries > 0 {
            self.shared
                .received
                .fetch_add(self.unpublished_deliveries, Ordering::Relaxed);
            self.unpublished_deliveries = 0;
        }
    }

    /// A client's upgrade succeeded.
    pub fn on_upgraded(&mut self, started_ns: u64) {
        let _ = self
            .handshake
            .record(self.now_ns.saturating_sub(started_ns).max(1));
        self.last_upgraded_ns = self.now_ns;
        self.shared.upgraded.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's join succeeded.
    pub fn on_joined(&mut self, join_sent_ns: u64, topic: usize) {
        let _ = self
            .join
            .record(self.now_ns.saturating_sub(join_sent_ns).max(1));
        self.last_joined_ns = self.now_ns;
        self.shared.room_members[topic].fetch_add(1, Ordering::Relaxed);
        self.shared.joined.fetch_add(1, Ordering::Relaxed);
    }

    /// A client received the last of the broadcasts its history join
    /// expected (`recover`).
    pub fn on_replay_complete(&mut self) {
        self.shared.replays_done.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's push was answered ok.
    pub fn on_push_acked(&mut self, topic: usize) {
        self.shared.pushes_acked.fetch_add(1, Ordering::Relaxed);
        let members = self.shared.room_members[topic].load(Ordering::Relaxed);
        self.shared
            .chat_expected
            .fetch_add(members, Ordering::Relaxed);
    }

    /// A presence message arrived: counted, with the metas a diff carries
    /// (each has exactly one `"phx_ref":` key).
    pub fn on_presence(&mut self, message: &[u8], diff: bool) {
        let shared = &self.shared;
        if diff {
            let metas = message
                .windows(PHX_REF_KEY.len())
                .filter(|w| *w == PHX_REF_KEY)
                .count();
            shared.presence_diffs.fetch_add(1, Ordering::Relaxed);
            shared
                .presence_entries
                .fetch_add(metas as u64, Ordering::Relaxed);
        } else {
            shared.presence_states.fetch_add(1, Ordering::Relaxed);
        }
        shared
            .presence_bytes
            .fetch_add(message.len() as u64, Ordering::Relaxed);
        shared
            .presence_last_ns
            .store(self.now_ns, Ordering::Relaxed);
    }

    /// A measured message arrived for the first time, on a connection to
    /// server `node`.
    pub fn on_delivery(&mut self, stamp: Stamp, node: usize) {
        let window = stamp.window as usize;
        if window >= MAX_WINDOWS {
            self.other_messages += 1;
            return;
        }
        if self.windows.len() <= window {
            self.windows.resize_with(window + 1, WindowStats::default);
        }
        let stats = &mut self.windows[window];
        stats.received += 1;
        if stats.received_by_node.len() <= node {
            stats.received_by_node.resize(node + 1, 0);
        }
        stats.received_by_node[node] += 1;
        stats.last_rx_ns = self.now_ns;
        let _ = stats
            .latency
            .record(self.now_ns.saturating_sub(stamp.sent_ns).max(1));
        self.unpublished_deliveries += 1;
    }
}

/// What became of one connection.
#[derive(Debug, Clone)]
pub struct ClientOutcome {
    /// Global index.
    pub index: usize,
    /// Topic number.
    pub topic: usize,
    /// Sender slot within the topic.
    pub slot: u32,
    /// Whether it ever joined.
    pub joined: bool,
    /// When it joined (0 if never).
    pub joined_ns: u64,
    /// What it received.
    pub tracker: Tracker,
    /// Pushes written.
    pub pushes_sent: u64,
    /// Pushes answered ok.
    pub pushes_acked: u64,
    /// Pushes answered with an error.
    pub push_errors: u64,
    /// Which `--url` it used.
    pub node: usize,
    /// History joins (`recover`): the join's answer and the replay.
    pub replay: Option<ReplayLog>,
}

/// Everything a worker measured.
#[derive(Debug)]
pub struct WorkerResult {
    /// One entry per connection it owned.
    pub clients: Vec<ClientOutcome>,
    /// Per-window deliveries.
    pub windows: Vec<WindowStats>,
    /// Handshake latency.
    pub handshake: Histogram<u64>,
    /// Join latency.
    pub join: Histogram<u64>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Heartbeat replies.
    pub heartbeat_replies: u64,
    /// Unmeasured messages.
    pub other_messages: u64,
    /// When the first connect started.
    pub first_start_ns: u64,
    /// When the last upgrade completed.
    pub last_upgraded_ns: u64,
    /// When the last join completed.
    pub last_joined_ns: u64,
}

/// Runs a worker until [`Shared::stop`] is set.
pub fn run(plan: WorkerPlan, shared: Arc<Shared>) -> std::io::Result<WorkerResult> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut clients: Slab<Client> = Slab::new();
    let mut outcomes = Vec::with_capacity(plan.specs.len());
    let mut failures = BTreeMap::new();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut ctx = LoopContext::new(plan.serializer, plan.heartbeat, shared.clone());
    let start_ns = clock::now_ns();
    let mut opened = 0usize;
    let mut pending = 0usize;
    let mut next_heartbeat_scan = start_ns;
    let mut pusher = Pusher::default();

    while !shared.stop.load(Ordering::Relaxed) {
        let now = clock::now_ns();
        // Open new connections within the rate and the pending cap.
        let allowed = if plan.connect_rate > 0.0 {
            ((now - start_ns) as f64 / 1e9 * plan.connect_rate) as usize + 1
        } else {
            usize::MAX
        };
        while opened < plan.specs.len() && opened < allowed && pending < plan.max_pending {
            let spec = plan.specs[opened].clone();
            let src =
                (!plan.src_ips.is_empty()).then(|| plan.src_ips[spec.index % plan.src_ips.len()]);
            opened += 1;
            match Client::connect(spec.clone(), &plan.targets[spec.node], src) {
                Ok(mut client) => {
                    let entry = clients.vacant_entry();
                    let token = Token(entry.key());
                    poll.registry().register(
                        &mut client.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(client);
                    pending += 1;
                }
                Err(e) => {
                    *failures.entry(format!("connect: {e}")).or_insert(0) += 1;
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(outcome_of_spec(&spec));
                }
            }
        }

        if now >= next_heartbeat_scan {
            next_heartbeat_scan = now + 1_000_000_000;
            let mut broken = Vec::new();
            for (key, client) in clients.iter_mut() {
                if let Err(failure) = client.heartbeat_if_due(now, &ctx) {
                    broken.push((key, failure));
                }
            }
            for (key, failure) in broken {
                retire(
                    &mut clients,
                    key,
                    failure,
                    &mut poll,
                    &shared,
                    &mut failures,
                    &mut outcomes,
                    &mut pending,
                );
            }
        }

        if let Some(chat) = &plan.chat {
            for (key, failure) in pusher.push_due(chat, &mut clients, &shared, &ctx) {
                retire(
                    &mut clients,
                    key,
                    failure,
                    &mut poll,
                    &shared,
                    &mut failures,
                    &mut outcomes,
                    &mut pending,
                );
            }
        }

        let timeout = if pusher.active {
            Duration::from_millis(1)
        } else if opened < plan.specs.len() {
            Duration::from_millis(2)
        } else {
            Duration::from_millis(50)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for event in events.iter() {
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            let was_pending = client.is_pending();
            let mut result = Ok(());
            if event.is_writable() {
                result = client.on_writable(&plan.targets[client.spec.node]);
            }
            if result.is_ok() && (event.is_readable() || event.is_read_closed()) {
                result = client.on_readable(&mut scratch, &mut ctx);
            }
            match result {
                Ok(()) => {
                    if was_pending && client.phase == Phase::Joined {
                        pending -= 1;
                        pusher.members.push(key);
                    }
                }
                Err(failure) => retire(
                    &mut clients,
                    key,
                    failure,
                    &mut poll,
                    &shared,
                    &mut failures,
                    &mut outcomes,
                    &mut pending,
                ),
            }
        }
        ctx.flush_deliveries();
    }

    for mut client in clients.drain() {
        let joined = client.phase == Phase::Joined;
        client.close();
        let mut outcome = outcome_of(&mut client);
        outcome.joined = joined;
        outcomes.push(outcome);
    }
    outcomes.sort_by_key(|o| o.index);
    Ok(WorkerResult {
        clients: outcomes,
        windows: ctx.windows,
        handshake: ctx.handshake,
        join: ctx.join,
        failures,
        heartbeat_replies: ctx.heartbeat_replies,
        other_messages: ctx.other_messages,
        first_start_ns: start_ns,
        last_upgraded_ns: ctx.last_upgraded_ns,
        last_joined_ns: ctx.last_joined_ns,
    })
}

/// Takes a failed client out of the loop and keeps what it measured.
#[allow(clippy::too_many_arguments)]
fn retire(
    clients: &mut Slab<Client>,
    key: usize,
    failure: Failure,
    poll: &mut Poll,
    shared: &Shared,
    failures: &mut BTreeMap<String, u64>,
    outcomes: &mut Vec<ClientOutcome>,
    pending: &mut usize,
) {
    let Some(mut client) = clients.try_remove(key) else {
        return;
    };
    let _ = poll.registry().deregister(&mut client.stream);
    let joined = client.phase == Phase::Joined;
    if client.is_pending() {
        *pending -= 1;
        shared.failed.fetch_add(1, Ordering::Relaxed);
    } else if joined {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        shared.room_members[client.spec.topic].fetch_sub(1, Ordering::Relaxed);
    }
    *failures.entry(failure.to_string()).or_insert(0) += 1;
    let mut outcome = outcome_of(&mut client);
    outcome.joined = joined;
    outcomes.push(outcome);
}

fn outcome_of_spec(spec: &ConnSpec) -> ClientOutcome {
    ClientOutcome {
        index: spec.index,
        topic: spec.topic,
        slot: spec.slot,
        joined: false,
        joined_ns: 0,
        tracker: Tracker::default(),
        pushes_sent: 0,
        pushes_acked: 0,
        push_errors: 0,
        node: spec.node,
        replay: None,
    }
}

fn outcome_of(client: &mut Client) -> ClientOutcome {
    ClientOutcome {
        tracker: std::mem::take(&mut client.tracker),
        joined_ns: client.joined_ns,
        pushes_sent: client.pushes_sent,
        pushes_acked: client.pushes_acked,
        push_errors: client.push_errors,
        replay: client.replay.take(),
        ..outcome_of_spec(&client.spec)
    }
}

/// `chat`: spreads this worker's pushes evenly over its joined clients.
#[derive(Debug, Default)]
struct Pusher {
    active: bool,
    started_ns: u64,
    done: u64,
    next: usize,
    members: Vec<usize>,
    payload: Vec<u8>,
}

impl Pusher {
    fn push_due(
        &mut self,
        chat: &ChatPlan,
        clients: &mut Slab<Client>,
        shared: &Shared,
        ctx: &LoopContext,
    ) -> Vec<(usize, Failure)> {
        let mut broken = Vec::new();
        let now = clock::now_ns();
        let on = shared.pushing.load(Ordering::Acquire);
        if on != self.active {
            self.active = on;
            self.started_ns = now;
            self.done = 0;
        }
        if !on {
            return broken;
        }
        self.members
            .retain(|&key| clients.get(key).is_some_and(|c| c.phase == Phase::Joined));
        if self.members.is_empty() {
            return broken;
        }
        let rate = chat.rate_per_client * self.members.len() as f64;
        let due = ((now - self.started_ns) as f64 / 1e9 * rate) as u64;
        // After a stall, catch up by at most one member round per turn.
        let count = due.saturating_sub(self.done).min(self.members.len() as u64);
        let window = shared.window.load(Ordering::Acquire);
        for _ in 0..count {
            self.next = (self.next + 1) % self.members.len();
            let key = self.members[self.next];
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            let stamp = Stamp {
                sender: client.spec.slot,
                seq: client.pushes_sent,
                window,
                sent_ns: clock::now_ns(),
            };
            self.payload.clear();
            payload::write(&mut self.payload, stamp, chat.payload_bytes);
            if let Err(failure) = client.push(&chat.event, &self.payload, ctx) {
                broken.push((key, failure));
            }
        }
        self.done += count;
        broken
    }
}

/// Splits `conns` connections over `threads` workers and starts them.
pub fn spawn_workers(
    plans: Vec<WorkerPlan>,
    shared: &Arc<Shared>,
) -> Vec<std::thread::JoinHandle<std::io::Result<WorkerResult>>> {
    let _ = system::raise_fd_limit();
    plans
        .into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || run(plan, shared))
                .expect("spawn worker thread")
        })
        .collect()
}
