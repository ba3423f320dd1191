//! Frame codec tests: byte-exact encodings, every error with its close code,
//! fragmentation, and input split at every byte.

use super::*;

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn decode_all(decoder: &mut FrameDecoder, mut input: &[u8]) -> Result<Vec<WsEvent>, WsError> {
    let mut events = Vec::new();
    loop {
        match decoder.decode(input)? {
            Decoded::Incomplete => return Ok(events),
            Decoded::Skipped { consumed } => input = &input[consumed..],
            Decoded::Event { event, consumed } => {
                events.push(event);
                input = &input[consumed..];
            }
        }
    }
}

#[test]
fn decodes_each_kind() {
    let mut d = FrameDecoder::new(1 << 20);
    // RFC 6455 §5.7: a masked "Hello".
    let hello = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode_all(&mut d, &hello).unwrap(),
        [WsEvent::Text(b"Hello".to_vec())]
    );
    let bin = client_frame(0x82, &[0, 1, 2, 255], MASK);
    assert_eq!(
        decode_all(&mut d, &bin).unwrap(),
        [WsEvent::Binary(vec![0, 1, 2, 255])]
    );
    let ping = client_frame(0x89, b"hi", MASK);
    assert_eq!(
        decode_all(&mut d, &ping).unwrap(),
        [WsEvent::Ping(b"hi".to_vec())]
    );
    let pong = client_frame(0x8a, b"", MASK);
    assert_eq!(decode_all(&mut d, &pong).unwrap(), [WsEvent::Pong]);
    let close = client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], MASK);
    assert_eq!(
        decode_all(&mut d, &close).unwrap(),
        [WsEvent::Close {
            code: Some(1000),
            reason: "bye".into()
        }]
    );
    let empty_close = client_frame(0x88, b"", MASK);
    assert_eq!(
        decode_all(&mut d, &empty_close).unwrap(),
        [WsEvent::Close {
            code: None,
            reason: String::new()
        }]
    );
}

#[test]
fn long_frames_use_extended_lengths() {
    let mut d = FrameDecoder::new(1 << 20);
    let payload: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let frame = client_frame(0x81, &payload, MASK);
    assert_eq!(frame[1], 0x80 | 127);
    assert_eq!(
        decode_all(&mut d, &frame).unwrap(),
        [WsEvent::Text(payload.clone())]
    );
    let frame = client_frame(0x82, &payload[..300], MASK);
    assert_eq!(
        decode_all(&mut d, &frame).unwrap(),
        [WsEvent::Binary(payload[..300].to_vec())]
    );
}

