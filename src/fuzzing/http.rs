//! The fuzz target over HTTP requests and chunked bodies.

use super::*;

/// HTTP request parsing. The first byte picks the mode (even: a stream of
/// requests through [`RequestParser`]; odd: a chunked body through
/// [`ChunkedDecoder`]), the next three the head limit, the body limit and
/// how the input is split; the rest is what the client sent.
pub fn http_request(data: &[u8]) {
    let mut input = Input(data);
    let mode = input.byte();
    let max_header_bytes = 16 + usize::from(input.byte()) * 4;
    let max_body_bytes = usize::from(input.byte()) * 2;
    let seed = input.byte();
    let stream = input.rest();
    if mode & 1 == 0 {
        let limits = HttpLimits {
            max_header_bytes,
            max_body_bytes,
        };
        http_stream(stream, &limits, seed);
    } else {
        chunked_body(stream, max_header_bytes, max_body_bytes * 4, seed);
    }
}

/// What a connection's parser made of a stream.
#[derive(Debug, PartialEq)]
struct HttpOutcome {
    requests: Vec<Request>,
    error: Option<HttpError>,
}

fn http_stream(stream: &[u8], limits: &HttpLimits, seed: u8) {
    let whole = parse_stream(stream, limits, None);
    let split = parse_stream(stream, limits, Some(Pieces::new(seed, 24)));
    assert_eq!(
        whole.requests, split.requests,
        "the same bytes split into reads gave other requests"
    );
    match (&whole.error, &split.error) {
        (None, None) => {}
        // Read by read, a head that grows past the limit is refused before
        // a later malformed byte arrives; that is the only difference.
        (Some(a), Some(b)) if a == b || *b == HttpError::HeadersTooLarge => {}
        (a, b) => panic!("whole input ended in {a:?}, split input in {b:?}"),
    }
    let mut pieces = Pieces::new(seed ^ 0x5a, 40);
    for request in &whole.requests {
        let wire = write_request(request, &mut pieces);
        let roomy = HttpLimits {
            max_header_bytes: 1 << 30,
            max_body_bytes: 1 << 30,
        };
        match RequestParser::default().parse(&wire, &roomy) {
            Ok(Parsed::Complete {
                request: again,
                consumed,
            }) => {
                assert_eq!(
                    &again, request,
                    "a request written back out parsed differently"
                );
                assert_eq!(
                    consumed,
                    wire.len(),
                    "a request written back out was not all read"
                );
            }
            other => panic!(
                "a request written back out did not parse: {other:?}\n{}",
                String::from_utf8_lossy(&wire)
            ),
        }
    }
}

/// Feeds `stream` to one connection's parser as the shard does (whole, or
/// in reads cut by `pieces`), checking every answer.
fn parse_stream(stream: &[u8], limits: &HttpLimits, mut pieces: Option<Pieces>) -> HttpOutcome {
    let mut parser = RequestParser::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut requests = Vec::new();
    let mut fed = 0;
    // Bytes consumed by the request in progress, and its 100-continues.
    let mut request_bytes = 0;
    let mut continues = 0;
    while fed < stream.len() {
        fed = read_more(stream, fed, &mut pieces, &mut pending);
        loop {
            let parsed = match parser.parse(&pending, limits) {
                Ok(parsed) => parsed,
                Err(error) => {
                    return HttpOutcome {
                        requests,
                        error: Some(error),
                    }
                }
            };
            match parsed {
                Parsed::Incomplete {
                    consumed,
                    send_continue,
                } => {
                    assert!(
                        consumed <= pending.len(),
                        "consumed {consumed} of {} bytes",
                        pending.len()
                    );
                    pending.drain(..consumed);
                    request_bytes += consumed;
                    continues += usize::from(send_continue);
                    if parser.in_body() {
                        assert!(
                            pending.is_empty(),
                            "{} body bytes left waiting in the input",
                            pending.len()
                        );
                    } else {
                        assert_eq!(consumed, 0, "bytes consumed with no request in progress");
                        assert!(
                            pending.len() <= limits.max_header_bytes,
                            "{} bytes of head buffered, limit {}",
                            pending.len(),
                            limits.max_header_bytes
                        );
                    }
                    assert!(
                        request_bytes <= limits.max_header_bytes + limits.max_body_bytes,
                        "a request took {request_bytes} bytes, limits {limits:?}"
                    );
                    break;
                }
                Parsed::Complete { request, consumed } => {
                    assert!(
                        consumed > 0 && consumed <= pending.len(),
                        "a request consumed {consumed} of {} bytes",
                        pending.len()
                    );
                    assert!(
                        !parser.in_body(),
                        "a complete request left a body in progress"
                    );
                    pending.drain(..consumed);
                    request_bytes += consumed;
                    assert!(
                        request_bytes <= limits.max_header_bytes + limits.max_body_bytes,
                        "a request took {request_bytes} bytes, limits {limits:?}"
                    );
                    assert!(
                        request.body.len() <= limits.max_body_bytes,
                        "a body of {} bytes, limit {}",
                        request.body.len(),
                        limits.max_body_bytes
                    );
                    assert!(continues <= 1, "100-continue reported {continues} times");
                    if continues == 1 {
                        assert!(
                            request.header_has_token("expect", "100-continue"),
                            "100-continue for a request that did not ask"
                        );
                    }
                    check_request(&request);
                    requests.push(request);
                    request_bytes = 0;
                    continues = 0;
                }
            }
        }
    }
    HttpOutcome {
        requests,
        error: None,
    }
}

