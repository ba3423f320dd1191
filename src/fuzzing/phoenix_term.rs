//! The fuzz target over Phoenix PubSub's Redis messages: Erlang terms from
//! whatever publishes on the app's channel, and the terms Cinder writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Once;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use serde_json::value::RawValue;

use super::{Input, Pieces};
use crate::phoenix_pubsub::encode::{atom, binary};
use crate::phoenix_pubsub::json::JsonError;
use crate::phoenix_pubsub::message::{
    payload_of, Malformed, BROADCAST_STRUCT, CHANNEL_DISPATCHER, PRESENCE_TOPIC_PREFIX, VERSION,
};
use crate::phoenix_pubsub::tag;
use crate::phoenix_pubsub::term::{
    self, DecodeError, Opaque, Term, MAX_ATOM_CHARS, MAX_BIG_BYTES, MAX_DEPTH, MAX_INFLATED_BYTES,
    MAX_INPUT_BYTES, MAX_TERMS,
};
use crate::phoenix_pubsub::{classify, encode, CompressionLevel, EncodeError, Ignored, Incoming};
use crate::protocol::message::Payload;

/// The node the harness reads messages as.
const THIS_NODE: &str = "cinder-1";

/// Where a broadcast's payload sits in the term: inside the envelope tuple
/// (1) and the broadcast map (2).
const PAYLOAD_DEPTH: usize = 3;

/// Phoenix PubSub messages. A first byte with its top bit set (every real
/// message: they start with 131) sends the whole input to [`classify`] and
/// [`term::decode`] as a message read off Redis; below 128 it picks a
/// structured case built from the rest: a broadcast (node, topic, event,
/// payload — JSON from a generator or raw bytes, or a binary — and a
/// compression level) for [`encode()`], or a compressed term whose stream and
/// declared size disagree.
///
/// Invariants on a message read: no panic; the element-by-element reading
/// of [`classify`] agrees with a whole [`term::decode`] (the same decode
/// error, or — when the term decodes — the verdict the module's rules give
/// on the whole term); a decoded term stays within the decoder's limits
/// (depth, term count, atom length, bignum size, its bytes within the
/// message's) and, written back out in canonical form (with bytes after
/// it), decodes to itself; the same message compressed is read the same;
/// a broadcast's JSON payload is one compact JSON object, and re-encoded
/// with [`encode()`] it is read back by another node as the same broadcast
/// (the same JSON as Jason would decode it, object keys sorted) and by its
/// sender as its own echo, and encoding that again gives the same bytes.
///
/// Invariants on a broadcast written: [`encode()`] refuses exactly what it
/// must (a node name beyond an atom; a payload that is not UTF-8, not JSON,
/// not an object, or holds an integer beyond [`MAX_BIG_BYTES`], a number
/// beyond a float, or nests deeper than a node reads back) and nothing
/// else; what it writes, compressed or not, is read by another node as the
/// broadcast written (a presence topic ignored as such) and by the sender
/// as its own echo, the compressed term holding the same term and never
/// larger; and encoding the broadcast read gives the same bytes.
///
/// A compressed term inflating to another size than it declares is
/// refused, at most one byte past the declared size inflated; one that
/// inflates as declared reads as its body would. Once per process: a
/// message past [`MAX_INPUT_BYTES`], and a term declaring more than
/// [`MAX_INFLATED_BYTES`] inflated, are refused before anything is read.
pub fn phoenix_term(data: &[u8]) {
    static LIMITS: Once = Once::new();
    LIMITS.call_once(check_size_limits);
    match data.split_first() {
        Some((&mode, rest)) if mode < 0x80 => {
            let mut input = Input(rest);
            if mode % 8 == 7 {
                compressed_sizes(&mut input);
            } else {
                broadcast(mode, &mut input);
            }
        }
        _ => message(data),
    }
}

// ---------------------------------------------------------------------------
// A message read off Redis.

fn message(bytes: &[u8]) {
    if let Ok(incoming) = read_checks(bytes) {
        check_incoming(&incoming);
        check_round_trip(&incoming);
    }
}

/// The checks of a message read that need no re-encoding; the verdict.
fn read_checks(bytes: &[u8]) -> Result<Incoming, Ignored> {
    let verdict = classify(bytes, THIS_NODE);
    let decoded = term::decode(bytes);
    check_body_errors(bytes, &decoded);
    match &decoded {
        Ok(term) => {
            check_limits(bytes, term);
            check_rewrite(term, bytes.last().copied().unwrap_or(0));
            let expected = reference_verdict(term, THIS_NODE);
            assert!(
                same_verdict(&verdict, &expected),
                "classify() disagrees with the rules applied to the whole term:\n\
                 classify: {verdict:?}\nwhole term: {expected:?}\nterm: {term:?}"
            );
        }
        Err(err) => check_partial_verdict(&verdict, err),
    }
    check_compressed_alike(bytes, &verdict, &decoded);
    verdict
}

/// The checks on the message as a whole, before any term is read.
fn check_body_errors(bytes: &[u8], decoded: &Result<Term, DecodeError>) {
    match bytes.first() {
        None => assert_eq!(decoded, &Err(DecodeError::Truncated), "an empty message"),
        Some(&version) if version != tag::VERSION => assert_eq!(
            decoded,
            &Err(DecodeError::Version(version)),
            "a message without the version byte"
        ),
        Some(_) => {}
    }
    match decoded {
        Err(DecodeError::TooLarge { len, .. }) => {
            panic!("a message of {len} bytes refused as too large")
        }
        Err(DecodeError::InflatedTooLarge(declared)) => assert!(
            *declared as usize > MAX_INFLATED_BYTES,
            "a compressed term declaring {declared} bytes refused as too large"
        ),
        Err(DecodeError::InflatedSize { declared, actual }) => assert!(
            *actual <= *declared as usize + 1 && *actual != *declared as usize,
            "inflating stopped at {actual} bytes for {declared} declared"
        ),
        _ => {}
    }
}

