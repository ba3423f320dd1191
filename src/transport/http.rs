//! HTTP/1.1 requests (parsed with `httparse`) and responses.
//!
//! Parsing first checks that a whole request — head and body — is present:
//! partial input is normal and answered with [`Parsed::Incomplete`]. Limits
//! are checked as early as possible, so a client cannot make the server
//! buffer more than `max_header_bytes` of head or `max_body_bytes` of body.

use std::fmt::Write as _;

use super::chunked::ChunkedDecoder;

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
    /// The `x` of `HTTP/1.x`.
    pub minor_version: u8,
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
    /// More bytes are needed. `consumed` bytes of the input were taken into
    /// the request in progress (body bytes); the rest must be offered again.
    Incomplete {
        /// Bytes taken.
        consumed: usize,
        /// The head asked `Expect: 100-continue` and its body has not all
        /// arrived: answer `100 Continue` now (reported once per request).
        send_continue: bool,
    },
    /// A request, and the bytes it occupied (the next request starts there).
    Complete {
        /// The request.
        request: Request,
        /// Bytes consumed.
        consumed: usize,
    },
}

/// How the rest of a request's body is read.
#[derive(Debug)]
enum BodyReader {
    /// `Content-Length`: this many bytes are still due.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedDecoder),
}

/// A request whose head was parsed and whose body is arriving.
#[derive(Debug)]
struct PartialRequest {
    request: Request,
    body: BodyReader,
}

/// Parses the requests of one connection, incrementally: a request's head
/// is parsed once it is whole, and its body is taken as it arrives, so
/// every byte of a body is looked at once however it is split into reads
/// or chunks. Idle connections hold nothing (`None`).
#[derive(Debug, Default)]
pub struct RequestParser {
    partial: Option<Box<PartialRequest>>,
}

impl RequestParser {
    /// Whether a request's head was parsed and its body is still arriving.
    pub fn in_body(&self) -> bool {
        self.partial.is_some()
    }

    /// Parses from the front of `buf`: the rest of the request in progress,
    /// or a new one.
    pub fn parse(&mut self, buf: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
        let mut send_continue = false;
        let (mut partial, mut at) = match self.partial.take() {
            Some(partial) => (partial, 0),
            None => match parse_head(buf, limits)? {
                None => {
                    return Ok(Parsed::Incomplete {
                        consumed: 0,
                        send_continue,
                    })
                }
                Some((partial, head_len)) => {
                    send_continue = partial.request.header_has_token("expect", "100-continue");
                    (partial, head_len)
                }
            },
        };
        let rest = &buf[at..];
        let done = match &mut partial.body {
            BodyReader::Length(left) => {
                let take = (*left).min(rest.len());
                partial.request.body.extend_from_slice(&rest[..take]);
                at += take;
                *left -= take;
                *left == 0
            }
            BodyReader::Chunked(decoder) => {
                let fed = decoder.feed(rest, &mut partial.request.body)?;
                at += fed.consumed;
                fed.done
            }
        };
        if done {
            return Ok(Parsed::Complete {
                request: partial.request,
                consumed: at,
            });
        }
        self.partial = Some(partial);
        Ok(Parsed::Incomplete {
            consumed: at,
            send_continue,
        })
    }
}

/// Parses one whole request from the front of `buf` (a fresh
/// [`RequestParser`]): `Incomplete` until all of it is there.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Parsed, HttpError> {
    RequestParser::default().parse(buf, limits)
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

/// Parses a request's head from the front of `buf`: `None` until it is
/// whole; then the request (body still empty), how its body is read, and
/// the head's length.
fn parse_head(
    buf: &[u8],
    limits: &HttpLimits,
) -> Result<Option<(Box<PartialRequest>, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeadersTooLarge);
            }
            return Ok(None);
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
        minor_version,
    };
    request.keep_alive = if minor_version >= 1 {
        !request.header_has_token("connection", "close")
    } else {
        request.header_has_token("connection", "keep-alive")
    };
    let lengths: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let body = match transfer_coding(&request)? {
        Some(_) if !lengths.is_empty() => {
            return Err(HttpError::Malformed(
                "both Transfer-Encoding and Content-Length".into(),
            ))
        }
        // Extensions and trailers share the head's budget; framing counts
        // against the body limit, so tiny chunks cannot stretch it.
        Some(Chunked) => BodyReader::Chunked(ChunkedDecoder::new(
            limits.max_header_bytes,
            limits.max_body_bytes,
        )),
        None => {
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
            request.body.reserve(length.min(64 * 1024));
            BodyReader::Length(length)
        }
    };
    Ok(Some((Box::new(PartialRequest { request, body }), head_len)))
}

