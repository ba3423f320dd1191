//! Unit tests of the channel state machine: every rule of spec §6, no sockets.

use super::*;
use crate::routes::{JoinPolicy, Pattern, Route};

fn routes() -> Routes {
    Routes::new(vec![
        Route {
            pattern: Pattern::parse("room:forbidden").unwrap(),
            join: JoinPolicy::Deny,
            client_events: ClientEventPolicy::Deny,
            events: None,
            presence: None,
        },
        Route {
            pattern: Pattern::parse("room:*").unwrap(),
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::Broadcast,
            events: None,
            presence: None,
        },
        Route {
            pattern: Pattern::parse("from:*").unwrap(),
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::BroadcastFrom,
            events: None,
            presence: None,
        },
        Route {
            pattern: Pattern::parse("quiet:*").unwrap(),
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::Deny,
            events: None,
            presence: None,
        },
        Route {
            pattern: Pattern::parse("hook:*").unwrap(),
            join: JoinPolicy::Webhook,
            client_events: ClientEventPolicy::Webhook,
            events: None,
            presence: None,
        },
        Route {
            pattern: Pattern::parse("chat:*").unwrap(),
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::Broadcast,
            events: Some(vec!["msg".into(), "typing".into()]),
            presence: None,
        },
        Route {
            pattern: Pattern::parse("lobby:*").unwrap(),
            join: JoinPolicy::Public,
            client_events: ClientEventPolicy::Deny,
            events: None,
            presence: Some(crate::routes::PresenceRoute {
                key_field: None,
                update_event: "presence_update".into(),
            }),
        },
    ])
}

fn r(s: &str) -> RawJson {
    RawJson::from_string(s)
}

fn msg(
    join_ref: Option<&str>,
    msg_ref: &str,
    topic: &str,
    event: &str,
    payload: &str,
) -> ClientMessage {
    ClientMessage {
        join_ref: join_ref.map_or(RawJson::null(), r),
        msg_ref: r(msg_ref),
        topic: Name::Str(topic.into()),
        event: Name::Str(event.into()),
        payload: Payload::Json(payload.as_bytes().to_vec()),
    }
}

/// Runs one message, reporting subscriptions back like the shard does.
fn run(set: &mut ChannelSet, m: ClientMessage) -> Vec<Action> {
    let mut out = Vec::new();
    set.handle(m, &routes(), &Identity::default(), &mut out);
    let mut next_slot = 0;
    for action in &out {
        if let Action::Subscribe { topic } = action {
            // Slots are opaque to the state machine; any distinct value works.
            set.set_slot(topic, test_slot(next_slot));
            next_slot += 1;
        }
    }
    out
}

fn test_slot(n: usize) -> SubscriptionSlot {
    SubscriptionSlot::for_tests(n)
}

/// A compact description of actions, to assert on.
fn describe(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Send(o) => format!(
                "send {} {} {} {} {}",
                String::from_utf8_lossy(o.join_ref.as_bytes()),
                String::from_utf8_lossy(o.msg_ref.as_bytes()),
                o.topic.as_str().unwrap_or("?"),
                o.event,
                String::from_utf8_lossy(&o.payload)
            ),
            Action::Subscribe { topic } => format!("subscribe {topic}"),
            Action::Track(join) => format!(
                "track {} {}",
                join.topic,
                String::from_utf8_lossy(join.join_ref.as_bytes())
            ),
            Action::UpdatePresence(update) => format!("update presence {}", update.topic),
            Action::Unsubscribe { topic, .. } => format!("unsubscribe {topic}"),
            Action::Publish {
                content,
                from_sender,
            } => format!(
                "publish {} {} exclude={}",
                content.topic(),
                content.event(),
                from_sender
            ),
            Action::AskJoin(ask) => format!(
                "ask join {} {}",
                ask.topic,
                String::from_utf8_lossy(ask.join_ref.as_bytes())
            ),
            Action::AskEvent(ask) => format!("ask event {} {}", ask.topic, ask.event),
        })
        .collect()
}