/// What every parsed request looks like.
fn check_request(request: &Request) {
    assert!(!request.method.is_empty(), "empty method");
    assert!(!request.path.contains('?'), "a path holding its query");
    assert!(
        request.minor_version <= 1,
        "HTTP/1.{}",
        request.minor_version
    );
    for (name, value) in &request.headers {
        assert!(
            !name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()),
            "header name {name:?} not lowercased"
        );
        assert_eq!(value.trim(), value, "header value {value:?} not trimmed");
    }
    let keep_alive = if request.minor_version >= 1 {
        !request.header_has_token("connection", "close")
    } else {
        request.header_has_token("connection", "keep-alive")
    };
    assert_eq!(
        request.keep_alive, keep_alive,
        "keep-alive against the rules"
    );
    if let Some(length) = request.header("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(request.body.len()),
            "Content-Length {length} with a body of {} bytes",
            request.body.len()
        );
    }
    if request.header("transfer-encoding").is_none() && request.header("content-length").is_none() {
        assert!(request.body.is_empty(), "a body without framing headers");
    }
}

/// Writes a request back out: the same head, the body with
/// `Content-Length` framing as parsed or re-chunked at random sizes.
fn write_request(request: &Request, pieces: &mut Pieces) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.path.as_bytes());
    if !request.query.is_empty() || request.path.is_empty() {
        out.push(b'?');
        out.extend_from_slice(request.query.as_bytes());
    }
    out.extend_from_slice(format!(" HTTP/1.{}\r\n", request.minor_version).as_bytes());
    for (name, value) in &request.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if request.header("transfer-encoding").is_some() {
        write_chunked(&mut out, &request.body, pieces);
    } else {
        out.extend_from_slice(&request.body);
    }
    out
}

/// Appends `body` as chunks of random sizes (some with an extension), the
/// last chunk and an empty trailer.
fn write_chunked(out: &mut Vec<u8>, body: &[u8], pieces: &mut Pieces) {
    let mut at = 0;
    while at < body.len() {
        let n = pieces.next().min(body.len() - at);
        let extension = if pieces.next_u64().is_multiple_of(4) {
            ";x=1"
        } else {
            ""
        };
        out.extend_from_slice(format!("{n:X}{extension}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

/// A decoded chunked body: its data, the bytes used and whether it ended.
type ChunkedOutcome = Result<(Vec<u8>, usize, bool), HttpError>;

fn chunked_body(wire: &[u8], max_meta: usize, max_wire: usize, seed: u8) {
    let whole = feed_chunked(wire, max_meta, max_wire, None);
    let split = feed_chunked(wire, max_meta, max_wire, Some(Pieces::new(seed, 16)));
    assert_eq!(
        whole, split,
        "a chunked body fed in pieces decoded differently"
    );
    if let Ok((body, _, true)) = whole {
        let mut again = Vec::new();
        write_chunked(&mut again, &body, &mut Pieces::new(seed, 64));
        let decoded = feed_chunked(&again, usize::MAX, usize::MAX, None);
        assert_eq!(
            decoded,
            Ok((body, again.len(), true)),
            "a body re-chunked did not decode to itself"
        );
    }
}

fn feed_chunked(
    wire: &[u8],
    max_meta: usize,
    max_wire: usize,
    mut pieces: Option<Pieces>,
) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::new(max_meta, max_wire);
    let mut body = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let end = pieces
            .as_mut()
            .map_or(wire.len(), |p| (at + p.next()).min(wire.len()));
        let fed = decoder.feed(&wire[at..end], &mut body)?;
        assert!(
            fed.consumed <= end - at,
            "consumed {} of {}",
            fed.consumed,
            end - at
        );
        at += fed.consumed;
        assert!(at <= max_wire, "{at} bytes on the wire, limit {max_wire}");
        assert!(
            body.len() <= at,
            "{} bytes of data from {at} on the wire",
            body.len()
        );
        if fed.done {
            return Ok((body, at, true));
        }
        assert_eq!(at, end, "input left unused before the body ended");
    }
    Ok((body, at, false))
}
