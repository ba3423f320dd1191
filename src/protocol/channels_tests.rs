//! Unit tests of the channel state machine: every rule of Phoenix's channel protocol, no sockets.

use super::*;
use crate::routes::example_routes;

fn routes() -> Routes {
    Routes::new(example_routes())
}

fn r(s: &str) -> RawJson {
    RawJson::from_string(s)
}

/// A client message written as its five fields separated by spaces,
/// `join_ref ref topic event payload`, the way [`describe`] writes what is
/// sent back: `null` is a null join_ref, other refs are strings (as the JS
/// client sends them), and the payload is the rest of the line.
fn msg(fields: &str) -> ClientMessage {
    let fields: Vec<&str> = fields.splitn(5, ' ').collect();
    let [join_ref, msg_ref, topic, event, payload] = fields[..] else {
        panic!("a message has five fields: {fields:?}");
    };
    ClientMessage {
        join_ref: if join_ref == "null" {
            RawJson::null()
        } else {
            r(join_ref)
        },
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
        if let Action::Subscribe { topic, .. } = action {
            // Slots are opaque to the state machine; any distinct value works.
            set.set_slot(topic, test_slot(next_slot));
            next_slot += 1;
        }
    }
    out
}

/// Runs the message written as `fields` (see [`msg`]) and describes what it
/// did.
fn said(set: &mut ChannelSet, fields: &str) -> Vec<String> {
    describe(&run(set, msg(fields)))
}

