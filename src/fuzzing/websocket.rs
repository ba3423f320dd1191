//! The fuzz target over WebSocket frames.

use super::*;

/// WebSocket frame decoding. Two bytes give the message size limit (below
/// 4096), one how the input is split and the frames re-encoded; the rest is
/// what the client sent.
pub fn ws_frames(data: &[u8]) {
    let mut input = Input(data);
    let max = usize::from(input.u16() % 4096);
    let seed = input.byte();
    let stream = input.rest();
    let whole = decode_frames(stream, max, None);
    let split = decode_frames(stream, max, Some(Pieces::new(seed, 8)));
    assert_eq!(
        whole, split,
        "the same bytes split into reads decoded differently"
    );
    let mut pieces = Pieces::new(seed, 64);
    for event in &whole.events {
        check_event(event, max);
        let (frames, expected) = client_frames(event, &mut pieces);
        let again = decode_frames(&frames, max, None);
        assert_eq!(
            again,
            WsOutcome {
                events: expected,
                error: None,
                left: 0,
            },
            "{event:?} re-encoded as client frames did not decode to itself"
        );
        if let WsEvent::Text(text) = event {
            check_close_reason(std::str::from_utf8(text).unwrap_or_default(), max);
        }
    }
}

/// What a connection's decoder made of a stream.
#[derive(Debug, PartialEq)]
struct WsOutcome {
    events: Vec<WsEvent>,
    error: Option<WsError>,
    /// Bytes of an incomplete frame left at the end (0 after an error).
    left: usize,
}

fn decode_frames(stream: &[u8], max: usize, mut pieces: Option<Pieces>) -> WsOutcome {
    let mut decoder = FrameDecoder::new(max);
    let mut pending: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        fed = read_more(stream, fed, &mut pieces, &mut pending);
        loop {
            let consumed = match decoder.decode(&pending) {
                Err(error) => {
                    return WsOutcome {
                        events,
                        error: Some(error),
                        left: 0,
                    }
                }
                Ok(Decoded::Incomplete) => {
                    // A frame header is at most 14 bytes, and no frame
                    // longer than the limits is waited for.
                    let bound = 14 + max.max(125);
                    assert!(
                        pending.len() <= bound,
                        "{} bytes waiting for a frame, limit {max}",
                        pending.len()
                    );
                    break;
                }
                Ok(Decoded::Skipped { consumed }) => consumed,
                Ok(Decoded::Event { event, consumed }) => {
                    events.push(event);
                    consumed
                }
            };
            assert!(
                consumed > 0 && consumed <= pending.len(),
                "consumed {consumed} of {} bytes",
                pending.len()
            );
            pending.drain(..consumed);
        }
    }
    WsOutcome {
        events,
        error: None,
        left: pending.len(),
    }
}

fn check_event(event: &WsEvent, max: usize) {
    match event {
        WsEvent::Text(text) => {
            assert!(
                std::str::from_utf8(text).is_ok(),
                "a text message not UTF-8"
            );
            assert!(
                text.len() <= max,
                "a {}-byte message, limit {max}",
                text.len()
            );
        }
        WsEvent::Binary(bytes) => {
            assert!(
                bytes.len() <= max,
                "a {}-byte message, limit {max}",
                bytes.len()
            );
        }
        WsEvent::Ping(payload) => assert!(payload.len() <= 125, "a long ping"),
        WsEvent::Pong => {}
        WsEvent::Close { code, reason } => {
            match code {
                None => assert!(reason.is_empty(), "a close reason without a code"),
                Some(code) => assert!(
                    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "close code {code} accepted"
                ),
            }
            assert!(
                reason.len() <= 123,
                "a close reason of {} bytes",
                reason.len()
            );
        }
    }
}

/// Client frames carrying `event`, and the events they must decode to:
/// messages are cut into fragments with a ping after the first one.
fn client_frames(event: &WsEvent, pieces: &mut Pieces) -> (Vec<u8>, Vec<WsEvent>) {
    let mask = pieces.next_u64().to_be_bytes();
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    let mut server = Vec::new();
    match event {
        WsEvent::Text(payload) | WsEvent::Binary(payload) => {
            let first = if matches!(event, WsEvent::Text(_)) {
                Data::Text
            } else {
                Data::Binary
            };
            let mut at = 0;
            loop {
                let n = pieces.next().min(payload.len() - at);
                let fin = at + n == payload.len();
                let opcode = if at == 0 { first } else { Data::Continue };
                server.clear();
                write_frame(&mut server, OpCode::Data(opcode), &payload[at..at + n]);
                assert_eq!(
                    server.len(),
                    frame_len(n),
                    "frame_len disagrees with write_frame"
                );
                if !fin {
                    server[0] &= 0x7f;
                }
                frames.extend_from_slice(&mask_frame(&server, mask));
                if at == 0 && !fin {
                    server.clear();
                    write_frame(&mut server, OpCode::Control(Control::Ping), b"mid");
                    frames.extend_from_slice(&mask_frame(&server, mask));
                    expected.push(WsEvent::Ping(b"mid".to_vec()));
                }
                at += n;
                if fin {
                    break;
                }
            }
            expected.push(event.clone());
        }
        WsEvent::Ping(payload) => {
            write_frame(&mut server, OpCode::Control(Control::Ping), payload);
            frames = mask_frame(&server, mask);
            expected.push(event.clone());
        }
        WsEvent::Pong => {
            write_frame(&mut server, OpCode::Control(Control::Pong), b"any");
            frames = mask_frame(&server, mask);
            expected.push(WsEvent::Pong);
        }
        WsEvent::Close { code, reason } => {
            let server = match code {
                Some(code) => close_frame(*code, reason),
                None => {
                    write_frame(&mut server, OpCode::Control(Control::Close), b"");
                    server
                }
            };
            frames = mask_frame(&server, mask);
            expected.push(event.clone());
        }
    }
    (frames, expected)
}

/// A server frame as a client sends it: the mask bit, the key, the payload
/// XORed with the key.
fn mask_frame(server: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header_len = 2 + match server[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mut out = server[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        server[header_len..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    out
}

/// `close_frame` cuts its reason at a character boundary within a control
/// frame, as long as it can.
fn check_close_reason(text: &str, max: usize) {
    let frame = close_frame(1000, text);
    let mut events = decode_frames(&mask_frame(&frame, [1, 2, 3, 4]), max, None);
    let Some(WsEvent::Close {
        code: Some(1000),
        reason,
    }) = events.events.pop()
    else {
        panic!("close_frame({text:?}) did not decode to a close: {events:?}");
    };
    assert!(
        text.starts_with(&reason),
        "a close reason that is not a prefix"
    );
    assert!(
        reason.len() == text.len() || reason.len() > 123 - 4,
        "a close reason cut to {} bytes of {}",
        reason.len(),
        text.len()
    );
}
