//! The fuzz target over the channel state machine.

use super::*;
use crate::protocol::channels::PresenceUpdate;
use crate::routes::{example_routes, plain_route};

const TOPICS: [&str; 17] = [
    "room:a",
    "hist:h",
    "room:b",
    "room:forbidden",
    "from:x",
    "quiet:q",
    "hook:h",
    "hook:i",
    "chat:c",
    "lobby:l",
    "user:alice",
    "user:bob",
    "claims:ok",
    "claims:no",
    HEARTBEAT_TOPIC,
    "nope",
    "",
];

const EVENTS: [&str; 11] = [
    "phx_join",
    "phx_leave",
    "heartbeat",
    "msg",
    "typing",
    "new_msg",
    "phx_close",
    "presence_update",
    "presence_diff",
    "phx_reply",
    "",
];

const REFS: [&str; 7] = ["null", "\"1\"", "\"2\"", "\"3\"", "\"\"", "7", "\"q\\\"\""];

/// A join payload the harness treats as over the presence meta limits.
const OVER_LIMIT_META: &str = r#"{"meta":{"big":true}}"#;

const PAYLOADS: [&str; 8] = [
    "{}",
    r#"{"since":"e1:0"}"#,
    r#"{"since":7}"#,
    r#"{"meta":{"a":1}}"#,
    "[]",
    "\"x\"",
    r#"{"name":"n"}"#,
    OVER_LIMIT_META,
];

/// The route table the channel target joins against: every policy, an
/// allow-list, presence, a `{user_id}` pattern and claims.
fn fuzz_routes() -> Routes {
    let mut routes = example_routes();
    routes.push(plain_route(
        "user:{user_id}",
        JoinPolicy::Public,
        ClientEventPolicy::Broadcast,
    ));
    routes.push(plain_route(
        "claims:*",
        JoinPolicy::Claims,
        ClientEventPolicy::BroadcastFrom,
    ));
    Routes::new(routes)
}

/// A message from four bytes: topic, event, both refs, payload.
fn fuzz_message(input: &mut Input<'_>) -> ClientMessage {
    let (topic, event, refs, payload) = (input.byte(), input.byte(), input.byte(), input.byte());
    let topic = match TOPICS.get(usize::from(topic) % (TOPICS.len() + 1)) {
        Some(t) => Name::Str((*t).to_owned()),
        None => Name::Other(RawJson::from_json_text(b"42")),
    };
    let event = match EVENTS.get(usize::from(event) % (EVENTS.len() + 1)) {
        Some(e) => Name::Str((*e).to_owned()),
        None => Name::Other(RawJson::null()),
    };
    let raw = |i: u8| RawJson::from_json_text(REFS[usize::from(i) % REFS.len()].as_bytes());
    let payload = match PAYLOADS.get(usize::from(payload) % (PAYLOADS.len() + 1)) {
        Some(p) => Payload::Json(p.as_bytes().to_vec()),
        None => Payload::Binary(vec![1, 2, 3]),
    };
    ClientMessage {
        join_ref: raw(refs >> 4),
        msg_ref: raw(refs & 0x0f),
        topic,
        event,
        payload,
    }
}

/// One connection's channels, with the shard's side kept alongside: the
/// subscriptions in a topic table and the join_ref of each joined channel.
struct ChannelHarness {
    set: ChannelSet,
    max_channels: usize,
    table: TopicTable,
    /// Joined topics: the subscription and the instance's join_ref.
    joined: HashMap<String, (SubscriptionSlot, RawJson)>,
    /// Joins handed to the backend (answered or not).
    asks: Vec<HookAsk>,
}

const CLIENT: ClientId = ClientId(7);
const KIND: FrameKind = FrameKind::of(Serializer::V2);