/// A term that decodes is within every limit of the decoder.
fn check_limits(bytes: &[u8], term: &Term) {
    // The body's length: the message after its version byte, or what a
    // compressed term declared (and inflated to, since it decoded).
    let body = match bytes.get(1..6) {
        Some([tag::COMPRESSED, size @ ..]) => {
            u32::from_be_bytes(size.try_into().expect("four bytes")) as usize
        }
        _ => bytes.len() - 1,
    };
    let mut stats = Stats::default();
    stats.visit(term, 1);
    assert!(
        stats.depth <= MAX_DEPTH,
        "a term nested {} deep",
        stats.depth
    );
    assert!(
        stats.terms <= MAX_TERMS + 1,
        "a term of {} terms",
        stats.terms
    );
    assert!(
        stats.bytes <= body,
        "a term holding {} bytes from a body of {body}",
        stats.bytes
    );
}

#[derive(Default)]
struct Stats {
    depth: usize,
    terms: usize,
    /// Bytes of binaries, charlists and atoms.
    bytes: usize,
}

impl Stats {
    fn visit(&mut self, term: &Term, depth: usize) {
        self.depth = self.depth.max(depth);
        self.terms += 1;
        match term {
            Term::Int(_) | Term::Opaque(_) => {}
            Term::BigInt(text) => check_big_int(text),
            Term::Float(value) => assert!(value.is_finite(), "a float that is not finite"),
            Term::Atom(name) => {
                assert!(
                    name.chars().count() <= MAX_ATOM_CHARS,
                    "an atom of {} characters",
                    name.chars().count()
                );
                // Each character was at least one byte of the body (a
                // Latin-1 one may take two here).
                self.bytes += name.chars().count();
            }
            Term::Binary(bytes) | Term::Charlist(bytes) => self.bytes += bytes.len(),
            Term::List(items) | Term::Tuple(items) => {
                for item in items {
                    self.visit(item, depth + 1);
                }
            }
            Term::Map(pairs) => {
                for (key, value) in pairs {
                    self.visit(key, depth + 1);
                    self.visit(value, depth + 1);
                }
            }
        }
    }
}

/// A bignum is decimal text without leading zeros, beyond 64 bits (or it
/// would be an `Int`) and within [`MAX_BIG_BYTES`].
fn check_big_int(text: &str) {
    let digits = text.strip_prefix('-').unwrap_or(text);
    assert!(
        !digits.is_empty()
            && !digits.starts_with('0')
            && digits.bytes().all(|b| b.is_ascii_digit()),
        "a bignum that is not decimal: {text:?}"
    );
    assert!(
        text.parse::<i64>().is_err(),
        "a bignum that fits 64 bits: {text}"
    );
    let magnitude = decimal_magnitude(digits);
    assert!(
        magnitude.len() <= MAX_BIG_BYTES,
        "a bignum of {} bytes",
        magnitude.len()
    );
}

/// The decimal digits as a little-endian magnitude, without high zeros.
fn decimal_magnitude(digits: &str) -> Vec<u8> {
    let mut limbs: Vec<u32> = Vec::new();
    for chunk in digits.as_bytes().chunks(9) {
        let scale = 10u64.pow(chunk.len() as u32);
        let mut carry = chunk
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        for limb in limbs.iter_mut() {
            let value = u64::from(*limb) * scale + carry;
            *limb = value as u32;
            carry = value >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
    }
    let mut magnitude: Vec<u8> = limbs.iter().flat_map(|limb| limb.to_le_bytes()).collect();
    while magnitude.last() == Some(&0) {
        magnitude.pop();
    }
    magnitude
}

/// A decoded term written back in canonical form (with a byte after it,
/// which a reader ignores) decodes to itself: nothing was half-read,
/// misread or invented. Opaque values are written as one of their kind.
fn check_rewrite(term: &Term, junk: u8) {
    let mut out = vec![tag::VERSION];
    write_term(term, &mut out);
    if out.len() >= MAX_INPUT_BYTES {
        // Latin-1 atoms take more bytes as UTF-8: an inflated term near
        // the limit may not fit once rewritten.
        return;
    }
    out.push(junk);
    match term::decode(&out) {
        Ok(again) => assert!(
            again == *term,
            "a term written back decodes to another:\nfirst: {term:?}\nagain: {again:?}"
        ),
        Err(err) => panic!("a term written back does not decode ({err}): {term:?}"),
    }
}

fn write_term(term: &Term, out: &mut Vec<u8>) {
    match term {
        Term::Int(value) => {
            if let Ok(byte) = u8::try_from(*value) {
                out.extend_from_slice(&[tag::SMALL_INTEGER, byte]);
            } else if let Ok(word) = i32::try_from(*value) {
                out.push(tag::INTEGER);
                out.extend_from_slice(&word.to_be_bytes());
            } else {
                let magnitude = value.unsigned_abs().to_le_bytes();
                out.extend_from_slice(&[tag::SMALL_BIG, 8, u8::from(*value < 0)]);
                out.extend_from_slice(&magnitude);
            }
        }
        Term::BigInt(text) => {
            let (negative, digits) = match text.strip_prefix('-') {
                Some(digits) => (true, digits),
                None => (false, text.as_str()),
            };
            let magnitude = decimal_magnitude(digits);
            match u8::try_from(magnitude.len()) {
                Ok(len) => out.extend_from_slice(&[tag::SMALL_BIG, len]),
                Err(_) => {
                    out.push(tag::LARGE_BIG);
                    out.extend_from_slice(&(magnitude.len() as u32).to_be_bytes());
                }
            }
            out.push(u8::from(negative));
            out.extend_from_slice(&magnitude);
        }
        Term::Float(value) => {
            out.push(tag::NEW_FLOAT);
            out.extend_from_slice(&value.to_be_bytes());
        }
        Term::Atom(name) => atom(name, out),
        Term::Binary(bytes) => binary(bytes, out),
        Term::Charlist(bytes) => {
            out.push(tag::STRING);
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        Term::List(items) if items.is_empty() => out.push(tag::NIL),
        Term::List(items) => {
            out.push(tag::LIST);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for item in items {
                write_term(item, out);
            }
            out.push(tag::NIL);
        }
        Term::Tuple(items) => {
            match u8::try_from(items.len()) {
                Ok(arity) => out.extend_from_slice(&[tag::SMALL_TUPLE, arity]),
                Err(_) => {
                    out.push(tag::LARGE_TUPLE);
                    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
                }
            }
            for item in items {
                write_term(item, out);
            }
        }
        Term::Map(pairs) => {
            out.push(tag::MAP);
            out.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
            for (key, value) in pairs {
                write_term(key, out);
                write_term(value, out);
            }
        }
        Term::Opaque(kind) => write_opaque(*kind, out),
    }
}

/// One value of the kind, as current OTP writes it.
fn write_opaque(kind: Opaque, out: &mut Vec<u8>) {
    match kind {
        Opaque::Pid => {
            out.push(tag::NEW_PID);
            atom("phoenix@host", out);
            out.extend_from_slice(&[0, 0, 0, 86, 0, 0, 0, 0, 0x65, 0x0a, 0x1b, 0x2c]);
        }
        Opaque::Port => {
            out.push(tag::V4_PORT);
            atom("phoenix@host", out);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 0x65, 0x0a, 0x1b, 0x2c]);
        }
        Opaque::Reference => {
            out.extend_from_slice(&[tag::NEWER_REFERENCE, 0, 3]);
            atom("phoenix@host", out);
            out.extend_from_slice(&[0x65, 0x0a, 0x1b, 0x2c]);
            out.extend_from_slice(&[1; 12]);
        }
        Opaque::Fun => {
            // A fun's body is skipped by its size (which counts itself),
            // so this one nests no deeper than it is.
            out.push(tag::NEW_FUN);
            out.extend_from_slice(&8u32.to_be_bytes());
            out.extend_from_slice(&[0, 1, 2, 3]);
        }
        Opaque::Bitstring => {
            out.push(tag::BIT_BINARY);
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&[3, 0b1010_0000]);
        }
    }
}

