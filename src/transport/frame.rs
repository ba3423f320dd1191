//! The server side of the WebSocket frame codec (RFC 6455 §5).
//!
//! [`FrameDecoder::decode`] looks at the front of a connection's input and
//! returns at most one event; partial input is normal and answered with
//! [`Decoded::Incomplete`] without consuming anything. Header parsing is
//! tungstenite's (`FrameHeader::parse`, which also refuses reserved opcodes);
//! the checks a server owes its peer — masking, reserved bits, control frame
//! rules, fragmentation order, the size limit, UTF-8 — are here, each mapped
//! to the close code the spec asks for.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A complete event from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole text message (fragments reassembled), valid UTF-8.
    Text(Vec<u8>),
    /// A whole binary message.
    Binary(Vec<u8>),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong (unsolicited ones are allowed and ignored).
    Pong,
    /// The client is closing.
    Close {
        /// The status code, if the frame had one.
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
}

/// The result of one decode step.
#[derive(Debug)]
pub enum Decoded {
    /// The frame at the front has not fully arrived; nothing was consumed.
    Incomplete,
    /// An event, and how many bytes its frame took.
    Event {
        /// The event.
        event: WsEvent,
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
    /// A non-final fragment was buffered; no event yet.
    Skipped {
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
}

/// A violation that ends the connection, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Client frames must be masked (RFC 6455 §5.1).
    #[error("client frames must be masked")]
    Unmasked,
    /// RSV bits set, but no extension was negotiated.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// A reserved opcode.
    #[error("reserved opcode")]
    BadOpcode,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame over 125 bytes.
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    /// A continuation frame with no message started.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message was still open.
    #[error("new message started before the previous one finished")]
    ExpectedContinuation,
    /// The message would exceed the size limit.
    #[error("message larger than {limit} bytes")]
    TooBig {
        /// The configured limit.
        limit: usize,
    },
    /// A text message (or close reason) that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    #[error("malformed close frame")]
    BadClosePayload,
    /// A close code a peer may not send.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
}

impl WsError {
    /// The close code to answer with: 1007 for bad UTF-8, 1009 for size,
    /// 1002 for every other protocol violation.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::InvalidUtf8 => 1007,
            WsError::TooBig { .. } => 1009,
            _ => 1002,
        }
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Partial {
    binary: bool,
    bytes: Vec<u8>,
}

/// Incremental decoder for one connection.
#[derive(Debug)]
pub struct FrameDecoder {
    max_message_size: usize,
    partial: Option<Partial>,
}

impl FrameDecoder {
    /// A decoder refusing messages over `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> FrameDecoder {
        FrameDecoder {
            max_message_size,
            partial: None,
        }
    }

    /// Decodes at most one frame from the front of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, WsError> {
        let mut cursor = Cursor::new(input);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Decoded::Incomplete),
            Err(_) => return Err(WsError::BadOpcode),
        };
        let header_len = cursor.position() as usize;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::ReservedBits);
        }
        let Some(mask) = header.mask else {
            return Err(WsError::Unmasked);
        };
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control {
            if !header.is_final {
                return Err(WsError::FragmentedControl);
            }
            if length > MAX_CONTROL_PAYLOAD {
                return Err(WsError::ControlTooLong);
            }
        } else {
            // Check the size before waiting for (and buffering) the payload.
            let already = self.partial.as_ref().map_or(0, |p| p.bytes.len() as u64);
            if already.saturating_add(length) > self.max_message_size as u64 {
                return Err(WsError::TooBig {
                    limit: self.max_message_size,
                });
            }
        }
        // `length` fits in usize now: it is ≤ 125 or ≤ max_message_size.
        let total = header_len + length as usize;
        if input.len() < total {
            return Ok(Decoded::Incomplete);
        }
        let mut payload = input[header_len..total].to_vec();
        unmask(&mut payload, mask);
        let event = match header.opcode {
            OpCode::Control(Control::Ping) => WsEvent::Ping(payload),
            OpCode::Control(Control::Pong) => WsEvent::Pong,
            OpCode::Control(Control::Close) => parse_close(&payload)?,
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::BadOpcode)
            }
            OpCode::Data(Data::Continue) => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(WsError::UnexpectedContinuation);
                };
                partial.bytes.extend_from_slice(&payload);
                if !header.is_final {
                    return Ok(Decoded::Skipped { consumed: total });
                }
                let Some(partial) = self.partial.take() else {
                    return Err(WsError::UnexpectedContinuation);
                };
                message(partial.binary, partial.bytes)?
            }
            OpCode::Data(data) => {
                if self.partial.is_some() {
                    return Err(WsError::ExpectedContinuation);
                }
                let binary = data == Data::Binary;
                if !header.is_final {
                    self.partial = Some(Partial {
                        binary,
                        bytes: payload,
                    });
                    return Ok(Decoded::Skipped { consumed: total });
                }
                message(binary, payload)?
            }
        };
        Ok(Decoded::Event {
            event,
            consumed: total,
        })
    }
}

/// A complete data message; text must be UTF-8.
fn message(binary: bool, bytes: Vec<u8>) -> Result<WsEvent, WsError> {
    if binary {
        Ok(WsEvent::Binary(bytes))
    } else if std::str::from_utf8(&bytes).is_ok() {
        Ok(WsEvent::Text(bytes))
    } else {
        Err(WsError::InvalidUtf8)
    }
}

/// Parses a close frame's payload (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload {
        [] => Ok(WsEvent::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(WsError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(WsEvent::Close {
                code: Some(code),
                reason: reason.to_string(),
            })
        }
    }
}

/// XORs `bytes` with the 4-byte mask, eight bytes at a time where possible.
fn unmask(bytes: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask phase is 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Appends one final, unmasked server frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(frame_len(payload.len()));
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Size of a server frame (header and payload) for a payload of `payload_len`.
pub fn frame_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload_len
}

/// A close frame with `code` and `reason`, the reason cut at a character
/// boundary so the payload fits a control frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let mut out = Vec::with_capacity(payload.len() + 2);
    write_frame(&mut out, OpCode::Control(Control::Close), &payload);
    out
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
