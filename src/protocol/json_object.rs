//! Reading the fields of a JSON object without re-encoding any of them.
//!
//! Presence metas, backend answers and hook bodies pick a few fields out of
//! JSON that a client or the backend wrote, and pass the rest on. Going
//! through `serde_json::Value` for that would change the data: numbers
//! beyond 64 bits become floats, and with serde_json's `raw_value` feature
//! (on in this crate) an object whose first key is
//! `$serde_json::private::RawValue` is read as the text of that key's
//! string, so a client could make the backend or other clients see a value
//! it never sent. A [`JsonObject`] keeps each field's value as the exact
//! text it arrived as.

use crate::protocol::message::write_json_string;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The fields of one JSON object, in the order they came, each value the
/// exact JSON text it was written as. Keys are decoded; values are checked
/// for JSON syntax only (a string value's escapes are not decoded, so text
/// from clients must have passed the message decoder, which refuses lone
/// surrogates).
pub struct JsonObject<'a> {
    fields: Vec<(String, &'a RawValue)>,
}

/// The text was not one JSON object.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct NotAnObject(String);

impl<'a> JsonObject<'a> {
    /// Reads `text`, which must be exactly one JSON object.
    pub fn parse(text: &'a str) -> Result<JsonObject<'a>, NotAnObject> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let object = deserializer
            .deserialize_map(FieldsVisitor)
            .map_err(|e| NotAnObject(e.to_string()))?;
        deserializer.end().map_err(|e| NotAnObject(e.to_string()))?;
        Ok(object)
    }

    /// Reads bytes that must be UTF-8 text holding exactly one JSON object.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<JsonObject<'a>, NotAnObject> {
        let text = std::str::from_utf8(bytes).map_err(|e| NotAnObject(e.to_string()))?;
        JsonObject::parse(text)
    }

    /// The value of field `name`. With duplicate keys the last one counts,
    /// as in every JSON reader that builds a map.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// The value of field `name` when it is itself an object.
    pub fn get_object(&self, name: &str) -> Option<&'a RawValue> {
        self.get(name).filter(|value| is_object(value))
    }

    /// Field `name` as a non-empty string, or a number or boolean written
    /// out as its JSON text (`7`, `1e400`, `true`): the forms an identity
    /// key may take.
    pub fn get_key_text(&self, name: &str) -> Option<String> {
        key_text(self.get(name)?)
    }

    /// Writes this object as JSON without the fields named in `skip` (and
    /// with only the last of duplicate keys), leaving the closing brace off
    /// so the caller can append fields. Returns what was written.
    pub fn write_open(&self, out: &mut Vec<u8>, skip: &[&str]) -> usize {
        let start = out.len();
        out.push(b'{');
        let mut first = true;
        for (index, (key, value)) in self.fields.iter().enumerate() {
            let later_duplicate = self.fields[index + 1..].iter().any(|(k, _)| k == key);
            if later_duplicate || skip.contains(&key.as_str()) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_string(out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.len() - start
    }
}

/// Whether a raw JSON value is an object.
pub fn is_object(value: &RawValue) -> bool {
    value.get().starts_with('{')
}

/// A JSON string (non-empty), number or boolean as key text.
pub fn key_text(value: &RawValue) -> Option<String> {
    let text = value.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text)
            .ok()
            .filter(|s| !s.is_empty()),
        b'-' | b'0'..=b'9' | b't' | b'f' if text != "null" => Some(text.to_string()),
        _ => None,
    }
}

/// Collects an object's keys (decoded) and raw values. Unlike
/// `serde_json::Value`'s visitor it gives no key a special meaning.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = JsonObject<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<JsonObject<'de>, M::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(key) = map.next_key::<String>()? {
            let value: &'de RawValue = map.next_value()?;
            fields.push((key, value));
        }
        Ok(JsonObject { fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(text: &str, skip: &[&str]) -> String {
        let mut out = Vec::new();
        JsonObject::parse(text).unwrap().write_open(&mut out, skip);
        out.push(b'}');
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_keep_their_exact_text() {
        let text = r#"{"n":99999999999999999999,"f":1e400,"s":"\u00e9","o":{"a" : [1, 2]}}"#;
        let object = JsonObject::parse(text).unwrap();
        assert_eq!(object.get("n").unwrap().get(), "99999999999999999999");
        assert_eq!(object.get("f").unwrap().get(), "1e400");
        assert_eq!(object.get("s").unwrap().get(), r#""\u00e9""#);
        assert_eq!(object.get("o").unwrap().get(), r#"{"a" : [1, 2]}"#);
        assert_eq!(
            rewritten(text, &[]),
            r#"{"n":99999999999999999999,"f":1e400,"s":"\u00e9","o":{"a" : [1, 2]}}"#
        );
    }

    #[test]
    fn the_raw_value_token_is_an_ordinary_key() {
        let text = r#"{"$serde_json::private::RawValue":"{\"x\":1}","b":2}"#;
        let object = JsonObject::parse(text).unwrap();
        assert_eq!(
            object.get("$serde_json::private::RawValue").unwrap().get(),
            r#""{\"x\":1}""#
        );
        assert!(object.get("x").is_none());
        assert_eq!(rewritten(text, &[]), text);
        let escaped = r#"{"\u0024serde_json::private::RawValue":"1"}"#;
        assert_eq!(
            rewritten(escaped, &[]),
            r#"{"$serde_json::private::RawValue":"1"}"#
        );
    }

    #[test]
    fn skipped_and_duplicate_keys_are_left_out() {
        assert_eq!(
            rewritten(r#"{"a":1,"phx_ref":"x","a":2,"b":3}"#, &["phx_ref"]),
            r#"{"a":2,"b":3}"#
        );
        assert_eq!(rewritten(r#"{"phx_ref":"x"}"#, &["phx_ref"]), "{}");
        assert_eq!(rewritten("{}", &[]), "{}");
    }

    #[test]
    fn anything_but_one_object_is_refused() {
        for text in ["[]", "1", "\"s\"", "null", "{", "{} {}", ""] {
            assert!(JsonObject::parse(text).is_err(), "{text}");
        }
        assert!(JsonObject::parse_bytes(b"{\"a\":\"\xff\"}").is_err());
    }

    #[test]
    fn key_texts_are_strings_numbers_and_booleans() {
        let object =
            JsonObject::parse(r#"{"s":"ann","e":"","n":7,"big":1e400,"t":true,"z":null,"l":[1]}"#)
                .unwrap();
        assert_eq!(object.get_key_text("s").as_deref(), Some("ann"));
        assert_eq!(object.get_key_text("e"), None);
        assert_eq!(object.get_key_text("n").as_deref(), Some("7"));
        assert_eq!(object.get_key_text("big").as_deref(), Some("1e400"));
        assert_eq!(object.get_key_text("t").as_deref(), Some("true"));
        assert_eq!(object.get_key_text("z"), None);
        assert_eq!(object.get_key_text("l"), None);
        assert!(object.get_object("l").is_none());
    }
}
