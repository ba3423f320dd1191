//! Delivery of lifecycle events to the application's backend.
//!
//! Shards must never block, so each one gets an [`EventProducer`] over its
//! own bounded queue and hands events over with [`EventProducer::send`],
//! which drops and counts an event when the queue is full. One delivery
//! thread reads the queues back in the order the events were made
//! ([`super::order`]: a `leave` before the `channel_vacated` it caused,
//! though another shard made that), batches them
//! ([`super::batch::Pipeline`]) and POSTs one batch at a time, re-sending
//! the same bytes after a backoff until the backend answers 2xx: delivery
//! is at least once, in order.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::batch::{Pipeline, Poll};
use super::order::{MergedQueues, Numbering, Queued};

/// Longest idle sleep: a backstop should a wake-up ever be missed.
const IDLE_PARK: Duration = Duration::from_secs(1);
/// Largest backend response body read (it is ignored; reading it lets the
/// connection be reused).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Where and how to deliver lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Full URL of the endpoint, e.g. `http://127.0.0.1:8080/cinder/events`.
    pub url: String,
    /// When set: sent as `Authorization: Bearer <secret>`, and the key of
    /// the `x-cinder-signature` HMAC of each body.
    pub secret: Option<String>,
    /// Longest time an event waits for its batch to fill.
    pub batch_ms: u64,
    /// Most events in one request.
    pub max_batch: usize,
    /// Pending events (over all shards) beyond which new ones are dropped.
    pub queue: usize,
    /// Deadline of one HTTP request.
    pub timeout_ms: u64,
}

/// Counters of the delivery, for `/metrics` and tests (relaxed atomics).
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Events handed to [`EventProducer::send`], accepted or not. After
    /// [`DeliveryThread::stop`], `produced == delivered + dropped`.
    pub produced: AtomicU64,
    /// Events in batches the backend answered 2xx (once per batch, however
    /// many attempts it took).
    pub delivered: AtomicU64,
    /// Batches re-sent after a failed attempt.
    pub retried: AtomicU64,
    /// Events lost: queue full, sent after stop, or still pending when the
    /// stop deadline passed.
    pub dropped: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Sum over delivered batches of delivery time minus the oldest event's
    /// enqueue time, in milliseconds.
    pub batch_latency_ms_sum: AtomicU64,
}

/// State shared by the producers, the thread and its handle.
#[derive(Debug)]
struct Shared {
    metrics: Arc<EventMetrics>,
    /// Set by `stop`: producers refuse, the thread flushes.
    stopping: AtomicBool,
    /// The flush deadline, written before `stopping` is set.
    deadline: Mutex<Option<Instant>>,
    /// Set by the thread just before it parks when it has room for events,
    /// so producers unpark it only when that is useful.
    wake_wanted: AtomicBool,
    thread: Thread,
    /// Numbers events as they are queued, for the reader's order.
    numbering: Numbering,
}

impl Shared {
    fn wake(&self) {
        if self.wake_wanted.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }
}

/// One shard's way to hand events to the delivery thread; Clone + Send.
#[derive(Debug, Clone)]
pub struct EventProducer {
    sender: SyncSender<Queued>,
    shared: Arc<Shared>,
    /// Whether this queue is dropping, so the warning is logged once per
    /// episode rather than once per event.
    dropping: Arc<AtomicBool>,
}

impl EventProducer {
    /// Queues one event (a JSON object with a unique `id`). Never blocks:
    /// when the queue is full, or delivery has stopped, the event is
    /// dropped and counted, and `false` returned.
    pub fn send(&self, event_json: Vec<u8>) -> bool {
        let metrics = &self.shared.metrics;
        metrics.produced.fetch_add(1, Ordering::Relaxed);
        if self.shared.stopping.load(Ordering::Acquire) {
            metrics.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.shared.numbering.push(&self.sender, event_json) {
            Ok(()) => {
                if self.dropping.load(Ordering::Relaxed) {
                    self.dropping.store(false, Ordering::Relaxed);
                }
                // Pairs with the fence in the thread's park: either it sees
                // this event or this sees its wish to be woken.
                fence(Ordering::SeqCst);
                self.shared.wake();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!("lifecycle event queue full: dropping events");
                }
                false
            }
        }
    }
}

