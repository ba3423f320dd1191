//! The Phoenix message model: the five fields of a message, the
//! serializer a connection negotiated, and the JSON string escaper that the
//! encoder and decoder share.

use smallvec::SmallVec;

/// Which serializer a connection negotiated via `vsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn` absent or `1.0.x`: JSON objects, no binary frames.
    V1,
    /// `vsn` `2.0.x`: JSON arrays and V2 binary frames.
    V2,
}

/// A JSON value kept as its encoded text (e.g. `"3"`, `7`, `null`) so refs
/// are echoed unchanged: a number stays a number.
///
/// Refs are short (the JS client sends small integers as strings), so the
/// text lives inline and copying a ref into a reply does not allocate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawJson(SmallVec<[u8; 16]>);

impl RawJson {
    /// The JSON `null`.
    ///
    /// Not a `const fn`: `smallvec`'s const constructors need its
    /// `const_new` feature, which the crate does not enable.
    #[inline]
    pub fn null() -> Self {
        Self(SmallVec::from_slice(b"null"))
    }

    /// Whether this is the JSON `null`.
    #[inline]
    pub fn is_null(&self) -> bool {
        self.0.as_slice() == b"null"
    }

    /// The JSON text.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A JSON string holding `s` (quoted and escaped).
    pub fn from_string(s: &str) -> Self {
        let mut out = SmallVec::new();
        write_json_string_into(&mut out, s);
        Self(out)
    }

    /// Wraps text that is already one valid JSON value. The caller guarantees
    /// validity: the bytes are echoed onto the wire as they are.
    pub fn from_json_text(bytes: &[u8]) -> Self {
        Self(SmallVec::from_slice(bytes))
    }

    /// Builds from bytes the decoder wrote itself, without copying twice.
    pub(crate) fn from_small_vec(bytes: SmallVec<[u8; 16]>) -> Self {
        Self(bytes)
    }

    /// The unescaped string, if this is a JSON string.
    pub fn as_str(&self) -> Option<String> {
        let inner = self.0.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        if !inner.contains(&b'\\') {
            // No escapes: the text between the quotes is the string itself.
            return std::str::from_utf8(inner).ok().map(str::to_owned);
        }
        serde_json::from_slice(&self.0).ok()
    }

    /// Whether this is `null` or `""`: both mean "no join_ref" to the JS
    /// client (a binary frame cannot carry a null).
    pub fn is_null_or_empty_string(&self) -> bool {
        self.is_null() || self.0.as_slice() == b"\"\""
    }
}

/// A topic or event field: normally a string, but a client may send any JSON
/// value (such a topic never matches a channel, yet it must be
/// echoed in the reply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    /// A JSON string, unescaped.
    Str(String),
    /// Any other JSON value, as its compact text.
    Other(RawJson),
}

impl Name {
    /// The string, if the field was a JSON string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Name::Str(s) => Some(s),
            Name::Other(_) => None,
        }
    }

    /// Appends the field as JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Name::Str(s) => write_json_string(out, s),
            Name::Other(raw) => out.extend_from_slice(raw.as_bytes()),
        }
    }
}

/// A message payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Compact JSON text of the value.
    Json(Vec<u8>),
    /// Raw bytes from (or for) a V2 binary frame.
    Binary(Vec<u8>),
}

impl Payload {
    /// Whether this is a JSON object: the only JSON payload Phoenix lets a
    /// push or broadcast carry.
    pub fn is_json_object(&self) -> bool {
        match self {
            Payload::Json(text) => first_non_whitespace(text) == Some(b'{'),
            Payload::Binary(_) => false,
        }
    }

    /// The payload's bytes, JSON text or binary.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Json(bytes) | Payload::Binary(bytes) => bytes,
        }
    }
}

/// The first byte that is not JSON whitespace. Decoded payloads are compact,
/// but payloads from the publish API may not be.
pub(crate) fn first_non_whitespace(text: &[u8]) -> Option<u8> {
    text.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A decoded client→server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// The channel's join_ref as the client sent it (`null` if absent).
    pub join_ref: RawJson,
    /// The message's ref, echoed in the reply.
    pub msg_ref: RawJson,
    /// The topic.
    pub topic: Name,
    /// The event.
    pub event: Name,
    /// The payload: JSON text for text frames, bytes for binary frames.
    pub payload: Payload,
}

/// Where JSON text is written: a `Vec` for messages, an inline buffer for
/// refs. Lets one escaper and one value writer serve both.
pub(crate) trait ByteSink {
    /// Appends bytes.
    fn push_bytes(&mut self, bytes: &[u8]);
    /// Appends one byte.
    #[inline]
    fn push_byte(&mut self, b: u8) {
        self.push_bytes(std::slice::from_ref(&b));
    }
}

