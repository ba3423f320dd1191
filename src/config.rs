//! Server configuration: the TOML file format, its defaults and its validation.
//!
//! Every setting has a default, so `cinder serve` with no file runs a useful
//! server: loopback only, one shard per core, and one route (`"*"`) that lets
//! anyone join any topic and relays client events as broadcasts.
//!
//! Validation happens once, at load time, and names the offending key
//! (`socket.path`, `channel[2].pattern`, ...) so a typo never reaches the
//! event loops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Verifier;
use crate::connect::{ConnectPolicy, WebhookConnect, DEFAULT_SOCKET_ID};
use crate::hooks::HooksConfig;
use crate::longpoll::LongPollConfig;
use crate::routes::{ClientEventPolicy, JoinPolicy, Pattern, PresenceRoute, Route, Routes};
use crate::transport::origin::{CheckOriginSetting, OriginPolicy};

/// A configuration problem, naming the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was given.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("invalid config file {path}: {message}")]
    Syntax {
        /// The path that was given.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A key has a value of the right type that is still unusable.
    #[error("invalid config: `{key}` {problem}")]
    Invalid {
        /// The dotted key path, e.g. `socket.path` or `channel[1].pattern`.
        key: String,
        /// What is wrong with the value.
        problem: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address, shard count and process-level settings.
    pub server: ServerConfig,
    /// Per-connection limits and timeouts of the socket endpoint.
    pub socket: SocketConfig,
    /// Limits of the HTTP publish API.
    pub api: ApiConfig,
    /// Channel routes, first match wins.
    pub routes: Routes,
    /// Who may connect, built from `[socket.auth]` (keys loaded once).
    pub connect: ConnectPolicy,
    /// The compiled `socket.check_origin`.
    pub origin: OriginPolicy,
    /// `[webhook]`: the application's backend for hook policies.
    pub webhook: HooksConfig,
}

/// `[server]`: where to listen and how many event loops to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address every shard listens on (`SO_REUSEPORT`).
    pub bind: SocketAddr,
    /// Number of shard threads; `None` means one per core.
    pub shards: Option<usize>,
    /// Connections one shard holds at most; further accepts are refused so a
    /// reconnect storm cannot exhaust memory or file descriptors.
    pub max_connections_per_shard: usize,
    /// How long shutdown waits for queued frames to reach clients.
    pub shutdown_timeout_ms: u64,
    /// Connections one shard accepts per second (burst: one second's worth);
    /// the rest wait in the listen backlog, so a reconnect storm is spread
    /// out instead of stalling the shard. 0 turns the limit off.
    pub accept_rate_per_shard: u32,
    /// How long a plain HTTP connection may sit idle (or dribble a request)
    /// before it is closed. Shorter than the WebSocket timeout on purpose:
    /// slow request headers are a cheap way to hold sockets.
    pub http_idle_timeout_ms: u64,
}

/// `[socket]`: the Phoenix socket endpoint and per-connection limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocketConfig {
    /// Base path; the WebSocket endpoint is `{path}/websocket`.
    pub path: String,
    /// A WebSocket that receives nothing for this long is closed (1001).
    pub idle_timeout_ms: u64,
    /// Largest client message (after reassembling fragments); larger closes with 1009.
    pub max_message_size: usize,
    /// Channels one connection may have joined at once.
    pub max_channels: usize,
    /// Unsent bytes one connection may have queued before it is closed as a
    /// slow consumer (1008). Bounds memory whatever clients do.
    pub send_buffer_limit: usize,
    /// Client events (pushes other than join, leave and heartbeat) one
    /// connection may send per second; 0 turns the limit off. Excess events
    /// get `{"reason":"rate limited"}`; a connection that keeps sending at
    /// twice the rate for a second is closed with 1008.
    pub client_events_per_second: u32,
    /// Events a connection may send in a burst above the rate.
    pub client_events_burst: u32,
    /// Whether `{path}/websocket` is served (turn off to force long-poll).
    pub websocket: bool,
    /// `[socket.longpoll]`: the long-poll endpoint `{path}/longpoll`.
    pub longpoll: LongPollConfig,
    /// `[socket.auth]`: who may connect.
    pub auth: AuthConfig,
    /// The `Origin` check of WebSocket upgrades: `true` (same host as the
    /// request), `false`, or a list of allowed origins. Unset: off on a
    /// loopback bind, same-host elsewhere.
    pub check_origin: Option<CheckOriginSetting>,
}

