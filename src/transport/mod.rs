//! Everything between the socket and the Phoenix protocol.
//!
//! | file | what lives there |
//! | --- | --- |
//! | [`chunked`] | chunked request bodies, decoded incrementally within limits |
//! | [`http`] | HTTP/1.1 request parsing (`httparse`) and responses |
//! | [`query`] | query strings decoded as Phoenix (Plug) does |
//! | [`handshake`] | the WebSocket upgrade: subprotocols, auth token, accept key |
//! | [`frame`] | the WebSocket frame codec: decoding client frames, writing server frames |
//! | [`origin`] | the `Origin` check of connect requests |
//! | [`stream`] | the byte stream under a connection (plain TCP; room for TLS) |

pub mod chunked;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod origin;
pub mod query;
pub mod stream;
