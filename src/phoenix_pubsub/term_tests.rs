//! Tests of `term.rs`.

use super::*;
use crate::phoenix_pubsub::testkit::{
    all_fixtures, erl, erl_term_to_binary, fixture, parse_byte_list,
};

fn atom(name: &str) -> Term {
    Term::Atom(name.to_owned())
}

fn bin(text: &str) -> Term {
    Term::Binary(text.as_bytes().to_vec())
}

#[test]
fn every_fixture_decodes() {
    let fixtures = all_fixtures();
    assert_eq!(fixtures.len(), 14, "the README lists 14 fixture files");
    for (name, bytes) in fixtures {
        if let Err(err) = decode(&bytes) {
            panic!("{name}: {err}");
        }
    }
}

#[test]
fn a_captured_broadcast_decodes_to_its_term() {
    let term = decode(&fixture("captured/http-broadcast")).unwrap();
    let message = Term::Map(vec![
        (atom("__struct__"), atom("Elixir.Phoenix.Socket.Broadcast")),
        (atom("event"), bin("new_msg")),
        (
            atom("payload"),
            Term::Map(vec![(bin("body"), bin("hi")), (bin("n"), Term::Int(1))]),
        ),
        (atom("topic"), bin("room:lobby")),
    ]);
    let expected = Term::Tuple(vec![
        Term::Int(3),
        atom("except"),
        atom("phoenix_peer_4002"),
        bin("room:lobby"),
        message,
        atom("Elixir.Phoenix.Channel.Server"),
    ]);
    assert_eq!(term, expected);
}

#[test]
fn presence_gossip_decodes_with_its_pids_opaque() {
    let term = decode(&fixture("captured/tracker-heartbeat-1")).unwrap();
    fn contains_pid(term: &Term) -> bool {
        match term {
            Term::Opaque(Opaque::Pid) => true,
            Term::List(items) | Term::Tuple(items) => items.iter().any(contains_pid),
            Term::Map(pairs) => pairs
                .iter()
                .any(|(k, v)| contains_pid(k) || contains_pid(v)),
            _ => false,
        }
    }
    assert!(contains_pid(&term), "{term:?}");
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for (name, bytes) in all_fixtures() {
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{name} cut to {len} bytes");
        }
    }
}

#[test]
fn corrupted_fixtures_never_panic() {
    // Every byte of every fixture set to values that make lengths,
    // tags and counts extreme; any outcome but a panic is fine.
    for (_, bytes) in all_fixtures() {
        for i in 0..bytes.len() {
            for value in [0, 1, 0x50, 0x6a, 0x7f, 0x80, 0xfe, 0xff] {
                let mut corrupted = bytes.clone();
                corrupted[i] = value;
                let _ = decode(&corrupted);
            }
        }
    }
}

#[test]
fn huge_declared_lengths_are_refused_before_anything_is_reserved() {
    let max = [0xff, 0xff, 0xff, 0xff];
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            [&[131, tag::BINARY][..], &max].concat(),
            count_error(u32::MAX, 0),
        ),
        (
            [&[131, tag::LIST][..], &max, &[106]].concat(),
            count_error(u32::MAX, 1),
        ),
        (
            [&[131, tag::LARGE_TUPLE][..], &max].concat(),
            count_error(u32::MAX, 0),
        ),
        (
            [&[131, tag::MAP][..], &max, &[97, 1]].concat(),
            count_error(u32::MAX, 2),
        ),
        (
            vec![131, tag::STRING, 0xff, 0xff, 1],
            count_error(0xffff, 1),
        ),
        (vec![131, tag::SMALL_TUPLE, 200, 106], count_error(200, 1)),
        (
            [&[131, tag::LARGE_BIG][..], &max, &[0]].concat(),
            DecodeError::BigTooLarge(u32::MAX.into()),
        ),
        (
            vec![131, tag::ATOM, 0xff, 0xff, b'a'],
            DecodeError::Truncated,
        ),
        (
            [&[131, tag::BIT_BINARY][..], &max, &[3]].concat(),
            count_error(u32::MAX, 0),
        ),
        (
            [&[131, tag::NEW_FUN][..], &max].concat(),
            count_error(u32::MAX - 4, 0),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode(&bytes), Err(expected), "{bytes:?}");
    }
}

