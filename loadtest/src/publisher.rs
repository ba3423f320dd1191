//! The `fanout` publishers: HTTP publish API or pushes on a WebSocket.
//!
//! Both send measured messages stamped with (sender 0, per-topic sequence,
//! window, send time) and both are paced the same way by [`run_window`]:
//! at a fixed rate, or closed-loop ("max") where at most a window of
//! messages per topic may be published but not yet delivered to all of the
//! topic's subscribers — so "max" measures what the server sustains, not
//! how fast its queues fill up.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Rate;
use crate::client::{resolve, Target};
use crate::clock;
use crate::payload::{self, Stamp};
use crate::phoenix::{self, Incoming, Serializer};
use crate::wire::{self, opcode};
use crate::worker::Shared;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The socket failed.
    #[error("publisher socket: {0}")]
    Io(#[from] io::Error),
    /// The HTTP API answered with an error status.
    #[error("publish API answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Response body (truncated).
        body: String,
    },
    /// The publisher's WebSocket could not be set up.
    #[error("publisher WebSocket: {0}")]
    Setup(String),
}

/// What every message carries.
#[derive(Debug, Clone)]
pub struct MessageShape {
    /// Topic names, indexed by topic number.
    pub topics: Vec<Arc<str>>,
    /// Event name.
    pub event: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
}

/// Where messages go.
pub enum Publisher {
    /// `POST` to the HTTP publish API.
    Http(HttpPublisher),
    /// Client pushes on a joined WebSocket.
    Push(PushPublisher),
}

impl Publisher {
    /// Sends `messages` (topic number, stamp) in one request or one write.
    pub fn send(
        &mut self,
        shape: &MessageShape,
        messages: &[(usize, Stamp)],
    ) -> Result<(), PublishError> {
        match self {
            Publisher::Http(p) => p.send(shape, messages),
            Publisher::Push(p) => p.send(shape, messages),
        }
    }

    /// Called before each window (HTTP opens a fresh keep-alive connection,
    /// so a server's idle timeout between windows cannot bite mid-request).
    fn prepare(&mut self) -> Result<(), PublishError> {
        match self {
            Publisher::Http(p) => p.reconnect(),
            Publisher::Push(_) => Ok(()),
        }
    }
}

/// Publishes through `POST /api/broadcast`-style endpoints.
pub struct HttpPublisher {
    addr: std::net::SocketAddr,
    host: String,
    path: String,
    api_key: Option<String>,
    stream: Option<TcpStream>,
    body: Vec<u8>,
    response: Vec<u8>,
}

impl HttpPublisher {
    /// A publisher for `http://host:port/path`.
    pub fn new(url: &str, api_key: Option<String>) -> Result<HttpPublisher, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// publish URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/api/broadcast"),
        };
        Ok(HttpPublisher {
            addr: resolve(authority)?,
            host: authority.to_string(),
            path: path.to_string(),
            api_key,
            stream: None,
            body: Vec::new(),
            response: Vec::with_capacity(4096),
        })
    }

    fn reconnect(&mut self) -> Result<(), PublishError> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        self.stream = Some(stream);
        Ok(())
    }

    fn send(
        &mut self,
        shape: &MessageShape,
        messages: &[(usize, Stamp)],
    ) -> Result<(), PublishError> {
        if self.stream.is_none() {
            self.reconnect()?;
        }
        self.body.clear();
        let batch = messages.len() > 1;
        if batch {
            self.body.extend_from_slice(b"{\"messages\":[");
        }
        for (i, (topic, stamp)) in messages.iter().enumerate() {
            if i > 0 {
                self.body.push(b',');
            }
            write!(
                self.body,
                "{{\"topic\":\"{}\",\"event\":\"{}\",\"payload\":",
                shape.topics[*topic], shape.event
            )?;
            payload::write(&mut self.body, *stamp, shape.payload_bytes);
            self.body.push(b'}');
        }
        if batch {
            self.body.extend_from_slice(b"]}");
        }
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.path,
            self.host,
            self.body.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.as_mut().expect("connected above");
        let result = (|| {
            stream.write_all(head.as_bytes())?;
            stream.write_all(&self.body)?;
            read_response(stream, &mut self.response)
        })();
        match result {
            Ok((status, _)) if (200..300).contains(&status) => Ok(()),
            Ok((status, body)) => Err(PublishError::Status { status, body }),
            Err(e) => {
                self.stream = None;
                Err(e.into())
            }
        }
    }
}

/// Reads one HTTP response (Content-Length framed); returns status and body.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u16, String)> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "publish API closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(buf) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        let status = response.code.unwrap_or(0);
        while buf.len() < head + length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated response",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body =
            String::from_utf8_lossy(&buf[head..(head + length).min(head + 300)]).into_owned();
        return Ok((status, body));
    }
}

