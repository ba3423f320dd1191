//! `[[channel]]` tables: the routes as written, compiled into [`Routes`].

use serde::Deserialize;

use super::ConfigError;
use crate::history::Retention;
use crate::routes::{ClientEventPolicy, JoinPolicy, Pattern, PresenceRoute, Route, Routes};

/// One `[[channel]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteEntry {
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
    /// Broadcasts kept per topic for recovery (0: no history).
    #[serde(default)]
    history: usize,
    /// Age after which a kept broadcast is dropped.
    #[serde(default)]
    history_ttl_ms: Option<u64>,
    /// Whether the backend hears this route's lifecycle events.
    #[serde(default)]
    lifecycle: Option<bool>,
}

/// `history_ttl_ms` when a history route does not set it: five minutes.
const DEFAULT_HISTORY_TTL_MS: u64 = 300_000;
/// Most broadcasts one topic may keep.
const HISTORY_MAX: usize = 100_000;

/// The route table of the `[[channel]]` entries, in order; with none, the
/// open default (every topic public, client events broadcast).
pub(super) fn compile_routes(entries: Vec<RouteEntry>) -> Result<Routes, ConfigError> {
    if entries.is_empty() {
        return Ok(Routes::open_default());
    }
    let mut routes = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        routes.push(entry.compile(i)?);
    }
    Ok(Routes::new(routes))
}

impl RouteEntry {
    /// The route of entry `i` (errors name `channel[i]`).
    fn compile(self, i: usize) -> Result<Route, ConfigError> {
        let pattern = Pattern::parse(&self.pattern)
            .map_err(|problem| ConfigError::invalid(format!("channel[{i}].pattern"), problem))?;
        if !self.presence && (self.presence_key.is_some() || self.presence_event.is_some()) {
            return Err(ConfigError::invalid(
                format!("channel[{i}]"),
                "presence_key and presence_event need presence = true",
            ));
        }
        if self.presence_key.as_deref() == Some("")
            || self.presence_event.as_deref().is_some_and(|e| {
                e.is_empty() || e.starts_with("phx_") || e.starts_with("presence_diff")
            })
        {
            return Err(ConfigError::invalid(
                format!("channel[{i}]"),
                "presence_key must not be empty, presence_event must not be empty or reserved",
            ));
        }
        let presence = self.presence.then(|| PresenceRoute {
            key_field: self.presence_key,
            update_event: self
                .presence_event
                .unwrap_or_else(|| "presence_update".to_string()),
        });
        if self.history == 0 && self.history_ttl_ms.is_some() {
            return Err(ConfigError::invalid(
                format!("channel[{i}].history_ttl_ms"),
                "needs history > 0",
            ));
        }
        if self.history > HISTORY_MAX {
            return Err(ConfigError::invalid(
                format!("channel[{i}].history"),
                format!("must be at most {HISTORY_MAX}"),
            ));
        }
        let ttl_ms = self.history_ttl_ms.unwrap_or(DEFAULT_HISTORY_TTL_MS);
        if ttl_ms == 0 || ttl_ms > 30 * 24 * 3_600_000 {
            return Err(ConfigError::invalid(
                format!("channel[{i}].history_ttl_ms"),
                "must be between 1 and 30 days in milliseconds",
            ));
        }
        let history = (self.history > 0).then_some(Retention {
            count: self.history,
            ttl_ms,
        });
        let mut route = Route {
            pattern,
            join: self.join,
            client_events: self.client_events,
            events: self.events,
            presence,
            history,
            lifecycle: false,
        };
        route.lifecycle = self.lifecycle.unwrap_or_else(|| route.uses_webhook());
        Ok(route)
    }
}