/// `[socket.auth]`: the connect policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (anyone may connect) or `jwt` (a valid token is required).
    pub mode: AuthMode,
    /// HMAC secret for HS256 (HS384/HS512 with `algorithm`).
    pub secret: Option<String>,
    /// PEM public key for RS256 or ES256, chosen by the key's type.
    pub public_key_file: Option<PathBuf>,
    /// Overrides the algorithm within the key's family (e.g. `RS512`).
    pub algorithm: Option<String>,
    /// The connect parameter carrying the token; the auth-token subprotocol
    /// (`authToken` in the JS client) is used when the parameter is absent.
    pub param: String,
    /// The socket id of an authenticated connection; `{user_id}` is
    /// replaced by the token's `sub`. Forced disconnects address it.
    pub socket_id: String,
}

/// How connections are admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may connect.
    #[default]
    None,
    /// A JWT signed with the configured key is required.
    Jwt,
    /// The application's backend decides (`POST {webhook.url}/connect`).
    Webhook,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            secret: None,
            public_key_file: None,
            algorithm: None,
            param: "token".to_string(),
            socket_id: DEFAULT_SOCKET_ID.to_string(),
        }
    }
}

impl AuthConfig {
    fn check_socket_id(&self) -> Result<(), ConfigError> {
        if !self.socket_id.contains("{user_id}") {
            return Err(ConfigError::invalid(
                "socket.auth.socket_id",
                "must contain {user_id}, or every user would share one socket id",
            ));
        }
        Ok(())
    }

    /// Builds the connect policy, loading keys; errors name the key.
    fn policy(&self, webhook: &HooksConfig) -> Result<ConnectPolicy, ConfigError> {
        let verifier = match (self.mode, &self.secret, &self.public_key_file) {
            (AuthMode::None, _, _) => return Ok(ConnectPolicy::Open),
            (AuthMode::Webhook, _, _) => {
                if webhook.url.is_none() {
                    return Err(ConfigError::invalid(
                        "socket.auth.mode",
                        "\"webhook\" needs webhook.url",
                    ));
                }
                self.check_socket_id()?;
                return Ok(ConnectPolicy::Webhook(Arc::new(WebhookConnect {
                    forward_headers: webhook
                        .forward_headers
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    socket_id: self.socket_id.clone(),
                })));
            }
            (AuthMode::Jwt, Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "socket.auth",
                    "set either secret or public_key_file, not both",
                ))
            }
            (AuthMode::Jwt, None, None) => {
                return Err(ConfigError::invalid(
                    "socket.auth",
                    "mode = \"jwt\" needs secret (HS256) or public_key_file (RS256/ES256)",
                ))
            }
            (AuthMode::Jwt, Some(secret), None) => {
                if secret.len() < 8 {
                    return Err(ConfigError::invalid(
                        "socket.auth.secret",
                        "must be at least 8 bytes",
                    ));
                }
                Verifier::from_secret(secret, self.algorithm.as_deref())
                    .map_err(|e| ConfigError::invalid("socket.auth.algorithm", e.to_string()))?
            }
            (AuthMode::Jwt, None, Some(path)) => {
                Verifier::from_public_key_file(path, self.algorithm.as_deref()).map_err(|e| {
                    ConfigError::invalid("socket.auth.public_key_file", e.to_string())
                })?
            }
        };
        if self.param.is_empty() {
            return Err(ConfigError::invalid(
                "socket.auth.param",
                "must not be empty",
            ));
        }
        self.check_socket_id()?;
        Ok(ConnectPolicy::jwt(
            verifier,
            self.param.clone(),
            self.socket_id.clone(),
        ))
    }
}