/// Publishes by pushing client events on its own joined WebSocket.
pub struct PushPublisher {
    stream: TcpStream,
    serializer: Serializer,
    join_refs: Vec<u64>,
    next_ref: u64,
    frame: Vec<u8>,
    message: Vec<u8>,
    payload: Vec<u8>,
    /// Pushes answered ok.
    pub acked: Arc<AtomicU64>,
    /// Pushes answered with an error.
    pub refused: Arc<AtomicU64>,
}

impl PushPublisher {
    /// Connects, upgrades and joins every topic, then starts the thread
    /// that reads replies.
    pub fn connect(
        target: &Target,
        serializer: Serializer,
        topics: &[Arc<str>],
    ) -> Result<PushPublisher, PublishError> {
        let mut stream = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let key = wire::websocket_key(u128::from(clock::now_ns()) | 1 << 100);
        stream.write_all(&wire::upgrade_request(
            &target.host,
            &target.path_and_query,
            &key,
            target.protocols.as_deref(),
        ))?;
        let mut input = Vec::new();
        let mut chunk = [0u8; 4096];
        let head = loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(PublishError::Setup("closed during upgrade".into()));
            }
            input.extend_from_slice(&chunk[..n]);
            if let Some(head) = wire::parse_upgrade_response(&input, &key)
                .map_err(|e| PublishError::Setup(e.to_string()))?
            {
                break head;
            }
        };
        input.drain(..head);
        let mut publisher = PushPublisher {
            stream,
            serializer,
            join_refs: Vec::new(),
            next_ref: 1,
            frame: Vec::new(),
            message: Vec::new(),
            payload: Vec::new(),
            acked: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
        };
        for topic in topics {
            let join_ref = publisher.next_ref;
            publisher.next_ref += 1;
            publisher.message.clear();
            phoenix::encode_join(serializer, &mut publisher.message, topic, join_ref);
            publisher.write_message()?;
            publisher.join_refs.push(join_ref);
            loop {
                let message = read_message(&mut publisher.stream, &mut input)?;
                if let Incoming::Reply {
                    reference: Some(r),
                    ok,
                } = phoenix::classify(serializer, &message)
                {
                    if r == join_ref {
                        if !ok {
                            return Err(PublishError::Setup(format!("join of {topic} refused")));
                        }
                        break;
                    }
                }
            }
        }
        publisher.stream.set_read_timeout(None)?;
        let mut reader = publisher.stream.try_clone()?;
        let (acked, refused) = (publisher.acked.clone(), publisher.refused.clone());
        std::thread::Builder::new()
            .name("publisher-replies".into())
            .spawn(move || {
                while let Ok(message) = read_message(&mut reader, &mut input) {
                    if let Incoming::Reply { ok, .. } = phoenix::classify(serializer, &message) {
                        if ok { &acked } else { &refused }.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?;
        Ok(publisher)
    }

    fn write_message(&mut self) -> io::Result<()> {
        self.frame.clear();
        let mask = (self.next_ref as u32)
            .wrapping_mul(2_654_435_761)
            .to_le_bytes();
        wire::encode_frame(&mut self.frame, opcode::TEXT, &self.message, mask);
        self.stream.write_all(&self.frame)
    }

    fn send(
        &mut self,
        shape: &MessageShape,
        messages: &[(usize, Stamp)],
    ) -> Result<(), PublishError> {
        let mut frames = std::mem::take(&mut self.frame);
        frames.clear();
        for (topic, stamp) in messages {
            self.payload.clear();
            payload::write(&mut self.payload, *stamp, shape.payload_bytes);
            self.message.clear();
            let reference = self.next_ref;
            self.next_ref += 1;
            phoenix::encode_push(
                self.serializer,
                &mut self.message,
                &shape.topics[*topic],
                Some(self.join_refs[*topic]),
                reference,
                &shape.event,
                &self.payload,
            );
            let mask = (reference as u32).wrapping_mul(2_654_435_761).to_le_bytes();
            wire::encode_frame(&mut frames, opcode::TEXT, &self.message, mask);
        }
        let result = self.stream.write_all(&frames);
        self.frame = frames;
        Ok(result?)
    }
}

/// Reads one whole text message from a blocking socket.
fn read_message(stream: &mut TcpStream, input: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(frame) = wire::parse_frame(input, 16 << 20)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let payload = input[frame.payload_start..frame.end].to_vec();
            input.drain(..frame.end);
            match frame.opcode {
                opcode::TEXT => return Ok(payload),
                opcode::CLOSE => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server closed",
                    ))
                }
                _ => continue,
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed",
            ));
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

