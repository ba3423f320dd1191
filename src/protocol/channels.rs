//! The channels of one connection: Phoenix's per-socket multiplexer, free of I/O.
//!
//! [`ChannelSet::handle`] is fed one decoded client message and returns, in
//! order, what must happen: frames to send to this connection, subscriptions
//! to add or drop in the shard's topic table, broadcasts to publish. The
//! shard carries the actions out; nothing here touches a socket, a clock or
//! another connection, so every rule below is unit-tested directly.
//!
//! The rules follow Phoenix 1.8.12, evaluated in this order:
//! heartbeat → join (incl. duplicate join) → message to an unjoined topic →
//! join_ref check (null accepted, a different non-null ref silently dropped)
//! → leave → client event policy of the route.

use std::borrow::Cow;

use crate::connect::Identity;
use crate::fanout::broadcast::Content;
use crate::fanout::topics::SubscriptionSlot;
use crate::history::position::{RecoverFrom, SinceNotAString};
use crate::protocol::encode::write_reply_payload;
use crate::protocol::message::{ClientMessage, Name, Payload, RawJson};
use crate::routes::{ClientEventPolicy, JoinDecision, Routes, HEARTBEAT_TOPIC};

const OK_EMPTY: &[u8] = br#"{"status":"ok","response":{}}"#;
const UNMATCHED_TOPIC: &[u8] = br#"{"status":"error","response":{"reason":"unmatched topic"}}"#;
const UNAUTHORIZED: &[u8] = br#"{"status":"error","response":{"reason":"unauthorized"}}"#;
const TOO_MANY_CHANNELS: &[u8] =
    br#"{"status":"error","response":{"reason":"too many channels joined"}}"#;
const UNHANDLED_EVENT: &[u8] = br#"{"status":"error","response":{"reason":"unhandled event"}}"#;
const RESERVED_EVENT: &[u8] = br#"{"status":"error","response":{"reason":"reserved event"}}"#;
const EMPTY_OBJECT: &[u8] = b"{}";
const RATE_LIMITED: &[u8] = br#"{"status":"error","response":{"reason":"rate limited"}}"#;
const SINCE_NOT_A_STRING: &[u8] =
    br#"{"status":"error","response":{"reason":"since must be a position string"}}"#;
const BINARY_HISTORY: &[u8] =
    br#"{"status":"error","response":{"reason":"binary payloads cannot be kept in a topic's history"}}"#;

/// A server→client message for this connection, not yet encoded (the shard
/// encodes it with the connection's serializer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The join_ref position.
    pub join_ref: RawJson,
    /// The ref position.
    pub msg_ref: RawJson,
    /// The topic, echoed as received (it may not even be a string).
    pub topic: Name,
    /// `phx_reply`, `phx_close`, `phx_error`, or a push event.
    pub event: Cow<'static, str>,
    /// The payload as JSON text.
    pub payload: Cow<'static, [u8]>,
}

/// One thing the shard must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Queue a message to this connection.
    Send(Outgoing),
    /// Subscribe this connection to the topic, then report the slot back
    /// through [`ChannelSet::set_slot`]. On a history topic the actions
    /// that follow (the reply among them) wait for the topic's position,
    /// and the broadcasts `recover` asks for are pushed after the reply.
    Subscribe {
        /// The topic joined.
        topic: String,
        /// The joining channel instance (a held join whose instance was
        /// left or replaced meanwhile is dropped).
        join_ref: RawJson,
        /// What the join asked to recover (always `Nothing` on topics
        /// without history).
        recover: RecoverFrom,
    },
    /// Drop this connection's subscription: the channel instance
    /// `join_ref` ended (left, or replaced by a new join).
    Unsubscribe {
        /// The topic left.
        topic: String,
        /// Where the subscription sits in the topic's set.
        slot: SubscriptionSlot,
        /// The instance that ended.
        join_ref: RawJson,
    },
    /// Publish a broadcast (from a client event) to every subscriber on every shard.
    Publish {
        /// What to publish.
        content: Content,
        /// A `broadcast_from`: every subscriber but this client gets it.
        from_sender: bool,
    },
    /// Ask the backend whether this join may happen; the answer comes back
    /// through [`ChannelSet::finish_join`].
    AskJoin(HookAsk),
    /// Hand this client event to the backend; the shard replies with its
    /// answer ([`hook_reply`]).
    AskEvent(HookAsk),
    /// Track this client's presence on a presence-enabled topic it just
    /// joined and send the join's reply, then push it the topic's
    /// `presence_state`. A presence over the meta limits is not tracked: the
    /// reply becomes an error and the shard undoes the join
    /// ([`ChannelSet::undo_join`]).
    Track(PresenceJoin),
    /// Replace this client's presence metas (`presence_update`), then reply.
    UpdatePresence(PresenceUpdate),
}

