//! The long-poll HTTP exchange, byte for byte: response bodies
//! and headers, and how a POST body becomes client messages.
//!
//! Every answer is HTTP 200 with the logical status in the JSON body; only
//! the CORS preflight and wrong methods differ.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::protocol::message::write_json_string;
use crate::transport::http::write_response;

/// Lines of one ndjson POST that are processed; the rest are ignored
/// (Phoenix ≥ 1.8.9).
pub const MAX_POST_LINES: usize = 100;

/// The only content type that makes a POST body ndjson. Phoenix compares it
/// exactly: with a `charset` parameter the body is one frame.
pub const NDJSON: &str = "application/x-ndjson";

/// Headers of every JSON answer.
const JSON_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/json; charset=utf-8"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "no-store"),
];

/// One client message from a POST body, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostedFrame {
    /// A text frame (V1 object or V2 array).
    Text(Vec<u8>),
    /// A V2 binary push, from a base64 line.
    Binary(Vec<u8>),
    /// A line that is neither JSON text nor valid base64.
    Malformed,
}

/// Splits a POST body into frames: ndjson lines when the content type is
/// exactly `application/x-ndjson` (at most [`MAX_POST_LINES`]), otherwise
/// the whole body as one text frame.
pub fn split_post(content_type: Option<&str>, body: &[u8]) -> Vec<PostedFrame> {
    if content_type != Some(NDJSON) {
        return vec![PostedFrame::Text(body.to_vec())];
    }
    body.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .take(MAX_POST_LINES)
        .map(|line| {
            if line.first() == Some(&b'[') {
                PostedFrame::Text(line.to_vec())
            } else {
                STANDARD
                    .decode(line)
                    .map_or(PostedFrame::Malformed, PostedFrame::Binary)
            }
        })
        .collect()
}

/// `{"status":N}`, e.g. a POST's 200/408/410 or a refused session's 403.
pub fn write_status(out: &mut Vec<u8>, status: u16, keep_alive: bool) {
    let body = format!(r#"{{"status":{status}}}"#);
    write_response(out, 200, &JSON_HEADERS, body.as_bytes(), keep_alive);
}

/// `{"status":N,"reason":"..."}`, for refusals worth explaining.
pub fn write_status_reason(out: &mut Vec<u8>, status: u16, reason: &str, keep_alive: bool) {
    let mut body = format!(r#"{{"status":{status},"reason":"#).into_bytes();
    write_json_string(&mut body, reason);
    body.push(b'}');
    write_response(out, 200, &JSON_HEADERS, &body, keep_alive);
}

/// A poll answer: `{"status":N,"token":"T","messages":["<frame>",...]}`,
/// each message being one frame's text as a JSON string.
pub fn write_poll<'m>(
    out: &mut Vec<u8>,
    status: u16,
    token: &str,
    messages: impl Iterator<Item = &'m [u8]>,
    keep_alive: bool,
) {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(format!(r#"{{"status":{status},"token":"#).as_bytes());
    write_json_string(&mut body, token);
    body.extend_from_slice(br#","messages":["#);
    for (i, message) in messages.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        // Frames are produced by the encoder from validated JSON: UTF-8.
        write_json_string(&mut body, &String::from_utf8_lossy(message));
    }
    body.extend_from_slice(b"]}");
    write_response(out, 200, &JSON_HEADERS, &body, keep_alive);
}

/// The CORS preflight answer: 200, empty body.
pub fn write_preflight(out: &mut Vec<u8>, request_headers: Option<&str>, keep_alive: bool) {
    let allow_headers = request_headers.unwrap_or("");
    write_response(
        out,
        200,
        &[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-headers", allow_headers),
            ("access-control-allow-methods", "get, post, options"),
            ("access-control-max-age", "3600"),
        ],
        b"",
        keep_alive,
    );
}

/// Any other method: 400, empty body.
pub fn write_bad_method(out: &mut Vec<u8>) {
    write_response(out, 400, &[], b"", false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(response: &[u8]) -> &str {
        let text = std::str::from_utf8(response).unwrap();
        text.split("\r\n\r\n").nth(1).unwrap()
    }

    #[test]
    fn ndjson_lines_text_and_base64() {
        let body =
            b"[\"1\",\"1\",\"t\",\"phx_join\",{}]\r\nAAECAw==\n\n[null,\"2\",\"t\",\"e\",{}]";
        let frames = split_post(Some(NDJSON), body);
        assert_eq!(
            frames,
            vec![
                PostedFrame::Text(br#"["1","1","t","phx_join",{}]"#.to_vec()),
                PostedFrame::Binary(vec![0, 1, 2, 3]),
                PostedFrame::Text(br#"[null,"2","t","e",{}]"#.to_vec()),
            ]
        );
        assert_eq!(
            split_post(Some(NDJSON), b"%%%"),
            vec![PostedFrame::Malformed]
        );
    }

    #[test]
    fn other_content_types_are_one_frame() {
        let body = b"{\"topic\":\"t\"}\n{\"topic\":\"u\"}";
        for ct in [
            None,
            Some("application/json"),
            Some("application/x-ndjson; charset=utf-8"),
        ] {
            assert_eq!(split_post(ct, body), vec![PostedFrame::Text(body.to_vec())]);
        }
    }

    #[test]
    fn only_the_first_hundred_lines_count() {
        let body = vec!["[]"; 150].join("\n");
        assert_eq!(
            split_post(Some(NDJSON), body.as_bytes()).len(),
            MAX_POST_LINES
        );
    }

    #[test]
    fn poll_answers_are_byte_exact() {
        let mut out = Vec::new();
        let frames: [&[u8]; 2] = [
            br#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#,
            br#"[null,null,"r","e",{"a":"\u00e9"}]"#,
        ];
        write_poll(&mut out, 200, "T1", frames.into_iter(), true);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-type: application/json; charset=utf-8\r\n"));
        assert!(text.contains("access-control-allow-origin: *\r\n"));
        assert!(text.contains("cache-control: no-store\r\n"));
        assert_eq!(
            body_of(&out),
            r#"{"status":200,"token":"T1","messages":["[\"3\",\"3\",\"room:lobby\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]","[null,null,\"r\",\"e\",{\"a\":\"\\u00e9\"}]"]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(body_of(&out)).unwrap();
        assert_eq!(
            parsed["messages"][1],
            r#"[null,null,"r","e",{"a":"\u00e9"}]"#
        );

        let mut out = Vec::new();
        write_poll(&mut out, 410, "T2", std::iter::empty(), true);
        assert_eq!(
            body_of(&out),
            r#"{"status":410,"token":"T2","messages":[]}"#
        );
        let mut out = Vec::new();
        write_status(&mut out, 408, true);
        assert_eq!(body_of(&out), r#"{"status":408}"#);
    }

    #[test]
    fn preflight_echoes_the_requested_headers() {
        let mut out = Vec::new();
        write_preflight(&mut out, Some("content-type, x-phoenix-authtoken"), true);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains("access-control-allow-headers: content-type, x-phoenix-authtoken\r\n")
        );
        assert!(text.contains("access-control-allow-methods: get, post, options\r\n"));
        assert!(text.contains("access-control-max-age: 3600\r\n"));
        assert!(text.ends_with("content-length: 0\r\nconnection: keep-alive\r\n\r\n"));
    }
}
