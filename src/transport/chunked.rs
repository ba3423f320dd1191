//! An incremental decoder of chunked request bodies (RFC 9112 §7.1).
//!
//! Bytes are fed as they arrive and each byte is looked at once: the
//! decoder keeps its place (in a size line, in a chunk's data, in a trailer
//! line) between reads, so a body sent one byte per chunk costs the same per
//! byte as one sent in a single chunk. Everything it reads is bounded:
//! chunk-size lines, chunk extensions and trailers count against the
//! request head limit, and the body's bytes *on the wire* (framing
//! included) against the body limit, so neither endless trailers nor
//! tiny chunks with long extensions can make the server buffer or work
//! without bound.

use super::http::HttpError;

/// Longest chunk-size line (hex digits and extensions) accepted.
const MAX_SIZE_LINE: usize = 1024;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line: the size so far, whether a digit was
    /// seen, and whether the extensions (after `;`) started.
    Size {
        size: usize,
        digits: bool,
        extension: bool,
    },
    /// Read the size line's `\r`; expecting `\n`.
    SizeLf { size: usize },
    /// Inside a chunk's data, with this many bytes left.
    Data { left: usize },
    /// After a chunk's data; expecting `\r`.
    DataCr,
    /// Expecting the `\n` after a chunk's data.
    DataLf,
    /// Reading a trailer line (after the last chunk); `empty` while the
    /// line has no byte yet (an empty line ends the body).
    Trailer { empty: bool },
    /// Read a trailer line's `\r`; expecting `\n`.
    TrailerLf { empty: bool },
    /// The body is complete.
    Done,
}

/// What feeding bytes achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input used (the rest belongs to the next request).
    pub consumed: usize,
    /// Whether the body is complete.
    pub done: bool,
}

/// Decodes one chunked body, fed in pieces.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size or trailer line.
    line: usize,
    /// Bytes of extensions and trailers so far (the head limit applies).
    meta: usize,
    /// Bytes of the body on the wire so far (the body limit applies).
    wire: usize,
    max_meta: usize,
    max_wire: usize,
}