#[test]
fn heartbeat_is_answered_with_null_join_ref() {
    let mut set = ChannelSet::new(100);
    let out = run(&mut set, msg(None, "4", "phoenix", "heartbeat", "{}"));
    assert_eq!(
        describe(&out),
        [r#"send null "4" phoenix phx_reply {"status":"ok","response":{}}"#]
    );
}

#[test]
fn join_ok_then_leave_replies_and_closes() {
    let mut set = ChannelSet::new(100);
    let out = run(
        &mut set,
        msg(Some("3"), "3", "room:lobby", "phx_join", "{}"),
    );
    assert_eq!(
        describe(&out),
        [
            "subscribe room:lobby",
            r#"send "3" "3" room:lobby phx_reply {"status":"ok","response":{}}"#
        ]
    );
    assert_eq!(set.len(), 1);
    let out = run(
        &mut set,
        msg(Some("3"), "6", "room:lobby", "phx_leave", "{}"),
    );
    assert_eq!(
        describe(&out),
        [
            "unsubscribe room:lobby",
            r#"send "3" "6" room:lobby phx_reply {"status":"ok","response":{}}"#,
            r#"send "3" "3" room:lobby phx_close {}"#
        ]
    );
    assert!(set.is_empty());
}

#[test]
fn join_with_null_join_ref_uses_the_ref() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(None, "5", "room:a", "phx_join", "{}"));
    // A later message carrying "5" as join_ref is accepted.
    let out = run(&mut set, msg(Some("5"), "6", "room:a", "new_msg", "{}"));
    assert_eq!(describe(&out)[0], "publish room:a new_msg exclude=false");
}

#[test]
fn unmatched_and_denied_joins() {
    let mut set = ChannelSet::new(100);
    let out = run(&mut set, msg(Some("3"), "3", "nope:1", "phx_join", "{}"));
    assert_eq!(
        describe(&out),
        [
            r#"send null "3" nope:1 phx_reply {"status":"error","response":{"reason":"unmatched topic"}}"#
        ]
    );
    let out = run(
        &mut set,
        msg(Some("4"), "4", "room:forbidden", "phx_join", "{}"),
    );
    assert_eq!(
        describe(&out),
        [
            r#"send "4" "4" room:forbidden phx_reply {"status":"error","response":{"reason":"unauthorized"}}"#
        ]
    );
    let out = run(&mut set, msg(None, "5", "phoenix", "phx_join", "{}"));
    assert!(describe(&out)[0].contains("unmatched topic"));
    assert!(set.is_empty());
}

#[test]
fn duplicate_join_replies_to_the_new_then_closes_the_old() {
    let mut set = ChannelSet::new(100);
    run(
        &mut set,
        msg(Some("3"), "3", "room:lobby", "phx_join", "{}"),
    );
    let out = run(
        &mut set,
        msg(Some("7"), "7", "room:lobby", "phx_join", "{}"),
    );
    assert_eq!(
        describe(&out),
        [
            "unsubscribe room:lobby",
            "subscribe room:lobby",
            r#"send "7" "7" room:lobby phx_reply {"status":"ok","response":{}}"#,
            r#"send "3" "3" room:lobby phx_close {}"#
        ]
    );
    assert_eq!(set.len(), 1);
}

#[test]
fn join_ref_rules_of_phoenix_1_8_12() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(Some("3"), "3", "room:a", "phx_join", "{}"));
    // Stale non-null join_ref: dropped silently.
    assert!(run(&mut set, msg(Some("2"), "4", "room:a", "new_msg", "{}")).is_empty());
    assert!(run(&mut set, msg(Some("2"), "5", "room:a", "phx_leave", "{}")).is_empty());
    // Null join_ref: accepted.
    let out = run(&mut set, msg(None, "6", "room:a", "new_msg", "{}"));
    assert_eq!(describe(&out).len(), 2);
    let out = run(&mut set, msg(None, "7", "room:a", "phx_leave", "{}"));
    assert_eq!(
        describe(&out)[1],
        r#"send "3" "7" room:a phx_reply {"status":"ok","response":{}}"#
    );
}

