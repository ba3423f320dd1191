//! A long-poll session's state between requests: the messages waiting for
//! the next poll, and the requests the session is holding.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::wire::PostedFrame;
use crate::fanout::frame::EncodedFrame;
use crate::shard::connection::ConnectionKey;

/// One message waiting for a poll: its frame text, without any WebSocket
/// header.
#[derive(Debug)]
enum Message {
    /// A broadcast's frame, shared with every other subscriber; only its
    /// body is sent (the same encoded JSON the WebSockets get).
    Shared(EncodedFrame),
    /// Text made for this session only (replies, pushes).
    Owned(Box<[u8]>),
}

impl Message {
    fn text(&self) -> &[u8] {
        match self {
            Message::Shared(frame) => frame.body(),
            Message::Owned(text) => text,
        }
    }
}

/// Messages buffered between polls, in the order produced. Bounded by the
/// caller like a WebSocket's unsent bytes (the slow-consumer policy).
#[derive(Debug, Default)]
pub struct MessageBuffer {
    messages: VecDeque<Message>,
    bytes: usize,
}

impl MessageBuffer {
    /// Buffers a broadcast frame (its body is what a poll sends).
    pub fn push_shared(&mut self, frame: EncodedFrame) {
        self.bytes += frame.body().len();
        self.messages.push_back(Message::Shared(frame));
    }

    /// Buffers text made for this session.
    pub fn push_owned(&mut self, text: Vec<u8>) {
        self.bytes += text.len();
        self.messages
            .push_back(Message::Owned(text.into_boxed_slice()));
    }

    /// Bytes of message text buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The buffered texts, oldest first.
    pub fn texts(&self) -> impl Iterator<Item = &[u8]> {
        self.messages.iter().map(Message::text)
    }

    /// Forgets everything (after it was written into a poll answer).
    pub fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
        if self.messages.capacity() > 64 {
            self.messages = VecDeque::new();
        }
    }
}

/// An HTTP request a session holds open: a poll waiting for messages, or a
/// POST waiting for the backend's answer to one of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRequest {
    /// The connection carrying the request.
    pub connection: ConnectionKey,
    /// That connection's serial (guards against the key being reused).
    pub serial: u64,
    /// When the request is answered anyway (`204` for a poll, `408` for a POST).
    pub deadline: Instant,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

/// What buffering a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffered {
    /// A poll is held and was not yet due an answer: put the session on the
    /// shard's list of polls to answer at the end of the turn (once).
    pub wake: bool,
    /// The buffer is over the send buffer limit: a slow consumer.
    pub over_limit: bool,
}

/// What the clock says a session must do ([`LongPollSession::due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// The held poll's window ended: answer `204`.
    pub poll: bool,
    /// The held POST's window ended: answer `408`, drop its remaining lines.
    pub post: bool,
    /// Nobody polled for the session timeout: end the session.
    pub expired: bool,
    /// The buffer stayed over the send buffer limit for the slow-consumer
    /// timeout: end the session as a slow consumer.
    pub slow: bool,
}

/// A long-poll session between requests: its buffered messages, the
/// requests it holds, and its clock. Free of I/O: the shard feeds it
/// requests, messages and the time, and carries out what it answers.
#[derive(Debug)]
pub struct LongPollSession {
    /// The token naming this session.
    pub token: Box<str>,
    /// Messages waiting for the next poll.
    pub buffer: MessageBuffer,
    /// A poll waiting for messages.
    pub poll: Option<HeldRequest>,
    /// A POST whose lines wait for a backend answer, with the lines left.
    pub post: Option<(HeldRequest, VecDeque<PostedFrame>)>,
    /// Backend asks (hooked joins and events) not yet answered: a POST
    /// line waits while one is out.
    pub pending_asks: u32,
    /// When the last poll arrived or was answered (the expiry's origin).
    pub last_poll: Instant,
    /// Whether the session is on the shard's list of polls to answer.
    pub ready: bool,
    /// Since when the buffer has been over the send buffer limit (a poll
    /// that takes the messages ends it): how long the client has not drained.
    pub backlog_since: Option<Instant>,
}

