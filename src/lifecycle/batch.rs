//! Batching and retrying lifecycle events, sans IO.
//!
//! [`Pipeline`] holds at most two batches: the one *in flight* (sent, or
//! waiting to be re-sent after a failure) and the one *forming* behind it.
//! Only one batch is ever in flight, so the backend sees each shard's events
//! in the order the shard produced them; a failed batch is re-sent with the
//! very same bytes, so an event id repeats only when a batch is retried.
//!
//! The delivery thread does the IO: it pushes events while there is
//! [`room`](Pipeline::room), asks [`poll`](Pipeline::poll) what to do at
//! `now`, and reports the answer of the backend with
//! [`delivered`](Pipeline::delivered) or [`failed`](Pipeline::failed).

use std::time::{Duration, Instant};

/// First delay before a failed batch is re-sent.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between two attempts at the same batch.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

const BODY_PREFIX: &[u8] = b"{\"events\":[";
const BODY_SUFFIX: &[u8] = b"]}";

/// Exponential backoff: 100 ms, doubling, capped at 5 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay to wait after one more failure; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

/// A sealed batch: the exact request body and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    body: Vec<u8>,
    events: usize,
    oldest: Instant,
}

impl Batch {
    /// The request body, `{"events":[...]}`.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// How many events it carries.
    pub fn events(&self) -> usize {
        self.events
    }

    /// When its oldest event was enqueued.
    pub fn oldest(&self) -> Instant {
        self.oldest
    }
}

/// The batch being filled: the body is built as events arrive, so sealing
/// it costs nothing.
#[derive(Debug)]
struct Forming {
    body: Vec<u8>,
    events: usize,
    oldest: Option<Instant>,
}

impl Forming {
    fn new() -> Self {
        Forming {
            body: BODY_PREFIX.to_vec(),
            events: 0,
            oldest: None,
        }
    }

    fn seal(&mut self) -> Option<Batch> {
        let oldest = self.oldest?;
        let mut sealed = std::mem::replace(self, Forming::new());
        sealed.body.extend_from_slice(BODY_SUFFIX);
        Some(Batch {
            body: sealed.body,
            events: sealed.events,
            oldest,
        })
    }
}

#[derive(Debug)]
struct InFlight {
    batch: Batch,
    /// Attempts made so far; 0 until the first send.
    attempts: u32,
    /// When the next attempt may start.
    due: Instant,
}

/// What the delivery thread should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll<'a> {
    /// POST this body; answer with [`Pipeline::delivered`] or
    /// [`Pipeline::failed`].
    Send {
        /// The exact body; the same bytes on every attempt at one batch.
        body: &'a [u8],
        /// Whether this batch was sent before (and failed).
        retry: bool,
    },
    /// Nothing to do until this instant (`None`: until an event arrives).
    Wait(Option<Instant>),
}

/// What a delivered batch carried, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Events in the batch.
    pub events: usize,
    /// Delivery time minus the oldest event's enqueue time.
    pub latency: Duration,
}

/// One batch in flight, one forming: the whole delivery state machine.
#[derive(Debug)]
pub struct Pipeline {
    max_batch: usize,
    max_wait: Duration,
    forming: Forming,
    in_flight: Option<InFlight>,
    backoff: Backoff,
}

impl Pipeline {
    /// A batch goes out once it holds `max_batch` events (at least 1) or its
    /// oldest event has waited `max_wait`.
    pub fn new(max_batch: usize, max_wait: Duration) -> Self {
        Pipeline {
            max_batch: max_batch.max(1),
            max_wait,
            forming: Forming::new(),
            in_flight: None,
            backoff: Backoff::default(),
        }
    }

    /// How many more events [`push`](Self::push) takes now. The caller
    /// leaves the rest in its bounded queues, so a dead backend holds at
    /// most two batches here.
    pub fn room(&self) -> usize {
        self.max_batch - self.forming.events
    }

    /// Adds one event (a JSON object, as is) enqueued at `enqueued`.
    /// Beyond [`room`](Self::room) the forming batch simply grows past
    /// `max_batch`; callers should not do that.
    pub fn push(&mut self, enqueued: Instant, event: &[u8]) {
        if self.forming.events > 0 {
            self.forming.body.push(b',');
        }
        self.forming.body.extend_from_slice(event);
        self.forming.events += 1;
        // Per-shard queues interleave, so the first pushed is not always
        // the oldest.
        let oldest = self.forming.oldest.get_or_insert(enqueued);
        *oldest = (*oldest).min(enqueued);
    }