#[test]
fn events_on_unjoined_topics() {
    let mut set = ChannelSet::new(100);
    let out = run(&mut set, msg(Some("3"), "9", "room:other", "new_msg", "{}"));
    assert_eq!(
        describe(&out),
        [
            r#"send null "9" room:other phx_reply {"status":"error","response":{"reason":"unmatched topic"}}"#
        ]
    );
    let out = run(
        &mut set,
        msg(Some("3"), "6", "room:gone", "phx_leave", "{}"),
    );
    assert_eq!(
        describe(&out),
        [r#"send "3" "6" room:gone phx_reply {"status":"ok","response":{}}"#]
    );
}

#[test]
fn client_event_policies() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(Some("1"), "1", "room:a", "phx_join", "{}"));
    run(&mut set, msg(Some("2"), "2", "from:a", "phx_join", "{}"));
    run(&mut set, msg(Some("3"), "3", "quiet:a", "phx_join", "{}"));
    let out = run(
        &mut set,
        msg(Some("1"), "4", "room:a", "new_msg", r#"{"body":"hi"}"#),
    );
    assert_eq!(
        describe(&out),
        [
            "publish room:a new_msg exclude=false",
            r#"send "1" "4" room:a phx_reply {"status":"ok","response":{}}"#
        ]
    );
    let out = run(&mut set, msg(Some("2"), "5", "from:a", "new_msg", "{}"));
    assert_eq!(describe(&out)[0], "publish from:a new_msg exclude=true");
    let out = run(&mut set, msg(Some("3"), "6", "quiet:a", "new_msg", "{}"));
    assert_eq!(
        describe(&out),
        [
            r#"send "3" "6" quiet:a phx_reply {"status":"error","response":{"reason":"unhandled event"}}"#
        ]
    );
    let out = run(&mut set, msg(Some("1"), "7", "room:a", "phx_close", "{}"));
    assert!(describe(&out)[0].contains("reserved event"));
    let out = run(&mut set, msg(Some("1"), "8", "room:a", "new_msg", "[1,2]"));
    assert!(describe(&out)[0].contains("payload must be a JSON object"));
}

fn ask_of(actions: &[Action]) -> HookAsk {
    actions
        .iter()
        .find_map(|a| match a {
            Action::AskJoin(ask) | Action::AskEvent(ask) => Some(ask.clone()),
            _ => None,
        })
        .expect("an ask")
}

