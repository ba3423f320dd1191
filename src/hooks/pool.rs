//! The worker pool that calls the application's backend.
//!
//! Shards never block: they hand a request to [`HookPool::submit`], which
//! queues it (or refuses at once when the bounded queue is full), and a
//! worker thread runs the blocking HTTP call with a deadline and passes the
//! outcome to the caller's completion, which queues it back to the shard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::HooksConfig;

/// Largest backend response body read.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// One call to the backend.
#[derive(Debug, Clone)]
pub struct HookRequest {
    /// `connect`, `join` or `event`: the request goes to `{url}/{path}`.
    pub path: &'static str,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Whether the call may be repeated once when the connection failed
    /// before anything was sent (never after a timeout: the backend may
    /// have acted).
    pub idempotent: bool,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// An HTTP response, whatever its status.
    Response {
        /// HTTP status.
        status: u16,
        /// The body (at most 1 MiB).
        body: Vec<u8>,
    },
    /// No usable response.
    Failed(HookFailure),
}

/// Why a call produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    /// The deadline passed.
    #[error("backend timed out")]
    Timeout,
    /// Refused, reset or unresolvable.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// The queue was full: the backend is not keeping up.
    #[error("backend overloaded (webhook queue full)")]
    Overloaded,
    /// The response could not be read.
    #[error("backend response unusable: {0}")]
    BadResponse(String),
}

/// Counters of the pool, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Calls queued.
    pub submitted: AtomicU64,
    /// Calls refused because the queue was full.
    pub rejected: AtomicU64,
    /// Calls that got an HTTP response.
    pub responses: AtomicU64,
    /// Calls that timed out.
    pub timeouts: AtomicU64,
    /// Calls that found the backend unreachable.
    pub unreachable: AtomicU64,
    /// Repeated calls (idempotent ones after a connection failure).
    pub retries: AtomicU64,
}

/// The completion: runs on a worker thread.
pub type Completion = Box<dyn FnOnce(HookOutcome) + Send>;

struct Job {
    request: HookRequest,
    done: Completion,
}

/// A fixed set of worker threads behind a bounded queue. Cheap to clone.
#[derive(Clone)]
pub struct HookPool {
    sender: Arc<Mutex<Option<SyncSender<Job>>>>,
    stats: Arc<HookStats>,
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for HookPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookPool").finish_non_exhaustive()
    }
}

impl HookPool {
    /// Starts `config.workers` threads calling `config.url`.
    pub fn start(config: &HooksConfig) -> std::io::Result<HookPool> {
        let base = config
            .url
            .clone()
            .ok_or_else(|| std::io::Error::other("webhook.url is not set"))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
            // A 403 is the backend's answer, not a transport error.
            .http_status_as_error(false)
            // A redirect comes back as is: POST bodies are not re-sent.
            .max_redirects(0)
            // The backend sits next to Cinder: a proxy meant for outbound
            // traffic must not capture these calls.
            .proxy(None)
            .user_agent(concat!("cinder/", env!("CARGO_PKG_VERSION")))
            // Drop idle keep-alive connections before common backends do
            // (Node closes after 5 s), so a call rarely lands on a
            // connection the backend is closing.
            .max_idle_age(Duration::from_secs(4))
            .max_idle_connections(config.workers)
            .max_idle_connections_per_host(config.workers)
            .build()
            .into();
        let (sender, receiver) = mpsc::sync_channel::<Job>(config.queue_size);
        let receiver = Arc::new(Mutex::new(receiver));
        let stats = Arc::new(HookStats::default());
        let authorization = config.secret.as_ref().map(|s| format!("Bearer {s}"));
        for i in 0..config.workers {
            let worker = Worker {
                receiver: receiver.clone(),
                agent: agent.clone(),
                base: base.trim_end_matches('/').to_string(),
                authorization: authorization.clone(),
                stats: stats.clone(),
            };
            std::thread::Builder::new()
                .name(format!("webhook-{i}"))
                .spawn(move || worker.run())?;
        }
        Ok(HookPool {
            sender: Arc::new(Mutex::new(Some(sender))),
            stats,
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Queues a call; never blocks. When the queue is full (or the pool is
    /// stopped) `done` runs at once, on this thread, with
    /// [`HookFailure::Overloaded`], so every caller hears back exactly once.
    pub fn submit(&self, request: HookRequest, done: Completion) {
        let job = Job { request, done };
        let refused = match self.sender.lock().ok().as_ref().and_then(|s| s.as_ref()) {
            Some(sender) => match sender.try_send(job) {
                Ok(()) => {
                    self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        (refused.done)(HookOutcome::Failed(HookFailure::Overloaded));
    }

    /// The counters.
    pub fn stats(&self) -> &HookStats {
        &self.stats
    }

    /// Stops accepting; workers finish what is queued and exit.
    pub fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            if let Ok(mut sender) = self.sender.lock() {
                sender.take();
            }
        }
    }
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Job>>>,
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    stats: Arc<HookStats>,
}

impl Worker {
    fn run(self) {
        loop {
            // The lock is held only while waiting for the next job.
            let job = match self.receiver.lock() {
                Ok(receiver) => receiver.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            let mut outcome = self.call(&job.request);
            if job.request.idempotent
                && matches!(outcome, HookOutcome::Failed(HookFailure::Unreachable(_)))
            {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
                outcome = self.call(&job.request);
            }
            let counter = match &outcome {
                HookOutcome::Response { .. } => &self.stats.responses,
                HookOutcome::Failed(HookFailure::Timeout) => &self.stats.timeouts,
                HookOutcome::Failed(_) => &self.stats.unreachable,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let HookOutcome::Failed(failure) = &outcome {
                tracing::warn!(path = job.request.path, %failure, "webhook failed");
            }
            (job.done)(outcome);
        }
    }

    fn call(&self, request: &HookRequest) -> HookOutcome {
        let url = format!("{}/{}", self.base, request.path);
        let mut call = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            call = call.header("authorization", authorization);
        }
        match call.send(&request.body[..]) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                match response
                    .body_mut()
                    .with_config()
                    .limit(MAX_RESPONSE_BYTES)
                    .read_to_vec()
                {
                    Ok(body) => HookOutcome::Response { status, body },
                    Err(ureq::Error::Timeout(_)) => HookOutcome::Failed(HookFailure::Timeout),
                    Err(e) => HookOutcome::Failed(HookFailure::BadResponse(e.to_string())),
                }
            }
            Err(ureq::Error::Timeout(_)) => HookOutcome::Failed(HookFailure::Timeout),
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                HookOutcome::Failed(HookFailure::Timeout)
            }
            Err(
                e
                @ (ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound),
            ) => HookOutcome::Failed(HookFailure::Unreachable(e.to_string())),
            Err(e) => HookOutcome::Failed(HookFailure::BadResponse(e.to_string())),
        }
    }
}
