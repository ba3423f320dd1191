//! Channel routes: which topics exist, who may join them, and what a client
//! event on them does.
//!
//! Phoenix routes a topic to a channel module by exact name or by a prefix
//! ending in `*`. Cinder has no per-channel code, so a route carries
//! declarative policies instead. Routes are checked in order; the first match
//! wins. The reserved topic `phoenix` (heartbeats) never matches a route.

use serde::Deserialize;

/// The topic of heartbeats; never routable, as in Phoenix.
pub const HEARTBEAT_TOPIC: &str = "phoenix";

/// How a route's topics are matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `"room:lobby"`: exactly this topic.
    Exact(String),
    /// `"room:*"`: any topic starting with `room:` (including `room:` itself).
    Prefix(String),
    /// `"*"`: every topic.
    Any,
}

impl Pattern {
    /// Parses a pattern as written in the config; `*` is allowed only at the end.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("must not be empty".to_string());
        }
        match text.find('*') {
            None => Ok(Pattern::Exact(text.to_string())),
            Some(at) if at + 1 == text.len() => {
                if at == 0 {
                    Ok(Pattern::Any)
                } else {
                    Ok(Pattern::Prefix(text[..at].to_string()))
                }
            }
            Some(_) => Err(format!("{text:?}: '*' may only end a pattern (\"room:*\")")),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            Pattern::Any => true,
        }
    }
}

/// Who may join a route's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Anyone connected may join.
    Public,
    /// Nobody may join: `{"reason":"unauthorized"}`.
    Deny,
}

/// What a client event (any event other than join/leave/heartbeat) on a
/// joined topic does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientEventPolicy {
    /// Relay to every subscriber of the topic, sender included, then reply ok.
    Broadcast,
    /// Relay to every subscriber except the sender, then reply ok.
    BroadcastFrom,
    /// Refuse: `{"reason":"unhandled event"}`. The default, so a route only
    /// relays client traffic when the config says so.
    #[default]
    Deny,
}

/// One `[[channel]]` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Which topics the route covers.
    pub pattern: Pattern,
    /// Who may join.
    pub join: JoinPolicy,
    /// What client events do.
    pub client_events: ClientEventPolicy,
}

/// The ordered route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// A table of the given routes, matched in order.
    pub fn new(routes: Vec<Route>) -> Routes {
        Routes { routes }
    }

    /// The default when no route is configured: every topic public, client
    /// events relayed as broadcasts.
    pub fn open_default() -> Routes {
        Routes::new(vec![Route {
            pattern: Pattern::Any,
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::Broadcast,
        }])
    }

    /// The first route matching `topic`, with its index.
    pub fn find(&self, topic: &str) -> Option<(usize, &Route)> {
        if topic == HEARTBEAT_TOPIC {
            return None;
        }
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.pattern.matches(topic))
    }

    /// The route at `index` (as returned by [`Routes::find`]).
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::Any);
        assert_eq!(
            Pattern::parse("room:*").unwrap(),
            Pattern::Prefix("room:".into())
        );
        assert_eq!(
            Pattern::parse("room:1").unwrap(),
            Pattern::Exact("room:1".into())
        );
        assert!(Pattern::parse("ro*om").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("room:*").unwrap().matches("room:"));
        assert!(!Pattern::parse("room:*").unwrap().matches("roo"));
    }

    #[test]
    fn first_match_wins_and_phoenix_is_never_routed() {
        let routes = Routes::new(vec![
            Route {
                pattern: Pattern::parse("room:forbidden").unwrap(),
                join: JoinPolicy::Deny,
                client_events: ClientEventPolicy::Deny,
            },
            Route {
                pattern: Pattern::parse("*").unwrap(),
                join: JoinPolicy::Public,
                client_events: ClientEventPolicy::Broadcast,
            },
        ]);
        assert_eq!(routes.find("room:forbidden").unwrap().0, 0);
        assert_eq!(routes.find("room:x").unwrap().0, 1);
        assert!(routes.find("phoenix").is_none());
    }
}