/// When the whole term does not decode, [`classify`] either stopped before
/// the bad part, with a verdict its first elements give, or met the same
/// error: it reads the same bytes in the same order, with the same limits.
fn check_partial_verdict(verdict: &Result<Incoming, Ignored>, err: &DecodeError) {
    match verdict {
        Err(Ignored::Malformed(Malformed::Decode(found))) => assert_eq!(
            found, err,
            "classify() met another decode error than decode()"
        ),
        Err(
            Ignored::Malformed(Malformed::Shape(_))
            | Ignored::Version(_)
            | Ignored::OwnEcho
            | Ignored::OtherNode
            | Ignored::Presence,
        ) => {}
        other => panic!("classify() read a whole message that does not decode ({err}): {other:?}"),
    }
}

/// Verdicts are the same, the wording of a `Shape` aside.
fn same_verdict(a: &Result<Incoming, Ignored>, b: &Result<Incoming, Ignored>) -> bool {
    match (a, b) {
        (
            Err(Ignored::Malformed(Malformed::Shape(_))),
            Err(Ignored::Malformed(Malformed::Shape(_))),
        ) => true,
        _ => a == b,
    }
}

/// The rules of `message.rs`'s module docs, applied to the whole term: what
/// [`classify`] must answer for a message that decodes.
fn reference_verdict(term: &Term, this_node: &str) -> Result<Incoming, Ignored> {
    let shape = || Ignored::Malformed(Malformed::Shape("(reference)"));
    let Term::Tuple(items) = term else {
        return Err(shape());
    };
    match items.first() {
        Some(Term::Int(VERSION)) => {}
        Some(Term::Int(version)) => return Err(Ignored::Version(*version)),
        Some(Term::BigInt(_)) => return Err(Ignored::Version(i64::MAX)),
        _ => return Err(shape()),
    }
    let [_, mode, node, topic, message, dispatcher] = items.as_slice() else {
        return Err(shape());
    };
    let only = match mode.as_atom() {
        Some("except") => false,
        Some("only") => true,
        _ => return Err(shape()),
    };
    let node: &[u8] = match node {
        Term::Atom(name) => name.as_bytes(),
        Term::Binary(name) => name,
        _ => return Err(shape()),
    };
    let Term::Binary(topic) = topic else {
        return Err(shape());
    };
    let ours = node == this_node.as_bytes();
    match (only, ours) {
        (false, true) => return Err(Ignored::OwnEcho),
        (true, false) => return Err(Ignored::OtherNode),
        _ => {}
    }
    if topic.starts_with(PRESENCE_TOPIC_PREFIX.as_bytes()) {
        return Err(Ignored::Presence);
    }
    if dispatcher.as_atom() != Some(CHANNEL_DISPATCHER) {
        return Err(Ignored::Dispatcher);
    }
    // The struct's fields: keys are atoms, `topic` and `event` binaries
    // (a field of another type is no field), the last one written counts.
    let Term::Map(pairs) = message else {
        return Err(Ignored::NotABroadcast);
    };
    let field = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, value)| {
                key.as_atom() == Some(name)
                    && (matches!(value, Term::Binary(_)) || !matches!(name, "topic" | "event"))
            })
            .map(|(_, value)| value)
    };
    if field("__struct__").and_then(Term::as_atom) != Some(BROADCAST_STRUCT) {
        return Err(Ignored::NotABroadcast);
    }
    let (Some(Term::Binary(struct_topic)), Some(Term::Binary(event)), Some(payload)) =
        (field("topic"), field("event"), field("payload"))
    else {
        return Err(Ignored::NotABroadcast);
    };
    if struct_topic != topic {
        return Err(Ignored::NotABroadcast);
    }
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| Ignored::Unencodable(JsonError::NotUtf8))
    };
    let topic = text(topic)?;
    let event = text(event)?;
    let payload = payload_of(payload.clone())?;
    Ok(Incoming {
        topic,
        event,
        payload,
        sender: String::from_utf8_lossy(node).into_owned(),
    })
}

