//! A pre-scan of a text frame's `\u` escapes for unpaired UTF-16
//! surrogates, before simd-json sees the text.
//!
//! simd-json does not reject them consistently: a lone high surrogate
//! (`"\ud800"`) becomes U+0000, a high one followed by any `\u` escape above
//! the low range (`"\ud800\ue000"`) becomes some unrelated astral character,
//! and only a lone low one is an error. Either silent case would alias topics
//! (`room:\ud800x` joining `room:\u0000x`) and change relayed data, so every
//! such escape is refused here, the same way as invalid UTF-8 (close 1007):
//! the escape names no character, exactly like an invalid byte sequence.

use super::DecodeError;

/// The high (leading) half of a surrogate pair.
const HIGH: std::ops::RangeInclusive<u16> = 0xD800..=0xDBFF;
/// The low (trailing) half of a surrogate pair.
const LOW: std::ops::RangeInclusive<u16> = 0xDC00..=0xDFFF;

/// Checks that every `\u` surrogate escape in `text` is a high one directly
/// followed by a `\u` low one. Anything else about the escapes (bad hex,
/// unknown letters) is left for the JSON parser to reject.
///
/// Backslashes are taken in pairs from the left, as the parser does: in valid
/// JSON every backslash is inside a string and starts an escape, so the
/// backslash of an escaped backslash (`\\u0041`) is consumed with it and the
/// `u` after it is plain text.
pub(super) fn check_surrogate_escapes(text: &[u8]) -> Result<(), DecodeError> {
    let mut at = 0;
    while let Some(offset) = text
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let escape = at + offset;
        // `\"`, `\\`, `\n`...: two bytes; `\uXXXX`: six.
        at = escape + 2;
        if text.get(escape + 1) != Some(&b'u') {
            continue;
        }
        let Some(unit) = hex4(text, escape + 2) else {
            continue;
        };
        at = escape + 6;
        if LOW.contains(&unit) {
            return Err(DecodeError::UnpairedSurrogate(unit));
        }
        if HIGH.contains(&unit) {
            let low = match text.get(at..at + 2) {
                Some(b"\\u") => hex4(text, at + 2),
                _ => None,
            };
            match low {
                Some(low) if LOW.contains(&low) => at += 6,
                _ => return Err(DecodeError::UnpairedSurrogate(unit)),
            }
        }
    }
    Ok(())
}

/// The four hex digits at `at` as a UTF-16 code unit.
fn hex4(text: &[u8], at: usize) -> Option<u16> {
    let digits = text.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |unit, &b| {
        let digit = char::from(b).to_digit(16)?;
        // `to_digit(16) < 16`, so the cast cannot truncate.
        Some(unit << 4 | digit as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), DecodeError> {
        check_surrogate_escapes(text.as_bytes())
    }

    #[test]
    fn pairs_and_other_escapes_pass() {
        for ok in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00 \udbff\udfff \ud800\udc00""#,
            r#""\u0000\u00e9\uffff\ud7ff\ue000""#,
            r#""\n\t\"\/\\""#,
            "no escapes at all",
            // Bad hex is the JSON parser's to reject, not a surrogate.
            r#""\uzzzz\u12""#,
            r"\",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn lone_and_misordered_halves_fail() {
        for (bad, unit) in [
            (r#""\ud800""#, 0xd800),
            (r#""room:\ud800x""#, 0xd800),
            (r#""\udbff"#, 0xdbff),
            (r#""\udc00""#, 0xdc00),
            (r#""\uDFFF""#, 0xdfff),
            (r#""\ude00\ud83d""#, 0xde00),
            (r#""\ud800\ud800\udc00""#, 0xd800),
            (r#""\ud800\ue000""#, 0xd800),
            (r#""\ud800\u0041""#, 0xd800),
            (r#""\ud800\n\udc00""#, 0xd800),
            (r#""\ud800\\udc00""#, 0xd800),
            (r#""\ud800\uzzzz""#, 0xd800),
            (r#""ok \ud83d\ude00 then \udc00""#, 0xdc00),
        ] {
            assert_eq!(
                check(bad),
                Err(DecodeError::UnpairedSurrogate(unit)),
                "{bad}"
            );
        }
    }

    #[test]
    fn escaped_backslash_before_u_is_not_an_escape() {
        // `\\` is one escaped backslash; the `ud800` after it is plain text.
        assert_eq!(check(r#""\\ud800""#), Ok(()));
        assert_eq!(check(r#""\\\\udc00 \\\\\\ud83d \ud83d\ude00""#), Ok(()));
        // An odd run: the last backslash does start an escape.
        assert_eq!(
            check(r#""\\\ud800""#),
            Err(DecodeError::UnpairedSurrogate(0xd800))
        );
        // An escaped quote does not end the scan early.
        assert_eq!(
            check(r#""\"\udc00""#),
            Err(DecodeError::UnpairedSurrogate(0xdc00))
        );
    }
}
