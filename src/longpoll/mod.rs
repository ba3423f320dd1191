//! The long-poll transport: what stands in for a WebSocket when a
//! client cannot open one.
//!
//! A long-poll *session* is a client of the channel layer like a WebSocket
//! connection, but it outlives the HTTP requests that carry it: GETs drain
//! its buffered messages, POSTs feed it client messages. The session lives
//! on one shard, named by its signed token ([`token`]); the shard-side
//! handling is in `shard/longpoll.rs`, the byte-level exchange in [`wire`].

pub mod session;
pub mod token;
pub mod wire;

use std::time::Duration;

use crate::config::config_section;

config_section! {
    /// `[socket.longpoll]`: the long-poll endpoint `{socket.path}/longpoll`.
    pub struct LongPollConfig {
        /// Whether the endpoint is served.
        pub enabled: bool = true,
        /// How long a poll with nothing to deliver is held before `204`
        /// (Phoenix's `window_ms`). A session nobody polls for 1.5 × this long
        /// ends.
        pub window_ms: u64 = 10_000,
        /// The HMAC key of session tokens. Unset: a random key per start, so
        /// sessions do not survive a restart (clients open a new one, as after
        /// any `410`).
        pub secret: Option<String> = None,
    }
}

impl LongPollConfig {
    /// The poll window.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// How long a session may go without a poll.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.window_ms + self.window_ms / 2)
    }

    /// Checks values that parse but cannot work: `(key, problem)`.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(100..=120_000).contains(&self.window_ms) {
            return Err((
                "socket.longpoll.window_ms",
                "must be between 100 and 120000 (the JS client gives up on a poll after 20 s)",
            ));
        }
        if let Some(secret) = &self.secret {
            if secret.len() < 16 {
                return Err((
                    "socket.longpoll.secret",
                    "must be at least 16 bytes (it signs session tokens)",
                ));
            }
        }
        Ok(())
    }
}

/// Fills `out` with random bytes from the operating system (session
/// secrets and process instance ids; never a guessable fallback).
pub fn random_bytes(out: &mut [u8]) -> std::io::Result<()> {
    getrandom::getrandom(out).map_err(|e| std::io::Error::other(e.to_string()))
}
