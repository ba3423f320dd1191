//! The client side of WebSocket (RFC 6455): the upgrade request and its
//! answer, masked frames out, unmasked server frames in.
//!
//! Only what a load client needs, written for speed: frames are parsed in
//! place and handed out as ranges of the read buffer, never copied.

use base64::Engine;

/// The GUID every accept key is derived with (RFC 6455 §1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text data frame.
    pub const TEXT: u8 = 0x1;
    /// Binary data frame.
    pub const BINARY: u8 = 0x2;
    /// Close control frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping control frame.
    pub const PING: u8 = 0x9;
    /// Pong control frame.
    pub const PONG: u8 = 0xA;
}

/// What went wrong on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The server answered the upgrade with something other than 101.
    #[error("upgrade refused: HTTP {0}")]
    UpgradeRefused(u16),
    /// The 101 answer was malformed or carried the wrong accept key.
    #[error("bad upgrade response: {0}")]
    BadUpgrade(&'static str),
    /// Server frames must not be masked (RFC 6455 §5.1).
    #[error("server sent a masked frame")]
    MaskedServerFrame,
    /// A frame header this client does not accept.
    #[error("bad frame: {0}")]
    BadFrame(&'static str),
}

/// A random `Sec-WebSocket-Key` from a caller-supplied random value.
pub fn websocket_key(random: u128) -> String {
    base64::engine::general_purpose::STANDARD.encode(random.to_le_bytes())
}

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The HTTP/1.1 upgrade request for `path_and_query` on `host`.
pub fn upgrade_request(
    host: &str,
    path_and_query: &str,
    key: &str,
    protocols: Option<&str>,
) -> Vec<u8> {
    let mut request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(protocols) = protocols {
        request.push_str("Sec-WebSocket-Protocol: ");
        request.push_str(protocols);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Parses the answer to an upgrade request. `Ok(None)` while the head has not
/// fully arrived; `Ok(Some(n))` when a valid 101 took the first `n` bytes.
pub fn parse_upgrade_response(input: &[u8], key: &str) -> Result<Option<usize>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let consumed = match response.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError::BadUpgrade("unparsable HTTP response")),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(WireError::UpgradeRefused(code));
    }
    let expected = accept_key(key);
    let accept = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .ok_or(WireError::BadUpgrade("no Sec-WebSocket-Accept"))?;
    if accept.value != expected.as_bytes() {
        return Err(WireError::BadUpgrade("wrong Sec-WebSocket-Accept"));
    }
    Ok(Some(consumed))
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A server frame found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The opcode.
    pub opcode: u8,
    /// Whether this frame ends its message.
    pub fin: bool,
    /// Where the payload starts in the buffer.
    pub payload_start: usize,
    /// Where the frame (and its payload) ends in the buffer.
    pub end: usize,
}

/// Finds the frame at the front of `input`: `Ok(None)` while it is incomplete.
pub fn parse_frame(input: &[u8], max_payload: usize) -> Result<Option<Frame>, WireError> {
    if input.len() < 2 {
        return Ok(None);
    }
    let fin = input[0] & 0x80 != 0;
    if input[0] & 0x70 != 0 {
        return Err(WireError::BadFrame("reserved bits set"));
    }
    let opcode = input[0] & 0x0F;
    if input[1] & 0x80 != 0 {
        return Err(WireError::MaskedServerFrame);
    }
    let (len, header) = match input[1] & 0x7F {
        126 => {
            if input.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([input[2], input[3]]) as usize, 4)
        }
        127 => {
            if input.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&input[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len > max_payload as u64 {
                return Err(WireError::BadFrame("frame larger than the payload limit"));
            }
            (len as usize, 10)
        }
        n => (n as usize, 2),
    };
    if len > max_payload {
        return Err(WireError::BadFrame("frame larger than the payload limit"));
    }
    if input.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode,
        fin,
        payload_start: header,
        end: header + len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frame_round_trips_through_unmasking() {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode::TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn parses_frames_of_every_length_form() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut frame = vec![0x82];
            if len < 126 {
                frame.push(len as u8);
            } else if len <= 65535 {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
            let header = frame.len();
            frame.resize(header + len, 7);
            assert_eq!(
                parse_frame(&frame[..frame.len() - 1], 1 << 20).unwrap(),
                None
            );
            let parsed = parse_frame(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!(parsed.opcode, opcode::BINARY);
            assert!(parsed.fin);
            assert_eq!((parsed.payload_start, parsed.end), (header, frame.len()));
        }
    }

    #[test]
    fn refuses_masked_server_frames_and_oversized_ones() {
        assert_eq!(
            parse_frame(&[0x81, 0x81, 0, 0, 0, 0, 0], 100),
            Err(WireError::MaskedServerFrame)
        );
        assert!(parse_frame(&[0x81, 126, 0xFF, 0xFF], 100).is_err());
    }

    #[test]
    fn upgrade_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        assert_eq!(parse_upgrade_response(ok, key), Ok(Some(ok.len() - 2)));
        assert_eq!(parse_upgrade_response(&ok[..20], key), Ok(None));
        let refused = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parse_upgrade_response(refused, key),
            Err(WireError::UpgradeRefused(403))
        );
    }
}
