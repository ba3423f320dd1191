//! Positions: where a broadcast sits in its topic's history.
//!
//! A position is the topic's stream [`Epoch`] and the broadcast's offset in
//! that stream, written `"<epoch>:<offset>"` (e.g. `"n5c1e0a93f2:17"`). The
//! epoch names one life of the stream: it changes whenever the stream is
//! lost (a restart of a single node, a trimmed-away idle topic, a Redis
//! that lost its keys), so a position from an earlier life is recognised
//! as such instead of being compared with offsets that mean something
//! else. Epochs start with a letter, so a position never looks like one
//! of the JS client's refs (decimal strings): the client could otherwise
//! take a broadcast for the reply to its pending heartbeat.

use std::fmt;

use crate::protocol::json_object::JsonObject;

/// The longest epoch accepted in a client's `since`.
const EPOCH_MAX: usize = 32;

/// One life of a topic's stream: a lowercase letter, then lowercase
/// letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Box<str>);

impl Epoch {
    /// The epoch `text`, if it has the epoch's form.
    pub fn parse(text: &str) -> Option<Epoch> {
        let bytes = text.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= EPOCH_MAX
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        well_formed.then(|| Epoch(text.into()))
    }

    /// A fresh epoch made of `tag` (a lowercase letter naming who made it)
    /// and 48 bits of `seed`.
    pub fn generate(tag: char, seed: u64) -> Epoch {
        debug_assert!(tag.is_ascii_lowercase());
        Epoch(format!("{tag}{:012x}", mix(seed) & 0xffff_ffff_ffff).into())
    }

    /// The epoch's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A broadcast's place in its topic's history, or a client's "I have seen
/// everything up to here". Offset 0 means "before the first broadcast".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's life.
    pub epoch: Epoch,
    /// The broadcast's offset in it (1 for the first).
    pub offset: u64,
}

impl Position {
    /// Parses `"<epoch>:<offset>"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Position> {
        let (epoch, offset) = text.rsplit_once(':')?;
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Position {
            epoch: Epoch::parse(epoch)?,
            offset: offset.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// What a join on a history topic asked for with its payload's `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoverFrom {
    /// No `since` (or `null`): a plain join; the reply tells the position.
    Nothing,
    /// Everything after this position.
    Position(Position),
    /// A string that is no position this server gives out: the reply says
    /// `recovered: false`, so the app refetches.
    Unknown,
}

/// Why a join's `since` is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("since must be a position string")]
pub struct SinceNotAString;

impl RecoverFrom {
    /// Reads the `since` field of a join payload (JSON text).
    pub fn of_join_payload(payload: &[u8]) -> Result<RecoverFrom, SinceNotAString> {
        let Ok(object) = JsonObject::parse_bytes(payload) else {
            return Ok(RecoverFrom::Nothing);
        };
        let Some(since) = object.get("since") else {
            return Ok(RecoverFrom::Nothing);
        };
        match since.get() {
            "null" => Ok(RecoverFrom::Nothing),
            text if text.starts_with('"') => {
                let since: String = serde_json::from_str(text).map_err(|_| SinceNotAString)?;
                Ok(Position::parse(&since).map_or(RecoverFrom::Unknown, RecoverFrom::Position))
            }
            _ => Err(SinceNotAString),
        }
    }
}

/// splitmix64's finaliser: spreads a counter or a node id over all bits,
/// so consecutive seeds make unrelated-looking epochs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_never_look_like_client_refs() {
        let epoch = Epoch::generate('n', 7);
        assert_eq!(epoch.as_str().len(), 13);
        let position = Position {
            epoch: epoch.clone(),
            offset: 42,
        };
        let text = position.to_string();
        assert!(text.starts_with('n') && text.ends_with(":42"));
        assert!(text.parse::<u64>().is_err());
        assert_eq!(Position::parse(&text), Some(position));
        assert_ne!(Epoch::generate('n', 8), epoch);
    }

    #[test]
    fn a_join_payload_asks_for_what_its_since_says() {
        let read = |json: &str| RecoverFrom::of_join_payload(json.as_bytes());
        assert_eq!(read("{}"), Ok(RecoverFrom::Nothing));
        assert_eq!(read(r#"{"since":null}"#), Ok(RecoverFrom::Nothing));
        assert_eq!(
            read(r#"{"a":1,"since":"e1:5"}"#),
            Ok(RecoverFrom::Position(Position::parse("e1:5").unwrap()))
        );
        assert_eq!(read(r#"{"since":"17"}"#), Ok(RecoverFrom::Unknown));
        assert_eq!(read(r#"{"since":17}"#), Err(SinceNotAString));
        assert_eq!(read(r#"{"since":{"e":1}}"#), Err(SinceNotAString));
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in [
            "",
            "17",
            ":1",
            "n:",
            "n:-1",
            "n:+1",
            "N1:1",
            "1n:1",
            "n-1:1",
            "n:1x",
            "n:99999999999999999999",
            "n:184467440737095516160",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
        let long = format!("{}:1", "a".repeat(EPOCH_MAX + 1));
        assert_eq!(Position::parse(&long), None);
        assert_eq!(Position::parse("a:0").map(|p| p.offset), Some(0));
    }
}
