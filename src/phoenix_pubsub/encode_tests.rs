//! Tests of `encode.rs`.

use super::*;
use crate::phoenix_pubsub::message::{classify, Ignored};
use crate::phoenix_pubsub::testkit::{erl, erl_binary, NODE};
use serde_json::Value;

const TOPIC: &str = "room:lobby";

fn json(text: &str) -> Payload {
    Payload::Json(text.as_bytes().to_vec())
}

/// The whole term `encode` should write, in Erlang's syntax.
fn expected_term(node: &str, event: &str, payload: &str) -> String {
    format!(
        "{{3, except, {node}, <<\"{TOPIC}\">>, \
         #{{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', event => <<\"{event}\"/utf8>>, \
         payload => {payload}, topic => <<\"{TOPIC}\">>}}, 'Elixir.Phoenix.Channel.Server'}}"
    )
}

/// A case: its name, what is encoded, the payload Erlang must read
/// back, and whether the bytes must be `term_to_binary`'s exactly.
struct Case {
    name: &'static str,
    payload: Payload,
    level: u32,
    erlang: String,
    exact: bool,
}

fn case(name: &'static str, payload: &str, erlang: &str) -> Case {
    Case {
        name,
        payload: json(payload),
        level: 0,
        erlang: erlang.to_owned(),
        exact: true,
    }
}

/// Encodes every case, has `erl` read each back, and checks what it
/// read (and the bytes, where they must match).
fn check_with_erlang(cases: &[Case]) {
    let mut code = String::from(
        "Check = fun(Name, Bin, Expected, Exact) -> \
           Got = binary_to_term(Bin), \
           Bytes = (not Exact) orelse (term_to_binary(Expected, [{minor_version, 2}]) =:= Bin), \
           io:format(\"~s ~p ~p~n\", [Name, Got =:= Expected, Bytes]), \
           Got =:= Expected orelse io:format(\"  read ~p~n\", [Got]) \
         end",
    );
    for case in cases {
        let level = CompressionLevel::new(case.level).unwrap();
        let bytes = encode(NODE, TOPIC, "e", &case.payload, level)
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        code.push_str(&format!(
            ", Check(\"{}\", {}, {}, {})",
            case.name,
            erl_binary(&bytes),
            expected_term("'cinder-1'", "e", &case.erlang),
            case.exact
        ));
    }
    let output = erl(&code);
    for case in cases {
        let line = format!("{} true true", case.name);
        assert!(
            output.lines().any(|l| l == line),
            "{}:\n{output}",
            case.name
        );
    }
}