/// The one transfer coding a request body may have.
struct Chunked;

/// Reads `Transfer-Encoding`: absent, or exactly `chunked` (RFC 9112 §6.3:
/// chunked must be the final coding, and no other coding is supported, so
/// `chunked, identity` or `gzip, chunked` are refused).
fn transfer_coding(request: &Request) -> Result<Option<Chunked>, HttpError> {
    let codings: Vec<String> = request
        .headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    let present = request
        .headers
        .iter()
        .any(|(n, _)| n == "transfer-encoding");
    match codings.as_slice() {
        [] if !present => Ok(None),
        [only] if only == "chunked" => Ok(Some(Chunked)),
        _ => Err(HttpError::Malformed("unsupported Transfer-Encoding".into())),
    }
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

/// The reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
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

    /// The status a request that cannot be served is answered with.
    fn status_of(raw: &[u8]) -> u16 {
        parse_request(raw, &LIMITS).unwrap_err().status()
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &LIMITS).unwrap() {
            Parsed::Complete { request, consumed } => (request, consumed),
            Parsed::Incomplete { .. } => panic!("incomplete"),
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
                Parsed::Incomplete { .. }
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
                    Parsed::Incomplete { .. }
                ),
                "{split}"
            );
        }
        let bad = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(status_of(bad), 400);
    }

    #[test]
    fn refusals_carry_the_right_status() {
        // A line that never ends grows past the head limit: 431, not a hang.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; 2000]);
        let mut cases: Vec<(Vec<u8>, u16)> = vec![
            (b"POST /p HTTP/1.1\r\nContent-Length: 65\r\n\r\n".to_vec(), 413),
            (vec![b'a'; 2000], 431),
            (long, 431),
            (b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
            (b"POST /p HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), 400),
            (b"\x16\x03\x01\x02\x00\r\n\r\n".to_vec(), 400),
            // Chunked must be the only coding (RFC 9112 §6.3), in one header or two.
            (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(), 400),
        ];
        for coding in ["chunked, identity", "gzip, chunked", "identity", ""] {
            let raw = format!("POST /p HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
            cases.push((raw.into_bytes(), 400));
        }
        for (raw, status) in cases {
            assert_eq!(status_of(&raw), status, "{}", String::from_utf8_lossy(&raw));
        }
    }

    #[test]
    fn bodies_are_taken_as_they_arrive() {
        let raw = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /n HTTP/1.1\r\n\r\n";
        let mut parser = RequestParser::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut requests = Vec::new();
        for &byte in raw.iter() {
            pending.push(byte);
            loop {
                match parser.parse(&pending, &LIMITS).unwrap() {
                    Parsed::Incomplete { consumed, .. } => {
                        pending.drain(..consumed);
                        break;
                    }
                    Parsed::Complete { request, consumed } => {
                        pending.drain(..consumed);
                        requests.push(request);
                    }
                }
            }
            // A body never waits in the pending input: it went into the request.
            assert!(pending.len() <= 48, "{}", pending.len());
        }
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].body, b"abcde");
        assert_eq!(requests[1].path, "/n");
        assert!(!parser.in_body());
    }

    #[test]
    fn expect_100_continue_is_reported_once() {
        let head = b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        let mut parser = RequestParser::default();
        assert!(matches!(
            parser.parse(head, &LIMITS).unwrap(),
            Parsed::Incomplete {
                send_continue: true,
                ..
            }
        ));
        assert!(matches!(
            parser.parse(b"ab", &LIMITS).unwrap(),
            Parsed::Incomplete {
                send_continue: false,
                consumed: 2
            }
        ));
        assert!(matches!(
            parser.parse(b"cd", &LIMITS).unwrap(),
            Parsed::Complete { .. }
        ));
        assert_eq!(complete(b"GET / HTTP/1.0\r\n\r\n").0.minor_version, 0);
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