fn count_error(count: u32, left: usize) -> DecodeError {
    DecodeError::CountTooLarge {
        count: count.into(),
        left,
    }
}

#[test]
fn limits_on_size_depth_and_terms() {
    let too_large = vec![131; MAX_INPUT_BYTES + 1];
    assert_eq!(
        decode(&too_large),
        Err(DecodeError::TooLarge {
            len: MAX_INPUT_BYTES + 1,
            max: MAX_INPUT_BYTES
        })
    );

    // Lists nested `depth` deep, the innermost empty.
    let nested = |depth: usize| {
        let mut bytes = vec![131];
        for _ in 1..depth {
            bytes.extend_from_slice(&[tag::LIST, 0, 0, 0, 1]);
        }
        bytes.push(tag::NIL);
        bytes.extend(std::iter::repeat_n(tag::NIL, depth - 1));
        bytes
    };
    assert!(decode(&nested(MAX_DEPTH)).is_ok());
    assert_eq!(decode(&nested(MAX_DEPTH + 1)), Err(DecodeError::TooDeep));
    // Far deeper than the stack could take if depth were not checked.
    assert_eq!(decode(&nested(1_000_000)), Err(DecodeError::TooDeep));

    // A list of `n` empty lists: n terms of one byte each.
    let flat = |n: usize| {
        let mut bytes = vec![131, tag::LIST];
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(tag::NIL, n + 1));
        bytes
    };
    assert!(decode(&flat(MAX_TERMS)).is_ok());
    assert_eq!(decode(&flat(MAX_TERMS + 1)), Err(DecodeError::TooManyTerms));
}

#[test]
fn nesting_built_by_erlang_hits_the_same_limit() {
    let nested = |depth: usize| {
        erl_term_to_binary(
            &format!(
                "lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, {}))",
                depth - 1
            ),
            "[]",
        )
    };
    assert!(decode(&nested(MAX_DEPTH)).is_ok());
    assert_eq!(decode(&nested(MAX_DEPTH + 1)), Err(DecodeError::TooDeep));
}

#[test]
fn a_zlib_bomb_stops_at_the_declared_size() {
    // 64 MiB of zeros deflate to about 64 KiB.
    let bomb =
        erl("io:format(\"~w\", [binary_to_list(zlib:compress(binary:copy(<<0>>, 1 bsl 26)))])");
    let bomb = parse_byte_list(&bomb);
    let with_size = |size: u32| [&[131, tag::COMPRESSED][..], &size.to_be_bytes(), &bomb].concat();

    // Declaring the truth is refused without inflating anything.
    assert_eq!(
        decode(&with_size(1 << 26)),
        Err(DecodeError::InflatedTooLarge(1 << 26))
    );
    // Declaring less stops one byte past it.
    assert_eq!(
        decode(&with_size(1000)),
        Err(DecodeError::InflatedSize {
            declared: 1000,
            actual: 1001
        })
    );
    assert_eq!(
        decode(&with_size(MAX_INFLATED_BYTES as u32)),
        Err(DecodeError::InflatedSize {
            declared: MAX_INFLATED_BYTES as u32,
            actual: MAX_INFLATED_BYTES + 1
        })
    );
    // Not zlib at all.
    assert!(matches!(
        decode(&[131, tag::COMPRESSED, 0, 0, 0, 4, 1, 2, 3, 4]),
        Err(DecodeError::Zlib(_))
    ));
}