/// The same message compressed (at a level the input picks, 0 being
/// zlib's stored blocks) is read exactly as it was.
fn check_compressed_alike(
    bytes: &[u8],
    verdict: &Result<Incoming, Ignored>,
    decoded: &Result<Term, DecodeError>,
) {
    let [tag::VERSION, body @ ..] = bytes else {
        return;
    };
    if body.first() == Some(&tag::COMPRESSED) {
        return;
    }
    let level = bytes.len() as u32 % 10;
    let compressed = compress(body, body.len() as u32, level);
    assert_eq!(
        &classify(&compressed, THIS_NODE),
        verdict,
        "the message compressed is classified differently"
    );
    assert_eq!(
        &term::decode(&compressed),
        decoded,
        "the message compressed decodes differently"
    );
}

/// A compressed message: version, tag 80, the declared size, then zlib.
fn compress(body: &[u8], declared: u32, level: u32) -> Vec<u8> {
    let mut out = vec![tag::VERSION, tag::COMPRESSED];
    out.extend_from_slice(&declared.to_be_bytes());
    let mut encoder = ZlibEncoder::new(out, Compression::new(level));
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .expect("zlib into a Vec")
}

/// A broadcast read is for sockets: a compact JSON object or bytes, on a
/// topic that is no presence gossip.
fn check_incoming(incoming: &Incoming) {
    assert!(
        !incoming.topic.starts_with(PRESENCE_TOPIC_PREFIX),
        "a presence topic delivered"
    );
    if let Payload::Json(text) = &incoming.payload {
        check_compact_object(text);
    }
}

/// JSON text that is one object, starting at its first byte and ending at
/// its last (it is spliced into clients' frames as is).
fn check_compact_object(text: &[u8]) {
    let raw: &RawValue = serde_json::from_slice(text).unwrap_or_else(|err| {
        panic!(
            "a JSON payload that is not JSON ({err}): {}",
            String::from_utf8_lossy(text)
        )
    });
    assert!(
        raw.get().len() == text.len() && text.first() == Some(&b'{'),
        "a JSON payload that is not one compact object: {}",
        String::from_utf8_lossy(text)
    );
}

/// A broadcast read, written back with [`encode()`], is read by another node
/// as the same broadcast and by its sender as its own echo; writing it
/// again from there gives the same bytes.
fn check_round_trip(incoming: &Incoming) {
    let encoded = match encode(
        &incoming.sender,
        &incoming.topic,
        &incoming.event,
        &incoming.payload,
        CompressionLevel::NONE,
    ) {
        Ok(encoded) => encoded,
        // A binary node name may be longer than an atom.
        Err(EncodeError::NodeNameTooLong) if incoming.sender.chars().count() > MAX_ATOM_CHARS => {
            return
        }
        // Written as Cinder writes them (binary keys, UTF-8 atoms), the
        // terms of a large inflated message may be too large to read back.
        Err(EncodeError::TooLarge(_)) => return,
        Err(err) => panic!("a broadcast read cannot be written back: {err}: {incoming:?}"),
    };
    let again = read_back(&encoded, &incoming.sender);
    assert_eq!(
        (&again.topic, &again.event, &again.sender),
        (&incoming.topic, &incoming.event, &incoming.sender),
        "a broadcast written back is read with other fields"
    );
    check_same_payload(&incoming.payload, &again.payload);
    let twice = encode(
        &again.sender,
        &again.topic,
        &again.event,
        &again.payload,
        CompressionLevel::NONE,
    )
    .unwrap_or_else(|err| panic!("a broadcast read back cannot be written again: {err}"));
    assert!(
        twice == encoded,
        "encode ∘ classify is not stable:\nfirst: {encoded:?}\nagain: {twice:?}"
    );
}

/// `bytes` written by `sender`: its own echo there, a broadcast elsewhere.
fn read_back(bytes: &[u8], sender: &str) -> Incoming {
    assert_eq!(
        classify(bytes, sender),
        Err(Ignored::OwnEcho),
        "a node does not recognise its own broadcast"
    );
    let other = if sender == "cinder-2" {
        "cinder-3"
    } else {
        "cinder-2"
    };
    classify(bytes, other).unwrap_or_else(|ignored| {
        panic!("a broadcast written by encode() is ignored ({ignored}) by another node: {bytes:?}")
    })
}

/// Two payloads carry the same data: the same bytes, or JSON that Jason
/// decodes to the same terms. The second was read from a term Cinder
/// wrote, so its objects' keys are sorted (byte-wise) and unique.
fn check_same_payload(first: &Payload, again: &Payload) {
    match (first, again) {
        (Payload::Binary(a), Payload::Binary(b)) => {
            assert_eq!(a, b, "a binary payload changed");
        }
        (Payload::Json(a), Payload::Json(b)) => {
            let (a_model, a_problems) = jason_text(a, false);
            let (b_model, b_problems) = jason_text(b, true);
            assert!(
                a_problems.is_empty() && b_problems.is_empty(),
                "payloads Cinder cannot write: {a_problems:?} {b_problems:?}"
            );
            assert!(
                a_model == b_model,
                "a JSON payload changed:\nsent: {}\nread: {}",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
        _ => panic!("a payload changed kind: {first:?} → {again:?}"),
    }
}

// ---------------------------------------------------------------------------
// JSON as Jason decodes it on a Phoenix node: what a broadcast's payload
// means, whatever its text.

/// A JSON value as the term Jason makes of it.
#[derive(Debug, PartialEq)]
enum Jason {
    Null,
    Bool(bool),
    /// Decimal text, `-0` as `0`.
    Int(String),
    /// The float's bits.
    Float(u64),
    Str(String),
    List(Vec<Jason>),
    /// The last of repeated keys wins.
    Map(BTreeMap<String, Jason>),
}

/// Why [`encode()`] must refuse a JSON payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    NotUtf8,
    Json,
    NotAnObject,
    IntegerTooLarge,
    FloatOutOfRange,
    TooDeep,
}

impl Problem {
    fn of(err: &EncodeError) -> Option<Problem> {
        Some(match err {
            EncodeError::NotUtf8 => Problem::NotUtf8,
            EncodeError::Json(_) => Problem::Json,
            EncodeError::NotAnObject => Problem::NotAnObject,
            EncodeError::IntegerTooLarge { .. } => Problem::IntegerTooLarge,
            EncodeError::FloatOutOfRange(_) => Problem::FloatOutOfRange,
            EncodeError::TooDeep => Problem::TooDeep,
            EncodeError::TooLarge(_) | EncodeError::NodeNameTooLong => return None,
        })
    }
}

/// A payload's text as Jason decodes it, and every reason [`encode()`] must
/// refuse it (none: it must write it). With `sorted`, the text was
/// written from a term Cinder wrote: every object's keys must be sorted
/// (byte-wise) and unique.
///
/// serde_json (as `encode` uses it) judges whether the text is JSON; the
/// rest is read here, in one pass (a walk re-parsing each level, as
/// `encode` does, is quadratic in the nesting).
fn jason_text(text: &[u8], sorted: bool) -> (Option<Jason>, Vec<Problem>) {
    let Ok(text) = std::str::from_utf8(text) else {
        return (None, vec![Problem::NotUtf8]);
    };
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return (None, vec![Problem::Json]);
    };
    if !raw.get().starts_with('{') {
        return (None, vec![Problem::NotAnObject]);
    }
    let mut problems = Vec::new();
    let mut reader = JsonReader {
        text: raw.get().as_bytes(),
        at: 0,
        sorted,
    };
    let model = reader.value(PAYLOAD_DEPTH, &mut problems);
    (Some(model), problems)
}