#[test]
fn incomplete_input_consumes_nothing_at_every_split() {
    let mut input = client_frame(0x01, b"[null,", MASK);
    input.extend(client_frame(0x89, b"p", MASK));
    input.extend(client_frame(
        0x80,
        br#""1","phoenix","heartbeat",{}]"#,
        MASK,
    ));
    let expected = vec![
        WsEvent::Ping(b"p".to_vec()),
        WsEvent::Text(br#"[null,"1","phoenix","heartbeat",{}]"#.to_vec()),
    ];
    for split in 0..input.len() {
        let mut d = FrameDecoder::new(1 << 20);
        // Feed the first part, keep what was not consumed, then the rest.
        let mut pending = input[..split].to_vec();
        let mut events = Vec::new();
        for part in [&input[split..split], &input[split..]] {
            pending.extend_from_slice(part);
            let mut at = 0;
            loop {
                match d.decode(&pending[at..]).unwrap() {
                    Decoded::Incomplete => break,
                    Decoded::Skipped { consumed } => at += consumed,
                    Decoded::Event { event, consumed } => {
                        events.push(event);
                        at += consumed;
                    }
                }
            }
            pending.drain(..at);
        }
        assert_eq!(events, expected, "split at {split}");
        assert!(pending.is_empty());
    }
}

#[test]
fn violations_map_to_close_codes() {
    let cases: Vec<(Vec<u8>, WsError, u16)> = vec![
        (vec![0x81, 0x02, b'h', b'i'], WsError::Unmasked, 1002),
        (client_frame(0xc1, b"x", MASK), WsError::ReservedBits, 1002),
        (client_frame(0x83, b"x", MASK), WsError::BadOpcode, 1002),
        (
            client_frame(0x09, b"x", MASK),
            WsError::FragmentedControl,
            1002,
        ),
        (
            client_frame(0x89, &[0; 126], MASK),
            WsError::ControlTooLong,
            1002,
        ),
        (
            client_frame(0x80, b"x", MASK),
            WsError::UnexpectedContinuation,
            1002,
        ),
        (
            client_frame(0x81, &[0xff, 0xfe], MASK),
            WsError::InvalidUtf8,
            1007,
        ),
        (
            client_frame(0x88, &[3], MASK),
            WsError::BadClosePayload,
            1002,
        ),
        (
            client_frame(0x88, &[0x03, 0xed], MASK),
            WsError::InvalidCloseCode(1005),
            1002,
        ),
        (
            client_frame(0x88, &[0x03, 0xe8, 0xff], MASK),
            WsError::InvalidUtf8,
            1007,
        ),
    ];
    for (input, error, code) in cases {
        let mut d = FrameDecoder::new(1 << 20);
        let got = decode_all(&mut d, &input).unwrap_err();
        assert_eq!(got, error);
        assert_eq!(got.close_code(), code);
    }
    let mut d = FrameDecoder::new(1 << 20);
    let mut input = client_frame(0x01, b"a", MASK);
    input.extend(client_frame(0x81, b"b", MASK));
    assert_eq!(
        decode_all(&mut d, &input).unwrap_err(),
        WsError::ExpectedContinuation
    );
}

#[test]
fn size_limit_is_checked_before_buffering() {
    let mut d = FrameDecoder::new(100);
    // Only the header of a 1 MB frame has arrived: refused already.
    let header = [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4];
    assert_eq!(
        d.decode(&header).unwrap_err(),
        WsError::TooBig { limit: 100 }
    );
    // Fragments adding up past the limit.
    let mut d = FrameDecoder::new(100);
    let mut input = client_frame(0x01, &[b'a'; 60], MASK);
    input.extend(client_frame(0x80, &[b'a'; 60], MASK));
    assert_eq!(decode_all(&mut d, &input).unwrap_err().close_code(), 1009);
    // Exactly the limit is fine.
    let mut d = FrameDecoder::new(100);
    let frame = client_frame(0x81, &[b'a'; 100], MASK);
    assert_eq!(decode_all(&mut d, &frame).unwrap().len(), 1);
}

#[test]
fn unmask_matches_the_bytewise_definition() {
    for len in 0..40 {
        let original: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
        let mut fast = original.clone();
        unmask(&mut fast, MASK);
        let slow: Vec<u8> = original
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(fast, slow, "length {len}");
    }
}

#[test]
fn server_frames_are_byte_exact() {
    for (len, header) in [
        (0usize, vec![0x81, 0]),
        (125, vec![0x81, 125]),
        (126, vec![0x81, 126, 0, 126]),
        (65535, vec![0x81, 126, 0xff, 0xff]),
        (65536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ] {
        let payload = vec![b'x'; len];
        let mut out = Vec::new();
        write_frame(&mut out, OpCode::Data(Data::Text), &payload);
        assert_eq!(&out[..header.len()], &header[..], "length {len}");
        assert_eq!(out.len(), frame_len(len));
    }
    assert_eq!(
        close_frame(1012, "bye"),
        vec![0x88, 5, 0x03, 0xf4, b'b', b'y', b'e']
    );
    let long = "é".repeat(100); // 200 bytes: cut to fit 125 at a char boundary
    let frame = close_frame(1000, &long);
    assert!(frame.len() <= 2 + 125);
    assert!(std::str::from_utf8(&frame[4..]).is_ok());
}
