//! The term Cinder publishes for Phoenix nodes: a broadcast as
//! `Endpoint.broadcast/3` on a Phoenix node would have published it.
//!
//! ```text
//! {3, except, NodeName, Topic,
//!  #{'__struct__' => 'Elixir.Phoenix.Socket.Broadcast',
//!    event => Event, payload => Payload, topic => Topic},
//!  'Elixir.Phoenix.Channel.Server'}
//! ```
//!
//! A JSON payload becomes what Jason's decoder would have made of it on a
//! Phoenix node: objects are maps with binary keys (the last of repeated
//! keys wins), arrays lists, strings binaries, `true`/`false`/`null` the
//! atoms `true`/`false`/`nil`, integers integers of any size (read from
//! their text, never through a float) and other numbers floats. A binary
//! payload becomes `{binary, Bytes}`.
//!
//! The bytes are what `term_to_binary(T, [{minor_version, 2}])` writes
//! (OTP 26's default: UTF-8 atoms; small maps with their keys sorted;
//! lists of bytes as `STRING_EXT`), so tests compare them byte for byte.
//! With a [`CompressionLevel`] above 0 the term is zlib-compressed (tag 80)
//! when that is smaller, as `term_to_binary(T, [{compressed, Level}])`
//! does; the compressed bytes differ from OTP's (another deflate
//! implementation), the term they hold does not.

use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::message::{BROADCAST_STRUCT, CHANNEL_DISPATCHER, VERSION};
use super::tag;
use super::term::{MAX_ATOM_CHARS, MAX_BIG_BYTES, MAX_DEPTH, MAX_INPUT_BYTES};
use crate::protocol::message::Payload;

/// How hard to compress, 0 (not at all) to 9, as the adapter's
/// `compression_level` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressionLevel(u8);

impl CompressionLevel {
    /// No compression (the adapter's default).
    pub const NONE: CompressionLevel = CompressionLevel(0);

    /// A level, if it is 0..=9.
    pub fn new(level: u32) -> Option<CompressionLevel> {
        u8::try_from(level)
            .ok()
            .filter(|&level| level <= 9)
            .map(CompressionLevel)
    }

    /// The level, 0..=9.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Why a broadcast cannot be written as a Phoenix term.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The JSON payload is not valid JSON (or nests deeper than
    /// `serde_json` reads).
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON payload is not UTF-8.
    #[error("JSON payload is not UTF-8")]
    NotUtf8,
    /// The JSON payload is not an object.
    #[error("the payload is not a JSON object")]
    NotAnObject,
    /// An integer needs more than [`MAX_BIG_BYTES`] (the most a Cinder
    /// node reads back).
    #[error("integer of {digits} digits is too large")]
    IntegerTooLarge {
        /// Its decimal digits.
        digits: usize,
    },
    /// A number too large for a float (`1e400`): Erlang has no infinity.
    #[error("number {0} does not fit a float")]
    FloatOutOfRange(String),
    /// The payload nests deeper than a Cinder node reads back
    /// ([`MAX_DEPTH`], counting the envelope's levels).
    #[error("payload nested deeper than {MAX_DEPTH} terms")]
    TooDeep,
    /// The term is larger than a Cinder node reads back
    /// ([`MAX_INPUT_BYTES`], before compression).
    #[error("term of {0} bytes is too large")]
    TooLarge(usize),
    /// The node name is longer than an atom may be.
    #[error("node name longer than {MAX_ATOM_CHARS} characters")]
    NodeNameTooLong,
}

/// The depth of the payload in the term: inside the envelope tuple and the
/// broadcast map.
const PAYLOAD_DEPTH: usize = 3;

