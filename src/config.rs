//! Server configuration: the TOML file format, its defaults and its validation.
//!
//! Every setting has a default, so `cinder serve` with no file runs a useful
//! server: loopback only, one shard per core, and one route (`"*"`) that lets
//! anyone join any topic and relays client events as broadcasts.
//!
//! Validation happens once, at load time, and names the offending key
//! (`socket.path`, `channel[2].pattern`, ...) so a typo never reaches the
//! event loops.
//!
//! | file | what lives there |
//! | --- | --- |
//! | `config.rs` | [`Config`], loading and parsing, [`ConfigError`] |
//! | `config/sections.rs` | `[server]`, `[socket]`, `[api]` and their defaults |
//! | `config/auth.rs` | `[socket.auth]` and the connect policy built from it |
//! | `config/channels.rs` | `[[channel]]` entries, compiled into routes |
//! | `config/validate.rs` | [`Config::validate`]: values that parse but cannot work |
//! | `config/section.rs` | `config_section!`, the shape every section shares |

mod auth;
mod channels;
mod section;
mod sections;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use self::auth::{AuthConfig, AuthMode};
use self::channels::{compile_routes, RouteEntry};
pub(crate) use self::section::config_section;
pub use self::sections::{ApiConfig, ServerConfig, SocketConfig};
use crate::cluster::ClusterConfig;
use crate::connect::ConnectPolicy;
use crate::history::HistoryConfig;
use crate::hooks::HooksConfig;
use crate::phoenix_pubsub::config::PhoenixPubSubConfig;
use crate::routes::Routes;
use crate::transport::origin::OriginPolicy;

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
    /// `[cluster]`: several nodes over Redis (off without `redis`).
    pub cluster: ClusterConfig,
    /// `[history]`: limits of the routes' topic histories.
    pub history: HistoryConfig,
    /// `[phoenix_pubsub]`: a Phoenix app's Redis PubSub, joined as a node
    /// (off without `redis`).
    pub phoenix_pubsub: PhoenixPubSubConfig,
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
            cluster: ClusterConfig::default(),
            history: HistoryConfig::default(),
            phoenix_pubsub: PhoenixPubSubConfig::default(),
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
    cluster: ClusterConfig,
    history: HistoryConfig,
    phoenix_pubsub: PhoenixPubSubConfig,
    channel: Vec<RouteEntry>,
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
        let routes = compile_routes(file.channel)?;
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
            cluster: file.cluster,
            history: file.history,
            phoenix_pubsub: file.phoenix_pubsub,
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
