//! The worker pool that calls the application's backend over HTTP.
//!
//! Shard threads run event loops and must never block, yet deciding who may
//! connect or join can mean asking the application. So a shard hands a
//! [`WebhookRequest`] to [`WebhookPool::submit`], which only queues it (or
//! refuses at once when the bounded queue is full), and one of a few
//! `webhook-N` threads makes the blocking HTTP call with a deadline and runs
//! the caller's completion with the [`WebhookOutcome`]; that completion
//! pushes it back to the shard and wakes it.
//!
//! Every call is `POST {url}/{path}` with a JSON body and, when a secret is
//! configured, `Authorization: Bearer <secret>` so the backend can tell the
//! call comes from Cinder. Any HTTP status is a [`WebhookOutcome::Response`]:
//! what a 403 means is the caller's business, not the transport's.

mod call;
mod pool;
#[cfg(test)]
mod tests;

pub use pool::WebhookPool;

use serde::Deserialize;

/// Largest response body read from the backend; a larger one is a
/// [`WebhookFailure::BadResponse`], so a misbehaving backend cannot make
/// Cinder buffer without bound.
pub const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Settings of the pool (the `[webhook]` table of the configuration).
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/cinder`; calls go to
    /// `{url}/{path}`. `None` means no backend is configured.
    pub url: Option<String>,
    /// Deadline of one job, from the first connect to the last byte of the
    /// response, including the one retry an idempotent job may get.
    pub timeout_ms: u64,
    /// Worker threads, i.e. calls in flight at once.
    pub workers: usize,
    /// Jobs that may wait for a worker; beyond it `submit` fails at once, so
    /// a slow backend turns into fast refusals instead of growing memory.
    pub queue_size: usize,
    /// Sent as `Authorization: Bearer <secret>` so the backend can trust
    /// that a call comes from Cinder.
    pub secret: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: None,
            timeout_ms: 3000,
            workers: 4,
            queue_size: 1024,
            secret: None,
        }
    }
}

// Written by hand rather than derived so the secret never reaches a log line.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("workers", &self.workers)
            .field("queue_size", &self.queue_size)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl WebhookConfig {
    /// Checks the settings, so a typo is reported at load time and never
    /// reaches the event loops. The message names the field and the problem.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or_else(|| format!("url must start with http:// or https:// (got {url:?})"))?;
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("url has no host (got {url:?})"));
            }
            if rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(format!("url must not contain whitespace (got {url:?})"));
            }
            // `{url}/{path}` would land inside the query or fragment.
            if rest.contains(['?', '#']) {
                return Err(format!(
                    "url must not have a query or fragment (got {url:?})"
                ));
            }
        }
        if !(1..=256).contains(&self.workers) {
            return Err(format!(
                "workers must be between 1 and 256 (got {})",
                self.workers
            ));
        }
        if self.queue_size < 1 {
            return Err("queue_size must be at least 1 (got 0)".to_string());
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "timeout_ms must be between 10 and 60000 (got {})",
                self.timeout_ms
            ));
        }
        if let Some(secret) = &self.secret {
            // It travels in a header: an empty or non-printable one would be
            // refused on every call instead of once here.
            if secret.is_empty() {
                return Err("secret must not be empty (leave it out instead)".to_string());
            }
            if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(
                    "secret must be printable ASCII without spaces (it is sent in a header)"
                        .to_string(),
                );
            }
        }
        Ok(())
    }
}

/// One call to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// `connect`, `join` or `event`: the call is `POST {url}/{path}`.
    pub path: &'static str,
    /// The JSON body, sent with `content-type: application/json`.
    pub body: Vec<u8>,
    /// Whether the call may be made a second time when the connection was
    /// refused or reset before any response came. Never after a timeout:
    /// the backend may have acted on the first call.
    pub idempotent: bool,
}

/// What came back from one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// An HTTP response, whatever its status: 4xx and 5xx are answers.
    Response {
        /// The HTTP status code.
        status: u16,
        /// The whole body (at most [`MAX_RESPONSE_BYTES`]).
        body: Vec<u8>,
    },
    /// No usable response.
    Failed(WebhookFailure),
}

/// Why a call produced no usable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookFailure {
    /// The job's deadline (`timeout_ms`) passed.
    #[error("backend timed out")]
    Timeout,
    /// Connection refused or reset, name not resolved, or the pool is
    /// shutting down.
    #[error("backend unreachable: {0}")]
    Unreachable(String),
    /// Something answered, but not with a usable HTTP response (body over
    /// 1 MiB, not HTTP, ...).
    #[error("backend response unusable: {0}")]
    BadResponse(String),
}

/// Why [`WebhookPool::submit`] refused a job; the job's `done` is not called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `queue_size` jobs are already waiting: the backend is not keeping up.
    #[error("webhook queue full")]
    QueueFull,
    /// [`WebhookPool::shutdown`] was called.
    #[error("webhook pool stopped")]
    Stopped,
}

/// A snapshot of the pool's counters, for metrics and tests.
///
/// Once every accepted job has finished,
/// `submitted == ok + timeouts + unreachable + bad_response`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Jobs accepted into the queue.
    pub submitted: u64,
    /// Jobs refused because the queue was full.
    pub rejected: u64,
    /// Jobs that got an HTTP response (any status).
    pub ok: u64,
    /// Jobs that ran out of time.
    pub timeouts: u64,
    /// Jobs that found the backend unreachable, including queued jobs
    /// cancelled by shutdown.
    pub unreachable: u64,
    /// Jobs whose response was unusable.
    pub bad_response: u64,
    /// Second attempts made for idempotent jobs.
    pub retries: u64,
}