/// `[api]`: the HTTP publish API on the same port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_size: usize,
    /// Most messages in one `{"messages":[...]}` batch.
    pub max_batch: usize,
    /// When set, every `/api/*` request must carry
    /// `Authorization: Bearer <api_key>`. Without it the API is open, which
    /// is only allowed on a loopback bind.
    pub api_key: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4000)),
            shards: None,
            max_connections_per_shard: 250_000,
            accept_rate_per_shard: 10_000,
            shutdown_timeout_ms: 5_000,
            http_idle_timeout_ms: 15_000,
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            path: "/socket".to_string(),
            idle_timeout_ms: 60_000,
            max_message_size: 1024 * 1024,
            max_channels: 100,
            send_buffer_limit: 1024 * 1024,
            client_events_per_second: 100,
            client_events_burst: 200,
            websocket: true,
            longpoll: LongPollConfig::default(),
            auth: AuthConfig::default(),
            check_origin: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_size: 8 * 1024 * 1024,
            max_batch: 1000,
            api_key: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            socket: SocketConfig::default(),
            api: ApiConfig::default(),
            routes: Routes::open_default(),
            connect: ConnectPolicy::Open,
            origin: OriginPolicy::Off,
            webhook: HooksConfig::default(),
        }
    }
}

/// The file as written, before routes are compiled.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFile {
    server: ServerConfig,
    socket: SocketConfig,
    api: ApiConfig,
    webhook: HooksConfig,
    channel: Vec<RouteEntry>,
}