/// The `PUBLISH` payload for a broadcast from node `node` (its atom on the
/// Phoenix side; give it a name no Phoenix node uses).
pub fn encode(
    node: &str,
    topic: &str,
    event: &str,
    payload: &Payload,
    level: CompressionLevel,
) -> Result<Vec<u8>, EncodeError> {
    if node.chars().count() > MAX_ATOM_CHARS {
        return Err(EncodeError::NodeNameTooLong);
    }
    let mut out = vec![tag::VERSION];
    out.extend_from_slice(&[tag::SMALL_TUPLE, 6, tag::SMALL_INTEGER, VERSION as u8]);
    atom("except", &mut out);
    atom(node, &mut out);
    binary(topic.as_bytes(), &mut out);
    // Keys in atom order, as Erlang writes a small map.
    out.push(tag::MAP);
    out.extend_from_slice(&4u32.to_be_bytes());
    atom("__struct__", &mut out);
    atom(BROADCAST_STRUCT, &mut out);
    atom("event", &mut out);
    binary(event.as_bytes(), &mut out);
    atom("payload", &mut out);
    match payload {
        Payload::Binary(bytes) => {
            out.extend_from_slice(&[tag::SMALL_TUPLE, 2]);
            atom("binary", &mut out);
            binary(bytes, &mut out);
        }
        Payload::Json(text) => {
            let text = std::str::from_utf8(text).map_err(|_| EncodeError::NotUtf8)?;
            let raw: &RawValue = serde_json::from_str(text)?;
            if !raw.get().starts_with('{') {
                return Err(EncodeError::NotAnObject);
            }
            json_value(raw, PAYLOAD_DEPTH, &mut out)?;
        }
    }
    atom("topic", &mut out);
    binary(topic.as_bytes(), &mut out);
    atom(CHANNEL_DISPATCHER, &mut out);
    if out.len() > MAX_INPUT_BYTES {
        return Err(EncodeError::TooLarge(out.len()));
    }
    Ok(compress(out, level))
}

/// The term compressed (tag 80) if that is smaller, as OTP decides: zlib
/// output must fit in the uncompressed size minus the 5 bytes of tag and
/// size, so a tie compresses.
fn compress(uncompressed: Vec<u8>, level: CompressionLevel) -> Vec<u8> {
    if level == CompressionLevel::NONE {
        return uncompressed;
    }
    let body = &uncompressed[1..];
    let Ok(size) = u32::try_from(body.len()) else {
        return uncompressed;
    };
    let mut out = vec![tag::VERSION, tag::COMPRESSED];
    out.extend_from_slice(&size.to_be_bytes());
    let mut encoder = ZlibEncoder::new(out, Compression::new(u32::from(level.get())));
    // Writing into a Vec cannot fail.
    let compressed = match encoder.write_all(body).and_then(|()| encoder.finish()) {
        Ok(compressed) => compressed,
        Err(_) => return uncompressed,
    };
    if compressed.len() <= uncompressed.len() {
        compressed
    } else {
        uncompressed
    }
}

