//! Validation: values of the right type that still cannot work, each
//! refused with the key that holds it. The first problem found is the one
//! reported.

use std::fmt::Display;
use std::net::SocketAddr;

use super::{Config, ConfigError};

impl Config {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (server, socket, api) = (&self.server, &self.socket, &self.api);
        if server.shards.is_some_and(|n| n == 0 || n > 1024) {
            return Err(ConfigError::invalid(
                "server.shards",
                "must be between 1 and 1024",
            ));
        }
        at_least(
            "server.max_connections_per_shard",
            server.max_connections_per_shard,
            1,
        )?;
        at_least(
            "server.http_idle_timeout_ms",
            server.http_idle_timeout_ms,
            100,
        )?;
        check_socket_path(&socket.path)?;
        if socket.idle_timeout_ms < 1_000 {
            return Err(ConfigError::invalid(
                "socket.idle_timeout_ms",
                "must be at least 1000 (clients send heartbeats every 30 s)",
            ));
        }
        at_least("socket.max_message_size", socket.max_message_size, 1024)?;
        at_least("socket.max_channels", socket.max_channels, 1)?;
        at_least("socket.send_buffer_limit", socket.send_buffer_limit, 4096)?;
        check_api_key(api.api_key.as_deref(), server.bind)?;
        if socket.client_events_per_second > 0 && socket.client_events_burst == 0 {
            return Err(ConfigError::invalid(
                "socket.client_events_burst",
                "must be at least 1 when client_events_per_second is set",
            ));
        }
        // The sections owned by other modules check themselves.
        self.webhook
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        self.cluster
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        if self.webhook.url.is_none() {
            if let Some(i) = self.routes.iter().position(|r| r.lifecycle) {
                return Err(ConfigError::invalid(
                    format!("channel[{i}].lifecycle"),
                    "needs webhook.url (events go to {url}/events)",
                ));
            }
        }
        self.history
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        self.phoenix_pubsub
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        if self.cluster.enabled() && socket.longpoll.enabled && socket.longpoll.secret.is_none() {
            // Behind a load balancer a session's requests land on any node;
            // each must verify the others' tokens.
            return Err(ConfigError::invalid(
                "socket.longpoll.secret",
                "must be set, the same on every node, when [cluster] is on (or turn long-poll off)",
            ));
        }
        socket
            .longpoll
            .validate()
            .map_err(|(key, problem)| ConfigError::invalid(key, problem))?;
        if !socket.websocket && !socket.longpoll.enabled {
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
        at_least("api.max_batch", api.max_batch, 1)?;
        at_least("api.max_body_size", api.max_body_size, 1024)?;
        at_least(
            "socket.slow_consumer_timeout_ms",
            socket.slow_consumer_timeout_ms,
            100,
        )?;
        // One legal publish must never make a client that reads as fast as
        // it can look slow: the hard cap holds a whole batch on top of the
        // backlog a client may keep.
        let one_batch = api
            .max_body_size
            .saturating_add(api.max_batch.saturating_mul(FRAMING_PER_MESSAGE));
        let needed = socket.send_buffer_limit.saturating_add(one_batch);
        if socket.send_buffer_max < needed {
            return Err(ConfigError::invalid(
                "socket.send_buffer_max",
                format!(
                    "must be at least {needed}: send_buffer_limit plus one API batch \
                     (api.max_body_size + {FRAMING_PER_MESSAGE} bytes per message of api.max_batch)"
                ),
            ));
        }
        // A presence's size counts its key: room for an anonymous one (about
        // 45 bytes) with a small meta.
        at_least("socket.presence_meta_max", socket.presence_meta_max, 64)?;
        if socket.presence_meta_total_max < socket.presence_meta_max {
            return Err(ConfigError::invalid(
                "socket.presence_meta_total_max",
                format!(
                    "must be at least socket.presence_meta_max ({})",
                    socket.presence_meta_max
                ),
            ));
        }
        Ok(())
    }
}

/// The most bytes a broadcast's frame adds to its payload, topic and event
/// (the WebSocket header and the V1 object's keys), which all come from
/// the request body.
const FRAMING_PER_MESSAGE: usize = 64;

/// Refuses `value` below `min`: "must be at least {min}".
fn at_least<T: PartialOrd + Display>(key: &str, value: T, min: T) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// `socket.path` must be a clean absolute path that no HTTP API route uses.
fn check_socket_path(path: &str) -> Result<(), ConfigError> {
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
    Ok(())
}

/// `api.api_key`, when set, must not be blank; unset, the API is open, which
/// only a loopback `bind` allows (anyone who can reach the port could
/// publish otherwise).
fn check_api_key(api_key: Option<&str>, bind: SocketAddr) -> Result<(), ConfigError> {
    match api_key {
        Some(key) if key.trim().is_empty() => {
            Err(ConfigError::invalid("api.api_key", "must not be empty"))
        }
        None if !bind.ip().is_loopback() => Err(ConfigError::invalid(
            "api.api_key",
            format!(
                "is required when server.bind ({bind}) is not a loopback address: \
                 anyone who can reach the port could publish; set api_key or bind to 127.0.0.1"
            ),
        )),
        _ => Ok(()),
    }
}
