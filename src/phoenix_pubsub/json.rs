//! A decoded payload as the JSON text Phoenix would have sent for it.
//!
//! A Phoenix node turns a broadcast's payload into JSON with Jason
//! (`Phoenix.json_library()`, default options); a Cinder node must send
//! the same thing, so this follows Jason's rules rather than inventing its
//! own:
//!
//! | term | JSON |
//! | --- | --- |
//! | map | object; keys: binary as is, atom by name, integer and float as their text, charlist/chardata as its text |
//! | `nil`, `true`, `false` | `null`, `true`, `false` |
//! | other atom | its name, a string |
//! | binary | a string; it must be UTF-8 |
//! | integer | its digits, however many |
//! | float | shortest text that reads back the same, laid out as Erlang prints it (`1.5`, `1.0e20`) |
//! | list, charlist | array (a charlist is integers: `'abc'` is `[97,98,99]`) |
//!
//! Strings are escaped as Jason's default `escape: :json` does: `"`, `\`
//! and control characters (`\b \t \n \f \r` short, the rest `\u00XX`);
//! `/` and non-ASCII text are written as they are.
//!
//! Anything Jason cannot encode is a [`JsonError`], so Cinder drops what
//! Phoenix would have failed on: tuples, pids, ports, references, funs,
//! bitstrings, binaries that are not UTF-8, map keys that are not text,
//! numbers, atoms or chardata, and structs. Jason encodes a few structs
//! itself (`Date`, `Time`, `NaiveDateTime`, `DateTime`, `Decimal`) and
//! others through `@derive Jason.Encoder`, whose options never travel with
//! the term: all of them are refused here ([`JsonError::Struct`]).
//!
//! Map keys are written in the order the term has them (Erlang sorts small
//! maps); Jason's default `maps: :naive` does not check for keys that
//! become the same string (`1` and `"1"`), and neither does this.

use std::io::Write;

use super::term::{Opaque, Term};

/// Why a payload cannot become JSON as Phoenix would send it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The payload is not a map: Cinder broadcasts carry JSON objects.
    #[error("the payload is not a map")]
    NotAnObject,
    /// A tuple: Jason has no encoding for one.
    #[error("Jason cannot encode a tuple")]
    Tuple,
    /// A pid, port, reference, fun or bitstring.
    #[error("Jason cannot encode a {}", .0.as_str())]
    Opaque(Opaque),
    /// A binary (value or key) that is not UTF-8.
    #[error("Jason cannot encode a binary that is not UTF-8")]
    NotUtf8,
    /// A struct: its encoding is up to an implementation this side cannot
    /// see.
    #[error("Jason's encoding of struct {0} is not known here")]
    Struct(String),
    /// A map key that is not a binary, atom, number or chardata
    /// (`String.Chars` fails on it).
    #[error("a map key of a type Jason cannot turn into a string")]
    Key,
    /// A list used as a map key that is not chardata (code points,
    /// UTF-8 binaries and such lists), which `List.to_string/1` refuses.
    #[error("a list map key that is not chardata")]
    Chardata,
}

/// The JSON text of a broadcast payload, which must be a map.
pub fn payload_to_json(payload: &Term) -> Result<Vec<u8>, JsonError> {
    if !matches!(payload, Term::Map(_)) {
        return Err(JsonError::NotAnObject);
    }
    let mut out = Vec::new();
    write_value(payload, &mut out)?;
    Ok(out)
}

/// Appends the JSON text of any term to `out` (on error, `out` holds a
/// partial value and should be dropped).
pub fn write_value(term: &Term, out: &mut Vec<u8>) -> Result<(), JsonError> {
    match term {
        Term::Atom(name) => match name.as_str() {
            "nil" => out.extend_from_slice(b"null"),
            "true" => out.extend_from_slice(b"true"),
            "false" => out.extend_from_slice(b"false"),
            name => write_string(name, out),
        },
        Term::Binary(bytes) => write_string(utf8(bytes)?, out),
        Term::Int(value) => write_int(*value, out),
        Term::BigInt(digits) => out.extend_from_slice(digits.as_bytes()),
        Term::Float(value) => write_float(*value, out),
        Term::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Term::Charlist(bytes) => {
            out.push(b'[');
            for (i, &byte) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_int(i64::from(byte), out);
            }
            out.push(b']');
        }
        Term::Map(pairs) => {
            if let Some(module) = struct_name(pairs) {
                return Err(JsonError::Struct(module.to_owned()));
            }
            out.push(b'{');
            for (i, (key, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(&key_text(key)?, out);
                out.push(b':');
                write_value(value, out)?;
            }
            out.push(b'}');
        }
        Term::Tuple(_) => return Err(JsonError::Tuple),
        Term::Opaque(kind) => return Err(JsonError::Opaque(*kind)),
    }
    Ok(())
}