/// Reads JSON that serde_json has accepted: one value at a time, at
/// nesting level `depth` of the term, noting what stops it from being
/// written (only for values that survive: of repeated keys, the last).
struct JsonReader<'a> {
    text: &'a [u8],
    at: usize,
    sorted: bool,
}

impl JsonReader<'_> {
    fn peek(&mut self) -> u8 {
        while matches!(self.text.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
        self.text.get(self.at).copied().unwrap_or(0)
    }

    fn expect(&mut self, byte: u8) {
        assert_eq!(self.peek(), byte, "JSON serde_json took, at {}", self.at);
        self.at += 1;
    }

    fn value(&mut self, depth: usize, problems: &mut Vec<Problem>) -> Jason {
        if depth > MAX_DEPTH {
            problems.push(Problem::TooDeep);
            self.skip();
            return Jason::Null;
        }
        match self.peek() {
            b'{' => self.object(depth, problems),
            b'[' => self.array(depth, problems),
            b'"' => match self.string() {
                Some(string) => Jason::Str(string),
                None => {
                    problems.push(Problem::Json);
                    Jason::Null
                }
            },
            b't' => self.literal(b"true", Jason::Bool(true)),
            b'f' => self.literal(b"false", Jason::Bool(false)),
            b'n' => self.literal(b"null", Jason::Null),
            _ => {
                let token = self.number();
                number_value(token, problems)
            }
        }
    }

    fn literal(&mut self, word: &[u8], value: Jason) -> Jason {
        assert!(
            self.text[self.at..].starts_with(word),
            "JSON serde_json took"
        );
        self.at += word.len();
        value
    }

    fn object(&mut self, depth: usize, problems: &mut Vec<Problem>) -> Jason {
        self.expect(b'{');
        let mut map: BTreeMap<String, (Jason, Vec<Problem>)> = BTreeMap::new();
        let mut last: Option<String> = None;
        if self.peek() == b'}' {
            self.at += 1;
            return Jason::Map(BTreeMap::new());
        }
        loop {
            let Some(key) = self.string() else {
                problems.push(Problem::Json);
                self.expect(b':');
                self.skip();
                if self.comma_or(b'}') {
                    continue;
                }
                break;
            };
            if self.sorted {
                if let Some(last) = &last {
                    assert!(
                        last.as_bytes() < key.as_bytes(),
                        "object keys not sorted and unique: {last:?} before {key:?}"
                    );
                }
                last = Some(key.clone());
            }
            self.expect(b':');
            let mut own = Vec::new();
            let value = self.value(depth + 1, &mut own);
            map.insert(key, (value, own));
            if !self.comma_or(b'}') {
                break;
            }
        }
        Jason::Map(
            map.into_iter()
                .map(|(key, (value, own))| {
                    problems.extend(own);
                    (key, value)
                })
                .collect(),
        )
    }

    /// Integers 0..=255 (up to 65535 of them, at least one) are one term,
    /// a charlist, at the list's depth: their own is not checked.
    fn array(&mut self, depth: usize, problems: &mut Vec<Problem>) -> Jason {
        self.expect(b'[');
        let mut items = Vec::new();
        if self.peek() == b']' {
            self.at += 1;
            return Jason::List(items);
        }
        let mut bytes = true;
        loop {
            let next = self.peek();
            if next == b'-' || next.is_ascii_digit() {
                let token = self.number();
                let byte = token.parse::<i64>().is_ok_and(|v| (0..=255).contains(&v));
                if !byte && bytes {
                    bytes = false;
                    Self::too_deep(items.len(), depth + 1, problems);
                }
                if bytes {
                    items.push(number_value(token, problems));
                } else {
                    Self::too_deep(1, depth + 1, problems);
                    items.push(if depth < MAX_DEPTH {
                        number_value(token, problems)
                    } else {
                        Jason::Null
                    });
                }
            } else {
                if bytes {
                    bytes = false;
                    Self::too_deep(items.len(), depth + 1, problems);
                }
                items.push(self.value(depth + 1, problems));
            }
            if !self.comma_or(b']') {
                break;
            }
        }
        if bytes && items.len() > usize::from(u16::MAX) {
            // Too many for a charlist: a list, each element a level down.
            Self::too_deep(items.len(), depth + 1, problems);
        }
        Jason::List(items)
    }

    fn too_deep(values: usize, depth: usize, problems: &mut Vec<Problem>) {
        if values > 0 && depth > MAX_DEPTH {
            problems.push(Problem::TooDeep);
        }
    }

    /// After an element: `true` past a comma, `false` past the closer.
    fn comma_or(&mut self, closer: u8) -> bool {
        match self.peek() {
            b',' => {
                self.at += 1;
                true
            }
            byte => {
                assert_eq!(byte, closer, "JSON serde_json took, at {}", self.at);
                self.at += 1;
                false
            }
        }
    }

    fn number(&mut self) -> &str {
        self.peek();
        let start = self.at;
        while matches!(
            self.text.get(self.at),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.at += 1;
        }
        std::str::from_utf8(&self.text[start..self.at]).expect("ASCII")
    }

    /// A string's text; `None` for an escape of half a surrogate pair
    /// (which serde_json refuses to make a string of).
    fn string(&mut self) -> Option<String> {
        self.expect(b'"');
        let mut out: Vec<u8> = Vec::new();
        let mut valid = true;
        loop {
            let byte = self.text[self.at];
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escape = self.text[self.at];
                    self.at += 1;
                    let c = match escape {
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4();
                            match unit {
                                0xD800..=0xDBFF if self.text[self.at..].starts_with(b"\\u") => {
                                    let at = self.at;
                                    self.at += 2;
                                    let low = self.hex4();
                                    if (0xDC00..=0xDFFF).contains(&low) {
                                        let code = 0x10000
                                            + ((u32::from(unit) - 0xD800) << 10)
                                            + (u32::from(low) - 0xDC00);
                                        char::from_u32(code).expect("a surrogate pair")
                                    } else {
                                        // Read the second escape again on
                                        // its own.
                                        self.at = at;
                                        valid = false;
                                        continue;
                                    }
                                }
                                0xD800..=0xDFFF => {
                                    valid = false;
                                    continue;
                                }
                                unit => char::from_u32(u32::from(unit)).expect("no surrogate"),
                            }
                        }
                        other => char::from(other),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                byte => out.push(byte),
            }
        }
        valid.then(|| String::from_utf8(out).expect("UTF-8 text"))
    }

    fn hex4(&mut self) -> u16 {
        let digits = std::str::from_utf8(&self.text[self.at..self.at + 4]).expect("hex");
        self.at += 4;
        u16::from_str_radix(digits, 16).expect("hex")
    }

    /// Past one value, unread: strings and nesting followed, nothing kept.
    fn skip(&mut self) {
        let mut open = 0usize;
        loop {
            match self.peek() {
                b'"' => {
                    self.at += 1;
                    while self.text[self.at] != b'"' {
                        self.at += if self.text[self.at] == b'\\' { 2 } else { 1 };
                    }
                    self.at += 1;
                }
                b'{' | b'[' => {
                    open += 1;
                    self.at += 1;
                }
                b'}' | b']' => {
                    open -= 1;
                    self.at += 1;
                }
                b',' | b':' => self.at += 1,
                _ => {
                    while !matches!(
                        self.text.get(self.at),
                        None | Some(
                            b',' | b':' | b'}' | b']' | b'"' | b' ' | b'\t' | b'\n' | b'\r'
                        )
                    ) {
                        self.at += 1;
                    }
                }
            }
            if open == 0 {
                return;
            }
        }
    }
}