#[test]
fn compressed_terms_at_every_level_decode_as_uncompressed() {
    let term = "{3, except, phoenix_app_1, <<\"room:lobby\">>, \
                #{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast', event => <<\"e\">>, \
                topic => <<\"room:lobby\">>, \
                payload => #{<<\"body\">> => binary:copy(<<\"squeeze \">>, 50), <<\"n\">> => lists:seq(1, 300)}}, \
                'Elixir.Phoenix.Channel.Server'}";
    let output = erl(&format!(
        "T = {term}, [io:format(\"~w~n\", [binary_to_list(term_to_binary(T, [{{compressed, L}}]))]) \
         || L <- lists:seq(0, 9)]"
    ));
    let mut levels = output.lines().map(parse_byte_list);
    let plain = decode(&levels.next().expect("level 0")).unwrap();
    for (level, bytes) in (1..=9).zip(levels) {
        assert_eq!(bytes[..2], [131, tag::COMPRESSED], "level {level}");
        assert_eq!(decode(&bytes).unwrap(), plain, "level {level}");
    }
}

#[test]
fn atoms_in_all_four_encodings() {
    let names = ["cinder-1", "Zoë", "😀", "Elixir.Phoenix.Channel.Server"];
    let list = "['cinder-1', 'Zo\\x{EB}', '\\x{1F600}', 'Elixir.Phoenix.Channel.Server']";
    let expected = Term::List(names.iter().map(|name| atom(name)).collect());

    // OTP 26 writes UTF-8 atoms (119), as OTP 25 does with minor_version 2.
    let utf8 = erl_term_to_binary(list, "[{minor_version, 2}]");
    assert_eq!(decode(&utf8).unwrap(), expected);
    assert_eq!(utf8[6..8], [tag::SMALL_ATOM_UTF8, 8]);
    // OTP 25's default: Latin-1 atoms as ATOM_EXT (100), `Zoë` included.
    let latin1 = erl_term_to_binary(list, "[]");
    assert_eq!(decode(&latin1).unwrap(), expected);
    assert!(latin1
        .windows(6)
        .any(|w| w == [tag::ATOM, 0, 3, b'Z', b'o', 0xeb]));

    // The two tags no current OTP writes, and one over 255 bytes.
    assert_eq!(
        decode(&[131, tag::SMALL_ATOM, 2, b'o', 0xeb]).unwrap(),
        atom("oë")
    );
    assert_eq!(
        decode(&[131, tag::ATOM_UTF8, 0, 2, 0xc3, 0xab]).unwrap(),
        atom("ë")
    );
    let long = "é".repeat(200);
    let bytes = erl_term_to_binary(
        "list_to_atom(lists:duplicate(200, 233))",
        "[{minor_version, 2}]",
    );
    assert_eq!(bytes[1], tag::ATOM_UTF8);
    assert_eq!(decode(&bytes).unwrap(), atom(&long));

    assert_eq!(
        decode(&[131, tag::ATOM_UTF8, 0, 1, 0xe9]),
        Err(DecodeError::Malformed("atom: not UTF-8"))
    );
    let mut too_long = vec![131, tag::ATOM, 1, 0];
    too_long.extend(std::iter::repeat_n(b'a', 256));
    assert_eq!(
        decode(&too_long),
        Err(DecodeError::Malformed("atom: too long"))
    );
}

#[test]
fn integers_of_every_size_keep_every_digit() {
    let values = [
        "0",
        "255",
        "256",
        "-1",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "123456789012345678901234567890",
        "-(1 bsl 2000)",
        "(1 bsl 2048) - 1",
    ];
    let list = format!("[{}]", values.join(","));
    let printed = erl(&format!("io:format(\"~w\", [{list}])"));
    let printed: Vec<&str> = printed.trim_matches(['[', ']']).split(',').collect();
    let Term::List(decoded) = decode(&erl_term_to_binary(&list, "[]")).unwrap() else {
        panic!("not a list");
    };
    assert_eq!(decoded.len(), printed.len());
    for (term, text) in decoded.iter().zip(printed) {
        match term {
            Term::Int(value) => assert_eq!(value.to_string(), text),
            Term::BigInt(digits) => {
                assert_eq!(digits, text);
                assert!(text.parse::<i64>().is_err(), "{text} fits 64 bits");
            }
            other => panic!("{other:?}"),
        }
    }
    // 2^2048 needs 257 bytes.
    assert_eq!(
        decode(&erl_term_to_binary("1 bsl 2048", "[]")),
        Err(DecodeError::BigTooLarge(257))
    );
    // A zero-length bignum is 0, any non-zero sign byte negative.
    assert_eq!(decode(&[131, tag::SMALL_BIG, 0, 0]).unwrap(), Term::Int(0));
    assert_eq!(
        decode(&[131, tag::SMALL_BIG, 1, 2, 5]).unwrap(),
        Term::Int(-5)
    );
}

