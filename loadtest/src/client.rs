//! One client connection: a small state machine driven by the worker's
//! event loop.
//!
//! ```text
//! Connecting --writable--> Upgrading --101--> Joining --ok reply--> Joined
//!      \                       \                 \                    \
//!       `-----------------------`-----------------`--> Closed (failure recorded)
//! ```
//! The client never blocks: writes that do not fit wait in `output` for the
//! next writable edge, partial frames wait in `input` for more bytes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;
use socket2::{Domain, Socket, Type};

use crate::phoenix::{self, Incoming, Serializer};
use crate::tracker::Tracker;
use crate::wire::{self, opcode};
use crate::worker::LoopContext;
use crate::{clock, payload};

/// Largest server message a load client accepts.
const MAX_MESSAGE: usize = 16 << 20;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request target: path plus query (with `vsn` and connect params).
    pub path_and_query: String,
    /// `Sec-WebSocket-Protocol` value, if an auth token is sent.
    pub protocols: Option<String>,
}

impl Target {
    /// Builds the target from a `ws://host:port/path` URL.
    pub fn from_url(
        url: &str,
        serializer: Serializer,
        params: &[(String, String)],
        auth_token: Option<&str>,
    ) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("`{url}`: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/socket/websocket"),
        };
        let addr = resolve(authority)?;
        let mut path_and_query = path.to_string();
        path_and_query.push(if path.contains('?') { '&' } else { '?' });
        path_and_query.push_str("vsn=");
        path_and_query.push_str(serializer.vsn());
        for (key, value) in params {
            path_and_query.push_str(&format!(
                "&{}={}",
                encode_component(key),
                encode_component(value)
            ));
        }
        let protocols = auth_token.map(|token| {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
            format!("phoenix, base64url.bearer.phx.{encoded}")
        });
        Ok(Target {
            addr,
            host: authority.to_string(),
            path_and_query,
            protocols,
        })
    }
}

