//! A minimal blocking HTTP/1.1 client for the soak's side traffic:
//! `GET /metrics`, the long-poll exchange and the abusive requests. Bodies
//! are framed by `Content-Length` (all Cinder answers are).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::client::resolve;

/// Where the server's HTTP endpoints are, found from its WebSocket URL.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// The socket's base path (`/socket` for `/socket/websocket`).
    pub socket_path: String,
}

impl Endpoints {
    /// From `ws://host:port/socket/websocket`.
    pub fn from_ws_url(url: &str) -> Result<Endpoints, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("`{url}`: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/socket/websocket"),
        };
        let path = path.split('?').next().unwrap_or(path);
        let socket_path = path
            .strip_suffix("/websocket")
            .ok_or_else(|| format!("`{url}`: the path must end in /websocket"))?;
        Ok(Endpoints {
            addr: resolve(authority)?,
            host: authority.to_string(),
            socket_path: socket_path.to_string(),
        })
    }

    /// `{socket}/longpoll`.
    pub fn longpoll_path(&self) -> String {
        format!("{}/longpoll", self.socket_path)
    }

    /// `{socket}/websocket`.
    pub fn websocket_path(&self) -> String {
        format!("{}/websocket", self.socket_path)
    }

    /// A new connection with read and write timeouts.
    pub fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    }
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
    /// Whether the server said it closes the connection.
    pub close: bool,
}

/// The head of a response: its length, status, body length and whether
/// the connection closes. `Ok(None)` while incomplete.
pub fn parse_head(input: &[u8]) -> Result<Option<(usize, u16, usize, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(input) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable HTTP response: {e}")),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let length = match header("content-length") {
        Some(text) => text
            .parse()
            .map_err(|_| format!("bad Content-Length {text:?}"))?,
        None => 0,
    };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some((head, response.code.unwrap_or(0), length, close)))
}

/// Writes a request. `body` is sent with a `Content-Length`.
pub fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)
}

/// Reads one response. `buf` keeps bytes between responses of one
/// keep-alive connection (start it empty).
pub fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Response> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((head, status, length, close)) =
            parse_head(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            while buf.len() < head + length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "response body cut short",
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[head..head + length].to_vec();
            buf.drain(..head + length);
            return Ok(Response {
                status,
                body,
                close,
            });
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One `GET` on a fresh connection.
pub fn get(endpoints: &Endpoints, path: &str, timeout: Duration) -> io::Result<Response> {
    let mut stream = endpoints.connect(timeout)?;
    write_request(&mut stream, "GET", path, &endpoints.host, &[], b"", false)?;
    read_response(&mut stream, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_websocket_url() {
        let e = Endpoints::from_ws_url("ws://127.0.0.1:4500/socket/websocket?x=1").unwrap();
        assert_eq!(e.host, "127.0.0.1:4500");
        assert_eq!(e.longpoll_path(), "/socket/longpoll");
        assert_eq!(e.websocket_path(), "/socket/websocket");
        assert!(Endpoints::from_ws_url("ws://127.0.0.1:1/socket").is_err());
        assert!(Endpoints::from_ws_url("http://127.0.0.1:1/socket/websocket").is_err());
    }

    #[test]
    fn responses_are_read_one_at_a_time_from_a_keep_alive_stream() {
        let wire = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhelloHTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let mut reader = &wire[..];
        let mut buf = Vec::new();
        let first = read_response(&mut reader, &mut buf).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice(), first.close),
            (200, &b"hello"[..], false)
        );
        let second = read_response(&mut reader, &mut buf).unwrap();
        assert_eq!((second.status, second.close), (431, true));
        assert!(second.body.is_empty());
        assert!(read_response(&mut reader, &mut buf).is_err());
        assert!(parse_head(b"\x16\x03\x01garbage\r\n\r\n").is_err());
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
    }

    #[test]
    fn requests_carry_length_and_connection() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", "/p", "h", &[("A", "b")], b"xy", false).unwrap();
        assert_eq!(
            out,
            b"POST /p HTTP/1.1\r\nHost: h\r\nA: b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy"
        );
    }
}