    /// Events held (in flight and forming): what is lost if the process
    /// stops now.
    pub fn pending(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |f| f.batch.events) + self.forming.events
    }

    /// What to do at `now`. With `flush` (shutting down) a forming batch
    /// goes out without waiting to fill or age.
    pub fn poll(&mut self, now: Instant, flush: bool) -> Poll<'_> {
        if self.in_flight.is_none() {
            let ready = match self.forming.oldest {
                None => false,
                Some(oldest) => {
                    flush
                        || self.forming.events >= self.max_batch
                        || now.saturating_duration_since(oldest) >= self.max_wait
                }
            };
            if !ready {
                return Poll::Wait(self.forming.oldest.map(|o| o + self.max_wait));
            }
            if let Some(batch) = self.forming.seal() {
                self.in_flight = Some(InFlight {
                    batch,
                    attempts: 0,
                    due: now,
                });
            }
        }
        match &self.in_flight {
            Some(f) if now >= f.due => Poll::Send {
                body: &f.batch.body,
                retry: f.attempts > 0,
            },
            Some(f) => Poll::Wait(Some(f.due)),
            None => Poll::Wait(None),
        }
    }

    /// The backend took the batch in flight (a 2xx): it is done and the
    /// backoff starts over. `None` when nothing was in flight.
    pub fn delivered(&mut self, now: Instant) -> Option<Delivered> {
        let f = self.in_flight.take()?;
        self.backoff.reset();
        Some(Delivered {
            events: f.batch.events,
            latency: now.saturating_duration_since(f.batch.oldest),
        })
    }

    /// The attempt failed: the same batch is due again after the returned
    /// delay (`None` when nothing was in flight).
    pub fn failed(&mut self, now: Instant) -> Option<Duration> {
        let f = self.in_flight.as_mut()?;
        let delay = self.backoff.next_delay();
        f.attempts += 1;
        f.due = now + delay;
        Some(delay)
    }

    /// The batch in flight, if any.
    pub fn in_flight(&self) -> Option<&Batch> {
        self.in_flight.as_ref().map(|f| &f.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    fn sent(poll: Poll<'_>) -> (Vec<u8>, bool) {
        match poll {
            Poll::Send { body, retry } => (body.to_vec(), retry),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn empty_pipeline_waits_for_events() {
        let mut p = Pipeline::new(3, WAIT);
        assert_eq!(p.poll(Instant::now(), false), Poll::Wait(None));
        assert_eq!(p.poll(Instant::now(), true), Poll::Wait(None));
        assert_eq!(p.pending(), 0);
        assert_eq!(p.room(), 3);
    }

    #[test]
    fn size_trigger_sends_a_full_batch_at_once() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(3, WAIT);
        p.push(t0, br#"{"id":1}"#);
        p.push(t0, br#"{"id":2}"#);
        assert_eq!(p.poll(t0, false), Poll::Wait(Some(t0 + WAIT)));
        assert_eq!(p.room(), 1);
        p.push(t0, br#"{"id":3}"#);
        assert_eq!(p.room(), 0);
        let (body, retry) = sent(p.poll(t0, false));
        assert_eq!(body, br#"{"events":[{"id":1},{"id":2},{"id":3}]}"#);
        assert!(!retry);
        // The next batch forms behind the one in flight.
        assert_eq!(p.room(), 3);
        assert_eq!(p.pending(), 3);
    }

    #[test]
    fn age_trigger_sends_a_partial_batch_after_max_wait() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(100, WAIT);
        p.push(t0, br#"{"id":"a"}"#);
        p.push(t0 + Duration::from_millis(30), br#"{"id":"b"}"#);
        assert_eq!(
            p.poll(t0 + Duration::from_millis(49), false),
            Poll::Wait(Some(t0 + WAIT))
        );
        let (body, _) = sent(p.poll(t0 + WAIT, false));
        assert_eq!(body, br#"{"events":[{"id":"a"},{"id":"b"}]}"#);
    }

    #[test]
    fn age_counts_from_the_oldest_event_even_if_pushed_later() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(100, WAIT);
        p.push(t0 + Duration::from_millis(20), b"{}");
        p.push(t0, b"{}");
        assert_eq!(p.poll(t0, false), Poll::Wait(Some(t0 + WAIT)));
    }

    #[test]
    fn flush_sends_a_partial_batch_at_once() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(100, WAIT);
        p.push(t0, b"{}");
        let (body, _) = sent(p.poll(t0, true));
        assert_eq!(body, br#"{"events":[{}]}"#);
    }

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_5s() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000],
            "doubling, then the cap"
        );
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_INITIAL);
    }

    #[test]
    fn retry_keeps_the_same_body_while_new_events_queue_behind() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(2, WAIT);
        p.push(t0, br#"{"id":1}"#);
        p.push(t0, br#"{"id":2}"#);
        let (first, _) = sent(p.poll(t0, false));

        assert_eq!(p.failed(t0), Some(Duration::from_millis(100)));
        p.push(t0, br#"{"id":3}"#);
        p.push(t0, br#"{"id":4}"#);
        assert_eq!(p.room(), 0);
        assert_eq!(p.pending(), 4);
        // Not before the backoff, even though a full batch is waiting.
        let t1 = t0 + Duration::from_millis(99);
        assert_eq!(
            p.poll(t1, false),
            Poll::Wait(Some(t0 + Duration::from_millis(100)))
        );
        let t2 = t0 + Duration::from_millis(100);
        let (second, retry) = sent(p.poll(t2, false));
        assert_eq!(second, first);
        assert!(retry);

        assert_eq!(p.failed(t2), Some(Duration::from_millis(200)));
        let t3 = t2 + Duration::from_millis(200);
        assert_eq!(sent(p.poll(t3, false)), (first, true));

        let d = p.delivered(t3).expect("a batch was in flight");
        assert_eq!(d.events, 2);
        assert_eq!(d.latency, t3 - t0);
        // Then the next batch, as a first attempt, and a fresh backoff.
        let (next, retry) = sent(p.poll(t3, false));
        assert_eq!(next, br#"{"events":[{"id":3},{"id":4}]}"#);
        assert!(!retry);
        assert_eq!(p.failed(t3), Some(Duration::from_millis(100)));
    }

    #[test]
    fn answers_without_a_batch_in_flight_are_ignored() {
        let mut p = Pipeline::new(2, WAIT);
        assert_eq!(p.delivered(Instant::now()), None);
        assert_eq!(p.failed(Instant::now()), None);
        assert!(p.in_flight().is_none());
    }
}