/// A successful join on a presence-enabled route.
#[derive(Debug, Clone)]
pub struct PresenceJoin {
    /// The topic.
    pub topic: String,
    /// The topic as received (echoed in `presence_state`).
    pub topic_name: Name,
    /// The channel instance's join_ref (`presence_state` carries it).
    pub join_ref: RawJson,
    /// The join payload (its `meta` object and maybe the presence key field).
    pub payload: Payload,
    /// The route's index.
    pub route: usize,
    /// The join's ok reply, sent once the presence is tracked.
    pub reply: Outgoing,
}

/// A `presence_update` client event.
#[derive(Debug, Clone)]
pub struct PresenceUpdate {
    /// The topic.
    pub topic: String,
    /// The event's payload: `{"meta": {...}}`.
    pub payload: Payload,
    /// What the reply needs: join_ref, ref and topic as received.
    pub join_ref: RawJson,
    /// The ref to echo.
    pub msg_ref: RawJson,
    /// The topic as received.
    pub topic_name: Name,
}

/// A join or client event waiting for the backend, with what is needed to
/// answer it later.
#[derive(Debug, Clone)]
pub struct HookAsk {
    /// The topic.
    pub topic: String,
    /// The event (`phx_join` for joins).
    pub event: String,
    /// The client's payload.
    pub payload: Payload,
    /// The channel instance's join_ref (the pending join's, for joins).
    pub join_ref: RawJson,
    /// The join_ref to put in the reply (as the client sent it).
    pub reply_join_ref: RawJson,
    /// The ref to echo.
    pub msg_ref: RawJson,
    /// The topic as received.
    pub topic_name: Name,
}

/// The backend's answer, as the protocol needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookVerdict {
    /// `status: "ok"` with this response object (JSON).
    Ok(Vec<u8>),
    /// `status: "error"` with this response object (JSON).
    Error(Vec<u8>),
}

/// The `phx_reply` answering a hooked join or event.
pub fn hook_reply(ask: &HookAsk, verdict: &HookVerdict) -> Outgoing {
    let payload = match verdict {
        HookVerdict::Ok(response) => reply_payload("ok", response),
        HookVerdict::Error(response) => reply_payload("error", response),
    };
    Outgoing {
        join_ref: ask.reply_join_ref.clone(),
        msg_ref: ask.msg_ref.clone(),
        topic: ask.topic_name.clone(),
        event: Cow::Borrowed("phx_reply"),
        payload: Cow::Owned(payload),
    }
}

/// A join waiting for the backend.
#[derive(Debug)]
struct PendingJoin {
    topic: String,
    join_ref: RawJson,
    route: usize,
    /// Whether the route tracks presence.
    presence: bool,
    /// What the join asked to recover.
    recover: RecoverFrom,
}

/// One joined channel.
#[derive(Debug)]
struct JoinedChannel {
    topic: String,
    /// The join_ref of the `phx_join` that opened this instance (its ref when
    /// the join carried none); later messages are filtered against it.
    join_ref: RawJson,
    /// Index of the route that admitted the join.
    route: usize,
    /// The subscription in the shard's topic table, once made.
    slot: Option<SubscriptionSlot>,
}

/// The channels joined on one connection.
///
/// Stored as a small vector rather than a map: a connection has few channels
/// (at most `max_channels`, 100 by default), a linear scan over them is as
/// fast as hashing, and an idle connection with one channel costs one small
/// allocation.
#[derive(Debug)]
pub struct ChannelSet {
    channels: Vec<JoinedChannel>,
    pending: Vec<PendingJoin>,
    max_channels: usize,
}

impl ChannelSet {
    /// An empty set allowing `max_channels` joined at once.
    pub fn new(max_channels: usize) -> ChannelSet {
        ChannelSet {
            channels: Vec::new(),
            pending: Vec::new(),
            max_channels,
        }
    }

    /// Number of joined channels.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether no channel is joined.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Records where the shard put the subscription asked for by [`Action::Subscribe`].
    pub fn set_slot(&mut self, topic: &str, slot: SubscriptionSlot) {
        if let Some(channel) = self.channels.iter_mut().find(|c| c.topic == topic) {
            debug_assert!(channel.slot.is_none(), "subscribed twice to {topic}");
            channel.slot = Some(slot);
        }
    }

