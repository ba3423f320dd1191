//! Presence: who is on a topic, as Phoenix's `Presence` reports it.
//!
//! Each shard tracks the clients it owns ([`tracker::LocalPresence`]) and
//! keeps a replica of every presence topic's full state
//! ([`state::PresenceReplica`]). Local changes are gathered during a loop
//! turn and leave the shard at its end as one [`PresenceDiff`] per topic: the
//! shard applies it to its own replica, delivers it as a `presence_diff`
//! broadcast through the ordinary fan-out, and sends it to every other shard,
//! which does the same on receipt. Because a shard applies a diff and
//! delivers it in the same step, a client that joins on any shard gets a
//! `presence_state` from that shard's replica and then every diff the
//! replica has not yet seen: nothing is missed, nothing applied twice.
//! `docs/architecture.md` explains the choice.

pub mod state;
pub mod tracker;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::protocol::json_object::JsonObject;
use crate::protocol::message::write_json_string;
use serde_json::value::RawValue;

/// One tracked client's metadata under a key: its `phx_ref` and the meta
/// object's JSON text (with `phx_ref`, and `phx_ref_prev` after an update).
/// Shared by the tracker, every replica and every diff that mentions it.
#[derive(Debug, PartialEq, Eq)]
pub struct MetaData {
    /// The unique reference of this meta.
    pub phx_ref: Box<str>,
    /// The meta object as JSON text.
    pub json: Box<str>,
}

/// A shared meta.
pub type Meta = Arc<MetaData>;

/// Why a meta object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// `meta` is present but not a JSON object.
    #[error("meta must be a JSON object")]
    NotAnObject,
    /// The presence (meta and key) is over `socket.presence_meta_max`.
    #[error("presence meta too large")]
    TooLarge,
    /// The client's presences together would be over
    /// `socket.presence_meta_total_max`.
    #[error("presence meta total too large")]
    TotalTooLarge,
}

impl MetaData {
    /// Builds a meta from the client's object text (`None`: an empty meta),
    /// adding `phx_ref` (and `phx_ref_prev`). The server's fields go last so
    /// they win over client fields of the same name in every JSON parser
    /// that keeps the last duplicate, as JavaScript's does.
    pub fn new(
        object: Option<&RawValue>,
        phx_ref: String,
        phx_ref_prev: Option<&str>,
    ) -> Result<Meta, MetaError> {
        MetaData::sized(object, phx_ref, phx_ref_prev).map(|(meta, _)| meta)
    }

    /// [`MetaData::new`], also returning the size of the client's part: its
    /// object as compact JSON without the server's fields (`{}`, 2 bytes,
    /// for `None`). Presence limits count this size.
    pub fn sized(
        object: Option<&RawValue>,
        phx_ref: String,
        phx_ref_prev: Option<&str>,
    ) -> Result<(Meta, usize), MetaError> {
        // The client's fields keep their exact text (numbers beyond 64 bits
        // included); only its own `phx_ref`/`phx_ref_prev` are dropped.
        let mut bytes = Vec::with_capacity(object.map_or(0, |o| o.get().len()) + 64);
        let size = match object {
            None => {
                bytes.push(b'{');
                2
            }
            Some(object) => JsonObject::parse(object.get())
                .map_err(|_| MetaError::NotAnObject)?
                .write_open(&mut bytes, &["phx_ref", "phx_ref_prev"])
                .saturating_add(1),
        };
        if bytes.len() > 1 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(b"\"phx_ref\":");
        write_json_string(&mut bytes, &phx_ref);
        if let Some(prev) = phx_ref_prev {
            bytes.extend_from_slice(b",\"phx_ref_prev\":");
            write_json_string(&mut bytes, prev);
        }
        bytes.push(b'}');
        let json = String::from_utf8(bytes).expect("JSON built from strings is UTF-8");
        let meta = Arc::new(MetaData {
            phx_ref: phx_ref.into_boxed_str(),
            json: json.into_boxed_str(),
        });
        Ok((meta, size))
    }
}

