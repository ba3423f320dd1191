//! Channel routes: which topics exist, who may join them, and what a client
//! event on them does.
//!
//! Phoenix routes a topic to a channel module by exact name or by a prefix
//! ending in `*`. Cinder has no per-channel code, so a route carries
//! declarative policies instead. Routes are checked in order; the first match
//! wins. The reserved topic `phoenix` (heartbeats) never matches a route.

use serde::Deserialize;

use crate::connect::Identity;
use crate::history::Retention;

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
    /// `"user:{user_id}"`: topics of this shape, where the `{user_id}` part
    /// must be the joining connection's own user id.
    Owned {
        /// Text before `{user_id}`.
        prefix: String,
        /// Text after `{user_id}`.
        suffix: String,
    },
}

/// The placeholder a pattern may hold once.
pub const USER_ID_PLACEHOLDER: &str = "{user_id}";

impl Pattern {
    /// Parses a pattern as written in the config; `*` is allowed only at the end.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("must not be empty".to_string());
        }
        if let Some(at) = text.find(USER_ID_PLACEHOLDER) {
            let (prefix, rest) = text.split_at(at);
            let suffix = &rest[USER_ID_PLACEHOLDER.len()..];
            if suffix.contains(USER_ID_PLACEHOLDER) || text.contains('*') {
                return Err(format!(
                    "{text:?}: {USER_ID_PLACEHOLDER} may appear once and not with '*'"
                ));
            }
            return Ok(Pattern::Owned {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            });
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
            Pattern::Owned { .. } => self.owner(topic).is_some(),
        }
    }

    /// For an `Owned` pattern, the part of `topic` standing for `{user_id}`
    /// (never empty); `None` for other patterns or topics that do not fit.
    pub fn owner<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let Pattern::Owned { prefix, suffix } = self else {
            return None;
        };
        let owner = topic
            .strip_prefix(prefix.as_str())?
            .strip_suffix(suffix.as_str())?;
        (!owner.is_empty()).then_some(owner)
    }

    /// Whether `identity` may use `topic` under this pattern: it matches, and
    /// an `Owned` pattern's placeholder part is the identity's own user id.
    pub fn allows(&self, topic: &str, identity: &Identity) -> bool {
        match self.owner(topic) {
            Some(owner) => identity.user_id.as_deref() == Some(owner),
            None => !matches!(self, Pattern::Owned { .. }) && self.matches(topic),
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
    /// The connection's token must list the topic (or a pattern matching
    /// it) in its `channels` claim.
    Claims,
    /// The application's backend decides (`POST {webhook.url}/join`).
    Webhook,
}

/// The outcome of [`Route::join_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinDecision {
    /// Join now.
    Allow,
    /// Refuse with `unauthorized`.
    Deny,
    /// Ask the backend.
    Ask,
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
    /// The application's backend handles it (`POST {webhook.url}/event`):
    /// its answer is the reply, and it may ask for a broadcast.
    Webhook,
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
    /// When set, only these client event names are handled; others get
    /// `{"reason":"unhandled event"}` whatever the policy.
    pub events: Option<Vec<String>>,
    /// Presence tracking, when the route has `presence = true`.
    pub presence: Option<PresenceRoute>,
    /// Topic history, when the route has `history > 0`: its topics'
    /// broadcasts get positions and are kept for recovery.
    pub history: Option<Retention>,
    /// Whether the backend hears lifecycle events of the route's topics
    /// (`lifecycle`; default: when the route's policies use the webhook).
    pub lifecycle: bool,
}

/// How a presence-enabled route tracks its joined clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRoute {
    /// `presence_key`: the join payload field holding the presence key.
    /// Unset: the connection's user id, else a per-connection id.
    pub key_field: Option<String>,
    /// The client event that replaces the caller's metas
    /// (`presence_update` unless configured).
    pub update_event: String,
}

