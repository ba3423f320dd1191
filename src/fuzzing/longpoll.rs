//! The fuzz target over long-poll bodies, session tokens and answers.

use super::messages::binary_message;
use super::*;

/// The long-poll transport. The first byte picks what is fuzzed: a POST
/// body (with one of three content types), session tokens, or a poll
/// answer.
pub fn longpoll(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    match mode % 3 {
        0 => {
            let content_type = match (mode / 3) % 3 {
                0 => Some(NDJSON),
                1 => None,
                _ => Some("application/x-ndjson; charset=utf-8"),
            };
            post_body(content_type, input.rest());
        }
        1 => session_tokens(input),
        _ => poll_answer(input),
    }
}

fn post_body(content_type: Option<&str>, body: &[u8]) {
    let frames = split_post(content_type, body);
    if content_type != Some(NDJSON) {
        assert_eq!(
            frames,
            [PostedFrame::Text(body.to_vec())],
            "a non-ndjson body not kept as one frame"
        );
        return;
    }
    assert!(
        frames.len() <= MAX_POST_LINES,
        "{} frames from one POST",
        frames.len()
    );
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .take(MAX_POST_LINES)
        .collect();
    assert_eq!(
        frames.len(),
        lines.len(),
        "frames and non-empty lines differ"
    );
    for (frame, line) in frames.iter().zip(&lines) {
        match frame {
            PostedFrame::Text(text) => {
                assert_eq!(text, line, "a text line changed");
                assert_eq!(
                    line.first(),
                    Some(&b'['),
                    "a text frame not starting with ["
                );
                for serializer in [Serializer::V1, Serializer::V2] {
                    let _ = decode_text(serializer, &mut text.clone());
                }
            }
            PostedFrame::Binary(bytes) => {
                assert_ne!(line.first(), Some(&b'['), "a [ line decoded as base64");
                assert_eq!(
                    STANDARD.encode(bytes).as_bytes(),
                    *line,
                    "a binary line that is not canonical base64"
                );
                binary_message(bytes);
            }
            PostedFrame::Malformed => {
                assert_ne!(line.first(), Some(&b'['));
                assert!(
                    STANDARD.decode(line).is_err(),
                    "valid base64 called malformed"
                );
            }
        }
    }
}

fn session_tokens(mut input: Input<'_>) {
    let secret_len = usize::from(input.byte() % 80);
    let secret = input.bytes(secret_len).to_vec();
    let instance = input.u64();
    let signer = TokenSigner::new(&secret, instance);
    let mut other_secret = secret.clone();
    match other_secret.first_mut() {
        Some(b) => *b ^= 0x80,
        None => other_secret.push(1),
    }
    let strangers = [
        TokenSigner::new(&other_secret, instance),
        TokenSigner::new(&secret, instance ^ 1),
    ];
    let mut tokens = Vec::new();
    for _ in 0..=input.byte() % 4 {
        let address = SessionAddress {
            shard: input.u16(),
            key: input.u32(),
            serial: input.u64(),
        };
        let token = signer.sign(address);
        assert!(token.len() <= 64, "a token of {} bytes", token.len());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a token that is not URL-safe: {token}"
        );
        assert!(TokenSigner::looks_like_session_token(&token));
        assert_eq!(
            signer.verify(&token),
            Some(address),
            "a token not verifying"
        );
        for stranger in &strangers {
            assert_eq!(
                stranger.verify(&token),
                None,
                "another signer accepted a token"
            );
        }
        tokens.push(token);
    }
    // Tampered tokens, then whatever is left as a token.
    while !input.is_empty() {
        let (which, op, at, byte) = (input.byte(), input.byte(), input.byte(), input.byte());
        let mut token = tokens[usize::from(which) % tokens.len()]
            .clone()
            .into_bytes();
        let at = usize::from(at) % (token.len() + 1);
        match op % 5 {
            0 if at < token.len() => token[at] = byte,
            1 if at < token.len() => {
                token.remove(at);
            }
            2 => token.insert(at, byte),
            3 => token.truncate(at),
            _ => token.extend_from_slice(input.bytes(usize::from(byte % 8))),
        }
        check_verify(&signer, &String::from_utf8_lossy(&token));
    }
    check_verify(&signer, &String::from_utf8_lossy(input.rest()));
}

/// A token verifies only as what the signer makes of the address it names:
/// nothing unsigned, no second spelling of a signed token.
fn check_verify(signer: &TokenSigner, token: &str) {
    if let Some(address) = signer.verify(token) {
        assert_eq!(
            signer.sign(address),
            token,
            "verify accepted a token the signer did not make"
        );
        assert!(TokenSigner::looks_like_session_token(token));
    }
}

fn poll_answer(mut input: Input<'_>) {
    let status = input.u16();
    let token_len = usize::from(input.byte() % 64);
    let token = String::from_utf8_lossy(input.bytes(token_len)).into_owned();
    let keep_alive = input.byte() & 1 == 0;
    let mut messages = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.byte());
        messages.push(input.bytes(len));
    }
    let mut out = Vec::new();
    write_poll(
        &mut out,
        status,
        &token,
        messages.iter().copied(),
        keep_alive,
    );
    let body = response_body(&out);
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("a poll body that is not JSON ({e})"));
    assert_eq!(value["status"], u64::from(status));
    assert_eq!(value["token"], token.as_str());
    let sent: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(
        value["messages"],
        serde_json::json!(sent),
        "a poll body carrying other messages"
    );
    let mut out = Vec::new();
    write_status_reason(&mut out, status, &token, keep_alive);
    let value: serde_json::Value = serde_json::from_slice(response_body(&out))
        .unwrap_or_else(|e| panic!("a status body that is not JSON ({e})"));
    assert_eq!(value["reason"], token.as_str());
}

/// The body of a response `write_response` wrote, checked against its
/// `content-length`.
fn response_body(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = std::str::from_utf8(&response[..end]).expect("an ASCII head");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse().ok())
        .expect("a content-length");
    assert_eq!(
        length,
        response.len() - end,
        "content-length disagrees with the body"
    );
    &response[end..]
}