#[test]
fn webhook_joins_wait_for_the_backend() {
    let mut set = ChannelSet::new(100);
    let out = run(&mut set, msg(Some("1"), "1", "hook:a", "phx_join", "{}"));
    assert_eq!(describe(&out), [r#"ask join hook:a "1""#]);
    assert!(set.is_empty(), "not joined until the backend says so");
    let ask = ask_of(&out);
    let mut out = Vec::new();
    set.finish_join(
        &ask,
        &HookVerdict::Ok(br#"{"motd":"hi"}"#.to_vec()),
        &mut out,
    );
    assert_eq!(
        describe(&out),
        [
            "subscribe hook:a",
            r#"send "1" "1" hook:a phx_reply {"status":"ok","response":{"motd":"hi"}}"#
        ]
    );
    assert_eq!(set.len(), 1);
    // Events on the joined channel go to the backend too.
    let out = run(&mut set, msg(Some("1"), "2", "hook:a", "say", r#"{"t":1}"#));
    assert_eq!(describe(&out), ["ask event hook:a say"]);
    // A denied join, and an answer arriving after the client left.
    let out = run(&mut set, msg(Some("3"), "3", "hook:b", "phx_join", "{}"));
    let mut denied = Vec::new();
    set.finish_join(
        &ask_of(&out),
        &HookVerdict::Error(br#"{"reason":"no"}"#.to_vec()),
        &mut denied,
    );
    assert_eq!(
        describe(&denied),
        [r#"send "3" "3" hook:b phx_reply {"status":"error","response":{"reason":"no"}}"#]
    );
    let out = run(&mut set, msg(Some("4"), "4", "hook:c", "phx_join", "{}"));
    run(&mut set, msg(Some("4"), "5", "hook:c", "phx_leave", "{}"));
    let mut stale = Vec::new();
    set.finish_join(&ask_of(&out), &HookVerdict::Ok(b"{}".to_vec()), &mut stale);
    assert!(stale.is_empty(), "{:?}", describe(&stale));
    assert_eq!(set.len(), 1);
}

#[test]
fn an_event_allow_list_refuses_other_names() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(Some("1"), "1", "chat:a", "phx_join", "{}"));
    let out = run(&mut set, msg(Some("1"), "2", "chat:a", "typing", "{}"));
    assert_eq!(describe(&out)[0], "publish chat:a typing exclude=false");
    let out = run(&mut set, msg(Some("1"), "3", "chat:a", "delete_all", "{}"));
    assert_eq!(
        describe(&out),
        [
            r#"send "1" "3" chat:a phx_reply {"status":"error","response":{"reason":"unhandled event"}}"#
        ]
    );
}

#[test]
fn binary_client_pushes_are_relayed() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(Some("1"), "1", "room:a", "phx_join", "{}"));
    let mut m = msg(Some("1"), "2", "room:a", "upload", "{}");
    m.payload = Payload::Binary(vec![1, 2, 3]);
    let out = run(&mut set, m);
    assert_eq!(describe(&out)[0], "publish room:a upload exclude=false");
}

#[test]
fn channel_limit() {
    let mut set = ChannelSet::new(2);
    run(&mut set, msg(Some("1"), "1", "room:1", "phx_join", "{}"));
    run(&mut set, msg(Some("2"), "2", "room:2", "phx_join", "{}"));
    let out = run(&mut set, msg(Some("3"), "3", "room:3", "phx_join", "{}"));
    assert_eq!(
        describe(&out),
        [
            r#"send "3" "3" room:3 phx_reply {"status":"error","response":{"reason":"too many channels joined"}}"#
        ]
    );
    // Rejoining a topic already held does not count against the limit.
    let out = run(&mut set, msg(Some("4"), "4", "room:2", "phx_join", "{}"));
    assert!(describe(&out)[2].contains(r#""status":"ok""#));
}

#[test]
fn non_string_topic_and_event() {
    let mut set = ChannelSet::new(100);
    let mut m = msg(Some("1"), "1", "x", "phx_join", "{}");
    m.topic = Name::Other(RawJson::from_json_text(b"42"));
    let out = run(&mut set, m);
    assert!(describe(&out)[0].contains("unmatched topic"));
    run(&mut set, msg(Some("1"), "1", "room:a", "phx_join", "{}"));
    let mut m = msg(Some("1"), "2", "room:a", "x", "{}");
    m.event = Name::Other(RawJson::null());
    let out = run(&mut set, m);
    assert!(describe(&out)[0].contains("unhandled event"));
}

#[test]
fn close_all_returns_every_subscription() {
    let mut set = ChannelSet::new(100);
    run(&mut set, msg(Some("1"), "1", "room:1", "phx_join", "{}"));
    run(&mut set, msg(Some("2"), "2", "room:2", "phx_join", "{}"));
    let mut topics: Vec<String> = set.close_all().map(|(t, _)| t).collect();
    topics.sort();
    assert_eq!(topics, ["room:1", "room:2"]);
    assert!(set.is_empty());
}

#[test]
fn presence_routes_track_after_the_reply_and_take_updates() {
    let mut set = ChannelSet::new(10);
    let out = run(
        &mut set,
        msg(Some("1"), "1", "lobby:a", "phx_join", r#"{"meta":{}}"#),
    );
    assert_eq!(
        describe(&out),
        vec![
            "subscribe lobby:a",
            r#"send "1" "1" lobby:a phx_reply {"status":"ok","response":{}}"#,
            r#"track lobby:a "1""#,
        ]
    );
    let out = run(
        &mut set,
        msg(
            Some("1"),
            "2",
            "lobby:a",
            "presence_update",
            r#"{"meta":{"s":1}}"#,
        ),
    );
    assert_eq!(describe(&out), vec!["update presence lobby:a"]);
    // Other events keep the route's policy; routes without presence never track.
    let out = run(&mut set, msg(Some("1"), "3", "lobby:a", "other", "{}"));
    assert_eq!(describe(&out).len(), 1);
    assert!(describe(&out)[0].contains("unhandled event"));
    let out = run(&mut set, msg(Some("2"), "4", "room:a", "phx_join", "{}"));
    assert!(!describe(&out).iter().any(|a| a.starts_with("track")));
}