/// Resolves `host:port` to one address.
pub fn resolve(authority: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{authority}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{authority}` resolves to no address"))
}

fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Which connection this is and what it joins.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Global index over all threads, from 0.
    pub index: usize,
    /// Topic number.
    pub topic: usize,
    /// Topic name.
    pub topic_name: Arc<str>,
    /// This connection's sender slot within its topic (chat).
    pub slot: u32,
    /// Which server it connects to: an index into the worker's targets
    /// (the `--url`s, in order).
    pub node: usize,
    /// Set for a join on a history topic (`recover`): the client then
    /// keeps what the join reply says and checks the replayed broadcasts.
    pub history: Option<HistoryJoin>,
}

/// A join on a history topic, as `recover` makes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryJoin {
    /// The position to recover from, sent as `"since"` in the join payload
    /// (`None`: a plain join whose reply's position is kept).
    pub since: Option<Arc<str>>,
    /// Replayed broadcasts expected after the reply: sender 0's sequence
    /// numbers `0..replay`, in that order.
    pub replay: u64,
}

/// What a history join got: the reply's answer and how the replayed
/// broadcasts arrived. Only distinct arrivals are looked at here;
/// duplicates are counted by the client's [`Tracker`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayLog {
    /// What the ok join reply said (`None` until it came).
    pub answer: Option<phoenix::JoinAnswer>,
    /// When the `phx_join` was sent.
    pub join_sent_ns: u64,
    /// When its ok reply arrived (0 if it has not).
    pub replied_ns: u64,
    /// The sequence number the next arrival should carry.
    pub next_seq: u64,
    /// Distinct arrivals with a sequence number below the expected count.
    pub distinct: u64,
    /// Distinct arrivals that were not the next expected one (a gap
    /// before them, or a late one after a gap).
    pub out_of_order: u64,
    /// Broadcasts that arrived before the join's reply.
    pub before_reply: u64,
    /// Broadcasts without a position in their ref slot.
    pub without_position: u64,
    /// When the last expected broadcast arrived (0 if not all did).
    pub completed_ns: u64,
}

impl ReplayLog {
    /// Records one distinct arrival of `seq` at `now_ns`, of `expected`
    /// replayed broadcasts; returns whether that completed the replay.
    pub fn arrived(&mut self, seq: u64, expected: u64, joined: bool, now_ns: u64) -> bool {
        if !joined {
            self.before_reply += 1;
        }
        if seq != self.next_seq {
            self.out_of_order += 1;
        }
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        if seq < expected {
            self.distinct += 1;
            if self.distinct == expected {
                self.completed_ns = now_ns;
                return true;
            }
        }
        false
    }

    /// Whether every expected broadcast arrived exactly in order, right
    /// after an ok reply that said `recovered: true`.
    pub fn clean(&self, expected: u64) -> bool {
        self.answer.as_ref().and_then(|a| a.recovered) == Some(true)
            && self.distinct == expected
            && self.out_of_order == 0
            && self.before_reply == 0
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for 101.
    Upgrading,
    /// `phx_join` sent, waiting for its reply.
    Joining,
    /// Joined; receiving.
    Joined,
    /// Done, for whatever reason.
    Closed,
}

/// Why a connection ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The socket failed later.
    #[error("io: {0}")]
    Io(String),
    /// The server refused or botched the upgrade.
    #[error("upgrade: {0}")]
    Upgrade(wire::WireError),
    /// A frame the client cannot accept.
    #[error("frame: {0}")]
    Frame(wire::WireError),
    /// The join was answered with an error.
    #[error("join refused")]
    JoinRefused,
    /// The server ended the channel (`phx_close`/`phx_error`).
    #[error("channel ended by server")]
    ChannelEnded,
    /// The server closed the WebSocket.
    #[error("closed by server with code {0}")]
    ClosedByServer(u16),
    /// The server closed TCP without a close frame.
    #[error("connection reset or EOF")]
    Eof,
}

/// One client connection.
pub struct Client {
    /// The socket.
    pub stream: TcpStream,
    /// Where it is.
    pub phase: Phase,
    /// What it is.
    pub spec: ConnSpec,
    /// What it received.
    pub tracker: Tracker,
    /// Pushes written (chat).
    pub pushes_sent: u64,
    /// Pushes answered `ok` (chat).
    pub pushes_acked: u64,
    /// Pushes answered with an error (chat).
    pub push_errors: u64,
    /// When the TCP connect started.
    pub started_ns: u64,
    /// When the next heartbeat is due.
    pub next_heartbeat_ns: u64,
    /// When the join succeeded (0 if it has not).
    pub joined_ns: u64,
    /// The answer to [`Client::leave`]: `Some(true)` once it was ok.
    pub leave_reply: Option<bool>,
    /// With [`ConnSpec::history`]: the join's answer and the replay.
    pub replay: Option<ReplayLog>,
    key: String,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    fragment: Option<(u8, Vec<u8>)>,
    next_ref: u64,
    join_ref: u64,
    join_sent_ns: u64,
    last_heartbeat_ref: u64,
    leave_ref: u64,
    mask_state: u32,
}

impl Client {
    /// Starts a non-blocking connect from `src` (if given) to `target`.
    pub fn connect(spec: ConnSpec, target: &Target, src: Option<Ipv4Addr>) -> io::Result<Client> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = src {
            // Pick the port at connect() time, per 4-tuple, instead of at
            // bind() time per address: that is what lets many source
            // addresses multiply the usable ports.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads an int we own for its given size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            socket.bind(&SocketAddr::new(ip.into(), 0).into())?;
        }
        match socket.connect(&target.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(socket));
        let seed = (spec.index as u32).wrapping_mul(2_654_435_761) | 1;
        let now = clock::now_ns();
        Ok(Client {
            stream,
            phase: Phase::Connecting,
            key: wire::websocket_key(u128::from(seed) << 64 | u128::from(now)),
            replay: spec.history.as_ref().map(|_| ReplayLog::default()),
            spec,
            tracker: Tracker::default(),
            pushes_sent: 0,
            pushes_acked: 0,
            push_errors: 0,
            started_ns: now,
            next_heartbeat_ns: u64::MAX,
            joined_ns: 0,
            leave_reply: None,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            fragment: None,
            next_ref: 1,
            join_ref: 0,
            join_sent_ns: 0,
            last_heartbeat_ref: 0,
            leave_ref: 0,
            mask_state: seed,
        })
    }

    /// Whether the client is still on its way to `Joined`.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.phase,
            Phase::Connecting | Phase::Upgrading | Phase::Joining
        )
    }

    /// The socket became writable.
    pub fn on_writable(&mut self, target: &Target) -> Result<(), Failure> {
        if self.phase == Phase::Connecting {
            if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
                return Err(Failure::Connect(e.to_string()));
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Failure::Connect(e.to_string())),
            }
            self.phase = Phase::Upgrading;
            let request = wire::upgrade_request(
                &target.host,
                &target.path_and_query,
                &self.key,
                target.protocols.as_deref(),
            );
            self.output.extend_from_slice(&request);
        }
        self.flush()
    }

    /// The socket became readable: read all there is and act on it.
    pub fn on_readable(
        &mut self,
        scratch: &mut [u8],
        ctx: &mut LoopContext,
    ) -> Result<(), Failure> {
        if self.phase == Phase::Connecting {
            return Ok(());
        }
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Err(Failure::Eof),
                Ok(n) => {
                    ctx.now_ns = clock::now_ns();
                    if self.input.is_empty() {
                        let used = self.consume(&scratch[..n], ctx)?;
                        self.input.extend_from_slice(&scratch[used..n]);
                    } else {
                        let mut input = std::mem::take(&mut self.input);
                        input.extend_from_slice(&scratch[..n]);
                        let used = self.consume(&input, ctx)?;
                        input.drain(..used);
                        self.input = input;
                    }
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io(e.to_string())),
            }
        }
        self.flush()
    }

    /// Acts on every complete thing at the front of `data`; returns how
    /// many bytes were used.
    fn consume(&mut self, data: &[u8], ctx: &mut LoopContext) -> Result<usize, Failure> {
        let mut at = 0;
        if self.phase == Phase::Upgrading {
            match wire::parse_upgrade_response(data, &self.key).map_err(Failure::Upgrade)? {
                None => return Ok(0),
                Some(head) => {
                    at = head;
                    ctx.on_upgraded(self.started_ns);
                    self.phase = Phase::Joining;
                    self.join_ref = self.take_ref();
                    self.join_sent_ns = ctx.now_ns;
                    let mut join = Vec::new();
                    let since = self.spec.history.as_ref().and_then(|h| h.since.as_deref());
                    match since {
                        Some(since) => phoenix::encode_join_with(
                            ctx.serializer,
                            &mut join,
                            &self.spec.topic_name,
                            self.join_ref,
                            &phoenix::since_payload(since),
                        ),
                        None => phoenix::encode_join(
                            ctx.serializer,
                            &mut join,
                            &self.spec.topic_name,
                            self.join_ref,
                        ),
                    }
                    if let Some(log) = &mut self.replay {
                        log.join_sent_ns = ctx.now_ns;
                    }
                    self.send(opcode::TEXT, &join);
                }
            }
        }
        while let Some(frame) =
            wire::parse_frame(&data[at..], MAX_MESSAGE).map_err(Failure::Frame)?
        {
            let payload = &data[at + frame.payload_start..at + frame.end];
            at += frame.end;
            match frame.opcode {
                opcode::TEXT | opcode::BINARY if frame.fin && self.fragment.is_none() => {
                    self.on_message(frame.opcode, payload, ctx)?
                }
                opcode::TEXT | opcode::BINARY => {
                    self.fragment = Some((frame.opcode, payload.to_vec()))
                }
                opcode::CONTINUATION => {
                    let Some((kind, mut message)) = self.fragment.take() else {
                        return Err(Failure::Frame(wire::WireError::BadFrame(
                            "continuation without a message",
                        )));
                    };
                    message.extend_from_slice(payload);
                    if frame.fin {
                        self.on_message(kind, &message, ctx)?;
                    } else {
                        self.fragment = Some((kind, message));
                    }
                }
                opcode::PING => self.send(opcode::PONG, payload),
                opcode::PONG => {}
                opcode::CLOSE => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    self.send(opcode::CLOSE, &payload[..payload.len().min(2)]);
                    let _ = self.flush();
                    return Err(Failure::ClosedByServer(code));
                }
                _ => return Err(Failure::Frame(wire::WireError::BadFrame("unknown opcode"))),
            }
        }
        Ok(at)
    }

    fn on_message(
        &mut self,
        kind: u8,
        message: &[u8],
        ctx: &mut LoopContext,
    ) -> Result<(), Failure> {
        if kind == opcode::BINARY {
            ctx.other_messages += 1;
            return Ok(());
        }
        match phoenix::classify(ctx.serializer, message) {
            Incoming::Broadcast => match payload::parse(message) {
                Some(stamp) => {
                    if self.tracker.record(stamp.sender, stamp.seq) {
                        ctx.on_delivery(stamp, self.spec.node);
                        if let (Some(log), Some(history)) = (&mut self.replay, &self.spec.history) {
                            if phoenix::message_ref(ctx.serializer, message).is_none() {
                                log.without_position += 1;
                            }
                            let joined = self.phase == Phase::Joined;
                            if log.arrived(stamp.seq, history.replay, joined, ctx.now_ns) {
                                ctx.on_replay_complete();
                            }
                        }
                    }
                }
                None => ctx.other_messages += 1,
            },
            Incoming::Reply { reference, ok } => {
                if self.phase == Phase::Joining && reference == Some(self.join_ref) {
                    if !ok {
                        return Err(Failure::JoinRefused);
                    }
                    self.phase = Phase::Joined;
                    self.joined_ns = ctx.now_ns;
                    if let Some(log) = &mut self.replay {
                        log.answer = phoenix::join_answer(ctx.serializer, message);
                        log.replied_ns = ctx.now_ns;
                    }
                    self.next_heartbeat_ns = ctx.now_ns + ctx.heartbeat_ns;
                    ctx.on_joined(self.join_sent_ns, self.spec.topic);
                } else if reference == Some(self.last_heartbeat_ref) {
                    ctx.heartbeat_replies += 1;
                } else if self.leave_ref != 0 && reference == Some(self.leave_ref) {
                    self.leave_reply = Some(ok);
                } else if ok {
                    self.pushes_acked += 1;
                    ctx.on_push_acked(self.spec.topic);
                } else {
                    self.push_errors += 1;
                }
            }
            // After a leave, the server ends the channel: that is the
            // leave completing, not a failure.
            Incoming::ChannelEnded if self.leave_ref != 0 => {}
            Incoming::ChannelEnded => return Err(Failure::ChannelEnded),
            Incoming::PresenceState => ctx.on_presence(message, false),
            Incoming::PresenceDiff => ctx.on_presence(message, true),
            Incoming::Unparsable => ctx.other_messages += 1,
        }
        Ok(())
    }

    /// Sends a heartbeat if one is due; returns whether it sent one.
    pub fn heartbeat_if_due(&mut self, now_ns: u64, ctx: &LoopContext) -> Result<bool, Failure> {
        if self.phase != Phase::Joined || now_ns < self.next_heartbeat_ns {
            return Ok(false);
        }
        self.next_heartbeat_ns = now_ns + ctx.heartbeat_ns;
        self.last_heartbeat_ref = self.take_ref();
        let mut message = Vec::new();
        phoenix::encode_heartbeat(ctx.serializer, &mut message, self.last_heartbeat_ref);
        self.send(opcode::TEXT, &message);
        self.flush()?;
        Ok(true)
    }

    /// Pushes one measured message into the joined topic (chat).
    pub fn push(
        &mut self,
        event: &str,
        payload_json: &[u8],
        ctx: &LoopContext,
    ) -> Result<(), Failure> {
        let reference = self.take_ref();
        let mut message = Vec::with_capacity(payload_json.len() + 64);
        phoenix::encode_push(
            ctx.serializer,
            &mut message,
            &self.spec.topic_name,
            Some(self.join_ref),
            reference,
            event,
            payload_json,
        );
        self.send(opcode::TEXT, &message);
        self.pushes_sent += 1;
        self.flush()
    }

    /// Leaves the joined topic (`phx_leave`); the answer lands in
    /// [`Client::leave_reply`], and the `phx_close` that follows it is not
    /// treated as the server ending the channel.
    pub fn leave(&mut self, ctx: &LoopContext) -> Result<(), Failure> {
        self.leave_ref = self.take_ref();
        let mut message = Vec::with_capacity(64);
        phoenix::encode_push(
            ctx.serializer,
            &mut message,
            &self.spec.topic_name,
            Some(self.join_ref),
            self.leave_ref,
            "phx_leave",
            b"{}",
        );
        self.send(opcode::TEXT, &message);
        self.flush()
    }

    /// Starts a clean close (the run is over).
    pub fn close(&mut self) {
        self.send(opcode::CLOSE, &1000u16.to_be_bytes());
        let _ = self.flush();
        self.phase = Phase::Closed;
    }

    fn take_ref(&mut self) -> u64 {
        let reference = self.next_ref;
        self.next_ref += 1;
        reference
    }

    fn send(&mut self, op: u8, payload: &[u8]) {
        // xorshift32: masks only need to be unpredictable to proxies, not secret.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        wire::encode_frame(&mut self.output, op, payload, x.to_le_bytes());
    }

    fn flush(&mut self) -> Result<(), Failure> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Io(e.to_string())),
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > 64 * 1024 {
            self.output.shrink_to(4096);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_carries_vsn_params_and_token() {
        let target = Target::from_url(
            "ws://127.0.0.1:4000/socket/websocket",
            Serializer::V2,
            &[("user".into(), "a b".into())],
            Some("tok"),
        )
        .unwrap();
        assert_eq!(
            target.path_and_query,
            "/socket/websocket?vsn=2.0.0&user=a%20b"
        );
        assert_eq!(target.host, "127.0.0.1:4000");
        assert_eq!(
            target.protocols.as_deref(),
            Some("phoenix, base64url.bearer.phx.dG9r")
        );
        assert!(Target::from_url("http://x", Serializer::V2, &[], None).is_err());
    }
}
