//! Query strings, decoded the way Phoenix (Plug) decodes them.
//!
//! Connect params travel in the query string of the first request. The JS
//! client percent-encodes keys and values, nests objects with bracket keys
//! (`user%5Bid%5D=1`) and may leave empty segments (`?&b=1`, a trailing `&`).

/// Splits and percent-decodes `query` into key/value pairs, in order.
/// Empty segments are skipped; a segment without `=` has an empty value;
/// `+` is a space; invalid escapes are kept literally.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| match segment.split_once('=') {
            Some((key, value)) => (decode(key), decode(value)),
            None => (decode(segment), String::new()),
        })
        .collect()
}

/// The last value of `key`: with repeated keys the last one wins, as in
/// Plug (the long-poll `token` may appear twice).
pub fn last_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether `key` only appears as a plain key (`vsn=2.0.0`), never with
/// brackets (`vsn[]=x`), which Plug decodes to a list or map rather than a
/// string.
pub fn is_plain_string(pairs: &[(String, String)], key: &str) -> bool {
    pairs
        .iter()
        .all(|(k, _)| !(k.starts_with(key) && k[key.len()..].starts_with('[')))
}

/// Percent-decodes one component; `+` is a space.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        parse_pairs(q)
    }

    #[test]
    fn decodes_like_plug() {
        let cases: [(&str, &[(&str, &str)]); 5] = [
            (
                "token=a%20b&user%5Bid%5D=1&vsn=2.0.0",
                &[("token", "a b"), ("user[id]", "1"), ("vsn", "2.0.0")],
            ),
            ("&b=1&&flag&", &[("b", "1"), ("flag", "")]),
            (
                "a=x+y&b=%zz&c=%4",
                &[("a", "x y"), ("b", "%zz"), ("c", "%4")],
            ),
            ("e=%C3%A9&bad=%FF", &[("e", "é"), ("bad", "\u{fffd}")]),
            ("", &[]),
        ];
        for (query, expected) in cases {
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(pairs(query), expected, "{query:?}");
        }
    }

    #[test]
    fn last_value_wins() {
        let p = pairs("token=app&vsn=2.0.0&token=session");
        assert_eq!(last_value(&p, "token"), Some("session"));
        assert_eq!(last_value(&p, "nope"), None);
    }

    #[test]
    fn bracketed_keys_are_not_plain_strings() {
        assert!(is_plain_string(&pairs("vsn=2.0.0&vsnx=1"), "vsn"));
        assert!(!is_plain_string(&pairs("vsn[]=2.0.0"), "vsn"));
        assert!(!is_plain_string(&pairs("vsn=2.0.0&vsn[a]=1"), "vsn"));
    }
}