impl LongPollSession {
    /// A new session named by `token`, created at `now`.
    pub fn new(token: String, now: Instant) -> LongPollSession {
        LongPollSession {
            token: token.into_boxed_str(),
            buffer: MessageBuffer::default(),
            poll: None,
            post: None,
            pending_asks: 0,
            last_poll: now,
            ready: false,
            backlog_since: None,
        }
    }

    /// Buffers a broadcast's frame; `limit` is the send buffer limit.
    pub fn buffer_shared(&mut self, frame: EncodedFrame, limit: usize) -> Buffered {
        self.buffer.push_shared(frame);
        self.buffered(limit)
    }

    /// Buffers a message made for this session (a reply or push).
    pub fn buffer_owned(&mut self, text: Vec<u8>, limit: usize) -> Buffered {
        self.buffer.push_owned(text);
        self.buffered(limit)
    }

    fn buffered(&mut self, limit: usize) -> Buffered {
        let wake = self.poll.is_some() && !self.ready;
        self.ready |= wake;
        Buffered {
            wake,
            over_limit: self.buffer.bytes() > limit,
        }
    }

    /// A poll arrived at `now`: it is held (a newer poll replaces a held
    /// one, which is returned to be answered `204`). Whether it can be
    /// answered at once is [`LongPollSession::has_messages`].
    pub fn hold_poll(&mut self, held: HeldRequest, now: Instant) -> Option<HeldRequest> {
        self.last_poll = now;
        self.poll.replace(held)
    }

    /// A POST arrived with its lines: it is held until its lines are
    /// dispatched. An older held POST is returned to be answered `408`
    /// (the JS client never overlaps POSTs).
    pub fn hold_post(&mut self, held: HeldRequest, lines: Vec<PostedFrame>) -> Option<HeldRequest> {
        self.post
            .replace((held, lines.into()))
            .map(|(older, _)| older)
    }

    /// The next POST line to dispatch, unless a backend answer is awaited.
    /// `Err` carries the held POST once every line was dispatched (answer
    /// it `200`).
    pub fn next_line(&mut self) -> Option<Result<(HeldRequest, PostedFrame), HeldRequest>> {
        if self.pending_asks > 0 {
            return None; // resumed when the backend answers
        }
        let (held, lines) = self.post.as_mut()?;
        let held = *held;
        match lines.pop_front() {
            Some(line) => Some(Ok((held, line))),
            None => {
                self.post = None;
                Some(Err(held))
            }
        }
    }

