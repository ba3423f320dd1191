//! One job's HTTP call: the request, the deadline, the single retry, and the
//! mapping of ureq's errors onto [`WebhookFailure`].

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use super::{WebhookConfig, WebhookFailure, WebhookOutcome, WebhookRequest, MAX_RESPONSE_BYTES};

/// A retry with less time than this left would only turn "unreachable" into
/// a misleading "timed out".
const MIN_RETRY_BUDGET: Duration = Duration::from_millis(10);

/// Idle keep-alive connections are dropped after this long. It is below the
/// 5 s keep-alive timeout of Node's and many other servers, so Cinder rarely
/// reuses a connection the backend is closing at that moment (which would
/// fail a non-idempotent call).
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// What one attempt produced.
enum Attempt {
    /// A final outcome.
    Done(WebhookOutcome),
    /// The connection was refused or broke before any response: the call may
    /// be repeated if it is idempotent.
    Retryable(String),
}

/// Makes calls; shared by the workers through the ureq agent's connection
/// pool, so calls reuse keep-alive connections.
pub(super) struct Caller {
    agent: ureq::Agent,
    /// The base URL without a trailing `/`.
    base: String,
    /// `Bearer <secret>`, built once.
    authorization: Option<String>,
    timeout: Duration,
}

impl Caller {
    /// `config.url` must be set; the caller checked.
    pub(super) fn new(config: &WebhookConfig, base: &str) -> Caller {
        let timeout = Duration::from_millis(config.timeout_ms);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A 403 is an answer from the backend, not a transport error.
            .http_status_as_error(false)
            // A redirect is returned as is: POST bodies are not re-sent.
            .max_redirects(0)
            // The backend is the application next to Cinder: an HTTP_PROXY
            // meant for outbound traffic must not capture these calls.
            .proxy(None)
            .user_agent(concat!("cinder/", env!("CARGO_PKG_VERSION")))
            .max_idle_age(MAX_IDLE_AGE)
            .max_idle_connections(config.workers)
            .max_idle_connections_per_host(config.workers)
            .build()
            .into();
        Caller {
            agent,
            base: base.trim_end_matches('/').to_string(),
            authorization: config.secret.as_ref().map(|s| format!("Bearer {s}")),
            timeout,
        }
    }

    /// Runs one job within its deadline. Returns the outcome and whether a
    /// second attempt was made.
    pub(super) fn run(&self, request: &WebhookRequest) -> (WebhookOutcome, bool) {
        let deadline = Instant::now() + self.timeout;
        let reason = match self.attempt(request, self.timeout) {
            Attempt::Done(outcome) => return (outcome, false),
            Attempt::Retryable(reason) => reason,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !request.idempotent || remaining < MIN_RETRY_BUDGET {
            return (unreachable(reason), false);
        }
        tracing::debug!(path = request.path, %reason, "webhook retried");
        match self.attempt(request, remaining) {
            Attempt::Done(outcome) => (outcome, true),
            Attempt::Retryable(reason) => (unreachable(reason), true),
        }
    }

    /// One attempt with `timeout` for everything from connect to the last
    /// body byte.
    fn attempt(&self, request: &WebhookRequest, timeout: Duration) -> Attempt {
        let url = format!("{}/{}", self.base, request.path);
        let mut builder = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            builder = builder.header("authorization", authorization);
        }
        let builder = builder.config().timeout_global(Some(timeout)).build();
        let mut response = match builder.send(&request.body[..]) {
            Ok(response) => response,
            Err(e) => return classify_send_error(e),
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec();
        Attempt::Done(match body {
            Ok(body) => WebhookOutcome::Response { status, body },
            Err(e) => WebhookOutcome::Failed(classify_body_error(e)),
        })
    }
}

fn unreachable(reason: String) -> WebhookOutcome {
    WebhookOutcome::Failed(WebhookFailure::Unreachable(reason))
}

fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        _ => false,
    }
}

/// An error before the response head was read.
fn classify_send_error(e: ureq::Error) -> Attempt {
    if is_timeout(&e) {
        return Attempt::Done(WebhookOutcome::Failed(WebhookFailure::Timeout));
    }
    let failure = match e {
        // Refused, or a (possibly stale keep-alive) connection that broke
        // before an answer: nothing was answered, so a retry is safe for an
        // idempotent call.
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::NotConnected
            ) =>
        {
            return Attempt::Retryable(io.to_string());
        }
        ureq::Error::ConnectionFailed => {
            return Attempt::Retryable("connection failed".to_string());
        }
        ureq::Error::HostNotFound => WebhookFailure::Unreachable("host not found".to_string()),
        // No route, TLS handshake, a URL ureq will not use: the backend cannot
        // be reached, and trying again at once would not change that.
        e @ (ureq::Error::Io(_)
        | ureq::Error::Tls(_)
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)) => WebhookFailure::Unreachable(e.to_string()),
        // Protocol errors and the rest: something answered, but not HTTP.
        e => WebhookFailure::BadResponse(e.to_string()),
    };
    Attempt::Done(WebhookOutcome::Failed(failure))
}

/// An error while reading the body of a response that did start.
fn classify_body_error(e: ureq::Error) -> WebhookFailure {
    if is_timeout(&e) {
        return WebhookFailure::Timeout;
    }
    match e {
        ureq::Error::BodyExceedsLimit(limit) => {
            WebhookFailure::BadResponse(format!("body larger than {limit} bytes"))
        }
        e => WebhookFailure::BadResponse(format!("reading the body: {e}")),
    }
}
