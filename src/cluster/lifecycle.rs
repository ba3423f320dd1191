//! Which node holds which topic and presence key, kept in Redis, so that a
//! topic filling or emptying, or a key appearing or going, anywhere in the
//! cluster is reported once, by one node.
//!
//! Each node's owner shards tell the bus what the *node* began or stopped
//! holding ([`NodeChange`]). The bus runs those changes through
//! [`CHANGE_SCRIPT`], which keeps, per topic and per (topic, key), the set
//! of nodes holding it, and answers which changes emptied or filled a set:
//! those, and only those, are events. Because a script is atomic, two
//! nodes letting a topic go at the same moment cannot both see the other
//! still holding it.
//!
//! A node that dies cannot say what it held. Every node records itself in
//! a registry with Redis's clock at every heartbeat; [`REAP_SCRIPT`], run
//! by every node at every heartbeat, takes a node silent for longer than
//! `node_timeout_ms` out of every set it was in and answers what that
//! emptied — to the one node whose run did it (reason `node_down`). A node
//! stopping gracefully releases its holdings the same way (reason
//! `shutdown`). A node whose Redis was away (its changes meanwhile were
//! not recorded) sends its whole holdings again with [`SYNC_SCRIPT`], which
//! answers what that changed.
//!
//! Every key shares one hash tag, `{<namespace>:lc}`, so the scripts also
//! run on a Redis Cluster (all of this state lives on one of its shards):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{ns:lc}:nodes` | hash | node id → when Redis last heard it (ms) |
//! | `{ns:lc}:o:<topic>` | set | nodes with a subscriber of the topic |
//! | `{ns:lc}:on:<node>` | set | topics the node holds |
//! | `{ns:lc}:m:<len>:<topic><key>` | set | nodes with a meta of the key on the topic |
//! | `{ns:lc}:mn:<node>` | set | the node's `<len>:<topic><key>` |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use crate::fanout::broadcast::NodeId;
use crate::lifecycle::delivery::EventProducer;
use crate::lifecycle::event::{EndReason, EventIds, EventKind, EventSet, LifecycleEvent};
use crate::lifecycle::occupancy::NodeChange;
use crate::presence::Meta;

