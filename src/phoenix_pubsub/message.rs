//! One Redis message from a Phoenix node: a broadcast to deliver, or the
//! reason to ignore it.
//!
//! [`classify`] reads the adapter's term, `{3, Mode, NodeName, Topic,
//! Message, Dispatcher}`, and decides as a Phoenix node subscribed to the
//! same channel would, checking in this order (the first that applies is
//! the answer):
//!
//! 1. `malformed`: what has been read so far is not a term within the
//!    decoder's limits, or not a tuple whose first element is an integer,
//!    or a version-3 tuple of another shape. Nothing in it can be trusted.
//! 2. `version`: the first element is not 3. Another version may be shaped
//!    differently, so nothing further is read.
//! 3. `own_echo` (`except` naming this node) and `other_node` (`only` naming
//!    another): the adapter itself drops these before anything looks at the
//!    message, so whatever the message is does not matter.
//! 4. `presence`: a `phx_presence:*` topic, Phoenix.Tracker gossip between
//!    Phoenix nodes. Checked before the dispatcher (the gossip's is
//!    `Phoenix.PubSub`) so it is counted apart from other non-channel
//!    traffic.
//!
//! Up to here only the first four elements have been decoded: the
//! commonest messages to ignore (this node's own echoes, presence gossip,
//! which can carry a whole tracker state) cost only that. The message and
//! the dispatcher are decoded next (a failure there is `malformed`).
//!
//! 5. `dispatcher`: not `Elixir.Phoenix.Channel.Server`, so not for sockets
//!    (a plain `Phoenix.PubSub.broadcast`).
//! 6. `not_a_broadcast`: the message is not a `%Phoenix.Socket.Broadcast{}`
//!    with binary `topic` and `event`, or its topic is not the envelope's
//!    (Phoenix would route it by one and frame it with the other).
//! 7. `unencodable`: Phoenix could not have sent it as JSON (see
//!    [`super::json`]), or its topic or event is not UTF-8 (Cinder's are
//!    text); `payload_not_object`: a payload that is neither a map nor
//!    `{binary, Bytes}` (Phoenix would send it; Cinder's clients get objects).
//!
//! Node names are compared by their text, whether the term holds an atom
//! or a binary (the adapter's `node_name` option may be either).

use super::json::{self, JsonError};
use super::term::{self, DecodeError, Term};
use crate::protocol::message::Payload;

/// The message version this module reads (`@redis_msg_vsn` in the adapter).
pub const VERSION: i64 = 3;

/// The dispatcher of channel broadcasts.
pub const CHANNEL_DISPATCHER: &str = "Elixir.Phoenix.Channel.Server";

/// The struct of channel broadcasts.
pub const BROADCAST_STRUCT: &str = "Elixir.Phoenix.Socket.Broadcast";

/// The topic prefix of Phoenix.Tracker's gossip (Phoenix.Presence).
pub const PRESENCE_TOPIC_PREFIX: &str = "phx_presence:";

/// A broadcast for this node's subscribers of `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The topic (the envelope's, which the struct's matches).
    pub topic: String,
    /// The event name.
    pub event: String,
    /// The payload: a JSON object's text, as Phoenix would have written it,
    /// or the bytes of a `{binary, Bytes}` payload.
    pub payload: Payload,
    /// The node that sent it (`except` messages: the publisher; `only`:
    /// this node), by its text: with `[cluster]`, a broadcast another
    /// Cinder node published reached this one through the cluster already.
    pub sender: String,
}

/// Why a message is not delivered: one label each for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// Not a term this node can read, or not the adapter's tuple.
    #[error("malformed: {0}")]
    Malformed(Malformed),
    /// Another message version than [`VERSION`] (`i64::MAX` for one
    /// beyond 64 bits).
    #[error("message version {0}, not {VERSION}")]
    Version(i64),
    /// An `except` message from this node: Redis sends a publisher its own
    /// messages back.
    #[error("this node's own message")]
    OwnEcho,
    /// An `only` message for another node (`direct_broadcast`).
    #[error("for another node")]
    OtherNode,
    /// Phoenix.Tracker gossip on a `phx_presence:*` topic.
    #[error("presence tracker traffic")]
    Presence,
    /// A dispatcher other than [`CHANNEL_DISPATCHER`]: not for sockets.
    #[error("not a channel broadcast (dispatcher)")]
    Dispatcher,
    /// The message is not a `%Phoenix.Socket.Broadcast{}` for this topic.
    #[error("not a Phoenix.Socket.Broadcast")]
    NotABroadcast,
    /// The payload is neither a map nor `{binary, Bytes}`.
    #[error("payload is not a map")]
    PayloadNotObject,
    /// Phoenix could not have encoded it as JSON.
    #[error("unencodable: {0}")]
    Unencodable(JsonError),
}

impl Ignored {
    /// Every label [`Ignored::as_str`] returns, to register metrics up front.
    pub const LABELS: [&'static str; 9] = [
        "malformed",
        "version",
        "own_echo",
        "other_node",
        "presence",
        "dispatcher",
        "not_a_broadcast",
        "payload_not_object",
        "unencodable",
    ];

    /// A stable label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Ignored::Malformed(_) => "malformed",
            Ignored::Version(_) => "version",
            Ignored::OwnEcho => "own_echo",
            Ignored::OtherNode => "other_node",
            Ignored::Presence => "presence",
            Ignored::Dispatcher => "dispatcher",
            Ignored::NotABroadcast => "not_a_broadcast",
            Ignored::PayloadNotObject => "payload_not_object",
            Ignored::Unencodable(_) => "unencodable",
        }
    }
}

