//! A small, bounded reader of Erlang's External Term Format: the subset
//! `phoenix_pubsub_redis` publishes (`:erlang.term_to_binary/2`).
//!
//! [`decode`] returns a whole [`Term`] or a [`DecodeError`], never a panic
//! and never half a term; a [`Reader`] over a message's [`Body`] reads a
//! tuple one element at a time instead, so a caller can stop after the
//! first few. Every length the bytes declare is checked
//! against the bytes that remain before anything is reserved, and the
//! limits below bound what one message can cost, whatever it claims.
//!
//! Pids, ports, references, funs and bitstrings are read (their layout is
//! checked, so the rest of the term can be read) but not kept: they become
//! [`Term::Opaque`]. Presence gossip carries pids, so refusing them here
//! would make that traffic look malformed; whether a payload holding one
//! can be sent on is decided later, by [`super::json`], which refuses it as
//! Phoenix's JSON encoder would.
//!
//! Like `binary_to_term/1`, bytes after the term are ignored. Unlike it,
//! a map with a repeated key is not refused (`term_to_binary` never writes
//! one), and improper lists are refused (nothing Phoenix broadcasts has
//! one).

use std::borrow::Cow;
use std::io::Read;

use flate2::read::ZlibDecoder;

use super::tag;

/// The most bytes one message may have. Twice the HTTP API's default
/// `api.max_body_size` (8 MiB): a payload Phoenix publishes is held to
/// about what Cinder accepts from a publisher, with room for the term
/// format being wordier than JSON for small values.
pub const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes a compressed term may inflate to (checked against the
/// size it declares, and again while inflating, so a zlib bomb stops
/// here). The same bound as an uncompressed message.
pub const MAX_INFLATED_BYTES: usize = MAX_INPUT_BYTES;

/// How deeply terms may nest. The envelope and the broadcast struct take
/// three levels; the payload gets the rest, about what `serde_json` (and
/// so Cinder's own publish path) parses. It also bounds the recursion of
/// the decoder, of [`super::json`] and of dropping a [`Term`].
pub const MAX_DEPTH: usize = 128;

/// The most terms one message may hold. A term costs about 32 bytes here
/// for as little as 1 byte of input (`[]`), so this, not the input size,
/// is what bounds the memory a message of tiny elements can take (~32 MiB).
pub const MAX_TERMS: usize = 1 << 20;

/// The most bytes of magnitude an integer may have (2048 bits, 617 decimal
/// digits). Far beyond any number a JSON client can read, and it keeps
/// the conversion to decimal text, quadratic in the size, cheap.
pub const MAX_BIG_BYTES: usize = 256;

/// The most characters an atom may have (Erlang's own limit).
pub const MAX_ATOM_CHARS: usize = 255;

/// A decoded term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// An integer that fits 64 bits (whatever tag carried it).
    Int(i64),
    /// An integer beyond 64 bits, as decimal text (with a leading `-` if
    /// negative): it is only ever printed, never computed with.
    BigInt(String),
    /// A float (always finite: Erlang has no NaN or infinity).
    Float(f64),
    /// An atom's name, as UTF-8 (Latin-1 atoms are converted).
    Atom(String),
    /// A binary (a bitstring of whole bytes).
    Binary(Vec<u8>),
    /// A list of integers 0..=255 written as `STRING_EXT` (a charlist).
    Charlist(Vec<u8>),
    /// A proper list (`[]` is an empty one).
    List(Vec<Term>),
    /// A tuple.
    Tuple(Vec<Term>),
    /// A map's pairs, in the order they were written.
    Map(Vec<(Term, Term)>),
    /// A value that was read but not kept.
    Opaque(Opaque),
}

/// The kinds of value read but not kept: nothing Cinder can forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opaque {
    /// A process id.
    Pid,
    /// A port.
    Port,
    /// A reference.
    Reference,
    /// A fun (a closure or an external `fun M:F/A`).
    Fun,
    /// A bitstring whose length is not a whole number of bytes.
    Bitstring,
}

impl Opaque {
    /// The kind's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Opaque::Pid => "pid",
            Opaque::Port => "port",
            Opaque::Reference => "reference",
            Opaque::Fun => "fun",
            Opaque::Bitstring => "bitstring",
        }
    }
}