/// An atom as OTP 26 writes it: UTF-8, with a one-byte length when it fits.
pub(crate) fn atom(name: &str, out: &mut Vec<u8>) {
    match u8::try_from(name.len()) {
        Ok(len) => out.extend_from_slice(&[tag::SMALL_ATOM_UTF8, len]),
        Err(_) => {
            // At most 255 characters of at most 4 bytes: fits 16 bits.
            out.push(tag::ATOM_UTF8);
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(name.as_bytes());
}

/// A `BINARY_EXT`.
pub(crate) fn binary(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(tag::BINARY);
    // Payloads are far below 4 GiB (the API and socket limits).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// One JSON value as a term, at nesting level `depth` of the whole term.
/// Each value is kept as its raw text, so numbers are read from their
/// digits; containers are parsed one level at a time (so each level
/// re-reads its part of the text: payloads are shallow).
fn json_value(raw: &RawValue, depth: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    // Each parse below starts afresh, so `serde_json`'s own nesting limit
    // does not see the whole depth: this one does.
    if depth > MAX_DEPTH {
        return Err(EncodeError::TooDeep);
    }
    let text = trim(raw);
    match text.as_bytes().first() {
        Some(b'{') => {
            let mut entries = serde_json::Deserializer::from_str(text)
                .deserialize_map(EntriesVisitor)
                .map_err(EncodeError::Json)?;
            // Sorted as Erlang orders binary keys (byte-wise), the order it
            // writes a small map in; a stable sort and keeping the last of
            // equal keys is Jason's "last one wins".
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let mut unique: Vec<(String, &RawValue)> = Vec::with_capacity(entries.len());
            for entry in entries {
                match unique.last_mut() {
                    Some(last) if last.0 == entry.0 => *last = entry,
                    _ => unique.push(entry),
                }
            }
            out.push(tag::MAP);
            out.extend_from_slice(&(unique.len() as u32).to_be_bytes());
            for (key, value) in unique {
                binary(key.as_bytes(), out);
                json_value(value, depth + 1, out)?;
            }
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            list(&items, depth, out)?;
        }
        Some(b'"') => {
            let string: String = serde_json::from_str(text)?;
            binary(string.as_bytes(), out);
        }
        Some(b't') => atom("true", out),
        Some(b'f') => atom("false", out),
        Some(b'n') => atom("nil", out),
        _ => number(text, out)?,
    }
    Ok(())
}

/// A list, as `STRING_EXT` when every element is an integer 0..=255 and
/// there are at most 65535 (as Erlang writes it), else `LIST_EXT`.
fn list(items: &[&RawValue], depth: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if items.is_empty() {
        out.push(tag::NIL);
        return Ok(());
    }
    // `-0` is an integer 0 too; `1.0` and `1e2` are floats.
    let byte = |item: &&RawValue| {
        let text = trim(item);
        let value: i64 = text.parse().ok()?;
        u8::try_from(value).ok()
    };
    let bytes: Option<Vec<u8>> = items.iter().map(byte).collect();
    if let (Some(bytes), Ok(len)) = (bytes, u16::try_from(items.len())) {
        out.push(tag::STRING);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        return Ok(());
    }
    out.push(tag::LIST);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        json_value(item, depth + 1, out)?;
    }
    out.push(tag::NIL);
    Ok(())
}

/// A raw value's text without the whitespace JSON allows around it.
fn trim(raw: &RawValue) -> &str {
    raw.get().trim_matches([' ', '\t', '\n', '\r'])
}

/// A JSON number: an integer if its text has no fraction or exponent (as
/// Jason decodes it), else a float.
fn number(text: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if text.contains(['.', 'e', 'E']) {
        let value: f64 = text
            .parse()
            .map_err(|_| EncodeError::FloatOutOfRange(text.to_owned()))?;
        if !value.is_finite() {
            return Err(EncodeError::FloatOutOfRange(text.to_owned()));
        }
        out.push(tag::NEW_FLOAT);
        out.extend_from_slice(&value.to_be_bytes());
        return Ok(());
    }
    match text.parse::<i64>() {
        Ok(value) => integer(value, out),
        Err(_) => big_integer(text, out)?,
    }
    Ok(())
}

/// An integer as Erlang writes it: one byte, 32 bits, or a bignum.
fn integer(value: i64, out: &mut Vec<u8>) {
    if let Ok(byte) = u8::try_from(value) {
        out.extend_from_slice(&[tag::SMALL_INTEGER, byte]);
    } else if let Ok(word) = i32::try_from(value) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&word.to_be_bytes());
    } else {
        let magnitude = value.unsigned_abs().to_le_bytes();
        let len = magnitude.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        big(value < 0, &magnitude[..len], out);
    }
}

/// An integer beyond 64 bits, from its decimal text (JSON's grammar: an
/// optional `-`, then digits).
fn big_integer(text: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    // 2.41 decimal digits per byte: refuse by length before the quadratic
    // conversion, then exactly by the bytes it takes.
    let too_large = EncodeError::IntegerTooLarge {
        digits: digits.len(),
    };
    if digits.len() > MAX_BIG_BYTES * 5 / 2 + 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(too_large);
    }
    // Little-endian 64-bit limbs, times 10^chunk plus each chunk of up
    // to 19 digits.
    let mut limbs: Vec<u64> = Vec::new();
    for chunk in digits.as_bytes().chunks(19) {
        let scale = 10u128.pow(chunk.len() as u32);
        let mut carry: u128 = chunk
            .iter()
            .fold(0u128, |acc, &d| acc * 10 + u128::from(d - b'0'));
        for limb in limbs.iter_mut() {
            let value = u128::from(*limb) * scale + carry;
            *limb = value as u64;
            carry = value >> 64;
        }
        if carry != 0 {
            limbs.push(carry as u64);
        }
    }
    let mut magnitude: Vec<u8> = limbs.iter().flat_map(|limb| limb.to_le_bytes()).collect();
    while magnitude.last() == Some(&0) {
        magnitude.pop();
    }
    if magnitude.len() > MAX_BIG_BYTES {
        return Err(too_large);
    }
    big(negative, &magnitude, out);
    Ok(())
}

fn big(negative: bool, magnitude: &[u8], out: &mut Vec<u8>) {
    match u8::try_from(magnitude.len()) {
        Ok(len) => out.extend_from_slice(&[tag::SMALL_BIG, len]),
        Err(_) => {
            out.push(tag::LARGE_BIG);
            out.extend_from_slice(&(magnitude.len() as u32).to_be_bytes());
        }
    }
    out.push(u8::from(negative));
    out.extend_from_slice(magnitude);
}

/// Reads a JSON object as its entries in order, repeated keys included,
/// values left as raw text.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
            entries.push(entry);
        }
        Ok(entries)
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
