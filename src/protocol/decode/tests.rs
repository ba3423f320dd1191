//! Unit tests of text-frame decoding: both paths (simd-json's tape and the
//! verbatim one), V1 and V2, and every error.

use super::*;

fn v2(text: &str) -> Result<ClientMessage, DecodeError> {
    decode_text(Serializer::V2, &mut text.as_bytes().to_vec())
}

fn v1(text: &str) -> Result<ClientMessage, DecodeError> {
    decode_text(Serializer::V1, &mut text.as_bytes().to_vec())
}

fn raw(text: &str) -> RawJson {
    RawJson::from_json_text(text.as_bytes())
}

fn json(text: &str) -> Payload {
    Payload::Json(text.as_bytes().to_vec())
}

#[test]
fn v2_client_join() {
    let m = v2(r#"["3","3","room:lobby","phx_join",{"nick":"ann"}]"#).unwrap();
    assert_eq!(m.join_ref, RawJson::from_string("3"));
    assert_eq!(m.msg_ref, RawJson::from_string("3"));
    assert_eq!(m.topic, Name::Str("room:lobby".into()));
    assert_eq!(m.event, Name::Str("phx_join".into()));
    assert_eq!(m.payload, json(r#"{"nick":"ann"}"#));
}

#[test]
fn v2_heartbeat_with_null_join_ref() {
    let m = v2(r#"[null,"4","phoenix","heartbeat",{}]"#).unwrap();
    assert!(m.join_ref.is_null());
    assert_eq!(m.msg_ref.as_bytes(), br#""4""#);
    assert_eq!(m.topic.as_str(), Some("phoenix"));
    assert_eq!(m.payload, json("{}"));
}

#[test]
fn v2_extra_elements_ignored_and_whitespace_dropped() {
    let m = v2(" [ \"1\" , \"2\" , \"t\" , \"e\" , { \"a\" : [ 1 , 2 ] } , 6 , {\"x\":[]} ]\n")
        .unwrap();
    assert_eq!(m.msg_ref, RawJson::from_string("2"));
    assert_eq!(m.payload, json(r#"{"a":[1,2]}"#));
}

#[test]
fn numbers_as_refs_stay_numbers() {
    let m = v2(r#"[7,-12,"t","e",null]"#).unwrap();
    assert_eq!(m.join_ref, raw("7"));
    assert_eq!(m.msg_ref, raw("-12"));
    assert_eq!(m.payload, json("null"));
    let m =
        v2(r#"[18446744073709551615,-9223372036854775808,"t","e",[1.5,0.25,-0.5,1e300,1.0,2E2]]"#)
            .unwrap();
    assert_eq!(m.join_ref, raw("18446744073709551615"));
    assert_eq!(m.msg_ref, raw("-9223372036854775808"));
    // Floats take the verbatim path: spelled as sent, not as parsed.
    assert_eq!(m.payload, json("[1.5,0.25,-0.5,1e300,1.0,2E2]"));
}

#[test]
fn refs_and_names_that_are_not_strings() {
    let m = v2(r#"[{"a":1},[true,false],42,null,"p"]"#).unwrap();
    assert_eq!(m.join_ref, raw(r#"{"a":1}"#));
    assert_eq!(m.msg_ref, raw("[true,false]"));
    assert_eq!(m.topic, Name::Other(raw("42")));
    assert_eq!(m.event, Name::Other(RawJson::null()));
    assert_eq!(m.payload, json(r#""p""#));
    let m = v2(r#"[null,null,{"t":[]},["e",{}],{}]"#).unwrap();
    assert_eq!(m.topic, Name::Other(raw(r#"{"t":[]}"#)));
    assert_eq!(m.event, Name::Other(raw(r#"["e",{}]"#)));
}

#[test]
fn strings_are_unescaped_then_reescaped() {
    let m =
        v2(r#"["a\"b","\u0041\n","room:\u00e9\/x","e\\",{"k\t":"\ud83d\ude00\u0001"}]"#).unwrap();
    assert_eq!(m.join_ref.as_bytes(), br#""a\"b""#);
    assert_eq!(m.msg_ref.as_bytes(), br#""A\n""#);
    assert_eq!(m.topic, Name::Str("room:é/x".into()));
    assert_eq!(m.event, Name::Str("e\\".into()));
    assert_eq!(m.payload, json("{\"k\\t\":\"😀\\u0001\"}"));
}

#[test]
fn payload_key_order_and_duplicates_survive() {
    let m = v2(r#"[null,null,"t","e",{"z":1,"a":2,"z":3,"m":{"y":[],"b":{}}}]"#).unwrap();
    assert_eq!(
        m.payload,
        json(r#"{"z":1,"a":2,"z":3,"m":{"y":[],"b":{}}}"#)
    );
}

/// The payload length of a V2 push whose payload is `depth` nested arrays
/// around `core`.
fn nested_payload_len(depth: usize, core: &str) -> usize {
    let text = format!(
        r#"[null,null,"t","e",{}{core}{}]"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let Payload::Json(p) = v2(&text).unwrap().payload else {
        panic!("json")
    };
    p.len()
}

#[test]
fn deep_nesting_does_not_overflow() {
    let depth = 100_000;
    assert_eq!(nested_payload_len(depth, ""), depth * 2);
    let text = format!(
        r#"{{"topic":"t","x":{}{},"event":"e","payload":1,"ref":null}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(v1(&text).unwrap().event.as_str(), Some("e"));
    // The verbatim path (a float at the bottom) is iterative as well.
    assert_eq!(nested_payload_len(depth, "1.0e2"), depth * 2 + 5);
    let text = format!(
        r#"{{"topic":"t","x":{}-0{},"event":"e","payload":1,"ref":null}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(v1(&text).unwrap().event.as_str(), Some("e"));
}

#[test]
fn v1_object() {
    let m = v1(r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#).unwrap();
    assert!(m.join_ref.is_null());
    assert_eq!(m.msg_ref, RawJson::from_string("1"));
    assert_eq!(m.topic.as_str(), Some("room:lobby"));
    assert_eq!(m.event.as_str(), Some("phx_join"));
    assert_eq!(m.payload, json("{}"));
}

#[test]
fn v1_null_fields_extra_keys_and_join_ref() {
    let m = v1(r#"{"ref":null,"payload":null,"event":null,"topic":null,"x":{"ref":1}}"#).unwrap();
    assert!(m.msg_ref.is_null() && m.join_ref.is_null());
    assert_eq!(m.topic, Name::Other(RawJson::null()));
    assert_eq!(m.event, Name::Other(RawJson::null()));
    assert_eq!(m.payload, json("null"));
    let m =
        v1(r#"{"join_ref":5,"topic":"t","event":"e","payload":[1],"ref":6,"ref":"7"}"#).unwrap();
    assert_eq!(m.join_ref, raw("5"));
    assert_eq!(m.msg_ref, RawJson::from_string("7"), "last duplicate wins");
    assert_eq!(m.payload, json("[1]"));
}

#[test]
fn error_not_json() {
    for bad in [
        "",
        "[",
        "[1,2",
        "{\"a\"}",
        "nul",
        "[1] x",
        "[\"\\x\"]",
        " ",
        // Malformed numbers fail in simd-json as numbers, then in serde_json.
        "[01]",
        "[1.]",
        "[-]",
        "[1e]",
        "[.5]",
        "[+1]",
        "[99999999999999999999,",
        "[1e999] x",
        "[1e999,\"\\x\"]",
        "[1e999,\"\u{1}\"]",
    ] {
        assert!(matches!(v2(bad), Err(DecodeError::NotJson(_))), "{bad:?}");
        assert!(matches!(v1(bad), Err(DecodeError::NotJson(_))), "{bad:?}");
    }
    // Valid JSON (a number too big for simd-json), just not a message.
    assert_eq!(v2("1e999999"), Err(DecodeError::NotArray));
    assert_eq!(v1("1e999999"), Err(DecodeError::NotObject));
}

#[test]
fn error_invalid_utf8() {
    let mut text = b"[null,null,\"\xff\",\"e\",{}]".to_vec();
    assert_eq!(
        decode_text(Serializer::V2, &mut text),
        Err(DecodeError::InvalidUtf8)
    );
    assert_eq!(
        DecodeError::InvalidUtf8.to_string(),
        "text is not valid UTF-8"
    );
}

#[test]
fn error_v2_shape() {
    assert_eq!(v2(r#"{"topic":"t"}"#), Err(DecodeError::NotArray));
    assert_eq!(v2("\"x\""), Err(DecodeError::NotArray));
    assert_eq!(v2("[]"), Err(DecodeError::TooFewElements(0)));
    assert_eq!(
        v2(r#"[null,"1","t","e"]"#),
        Err(DecodeError::TooFewElements(4))
    );
    assert_eq!(
        DecodeError::TooFewElements(4).to_string(),
        "expected at least 5 array elements, got 4"
    );
}

#[test]
fn error_v1_shape() {
    // A V2 array on a V1 connection: Phoenix's "expected a map".
    assert_eq!(v1(r#"[null,"1","t","e",{}]"#), Err(DecodeError::NotObject));
    assert_eq!(v1("7"), Err(DecodeError::NotObject));
    let full = [
        ("topic", r#""t""#),
        ("event", r#""e""#),
        ("payload", "{}"),
        ("ref", "null"),
    ];
    for (missing, _) in full {
        let fields: Vec<String> = full
            .iter()
            .filter(|(k, _)| *k != missing)
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let text = format!("{{{}}}", fields.join(","));
        assert_eq!(v1(&text), Err(DecodeError::MissingKey(missing)), "{text}");
    }
    assert_eq!(
        DecodeError::MissingKey("ref").to_string(),
        "missing key \"ref\""
    );
}

fn payload_text(m: &ClientMessage) -> &str {
    match &m.payload {
        Payload::Json(p) => std::str::from_utf8(p).unwrap(),
        Payload::Binary(_) => panic!("json payload"),
    }
}

#[test]
fn lone_surrogate_escapes_are_refused_anywhere() {
    let unpaired = |unit| Err(DecodeError::UnpairedSurrogate(unit));
    for (text, unit) in [
        // Topic: would otherwise join "room:\u0000x".
        (r#"["1","1","room:\ud800x","phx_join",{}]"#, 0xd800),
        // Payload: would otherwise be relayed as "\u0000".
        (r#"["1","2","room:x","msg",{"s":"\ud800"}]"#, 0xd800),
        // Lone low half, in a key.
        (r#"["1","2","room:x","msg",{"\udc00":1}]"#, 0xdc00),
        // Reversed pair.
        (r#"["1","2","room:x","msg",{"s":"\ude00\ud83d"}]"#, 0xde00),
        // A high half before a non-low escape (simd-json made U+10400).
        (r#"["1","2","room:x","msg",{"s":"\ud800\ue000"}]"#, 0xd800),
        // In a ref, and in an ignored extra element.
        (r#"["\udbff","2","room:x","msg",{}]"#, 0xdbff),
        (r#"["1","2","room:x","msg",{},"\udfff"]"#, 0xdfff),
        // Alongside a number that takes the verbatim path.
        (
            r#"["1","2","room:x","msg",{"n":1e999,"s":"\ud800"}]"#,
            0xd800,
        ),
    ] {
        assert_eq!(v2(text), unpaired(unit), "{text}");
    }
    let v1_text = r#"{"topic":"room:\ud800x","event":"phx_join","payload":{},"ref":"1"}"#;
    assert_eq!(v1(v1_text), unpaired(0xd800));
    // Refused like invalid UTF-8: close 1007, not 1011.
    assert_eq!(DecodeError::UnpairedSurrogate(0xd800).close_code(), 1007);
    assert_eq!(DecodeError::InvalidUtf8.close_code(), 1007);
    assert_eq!(DecodeError::NotArray.close_code(), 1011);
    assert_eq!(DecodeError::NotJson(String::new()).close_code(), 1011);
    assert_eq!(
        DecodeError::UnpairedSurrogate(0xdc00).to_string(),
        r"string escape \udc00 is an unpaired UTF-16 surrogate"
    );
}

#[test]
fn surrogate_pairs_and_escaped_backslashes_are_kept() {
    let m = v2(r#"["1","2","room:\ud83d\ude00","msg",{"s":"\ud83d\ude00\uDBFF\uDFFF"}]"#).unwrap();
    assert_eq!(m.topic.as_str(), Some("room:😀"));
    assert_eq!(payload_text(&m), "{\"s\":\"😀\u{10ffff}\"}");
    // `\\ud800` is an escaped backslash, then the text "ud800".
    let m = v2(r#"["1","2","room:\\ud800x","msg",{"s":"\\udc00","t":"\\\ud83d\ude00"}]"#).unwrap();
    assert_eq!(m.topic.as_str(), Some(r"room:\ud800x"));
    assert_eq!(payload_text(&m), r#"{"s":"\\udc00","t":"\\😀"}"#);
}

#[test]
fn big_numbers_are_relayed_verbatim() {
    let two_200 = "1606938044258990275541962092341162602522202993782792835301376";
    for number in [
        "99999999999999999999",
        "18446744073709551616",
        "-9223372036854775809",
        two_200,
        "1e309",
        "-1e309",
        "1E400",
        "1.7976931348623159e308",
        "-1e-400",
        "1e-400",
        "2e-324",
        "1.0e2",
        "2E2",
        "1e+2",
        "100e-2",
        "1.00",
        "-0",
        "-0.0",
        "-0e0",
        "0.0",
        "1e5",
        "123456789012345678901234567890.5",
        "0.30000000000000004",
    ] {
        let payload = format!(r#"{{"n":{number},"a":[{number}]}}"#);
        let text = format!(r#"["1","2","room:x","msg",{payload}]"#);
        let m = v2(&text).unwrap_or_else(|e| panic!("{number}: {e}"));
        assert_eq!(payload_text(&m), payload, "{number}");
        let text = format!(r#"{{"topic":"room:x","event":"msg","payload":{payload},"ref":"2"}}"#);
        let m = v1(&text).unwrap_or_else(|e| panic!("{number}: {e}"));
        assert_eq!(payload_text(&m), payload, "{number}");
    }
}

#[test]
fn integers_that_fit_stay_on_the_tape_path_and_verbatim() {
    for number in [
        "0",
        "-1",
        "7",
        "18446744073709551615",
        "-9223372036854775808",
    ] {
        let payload = format!(r#"{{"n":{number}}}"#);
        let mut text = format!(r#"["1","2","room:x","msg",{payload}]"#).into_bytes();
        let tape = simd_json::to_tape(&mut text).unwrap();
        assert!(!has_inexact_number(&tape.0), "{number}");
        let m = v2(&format!(r#"["1","2","room:x","msg",{payload}]"#)).unwrap();
        assert_eq!(payload_text(&m), payload);
    }
}

#[test]
fn verbatim_path_mirrors_the_tape_path() {
    // Each message decoded once as it is (tape path) and once with a big
    // number added in an ignored place (verbatim path): same result.
    let cases = [
        (
            Serializer::V2,
            r#" [ "1" , 7 , "room:\u00e9\/x" , "e\\" , { "k\t" : [ "\u0041\n" , true , null , { } ] } , 6 ] "#,
        ),
        (Serializer::V2, r#"[{"a" : 1},[true, false],42,null,"p"]"#),
        (
            Serializer::V2,
            r#"[null,null,{"t":[]},["e",{}],{"z":1,"a":2,"z":3}]"#,
        ),
        (
            Serializer::V1,
            r#"{"join_ref":5,"topic":"t","event":"e","payload":[1],"ref":6,"ref":"7"}"#,
        ),
        (
            Serializer::V1,
            r#"{ "ref" : null , "payload" : null , "event" : null , "topic" : null }"#,
        ),
        (
            Serializer::V1,
            r#"{"t\u006fpic":"a\"b","event":"e","payload":{"x" : "\u00e9"},"ref":[1, 2]}"#,
        ),
    ];
    for (serializer, text) in cases {
        let fast = decode_text(serializer, &mut text.as_bytes().to_vec()).unwrap();
        let slow = match serializer {
            Serializer::V2 => format!("{}, 1e999]", text.trim().strip_suffix(']').unwrap()),
            Serializer::V1 => {
                format!("{}, \"x\": 1e999}}", text.trim().strip_suffix('}').unwrap())
            }
        };
        let verbatim = decode_text(serializer, &mut slow.into_bytes()).unwrap();
        assert_eq!(fast, verbatim, "{text}");
    }
    // Errors too.
    for (text, error) in [
        ("[1e999]", DecodeError::TooFewElements(1)),
        (r#"{"a":1e999}"#, DecodeError::NotArray),
    ] {
        assert_eq!(v2(text), Err(error), "{text}");
    }
    assert_eq!(v1("[1e999]"), Err(DecodeError::NotObject));
    assert_eq!(
        v1(r#"{"topic":"t","event":"e","ref":1e999}"#),
        Err(DecodeError::MissingKey("payload"))
    );
    let mut text = b"[1e999,\"\xff\"]".to_vec();
    assert_eq!(
        decode_text(Serializer::V2, &mut text),
        Err(DecodeError::InvalidUtf8)
    );
}

#[test]
fn numbers_in_refs_and_names_are_verbatim_too() {
    let m = v2(r#"[1.0e2,-0,1e999,99999999999999999999,{"a":1E400}]"#).unwrap();
    assert_eq!(m.join_ref, raw("1.0e2"));
    assert_eq!(m.msg_ref, raw("-0"));
    assert_eq!(m.topic, Name::Other(raw("1e999")));
    assert_eq!(m.event, Name::Other(raw("99999999999999999999")));
    assert_eq!(m.payload, json(r#"{"a":1E400}"#));
}

/// `decode_text` re-parses the text simd-json was given when the tape
/// cannot hold a number; that relies on simd-json writing to the text
/// only to unescape strings (text with escapes is copied first).
#[test]
fn simd_json_leaves_text_without_escapes_intact() {
    let text = r#"[ "1" , "2" , "room:é☃" , "msg" , { "s" : "a b", "f" : 1.0e2, "n": [-0, 1, true, null, {}] } ]"#.as_bytes();
    let mut parsed = text.to_vec();
    assert!(simd_json::to_tape(&mut parsed).is_ok());
    assert_eq!(parsed, text);
    let mut parsed = b"[\"x y\", 99999999999999999999]".to_vec();
    assert!(simd_json::to_tape(&mut parsed).is_err());
    assert_eq!(parsed, b"[\"x y\", 99999999999999999999]");
    // With escapes it does write, hence the copy.
    let mut parsed = br#"["a\nb", 1.5]"#.to_vec();
    assert!(simd_json::to_tape(&mut parsed).is_ok());
    assert_ne!(parsed, br#"["a\nb", 1.5]"#);
    let m = v2(r#"["a\nb","\"","t\\","e",{"s":"x\ty","f":1.50}]"#).unwrap();
    assert_eq!(m.join_ref, RawJson::from_string("a\nb"));
    assert_eq!(m.event.as_str(), Some("e"));
    assert_eq!(payload_text(&m), r#"{"s":"x\ty","f":1.50}"#);
}