impl Term {
    /// The atom's name, if this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(name) => Some(name),
            _ => None,
        }
    }
}

/// Why bytes are not a term this module can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is larger than [`MAX_INPUT_BYTES`].
    #[error("{len} bytes, more than the {max} a message may have")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first byte is not 131.
    #[error("not the external term format (version byte {0}, not 131)")]
    Version(u8),
    /// The bytes end before the term does.
    #[error("truncated")]
    Truncated,
    /// A length or count is more than the remaining bytes could hold.
    #[error("declares {count} elements with {left} bytes left")]
    CountTooLarge {
        /// The declared count.
        count: u64,
        /// The bytes left to read.
        left: usize,
    },
    /// Terms nest deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More than [`MAX_TERMS`] terms.
    #[error("more than {MAX_TERMS} terms")]
    TooManyTerms,
    /// A compressed term declares more than [`MAX_INFLATED_BYTES`].
    #[error("compressed term declares {0} bytes inflated, more than {MAX_INFLATED_BYTES}")]
    InflatedTooLarge(u32),
    /// A compressed term inflates to another size than it declares (or is
    /// not a zlib stream at all).
    #[error("compressed term declares {declared} bytes but inflates to {actual}")]
    InflatedSize {
        /// The size the term declares.
        declared: u32,
        /// The bytes inflated (at most one more than declared: inflating
        /// stops there).
        actual: usize,
    },
    /// The zlib stream is corrupt.
    #[error("corrupt zlib stream: {0}")]
    Zlib(String),
    /// A tag this module does not know.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A tag that is valid but never in what Phoenix publishes.
    #[error("unsupported tag {tag} ({what})")]
    Unsupported {
        /// The tag.
        tag: u8,
        /// What it is.
        what: &'static str,
    },
    /// A list whose tail is not `[]`.
    #[error("improper list")]
    ImproperList,
    /// An integer of more than [`MAX_BIG_BYTES`].
    #[error("integer of {0} bytes, more than {MAX_BIG_BYTES}")]
    BigTooLarge(u64),
    /// A float that is NaN or infinite, or an old-style float whose text
    /// is not a number.
    #[error("not a finite float")]
    BadFloat,
    /// A value the tag's layout does not allow: says which (a UTF-8 atom
    /// that is not UTF-8, an atom of more than [`MAX_ATOM_CHARS`], a pid
    /// whose node is not an atom, ...).
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Reads one whole term from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Term, DecodeError> {
    Body::new(bytes)?.reader().term()
}

/// A message's term, without its version byte, inflated if it was
/// compressed: what a [`Reader`] reads.
pub struct Body<'a>(Cow<'a, [u8]>);

impl<'a> Body<'a> {
    /// Checks the size and the version byte (131), and inflates a
    /// compressed term (tag 80: its inflated size, then a zlib stream).
    pub fn new(bytes: &'a [u8]) -> Result<Body<'a>, DecodeError> {
        if bytes.len() > MAX_INPUT_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_INPUT_BYTES,
            });
        }
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != tag::VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(Body(match rest.split_first() {
            Some((&tag::COMPRESSED, compressed)) => Cow::Owned(inflate(compressed)?),
            _ => Cow::Borrowed(rest),
        }))
    }

    /// A reader at the start of the term.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            decoder: Decoder::new(&self.0),
            depth: 1,
        }
    }
}

/// Reads a term whole, or a tuple one element at a time, so that a caller
/// can decide from its first elements whether the rest is worth reading.
pub struct Reader<'a> {
    decoder: Decoder<'a>,
    /// The nesting level of the next term.
    depth: usize,
}

impl Reader<'_> {
    /// If the next term is a tuple, reads its header and returns its
    /// arity: the following [`Reader::term`]s are its elements. Anything
    /// else is left unread (`None`).
    pub fn tuple(&mut self) -> Result<Option<usize>, DecodeError> {
        let arity = match self.decoder.rest.first() {
            Some(&tag::SMALL_TUPLE) => {
                self.decoder.u8()?;
                u64::from(self.decoder.u8()?)
            }
            Some(&tag::LARGE_TUPLE) => {
                self.decoder.u8()?;
                u64::from(self.decoder.u32()?)
            }
            _ => return Ok(None),
        };
        let arity = self.decoder.count(arity, 1)?;
        self.depth += 1;
        Ok(Some(arity))
    }

    /// The next whole term.
    pub fn term(&mut self) -> Result<Term, DecodeError> {
        self.decoder.term(self.depth)
    }
}