/// Shared by the scripts: the time by Redis's clock, and how a node lets
/// one subject go (`kind` `o` or `m`), appending what that emptied.
const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function let_go(p, node, kind, subject, out)
  local all = p .. ':' .. kind .. ':' .. subject
  if redis.call('SREM', all, node) == 1 and redis.call('SCARD', all) == 0 then
    out[#out + 1] = kind .. '-'
    out[#out + 1] = subject
  end
end
local function release(p, node, out)
  for _, kind in ipairs({'o', 'm'}) do
    local mine = p .. ':' .. kind .. 'n:' .. node
    for _, subject in ipairs(redis.call('SMEMBERS', mine)) do
      let_go(p, node, kind, subject, out)
    end
    redis.call('DEL', mine)
  end
end
"#;

/// Applies a node's changes in order and answers the (1-based) numbers of
/// those that filled or emptied a set. KEYS: registry. ARGV: prefix, node,
/// then pairs of op (`o+`, `o-`, `m+`, `m-`) and subject.
pub const CHANGE_SCRIPT: &str = r#"
local p, node = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], node, now_ms())
local out = {}
for i = 3, #ARGV, 2 do
  local op, subject = ARGV[i], ARGV[i + 1]
  local kind = string.sub(op, 1, 1)
  local all = p .. ':' .. kind .. ':' .. subject
  local mine = p .. ':' .. kind .. 'n:' .. node
  if string.sub(op, 2, 2) == '+' then
    if redis.call('SADD', all, node) == 1 then
      redis.call('SADD', mine, subject)
      if redis.call('SCARD', all) == 1 then out[#out + 1] = (i - 1) / 2 end
    end
  elseif redis.call('SREM', all, node) == 1 then
    redis.call('SREM', mine, subject)
    if redis.call('SCARD', all) == 0 then out[#out + 1] = (i - 1) / 2 end
  end
end
return out
"#;

/// Makes the node's holdings in Redis the ones given, answering first
/// what Redis knew of the node — `known`, `reaped` (declared down: its
/// holdings were released), `lost` (Redis lost its data) — then op/subject
/// pairs for the sets that filled or emptied. What the node had recorded
/// before (kinds `O`, `M`) matters only when Redis lost it: it is put back
/// without a word, and not let go here — the bus lets go of what the node
/// no longer holds once every node had time to sync (else a node syncing
/// first would vacate a topic a node syncing later still holds). With
/// ARGV[3] = `1` the node leaves (holds nothing, leaves the registry).
/// KEYS: registry. ARGV: prefix, node, leaving, then pairs of kind (`o`,
/// `m`: held now; `O`, `M`: recorded before) and subject.
pub const SYNC_SCRIPT: &str = r#"
local p, node = ARGV[1], ARGV[2]
local out = {}
if ARGV[3] == '1' then
  release(p, node, out)
  redis.call('HDEL', KEYS[1], node)
  return out
end
local status = 'known'
if redis.call('DEL', p .. ':reaped:' .. node) == 1 then
  status = 'reaped'
elseif redis.call('HEXISTS', KEYS[1], node) == 0 then
  status = 'lost'
end
out[1] = status
redis.call('HSET', KEYS[1], node, now_ms())
local wanted = {o = {}, m = {}}
for i = 4, #ARGV, 2 do
  local kind, subject = ARGV[i], ARGV[i + 1]
  if kind == 'o' or kind == 'm' then
    wanted[kind][subject] = true
  elseif status == 'lost' then
    kind = string.lower(kind)
    redis.call('SADD', p .. ':' .. kind .. 'n:' .. node, subject)
    redis.call('SADD', p .. ':' .. kind .. ':' .. subject, node)
    wanted[kind][subject] = true
  end
end
for _, kind in ipairs({'o', 'm'}) do
  local mine = p .. ':' .. kind .. 'n:' .. node
  for _, subject in ipairs(redis.call('SMEMBERS', mine)) do
    if wanted[kind][subject] then
      wanted[kind][subject] = nil
    else
      redis.call('SREM', mine, subject)
      let_go(p, node, kind, subject, out)
    end
  end
  for subject, _ in pairs(wanted[kind]) do
    redis.call('SADD', mine, subject)
    local all = p .. ':' .. kind .. ':' .. subject
    if redis.call('SADD', all, node) == 1 and redis.call('SCARD', all) == 1 then
      out[#out + 1] = kind .. '+'
      out[#out + 1] = subject
    end
  end
end
return out
"#;

/// Records the node as alive, and releases every other node Redis has not
/// heard from for longer than the timeout (marking it reaped for a day, so
/// if it comes back its sync knows), answering op/subject pairs for the
/// sets that emptied. KEYS: registry. ARGV: prefix, node, timeout ms.
pub const REAP_SCRIPT: &str = r#"
local p, me, timeout = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
redis.call('HSET', KEYS[1], me, now)
local out = {}
local seen = redis.call('HGETALL', KEYS[1])
for i = 1, #seen, 2 do
  local node, last = seen[i], tonumber(seen[i + 1])
  if node ~= me and now - last > timeout then
    release(p, node, out)
    redis.call('HDEL', KEYS[1], node)
    redis.call('SET', p .. ':reaped:' .. node, 1, 'PX', 86400000)
  end
end
return out
"#;

/// What a script's answer is about.
#[derive(Debug)]
pub enum Ask {
    /// [`CHANGE_SCRIPT`] over these changes.
    Changes(Vec<NodeChange>),
    /// [`SYNC_SCRIPT`] of the whole holdings.
    Sync,
    /// [`REAP_SCRIPT`].
    Reap,
    /// [`SYNC_SCRIPT`] leaving.
    Release,
}

impl Ask {
    /// Why what the answer reports as gone went.
    fn reason(&self) -> Option<EndReason> {
        match self {
            Ask::Reap => Some(EndReason::NodeDown),
            Ask::Release => Some(EndReason::Shutdown),
            Ask::Changes(_) | Ask::Sync => None,
        }
    }
}

/// What this node holds.
#[derive(Debug, Clone, Default)]
struct Holdings {
    topics: HashSet<String>,
    /// Member subjects, with the key and the meta that came first.
    members: HashMap<String, (Arc<str>, Meta)>,
}

impl Holdings {
    /// Letting go of what `self` holds and `now` does not.
    fn gone_from(&self, now: &Holdings) -> Vec<NodeChange> {
        let topics = self
            .topics
            .difference(&now.topics)
            .map(|topic| NodeChange::Topic {
                topic: topic.clone(),
                occupied: false,
            });
        let members = self
            .members
            .iter()
            .filter(|(subject, _)| !now.members.contains_key(*subject))
            .filter_map(|(subject, (key, meta))| {
                let (topic, _) = split_member(subject)?;
                Some(NodeChange::Member {
                    topic: topic.to_string(),
                    key: key.clone(),
                    meta: meta.clone(),
                    added: false,
                })
            });
        topics.chain(members).collect()
    }
}

/// The bus's part: this node's holdings, the changes not yet sent, the
/// events' queue.
pub struct ClusterLifecycle {
    prefix: String,
    registry: String,
    node: String,
    held: Holdings,
    /// What Redis had recorded of this node when it was lost, until a
    /// sync tells whether Redis kept it.
    recorded: Option<Holdings>,
    /// Redis lost its data: what the node had recorded then, let go of
    /// (when no longer held) once every node had time to sync.
    deferred: Option<(Instant, Holdings)>,
    /// How long the other nodes may take to sync: their node timeout.
    grace: Duration,
    pending: Vec<NodeChange>,
    producer: EventProducer,
    kinds: EventSet,
    ids: EventIds,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A member's subject: the topic's length, the topic, the key (no
/// separator a topic could contain).
fn member_subject(topic: &str, key: &str) -> String {
    format!("{}:{topic}{key}", topic.len())
}

/// The topic and key of a member subject.
fn split_member(subject: &str) -> Option<(&str, &str)> {
    let (len, rest) = subject.split_once(':')?;
    let len: usize = len.parse().ok()?;
    (rest.is_char_boundary(len) && len <= rest.len()).then(|| rest.split_at(len))
}

impl ClusterLifecycle {
    /// The state of node `node` in namespace `namespace`; events of
    /// `kinds` go to `producer`, with ids of the bus (`shards` is the
    /// number of shards: the bus's ids come after theirs).
    pub fn new(
        namespace: &str,
        node: NodeId,
        (producer, kinds): (EventProducer, EventSet),
        shards: usize,
        grace: Duration,
    ) -> ClusterLifecycle {
        let prefix = format!("{{{namespace}:lc}}");
        ClusterLifecycle {
            registry: format!("{prefix}:nodes"),
            prefix,
            node: format!("{:016x}", node.0),
            held: Holdings::default(),
            recorded: None,
            deferred: None,
            grace,
            pending: Vec::new(),
            producer,
            kinds,
            ids: EventIds::new(node.0, shards),
        }
    }

    /// A change of this node's holdings; sent with the next [`Self::flush`]
    /// when `recording` (Redis up), else only kept for the next sync.
    pub fn change(&mut self, change: NodeChange, recording: bool) {
        match &change {
            NodeChange::Topic { topic, occupied } => {
                if *occupied {
                    self.held.topics.insert(topic.clone());
                } else {
                    self.held.topics.remove(topic);
                }
            }
            NodeChange::Member {
                topic,
                key,
                meta,
                added,
            } => {
                let subject = member_subject(topic, key);
                if *added {
                    self.held
                        .members
                        .insert(subject, (key.clone(), meta.clone()));
                } else {
                    self.held.members.remove(&subject);
                }
            }
        }
        if recording {
            self.pending.push(change);
        }
    }

    fn script(&self, script: &str) -> redis::Cmd {
        let mut command = redis::cmd("EVAL");
        command
            .arg(format!("{COMMON}{script}"))
            .arg(1)
            .arg(&self.registry)
            .arg(&self.prefix)
            .arg(&self.node);
        command
    }

    /// Redis is lost: what it had recorded of this node is (about) what
    /// the node held until now, kept until Redis is back.
    pub fn redis_lost(&mut self) {
        if self.recorded.is_none() {
            self.recorded = Some(self.held.clone());
        }
    }

    /// The changes since the last flush, as one script run, with the
    /// deferred letting go after Redis lost its data, once due.
    pub fn flush(&mut self, now: Instant) -> Option<(redis::Cmd, Ask)> {
        if self.deferred.as_ref().is_some_and(|(due, _)| now >= *due) {
            if let Some((_, before)) = self.deferred.take() {
                self.pending.extend(before.gone_from(&self.held));
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        let changes = std::mem::take(&mut self.pending);
        let mut command = self.script(CHANGE_SCRIPT);
        for change in &changes {
            match change {
                NodeChange::Topic { topic, occupied } => {
                    command.arg(if *occupied { "o+" } else { "o-" }).arg(topic);
                }
                NodeChange::Member {
                    topic, key, added, ..
                } => {
                    command
                        .arg(if *added { "m+" } else { "m-" })
                        .arg(member_subject(topic, key));
                }
            }
        }
        Some((command, Ask::Changes(changes)))
    }

    /// The whole holdings (Redis is back, or first reached): what changed
    /// meanwhile is reported once Redis has compared.
    pub fn sync(&mut self) -> (redis::Cmd, Ask) {
        self.pending.clear();
        let mut command = self.script(SYNC_SCRIPT);
        command.arg("0");
        for topic in &self.held.topics {
            command.arg("o").arg(topic);
        }
        for subject in self.held.members.keys() {
            command.arg("m").arg(subject);
        }
        let recorded = self.recorded.iter();
        for topic in recorded.clone().flat_map(|r| &r.topics) {
            command.arg("O").arg(topic);
        }
        for subject in recorded.flat_map(|r| r.members.keys()) {
            command.arg("M").arg(subject);
        }
        (command, Ask::Sync)
    }

    /// Releases every silent node (every heartbeat).
    pub fn reap(&self, timeout_ms: u64) -> (redis::Cmd, Ask) {
        let mut command = self.script(REAP_SCRIPT);
        command.arg(timeout_ms);
        (command, Ask::Reap)
    }

    /// Releases this node's holdings (graceful stop).
    pub fn release(&mut self) -> (redis::Cmd, Ask) {
        self.pending.clear();
        self.deferred = None;
        let mut command = self.script(SYNC_SCRIPT);
        command.arg("1");
        (command, Ask::Release)
    }

    /// A script's answer: the events it reports. An answer that does not
    /// read is logged and dropped (the next sync repairs the holdings).
    pub fn on_answer(&mut self, ask: Ask, mut answer: Value) {
        if let (Ask::Sync, Value::Array(items)) = (&ask, &mut answer) {
            let status = (!items.is_empty()).then(|| items.remove(0));
            let recorded = self.recorded.take();
            // A node Redis never knew (a first sync) has nothing recorded.
            if let (Some(Value::BulkString(status)), Some(before)) = (status, recorded) {
                if status == b"lost" {
                    tracing::warn!(
                        "cluster: Redis lost the lifecycle state; what this node no longer holds is let go in {:?}",
                        self.grace
                    );
                    self.deferred = Some((Instant::now() + self.grace, before));
                }
            }
        }
        let events = match self.events(&ask, answer) {
            Ok(events) => events,
            Err(why) => {
                tracing::warn!(%why, "cluster: a lifecycle script's answer was not understood");
                return;
            }
        };
        for event in events {
            if self.kinds.contains(event.kind) {
                let id = self.ids.next_id();
                self.producer.send(event.to_json(&id));
            }
        }
    }

    fn events(&self, ask: &Ask, answer: Value) -> Result<Vec<LifecycleEvent>, String> {
        let Value::Array(items) = answer else {
            return Err("not an array".into());
        };
        let now = unix_ms();
        if let Ask::Changes(changes) = ask {
            return items
                .iter()
                .map(|item| {
                    let Value::Int(number) = item else {
                        return Err("a change number is not an integer".to_string());
                    };
                    usize::try_from(*number - 1)
                        .ok()
                        .and_then(|i| changes.get(i))
                        .map(|change| change.event(now, None))
                        .ok_or_else(|| "a change number is out of range".to_string())
                })
                .collect();
        }
        let texts: Vec<String> = items
            .into_iter()
            .map(|item| match item {
                Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|e| e.to_string()),
                Value::SimpleString(text) => Ok(text),
                _ => Err("an entry is not a string".to_string()),
            })
            .collect::<Result<_, _>>()?;
        let mut events = Vec::with_capacity(texts.len() / 2);
        for pair in texts.chunks(2) {
            let [op, subject] = pair else {
                return Err("an op without its subject".into());
            };
            events.push(self.event_of(op, subject, ask.reason(), now)?);
        }
        Ok(events)
    }

    /// The event of one op/subject pair of a sync, reap or release.
    fn event_of(
        &self,
        op: &str,
        subject: &str,
        reason: Option<EndReason>,
        now: u64,
    ) -> Result<LifecycleEvent, String> {
        let (kind, topic) = match op {
            "o+" => (EventKind::ChannelOccupied, subject),
            "o-" => (EventKind::ChannelVacated, subject),
            "m+" | "m-" => {
                let (topic, key) = split_member(subject).ok_or("a malformed member subject")?;
                let kind = if op == "m+" {
                    EventKind::MemberAdded
                } else {
                    EventKind::MemberRemoved
                };
                let mut event = LifecycleEvent::new(kind, now);
                event.topic = Some(topic.to_string());
                event.key = Some(key.to_string());
                // The meta is known for what this node holds; not for
                // what a dead node held.
                event.meta = self
                    .held
                    .members
                    .get(subject)
                    .map(|(_, m)| m.json.to_string());
                if op == "m-" {
                    event.reason = reason;
                }
                return Ok(event);
            }
            _ => return Err(format!("an unknown op {op:?}")),
        };
        let mut event = LifecycleEvent::new(kind, now);
        event.topic = Some(topic.to_string());
        if kind == EventKind::ChannelVacated {
            event.reason = reason;
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_subjects_keep_topics_and_keys_apart() {
        let subject = member_subject("room:1", "alice:x");
        assert_eq!(subject, "6:room:1alice:x");
        assert_eq!(split_member(&subject), Some(("room:1", "alice:x")));
        assert_eq!(split_member(&member_subject("a:b", "")), Some(("a:b", "")));
        assert_eq!(split_member("9:short"), None);
        assert_eq!(split_member("x:y"), None);
        assert_eq!(split_member("2:é"), Some(("é", "")));
        assert_eq!(split_member("1:é"), None, "not on a character boundary");
    }
}
