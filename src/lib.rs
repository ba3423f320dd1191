//! Cinder: a sharded, thread-per-core push server that speaks the Phoenix
//! Channels protocol.
//!
//! # A map of the crate
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`server`] | binds the listeners, starts one thread per shard, stops them |
//! | [`shard`] | the event loop: a `mio::Poll`, a slab of connections, the flush |
//! | [`transport`] | HTTP parsing, the WebSocket handshake and frame codec, query strings |
//! | [`protocol`] | Phoenix messages (V1/V2 JSON, V2 binary) and the sans-IO channel state machine |
//! | [`fanout`] | broadcasts encoded once per wire format, and each shard's topic table |
//! | [`admission`] | who may open a client (both transports): one sans-IO decision |
//! | [`api`] | the HTTP publish API, health and metrics endpoints, as one table |
//! | [`routes`] | `[[channel]]` routes: topic patterns and their policies |
//! | [`connect`] | who may connect (the stand-in for Phoenix's `connect/3`) |
//! | [`auth`] | JSON Web Tokens: verification for the `jwt` connect policy, minting for `cinder token` |
//! | [`hooks`] | backend hooks: connect, join and client event decisions by HTTP, on a worker pool |
//! | [`lifecycle`] | lifecycle webhooks: leave and disconnect events, batched and delivered to the backend |
//! | [`limits`] | token buckets: client events per connection, accepts per shard |
//! | [`longpoll`] | the long-poll transport: session tokens, the HTTP exchange, buffered messages |
//! | [`history`] | topic history: positions, each topic's retained broadcasts, recovery on rejoin |
//! | [`cluster`] | several nodes over Redis: the bus thread, its envelope, membership and the presence ledger |
//! | [`phoenix_pubsub`] | a Phoenix app's Redis PubSub joined as a node: its Erlang terms read and written (sans I/O), the bridge thread |
//! | [`wire`] | the big-endian byte forms one Cinder process writes for another |
//! | [`presence`] | presence tracking, per-turn diffs and each shard's replica of the state |
//! | [`config`] | the TOML configuration, defaults and validation |
//! | [`memory`] | the allocator's thresholds, so memory a burst needed is given back |
//! | [`metrics`] | per-shard counters |
//! | [`fuzzing`] | the bodies of the `cargo fuzz` targets in `fuzz/`, replayed on stable by `tests/fuzz_replay.rs` |
//!
//! The path of a broadcast, from `POST /api/broadcast` or a client push to
//! every subscriber's socket on every shard, is drawn in
//! `docs/architecture.md`.

pub mod admission;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connect;
pub mod fanout;
pub mod fuzzing;
pub mod history;
pub mod hooks;
pub mod lifecycle;
pub mod limits;
pub mod longpoll;
pub mod memory;
pub mod metrics;
pub mod phoenix_pubsub;
pub mod presence;
pub mod protocol;
pub mod routes;
pub mod server;
pub mod shard;
pub mod transport;
pub mod wire;

pub use config::Config;
pub use server::{start, ServerHandle, StartError};