/// The delivery thread's handle.
#[derive(Debug)]
pub struct DeliveryThread {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl DeliveryThread {
    /// Stops accepting, delivers what is pending until `deadline` (graceful
    /// shutdown), then joins the thread. Whatever is still pending then is
    /// counted as dropped.
    pub fn stop(mut self, deadline: Instant) {
        self.signal_stop(deadline);
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("lifecycle delivery thread panicked");
            }
        }
    }

    fn signal_stop(&self, deadline: Instant) {
        if let Ok(mut d) = self.shared.deadline.lock() {
            d.get_or_insert(deadline);
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.thread.unpark();
    }
}

impl Drop for DeliveryThread {
    /// Dropped without `stop`: the thread makes one last attempt and exits,
    /// without being waited for.
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.signal_stop(Instant::now());
        }
    }
}

/// Why a request did not count as delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SendError {
    /// The backend answered, but not 2xx.
    #[error("backend answered {0}")]
    Status(u16),
    /// No answer: refused, timed out, reset.
    #[error("backend unreachable: {0}")]
    Transport(String),
}

/// Starts the delivery thread and one producer per shard.
pub fn spawn(
    config: DeliveryConfig,
    shards: usize,
) -> std::io::Result<(Vec<EventProducer>, DeliveryThread, Arc<EventMetrics>)> {
    check_url(&config.url)?;
    let per_shard = (config.queue / shards.max(1)).max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| mpsc::sync_channel::<Queued>(per_shard))
        .unzip();
    let metrics = Arc::new(EventMetrics::default());
    let sender = Sender::new(&config);
    let pipeline = Pipeline::new(config.max_batch, Duration::from_millis(config.batch_ms));
    // The thread needs `Shared` and `Shared` needs the thread's handle: the
    // thread waits for it on a one-shot channel.
    let (handoff, handed) = mpsc::sync_channel::<Arc<Shared>>(1);
    let handle = std::thread::Builder::new()
        .name("lifecycle-delivery".into())
        .spawn(move || {
            let Ok(shared) = handed.recv() else { return };
            Worker {
                queues: MergedQueues::new(receivers),
                pipeline,
                sender,
                shared,
            }
            .run();
        })?;
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        stopping: AtomicBool::new(false),
        deadline: Mutex::new(None),
        wake_wanted: AtomicBool::new(false),
        thread: handle.thread().clone(),
        numbering: Numbering::default(),
    });
    handoff
        .send(shared.clone())
        .map_err(|_| std::io::Error::other("lifecycle delivery thread exited at start"))?;
    let producers = senders
        .into_iter()
        .map(|sender| EventProducer {
            sender,
            shared: shared.clone(),
            dropping: Arc::new(AtomicBool::new(false)),
        })
        .collect();
    let thread = DeliveryThread {
        shared,
        handle: Some(handle),
    };
    Ok((producers, thread, metrics))
}

/// A URL ureq cannot use would make every batch fail forever: refuse it at
/// start instead.
fn check_url(url: &str) -> std::io::Result<()> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("lifecycle events url {url:?}: {why}"),
        )
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("scheme must be http or https")),
    }
    if uri.host().is_none() {
        return Err(invalid("no host"));
    }
    Ok(())
}

/// The HTTP side: one agent, the headers, the signature.
struct Sender {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
    authorization: Option<String>,
    mac: Option<Hmac<Sha256>>,
}

impl Sender {
    fn new(config: &DeliveryConfig) -> Self {
        let timeout = Duration::from_millis(config.timeout_ms);
        // Mirrors the hook pool's agent (src/hooks/pool.rs).
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A 500 is the backend's answer, not a transport error.
            .http_status_as_error(false)
            // A redirect comes back as is: POST bodies are not re-sent.
            .max_redirects(0)
            // The backend sits next to Cinder: a proxy meant for outbound
            // traffic must not capture these calls.
            .proxy(None)
            .user_agent(concat!("cinder/", env!("CARGO_PKG_VERSION")))
            // Drop idle keep-alive connections before common backends do.
            .max_idle_age(Duration::from_secs(4))
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .build()
            .into();
        Sender {
            agent,
            url: config.url.clone(),
            timeout,
            authorization: config.secret.as_ref().map(|s| format!("Bearer {s}")),
            mac: config.secret.as_ref().map(|s| {
                Hmac::<Sha256>::new_from_slice(s.as_bytes())
                    .expect("HMAC accepts keys of any length")
            }),
        }
    }

    /// POSTs `body`, giving up after the configured timeout or at
    /// `deadline`, whichever comes first.
    fn post(&self, body: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        let timeout = match deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        let mut call = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            call = call.header("authorization", authorization);
        }
        if let Some(mac) = &self.mac {
            call = call.header("x-cinder-signature", signature(mac.clone(), body));
        }
        match call.send(body) {
            Ok(mut response) => {
                // Read (and ignore) the body so the connection can be
                // reused; the status alone is the answer.
                let _ = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_RESPONSE_BYTES)
                    .read_to_vec();
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(SendError::Status(status.as_u16()))
                }
            }
            Err(e) => Err(SendError::Transport(e.to_string())),
        }
    }
}

