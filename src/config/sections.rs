//! The sections of the file that are plain settings: `[server]`,
//! `[socket]` and `[api]`. (`[socket.auth]` builds the connect policy and
//! lives in [`super::auth`].)

use std::net::SocketAddr;

use super::auth::AuthConfig;
use super::section::config_section;
use crate::longpoll::LongPollConfig;
use crate::transport::origin::CheckOriginSetting;

config_section! {
    /// `[server]`: where to listen and how many event loops to run.
    pub struct ServerConfig {
        /// Address every shard listens on (`SO_REUSEPORT`).
        pub bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4000)),
        /// Number of shard threads; `None` means one per core.
        pub shards: Option<usize> = None,
        /// Connections one shard holds at most; further accepts are refused so a
        /// reconnect storm cannot exhaust memory or file descriptors.
        pub max_connections_per_shard: usize = 250_000,
        /// How long shutdown waits for queued frames to reach clients.
        pub shutdown_timeout_ms: u64 = 5_000,
        /// Connections one shard accepts per second (burst: one second's worth);
        /// the rest wait in the listen backlog, so a reconnect storm is spread
        /// out instead of stalling the shard. 0 turns the limit off.
        pub accept_rate_per_shard: u32 = 10_000,
        /// How long a plain HTTP connection may sit idle (or dribble a request)
        /// before it is closed. Shorter than the WebSocket timeout on purpose:
        /// slow request headers are a cheap way to hold sockets.
        pub http_idle_timeout_ms: u64 = 15_000,
    }
}

config_section! {
    /// `[socket]`: the Phoenix socket endpoint and per-connection limits.
    pub struct SocketConfig {
        /// Base path; the WebSocket endpoint is `{path}/websocket`.
        pub path: String = "/socket".to_string(),
        /// A WebSocket that receives nothing for this long is closed (1001).
        pub idle_timeout_ms: u64 = 60_000,
        /// Largest client message (after reassembling fragments); larger closes with 1009.
        pub max_message_size: usize = 1024 * 1024,
        /// Channels one connection may have joined at once.
        pub max_channels: usize = 100,
        /// Unsent bytes a client may keep queued: above this it must drain.
        /// A client whose unsent bytes stay above it for
        /// `slow_consumer_timeout_ms` is a slow consumer and is closed (1008);
        /// one burst that it reads at once is not.
        pub send_buffer_limit: usize = 1024 * 1024,
        /// How long a client may stay above `send_buffer_limit` without
        /// draining below it before it is closed as a slow consumer.
        pub slow_consumer_timeout_ms: u64 = 5_000,
        /// Unsent bytes no client may exceed even for a moment: over it, it is
        /// closed at once (1008). Bounds memory whatever clients do; at least
        /// what one API request can queue (`api.max_body_size` plus 64 bytes
        /// of framing per message of `api.max_batch`) above `send_buffer_limit`.
        pub send_buffer_max: usize = 32 * 1024 * 1024,
        /// Client events (pushes other than join, leave and heartbeat) one
        /// connection may send per second; 0 turns the limit off. Excess events
        /// get `{"reason":"rate limited"}`; a connection that keeps sending at
        /// twice the rate for a second is closed with 1008.
        pub client_events_per_second: u32 = 100,
        /// Events a connection may send in a burst above the rate.
        pub client_events_burst: u32 = 200,
        /// Whether `{path}/websocket` is served (turn off to force long-poll).
        pub websocket: bool = true,
        /// Largest presence, in bytes: its key plus its `meta` object as compact
        /// JSON. A join or `presence_update` over it gets
        /// `{"reason":"presence meta too large"}`.
        pub presence_meta_max: usize = 4096,
        /// Largest sum of the presences one client tracks on all its topics;
        /// over it, `{"reason":"presence meta total too large"}`.
        pub presence_meta_total_max: usize = 65536,
        /// `[socket.longpoll]`: the long-poll endpoint `{path}/longpoll`.
        pub longpoll: LongPollConfig = LongPollConfig::default(),
        /// `[socket.auth]`: who may connect.
        pub auth: AuthConfig = AuthConfig::default(),
        /// The `Origin` check of WebSocket upgrades: `true` (same host as the
        /// request), `false`, or a list of allowed origins. Unset: off on a
        /// loopback bind, same-host elsewhere.
        pub check_origin: Option<CheckOriginSetting> = None,
    }
}

config_section! {
    /// `[api]`: the HTTP publish API on the same port.
    pub struct ApiConfig {
        /// Largest accepted request body.
        pub max_body_size: usize = 8 * 1024 * 1024,
        /// Most messages in one `{"messages":[...]}` batch.
        pub max_batch: usize = 1000,
        /// When set, every `/api/*` request must carry
        /// `Authorization: Bearer <api_key>`. Without it the API is open, which
        /// is only allowed on a loopback bind.
        pub api_key: Option<String> = None,
    }
}