impl Route {
    /// Whether the allow-list (if any) admits `event`.
    pub fn allows_event(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|list| list.iter().any(|e| e == event))
    }

    /// Whether `identity` may join `topic`, which this route matches. Denied
    /// joins get `{"reason":"unauthorized"}`, never "unmatched topic": the
    /// topic exists, the connection just may not have it.
    pub fn join_decision(&self, topic: &str, identity: &Identity) -> JoinDecision {
        if matches!(self.pattern, Pattern::Owned { .. }) && !self.pattern.allows(topic, identity) {
            return JoinDecision::Deny;
        }
        let allowed = match self.join {
            JoinPolicy::Public => true,
            JoinPolicy::Deny => false,
            JoinPolicy::Claims => identity.channels.iter().flatten().any(|entry| {
                Pattern::parse(entry).is_ok_and(|allowed| allowed.allows(topic, identity))
            }),
            JoinPolicy::Webhook => return JoinDecision::Ask,
        };
        if allowed {
            JoinDecision::Allow
        } else {
            JoinDecision::Deny
        }
    }

    /// Whether [`Route::join_decision`] allows the join at once.
    pub fn may_join(&self, topic: &str, identity: &Identity) -> bool {
        self.join_decision(topic, identity) == JoinDecision::Allow
    }

    /// Whether the route calls the backend.
    pub fn uses_webhook(&self) -> bool {
        self.join == JoinPolicy::Webhook || self.client_events == ClientEventPolicy::Webhook
    }

    /// Whether the route can only work with an identity from the connect
    /// policy (a `{user_id}` pattern or a `claims` join).
    pub fn needs_identity(&self) -> bool {
        matches!(self.pattern, Pattern::Owned { .. }) || self.join == JoinPolicy::Claims
    }
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
            events: None,
            presence: None,
            history: None,
            lifecycle: false,
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

    /// The history retention of `topic`'s route, when it keeps history.
    pub fn retention(&self, topic: &str) -> Option<Retention> {
        self.find(topic).and_then(|(_, route)| route.history)
    }

    /// Whether any route keeps history.
    pub fn any_history(&self) -> bool {
        self.routes.iter().any(|r| r.history.is_some())
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

    /// The routes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// A route with no event allow-list and no presence, the fixture the route
/// and channel tests and the channel fuzz target build their tables from.
pub(crate) fn plain_route(
    pattern: &str,
    join: JoinPolicy,
    client_events: ClientEventPolicy,
) -> Route {
    Route {
        pattern: Pattern::parse(pattern).unwrap(),
        join,
        client_events,
        events: None,
        presence: None,
        history: None,
        lifecycle: false,
    }
}

/// The route table the channel tests and the channel fuzz target join
/// against: every client event policy, both join policies of the table
/// kind, an event allow-list, a presence route and a history route.
pub(crate) fn example_routes() -> Vec<Route> {
    vec![
        plain_route("room:forbidden", JoinPolicy::Deny, ClientEventPolicy::Deny),
        plain_route("room:*", JoinPolicy::Public, ClientEventPolicy::Broadcast),
        plain_route(
            "from:*",
            JoinPolicy::Public,
            ClientEventPolicy::BroadcastFrom,
        ),
        plain_route("quiet:*", JoinPolicy::Public, ClientEventPolicy::Deny),
        plain_route("hook:*", JoinPolicy::Webhook, ClientEventPolicy::Webhook),
        Route {
            events: Some(vec!["msg".into(), "typing".into()]),
            ..plain_route("chat:*", JoinPolicy::Public, ClientEventPolicy::Broadcast)
        },
        Route {
            presence: Some(PresenceRoute {
                key_field: None,
                update_event: "presence_update".into(),
            }),
            ..plain_route("lobby:*", JoinPolicy::Public, ClientEventPolicy::Deny)
        },
        Route {
            history: Some(Retention {
                count: 10,
                ttl_ms: 60_000,
            }),
            ..plain_route("hist:*", JoinPolicy::Public, ClientEventPolicy::Broadcast)
        },
    ]
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

    fn who(user: Option<&str>, channels: Option<&[&str]>) -> Identity {
        Identity {
            user_id: user.map(str::to_string),
            channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
            socket_id: None,
        }
    }

    #[test]
    fn user_id_placeholder_matches_only_the_owner() {
        let pattern = Pattern::parse("user:{user_id}:inbox").unwrap();
        assert!(pattern.matches("user:bob:inbox"));
        assert!(!pattern.matches("user::inbox"));
        assert!(!pattern.matches("user:bob"));
        assert_eq!(pattern.owner("user:bob:inbox"), Some("bob"));
        assert!(pattern.allows("user:alice:inbox", &who(Some("alice"), None)));
        assert!(!pattern.allows("user:bob:inbox", &who(Some("alice"), None)));
        assert!(!pattern.allows("user:bob:inbox", &who(None, None)));
        assert!(Pattern::parse("user:{user_id}:*").is_err());
        assert!(Pattern::parse("{user_id}{user_id}").is_err());
    }

    #[test]
    fn join_policies_use_the_identity() {
        let route = |pattern: &str, join| plain_route(pattern, join, ClientEventPolicy::Deny);
        let private = route("user:{user_id}", JoinPolicy::Public);
        assert!(private.may_join("user:alice", &who(Some("alice"), None)));
        assert!(!private.may_join("user:bob", &who(Some("alice"), None)));
        let claims = route("room:*", JoinPolicy::Claims);
        let alice = who(
            Some("alice"),
            Some(&["room:a*", "room:z", "user:{user_id}"]),
        );
        assert!(claims.may_join("room:abc", &alice));
        assert!(claims.may_join("room:z", &alice));
        assert!(!claims.may_join("room:b", &alice));
        assert!(!claims.may_join("room:a", &who(Some("x"), None)));
        let own = route("user:*", JoinPolicy::Claims);
        assert!(own.may_join("user:alice", &alice));
        assert!(!own.may_join("user:bob", &alice));
        assert!(claims.needs_identity() && private.needs_identity());
        assert!(!route("room:*", JoinPolicy::Public).needs_identity());
    }

    #[test]
    fn first_match_wins_and_phoenix_is_never_routed() {
        let routes = Routes::new(vec![
            plain_route("room:forbidden", JoinPolicy::Deny, ClientEventPolicy::Deny),
            plain_route("*", JoinPolicy::Public, ClientEventPolicy::Broadcast),
        ]);
        assert_eq!(routes.find("room:forbidden").unwrap().0, 0);
        assert_eq!(routes.find("room:x").unwrap().0, 1);
        assert!(routes.find("phoenix").is_none());
    }
}
