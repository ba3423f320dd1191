//! Tests of `message.rs`.

use super::*;
use crate::phoenix_pubsub::testkit::{
    all_fixtures, erl, erl_binary, erl_terms_to_binary, fixture, parse_byte_list, NODE,
};
use serde_json::{json, Value};

/// What the fixtures' README says a subscriber receives for each file.
enum Expect {
    Json(&'static str, Value),
    Binary(&'static str, &'static [u8]),
    Ignored(&'static str),
}

fn expectations() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        (
            "captured/http-broadcast",
            Json("new_msg", json!({"body": "hi", "n": 1})),
        ),
        (
            "captured/channel-broadcast",
            Json("new_msg", json!({"body": "hi ws", "n": 2})),
        ),
        (
            "captured/broadcast-from",
            Json("shout_others", json!({"o": 1})),
        ),
        (
            "captured/binary-broadcast",
            Binary("new_msg", &[0xff, 0x00, 0x01]),
        ),
        ("captured/tracker-heartbeat-1", Ignored("presence")),
        ("captured/tracker-heartbeat-2", Ignored("presence")),
        (
            "generated/atom-keys",
            Json(
                "new_msg",
                json!({"body": "hi", "user": {"id": 7, "name": "Zoë"}}),
            ),
        ),
        (
            "generated/json-values",
            Json(
                "values",
                serde_json::from_str(
                    r#"{"1":"int key","atom":"some_atom","big":123456789012345678901234567890,
                        "charlist":[97,98,99],"empty":{},"empty_list":[],"f":false,"float":1.5,
                        "list":[1,"two",[3.25]],"neg":-42,"nil":null,"t":true}"#,
                )
                .unwrap(),
            ),
        ),
        (
            "generated/compressed",
            Json("new_msg", json!({"body": "compress me ".repeat(40)})),
        ),
        ("generated/only-other-node", Ignored("other_node")),
        (
            "generated/only-cinder",
            Json("new_msg", json!({"body": "for cinder-1"})),
        ),
        ("generated/plain-pubsub-message", Ignored("dispatcher")),
        (
            "generated/binary-payload",
            Binary("bin", &[0x00, 0x01, 0x02, 0xff]),
        ),
        ("generated/future-version", Ignored("version")),
    ]
}

fn check(name: &str, bytes: &[u8], expect: &Expect) {
    let outcome = classify(bytes, NODE);
    match (expect, outcome) {
        (Expect::Json(event, value), Ok(incoming)) => {
            assert_eq!(incoming.topic, "room:lobby", "{name}");
            assert_eq!(incoming.event, *event, "{name}");
            let Payload::Json(text) = &incoming.payload else {
                panic!("{name}: {:?}", incoming.payload);
            };
            // `serde_json` keeps big integers only as exact text, so
            // compare those digits first, then the rest by value.
            let text = std::str::from_utf8(text).unwrap();
            if name.ends_with("json-values") {
                assert!(
                    text.contains("\"big\":123456789012345678901234567890"),
                    "{text}"
                );
            }
            let got: Value = serde_json::from_str(text).unwrap();
            assert_eq!(&got, value, "{name}");
        }
        (Expect::Binary(event, bytes), Ok(incoming)) => {
            assert_eq!(incoming.topic, "room:lobby", "{name}");
            assert_eq!(incoming.event, *event, "{name}");
            assert_eq!(incoming.payload, Payload::Binary(bytes.to_vec()), "{name}");
        }
        (Expect::Ignored(label), Err(ignored)) => {
            assert_eq!(ignored.as_str(), *label, "{name}")
        }
        (_, outcome) => panic!("{name}: unexpected {outcome:?}"),
    }
}

#[test]
fn every_fixture_is_read_as_the_readme_says() {
    let expectations = expectations();
    let fixtures = all_fixtures();
    let names: Vec<&str> = fixtures.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected: Vec<&str> = expectations.iter().map(|(name, _)| *name).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "a fixture without an expectation, or one missing"
    );
    for (name, expect) in &expectations {
        check(name, &fixture(name), expect);
    }
}