/// What makes a message malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The bytes are not a term (or exceed a limit).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A term, but not `{3, except | only, Node, Topic, Message, Dispatcher}`
    /// with an atom or binary node and a binary topic; says which part.
    #[error("not the adapter's message: {0}")]
    Shape(&'static str),
}

impl From<DecodeError> for Ignored {
    fn from(err: DecodeError) -> Ignored {
        Ignored::Malformed(Malformed::Decode(err))
    }
}

fn shape(what: &'static str) -> Ignored {
    Ignored::Malformed(Malformed::Shape(what))
}

/// Reads one Redis message as the Phoenix node named `this_node` would:
/// a broadcast for its subscribers, or why not (see the module docs for
/// the order of the checks). One call per message; everything returned
/// is owned.
pub fn classify(bytes: &[u8], this_node: &str) -> Result<Incoming, Ignored> {
    let body = term::Body::new(bytes)?;
    let mut reader = body.reader();
    // The envelope is read one element at a time: an echo or gossip is
    // recognised from its first four, small, elements, and the rest of it
    // (maybe a whole presence state) is never decoded.
    let arity = reader.tuple()?.ok_or_else(|| shape("not a tuple"))?;
    if arity == 0 {
        return Err(shape("an empty tuple"));
    }
    match reader.term()? {
        Term::Int(VERSION) => {}
        Term::Int(version) => return Err(Ignored::Version(version)),
        // A version too large for 64 bits is still not 3.
        Term::BigInt(_) => return Err(Ignored::Version(i64::MAX)),
        _ => return Err(shape("no version first")),
    }
    if arity != 6 {
        return Err(shape("not 6 elements"));
    }
    let only = match reader.term()?.as_atom() {
        Some("except") => false,
        Some("only") => true,
        _ => return Err(shape("mode is neither except nor only")),
    };
    let node = match reader.term()? {
        Term::Atom(name) => name.into_bytes(),
        Term::Binary(name) => name,
        _ => return Err(shape("node is neither an atom nor a binary")),
    };
    let Term::Binary(topic) = reader.term()? else {
        return Err(shape("topic is not a binary"));
    };

    let ours = node.as_slice() == this_node.as_bytes();
    if !only && ours {
        return Err(Ignored::OwnEcho);
    }
    if only && !ours {
        return Err(Ignored::OtherNode);
    }
    if topic.starts_with(PRESENCE_TOPIC_PREFIX.as_bytes()) {
        return Err(Ignored::Presence);
    }
    let message = reader.term()?;
    let dispatcher = reader.term()?;
    if dispatcher.as_atom() != Some(CHANNEL_DISPATCHER) {
        return Err(Ignored::Dispatcher);
    }
    let broadcast = Broadcast::from_term(message).ok_or(Ignored::NotABroadcast)?;
    if broadcast.topic != topic {
        return Err(Ignored::NotABroadcast);
    }

    let topic = text(topic)?;
    let event = text(broadcast.event)?;
    let sender = String::from_utf8_lossy(&node).into_owned();
    let payload = payload_of(broadcast.payload)?;
    Ok(Incoming {
        topic,
        event,
        payload,
        sender,
    })
}

/// A broadcast's payload as Cinder sends it: `{binary, Bytes}` as binary,
/// anything else as the JSON object Jason would write, or why it cannot be.
pub(crate) fn payload_of(payload: Term) -> Result<Payload, Ignored> {
    match payload {
        Term::Tuple(pair) => match <[Term; 2]>::try_from(pair) {
            Ok([Term::Atom(tag), Term::Binary(bytes)]) if tag == "binary" => {
                Ok(Payload::Binary(bytes))
            }
            // Any other tuple is what Jason would choke on.
            _ => Err(Ignored::Unencodable(JsonError::Tuple)),
        },
        payload => match json::payload_to_json(&payload) {
            Ok(json) => Ok(Payload::Json(json)),
            Err(JsonError::NotAnObject) => Err(Ignored::PayloadNotObject),
            Err(err) => Err(Ignored::Unencodable(err)),
        },
    }
}

/// A topic or event as text: Phoenix writes it into a JSON frame, which
/// fails on anything but UTF-8.
fn text(bytes: Vec<u8>) -> Result<String, Ignored> {
    String::from_utf8(bytes).map_err(|_| Ignored::Unencodable(JsonError::NotUtf8))
}

/// The fields of a `%Phoenix.Socket.Broadcast{}`.
struct Broadcast {
    topic: Vec<u8>,
    event: Vec<u8>,
    payload: Term,
}

impl Broadcast {
    /// The struct's fields, if `message` is one (other keys are ignored).
    fn from_term(message: Term) -> Option<Broadcast> {
        let Term::Map(pairs) = message else {
            return None;
        };
        let (mut is_broadcast, mut topic, mut event, mut payload) = (false, None, None, None);
        for (key, value) in pairs {
            match (key.as_atom(), value) {
                (Some("__struct__"), value) => {
                    is_broadcast = value.as_atom() == Some(BROADCAST_STRUCT);
                }
                (Some("topic"), Term::Binary(bytes)) => topic = Some(bytes),
                (Some("event"), Term::Binary(bytes)) => event = Some(bytes),
                (Some("payload"), value) => payload = Some(value),
                _ => {}
            }
        }
        if !is_broadcast {
            return None;
        }
        Some(Broadcast {
            topic: topic?,
            event: event?,
            payload: payload?,
        })
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