/// Inflates a compressed term's body: a 32-bit size, then zlib.
fn inflate(compressed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (size, stream) = compressed
        .split_first_chunk::<4>()
        .ok_or(DecodeError::Truncated)?;
    let declared = u32::from_be_bytes(*size);
    if declared as usize > MAX_INFLATED_BYTES {
        return Err(DecodeError::InflatedTooLarge(declared));
    }
    // Reading one byte more than declared tells "exactly as declared" from
    // "more", without inflating (or storing) any further: the bound holds
    // however much the stream would expand. The buffer grows with what is
    // actually inflated, not with what the header claims.
    let mut out = Vec::new();
    ZlibDecoder::new(stream)
        .take(u64::from(declared) + 1)
        .read_to_end(&mut out)
        .map_err(|err| DecodeError::Zlib(err.to_string()))?;
    if out.len() != declared as usize {
        return Err(DecodeError::InflatedSize {
            declared,
            actual: out.len(),
        });
    }
    Ok(out)
}

/// A cursor over a term's bytes, and the terms read so far.
struct Decoder<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
    /// Terms read or reserved so far, against [`MAX_TERMS`].
    terms: usize,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder {
            rest: bytes,
            terms: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// Checks a declared element count before anything is reserved for
    /// it. Each element is `terms_each` terms (2 for a map's pairs) of at
    /// least one byte each, so together they must fit in what is left,
    /// and in the term budget.
    fn count(&mut self, count: u64, terms_each: usize) -> Result<usize, DecodeError> {
        let left = self.rest.len();
        let terms = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(terms_each))
            .filter(|&terms| terms <= left)
            .ok_or(DecodeError::CountTooLarge { count, left })?;
        // The product fit in `left`, so the count is a usize too.
        let count = count as usize;
        self.terms = self.terms.saturating_add(terms);
        if self.terms > MAX_TERMS {
            return Err(DecodeError::TooManyTerms);
        }
        Ok(count)
    }

    /// The next `n` bytes, where `n` is a length the bytes declared.
    fn declared(&mut self, n: u32) -> Result<&'a [u8], DecodeError> {
        let left = self.rest.len();
        match usize::try_from(n) {
            Ok(n) if n <= left => self.take(n),
            _ => Err(DecodeError::CountTooLarge {
                count: n.into(),
                left,
            }),
        }
    }

    /// One term, at nesting level `depth` (the outermost is 1).
    fn term(&mut self, depth: usize) -> Result<Term, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let tag = self.u8()?;
        Ok(match tag {
            tag::SMALL_INTEGER => Term::Int(i64::from(self.u8()?)),
            tag::INTEGER => Term::Int(i64::from(i32::from_be_bytes(self.array()?))),
            tag::SMALL_BIG => {
                let n = self.u8()?;
                self.big(u64::from(n))?
            }
            tag::LARGE_BIG => {
                let n = self.u32()?;
                self.big(u64::from(n))?
            }
            tag::NEW_FLOAT => {
                let value = f64::from_be_bytes(self.array()?);
                if !value.is_finite() {
                    return Err(DecodeError::BadFloat);
                }
                Term::Float(value)
            }
            tag::FLOAT => self.old_float()?,
            tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8 => {
                Term::Atom(self.atom_body(tag)?)
            }
            tag::SMALL_TUPLE => {
                let arity = self.u8()?;
                Term::Tuple(self.elements(u64::from(arity), depth)?)
            }
            tag::LARGE_TUPLE => {
                let arity = self.u32()?;
                Term::Tuple(self.elements(u64::from(arity), depth)?)
            }
            tag::NIL => Term::List(Vec::new()),
            tag::STRING => {
                let len = self.u16()?;
                Term::Charlist(self.declared(len.into())?.to_vec())
            }
            tag::LIST => {
                let len = self.u32()?;
                let items = self.elements(u64::from(len), depth)?;
                // Only the tail's tag is looked at: `[]` is the one
                // proper tail, and anything else is refused unread.
                if self.u8()? != tag::NIL {
                    return Err(DecodeError::ImproperList);
                }
                Term::List(items)
            }
            tag::BINARY => {
                let len = self.u32()?;
                Term::Binary(self.declared(len)?.to_vec())
            }
            tag::BIT_BINARY => self.bitstring()?,
            tag::MAP => {
                let arity = self.u32()?;
                let arity = self.count(u64::from(arity), 2)?;
                let mut pairs = Vec::with_capacity(arity);
                for _ in 0..arity {
                    let key = self.term(depth + 1)?;
                    let value = self.term(depth + 1)?;
                    pairs.push((key, value));
                }
                Term::Map(pairs)
            }
            tag::PID | tag::NEW_PID => {
                self.node(depth)?;
                // id, serial, then creation: 1 byte (PID) or 4 (NEW_PID).
                self.take(if tag == tag::PID { 9 } else { 12 })?;
                Term::Opaque(Opaque::Pid)
            }
            tag::PORT | tag::NEW_PORT | tag::V4_PORT => {
                self.node(depth)?;
                self.take(match tag {
                    tag::PORT => 5,
                    tag::NEW_PORT => 8,
                    _ => 12,
                })?;
                Term::Opaque(Opaque::Port)
            }
            tag::REFERENCE => {
                self.node(depth)?;
                self.take(5)?;
                Term::Opaque(Opaque::Reference)
            }
            tag::NEW_REFERENCE | tag::NEWER_REFERENCE => {
                let words = usize::from(self.u16()?);
                self.node(depth)?;
                let creation = if tag == tag::NEW_REFERENCE { 1 } else { 4 };
                self.take(creation + 4 * words)?;
                Term::Opaque(Opaque::Reference)
            }
            tag::NEW_FUN => {
                // The size counts itself; the rest (module, environment)
                // is skipped unread.
                let size = self.u32()?;
                let body = size
                    .checked_sub(4)
                    .ok_or(DecodeError::Malformed("fun size"))?;
                self.declared(body)?;
                Term::Opaque(Opaque::Fun)
            }
            tag::EXPORT => {
                let module = self.term(depth + 1)?;
                let function = self.term(depth + 1)?;
                let arity = self.term(depth + 1)?;
                let valid = module.as_atom().is_some()
                    && function.as_atom().is_some()
                    && matches!(arity, Term::Int(0..=255));
                if !valid {
                    return Err(DecodeError::Malformed("export"));
                }
                Term::Opaque(Opaque::Fun)
            }
            tag::COMPRESSED => return Err(unsupported(tag, "compressed term inside a term")),
            tag::FUN => return Err(unsupported(tag, "old fun, gone since OTP 23")),
            tag::ATOM_CACHE_REF => return Err(unsupported(tag, "distribution atom cache")),
            tag::LOCAL => return Err(unsupported(tag, "node-local term")),
            other => return Err(DecodeError::UnknownTag(other)),
        })
    }

    /// `count` terms one level down (tuple or list elements: each takes
    /// at least one byte).
    fn elements(&mut self, count: u64, depth: usize) -> Result<Vec<Term>, DecodeError> {
        let count = self.count(count, 1)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.term(depth + 1)?);
        }
        Ok(items)
    }

    /// An atom's name after its tag.
    fn atom_body(&mut self, tag: u8) -> Result<String, DecodeError> {
        let len = match tag {
            tag::SMALL_ATOM | tag::SMALL_ATOM_UTF8 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        let bytes = self.take(len)?;
        let name = if matches!(tag, tag::ATOM | tag::SMALL_ATOM) {
            // Latin-1: each byte is the code point of the same value.
            bytes.iter().map(|&b| char::from(b)).collect()
        } else {
            std::str::from_utf8(bytes)
                .map_err(|_| DecodeError::Malformed("atom: not UTF-8"))?
                .to_owned()
        };
        if name.chars().count() > MAX_ATOM_CHARS {
            return Err(DecodeError::Malformed("atom: too long"));
        }
        Ok(name)
    }

    /// The node a pid, port or reference names: an atom.
    fn node(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth + 1 > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        match self.u8()? {
            tag @ (tag::ATOM | tag::SMALL_ATOM | tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8) => {
                self.atom_body(tag).map(drop)
            }
            _ => Err(DecodeError::Malformed("node of a pid, port or reference")),
        }
    }

    /// A bignum's sign and `n` little-endian magnitude bytes.
    fn big(&mut self, n: u64) -> Result<Term, DecodeError> {
        if n > MAX_BIG_BYTES as u64 {
            return Err(DecodeError::BigTooLarge(n));
        }
        // Any sign byte but 0 means negative, as `binary_to_term` reads it.
        let negative = self.u8()? != 0;
        let magnitude = self.take(n as usize)?;
        Ok(big_to_term(negative, magnitude))
    }

    /// `FLOAT_EXT`: 31 bytes of `printf("%.20e")` text, NUL-padded. No
    /// OTP since R11 writes it, but `binary_to_term` still reads it.
    fn old_float(&mut self) -> Result<Term, DecodeError> {
        let text = self.take(31)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let value: f64 = std::str::from_utf8(&text[..end])
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or(DecodeError::BadFloat)?;
        if !value.is_finite() {
            return Err(DecodeError::BadFloat);
        }
        Ok(Term::Float(value))
    }

    /// `BIT_BINARY_EXT`: whole bytes are a binary (as `binary_to_term`
    /// reads them); anything else is a bitstring, kept opaque.
    fn bitstring(&mut self) -> Result<Term, DecodeError> {
        let len = self.u32()?;
        let bits = self.u8()?;
        let bytes = self.declared(len)?.to_vec();
        match (bytes.is_empty(), bits) {
            (true, 0) | (false, 8) => Ok(Term::Binary(bytes)),
            (false, 1..=7) => Ok(Term::Opaque(Opaque::Bitstring)),
            _ => Err(DecodeError::Malformed("bitstring: bit count")),
        }
    }
}

