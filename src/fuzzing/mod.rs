//! Fuzz target bodies: each takes arbitrary bytes, drives one parser or
//! state machine the way the server does, and panics with a message naming
//! the invariant that broke. "No panic" is the least of it: every target
//! checks round trips, limits and agreement between two ways of doing the
//! same thing.
//!
//! The `cargo fuzz` targets in `fuzz/` (nightly, outside the workspace) are
//! one-line calls of these functions; `tests/fuzz_replay.rs` replays the
//! committed corpora and regression inputs through them on stable, so a
//! regression fails the ordinary `cargo test`.
//!
//! | function | what it drives | invariants |
//! | --- | --- | --- |
//! | [`http_request`] | [`RequestParser`] over a stream of requests; [`ChunkedDecoder`] alone | any split of the input gives the requests (and the error) of the whole; `consumed` within the input; head, body and buffered bytes within the limits; a request written back out parses to itself |
//! | [`ws_frames`] | [`FrameDecoder`] over a stream of client frames | any split gives the events of the whole; messages within the size limit, text UTF-8, control frames short; every event written by [`write_frame`] and masked as a client would (fragmented, a ping between fragments) decodes to itself |
//! | [`client_message`] | [`decode_text`] (V1, V2) and [`decode_binary`] | text is refused as JSON exactly when serde_json refuses it; fields are UTF-8 and refs valid JSON; a float in an ignored place (which takes the verbatim path) changes nothing; decode → [`encode_text`] → decode gives the same fields, in both serializers; binary frames agree with a reference decoder and re-encode to the same bytes |
//! | [`channels`] | a [`ChannelSet`] fed message sequences, hook answers, rate-limit refusals, undone joins and disconnects, its subscriptions kept in a real [`TopicTable`] | every `Subscribe` is matched by an `Unsubscribe`, an `undo_join` or `close_all`; joined ≤ `max_channels`; one answer per message (or a silent drop of a stale join_ref); replies echo ref and topic and carry the channel's join_ref; closes carry the instance's join_ref |
//! | [`longpoll`] | [`split_post`], [`TokenSigner`], [`write_poll`] | at most [`MAX_POST_LINES`] frames, text lines as sent, binary lines canonical base64; a token verifies only if it is exactly what [`TokenSigner::sign`] makes of the address it names; poll bodies are JSON carrying the messages |
//! | [`cluster_envelope`] | the cluster bus envelope's decoder | no panic; the 10-byte peeks (sender, broadcast or not) agree with the full decode; a decoded message re-encodes to bytes that decode to the same encoding |
//! | [`config`] | [`Config::parse`] | an accepted config validates again and is sane; the verdict does not depend on the TOML's formatting or key order |
//! | [`phoenix_term`] | Phoenix PubSub's Redis messages: [`classify`](crate::phoenix_pubsub::classify) and [`term::decode`](crate::phoenix_pubsub::term::decode) on any bytes; [`encode`](crate::phoenix_pubsub::encode()) on generated broadcasts | the element-by-element reading agrees with a whole decode (same error, or the verdict the rules give on the whole term); decoded terms within the limits and written back decode to themselves; compressed reads as plain; a broadcast read is one JSON object, re-encoded it is read elsewhere as itself and by its sender as its echo, and re-encodes to the same bytes; `encode` refuses exactly what it must and what it writes is read back as written |

mod channels;
mod cluster;
mod config;
mod http;
mod longpoll;
mod messages;
mod phoenix_term;
mod websocket;

pub use self::channels::channels;
pub use self::cluster::cluster_envelope;
pub use self::config::config;
pub use self::http::http_request;
pub use self::longpoll::longpoll;
pub use self::messages::client_message;
pub use self::phoenix_term::phoenix_term;
pub use self::websocket::ws_frames;

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::config::{Config, ConfigError};
use crate::connect::Identity;
use crate::fanout::frame::FrameKind;
use crate::fanout::topics::{ClientId, SubscriptionSlot, TopicTable};
use crate::longpoll::token::{SessionAddress, TokenSigner};
use crate::longpoll::wire::{
    split_post, write_poll, write_status_reason, PostedFrame, MAX_POST_LINES, NDJSON,
};
use crate::protocol::channels::{Action, ChannelSet, HookAsk, HookVerdict};
use crate::protocol::decode::{decode_binary, decode_text, DecodeError};
use crate::protocol::encode::encode_text;
use crate::protocol::message::{ClientMessage, Name, Payload, RawJson, Serializer};
use crate::routes::{ClientEventPolicy, JoinPolicy, Routes, HEARTBEAT_TOPIC};
use crate::transport::chunked::ChunkedDecoder;
use crate::transport::frame::{
    close_frame, frame_len, write_frame, Decoded, FrameDecoder, WsError, WsEvent,
};
use crate::transport::http::{HttpError, HttpLimits, Parsed, Request, RequestParser};

/// Reads parameters off the front of the fuzz input; past its end every
/// read gives zeros, so any input is a valid one.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) << 32 | u64::from(self.u32())
    }

    /// Up to `n` bytes.
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Piece sizes between 1 and `max` from a seed (xorshift64): how input is
/// cut into reads, a body into chunks, a message into fragments.
struct Pieces {
    state: u64,
    max: usize,
}

impl Pieces {
    fn new(seed: u8, max: usize) -> Pieces {
        Pieces {
            state: 0x9e37_79b9_7f4a_7c15 ^ u64::from(seed).wrapping_mul(0x2545_f491_4f6c_dd1d),
            max: max.max(1),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn next(&mut self) -> usize {
        1 + (self.next_u64() % self.max as u64) as usize
    }
}

/// Appends the next read of `stream` from `fed` to `pending` (the rest of it
/// at once without `pieces`) and returns where the next read starts.
fn read_more(
    stream: &[u8],
    fed: usize,
    pieces: &mut Option<Pieces>,
    pending: &mut Vec<u8>,
) -> usize {
    let n = pieces
        .as_mut()
        .map_or(stream.len() - fed, |p| p.next().min(stream.len() - fed));
    pending.extend_from_slice(&stream[fed..fed + n]);
    fed + n
}