impl ByteSink for Vec<u8> {
    #[inline]
    fn push_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<const N: usize> ByteSink for SmallVec<[u8; N]> {
    #[inline]
    fn push_bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Appends `s` as a quoted JSON string, escaping `"`, `\` and control
/// characters as JSON requires. Everything else, including non-ASCII, is
/// copied as UTF-8.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    write_json_string_into(out, s);
}

/// Whether a byte must be escaped inside a JSON string.
#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// [`write_json_string`] into any [`ByteSink`] (refs are built inline).
pub(crate) fn write_json_string_into<S: ByteSink>(out: &mut S, s: &str) {
    let bytes = s.as_bytes();
    out.push_byte(b'"');
    // Topics, events and refs almost never need escaping: one copy.
    let Some(first) = bytes.iter().position(|&b| needs_escape(b)) else {
        out.push_bytes(bytes);
        out.push_byte(b'"');
        return;
    };
    let (clean, rest) = bytes.split_at(first);
    out.push_bytes(clean);
    let mut run_start = 0;
    for (i, &b) in rest.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        // Escapes are all ASCII, so splitting here never cuts a UTF-8 sequence.
        out.push_bytes(rest.get(run_start..i).unwrap_or_default());
        run_start = i + 1;
        match b {
            b'"' => out.push_bytes(b"\\\""),
            b'\\' => out.push_bytes(b"\\\\"),
            b'\n' => out.push_bytes(b"\\n"),
            b'\r' => out.push_bytes(b"\\r"),
            b'\t' => out.push_bytes(b"\\t"),
            0x08 => out.push_bytes(b"\\b"),
            0x0c => out.push_bytes(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_bytes(b"\\u00");
                out.push_byte(HEX[usize::from(b >> 4)]);
                out.push_byte(HEX[usize::from(b & 0x0f)]);
            }
        }
    }
    out.push_bytes(rest.get(run_start..).unwrap_or_default());
    out.push_byte(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaper_fast_path_copies_once() {
        assert_eq!(escaped("room:lobby"), r#""room:lobby""#);
        assert_eq!(escaped(""), r#""""#);
    }

    #[test]
    fn escaper_quotes_backslash_and_controls() {
        assert_eq!(escaped(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escaped("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(escaped("\u{0}\u{1f}x\u{1}"), r#""\u0000\u001fx\u0001""#);
        // DEL and non-ASCII need no escape in JSON.
        assert_eq!(escaped("\u{7f}é☃😀\u{2028}"), "\"\u{7f}é☃😀\u{2028}\"");
        assert_eq!(escaped("é\"😀"), "\"é\\\"😀\"");
    }

    #[test]
    fn escaper_output_parses_back() {
        let nasty = "q\"b\\s/\u{0}\u{1f}\n😀é end";
        let text = escaped(nasty);
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, nasty);
    }

    #[test]
    fn raw_json_null_and_strings() {
        let null = RawJson::null();
        assert!(null.is_null());
        assert!(null.is_null_or_empty_string());
        assert_eq!(null.as_bytes(), b"null");
        assert_eq!(null.as_str(), None);

        let three = RawJson::from_string("3");
        assert_eq!(three.as_bytes(), br#""3""#);
        assert!(!three.is_null());
        assert_eq!(three.as_str().as_deref(), Some("3"));

        let empty = RawJson::from_string("");
        assert!(empty.is_null_or_empty_string());
        assert!(!empty.is_null());

        let escaped = RawJson::from_string("a\"b");
        assert_eq!(escaped.as_bytes(), br#""a\"b""#);
        assert_eq!(escaped.as_str().as_deref(), Some("a\"b"));
    }

    #[test]
    fn raw_json_number_is_not_a_string() {
        let seven = RawJson::from_json_text(b"7");
        assert_eq!(seven.as_bytes(), b"7");
        assert_eq!(seven.as_str(), None);
        assert!(!seven.is_null_or_empty_string());
        assert_ne!(seven, RawJson::from_string("7"));
        // Malformed text (a caller bug) is never a panic.
        assert_eq!(RawJson::from_json_text(b"\"").as_str(), None);
        assert_eq!(RawJson::from_json_text(b"\"\\x\"").as_str(), None);
    }

    #[test]
    fn name_accessors() {
        let s = Name::Str("room:\"1\"".into());
        assert_eq!(s.as_str(), Some("room:\"1\""));
        let mut out = Vec::new();
        s.write_json(&mut out);
        assert_eq!(out, br#""room:\"1\"""#);

        let other = Name::Other(RawJson::from_json_text(b"[1,2]"));
        assert_eq!(other.as_str(), None);
        out.clear();
        other.write_json(&mut out);
        assert_eq!(out, b"[1,2]");
    }

    #[test]
    fn payload_object_check() {
        assert!(Payload::Json(b"{}".to_vec()).is_json_object());
        assert!(Payload::Json(b" \n{\"a\":1}".to_vec()).is_json_object());
        assert!(!Payload::Json(b"[]".to_vec()).is_json_object());
        assert!(!Payload::Json(b"\"{\"".to_vec()).is_json_object());
        assert!(!Payload::Json(Vec::new()).is_json_object());
        assert!(!Payload::Binary(b"{}".to_vec()).is_json_object());
    }
}