impl ChunkedDecoder {
    /// A decoder allowing `max_meta` bytes of extensions and trailers and
    /// `max_wire` bytes of body on the wire.
    pub fn new(max_meta: usize, max_wire: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size {
                size: 0,
                digits: false,
                extension: false,
            },
            line: 0,
            meta: 0,
            wire: 0,
            max_meta,
            max_wire,
        }
    }

    /// Feeds `input`, appending decoded data to `body`.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Fed, HttpError> {
        let mut at = 0;
        while at < input.len() && self.state != State::Done {
            if let State::Data { left } = self.state {
                // The one state that takes many bytes at once.
                let take = left.min(input.len() - at);
                self.count_wire(take)?;
                body.extend_from_slice(&input[at..at + take]);
                at += take;
                self.state = match left - take {
                    0 => State::DataCr,
                    left => State::Data { left },
                };
                continue;
            }
            let byte = input[at];
            at += 1;
            self.count_wire(1)?;
            self.state = self.step(byte)?;
        }
        Ok(Fed {
            consumed: at,
            done: self.state == State::Done,
        })
    }

    fn count_wire(&mut self, n: usize) -> Result<(), HttpError> {
        self.wire += n;
        if self.wire > self.max_wire {
            return Err(HttpError::BodyTooLarge {
                limit: self.max_wire,
            });
        }
        Ok(())
    }

    fn count_meta(&mut self) -> Result<(), HttpError> {
        self.meta += 1;
        if self.meta > self.max_meta {
            return Err(HttpError::HeadersTooLarge);
        }
        Ok(())
    }

    /// One byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<State, HttpError> {
        let malformed = |what: &str| Err(HttpError::Malformed(what.to_string()));
        Ok(match self.state {
            State::Size {
                size,
                digits,
                extension,
            } => {
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return malformed("chunk size line too long");
                }
                match byte {
                    b'\r' if digits => State::SizeLf { size },
                    b'\r' => return malformed("invalid chunk size"),
                    // Chunk extensions (";name=value") are allowed and ignored.
                    _ if extension => {
                        self.count_meta()?;
                        self.state
                    }
                    b';' if digits => {
                        self.count_meta()?;
                        State::Size {
                            size,
                            digits,
                            extension: true,
                        }
                    }
                    // Whitespace before an extension (RFC 9112's BWS).
                    b' ' | b'\t' if digits => self.state,
                    _ => {
                        let Some(digit) = (byte as char).to_digit(16) else {
                            return malformed("invalid chunk size");
                        };
                        let Some(size) = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit as usize))
                        else {
                            return malformed("chunk size too large");
                        };
                        State::Size {
                            size,
                            digits: true,
                            extension: false,
                        }
                    }
                }
            }
            State::SizeLf { size } => {
                if byte != b'\n' {
                    return malformed("chunk size line not ended by CRLF");
                }
                self.line = 0;
                match size {
                    0 => State::Trailer { empty: true },
                    size => State::Data { left: size },
                }
            }
            State::Data { .. } => unreachable!("chunk data is taken in bulk"),
            State::DataCr if byte == b'\r' => State::DataLf,
            State::DataLf if byte == b'\n' => State::Size {
                size: 0,
                digits: false,
                extension: false,
            },
            State::DataCr | State::DataLf => return malformed("chunk not followed by CRLF"),
            State::Trailer { empty } => {
                if byte == b'\r' {
                    State::TrailerLf { empty }
                } else {
                    self.count_meta()?;
                    State::Trailer { empty: false }
                }
            }
            State::TrailerLf { empty } => {
                if byte != b'\n' {
                    return malformed("trailer line not ended by CRLF");
                }
                if empty {
                    State::Done
                } else {
                    State::Trailer { empty: true }
                }
            }
            State::Done => State::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut decoder = ChunkedDecoder::new(1024, 1 << 20);
        let mut body = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let end = (at + piece).min(wire.len());
            let fed = decoder.feed(&wire[at..end], &mut body)?;
            at += fed.consumed;
            if fed.done {
                return Ok((body, at));
            }
            assert_eq!(at, end, "everything is used until the body ends");
        }
        Err(HttpError::Malformed("incomplete".into()))
    }

    #[test]
    fn decodes_whatever_the_pieces() {
        let wire = b"5;ext=1\r\nhello\r\n1 \r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 64] {
            let (body, used) = decode_in_pieces(wire, piece).unwrap();
            assert_eq!(body, b"hello world!");
            assert_eq!(&wire[used..], b"NEXT", "piece size {piece}");
        }
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"0\r\nTrailer\rX",
            b"ffffffffffffffffffff\r\n",
            b";ext\r\n",
        ] {
            assert!(
                matches!(decode_in_pieces(wire, 1), Err(HttpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn trailers_and_extensions_count_against_the_head_limit() {
        let mut endless = b"0\r\n".to_vec();
        for _ in 0..100 {
            endless.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            decode_in_pieces(&endless, 16),
            Err(HttpError::HeadersTooLarge)
        );
        let mut extensions = Vec::new();
        for _ in 0..100 {
            extensions.extend_from_slice(b"1;");
            extensions.extend_from_slice(&[b'e'; 30]);
            extensions.extend_from_slice(b"\r\nx\r\n");
        }
        assert_eq!(
            decode_in_pieces(&extensions, 16),
            Err(HttpError::HeadersTooLarge)
        );
    }

    #[test]
    fn the_body_limit_counts_bytes_on_the_wire() {
        // 200 one-byte chunks: 200 bytes of body, 1000 on the wire.
        let mut wire = Vec::new();
        for _ in 0..200 {
            wire.extend_from_slice(b"1\r\nx\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut decoder = ChunkedDecoder::new(1024, 500);
        let error = decoder.feed(&wire, &mut Vec::new()).unwrap_err();
        assert_eq!(error, HttpError::BodyTooLarge { limit: 500 });
        let mut roomy = ChunkedDecoder::new(1024, 2000);
        let mut body = Vec::new();
        assert!(roomy.feed(&wire, &mut body).unwrap().done);
        assert_eq!(body.len(), 200);
    }
}