/// The channel state machine fed a message sequence. One byte gives
/// `max_channels` (1 to 4), one the connection's identity; then each step
/// is an operation byte (handle a message, answer a pending join, refuse a
/// message as rate limited, disconnect) and its arguments.
pub fn channels(data: &[u8]) {
    let mut input = Input(data);
    let max_channels = 1 + usize::from(input.byte() % 4);
    let identity = match input.byte() % 3 {
        0 => Identity::default(),
        1 => Identity {
            user_id: Some("alice".into()),
            channels: Some(vec!["claims:ok".into()]),
            socket_id: None,
        },
        _ => Identity {
            user_id: Some("bob".into()),
            channels: Some(vec!["claims:*".into(), "user:{user_id}".into()]),
            socket_id: None,
        },
    };
    let routes = fuzz_routes();
    let mut harness = ChannelHarness::new(max_channels);
    while !input.is_empty() {
        match input.byte() % 9 {
            0..=4 => {
                let message = fuzz_message(&mut input);
                harness.handle(message, &routes, &identity);
            }
            5 => {
                let (which, ok) = (input.byte(), input.byte() & 1 == 0);
                harness.finish(which, ok);
            }
            6 => {
                let message = fuzz_message(&mut input);
                harness.refuse(&message);
            }
            7 => {
                let (topic, refs) = (input.byte(), input.byte());
                harness.undo(topic, refs);
            }
            _ => harness = harness.disconnect(),
        }
    }
    harness.disconnect();
}

impl ChannelHarness {
    fn new(max_channels: usize) -> ChannelHarness {
        ChannelHarness {
            set: ChannelSet::new(max_channels),
            max_channels,
            table: TopicTable::new(),
            joined: HashMap::new(),
            asks: Vec::new(),
        }
    }

    fn handle(&mut self, message: ClientMessage, routes: &Routes, identity: &Identity) {
        let before = self.joined.clone();
        let mut out = Vec::new();
        self.set.handle(message.clone(), routes, identity, &mut out);
        let topic = message.topic.as_str();
        let event = message.event.as_str();
        let heartbeat = topic == Some(HEARTBEAT_TOPIC) && event == Some("heartbeat");
        let channel = topic.and_then(|t| before.get(t)).map(|(_, r)| r.clone());
        let on_channel = !heartbeat && event != Some("phx_join");
        let stale = on_channel
            && channel
                .as_ref()
                .is_some_and(|r| !message.join_ref.is_null() && message.join_ref != *r);
        let instance = if message.join_ref.is_null() {
            message.msg_ref.clone()
        } else {
            message.join_ref.clone()
        };
        let mut answers = 0;
        for action in &out {
            match action {
                Action::Send(sent) if sent.event == "phx_reply" => {
                    answers += 1;
                    assert_eq!(sent.msg_ref, message.msg_ref, "a reply not echoing the ref");
                    assert_eq!(sent.topic, message.topic, "a reply not echoing the topic");
                    check_reply_payload(&sent.payload);
                    let join_ref = if heartbeat {
                        Some(RawJson::null())
                    } else if on_channel {
                        Some(channel.clone().unwrap_or_else(|| {
                            if event == Some("phx_leave") {
                                message.join_ref.clone()
                            } else {
                                RawJson::null()
                            }
                        }))
                    } else {
                        None
                    };
                    if let Some(join_ref) = join_ref {
                        assert_eq!(sent.join_ref, join_ref, "a reply with the wrong join_ref");
                    }
                }
                Action::Send(sent) if sent.event == "phx_close" => {
                    assert_eq!(sent.join_ref, sent.msg_ref, "a close with two refs");
                    assert_eq!(sent.topic, message.topic, "a close for another topic");
                    assert_eq!(
                        Some(&sent.join_ref),
                        channel.as_ref(),
                        "a close for an instance that was not joined"
                    );
                }
                Action::Send(sent) => panic!("sent {:?} to the client", sent.event),
                Action::AskJoin(ask) => {
                    answers += 1;
                    assert_eq!(event, Some("phx_join"), "a join asked for another event");
                    assert_eq!(Some(ask.topic.as_str()), topic);
                    assert_eq!(ask.msg_ref, message.msg_ref);
                    assert_eq!(ask.join_ref, instance);
                    self.asks.push(ask.clone());
                }
                // An event handed to the backend or a presence update
                // answers the message, on the joined channel's instance.
                Action::AskEvent(HookAsk { join_ref, .. })
                | Action::UpdatePresence(PresenceUpdate { join_ref, .. }) => {
                    answers += 1;
                    assert_eq!(
                        Some(join_ref),
                        channel.as_ref(),
                        "{action:?} on an unjoined channel"
                    );
                    if let Action::AskEvent(ask) = action {
                        assert_eq!(ask.msg_ref, message.msg_ref);
                    }
                }
                Action::Publish { content, .. } => {
                    assert_eq!(Some(content.topic()), topic);
                    assert!(channel.is_some(), "a publish from an unjoined channel");
                    let event = content.event();
                    assert!(
                        !event.starts_with("phx_")
                            && event != "presence_state"
                            && event != "presence_diff",
                        "a client published the reserved event {event}"
                    );
                }
                Action::Track(join) => {
                    // A presence join's reply rides with the tracking.
                    answers += 1;
                    assert_eq!(join.reply.event, "phx_reply");
                    assert_eq!(
                        join.reply.msg_ref, message.msg_ref,
                        "a reply not echoing the ref"
                    );
                    assert_eq!(
                        join.reply.topic, message.topic,
                        "a reply not echoing the topic"
                    );
                    assert_eq!(
                        join.reply.join_ref, message.join_ref,
                        "a join reply with the wrong join_ref"
                    );
                    assert_eq!(join.join_ref, instance, "tracked another instance");
                    check_reply_payload(&join.reply.payload);
                }
                Action::Subscribe { .. } | Action::Unsubscribe { .. } => {}
            }
            self.apply(action, &instance);
        }
        if stale {
            assert!(
                out.is_empty(),
                "a message for a stale join_ref was answered"
            );
        } else {
            assert_eq!(
                answers, 1,
                "a message answered {answers} times: {message:?}\n{out:?}"
            );
        }
        self.check();
    }

