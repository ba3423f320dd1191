//! The WebSocket opening handshake (RFC 6455 §4.2) with Phoenix's
//! subprotocol rules.
//!
//! Phoenix checks an upgrade request in a fixed order — method, origin,
//! auth token, subprotocols, connect, upgrade headers — and the first failure
//! decides the status. The steps are separate functions so the shard can run
//! the connect policy between them, in that order.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::transport::http::Request;

/// Prefix of the subprotocol entry carrying the auth token.
pub const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";
/// The one subprotocol the server speaks.
pub const PHOENIX_PROTOCOL: &str = "phoenix";

/// Outcome of subprotocol negotiation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subprotocols {
    /// The protocol to echo in `Sec-WebSocket-Protocol`, if any.
    pub selected: Option<String>,
    /// The token decoded from the `base64url.bearer.phx.` entry.
    pub auth_token: Option<String>,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not a GET.
    #[error("websocket upgrade requires GET")]
    NotGet,
    /// An HTTP/1.0 request (RFC 6455 §4.1 requires HTTP/1.1 or later).
    #[error("websocket upgrade requires HTTP/1.1")]
    Http10,
    /// The auth-token entry is not valid base64 of UTF-8 text.
    #[error("auth token subprotocol is not valid base64")]
    BadAuthToken,
    /// More than one auth-token entry.
    #[error("more than one auth token subprotocol offered")]
    DuplicateAuthToken,
    /// An auth token was sent without offering `phoenix`.
    #[error("no supported subprotocol offered (expected \"phoenix\")")]
    NoSupportedProtocol,
    /// `Connection: Upgrade` / `Upgrade: websocket` missing.
    #[error("not a websocket upgrade: the connection header must include \"upgrade\" and upgrade must be \"websocket\"")]
    NotUpgrade,
    /// A WebSocket version other than 13.
    #[error("unsupported websocket version; version 13 required")]
    BadVersion,
    /// `Sec-WebSocket-Key` missing or not base64 of 16 bytes.
    #[error("missing or invalid sec-websocket-key")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::NoSupportedProtocol => 403,
            HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }

    /// Headers the refusal must carry: a `426` names the version the
    /// server speaks (RFC 6455 §4.4).
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            HandshakeError::BadVersion => &[("sec-websocket-version", "13")],
            _ => &[],
        }
    }
}

/// Finds the auth token among the offered subprotocols and picks the one to echo.
pub fn negotiate_subprotocols(req: &Request) -> Result<Subprotocols, HandshakeError> {
    let offered: Vec<&str> = req
        .headers
        .iter()
        .filter(|(name, _)| name == "sec-websocket-protocol")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut auth_token = None;
    let mut others = Vec::with_capacity(offered.len());
    for protocol in offered {
        match protocol.strip_prefix(AUTH_TOKEN_PREFIX) {
            Some(encoded) => {
                if auth_token.is_some() {
                    return Err(HandshakeError::DuplicateAuthToken);
                }
                auth_token = Some(decode_token(encoded)?);
            }
            None => others.push(protocol),
        }
    }
    let phoenix_offered = others.contains(&PHOENIX_PROTOCOL);
    if auth_token.is_some() && !phoenix_offered {
        // Phoenix adds `phoenix` to its supported list when a token is used
        // and then negotiates; nothing matching means 403.
        return Err(HandshakeError::NoSupportedProtocol);
    }
    Ok(Subprotocols {
        selected: phoenix_offered.then(|| PHOENIX_PROTOCOL.to_string()),
        auth_token,
    })
}

/// The JS client encodes with `btoa` (standard alphabet) and strips the
/// padding; accept the URL-safe alphabet too, and padding if present.
fn decode_token(encoded: &str) -> Result<String, HandshakeError> {
    let trimmed = encoded.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|_| HandshakeError::BadAuthToken)?;
    String::from_utf8(bytes).map_err(|_| HandshakeError::BadAuthToken)
}

/// Checks the upgrade headers; returns the `Sec-WebSocket-Accept` value.
pub fn validate_upgrade(req: &Request) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if req.minor_version == 0 {
        return Err(HandshakeError::Http10);
    }
    if !req.header_has_token("connection", "upgrade")
        || !req.header_has_token("upgrade", "websocket")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::BadVersion);
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::BadKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Appends the `101 Switching Protocols` response.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept_key: &str, subprotocol: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
    );
    out.extend_from_slice(b"sec-websocket-accept: ");
    out.extend_from_slice(accept_key.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(protocol) = subprotocol {
        out.extend_from_slice(b"sec-websocket-protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/socket/websocket".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            keep_alive: true,
            minor_version: 1,
        }
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            validate_upgrade(&request(&UPGRADE)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn bad_upgrade_headers() {
        assert_eq!(
            validate_upgrade(&request(&UPGRADE[1..])).unwrap_err(),
            HandshakeError::NotUpgrade
        );
        let mut h = UPGRADE.to_vec();
        h[2].1 = "8";
        assert_eq!(validate_upgrade(&request(&h)).unwrap_err().status(), 426);
        h[2].1 = "13";
        h[3].1 = "c2hvcnQ=";
        assert_eq!(
            validate_upgrade(&request(&h)).unwrap_err(),
            HandshakeError::BadKey
        );
        let mut post = request(&UPGRADE);
        post.method = "POST".into();
        assert_eq!(validate_upgrade(&post).unwrap_err().status(), 400);
    }

    #[test]
    fn auth_token_subprotocol() {
        let got = negotiate_subprotocols(&request(&[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu",
        )]))
        .unwrap();
        assert_eq!(got.selected.as_deref(), Some("phoenix"));
        assert_eq!(got.auth_token.as_deref(), Some("secret-token"));
        // URL-safe alphabet and padding are accepted: "??>" is Pz8- / Pz8+.
        for encoded in ["Pz8-", "Pz8+", "Pz8-=="] {
            let header = format!("phoenix, {AUTH_TOKEN_PREFIX}{encoded}");
            let got =
                negotiate_subprotocols(&request(&[("sec-websocket-protocol", &header)])).unwrap();
            assert_eq!(got.auth_token.as_deref(), Some("??>"));
        }
    }

    #[test]
    fn subprotocol_refusals_and_passes() {
        let bad = request(&[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.%%%",
        )]);
        assert_eq!(negotiate_subprotocols(&bad).unwrap_err().status(), 400);
        let two = request(&[(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.YQ, base64url.bearer.phx.Yg",
        )]);
        assert_eq!(
            negotiate_subprotocols(&two).unwrap_err(),
            HandshakeError::DuplicateAuthToken
        );
        let no_phoenix = request(&[("sec-websocket-protocol", "base64url.bearer.phx.YQ")]);
        assert_eq!(
            negotiate_subprotocols(&no_phoenix).unwrap_err().status(),
            403
        );
        let other = request(&[("sec-websocket-protocol", "mqtt")]);
        assert_eq!(
            negotiate_subprotocols(&other).unwrap(),
            Subprotocols::default()
        );
        assert_eq!(
            negotiate_subprotocols(&request(&[])).unwrap(),
            Subprotocols::default()
        );
    }

    #[test]
    fn switching_protocols_response() {
        let mut out = Vec::new();
        write_switching_protocols(&mut out, "abc=", Some("phoenix"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: abc=\r\nsec-websocket-protocol: phoenix\r\n\r\n"
        );
    }
}