/// A number as Jason reads it: a float if its text has a fraction or an
/// exponent, else an integer of any size.
fn number_value(text: &str, problems: &mut Vec<Problem>) -> Jason {
    if text.contains(['.', 'e', 'E']) {
        return match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Jason::Float(value.to_bits()),
            _ => {
                problems.push(Problem::FloatOutOfRange);
                Jason::Null
            }
        };
    }
    match text.parse::<i64>() {
        Ok(value) => Jason::Int(value.to_string()),
        Err(_) => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            // A byte is less than three digits: past three digits a byte
            // of the limit, no need to convert.
            if digits.len() > 3 * MAX_BIG_BYTES || decimal_magnitude(digits).len() > MAX_BIG_BYTES {
                problems.push(Problem::IntegerTooLarge);
            }
            Jason::Int(text.to_owned())
        }
    }
}

// ---------------------------------------------------------------------------
// A broadcast written by Cinder.

fn broadcast(mode: u8, input: &mut Input<'_>) {
    let level = CompressionLevel::new(u32::from(input.byte() % 10)).expect("0..=9");
    let node = pick_text(
        input,
        &[
            "phoenix@host",
            THIS_NODE,
            "cinder-2",
            "Zoë@höst",
            "",
            "__struct__",
        ],
    );
    let topic = pick_text(
        input,
        &[
            "room:lobby",
            "phx_presence:room:lobby",
            "",
            "phx_presence:",
            "room:é",
            "phx_presence",
        ],
    );
    let event = pick_text(input, &["new_msg", "", "phx_reply", "presence_diff"]);
    let payload = match mode % 8 {
        0 => {
            let len = input.byte();
            Payload::Binary(input.bytes(usize::from(len)).to_vec())
        }
        1 => {
            let len = input.u16();
            Payload::Json(input.bytes(usize::from(len)).to_vec())
        }
        _ => {
            let mut text = String::new();
            let mut budget = 2_000usize;
            if mode & 0x40 == 0 {
                generate_object(input, &mut text, 0, &mut budget);
            } else {
                generate_value(input, &mut text, 0, &mut budget);
            }
            Payload::Json(text.into_bytes())
        }
    };
    check_broadcast(&node, &topic, &event, &payload, level);
}