/// Mints `phx_ref`s: URL-safe base64 of 12 bytes (16 characters, like
/// Phoenix's) — the process instance, the shard, and a counter — unique
/// within the process, and across processes as far as 32 random bits go.
#[derive(Debug)]
pub struct RefMinter {
    prefix: [u8; 6],
    counter: u64,
}

impl RefMinter {
    /// A minter for `shard` of the process identified by `instance`.
    pub fn new(instance: u32, shard: u16) -> RefMinter {
        let mut prefix = [0; 6];
        prefix[..4].copy_from_slice(&instance.to_be_bytes());
        prefix[4..].copy_from_slice(&shard.to_be_bytes());
        RefMinter { prefix, counter: 0 }
    }

    /// The next reference.
    pub fn next_ref(&mut self) -> String {
        self.counter += 1;
        let mut bytes = [0u8; 12];
        bytes[..6].copy_from_slice(&self.prefix);
        bytes[6..].copy_from_slice(&self.counter.to_be_bytes()[2..]);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// The presence changes of one topic, leaving a shard at the end of a loop
/// turn: metas that joined and metas that left, by key.
#[derive(Debug, Default, Clone)]
pub struct PresenceDiff {
    /// The topic.
    pub topic: String,
    /// Metas that joined (including the new meta of an update).
    pub joins: Vec<(Arc<str>, Meta)>,
    /// Metas that left (including the old meta of an update).
    pub leaves: Vec<(Arc<str>, Meta)>,
}

impl PresenceDiff {
    /// The `presence_diff` payload: `{"joins":{...},"leaves":{...}}`, each a
    /// map key → `{"metas":[...]}` (keys grouped, in first-seen order).
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 96 * (self.joins.len() + self.leaves.len()));
        out.extend_from_slice(b"{\"joins\":");
        write_grouped(&mut out, &self.joins);
        out.extend_from_slice(b",\"leaves\":");
        write_grouped(&mut out, &self.leaves);
        out.push(b'}');
        out
    }
}

/// Writes `{"key":{"metas":[..]},...}` from (key, meta) pairs, grouping
/// repeated keys (a JSON object must not repeat a key).
fn write_grouped(out: &mut Vec<u8>, entries: &[(Arc<str>, Meta)]) {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: std::collections::HashMap<&str, Vec<&Meta>> = Default::default();
    for (key, meta) in entries {
        groups
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(meta);
    }
    out.push(b'{');
    for (i, key) in order.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_presence(out, key, groups[key].iter().map(|m| m.json.as_bytes()));
    }
    out.push(b'}');
}

/// Writes `"key":{"metas":[...]}`.
pub fn write_presence<'m>(out: &mut Vec<u8>, key: &str, metas: impl Iterator<Item = &'m [u8]>) {
    write_json_string(out, key);
    out.extend_from_slice(b":{\"metas\":[");
    for (i, meta) in metas.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(meta);
    }
    out.extend_from_slice(b"]}");
}

/// The key a joining client is tracked under, as Phoenix apps usually
/// choose it: the route's configured join payload field (a string, number
/// or boolean, stringified as Phoenix does), else the user id, else a key
/// of this connection alone (`anonymous`), so two anonymous tabs are two
/// members.
pub fn presence_key(
    key_field: Option<&str>,
    payload: Option<&JsonObject<'_>>,
    user_id: Option<&str>,
    anonymous: impl FnOnce() -> String,
) -> String {
    key_field
        .and_then(|field| payload?.get_key_text(field))
        .or_else(|| user_id.map(str::to_string))
        .unwrap_or_else(anonymous)
}