/// The module of a struct: a map whose `__struct__` key holds an atom
/// (with anything else there, Elixir dispatches it as a plain map).
fn struct_name(pairs: &[(Term, Term)]) -> Option<&str> {
    pairs.iter().find_map(|(key, value)| match key.as_atom() {
        Some("__struct__") => value.as_atom(),
        _ => None,
    })
}

fn utf8(bytes: &[u8]) -> Result<&str, JsonError> {
    std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)
}

/// A map key as the string Jason writes: binaries and atoms as they are,
/// anything else through `String.Chars.to_string/1`.
fn key_text(key: &Term) -> Result<String, JsonError> {
    Ok(match key {
        Term::Binary(bytes) => utf8(bytes)?.to_owned(),
        // Here `nil`, `true` and `false` are names like any other.
        Term::Atom(name) => name.clone(),
        Term::Int(value) => value.to_string(),
        Term::BigInt(digits) => digits.clone(),
        Term::Float(value) => {
            let mut text = Vec::new();
            write_float(*value, &mut text);
            // `write_float` writes ASCII only.
            String::from_utf8_lossy(&text).into_owned()
        }
        Term::List(_) | Term::Charlist(_) => {
            let mut text = String::new();
            chardata(key, &mut text)?;
            text
        }
        Term::Opaque(kind) => return Err(JsonError::Opaque(*kind)),
        Term::Tuple(_) | Term::Map(_) => return Err(JsonError::Key),
    })
}

/// `List.to_string/1`: code points, UTF-8 binaries and nested lists of
/// them, concatenated.
fn chardata(term: &Term, text: &mut String) -> Result<(), JsonError> {
    match term {
        // A charlist's bytes are code points 0..=255.
        Term::Charlist(bytes) => text.extend(bytes.iter().map(|&b| char::from(b))),
        Term::List(items) => {
            for item in items {
                match item {
                    Term::Int(code) => {
                        let c = u32::try_from(*code)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or(JsonError::Chardata)?;
                        text.push(c);
                    }
                    Term::Binary(bytes) => text.push_str(utf8(bytes)?),
                    Term::List(_) | Term::Charlist(_) => chardata(item, text)?,
                    _ => return Err(JsonError::Chardata),
                }
            }
        }
        _ => return Err(JsonError::Chardata),
    }
    Ok(())
}