/// A channel set (100 channels at most) that has sent the given joins.
fn joined(joins: &[&str]) -> ChannelSet {
    let mut set = ChannelSet::new(100);
    for join in joins {
        said(&mut set, join);
    }
    set
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
            Action::Subscribe { topic, .. } => format!("subscribe {topic}"),
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
    assert_eq!(
        said(&mut set, "null 4 phoenix heartbeat {}"),
        [r#"send null "4" phoenix phx_reply {"status":"ok","response":{}}"#]
    );
}

#[test]
fn join_ok_then_leave_replies_and_closes() {
    let mut set = ChannelSet::new(100);
    assert_eq!(
        said(&mut set, "3 3 room:lobby phx_join {}"),
        [
            "subscribe room:lobby",
            r#"send "3" "3" room:lobby phx_reply {"status":"ok","response":{}}"#
        ]
    );
    assert_eq!(set.len(), 1);
    assert_eq!(
        said(&mut set, "3 6 room:lobby phx_leave {}"),
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
    let mut set = joined(&["null 5 room:a phx_join {}"]);
    // A later message carrying "5" as join_ref is accepted.
    let out = said(&mut set, "5 6 room:a new_msg {}");
    assert_eq!(out[0], "publish room:a new_msg exclude=false");
}

#[test]
fn unmatched_and_denied_joins() {
    let mut set = ChannelSet::new(100);
    let unmatched = r#"send null "3" nope:1 phx_reply {"status":"error","response":{"reason":"unmatched topic"}}"#;
    assert_eq!(said(&mut set, "3 3 nope:1 phx_join {}"), [unmatched]);
    let denied = r#"send "4" "4" room:forbidden phx_reply {"status":"error","response":{"reason":"unauthorized"}}"#;
    assert_eq!(said(&mut set, "4 4 room:forbidden phx_join {}"), [denied]);
    assert!(said(&mut set, "null 5 phoenix phx_join {}")[0].contains("unmatched topic"));
    assert!(set.is_empty());
}

#[test]
fn duplicate_join_replies_to_the_new_then_closes_the_old() {
    let mut set = joined(&["3 3 room:lobby phx_join {}"]);
    assert_eq!(
        said(&mut set, "7 7 room:lobby phx_join {}"),
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
    let mut set = joined(&["3 3 room:a phx_join {}"]);
    // Stale non-null join_ref: dropped silently.
    assert!(said(&mut set, "2 4 room:a new_msg {}").is_empty());
    assert!(said(&mut set, "2 5 room:a phx_leave {}").is_empty());
    // Null join_ref: accepted.
    assert_eq!(said(&mut set, "null 6 room:a new_msg {}").len(), 2);
    assert_eq!(
        said(&mut set, "null 7 room:a phx_leave {}")[1],
        r#"send "3" "7" room:a phx_reply {"status":"ok","response":{}}"#
    );
}

#[test]
fn events_on_unjoined_topics() {
    let mut set = ChannelSet::new(100);
    let unmatched = r#"send null "9" room:other phx_reply {"status":"error","response":{"reason":"unmatched topic"}}"#;
    assert_eq!(said(&mut set, "3 9 room:other new_msg {}"), [unmatched]);
    let left = r#"send "3" "6" room:gone phx_reply {"status":"ok","response":{}}"#;
    assert_eq!(said(&mut set, "3 6 room:gone phx_leave {}"), [left]);
}

#[test]
fn client_event_policies() {
    let mut set = joined(&[
        "1 1 room:a phx_join {}",
        "2 2 from:a phx_join {}",
        "3 3 quiet:a phx_join {}",
    ]);
    assert_eq!(
        said(&mut set, r#"1 4 room:a new_msg {"body":"hi"}"#),
        [
            "publish room:a new_msg exclude=false",
            r#"send "1" "4" room:a phx_reply {"status":"ok","response":{}}"#
        ]
    );
    let out = said(&mut set, "2 5 from:a new_msg {}");
    assert_eq!(out[0], "publish from:a new_msg exclude=true");
    let refused = r#"send "3" "6" quiet:a phx_reply {"status":"error","response":{"reason":"unhandled event"}}"#;
    assert_eq!(said(&mut set, "3 6 quiet:a new_msg {}"), [refused]);
    assert!(said(&mut set, "1 7 room:a phx_close {}")[0].contains("reserved event"));
    let out = said(&mut set, "1 8 room:a new_msg [1,2]");
    assert!(out[0].contains("payload must be a JSON object"));
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
    let out = run(&mut set, msg("1 1 hook:a phx_join {}"));
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
    let out = said(&mut set, r#"1 2 hook:a say {"t":1}"#);
    assert_eq!(out, ["ask event hook:a say"]);
    // A denied join, and an answer arriving after the client left.
    let out = run(&mut set, msg("3 3 hook:b phx_join {}"));
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
    let out = run(&mut set, msg("4 4 hook:c phx_join {}"));
    said(&mut set, "4 5 hook:c phx_leave {}");
    let mut stale = Vec::new();
    set.finish_join(&ask_of(&out), &HookVerdict::Ok(b"{}".to_vec()), &mut stale);
    assert!(stale.is_empty(), "{:?}", describe(&stale));
    assert_eq!(set.len(), 1);
}

#[test]
fn an_event_allow_list_refuses_other_names() {
    let mut set = joined(&["1 1 chat:a phx_join {}"]);
    let out = said(&mut set, "1 2 chat:a typing {}");
    assert_eq!(out[0], "publish chat:a typing exclude=false");
    let refused = r#"send "1" "3" chat:a phx_reply {"status":"error","response":{"reason":"unhandled event"}}"#;
    assert_eq!(said(&mut set, "1 3 chat:a delete_all {}"), [refused]);
}

#[test]
fn binary_client_pushes_are_relayed() {
    let mut set = joined(&["1 1 room:a phx_join {}"]);
    let mut m = msg("1 2 room:a upload {}");
    m.payload = Payload::Binary(vec![1, 2, 3]);
    let out = run(&mut set, m);
    assert_eq!(describe(&out)[0], "publish room:a upload exclude=false");
}

#[test]
fn channel_limit() {
    let mut set = ChannelSet::new(2);
    said(&mut set, "1 1 room:1 phx_join {}");
    said(&mut set, "2 2 room:2 phx_join {}");
    let refused = r#"send "3" "3" room:3 phx_reply {"status":"error","response":{"reason":"too many channels joined"}}"#;
    assert_eq!(said(&mut set, "3 3 room:3 phx_join {}"), [refused]);
    // Rejoining a topic already held does not count against the limit.
    let out = said(&mut set, "4 4 room:2 phx_join {}");
    assert!(out[2].contains(r#""status":"ok""#));
}

#[test]
fn non_string_topic_and_event() {
    let mut set = ChannelSet::new(100);
    let mut m = msg("1 1 x phx_join {}");
    m.topic = Name::Other(RawJson::from_json_text(b"42"));
    let out = run(&mut set, m);
    assert!(describe(&out)[0].contains("unmatched topic"));
    said(&mut set, "1 1 room:a phx_join {}");
    let mut m = msg("1 2 room:a x {}");
    m.event = Name::Other(RawJson::null());
    let out = run(&mut set, m);
    assert!(describe(&out)[0].contains("unhandled event"));
}

#[test]
fn close_all_returns_every_subscription() {
    let mut set = joined(&["1 1 room:1 phx_join {}", "2 2 room:2 phx_join {}"]);
    let mut topics: Vec<String> = set.close_all().map(|(t, _, _)| t).collect();
    topics.sort();
    assert_eq!(topics, ["room:1", "room:2"]);
    assert!(set.is_empty());
}

#[test]
fn presence_routes_track_with_the_reply_and_take_updates() {
    let mut set = ChannelSet::new(10);
    let out = run(&mut set, msg(r#"1 1 lobby:a phx_join {"meta":{}}"#));
    assert_eq!(
        describe(&out),
        vec!["subscribe lobby:a", r#"track lobby:a "1""#]
    );
    // The shard sends the reply once the presence is tracked (an error if
    // the meta is over the limits, and then it undoes the join).
    let Action::Track(join) = &out[1] else {
        unreachable!()
    };
    assert_eq!(
        describe(&[Action::Send(join.reply.clone())]),
        [r#"send "1" "1" lobby:a phx_reply {"status":"ok","response":{}}"#]
    );
    assert!(
        set.undo_join("lobby:a", &r("2")).is_none(),
        "another instance"
    );
    assert_eq!(set.len(), 1);
    let out = said(&mut set, r#"1 2 lobby:a presence_update {"meta":{"s":1}}"#);
    assert_eq!(out, vec!["update presence lobby:a"]);
    // Other events keep the route's policy; routes without presence never track.
    let out = said(&mut set, "1 3 lobby:a other {}");
    assert_eq!(out.len(), 1);
    assert!(out[0].contains("unhandled event"));
    let out = said(&mut set, "2 4 room:a phx_join {}");
    assert!(!out.iter().any(|a| a.starts_with("track")));
    // Undoing the join drops the channel and hands back its subscription.
    assert!(set.undo_join("lobby:a", &r("1")).is_some());
    assert_eq!(set.len(), 1);
}