/// One topic's presence changes of one turn, as every shard receives them:
/// the structured diff (for the replicas) and its `presence_diff` broadcast
/// (encoded once for every subscriber on every shard).
#[derive(Debug)]
pub struct PresenceSync {
    /// The changes.
    pub diff: PresenceDiff,
    /// The `presence_diff` message.
    pub broadcast: Arc<crate::fanout::broadcast::Broadcast>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_keys_come_from_the_payload_then_the_user_then_the_connection() {
        let text = r#"{"name": "ann", "n": 7, "empty": "", "list": [1]}"#;
        let payload = JsonObject::parse(text).unwrap();
        let anon = || "anonymous:1".to_string();
        assert_eq!(
            presence_key(Some("name"), Some(&payload), Some("u1"), anon),
            "ann"
        );
        assert_eq!(presence_key(Some("n"), Some(&payload), None, anon), "7");
        assert_eq!(
            presence_key(Some("empty"), Some(&payload), Some("u1"), anon),
            "u1"
        );
        assert_eq!(
            presence_key(Some("list"), Some(&payload), None, anon),
            "anonymous:1"
        );
        assert_eq!(presence_key(None, Some(&payload), Some("u1"), anon), "u1");
        assert_eq!(presence_key(Some("name"), None, None, anon), "anonymous:1");
    }
    use serde_json::{json, Value};

    fn raw(value: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    #[test]
    fn metas_keep_the_client_text_verbatim() {
        let object = RawValue::from_string(
            r#"{"n":99999999999999999999,"$serde_json::private::RawValue":"1"}"#.into(),
        )
        .unwrap();
        let meta = MetaData::new(Some(&object), "R".into(), None).unwrap();
        assert_eq!(
            &*meta.json,
            r#"{"n":99999999999999999999,"$serde_json::private::RawValue":"1","phx_ref":"R"}"#
        );
    }

    #[test]
    fn metas_carry_the_server_refs_last() {
        let object = raw(json!({"status": "away", "phx_ref": "forged"}));
        let meta = MetaData::new(Some(&object), "R2".into(), Some("R1")).unwrap();
        let parsed: Value = serde_json::from_str(&meta.json).unwrap();
        assert_eq!(
            parsed,
            json!({"status": "away", "phx_ref": "R2", "phx_ref_prev": "R1"})
        );
        let empty = MetaData::new(None, "R".into(), None).unwrap();
        assert_eq!(&*empty.json, r#"{"phx_ref":"R"}"#);
        let empty_object = MetaData::new(Some(&raw(json!({}))), "R".into(), None).unwrap();
        assert_eq!(&*empty_object.json, r#"{"phx_ref":"R"}"#);
        assert_eq!(
            MetaData::new(Some(&raw(json!([1]))), "R".into(), None),
            Err(MetaError::NotAnObject)
        );
    }

    #[test]
    fn the_size_of_a_meta_is_the_client_object_alone() {
        let object = raw(json!({"s": "away", "phx_ref": "forged-and-long"}));
        let (meta, size) = MetaData::sized(Some(&object), "R2".into(), Some("R1")).unwrap();
        assert_eq!(size, r#"{"s":"away"}"#.len());
        assert!(meta.json.len() > size, "the server's refs are not counted");
        let (_, size) = MetaData::sized(None, "R".into(), None).unwrap();
        assert_eq!(size, 2);
        let (_, size) = MetaData::sized(Some(&raw(json!({}))), "R".into(), None).unwrap();
        assert_eq!(size, 2);
    }

    #[test]
    fn refs_are_unique_16_character_strings() {
        let mut minter = RefMinter::new(7, 1);
        let a = minter.next_ref();
        let b = minter.next_ref();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert_ne!(a, RefMinter::new(7, 2).next_ref());
    }

    #[test]
    fn diffs_group_keys() {
        let meta = |r: &str| MetaData::new(None, r.into(), None).unwrap();
        let diff = PresenceDiff {
            topic: "t".into(),
            joins: vec![
                ("alice".into(), meta("A1")),
                ("bob".into(), meta("B1")),
                ("alice".into(), meta("A2")),
            ],
            leaves: vec![],
        };
        let parsed: Value = serde_json::from_slice(&diff.payload()).unwrap();
        assert_eq!(
            parsed,
            json!({"joins": {
                "alice": {"metas": [{"phx_ref": "A1"}, {"phx_ref": "A2"}]},
                "bob": {"metas": [{"phx_ref": "B1"}]}
            }, "leaves": {}})
        );
    }
}