/// One measured window of publishing.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    /// Window index stamped into every message.
    pub window: u32,
    /// How long to publish.
    pub duration: Duration,
    /// Fixed rate or closed loop.
    pub rate: Rate,
    /// Messages per request/write.
    pub batch: usize,
    /// Closed loop: messages per topic in flight.
    pub in_flight: u64,
}

/// What a window published.
#[derive(Debug, Clone, Default)]
pub struct WindowPublished {
    /// Messages per topic.
    pub per_topic: Vec<u64>,
    /// When publishing started and ended.
    pub started_ns: u64,
    /// When publishing ended.
    pub ended_ns: u64,
    /// Deliveries the window's messages owe (messages × joined subscribers).
    pub expected: u64,
    /// Requests or writes that failed.
    pub errors: Vec<String>,
    /// (topic, sequence) of messages in failed requests: maybe delivered.
    pub uncertain: Vec<(usize, u64)>,
}

/// Publishes one window. `next_seq` holds each topic's next sequence number
/// and carries over between windows.
pub fn run_window(
    publisher: &mut Publisher,
    shape: &MessageShape,
    plan: &WindowPlan,
    shared: &Shared,
    next_seq: &mut [u64],
) -> WindowPublished {
    let topics = shape.topics.len();
    let mut out = WindowPublished {
        per_topic: vec![0; topics],
        ..WindowPublished::default()
    };
    if let Err(e) = publisher.prepare() {
        out.errors.push(e.to_string());
        return out;
    }
    let batch = plan.batch.max(1);
    let mut messages = Vec::with_capacity(batch);
    let mut next_topic = 0usize;
    let started = clock::now_ns();
    out.started_ns = started;
    let end = started + plan.duration.as_nanos() as u64;
    let mut sent = 0u64;
    // Deliveries owed by everything published so far (this run), for the
    // closed loop: the received counter is compared against it.
    let received_at_start = shared.received.load(Ordering::Relaxed);
    let mut owed = 0u64;
    let mut stalled_since: Option<(u64, u64)> = None;
    loop {
        let now = clock::now_ns();
        if now >= end {
            break;
        }
        let count = match plan.rate {
            Rate::PerSecond(rate) => {
                let due = ((now - started) as f64 / 1e9 * rate) as u64 + 1;
                if due <= sent {
                    let next_at = started + ((sent as f64) / rate * 1e9) as u64;
                    sleep_until(next_at.min(end));
                    continue;
                }
                (due - sent).min(batch as u64) as usize
            }
            Rate::Max => {
                let members: u64 = shared
                    .room_members
                    .iter()
                    .map(|m| m.load(Ordering::Relaxed))
                    .sum();
                let per_topic = (members / topics as u64).max(1);
                let received = shared.received.load(Ordering::Relaxed) - received_at_start;
                let outstanding = owed.saturating_sub(received);
                let room = (plan.in_flight * per_topic * topics as u64).saturating_sub(outstanding);
                if room < per_topic * batch as u64 {
                    // Deliveries that never come (a subscriber dropped)
                    // must not stall the loop forever: after 500 ms with
                    // no progress, write them off.
                    match stalled_since {
                        Some((at, seen)) if seen == received && now - at > 500_000_000 => {
                            owed = received;
                            stalled_since = None;
                        }
                        Some((_, seen)) if seen == received => {}
                        _ => stalled_since = Some((now, received)),
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                stalled_since = None;
                batch
            }
        };
        messages.clear();
        let sent_ns = clock::now_ns();
        for _ in 0..count {
            let topic = next_topic;
            next_topic = (next_topic + 1) % topics;
            let seq = next_seq[topic];
            next_seq[topic] += 1;
            messages.push((
                topic,
                Stamp {
                    sender: 0,
                    seq,
                    window: plan.window,
                    sent_ns,
                },
            ));
        }
        match publisher.send(shape, &messages) {
            Ok(()) => {
                for (topic, _) in &messages {
                    out.per_topic[*topic] += 1;
                    let members = shared.room_members[*topic].load(Ordering::Relaxed);
                    out.expected += members;
                    owed += members;
                }
                sent += count as u64;
            }
            Err(e) => {
                // The messages' fate is unknown: the server may or may not
                // have broadcast them. Their sequence numbers stay used and
                // are listed, so a receiver missing one is not charged with
                // losing it (and one receiving it is not charged either).
                out.uncertain
                    .extend(messages.iter().map(|(topic, stamp)| (*topic, stamp.seq)));
                out.errors.push(e.to_string());
                if out.errors.len() > 100 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    out.ended_ns = clock::now_ns();
    out
}

fn sleep_until(at_ns: u64) {
    let now = clock::now_ns();
    if at_ns > now {
        std::thread::sleep(Duration::from_nanos(at_ns - now));
    }
}
