//! The connections component's entry points: what the loop calls when a
//! connection is readable, at the end of a turn (the flush) and on the
//! tick (timeouts), and how a connection closes or goes away.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::connection::{ConnectionKey, HttpPhase, Phase};
use super::outbox::FlushStats;
use super::{websocket, Shard, CLOSE_GRACE, MAX_EARLY_INPUT, READS_PER_EVENT};
use crate::metrics::ShardMetrics;

impl Shard {
    /// Reads what the stream has and processes it (invariant 1).
    pub(super) fn on_readable(&mut self, key: ConnectionKey, now: Instant) {
        let mut buf = std::mem::take(&mut self.scratch.read);
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.connections.get_mut(key) else {
                break;
            };
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    // The peer hung up (or half-closed). A WebSocket's channels
                    // end silently (Phoenix does the same); an HTTP client that
                    // half-closed after its request still gets the queued response.
                    if conn.outbox.is_empty() || conn.is_closing() {
                        self.remove(key);
                    } else {
                        self.start_closing(key, now);
                    }
                    break;
                }
                Ok(n) => {
                    conn.last_active = now;
                    self.process_input(key, &mut buf[..n], now);
                    if n < buf.len() {
                        // A short read means the socket is drained; skip the
                        // extra read() that would only say WouldBlock.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.remove(key);
                    break;
                }
            }
        }
        self.scratch.read = buf;
    }

    /// Feeds freshly read bytes to the connection's phase. Input left over
    /// (an incomplete request or frame) is kept on the connection.
    pub(super) fn process_input(&mut self, key: ConnectionKey, fresh: &mut [u8], now: Instant) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return; // after a close, input is read only to notice the hang-up
        }
        let mut input = std::mem::take(&mut conn.pending_input);
        if input.is_empty() {
            // The usual case: process straight from the shard's read buffer
            // and copy only an incomplete tail.
            let consumed = self.process_bytes(key, fresh, now);
            input.extend_from_slice(&fresh[consumed..]);
        } else {
            input.extend_from_slice(fresh);
            let consumed = self.process_bytes(key, &mut input, now);
            input.drain(..consumed);
        }
        if let Some(conn) = self.connections.get_mut(key) {
            if input.is_empty() && input.capacity() > 4096 {
                input = Vec::new(); // idle connections keep no buffer
            }
            if !conn.is_closing() {
                conn.pending_input = input;
            }
        }
    }

    /// Processes as many complete requests or frames as `input` holds;
    /// returns how many bytes were used.
    pub(super) fn process_bytes(
        &mut self,
        key: ConnectionKey,
        input: &mut [u8],
        now: Instant,
    ) -> usize {
        let mut used = 0;
        while used < input.len() {
            let Some(conn) = self.connections.get(key) else {
                return input.len();
            };
            let step = match conn.phase {
                Phase::Http(_) => self.process_http(key, &mut input[used..], now),
                Phase::WebSocket(_) => self.process_websocket(key, &mut input[used..], now),
                Phase::Closing { .. } => return input.len(),
                // A client must wait for the 101 (or a held request's
                // answer) before sending more; keep what it sent anyway,
                // within a bound.
                Phase::Authorizing(_) | Phase::Held if input.len() - used > MAX_EARLY_INPUT => {
                    self.start_closing(key, now);
                    return input.len();
                }
                Phase::Authorizing(_) | Phase::Held => return used,
            };
            match step {
                0 => break,
                n => used += n,
            }
            if self.over_send_limit(key, now) {
                return input.len();
            }
        }
        used
    }

    /// A connection that produces output faster than its peer reads it
    /// stops being served: an HTTP connection (pipelined requests never
    /// read) is closed as an HTTP connection once its answers are flushed;
    /// a WebSocket (pings never read) goes the slow-consumer way. Returns
    /// whether the connection stopped reading.
    pub(super) fn over_send_limit(&mut self, key: ConnectionKey, now: Instant) -> bool {
        let limit = self.config.socket.send_buffer_limit;
        let Some(conn) = self.connections.get(key) else {
            return true;
        };
        if conn.outbox.queued_bytes() <= limit {
            return false;
        }
        match conn.phase {
            Phase::WebSocket(_) => self.on_backlog(key, now),
            Phase::Closing { .. } => {}
            _ => self.start_closing(key, now),
        }
        self.connections.get(key).is_none_or(|c| c.is_closing())
    }

    /// Queues bytes for one connection (an HTTP answer, a control frame).
    pub(super) fn send_bytes(&mut self, key: ConnectionKey, bytes: &[u8]) {
        self.connections.queue_owned(key, bytes);
    }

    /// One vectored flush per listed connection (invariant 2).
    pub(super) fn flush_all(&mut self, _now: Instant) {
        let mut stats = FlushStats::default();
        let mut dead = std::mem::take(&mut self.scratch.dead);
        self.connections.flush_all(&mut stats, &mut dead);
        for key in dead.drain(..) {
            self.remove(key);
        }
        self.scratch.dead = dead;
        self.count_flush(stats);
    }

    pub(super) fn count_flush(&self, stats: FlushStats) {
        let metrics = self.metrics();
        ShardMetrics::add(&metrics.bytes_written, stats.bytes);
        ShardMetrics::add(&metrics.write_calls, stats.calls);
    }

    /// Timeouts: idle WebSockets, idle HTTP, closing connections past their deadline.
    pub(super) fn connections_tick(&mut self, now: Instant) {
        let idle_ws = self.config.idle_timeout();
        let idle_http = self.config.http_idle_timeout();
        let slow_after = Duration::from_millis(self.config.socket.slow_consumer_timeout_ms);
        let mut expired_ws = Vec::new();
        let mut drop_now = Vec::new();
        let mut slow = Vec::new();
        for (key, conn) in self.connections.iter() {
            if conn
                .backlog_since
                .is_some_and(|since| now.saturating_duration_since(since) >= slow_after)
            {
                slow.push(key);
            }
            let idle = now.saturating_duration_since(conn.last_active);
            match &conn.phase {
                Phase::Http(_) if idle > idle_http => drop_now.push(key),
                // A request that takes too long to arrive, however it
                // dribbles in (each byte resets `last_active`).
                Phase::Http(HttpPhase {
                    request_started: Some(started),
                    ..
                }) if now.saturating_duration_since(*started) > idle_http => drop_now.push(key),
                Phase::WebSocket(ws) if idle > idle_ws => expired_ws.push(ws.client),
                Phase::Closing { deadline, .. } if now >= *deadline => drop_now.push(key),
                _ => {}
            }
        }
        for key in drop_now {
            self.remove(key);
        }
        for key in slow {
            self.close_slow_consumer(key, now);
        }
        for client in expired_ws {
            ShardMetrics::add(&self.metrics().idle_closes, 1);
            self.mark_ending(client, crate::lifecycle::event::EndReason::Timeout);
            // Not 1000: JS clients before 1.8.16 reconnect only after other codes.
            self.close_client(client, websocket::CLOSE_GOING_AWAY, "idle timeout", now);
        }
    }

    /// Moves a connection to `Closing` after its queued output; the client
    /// it carried, if any, goes away.
    pub(super) fn start_closing(&mut self, key: ConnectionKey, now: Instant) {
        self.start_closing_within(key, now + CLOSE_GRACE);
    }

    /// [`Shard::start_closing`], dropping the stream at `deadline` at the latest.
    pub(super) fn start_closing_within(&mut self, key: ConnectionKey, deadline: Instant) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(
            &mut conn.phase,
            Phase::Closing {
                deadline,
                write_shut: false,
            },
        );
        conn.pending_input = Vec::new();
        if let Phase::WebSocket(ws) = old {
            self.drop_client(ws.client);
        }
        self.connections.schedule_flush(key);
    }

    /// Removes a connection now: its client, poll registration, stream.
    pub(super) fn remove(&mut self, key: ConnectionKey) {
        let Some(mut conn) = self.connections.remove(self.poll.registry(), key) else {
            return;
        };
        self.forwarded_done(key, &mut conn.stream);
        if let Some(client) = conn.client() {
            self.drop_client(client);
        }
        ShardMetrics::sub(&self.metrics().connections, 1);
    }
}
