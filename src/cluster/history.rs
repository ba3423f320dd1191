//! History topics in Redis: each topic's stream, its offsets and its
//! epoch, written and read by two scripts so each step is atomic.
//!
//! Per topic, two keys (sharing the topic's hash tag on a Redis Cluster,
//! with its channel):
//!
//! - `{ns}:h:{topic}`, a hash: `e` the stream's epoch, `o` its newest
//!   offset. It outlives the stream by a day, so a client whose position
//!   is the newest one still recovers (with nothing to replay) after the
//!   topic went quiet for longer than `history_ttl_ms`;
//! - `{ns}:s:{topic}`, a stream whose entry `0-<offset>` holds the
//!   published message as it went out (field `m`), trimmed to `history`
//!   entries and expiring `history_ttl_ms` after the last publish.
//!
//! [`PUBLISH_SCRIPT`] increments the offset, appends the message and
//! publishes it, in one step: the channel's order is the offsets' order.
//! [`READ_SCRIPT`] returns the epoch, the newest offset and the whole
//! stream; it starts the epoch when there is none yet, so the position a
//! join is given before the first publish names the life that publish
//! continues.

use std::sync::Arc;

use redis::Value;

use super::envelope::{self, Envelope};
use crate::fanout::broadcast::Broadcast;
use crate::history::{Epoch, Retention};
use crate::shard::history_cluster::StreamRead;

/// How long the epoch and offset outlive the stream, in milliseconds.
const META_GRACE_MS: u64 = 24 * 3_600_000;

/// Gives the message its offset, appends it to the stream, publishes it.
/// KEYS: meta, stream. ARGV: epoch for a new stream, maxlen, stream ttl,
/// meta ttl, channel, head, tail, sharded ("1": SPUBLISH).
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local position = epoch .. ':' .. offset
local message = ARGV[6] .. string.char(math.floor(#position / 256), #position % 256) .. position .. ARGV[7]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. offset, 'm', message)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[8] == '1' then
  redis.call('SPUBLISH', ARGV[5], message)
else
  redis.call('PUBLISH', ARGV[5], message)
end
return offset
"#;

/// Returns `{epoch, newest offset, message…}`, starting the epoch when
/// the topic has none. KEYS: meta, stream. ARGV: epoch for a new stream,
/// meta ttl.
pub const READ_SCRIPT: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
local result = {epoch, redis.call('HGET', KEYS[1], 'o')}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
  result[#result + 1] = entry[2][2]
end
return result
"#;

/// The Redis keys of one history topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeys {
    /// The hash of epoch and offset.
    pub meta: String,
    /// The stream.
    pub stream: String,
}

impl HistoryKeys {
    /// The keys of `topic` in namespace `prefix`; on a Redis Cluster the
    /// topic is the hash tag, as in its channel's name.
    pub fn new(prefix: &str, topic: &str, sharded: bool) -> HistoryKeys {
        let tagged = if sharded {
            format!("{{{topic}}}")
        } else {
            topic.to_string()
        };
        HistoryKeys {
            meta: format!("{prefix}:h:{tagged}"),
            stream: format!("{prefix}:s:{tagged}"),
        }
    }
}

/// The `EVAL` of [`PUBLISH_SCRIPT`] for `broadcast`.
pub fn publish_command(
    keys: &HistoryKeys,
    channel: &str,
    broadcast: &Broadcast,
    retention: Retention,
    new_epoch: &Epoch,
    from: crate::fanout::broadcast::NodeId,
    sharded: bool,
) -> redis::Cmd {
    let (head, tail) = envelope::history_parts(broadcast, from);
    let mut command = redis::cmd("EVAL");
    command
        .arg(PUBLISH_SCRIPT)
        .arg(2)
        .arg(&keys.meta)
        .arg(&keys.stream)
        .arg(new_epoch.as_str())
        .arg(retention.count)
        .arg(retention.ttl_ms)
        .arg(retention.ttl_ms.saturating_add(META_GRACE_MS))
        .arg(channel)
        .arg(head)
        .arg(tail)
        .arg(if sharded { "1" } else { "0" });
    command
}

/// The `EVAL` of [`READ_SCRIPT`] for one topic.
pub fn read_command(keys: &HistoryKeys, new_epoch: &Epoch) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(READ_SCRIPT)
        .arg(2)
        .arg(&keys.meta)
        .arg(&keys.stream)
        .arg(new_epoch.as_str())
        .arg(META_GRACE_MS);
    command
}

/// Reads [`READ_SCRIPT`]'s answer. Entries that are not history
/// broadcasts of this topic, or out of order, make the whole read an
/// error: a mirror built on them could hide a gap.
pub fn parse_read(topic: &str, value: Value) -> Result<StreamRead, String> {
    let Value::Array(items) = value else {
        return Err("the read script answered something else than an array".into());
    };
    let mut items = items.into_iter();
    let epoch = match items.next() {
        Some(Value::BulkString(bytes)) => {
            String::from_utf8(bytes).ok().and_then(|e| Epoch::parse(&e))
        }
        _ => None,
    }
    .ok_or("the stream's epoch is malformed")?;
    let last = match items.next() {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|o| o.parse().ok()),
        Some(Value::Int(offset)) => u64::try_from(offset).ok(),
        _ => None,
    }
    .ok_or("the stream's offset is malformed")?;
    let mut entries: Vec<Arc<Broadcast>> = Vec::with_capacity(items.len());
    for item in items {
        let Value::BulkString(bytes) = item else {
            return Err("a stream entry is not a message".into());
        };
        let Envelope::HistoryBroadcast(broadcast) = envelope::decode(&bytes)
            .map_err(|e| format!("a stream entry is malformed: {e}"))?
            .envelope
        else {
            return Err("a stream entry is not a history broadcast".into());
        };
        let position = broadcast.position().expect("history broadcasts carry one");
        let in_order = entries
            .last()
            .and_then(|b| b.position())
            .is_none_or(|previous| previous.offset < position.offset);
        if broadcast.topic() != topic
            || position.epoch != epoch
            || position.offset > last
            || !in_order
        {
            return Err("a stream entry does not belong to the stream".into());
        }
        entries.push(broadcast);
    }
    Ok(StreamRead {
        epoch,
        last,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channels_hash_tag_on_a_redis_cluster() {
        let sharded = HistoryKeys::new("cinder", "room:1", true);
        assert_eq!(sharded.meta, "cinder:h:{room:1}");
        assert_eq!(sharded.stream, "cinder:s:{room:1}");
        assert_eq!(HistoryKeys::new("c", "t", false).stream, "c:s:t");
    }

    #[test]
    fn a_read_refuses_what_would_hide_a_gap() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let empty = parse_read("t", Value::Array(vec![bulk("rabc"), bulk("5")])).unwrap();
        assert_eq!(
            (empty.epoch.as_str(), empty.last, empty.entries.len()),
            ("rabc", 5, 0)
        );
        assert!(parse_read("t", Value::Array(vec![bulk("5"), bulk("5")])).is_err());
        assert!(parse_read("t", Value::Array(vec![bulk("rabc"), bulk("x")])).is_err());
        assert!(parse_read(
            "t",
            Value::Array(vec![bulk("rabc"), bulk("1"), bulk("junk")])
        )
        .is_err());
        assert!(parse_read("t", Value::Nil).is_err());
    }
}
