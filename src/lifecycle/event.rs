//! Lifecycle events: what the backend hears when channels and connections
//! end, topics fill and empty, and presence keys come and go.

use crate::protocol::message::write_json_string;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A channel ended (one per join).
    Leave,
    /// A connection (or long-poll session) ended, after its `Leave`s.
    Disconnect,
    /// A topic got its first subscriber.
    ChannelOccupied,
    /// A topic lost its last subscriber.
    ChannelVacated,
    /// A presence key appeared on a topic.
    MemberAdded,
    /// A presence key left a topic.
    MemberRemoved,
}

impl EventKind {
    /// Every kind, in the order of `webhook.events`' default.
    pub const ALL: [EventKind; 6] = [
        EventKind::Leave,
        EventKind::Disconnect,
        EventKind::ChannelOccupied,
        EventKind::ChannelVacated,
        EventKind::MemberAdded,
        EventKind::MemberRemoved,
    ];

    /// The name in `type` and in `webhook.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Leave => "leave",
            EventKind::Disconnect => "disconnect",
            EventKind::ChannelOccupied => "channel_occupied",
            EventKind::ChannelVacated => "channel_vacated",
            EventKind::MemberAdded => "member_added",
            EventKind::MemberRemoved => "member_removed",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// This kind's bit in an [`EventSet`].
    fn bit(self) -> u8 {
        1 << EventKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Which kinds the backend asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventSet(u8);

impl EventSet {
    /// The set of `kinds`.
    pub fn of(kinds: impl IntoIterator<Item = EventKind>) -> EventSet {
        EventSet(kinds.into_iter().fold(0, |bits, k| bits | k.bit()))
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// Why a channel or a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The client left the channel (`phx_leave`), or joined it again (the
    /// new join replaces the old one).
    Leave,
    /// The connection closed (the client went away, or a protocol error).
    Closed,
    /// The idle timeout, or a long-poll session nobody polled.
    Timeout,
    /// Closed as a slow consumer.
    SlowConsumer,
    /// `POST /api/disconnect` or a `disconnect` broadcast.
    ForcedDisconnect,
    /// The node holding it died (cluster).
    NodeDown,
    /// The server shut down.
    Shutdown,
}

impl EndReason {
    /// The name in `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Leave => "leave",
            EndReason::Closed => "closed",
            EndReason::Timeout => "timeout",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::ForcedDisconnect => "forced_disconnect",
            EndReason::NodeDown => "node_down",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// One event, before its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// What happened.
    pub kind: EventKind,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The topic, for channel and presence events.
    pub topic: Option<String>,
    /// The connection's user id, when the connect policy gave one.
    pub user_id: Option<String>,
    /// The connection's socket id, when it has one.
    pub socket_id: Option<String>,
    /// The channel instance's join_ref (JSON text as the client sent it).
    pub join_ref: Option<String>,
    /// Why it ended, for `leave` and `disconnect`.
    pub reason: Option<EndReason>,
    /// The presence key, for member events.
    pub key: Option<String>,
    /// The presence meta (a JSON object), for member events.
    pub meta: Option<String>,
}

impl LifecycleEvent {
    /// An event of `kind` at `time_ms` with nothing else set.
    pub fn new(kind: EventKind, time_ms: u64) -> LifecycleEvent {
        LifecycleEvent {
            kind,
            time_ms,
            topic: None,
            user_id: None,
            socket_id: None,
            join_ref: None,
            reason: None,
            key: None,
            meta: None,
        }
    }

    /// The event as one JSON object with `id`.
    pub fn to_json(&self, id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(br#"{"id":"#);
        write_json_string(&mut out, id);
        out.extend_from_slice(br#","type":"#);
        write_json_string(&mut out, self.kind.as_str());
        out.extend_from_slice(format!(r#","time_ms":{}"#, self.time_ms).as_bytes());
        let texts = [
            ("topic", &self.topic),
            ("user_id", &self.user_id),
            ("socket_id", &self.socket_id),
            ("key", &self.key),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                out.extend_from_slice(format!(r#","{name}":"#).as_bytes());
                write_json_string(&mut out, value);
            }
        }
        if let Some(join_ref) = &self.join_ref {
            // The client's join_ref, as JSON text (a string, or null).
            out.extend_from_slice(br#","join_ref":"#);
            out.extend_from_slice(join_ref.as_bytes());
        }
        if let Some(reason) = self.reason {
            out.extend_from_slice(br#","reason":"#);
            write_json_string(&mut out, reason.as_str());
        }
        if let Some(meta) = &self.meta {
            out.extend_from_slice(br#","meta":"#);
            out.extend_from_slice(meta.as_bytes());
        }
        out.push(b'}');
        out
    }
}

/// Ids unique across nodes and restarts: the process's random id, the
/// shard, and a counter.
#[derive(Debug)]
pub struct EventIds {
    prefix: String,
    next: u64,
}

impl EventIds {
    /// The ids of shard `shard` of process `instance`.
    pub fn new(instance: u64, shard: usize) -> EventIds {
        EventIds {
            prefix: format!("{instance:016x}-{shard}-"),
            next: 0,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_objects_with_what_applies() {
        let mut event = LifecycleEvent::new(EventKind::Leave, 1_700_000_000_123);
        event.topic = Some("room:\"1\"".into());
        event.user_id = Some("alice".into());
        event.join_ref = Some(r#""3""#.into());
        event.reason = Some(EndReason::SlowConsumer);
        let json: serde_json::Value = serde_json::from_slice(&event.to_json("n-0-1")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"n-0-1","type":"leave","time_ms":1_700_000_000_123u64,
                "topic":"room:\"1\"","user_id":"alice","join_ref":"3","reason":"slow_consumer"})
        );
        let mut member = LifecycleEvent::new(EventKind::MemberAdded, 1);
        member.key = Some("bob".into());
        member.meta = Some(r#"{"n":1e400}"#.into());
        let text = String::from_utf8(member.to_json("x")).unwrap();
        assert!(
            text.ends_with(r#""key":"bob","meta":{"n":1e400}}"#),
            "{text}"
        );
    }

    #[test]
    fn kinds_parse_and_sets_hold_them() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("nope"), None);
        let set = EventSet::of([EventKind::Leave, EventKind::MemberRemoved]);
        assert!(set.contains(EventKind::Leave) && set.contains(EventKind::MemberRemoved));
        assert!(!set.contains(EventKind::Disconnect));
        let mut ids = EventIds::new(0xab, 1);
        assert_eq!(ids.next_id(), "00000000000000ab-1-1");
        assert_ne!(ids.next_id(), "00000000000000ab-1-1");
    }
}