fn unsupported(tag: u8, what: &'static str) -> DecodeError {
    DecodeError::Unsupported { tag, what }
}

/// An integer from its sign and little-endian magnitude: [`Term::Int`] if
/// it fits 64 bits, else decimal text.
fn big_to_term(negative: bool, magnitude: &[u8]) -> Term {
    let significant = magnitude
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    let magnitude = &magnitude[..significant];
    if magnitude.len() <= 8 {
        let mut word = [0u8; 8];
        word[..magnitude.len()].copy_from_slice(magnitude);
        let value = i128::from(u64::from_le_bytes(word));
        let value = if negative { -value } else { value };
        if let Ok(value) = i64::try_from(value) {
            return Term::Int(value);
        }
    }
    let mut text = String::with_capacity(magnitude.len() * 5 / 2 + 2);
    if negative {
        text.push('-');
    }
    text.push_str(&magnitude_to_decimal(magnitude));
    Term::BigInt(text)
}

/// Decimal digits of a little-endian magnitude: repeated division by
/// 10^19 over 64-bit limbs.
fn magnitude_to_decimal(magnitude: &[u8]) -> String {
    const CHUNK: u64 = 10_000_000_000_000_000_000;
    let mut limbs: Vec<u64> = magnitude
        .chunks(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(word)
        })
        .collect();
    let mut chunks = Vec::new();
    while limbs.iter().any(|&limb| limb != 0) {
        let mut remainder = 0u128;
        for limb in limbs.iter_mut().rev() {
            let value = (remainder << 64) | u128::from(*limb);
            // Both fit: the quotient is below 2^64 because the remainder
            // is below CHUNK, and the remainder is below CHUNK.
            *limb = (value / u128::from(CHUNK)) as u64;
            remainder = value % u128::from(CHUNK);
        }
        chunks.push(remainder as u64);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut text = match chunks.pop() {
        Some(top) => top.to_string(),
        None => return "0".to_owned(),
    };
    for chunk in chunks.iter().rev() {
        text.push_str(&format!("{chunk:019}"));
    }
    text
}

#[cfg(test)]
#[path = "term_tests.rs"]
mod tests;