#[test]
fn floats_new_and_old() {
    assert_eq!(
        decode(&erl_term_to_binary("1.5", "[]")).unwrap(),
        Term::Float(1.5)
    );
    let old = erl_term_to_binary("-3.25e-10", "[{minor_version, 0}]");
    assert_eq!(old[1], tag::FLOAT);
    assert_eq!(decode(&old).unwrap(), Term::Float(-3.25e-10));
    let nan = [&[131, tag::NEW_FLOAT][..], &f64::NAN.to_be_bytes()].concat();
    assert_eq!(decode(&nan), Err(DecodeError::BadFloat));
    let infinity = [&[131, tag::NEW_FLOAT][..], &f64::INFINITY.to_be_bytes()].concat();
    assert_eq!(decode(&infinity), Err(DecodeError::BadFloat));
}

#[test]
fn pids_ports_references_funs_and_bitstrings_are_opaque() {
    let list =
        "[self(), make_ref(), hd(erlang:ports()), fun() -> ok end, fun lists:map/2, <<1:3>>]";
    let kinds = [
        Opaque::Pid,
        Opaque::Reference,
        Opaque::Port,
        Opaque::Fun,
        Opaque::Fun,
        Opaque::Bitstring,
    ];
    let expected = Term::List(kinds.into_iter().map(Term::Opaque).collect());
    for options in ["[]", "[{minor_version, 2}]"] {
        assert_eq!(
            decode(&erl_term_to_binary(list, options)).unwrap(),
            expected
        );
    }
    // The older layouts no current OTP writes.
    let node = [tag::SMALL_ATOM, 1, b'n'];
    for (tag, tail) in [
        (tag::PID, 9),
        (tag::PORT, 5),
        (tag::NEW_PORT, 8),
        (tag::REFERENCE, 5),
    ] {
        let bytes = [&[131, tag][..], &node, &vec![0; tail]].concat();
        assert!(matches!(decode(&bytes), Ok(Term::Opaque(_))), "tag {tag}");
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }
    let pid_without_node = [131, tag::NEW_PID, tag::SMALL_INTEGER, 1];
    assert!(matches!(
        decode(&pid_without_node),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn whole_byte_bit_binaries_are_binaries() {
    assert_eq!(
        decode(&[131, tag::BIT_BINARY, 0, 0, 0, 1, 8, 255]).unwrap(),
        Term::Binary(vec![255])
    );
    assert_eq!(
        decode(&[131, tag::BIT_BINARY, 0, 0, 0, 0, 0]).unwrap(),
        Term::Binary(vec![])
    );
    assert_eq!(
        decode(&[131, tag::BIT_BINARY, 0, 0, 0, 1, 9, 255]),
        Err(DecodeError::Malformed("bitstring: bit count"))
    );
}

#[test]
fn other_refusals() {
    assert_eq!(decode(&[]), Err(DecodeError::Truncated));
    assert_eq!(decode(&[130, 106]), Err(DecodeError::Version(130)));
    assert_eq!(decode(&[131, 1]), Err(DecodeError::UnknownTag(1)));
    let improper = erl_term_to_binary("[1 | 2]", "[]");
    assert_eq!(decode(&improper), Err(DecodeError::ImproperList));
    assert!(matches!(
        decode(&[131, tag::ATOM_CACHE_REF, 0]),
        Err(DecodeError::Unsupported { tag: 82, .. })
    ));
    // As `binary_to_term/1`, bytes after the term are ignored.
    assert_eq!(
        decode(&[131, tag::SMALL_INTEGER, 1, 0, 0]).unwrap(),
        Term::Int(1)
    );
    // Charlists are kept as their bytes.
    assert_eq!(
        decode(&erl_term_to_binary("\"abc\"", "[]")).unwrap(),
        Term::Charlist(b"abc".to_vec())
    );
}