/// A broadcast written with [`encode()`]: refused exactly when it must be,
/// else read as written.
fn check_broadcast(
    node: &str,
    topic: &str,
    event: &str,
    payload: &Payload,
    level: CompressionLevel,
) {
    let (model, problems) = match payload {
        Payload::Binary(_) => (None, Vec::new()),
        Payload::Json(text) => jason_text(text, false),
    };
    let written = encode(node, topic, event, payload, CompressionLevel::NONE);
    if node.chars().count() > MAX_ATOM_CHARS {
        assert!(
            matches!(written, Err(EncodeError::NodeNameTooLong)),
            "a node name of {} characters: {written:?}",
            node.chars().count()
        );
        return;
    }
    let bytes = match written {
        Ok(bytes) => {
            assert!(
                problems.is_empty(),
                "encode() wrote a payload it must refuse ({problems:?}): {payload:?}"
            );
            bytes
        }
        Err(err) => {
            let problem = Problem::of(&err);
            assert!(
                problem.is_some_and(|p| problems.contains(&p)),
                "encode() refused a broadcast for no reason it has ({err}; expected {problems:?}): \
                 {payload:?}"
            );
            return;
        }
    };
    // Everything a message read must satisfy; read here, it is the
    // broadcast read elsewhere (checked below), or this node's own echo.
    let here = read_checks(&bytes);

    // Compressed: the same term, never larger, read the same; level 0 is
    // no compression.
    let compressed = encode(node, topic, event, payload, level).expect("written uncompressed");
    let other = if node == "cinder-2" {
        "cinder-3"
    } else {
        "cinder-2"
    };
    if level == CompressionLevel::NONE {
        assert_eq!(compressed, bytes, "level 0 compressed");
    } else {
        assert!(
            compressed.len() <= bytes.len(),
            "compression made a term larger"
        );
        assert_eq!(
            term::decode(&compressed),
            term::decode(&bytes),
            "the compressed term is another term"
        );
        for at in [node, other] {
            assert_eq!(
                classify(&compressed, at),
                classify(&bytes, at),
                "the compressed term is read otherwise"
            );
        }
    }

    if topic.starts_with(PRESENCE_TOPIC_PREFIX) {
        assert_eq!(
            classify(&bytes, node),
            Err(Ignored::OwnEcho),
            "a node does not recognise its own broadcast"
        );
        assert_eq!(
            classify(&bytes, other),
            Err(Ignored::Presence),
            "a broadcast on a presence topic is not taken for presence traffic"
        );
        if node != THIS_NODE {
            assert_eq!(here, Err(Ignored::Presence), "presence read here");
        }
        return;
    }
    let read = read_back(&bytes, node);
    if node != THIS_NODE {
        assert_eq!(
            here.as_ref(),
            Ok(&read),
            "read otherwise here than elsewhere"
        );
    }
    assert_eq!(
        (
            read.topic.as_str(),
            read.event.as_str(),
            read.sender.as_str()
        ),
        (topic, event, node),
        "a broadcast is read with other fields than written"
    );
    match (&read.payload, payload) {
        (Payload::Binary(read), Payload::Binary(sent)) => {
            assert_eq!(read, sent, "a binary payload changed");
        }
        (Payload::Json(read), Payload::Json(_)) => {
            check_compact_object(read);
            let (read_model, read_problems) = jason_text(read, true);
            assert!(
                read_problems.is_empty() && read_model == model,
                "a JSON payload changed:\nsent: {payload:?}\nread: {}",
                String::from_utf8_lossy(read)
            );
        }
        (read, sent) => panic!("a payload changed kind: {sent:?} → {read:?}"),
    }
    // encode ∘ classify gives these very bytes back.
    let again = encode(
        &read.sender,
        &read.topic,
        &read.event,
        &read.payload,
        CompressionLevel::NONE,
    )
    .expect("a broadcast read back is written again");
    assert!(
        again == bytes,
        "a broadcast read back is written as other bytes"
    );
}

/// A text from a short list, or from the input (lossy UTF-8; a length
/// byte of 255 or more makes a node name longer than an atom).
fn pick_text(input: &mut Input<'_>, choices: &[&str]) -> String {
    let choice = usize::from(input.byte());
    if let Some(text) = choices.get(choice % (choices.len() + 2)) {
        return (*text).to_owned();
    }
    if choice % (choices.len() + 2) == choices.len() {
        let len = usize::from(input.byte());
        return String::from_utf8_lossy(input.bytes(len)).into_owned();
    }
    // Long: up to 255 + 255 characters.
    let len = 200 + usize::from(input.byte());
    let fill = char::from(b'a' + input.byte() % 26);
    let mut text: String = std::iter::repeat_n(fill, len).collect();
    text.push('é');
    text
}

/// Whitespace JSON allows, maybe.
fn generate_blank(input: &mut Input<'_>, out: &mut String, bits: u8) {
    if bits & 0x80 != 0 {
        out.push_str([" ", "\t", "\n", "\r\n "][usize::from(input.byte() % 4)]);
    }
}

fn generate_object(input: &mut Input<'_>, out: &mut String, depth: usize, budget: &mut usize) {
    let n = input.byte();
    generate_blank(input, out, n);
    out.push('{');
    for i in 0..n % 8 {
        if i > 0 {
            out.push(',');
        }
        generate_key(input, out);
        out.push(':');
        generate_value(input, out, depth + 1, budget);
    }
    generate_blank(input, out, n << 1);
    out.push('}');
}

const KEYS: [&str; 10] = [
    "a",
    "b",
    "",
    "__struct__",
    "$serde_json::private::RawValue",
    "é",
    "A",
    "aa",
    "1",
    "topic",
];

fn generate_key(input: &mut Input<'_>, out: &mut String) {
    let choice = input.byte();
    match KEYS.get(usize::from(choice % 12)) {
        Some(key) => generate_escaped(input, out, key, choice),
        None => generate_string(input, out),
    }
}