    /// Whether messages wait for a poll.
    pub fn has_messages(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// Takes the held poll to answer it at `now` (the expiry counts from
    /// the end of the last poll).
    pub fn take_poll(&mut self, now: Instant) -> Option<HeldRequest> {
        self.ready = false;
        let held = self.poll.take()?;
        self.last_poll = now;
        Some(held)
    }

    /// What is due at `now`, given the session timeout and the slow-consumer
    /// timeout.
    pub fn due(&self, now: Instant, timeout: Duration, slow_after: Duration) -> Due {
        Due {
            slow: self
                .backlog_since
                .is_some_and(|since| now.saturating_duration_since(since) >= slow_after),
            poll: self.poll.is_some_and(|p| now >= p.deadline),
            post: self.post.as_ref().is_some_and(|(p, _)| now >= p.deadline),
            expired: self.poll.is_none() && now.saturating_duration_since(self.last_poll) > timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    #[test]
    fn buffers_keep_order_and_count_text_bytes() {
        let mut buffer = MessageBuffer::default();
        let frame = EncodedFrame::new(OpCode::Data(Data::Text), b"[null,null,\"t\",\"e\",{}]");
        buffer.push_owned(b"reply".to_vec());
        buffer.push_shared(frame);
        assert_eq!(buffer.bytes(), 5 + 22);
        let texts: Vec<&[u8]> = buffer.texts().collect();
        assert_eq!(
            texts,
            vec![&b"reply"[..], &b"[null,null,\"t\",\"e\",{}]"[..]]
        );
        buffer.clear();
        assert!(buffer.is_empty());
        assert_eq!(buffer.bytes(), 0);
    }

    fn held(connection: usize, deadline: Instant) -> HeldRequest {
        HeldRequest {
            connection: ConnectionKey(connection),
            serial: 1,
            deadline,
            keep_alive: true,
        }
    }

    #[test]
    fn a_held_poll_wakes_once_per_turn_and_a_newer_poll_replaces_it() {
        let t0 = Instant::now();
        let mut session = LongPollSession::new("tok".into(), t0);
        let idle = session.buffer_owned(b"early".to_vec(), 100);
        assert_eq!(
            idle,
            Buffered {
                wake: false,
                over_limit: false
            },
            "no poll held"
        );
        assert_eq!(
            session.hold_poll(held(1, t0 + Duration::from_secs(10)), t0),
            None
        );
        assert!(session.has_messages(), "answered at once");
        let first = session.buffer_owned(b"x".to_vec(), 100);
        let second = session.buffer_owned(b"y".to_vec(), 100);
        assert!(first.wake && !second.wake, "one wake per turn");
        let replaced = session.hold_poll(held(2, t0 + Duration::from_secs(10)), t0);
        assert_eq!(replaced.map(|h| h.connection), Some(ConnectionKey(1)));
        assert_eq!(
            session.take_poll(t0).map(|h| h.connection),
            Some(ConnectionKey(2))
        );
        assert!(!session.ready);
        let over = session.buffer_owned(vec![b'z'; 200], 100);
        assert!(over.over_limit);
    }

    #[test]
    fn post_lines_wait_for_backend_answers() {
        let t0 = Instant::now();
        let mut session = LongPollSession::new("tok".into(), t0);
        let post = held(3, t0 + Duration::from_secs(10));
        let lines = vec![PostedFrame::Text(b"a".to_vec()), PostedFrame::Malformed];
        assert_eq!(session.hold_post(post, lines), None);
        assert_eq!(
            session.next_line(),
            Some(Ok((post, PostedFrame::Text(b"a".to_vec()))))
        );
        session.pending_asks = 1;
        assert_eq!(session.next_line(), None, "waits for the backend");
        session.pending_asks = 0;
        assert_eq!(
            session.next_line(),
            Some(Ok((post, PostedFrame::Malformed)))
        );
        assert_eq!(
            session.next_line(),
            Some(Err(post)),
            "all dispatched: answer 200"
        );
        assert_eq!(session.next_line(), None);
        let older = held(4, t0);
        session.hold_post(older, vec![]);
        assert_eq!(
            session.hold_post(post, vec![]),
            Some(older),
            "an overlapped POST is given up"
        );
    }

    #[test]
    fn the_clock_ends_polls_posts_and_sessions() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let timeout = window * 3 / 2;
        let mut session = LongPollSession::new("tok".into(), t0);
        session.hold_poll(held(1, t0 + window), t0);
        session.hold_post(held(2, t0 + window), vec![]);
        assert_eq!(session.due(t0, timeout, window), Due::default());
        assert_eq!(
            session.due(t0 + window, timeout, window),
            Due {
                poll: true,
                post: true,
                expired: false,
                slow: false
            }
        );
        session.take_poll(t0 + window);
        let later = t0 + window + timeout + Duration::from_millis(1);
        assert!(
            session.due(later, timeout, window).expired,
            "no poll for 1.5 windows"
        );
        assert!(!session.due(t0 + window + timeout, timeout, window).expired);
        session.backlog_since = Some(t0);
        assert!(!session.due(t0 + window / 2, timeout, window).slow);
        assert!(
            session.due(t0 + window, timeout, window).slow,
            "over the limit for the whole timeout"
        );
    }
}
