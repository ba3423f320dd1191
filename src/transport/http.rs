//! HTTP/1.1 requests (parsed with `httparse`) and responses.
//!
//! Parsing first checks that a whole request — head and body — is present:
//! partial input is normal and answered with [`Parsed::Incomplete`]. Limits
//! are checked as early as possible, so a client cannot make the server
//! buffer more than `max_header_bytes` of head or `max_body_bytes` of body.

use std::fmt::Write as _;

/// Most headers one request may carry.
const MAX_HEADERS: usize = 64;

/// Size limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Largest body.
    pub max_body_bytes: usize,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, before any `?`.
    pub path: String,
    /// The raw query string after `?` (empty when absent).
    pub query: String,
    /// Headers with lowercased names and trimmed values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked bodies are decoded).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of a header (`name` in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header lists `token` (comma-separated,
    /// case-insensitive), as in `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// The outcome of a parse attempt.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A request, and the bytes it occupied (the next request starts there).
    Complete {
        /// The request.
        request: Request,
        /// Bytes consumed.
        consumed: usize,
    },
}

/// A request that cannot be served; answered with [`HttpError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP/1.x, or malformed.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The head is larger than allowed, or has too many headers.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The body is larger than allowed.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge { .. } => 413,
        }
    }
}

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(Parsed::Incomplete);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let minor_version = req.version.unwrap_or(1);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let mut request = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
        keep_alive: false,
    };
    request.keep_alive = if minor_version >= 1 {
        !request.header_has_token("connection", "close")
    } else {
        request.header_has_token("connection", "keep-alive")
    };

    let chunked = request.header_has_token("transfer-encoding", "chunked");
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    if chunked && !lengths.is_empty() {
        return Err(HttpError::Malformed(
            "both Transfer-Encoding and Content-Length".into(),
        ));
    }
    if request.header("transfer-encoding").is_some() && !chunked {
        return Err(HttpError::Malformed("unsupported Transfer-Encoding".into()));
    }
    let rest = &buf[head_len..];
    if chunked {
        return match decode_chunked(rest, limits.max_body_bytes)? {
            None => Ok(Parsed::Incomplete),
            Some((body, used)) => {
                request.body = body;
                Ok(Parsed::Complete {
                    request,
                    consumed: head_len + used,
                })
            }
        };
    }
    let length = match lengths.as_slice() {
        [] => 0,
        [first, others @ ..] => {
            let length = parse_length(first)?;
            if others.iter().any(|o| parse_length(o) != Ok(length)) {
                return Err(HttpError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            length
        }
    };
    if length > limits.max_body_bytes {
        return Err(HttpError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    if rest.len() < length {
        return Ok(Parsed::Incomplete);
    }
    request.body = rest[..length].to_vec();
    Ok(Parsed::Complete {
        request,
        consumed: head_len + length,
    })
}

fn parse_length(text: &str) -> Result<usize, HttpError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed(format!(
            "invalid Content-Length {text:?}"
        )));
    }
    text.parse()
        .map_err(|_| HttpError::Malformed(format!("invalid Content-Length {text:?}")))
}

/// Decodes a chunked body; `None` while incomplete, else the body and the
/// bytes used (trailers included).
fn decode_chunked(buf: &[u8], limit: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            if buf.len() - at > 1024 {
                return Err(HttpError::Malformed("chunk size line too long".into()));
            }
            return Ok(None);
        };
        let line = &buf[at..at + line_end];
        // Chunk extensions (";name=value") are allowed and ignored.
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| HttpError::Malformed("invalid chunk size".into()))?
            .trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("invalid chunk size {size_text:?}")))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers: header lines until an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len().saturating_add(size) > limit {
            return Err(HttpError::BodyTooLarge { limit });
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size;
        if &buf[at..at + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        at += 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a complete response with `Content-Length` and `Connection`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) {
    let mut head = String::with_capacity(128);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        head,
        "content-length: {}\r\nconnection: {connection}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Appends an error response with body `{"error":"<reason>"}`.
pub fn write_json_error(out: &mut Vec<u8>, status: u16, reason: &str, keep_alive: bool) {
    let body = serde_json::json!({ "error": reason }).to_string();
    write_response(
        out,
        status,
        &[("content-type", "application/json")],
        body.as_bytes(),
        keep_alive,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        max_header_bytes: 1024,
        max_body_bytes: 64,
    };

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &LIMITS).unwrap() {
            Parsed::Complete { request, consumed } => (request, consumed),
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn parses_a_request_with_a_body() {
        let raw = b"POST /api/broadcast?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
        let (req, used) = complete(raw);
        assert_eq!(
            (req.method.as_str(), req.path.as_str(), req.query.as_str()),
            ("POST", "/api/broadcast", "x=1")
        );
        assert_eq!(req.body, b"body");
        assert_eq!(req.header("host"), Some("a"));
        assert!(req.keep_alive);
        assert_eq!(used, raw.len());
    }

    #[test]
    fn every_split_is_incomplete_until_the_end() {
        let raw = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n\r\n";
        let first_len = raw.len() - b"GET /next HTTP/1.1\r\n\r\n".len();
        for split in 0..first_len {
            assert!(matches!(
                parse_request(&raw[..split], &LIMITS).unwrap(),
                Parsed::Incomplete
            ));
        }
        let (req, used) = complete(raw);
        assert_eq!((req.body.as_slice(), used), (&b"abc"[..], first_len));
        let (next, _) = complete(&raw[used..]);
        assert_eq!(next.path, "/next");
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let (req, used) = complete(raw);
        assert_eq!((req.body.as_slice(), used), (&b"abcde"[..], raw.len()));
        for split in 0..raw.len() {
            assert!(
                matches!(
                    parse_request(&raw[..split], &LIMITS).unwrap(),
                    Parsed::Incomplete
                ),
                "{split}"
            );
        }
        let bad = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse_request(bad, &LIMITS).unwrap_err().status(), 400);
    }

    #[test]
    fn limits_and_errors() {
        let big = b"POST /p HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(parse_request(big, &LIMITS).unwrap_err().status(), 413);
        // A line that never ends grows past the head limit: 431, not a hang.
        let head = vec![b'a'; 2000];
        assert_eq!(parse_request(&head, &LIMITS).unwrap_err().status(), 431);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; 2000]);
        assert_eq!(parse_request(&long, &LIMITS).unwrap_err().status(), 431);
        let both = b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(both, &LIMITS).unwrap_err().status(), 400);
        let conflict = b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(parse_request(conflict, &LIMITS).unwrap_err().status(), 400);
        let garbage = b"\x16\x03\x01\x02\x00\r\n\r\n";
        assert_eq!(parse_request(garbage, &LIMITS).unwrap_err().status(), 400);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn responses_are_byte_exact() {
        let mut out = Vec::new();
        write_json_error(&mut out, 404, "not \"found\"", false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 25\r\n\
             connection: close\r\n\r\n{\"error\":\"not \\\"found\\\"\"}"
        );
    }
}