#[test]
fn erlang_reads_what_phoenix_would_have_decoded() {
    let many_keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    let many_keys_erlang: Vec<String> = (0..40).map(|i| format!("<<\"k{i}\">> => {i}")).collect();
    let mut cases = vec![
        case(
            "simple",
            r#"{"body":"hi","n":1}"#,
            r#"#{<<"body">> => <<"hi">>, <<"n">> => 1}"#,
        ),
        case(
            "integers",
            r#"{"zero":0,"byte":255,"min32":-2147483648,"max32":2147483647,"above32":2147483648,
                "max64":9223372036854775807,"min64":-9223372036854775808,"u64":18446744073709551615,
                "big":123456789012345678901234567890,"negbig":-123456789012345678901234567890,
                "negzero":-0}"#,
            "#{<<\"zero\">> => 0, <<\"byte\">> => 255, <<\"min32\">> => -2147483648, \
              <<\"max32\">> => 2147483647, <<\"above32\">> => 2147483648, \
              <<\"max64\">> => 9223372036854775807, <<\"min64\">> => -9223372036854775808, \
              <<\"u64\">> => 18446744073709551615, <<\"big\">> => 123456789012345678901234567890, \
              <<\"negbig\">> => -123456789012345678901234567890, <<\"negzero\">> => 0}",
        ),
        case(
            "floats",
            r#"{"half":1.5,"e20":1e20,"small":-2.5E-3,"one":1.0,"tenth":0.1,"max":1.7976931348623157e308}"#,
            "#{<<\"half\">> => 1.5, <<\"e20\">> => 1.0e20, <<\"small\">> => -2.5e-3, \
              <<\"one\">> => 1.0, <<\"tenth\">> => 0.1, <<\"max\">> => 1.7976931348623157e308}",
        ),
        case(
            "unicode and escapes",
            r#"{"name":"Zoë 😀","esc":"a\"b\\c\n\u0000\/","ключ":"\u00e9"}"#,
            "#{<<\"name\">> => <<\"Zo\\x{EB} \\x{1F600}\"/utf8>>, \
              <<\"esc\">> => <<\"a\\\"b\\\\c\\n\", 0, \"/\">>, \
              <<\"\\x{43A}\\x{43B}\\x{44E}\\x{447}\"/utf8>> => <<\"\\x{E9}\"/utf8>>}",
        ),
        case(
            "nested and literals",
            r#"{"a":[1,[2,[3,{"b":null}]]],"t":true,"f":false,"n":null,"empty":{},"list":[],
                "bytes":[1,2,255],"mixed":[1,256],"strings":["x","y"],"neg":[-1]}"#,
            "#{<<\"a\">> => [1, [2, [3, #{<<\"b\">> => nil}]]], <<\"t\">> => true, \
              <<\"f\">> => false, <<\"n\">> => nil, <<\"empty\">> => #{}, <<\"list\">> => [], \
              <<\"bytes\">> => [1, 2, 255], <<\"mixed\">> => [1, 256], \
              <<\"strings\">> => [<<\"x\">>, <<\"y\">>], <<\"neg\">> => [-1]}",
        ),
        case(
            "repeated keys: the last wins",
            r#"{"k":1,"j":0,"k":2}"#,
            r#"#{<<"j">> => 0, <<"k">> => 2}"#,
        ),
        case(
            " whitespace",
            " { \"a\" : [ 1 , 2.5 ] , \"b\" : \"\" } ",
            r#"#{<<"a">> => [1, 2.5], <<"b">> => <<>>}"#,
        ),
        Case {
            name: "binary",
            payload: Payload::Binary(vec![0, 1, 2, 255]),
            level: 0,
            erlang: "{binary, <<0, 1, 2, 255>>}".into(),
            exact: true,
        },
        // Erlang orders a map of more than 32 keys by hash: only the
        // term must match.
        Case {
            name: "many keys",
            payload: json(&format!("{{{}}}", many_keys.join(","))),
            level: 0,
            erlang: format!("#{{{}}}", many_keys_erlang.join(", ")),
            exact: false,
        },
    ];
    let body = "compress me ".repeat(200);
    for level in [1, 6, 9] {
        cases.push(Case {
            name: ["compressed 1", "compressed 6", "compressed 9"][level / 4],
            payload: json(&format!(r#"{{"body":"{body}","n":[1,2,3]}}"#)),
            level: level as u32,
            erlang: format!(r#"#{{<<"body">> => <<"{body}">>, <<"n">> => [1, 2, 3]}}"#),
            exact: false,
        });
    }
    check_with_erlang(&cases);
}

#[test]
fn compression_only_when_smaller_as_otp_decides() {
    // Random bytes do not compress; the envelope's repeated atom names
    // do, even around a small payload.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..2000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let payloads = [
        (Payload::Binary(noise), [131, tag::SMALL_TUPLE]),
        (json(r#"{"a":1}"#), [131, tag::COMPRESSED]),
        (
            json(&format!(r#"{{"body":"{}"}}"#, "compress me ".repeat(200))),
            [131, tag::COMPRESSED],
        ),
    ];
    let level = CompressionLevel::new(9).unwrap();
    let mut code = String::from("ok");
    for (payload, start) in &payloads {
        let plain = encode(NODE, TOPIC, "e", payload, CompressionLevel::NONE).unwrap();
        let bytes = encode(NODE, TOPIC, "e", payload, level).unwrap();
        assert_eq!(bytes[..2], *start);
        if bytes[1] == tag::SMALL_TUPLE {
            assert_eq!(bytes, plain);
        }
        // OTP decides the same for the same term.
        code.push_str(&format!(
            ", io:format(\"~w~n\", [binary_to_list(binary:part(term_to_binary(binary_to_term({}), [{{compressed, 9}}]), 0, 2))])",
            erl_binary(&plain)
        ));
    }
    let expected: String = payloads
        .iter()
        .map(|(_, [a, b])| format!("[{a},{b}]\n"))
        .collect();
    assert_eq!(erl(&code), expected);
}

#[test]
fn cinder_reads_back_what_it_writes() {
    let payloads = [
        r#"{"body":"hi","n":1}"#,
        r#"{"big":-123456789012345678901234567890,"f":[1.5,1e20,0.1,-0.0],"u":"Zoë 😀\u0001"}"#,
        r#"{"deep":{"a":[{"b":[[],{}]}]},"t":true,"n":null,"bytes":[0,255]}"#,
    ];
    for text in payloads {
        for level in [0, 1, 9] {
            let level = CompressionLevel::new(level).unwrap();
            let bytes = encode("cinder-2", TOPIC, "évent", &json(text), level).unwrap();
            let incoming = classify(&bytes, NODE).unwrap();
            assert_eq!(
                (incoming.topic.as_str(), incoming.event.as_str()),
                (TOPIC, "évent")
            );
            let Payload::Json(out) = incoming.payload else {
                panic!("binary")
            };
            let out = std::str::from_utf8(&out).unwrap();
            let value = |text: &str| serde_json::from_str::<Value>(text).unwrap();
            assert_eq!(value(out), value(text), "{out}");
            if text.contains("big") {
                assert!(out.contains("-123456789012345678901234567890"), "{out}");
            }
            assert_eq!(classify(&bytes, "cinder-2"), Err(Ignored::OwnEcho));
        }
    }
    let binary = Payload::Binary(vec![0xff, 0, 1]);
    let bytes = encode("cinder-2", TOPIC, "e", &binary, CompressionLevel::NONE).unwrap();
    assert_eq!(classify(&bytes, NODE).unwrap().payload, binary);
}

#[test]
fn node_names_are_utf8_atoms() {
    let long = "ü".repeat(200);
    for node in ["cinder-1", "ñodo", long.as_str()] {
        let bytes = encode(node, TOPIC, "e", &json("{}"), CompressionLevel::NONE).unwrap();
        let atom: String = node
            .chars()
            .map(|c| format!("\\x{{{:X}}}", c as u32))
            .collect();
        let printed = erl(&format!(
            "{{3, except, Node, _, _, _}} = binary_to_term({}), \
             io:format(\"~p\", [Node =:= binary_to_atom(<<\"{atom}\"/utf8>>, utf8)])",
            erl_binary(&bytes)
        ));
        assert_eq!(printed, "true", "{node}");
        assert_eq!(classify(&bytes, node), Err(Ignored::OwnEcho));
    }
    let too_long = "a".repeat(256);
    assert!(matches!(
        encode(&too_long, TOPIC, "e", &json("{}"), CompressionLevel::NONE),
        Err(EncodeError::NodeNameTooLong)
    ));
}

#[test]
fn payloads_that_cannot_be_written() {
    let nested = |levels: usize| format!("{{\"a\":{}{}}}", "[".repeat(levels), "]".repeat(levels));
    // The payload sits 3 deep: its object, then `levels` arrays.
    let deepest = nested(MAX_DEPTH - PAYLOAD_DEPTH);
    let bytes = encode("n", TOPIC, "e", &json(&deepest), CompressionLevel::NONE).unwrap();
    assert!(classify(&bytes, NODE).is_ok());

    let too_large_int = format!("{{\"a\":{}}}", "9".repeat(700));
    let int_2048_bits = format!("{{\"a\":{}}}", "1".repeat(620));
    type Expected = fn(&EncodeError) -> bool;
    let cases: Vec<(Payload, Expected)> = vec![
        (json("[1]"), |e| matches!(e, EncodeError::NotAnObject)),
        (json("\"s\""), |e| matches!(e, EncodeError::NotAnObject)),
        (json("{"), |e| matches!(e, EncodeError::Json(_))),
        (json("{} {}"), |e| matches!(e, EncodeError::Json(_))),
        (Payload::Json(vec![b'{', 0xff, b'}']), |e| {
            matches!(e, EncodeError::NotUtf8)
        }),
        (json(&too_large_int), |e| {
            matches!(e, EncodeError::IntegerTooLarge { .. })
        }),
        (json(&int_2048_bits), |e| {
            matches!(e, EncodeError::IntegerTooLarge { .. })
        }),
        (json(r#"{"a":1e400}"#), |e| {
            matches!(e, EncodeError::FloatOutOfRange(_))
        }),
        (json(&nested(MAX_DEPTH - PAYLOAD_DEPTH + 1)), |e| {
            matches!(e, EncodeError::TooDeep)
        }),
        (json(&nested(100_000)), |e| {
            matches!(e, EncodeError::Json(_) | EncodeError::TooDeep)
        }),
    ];
    for (payload, is_expected) in cases {
        let outcome = encode("n", TOPIC, "e", &payload, CompressionLevel::NONE);
        assert!(outcome.as_ref().is_err_and(is_expected), "{outcome:?}");
    }
    let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_INPUT_BYTES));
    assert!(matches!(
        encode("n", TOPIC, "e", &json(&huge), CompressionLevel::NONE),
        Err(EncodeError::TooLarge(_))
    ));
}

#[test]
fn compression_levels() {
    assert_eq!(CompressionLevel::new(0), Some(CompressionLevel::NONE));
    assert_eq!(CompressionLevel::new(9).map(CompressionLevel::get), Some(9));
    assert_eq!(CompressionLevel::new(10), None);
}