/// `sha256=<lowercase hex HMAC-SHA256 of body>`.
fn signature(mut mac: Hmac<Sha256>, body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * tag.len());
    out.push_str("sha256=");
    for byte in tag {
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 0xf) as usize] as char);
    }
    out
}

struct Worker {
    queues: MergedQueues,
    pipeline: Pipeline,
    sender: Sender,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(mut self) {
        // Logged once per outage, not once per attempt.
        let mut failing = false;
        loop {
            let deadline = self.deadline();
            self.drain();
            let now = Instant::now();
            if let Some(deadline) = deadline {
                if now >= deadline || (self.pipeline.pending() == 0 && self.queues_empty()) {
                    break;
                }
            }
            let until = match self.pipeline.poll(now, deadline.is_some()) {
                Poll::Send { body, retry } => {
                    if retry {
                        self.shared.metrics.retried.fetch_add(1, Ordering::Relaxed);
                    }
                    let result = self.sender.post(body, deadline);
                    self.answer(result, &mut failing);
                    continue;
                }
                Poll::Wait(until) => until,
            };
            self.park(now, until, deadline);
        }
        self.drop_leftovers();
    }

    fn deadline(&self) -> Option<Instant> {
        if !self.shared.stopping.load(Ordering::Acquire) {
            return None;
        }
        // Poisoned only if `stop` panicked mid-write; then flush no more.
        Some(
            self.shared
                .deadline
                .lock()
                .ok()
                .and_then(|d| *d)
                .unwrap_or_else(Instant::now),
        )
    }

    fn answer(&mut self, result: Result<(), SendError>, failing: &mut bool) {
        let now = Instant::now();
        let metrics = &self.shared.metrics;
        match result {
            Ok(()) => {
                if let Some(d) = self.pipeline.delivered(now) {
                    metrics
                        .delivered
                        .fetch_add(d.events as u64, Ordering::Relaxed);
                    metrics.batches.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .batch_latency_ms_sum
                        .fetch_add(d.latency.as_millis() as u64, Ordering::Relaxed);
                }
                if std::mem::take(failing) {
                    tracing::info!("lifecycle events delivered again");
                }
            }
            Err(error) => {
                let delay = self.pipeline.failed(now);
                if !std::mem::replace(failing, true) {
                    tracing::warn!(%error, ?delay, "lifecycle events not delivered; retrying");
                }
            }
        }
    }

    /// Moves events from the queues into the forming batch, in the order
    /// they were made, while it has room.
    fn drain(&mut self) {
        while self.pipeline.room() > 0 {
            let Some(queued) = self.queues.pop_next() else {
                return;
            };
            self.pipeline.push(queued.enqueued, &queued.json);
        }
    }

    /// Right after [`drain`](Self::drain): whether it emptied every queue.
    /// Queues cannot be peeked, but `drain` stops early only when the
    /// forming batch is full, so room left means nothing was left behind.
    fn queues_empty(&self) -> bool {
        self.pipeline.room() > 0
    }

    /// Sleeps until `until` (or an event, or `stop`). When stopping, never
    /// past the deadline.
    fn park(&mut self, now: Instant, until: Option<Instant>, deadline: Option<Instant>) {
        let until = match (until, deadline) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        };
        let timeout = until.map_or(IDLE_PARK, |u| {
            u.saturating_duration_since(now).min(IDLE_PARK)
        });
        if timeout.is_zero() {
            return;
        }
        if self.pipeline.room() > 0 {
            self.shared.wake_wanted.store(true, Ordering::SeqCst);
            // Pairs with the producers' fence: an event sent before the
            // wish was visible is found here instead of being slept on.
            fence(Ordering::SeqCst);
            if self.queues.ready() {
                self.shared.wake_wanted.store(false, Ordering::SeqCst);
                return;
            }
        }
        std::thread::park_timeout(timeout);
        self.shared.wake_wanted.store(false, Ordering::SeqCst);
    }

    fn drop_leftovers(&mut self) {
        let left = (self.pipeline.pending() + self.queues.discard_all()) as u64;
        if left > 0 {
            self.shared
                .metrics
                .dropped
                .fetch_add(left, Ordering::Relaxed);
            tracing::warn!(events = left, "lifecycle events dropped at shutdown");
        }
    }
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