fn write_int(value: i64, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// A JSON string with Jason's default escaping.
fn write_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(text.len() + 2);
    out.push(b'"');
    for &byte in text.as_bytes() {
        // Multi-byte UTF-8 sequences never contain bytes below 0x80, so
        // byte-wise escaping leaves them whole.
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// A float as Erlang prints it (`float_to_binary(F, [short])`, which Jason
/// uses, and `io_lib_format:fwrite_g/1`, which older Jason used: they
/// agree): the shortest digits that read back as the same float, written
/// plain (`0.001`, `123.5`, `100.0`) or with an exponent (`1.0e3`,
/// `1.5e-4`), whichever is shorter, plain on a tie. Whole numbers of 2^53
/// and more always take the exponent, as precision is gone there.
pub fn write_float(value: f64, out: &mut Vec<u8>) {
    let digits_text = shortest_digits(value.abs());
    let (mantissa, exponent) = digits_text.split_once('e').unwrap_or((&digits_text, "0"));
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let len = digits.len() as i64;
    let (first, rest) = digits.split_first().unwrap_or((&b'0', &[]));

    let mut scientific = vec![*first, b'.'];
    scientific.extend_from_slice(if rest.is_empty() { b"0" } else { rest });
    scientific.push(b'e');
    scientific.extend_from_slice(exponent.to_string().as_bytes());

    let whole = exponent >= len - 1;
    let plain = if whole {
        let mut text = digits.clone();
        text.resize((exponent + 1) as usize, b'0');
        text.extend_from_slice(b".0");
        text
    } else if exponent >= 0 {
        let (int, frac) = digits.split_at((exponent + 1) as usize);
        [int, b".", frac].concat()
    } else {
        let mut text = b"0.".to_vec();
        text.resize(2 + (-exponent - 1) as usize, b'0');
        text.extend_from_slice(&digits);
        text
    };

    if value.is_sign_negative() {
        out.push(b'-');
    }
    const TWO_POW_53: f64 = 9_007_199_254_740_992.0;
    if plain.len() <= scientific.len() && !(whole && value.abs() >= TWO_POW_53) {
        out.extend_from_slice(&plain);
    } else {
        out.extend_from_slice(&scientific);
    }
}

/// The shortest digits that read back as `value` (`1.5e0`, `1e20`), and
/// of those the closest to it, a tie going to the even digit, as Erlang's
/// printer (Ryu) picks them. Rust's `{:e}` has the right length but may
/// break such a tie upwards (`…562.3` for `…562.25`, where Erlang prints
/// `…562.2`); its fixed-precision formatting rounds exactly, ties to even.
fn shortest_digits(value: f64) -> String {
    let shortest = format!("{value:e}");
    let significant = shortest.split('e').next().map_or(1, |mantissa| {
        mantissa.bytes().filter(u8::is_ascii_digit).count()
    });
    let nearest = format!("{value:.*e}", significant.saturating_sub(1));
    // The nearest may miss `value` where the float's neighbours are not
    // evenly spaced (at powers of two); then the shortest is the answer.
    if nearest.parse::<f64>().ok() == Some(value) {
        nearest
    } else {
        shortest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix_pubsub::testkit::erl;

    fn json(term: &Term) -> Result<String, JsonError> {
        let mut out = Vec::new();
        write_value(term, &mut out)?;
        Ok(String::from_utf8(out).expect("JSON is UTF-8"))
    }

    fn atom(name: &str) -> Term {
        Term::Atom(name.to_owned())
    }

    fn bin(text: &str) -> Term {
        Term::Binary(text.as_bytes().to_vec())
    }

    fn float_text(value: f64) -> String {
        let mut out = Vec::new();
        write_float(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// Floats worth a look, then pseudo-random bit patterns (fixed seed).
    fn float_corpus() -> Vec<f64> {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            1.5,
            3.25,
            0.1,
            0.2,
            0.3,
            1.0 / 3.0,
            2.0 / 3.0,
            100.0,
            1000.0,
            123456.0,
            1234567.0,
            0.001,
            0.0001,
            0.00015,
            1.0e-5,
            1.0e-7,
            1.0e20,
            1.0e21,
            1.0e22,
            1.0e23,
            9007199254740991.0,
            9007199254740992.0,
            9007199254740994.0,
            4503599627370497.0,
            1.2345678901234567e19,
            f64::MAX,
            f64::MIN_POSITIVE,
            5.0e-324,
            f64::EPSILON,
            299792458.0,
            6.02214076e23,
            1.602176634e-19,
        ];
        for exponent in -30..=30 {
            for mantissa in [1.0, 1.5, 2.5, 9.99, 123.456] {
                values.push(mantissa * 10f64.powi(exponent));
            }
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        while values.len() < 20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value = f64::from_bits(state);
            if value.is_finite() {
                values.push(value);
            }
            // Short decimals, the floats payloads actually carry.
            values.push((state % 1_000_000) as f64 / 10f64.powi((state >> 40) as i32 % 12));
        }
        values
    }

    #[test]
    fn floats_print_as_erlang_prints_them() {
        let values = float_corpus();
        let path = std::env::temp_dir().join(format!("cinder-floats-{}.bin", std::process::id()));
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let printed = erl(&format!(
            "{{ok, B}} = file:read_file(\"{}\"), \
             [io:format(\"~s ~s~n\", [float_to_binary(F, [short]), io_lib_format:fwrite_g(F)]) \
              || <<F:64/float>> <= B]",
            path.display()
        ));
        std::fs::remove_file(&path).ok();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), values.len());
        for (value, line) in values.iter().zip(lines) {
            let (short, fwrite_g) = line.split_once(' ').unwrap();
            // Jason uses the first where OTP has it, the second before.
            assert_eq!(short, fwrite_g, "Erlang's two printers differ");
            assert_eq!(float_text(*value), short, "bits {:016x}", value.to_bits());
        }
    }

    #[test]
    fn strings_are_escaped_as_jason_does() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let text = format!("{all_ascii}é/😀\u{2028}");
        let out = json(&bin(&text)).unwrap();
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), text);
        assert!(out.starts_with(
            "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000B\\f\\r\\u000E"
        ));
        assert!(out.contains("\\u001F !\\\"#"));
        assert!(out.contains("[\\\\]"));
        assert!(out.ends_with("~\u{7f}é/😀\u{2028}\""));
    }

    #[test]
    fn values_as_jason_encodes_them() {
        let term = Term::Map(vec![
            (atom("nil"), atom("nil")),
            (atom("t"), atom("true")),
            (atom("f"), atom("false")),
            (atom("a"), atom("some_atom")),
            (
                bin("big"),
                Term::BigInt("-123456789012345678901234567890".into()),
            ),
            (bin("min"), Term::Int(i64::MIN)),
            (bin("float"), Term::Float(1.0e20)),
            (bin("charlist"), Term::Charlist(b"ab".to_vec())),
            (
                bin("list"),
                Term::List(vec![Term::Int(1), bin("two"), Term::List(vec![])]),
            ),
            (bin("empty"), Term::Map(vec![])),
            // `__struct__` holding something other than an atom: a plain map.
            (
                bin("not_struct"),
                Term::Map(vec![(atom("__struct__"), Term::Int(1))]),
            ),
        ]);
        assert_eq!(
            json(&term).unwrap(),
            "{\"nil\":null,\"t\":true,\"f\":false,\"a\":\"some_atom\",\
             \"big\":-123456789012345678901234567890,\"min\":-9223372036854775808,\
             \"float\":1.0e20,\"charlist\":[97,98],\"list\":[1,\"two\",[]],\"empty\":{},\
             \"not_struct\":{\"__struct__\":1}}"
        );
    }

    #[test]
    fn keys_become_strings_as_string_chars_makes_them() {
        let term = Term::Map(vec![
            (Term::Int(-7), Term::Int(0)),
            (Term::BigInt("18446744073709551616".into()), Term::Int(1)),
            (Term::Float(1.5), Term::Int(2)),
            (atom("nil"), Term::Int(3)),
            (Term::Charlist(vec![b'a', 0xe9]), Term::Int(4)),
            (
                Term::List(vec![
                    Term::Int(0x1F600),
                    bin("ü"),
                    Term::List(vec![Term::Int(33)]),
                ]),
                Term::Int(5),
            ),
            (Term::List(vec![]), Term::Int(6)),
            // Keys that end up the same string are both written.
            (bin("1"), Term::Int(7)),
            (Term::Int(1), Term::Int(8)),
        ]);
        assert_eq!(
            json(&term).unwrap(),
            "{\"-7\":0,\"18446744073709551616\":1,\"1.5\":2,\"nil\":3,\"aé\":4,\"😀ü!\":5,\"\":6,\
             \"1\":7,\"1\":8}"
        );
    }

    #[test]
    fn what_jason_cannot_encode_is_refused() {
        let in_map = |value: Term| Term::Map(vec![(bin("k"), value)]);
        let key = |key: Term| Term::Map(vec![(key, Term::Int(1))]);
        let cases = [
            (in_map(Term::Tuple(vec![])), JsonError::Tuple),
            (
                in_map(Term::Opaque(Opaque::Pid)),
                JsonError::Opaque(Opaque::Pid),
            ),
            (in_map(Term::Binary(vec![0xff])), JsonError::NotUtf8),
            (
                in_map(Term::Map(vec![(
                    atom("__struct__"),
                    atom("Elixir.DateTime"),
                )])),
                JsonError::Struct("Elixir.DateTime".into()),
            ),
            (key(Term::Tuple(vec![])), JsonError::Key),
            (key(Term::Map(vec![])), JsonError::Key),
            (
                key(Term::Opaque(Opaque::Reference)),
                JsonError::Opaque(Opaque::Reference),
            ),
            (key(Term::Binary(vec![0xc3])), JsonError::NotUtf8),
            (key(Term::List(vec![atom("a")])), JsonError::Chardata),
            (
                key(Term::List(vec![Term::Int(0xD800)])),
                JsonError::Chardata,
            ),
            (key(Term::List(vec![Term::Int(-1)])), JsonError::Chardata),
        ];
        for (term, expected) in cases {
            assert_eq!(payload_to_json(&term), Err(expected), "{term:?}");
        }
        for not_a_map in [Term::List(vec![]), bin("x"), Term::Int(1), atom("nil")] {
            assert_eq!(payload_to_json(&not_a_map), Err(JsonError::NotAnObject));
        }
    }
}