    /// Answers the `which`-th join handed to the backend (maybe again, maybe
    /// after the client left).
    fn finish(&mut self, which: u8, ok: bool) {
        if self.asks.is_empty() {
            return;
        }
        let ask = self.asks[usize::from(which) % self.asks.len()].clone();
        let verdict = if ok {
            HookVerdict::Ok(br#"{"motd":"hi"}"#.to_vec())
        } else {
            HookVerdict::Error(br#"{"reason":"no"}"#.to_vec())
        };
        let mut out = Vec::new();
        self.set.finish_join(&ask, &verdict, &mut out);
        let mut replies = 0;
        for action in &out {
            match action {
                Action::Send(sent) => {
                    replies += 1;
                    assert_eq!(sent.event, "phx_reply");
                    assert_eq!(sent.msg_ref, ask.msg_ref);
                    assert_eq!(sent.join_ref, ask.reply_join_ref);
                    assert_eq!(sent.topic, ask.topic_name);
                    check_reply_payload(&sent.payload);
                }
                Action::Subscribe { topic, .. } => {
                    assert!(ok, "a refused join subscribed");
                    assert_eq!(*topic, ask.topic);
                }
                Action::Track(join) => {
                    replies += 1;
                    assert!(ok, "a refused join tracked");
                    assert_eq!(join.reply.event, "phx_reply");
                    assert_eq!(join.reply.msg_ref, ask.msg_ref);
                    assert_eq!(join.reply.join_ref, ask.reply_join_ref);
                    assert_eq!(join.reply.topic, ask.topic_name);
                    check_reply_payload(&join.reply.payload);
                }
                other => panic!("a join answer did {other:?}"),
            }
            self.apply(action, &ask.join_ref);
        }
        assert!(replies <= 1, "a join answered {replies} times");
        assert_eq!(
            replies == 0,
            out.is_empty(),
            "a join answer without a reply"
        );
        self.check();
    }

    fn refuse(&mut self, message: &ClientMessage) {
        let mut out = Vec::new();
        self.set.refuse_rate_limited(message, &mut out);
        let [Action::Send(sent)] = out.as_slice() else {
            panic!("a rate-limit refusal did {out:?}");
        };
        assert_eq!(sent.msg_ref, message.msg_ref);
        assert_eq!(sent.topic, message.topic);
        let join_ref = message
            .topic
            .as_str()
            .and_then(|t| self.joined.get(t))
            .map_or_else(|| message.join_ref.clone(), |(_, r)| r.clone());
        assert_eq!(sent.join_ref, join_ref, "a refusal with the wrong join_ref");
        check_reply_payload(&sent.payload);
    }

    /// Carries out one action as the shard does (subscriptions only).
    fn apply(&mut self, action: &Action, instance: &RawJson) {
        match action {
            Action::Subscribe { topic, .. } => {
                assert!(
                    !self.joined.contains_key(topic),
                    "subscribed twice to {topic}"
                );
                let slot = self.table.subscribe(topic, KIND, CLIENT);
                self.set.set_slot(topic, slot);
                self.joined.insert(topic.clone(), (slot, instance.clone()));
            }
            Action::Unsubscribe { topic, slot, .. } => {
                let Some((held, _)) = self.joined.remove(topic) else {
                    panic!("unsubscribed from {topic}, which was not subscribed");
                };
                assert_eq!(held, *slot, "unsubscribed with another slot");
                self.table.unsubscribe(topic, KIND, *slot);
            }
            Action::Track(join) => {
                let held = self.joined.get(&join.topic).map(|(_, r)| r);
                assert_eq!(held, Some(&join.join_ref), "tracked an unjoined channel");
                // The shard refuses a presence over its meta limits and
                // undoes the join; this payload stands for such a meta.
                if join.payload == Payload::Json(OVER_LIMIT_META.as_bytes().to_vec()) {
                    self.undo_join(&join.topic, &join.join_ref);
                }
            }
            _ => {}
        }
    }

    /// Undoes the join of a topic by a join_ref, as the shard does when it
    /// refuses a presence: only the joined instance goes, and its
    /// subscription comes back.
    fn undo_join(&mut self, topic: &str, join_ref: &RawJson) {
        let before = self.set.len();
        let slot = self.set.undo_join(topic, join_ref);
        match self.joined.get(topic) {
            Some((held, instance)) if instance == join_ref => {
                let held = *held;
                assert_eq!(slot, Some(held), "undo_join returned another subscription");
                self.table.unsubscribe(topic, KIND, held);
                self.joined.remove(topic);
                assert_eq!(self.set.len(), before - 1, "undo_join left the channel");
            }
            _ => {
                assert_eq!(slot, None, "undo_join of an instance that is not joined");
                assert_eq!(
                    self.set.len(),
                    before,
                    "undo_join of nothing removed a channel"
                );
            }
        }
        self.check();
    }

    /// [`ChannelHarness::undo_join`] of any topic and join_ref.
    fn undo(&mut self, topic: u8, refs: u8) {
        let topic = TOPICS[usize::from(topic) % TOPICS.len()];
        let join_ref = RawJson::from_json_text(REFS[usize::from(refs) % REFS.len()].as_bytes());
        self.undo_join(topic, &join_ref);
    }

    fn check(&self) {
        assert!(
            self.set.len() <= self.max_channels,
            "{} channels joined, limit {}",
            self.set.len(),
            self.max_channels
        );
        assert_eq!(
            self.set.len(),
            self.joined.len(),
            "joined channels and subscriptions differ"
        );
        assert_eq!(self.table.topic_count(), self.joined.len());
        for topic in self.joined.keys() {
            let subscribers = self.table.get(topic).map_or(0, |s| s.of(KIND).len());
            assert_eq!(subscribers, 1, "{topic} has {subscribers} subscriptions");
        }
    }

    /// The connection ends: every subscription comes back exactly once.
    fn disconnect(mut self) -> ChannelHarness {
        let mut returned: Vec<(String, SubscriptionSlot)> =
            self.set.close_all().map(|(t, s, _)| (t, s)).collect();
        returned.sort_by(|a, b| a.0.cmp(&b.0));
        let mut held: Vec<(String, SubscriptionSlot)> = self
            .joined
            .drain()
            .map(|(topic, (slot, _))| (topic, slot))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(returned, held, "close_all returned other subscriptions");
        for (topic, slot) in returned {
            self.table.unsubscribe(&topic, KIND, slot);
        }
        assert!(self.set.is_empty());
        assert_eq!(self.table.topic_count(), 0, "subscriptions left behind");
        ChannelHarness::new(self.max_channels)
    }
}

/// A reply payload: `{"status":"ok"|"error","response":{...}}`.
fn check_reply_payload(payload: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("a reply payload that is not JSON ({e})"));
    assert!(
        matches!(value["status"].as_str(), Some("ok" | "error")) && value["response"].is_object(),
        "a malformed reply payload {value}"
    );
}