#[test]
fn a_captured_payload_is_the_json_phoenix_sent() {
    let incoming = classify(&fixture("captured/http-broadcast"), NODE).unwrap();
    assert_eq!(
        incoming.payload,
        Payload::Json(br#"{"body":"hi","n":1}"#.to_vec())
    );
}

#[test]
fn utf8_atoms_and_compression_change_nothing() {
    // Every fixture rewritten by Erlang as OTP 26 writes it (UTF-8
    // atoms), and compressed at several levels.
    let options = [
        "[{minor_version, 2}]",
        "[{compressed, 1}]",
        "[{compressed, 6}, {minor_version, 2}]",
        "[{compressed, 9}]",
    ];
    let fixtures = all_fixtures();
    let mut code = String::from("Print = fun(B) -> io:format(\"~w~n\", [binary_to_list(B)]) end");
    for (_, bytes) in &fixtures {
        for option in options {
            code.push_str(&format!(
                ", Print(term_to_binary(binary_to_term({}), {option}))",
                erl_binary(bytes)
            ));
        }
    }
    let output = erl(&code);
    let mut lines = output.lines();
    let expectations = expectations();
    for (name, _) in &fixtures {
        let (_, expect) = expectations.iter().find(|(n, _)| n == name).unwrap();
        for option in options {
            let bytes = parse_byte_list(lines.next().expect("a line per term"));
            check(&format!("{name} {option}"), &bytes, expect);
        }
    }
}

#[test]
fn a_nodes_own_message_is_an_echo() {
    for name in ["captured/http-broadcast", "captured/tracker-heartbeat-1"] {
        let ignored = classify(&fixture(name), "phoenix_peer_4002").unwrap_err();
        assert_eq!(ignored, Ignored::OwnEcho, "{name}");
    }
    // Recognised from the envelope's first four elements, whatever follows.
    let bytes = fixture("captured/http-broadcast");
    let topic_end = bytes.windows(10).position(|w| w == b"room:lobby").unwrap() + 10;
    let ignored = classify(&bytes[..topic_end], "phoenix_peer_4002").unwrap_err();
    assert_eq!(ignored, Ignored::OwnEcho);
    let ignored = classify(&bytes[..topic_end], NODE).unwrap_err();
    assert!(
        matches!(ignored, Ignored::Malformed(Malformed::Decode(_))),
        "{ignored:?}"
    );
    // `only` for the node a Phoenix app is named is for that node alone.
    let ignored = classify(&fixture("generated/only-cinder"), "phoenix_app_1").unwrap_err();
    assert_eq!(ignored, Ignored::OtherNode);
}

fn broadcast(topic: &str, event: &str, payload: &str) -> String {
    format!(
        "#{{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', topic => <<\"{topic}\">>, \
         event => <<\"{event}\">>, payload => {payload}}}"
    )
}

/// The adapter's tuple, in Erlang's syntax.
fn envelope(
    version: &str,
    mode: &str,
    node: &str,
    topic: &str,
    message: &str,
    dispatcher: &str,
) -> String {
    format!("{{{version}, {mode}, {node}, <<\"{topic}\">>, {message}, {dispatcher}}}")
}

const SERVER: &str = "'Elixir.Phoenix.Channel.Server'";

/// Has `erl` write each term (as OTP 26 would) and checks the label
/// `classify` gives it (`ok` for a broadcast).
fn check_labels(cases: &[(String, &str)]) {
    let exprs: Vec<&str> = cases.iter().map(|(expr, _)| expr.as_str()).collect();
    let terms = erl_terms_to_binary(&exprs, "[{minor_version, 2}]");
    for ((expr, label), bytes) in cases.iter().zip(terms) {
        let outcome = classify(&bytes, NODE);
        let got = outcome.as_ref().map_or_else(Ignored::as_str, |_| "ok");
        assert_eq!(got, *label, "{expr}: {outcome:?}");
    }
}

#[test]
fn node_names_may_be_binaries() {
    let message = broadcast("t", "e", "#{}");
    check_labels(&[
        (
            envelope("3", "except", "<<\"cinder-1\">>", "t", &message, SERVER),
            "own_echo",
        ),
        (
            envelope("3", "only", "<<\"cinder-1\">>", "t", &message, SERVER),
            "ok",
        ),
    ]);
}

#[test]
fn the_first_reason_that_applies_wins() {
    let good = broadcast("room", "e", "#{}");
    let presence = broadcast("phx_presence:x", "e", "#{}");
    let other = |topic: &str, message: &str, dispatcher: &str| {
        envelope("3", "except", "other", topic, message, dispatcher)
    };
    check_labels(&[
        // A future version is not read any further, whatever its shape.
        ("{4}".into(), "version"),
        ("{99999999999999999999999, x}".into(), "version"),
        // Routing before anything about the message, which is not even
        // read for it.
        (
            envelope("3", "except", "'cinder-1'", "phx_presence:x", "{pub}", "x"),
            "own_echo",
        ),
        (
            envelope("3", "only", "other", "room", "[1 | 2]", SERVER),
            "other_node",
        ),
        (
            envelope("3", "only", "other", "room", "self()", SERVER),
            "other_node",
        ),
        (other("room", "[1 | 2]", SERVER), "malformed"),
        // Presence before the dispatcher, even a channel one.
        (other("phx_presence:x", &presence, SERVER), "presence"),
        (
            other("room", &good, "'Elixir.Phoenix.PubSub'"),
            "dispatcher",
        ),
        (other("room", &good, "<<\"x\">>"), "dispatcher"),
        (other("room", "{custom, 1}", SERVER), "not_a_broadcast"),
        // The envelope's topic and the struct's must agree.
        (other("lobby", &good, SERVER), "not_a_broadcast"),
        (
            other("room", &broadcast("room", "e", "[1]"), SERVER),
            "payload_not_object",
        ),
        (
            other("room", &broadcast("room", "e", "#{a => {1}}"), SERVER),
            "unencodable",
        ),
        (other("room", &good, SERVER), "ok"),
    ]);
}

#[test]
fn shapes_that_are_not_the_adapters_message() {
    let shapes = [
        "[]",
        "{}",
        "{three}",
        "{3, except, node, <<\"t\">>, msg}",
        "{3, maybe, node, <<\"t\">>, msg, d}",
        "{3, except, 42, <<\"t\">>, msg, d}",
        "{3, except, node, \"t\", msg, d}",
    ];
    for (term, bytes) in shapes.iter().zip(erl_terms_to_binary(&shapes, "[]")) {
        let outcome = classify(&bytes, NODE);
        assert!(
            matches!(outcome, Err(Ignored::Malformed(Malformed::Shape(_)))),
            "{term}: {outcome:?}"
        );
    }
    let outcome = classify(&[131, 104], NODE);
    assert!(
        matches!(outcome, Err(Ignored::Malformed(Malformed::Decode(_)))),
        "{outcome:?}"
    );
}

#[test]
fn broadcasts_phoenix_could_not_have_sent() {
    let in_envelope = |message: &str| envelope("3", "except", "other", "room", message, SERVER);
    let struct_with = |fields: &str| {
        in_envelope(&format!(
            "#{{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', topic => <<\"room\">>, {fields}}}"
        ))
    };
    let with_payload = |payload: &str| in_envelope(&broadcast("room", "e", payload));
    check_labels(&[
        // Not the struct, or missing what a broadcast needs.
        (
            in_envelope("#{topic => <<\"room\">>, event => <<\"e\">>, payload => #{}}"),
            "not_a_broadcast",
        ),
        (
            in_envelope(
                "#{'__struct__' => 'Elixir.Phoenix.Socket.Message', topic => <<\"room\">>, \
                 event => <<\"e\">>, payload => #{}}",
            ),
            "not_a_broadcast",
        ),
        (struct_with("event => e, payload => #{}"), "not_a_broadcast"),
        (struct_with("event => <<\"e\">>"), "not_a_broadcast"),
        // Payloads Jason refuses, and a tuple that is not `{binary, _}`.
        (with_payload("#{<<\"p\">> => self()}"), "unencodable"),
        (with_payload("#{<<\"b\">> => <<255>>}"), "unencodable"),
        (with_payload("{binary, \"not a binary\"}"), "unencodable"),
        (with_payload("{text, <<\"x\">>}"), "unencodable"),
        (
            in_envelope(&broadcast("room", "e\\377", "#{}")),
            "unencodable",
        ),
        (with_payload("<<\"a string\">>"), "payload_not_object"),
        (with_payload("nil"), "payload_not_object"),
    ]);
}

#[test]
fn labels_are_stable_and_listed() {
    let all = [
        Ignored::Malformed(Malformed::Shape("x")),
        Ignored::Version(4),
        Ignored::OwnEcho,
        Ignored::OtherNode,
        Ignored::Presence,
        Ignored::Dispatcher,
        Ignored::NotABroadcast,
        Ignored::PayloadNotObject,
        Ignored::Unencodable(JsonError::Tuple),
    ];
    let labels: Vec<&str> = all.iter().map(Ignored::as_str).collect();
    assert_eq!(labels, Ignored::LABELS);
}