    /// Whether the instance `join_ref` of `topic` is joined and waits for
    /// its subscription (it was not left or replaced while its join was
    /// held).
    pub fn awaits_subscription(&self, topic: &str, join_ref: &RawJson) -> bool {
        self.channels
            .iter()
            .any(|c| c.topic == topic && c.join_ref == *join_ref && c.slot.is_none())
    }

    /// Whether the instance `join_ref` of `topic` is joined and subscribed.
    pub fn is_subscribed(&self, topic: &str, join_ref: &RawJson) -> bool {
        self.channels
            .iter()
            .any(|c| c.topic == topic && c.join_ref == *join_ref && c.slot.is_some())
    }

    /// Ends the channel of `topic` from the server's side (Phoenix's
    /// crashed channel: the client gets `phx_error` and rejoins),
    /// returning its join_ref and subscription.
    pub fn drop_channel(&mut self, topic: &str) -> Option<(RawJson, Option<SubscriptionSlot>)> {
        let index = self.channels.iter().position(|c| c.topic == topic)?;
        let channel = self.channels.swap_remove(index);
        Some((channel.join_ref, channel.slot))
    }

    /// Removes every channel silently (the connection is gone),
    /// returning the subscriptions to drop with their instances' join_refs.
    pub fn close_all(&mut self) -> impl Iterator<Item = (String, SubscriptionSlot, RawJson)> + '_ {
        self.channels
            .drain(..)
            .filter_map(|c| c.slot.map(|slot| (c.topic, slot, c.join_ref)))
    }

    /// Handles one client message; `out` receives the actions in execution
    /// order.
    pub fn handle(
        &mut self,
        msg: ClientMessage,
        routes: &Routes,
        identity: &Identity,
        out: &mut Vec<Action>,
    ) {
        let topic = match msg.topic.as_str() {
            Some(t) => t,
            None => {
                // A non-string topic never matches a channel.
                return self.handle_unjoined(&msg, out);
            }
        };
        let event = msg.event.as_str();
        if topic == HEARTBEAT_TOPIC && event == Some("heartbeat") {
            return out.push(reply(RawJson::null(), &msg, OK_EMPTY));
        }
        if event == Some("phx_join") {
            let topic = topic.to_string();
            return self.join(topic, msg, routes, identity, out);
        }
        let Some(index) = self.channels.iter().position(|c| c.topic == topic) else {
            if event == Some("phx_leave") {
                // Leaving while the backend decides: its answer is dropped.
                self.pending.retain(|p| p.topic != topic);
            }
            return self.handle_unjoined(&msg, out);
        };
        let channel = &self.channels[index];
        if !msg.join_ref.is_null() && msg.join_ref != channel.join_ref {
            // A message for an earlier instance of this channel: Phoenix
            // ≥ 1.8.3 drops it without a reply.
            return;
        }
        match event {
            Some("phx_leave") => {
                let channel = self.channels.swap_remove(index);
                let join_ref = channel.join_ref.clone();
                if let Some(slot) = channel.slot {
                    out.push(Action::Unsubscribe {
                        topic: channel.topic,
                        slot,
                        join_ref: join_ref.clone(),
                    });
                }
                out.push(reply(join_ref.clone(), &msg, OK_EMPTY));
                out.push(close(join_ref, msg.topic));
            }
            Some(event)
                if routes
                    .get(channel.route)
                    .and_then(|r| r.presence.as_ref())
                    .is_some_and(|p| p.update_event == event) =>
            {
                out.push(Action::UpdatePresence(PresenceUpdate {
                    topic: topic.to_string(),
                    payload: msg.payload.clone(),
                    join_ref: channel.join_ref.clone(),
                    msg_ref: msg.msg_ref.clone(),
                    topic_name: msg.topic.clone(),
                }));
            }
            Some(event) => {
                let route = routes.get(channel.route);
                let policy = route
                    .filter(|r| r.allows_event(event))
                    .map_or(ClientEventPolicy::Deny, |r| r.client_events);
                let join_ref = channel.join_ref.clone();
                let history = route.is_some_and(|r| r.history.is_some());
                if history
                    && matches!(msg.payload, Payload::Binary(_))
                    && policy != ClientEventPolicy::Deny
                {
                    // A binary frame has no ref slot for the position.
                    return out.push(reply(join_ref, &msg, BINARY_HISTORY));
                }
                if policy == ClientEventPolicy::Webhook && !is_reserved(event) {
                    return out.push(Action::AskEvent(HookAsk {
                        topic: topic.to_string(),
                        event: event.to_string(),
                        payload: msg.payload.clone(),
                        join_ref: join_ref.clone(),
                        reply_join_ref: join_ref,
                        msg_ref: msg.msg_ref.clone(),
                        topic_name: msg.topic.clone(),
                    }));
                }
                let response = client_event(policy, topic, event, &msg, out);
                out.push(reply(join_ref, &msg, response));
            }
            None => out.push(reply(channel.join_ref.clone(), &msg, UNHANDLED_EVENT)),
        }
    }

    /// Completes a join the backend has decided. A stale answer — the join
    /// was left or replaced meanwhile — is dropped.
    pub fn finish_join(&mut self, ask: &HookAsk, verdict: &HookVerdict, out: &mut Vec<Action>) {
        let Some(index) = self
            .pending
            .iter()
            .position(|p| p.topic == ask.topic && p.join_ref == ask.join_ref)
        else {
            return;
        };
        let pending = self.pending.swap_remove(index);
        let joined = matches!(verdict, HookVerdict::Ok(_));
        if joined {
            self.channels.push(JoinedChannel {
                topic: pending.topic.clone(),
                join_ref: pending.join_ref.clone(),
                route: pending.route,
                slot: None,
            });
            out.push(Action::Subscribe {
                topic: pending.topic.clone(),
                join_ref: pending.join_ref.clone(),
                recover: pending.recover.clone(),
            });
        }
        if joined && pending.presence {
            out.push(Action::Track(PresenceJoin {
                topic: pending.topic,
                topic_name: ask.topic_name.clone(),
                join_ref: pending.join_ref,
                payload: ask.payload.clone(),
                route: pending.route,
                reply: hook_reply(ask, verdict),
            }));
        } else {
            out.push(Action::Send(hook_reply(ask, verdict)));
        }
    }

    /// Undoes the join of `topic` by the instance `join_ref` after the shard
    /// refused its presence: the channel goes, and its subscription, if
    /// made, is returned for the shard to drop. Nothing happens (`None`) if
    /// that instance is not joined.
    pub fn undo_join(&mut self, topic: &str, join_ref: &RawJson) -> Option<SubscriptionSlot> {
        let index = self
            .channels
            .iter()
            .position(|c| c.topic == topic && c.join_ref == *join_ref)?;
        self.channels.swap_remove(index).slot
    }

    /// Whether `msg` is a client event (what the per-connection event rate
    /// limit counts): anything but heartbeats, joins and leaves.
    pub fn is_client_event(msg: &ClientMessage) -> bool {
        !matches!(
            msg.event.as_str(),
            Some("phx_join" | "phx_leave" | "heartbeat")
        )
    }

    /// Answers a client event refused by the rate limit: an error reply with
    /// the joined channel's join_ref, as any other reply on that channel.
    pub fn refuse_rate_limited(&self, msg: &ClientMessage, out: &mut Vec<Action>) {
        let join_ref = msg
            .topic
            .as_str()
            .and_then(|topic| self.channels.iter().find(|c| c.topic == topic))
            .map_or_else(|| msg.join_ref.clone(), |c| c.join_ref.clone());
        out.push(reply(join_ref, msg, RATE_LIMITED));
    }

    /// Spec §6.5 and the leave case of §6.6.
    fn handle_unjoined(&self, msg: &ClientMessage, out: &mut Vec<Action>) {
        if msg.event.as_str() == Some("phx_leave") {
            out.push(reply(msg.join_ref.clone(), msg, OK_EMPTY));
        } else {
            out.push(reply(RawJson::null(), msg, UNMATCHED_TOPIC));
        }
    }

    /// Spec §6.2 and §6.3.
    fn join(
        &mut self,
        topic: String,
        msg: ClientMessage,
        routes: &Routes,
        identity: &Identity,
        out: &mut Vec<Action>,
    ) {
        let Some((route_index, route)) = routes.find(&topic) else {
            return out.push(reply(RawJson::null(), &msg, UNMATCHED_TOPIC));
        };
        // A duplicate join replaces the old instance, which gets a phx_close
        // for its own join_ref after the new join's reply (Phoenix's order).
        let replaced = self
            .channels
            .iter()
            .position(|c| c.topic == topic)
            .map(|i| {
                let old = self.channels.swap_remove(i);
                if let Some(slot) = old.slot {
                    out.push(Action::Unsubscribe {
                        topic: old.topic.clone(),
                        slot,
                        join_ref: old.join_ref.clone(),
                    });
                }
                old.join_ref
            });
        // A join still waiting for the backend is replaced by this one.
        self.pending.retain(|p| p.topic != topic);
        let join_ref = if msg.join_ref.is_null() {
            msg.msg_ref.clone()
        } else {
            msg.join_ref.clone()
        };
        let recover = match (&route.history, &msg.payload) {
            (Some(_), Payload::Json(json)) => RecoverFrom::of_join_payload(json),
            _ => Ok(RecoverFrom::Nothing),
        };
        if self.channels.len() + self.pending.len() >= self.max_channels {
            out.push(reply(msg.join_ref.clone(), &msg, TOO_MANY_CHANNELS));
        } else if let Err(SinceNotAString) = recover {
            out.push(reply(msg.join_ref.clone(), &msg, SINCE_NOT_A_STRING));
        } else {
            let recover = recover.unwrap_or(RecoverFrom::Nothing);
            match route.join_decision(&topic, identity) {
                JoinDecision::Deny => out.push(reply(msg.join_ref.clone(), &msg, UNAUTHORIZED)),
                JoinDecision::Ask => {
                    self.pending.push(PendingJoin {
                        topic: topic.clone(),
                        join_ref: join_ref.clone(),
                        route: route_index,
                        presence: route.presence.is_some(),
                        recover,
                    });
                    out.push(Action::AskJoin(HookAsk {
                        topic,
                        event: "phx_join".to_string(),
                        payload: msg.payload.clone(),
                        join_ref,
                        reply_join_ref: msg.join_ref.clone(),
                        msg_ref: msg.msg_ref.clone(),
                        topic_name: msg.topic.clone(),
                    }));
                }
                JoinDecision::Allow => {
                    self.channels.push(JoinedChannel {
                        topic: topic.clone(),
                        join_ref: join_ref.clone(),
                        route: route_index,
                        slot: None,
                    });
                    out.push(Action::Subscribe {
                        topic: topic.clone(),
                        join_ref: join_ref.clone(),
                        recover,
                    });
                    let ok = reply_to(msg.join_ref.clone(), &msg, OK_EMPTY);
                    if route.presence.is_some() {
                        out.push(Action::Track(PresenceJoin {
                            topic,
                            topic_name: msg.topic.clone(),
                            join_ref,
                            payload: msg.payload.clone(),
                            route: route_index,
                            reply: ok,
                        }));
                    } else {
                        out.push(Action::Send(ok));
                    }
                }
            }
        }
        if let Some(old_join_ref) = replaced {
            out.push(close(old_join_ref, msg.topic));
        }
    }
}