/// One JSON value: every kind Jason reads, numbers at and past the limits,
/// strings with every escape, nesting past the depth a node reads back.
fn generate_value(input: &mut Input<'_>, out: &mut String, depth: usize, budget: &mut usize) {
    let kind = input.byte();
    *budget = budget.saturating_sub(1);
    if *budget == 0 || depth > 200 {
        out.push_str("null");
        return;
    }
    generate_blank(input, out, kind);
    match kind % 16 {
        0 => out.push_str("null"),
        1 => out.push_str("true"),
        2 => out.push_str("false"),
        3 => {
            let value = match input.byte() % 4 {
                0 => i64::from(input.byte()),
                1 => -i64::from(input.u16()),
                2 => i64::from(input.u32() as i32),
                _ => input.u64() as i64,
            };
            if value == 0 && input.byte() & 1 == 1 {
                out.push_str("-0");
            } else {
                out.push_str(&value.to_string());
            }
        }
        4 => {
            // 1 to 700 digits: past 64 bits, and past 2048.
            let len = 1 + usize::from(input.u16()) % 700;
            let mut pieces = Pieces::new(input.byte(), 10);
            if input.byte() & 1 == 1 {
                out.push('-');
            }
            out.push(char::from(b'0' + pieces.next() as u8 % 9 + 1));
            for _ in 1..len {
                out.push(char::from(b'0' + (pieces.next() - 1) as u8));
            }
        }
        5 => {
            let value = f64::from_bits(input.u64());
            if value.is_finite() {
                let text = match input.byte() % 3 {
                    0 => format!("{value:e}"),
                    1 => format!("{value:?}"),
                    _ => format!("{value:E}"),
                };
                // `{:?}` writes `1e20` and `1.0`; both are JSON numbers.
                out.push_str(&text);
            } else {
                out.push_str("1e400");
            }
        }
        6 => {
            // Digits, a fraction, an exponent: maybe beyond a float.
            if input.byte() & 1 == 1 {
                out.push('-');
            }
            let int = input.u16();
            out.push_str(&int.to_string());
            let shape = input.byte();
            if shape & 1 == 1 {
                out.push('.');
                out.push_str(&input.u32().to_string());
            }
            if shape & 2 == 2 || shape & 1 == 0 {
                out.push(if shape & 4 == 4 { 'e' } else { 'E' });
                match shape >> 3 & 3 {
                    0 => out.push('+'),
                    1 => out.push('-'),
                    _ => {}
                }
                out.push_str(&(input.u16() % 1000).to_string());
            }
        }
        7 | 8 => generate_string(input, out),
        9 | 10 => {
            let n = input.byte() % 8;
            out.push('[');
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                generate_value(input, out, depth + 1, budget);
            }
            out.push(']');
        }
        11 | 12 => generate_object(input, out, depth, budget),
        13 => {
            // Bytes: a charlist in the term.
            let n = input.byte();
            out.push('[');
            for (i, &b) in input.bytes(usize::from(n)).iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&b.to_string());
            }
            out.push(']');
        }
        _ => {
            // A chain of arrays and objects, up to 255 deep.
            let chain = input.byte();
            let shape = input.u32();
            let mut closers = Vec::new();
            for level in 0..chain {
                if shape >> (level % 32) & 1 == 1 {
                    out.push_str("{\"k\":");
                    closers.push('}');
                } else {
                    out.push('[');
                    closers.push(']');
                }
            }
            generate_value(input, out, depth + usize::from(chain) + 1, budget);
            while let Some(closer) = closers.pop() {
                out.push(closer);
            }
        }
    }
}

/// Characters worth escaping, and worth not escaping.
const CHARS: [char; 16] = [
    'a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é', '\u{2028}', '😀',
    '\u{ffff}', '\t',
];

fn generate_string(input: &mut Input<'_>, out: &mut String) {
    let len = usize::from(input.byte() % 24);
    let mut text = String::new();
    for _ in 0..len {
        let b = input.byte();
        text.push(match b {
            0x20..=0x7e => char::from(b),
            _ => CHARS[usize::from(b % 16)],
        });
    }
    let style = input.byte();
    generate_escaped(input, out, &text, style);
}

/// A JSON string of `text`: each character written as is where JSON
/// allows, or escaped (short escapes, `\u` with either case of hex digits,
/// surrogate pairs), as the input picks.
fn generate_escaped(input: &mut Input<'_>, out: &mut String, text: &str, style: u8) {
    out.push('"');
    let mut pieces = Pieces::new(style, 4);
    for c in text.chars() {
        let how = pieces.next();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if how == 1 => out.push_str("\\n"),
            '\t' if how == 1 => out.push_str("\\t"),
            '/' if how == 1 => out.push_str("\\/"),
            c if (c as u32) < 0x20 || how == 4 => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    if input.byte() & 1 == 1 {
                        out.push_str(&format!("\\u{unit:04x}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Compressed terms: the declared size against the stream.

/// A compressed term declaring `declared` bytes whose stream inflates to
/// `actual` (zeros, or the input's bytes): read only if they are equal,
/// refused as `InflatedSize` with at most one byte past the declared size
/// inflated otherwise.
fn compressed_sizes(input: &mut Input<'_>) {
    let declared = u32::from(input.u16());
    let actual = match input.byte() % 3 {
        0 => usize::from(input.u16()),
        1 => declared as usize,
        _ => (declared as usize).saturating_sub(usize::from(input.byte() % 4)) + 1,
    };
    let filler = input.byte();
    let body: Vec<u8> = input
        .bytes(actual)
        .iter()
        .copied()
        .chain(std::iter::repeat(filler))
        .take(actual)
        .collect();
    let compressed = compress(&body, declared, u32::from(filler % 10));
    let decoded = term::decode(&compressed);
    if actual == declared as usize {
        let mut plain = vec![tag::VERSION];
        plain.extend_from_slice(&body);
        if body.first() == Some(&tag::COMPRESSED) {
            // Inside, tag 80 is a term of its own, and refused.
            assert!(
                matches!(decoded, Err(DecodeError::Unsupported { .. })),
                "a compressed term inside a compressed term: {decoded:?}"
            );
        } else {
            assert_eq!(
                decoded,
                term::decode(&plain),
                "a compressed term reads otherwise than its body"
            );
        }
    } else {
        assert_eq!(
            decoded,
            Err(DecodeError::InflatedSize {
                declared,
                actual: actual.min(declared as usize + 1),
            }),
            "a compressed term inflating to another size than declared"
        );
    }
    message(&compressed);
}

/// Once per process: a message past [`MAX_INPUT_BYTES`] and a compressed
/// term declaring more than [`MAX_INFLATED_BYTES`] are refused before
/// anything is read or reserved.
fn check_size_limits() {
    let mut large = vec![tag::VERSION, tag::NIL];
    large.resize(MAX_INPUT_BYTES + 1, 0);
    assert_eq!(
        term::decode(&large),
        Err(DecodeError::TooLarge {
            len: MAX_INPUT_BYTES + 1,
            max: MAX_INPUT_BYTES
        }),
        "a message past the limit"
    );
    large.truncate(MAX_INPUT_BYTES);
    assert_eq!(
        term::decode(&large),
        Ok(Term::List(Vec::new())),
        "a message at the limit"
    );
    let declared = MAX_INFLATED_BYTES as u32 + 1;
    let bomb = compress(&[0; 1024], declared, 9);
    assert_eq!(
        term::decode(&bomb),
        Err(DecodeError::InflatedTooLarge(declared)),
        "a compressed term declaring more than the limit"
    );
}