/// One `[[channel]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    pattern: String,
    join: JoinPolicy,
    #[serde(default)]
    client_events: ClientEventPolicy,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    presence_key: Option<String>,
    #[serde(default)]
    presence_event: Option<String>,
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let routes = if file.channel.is_empty() {
            Routes::open_default()
        } else {
            let mut routes = Vec::with_capacity(file.channel.len());
            for (i, entry) in file.channel.into_iter().enumerate() {
                let pattern = Pattern::parse(&entry.pattern).map_err(|problem| {
                    ConfigError::invalid(format!("channel[{i}].pattern"), problem)
                })?;
                if !entry.presence
                    && (entry.presence_key.is_some() || entry.presence_event.is_some())
                {
                    return Err(ConfigError::invalid(
                        format!("channel[{i}]"),
                        "presence_key and presence_event need presence = true",
                    ));
                }
                if entry.presence_key.as_deref() == Some("")
                    || entry.presence_event.as_deref().is_some_and(|e| {
                        e.is_empty() || e.starts_with("phx_") || e.starts_with("presence_diff")
                    })
                {
                    return Err(ConfigError::invalid(
                        format!("channel[{i}]"),
                        "presence_key must not be empty, presence_event must not be empty or reserved",
                    ));
                }
                let presence = entry.presence.then(|| PresenceRoute {
                    key_field: entry.presence_key,
                    update_event: entry
                        .presence_event
                        .unwrap_or_else(|| "presence_update".to_string()),
                });
                routes.push(Route {
                    pattern,
                    join: entry.join,
                    client_events: entry.client_events,
                    events: entry.events,
                    presence,
                });
            }
            Routes::new(routes)
        };
        let connect = file.socket.auth.policy(&file.webhook)?;
        if matches!(connect, ConnectPolicy::Open) {
            if let Some(i) = routes.iter().position(|r| r.needs_identity()) {
                return Err(ConfigError::invalid(
                    format!("channel[{i}]"),
                    "a {user_id} pattern or join = \"claims\" needs an identity: set socket.auth.mode = \"jwt\"",
                ));
            }
        }
        let origin = OriginPolicy::from_setting(
            file.socket.check_origin.as_ref(),
            file.server.bind.ip().is_loopback(),
        )
        .map_err(|problem| ConfigError::invalid("socket.check_origin", problem))?;
        let config = Config {
            server: file.server,
            socket: file.socket,
            api: file.api,
            routes,
            connect,
            origin,
            webhook: file.webhook,
        };
        config.validate()?;
        Ok(config)
    }

    /// Moves the listening address (the `--bind` flag); settings whose
    /// default depends on it (the origin check) follow.
    pub fn set_bind(&mut self, bind: SocketAddr) -> Result<(), ConfigError> {
        self.server.bind = bind;
        self.origin =
            OriginPolicy::from_setting(self.socket.check_origin.as_ref(), bind.ip().is_loopback())
                .map_err(|problem| ConfigError::invalid("socket.check_origin", problem))?;
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(shards) = self.server.shards {
            if shards == 0 || shards > 1024 {
                return Err(ConfigError::invalid(
                    "server.shards",
                    "must be between 1 and 1024",
                ));
            }
        }
        if self.server.max_connections_per_shard == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections_per_shard",
                "must be at least 1",
            ));
        }
        if self.server.http_idle_timeout_ms < 100 {
            return Err(ConfigError::invalid(
                "server.http_idle_timeout_ms",
                "must be at least 100",
            ));
        }
        let path = &self.socket.path;
        if !path.starts_with('/')
            || (path.len() > 1 && path.ends_with('/'))
            || path.contains(['?', '#', ' '])
        {
            return Err(ConfigError::invalid(
                "socket.path",
                "must start with '/', not end with '/', and hold no '?', '#' or spaces",
            ));
        }
        if path.starts_with("/api") || path == "/healthz" || path == "/metrics" {
            return Err(ConfigError::invalid(
                "socket.path",
                "clashes with the HTTP API paths",
            ));
        }
        if self.socket.idle_timeout_ms < 1_000 {
            return Err(ConfigError::invalid(
                "socket.idle_timeout_ms",
                "must be at least 1000 (clients send heartbeats every 30 s)",
            ));
        }
        if self.socket.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "socket.max_message_size",
                "must be at least 1024",
            ));
        }
        if self.socket.max_channels == 0 {
            return Err(ConfigError::invalid(
                "socket.max_channels",
                "must be at least 1",
            ));
        }
        if self.socket.send_buffer_limit < 4096 {
            return Err(ConfigError::invalid(
                "socket.send_buffer_limit",
                "must be at least 4096",
            ));
        }
        match &self.api.api_key {
            Some(key) if key.trim().is_empty() => {
                return Err(ConfigError::invalid("api.api_key", "must not be empty"));
            }
            None if !self.server.bind.ip().is_loopback() => {
                return Err(ConfigError::invalid(
                    "api.api_key",
                    format!(
                        "is required when server.bind ({}) is not a loopback address: \
                         anyone who can reach the port could publish; set api_key or bind to 127.0.0.1",
                        self.server.bind
                    ),
                ));
            }
            _ => {}
        }
        if self.socket.client_events_per_second > 0 && self.socket.client_events_burst == 0 {
            return Err(ConfigError::invalid(
                "socket.client_events_burst",
                "must be at least 1 when client_events_per_second is set",
            ));
        }
        self.webhook
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        self.socket
            .longpoll
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        if !self.socket.websocket && !self.socket.longpoll.enabled {
            return Err(ConfigError::invalid(
                "socket.websocket",
                "and socket.longpoll.enabled are both off: no client could connect",
            ));
        }
        if self.webhook.url.is_none() {
            if let Some(i) = self.routes.iter().position(|r| r.uses_webhook()) {
                return Err(ConfigError::invalid(
                    format!("channel[{i}]"),
                    "a webhook policy needs webhook.url",
                ));
            }
        }
        if self.api.max_batch == 0 {
            return Err(ConfigError::invalid("api.max_batch", "must be at least 1"));
        }
        if self.api.max_body_size < 1024 {
            return Err(ConfigError::invalid(
                "api.max_body_size",
                "must be at least 1024",
            ));
        }
        Ok(())
    }

    /// The shard count in force: the configured one, or one per core.
    pub fn shard_count(&self) -> usize {
        self.server
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `socket.idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.socket.idle_timeout_ms)
    }

    /// `server.http_idle_timeout_ms` as a duration.
    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.server.http_idle_timeout_ms)
    }

    /// `server.shutdown_timeout_ms` as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }

    /// The WebSocket endpoint path, `{socket.path}/websocket`.
    pub fn websocket_path(&self) -> String {
        self.endpoint_path("websocket")
    }

    /// The long-poll endpoint path, `{socket.path}/longpoll`.
    pub fn longpoll_path(&self) -> String {
        self.endpoint_path("longpoll")
    }

    fn endpoint_path(&self, transport: &str) -> String {
        if self.socket.path == "/" {
            format!("/{transport}")
        } else {
            format!("{}/{transport}", self.socket.path)
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