/// Applies a route's client event policy; returns the reply payload.
fn client_event(
    policy: ClientEventPolicy,
    topic: &str,
    event: &str,
    msg: &ClientMessage,
    out: &mut Vec<Action>,
) -> &'static [u8] {
    let from_sender = match policy {
        ClientEventPolicy::Deny | ClientEventPolicy::Webhook => return UNHANDLED_EVENT,
        ClientEventPolicy::Broadcast => false,
        ClientEventPolicy::BroadcastFrom => true,
    };
    // Relaying `phx_close` or `presence_diff` would let one client close or
    // corrupt every other client's channel: those names are the server's.
    if is_reserved(event) {
        return RESERVED_EVENT;
    }
    match Content::new(topic.to_string(), event.to_string(), msg.payload.clone()) {
        Ok(content) => {
            out.push(Action::Publish {
                content,
                from_sender,
            });
            OK_EMPTY
        }
        Err(_) => br#"{"status":"error","response":{"reason":"payload must be a JSON object"}}"#,
    }
}

/// Events only the server may send.
fn is_reserved(event: &str) -> bool {
    event.starts_with("phx_") || event == "presence_state" || event == "presence_diff"
}

/// A `phx_reply` to `msg`: ref echoed, join_ref as given.
fn reply(join_ref: RawJson, msg: &ClientMessage, payload: &'static [u8]) -> Action {
    Action::Send(reply_to(join_ref, msg, payload))
}

/// The message of [`reply`].
fn reply_to(join_ref: RawJson, msg: &ClientMessage, payload: &'static [u8]) -> Outgoing {
    Outgoing {
        join_ref,
        msg_ref: msg.msg_ref.clone(),
        topic: msg.topic.clone(),
        event: Cow::Borrowed("phx_reply"),
        payload: Cow::Borrowed(payload),
    }
}

/// A `phx_close` for a channel instance: join_ref in both positions (§6.7).
fn close(join_ref: RawJson, topic: Name) -> Action {
    Action::Send(Outgoing {
        join_ref: join_ref.clone(),
        msg_ref: join_ref,
        topic,
        event: Cow::Borrowed("phx_close"),
        payload: Cow::Borrowed(EMPTY_OBJECT),
    })
}

/// Builds a reply payload with a custom response (for callers outside this module).
pub fn reply_payload(status: &str, response_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(response_json.len() + 32);
    write_reply_payload(&mut out, status, response_json);
    out
}

#[cfg(test)]
#[path = "channels_tests.rs"]
mod tests;
