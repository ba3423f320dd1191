//! `cinder-load`: a load generator for any Phoenix Channels server.
//!
//! Map of the crate:
//! - [`app`]: runs a command line and decides the exit code.
//! - [`cli`]: the command line (one struct per scenario) and its value parsers.
//! - [`clock`]: the one monotonic clock every timestamp and latency comes from.
//! - [`wire`]: the client side of WebSocket: upgrade request, masked frames out,
//!   server frames in.
//! - [`phoenix`]: Phoenix message encoding (V1 objects, V2 arrays) and the
//!   little decoding a load client needs (replies, broadcasts).
//! - [`payload`]: the measured payload (sender, sequence, window, send time,
//!   padding) and its parser.
//! - [`tracker`]: per-connection delivery accounting: lost, duplicated and
//!   unexpected messages.
//! - [`spread`]: which server (`--url`) each connection uses, for clusters.
//! - [`client`]: one client connection as a small state machine.
//! - [`worker`]: one mio event loop thread owning many clients.
//! - [`publisher`]: the HTTP and WebSocket-push publishers of `fanout`.
//! - [`proc_stats`]: CPU time and RSS of another process, from `/proc`.
//! - [`report`]: the figures of a run, printed as a table and as JSON.
//! - [`outcome`]: exit codes; any lost message makes the process fail.
//! - [`mod@format`]: numbers for people (`3.5M`, `2.4 µs`), for charts.
//! - [`chart`]: the SVG charts of a `sweep` and of a `soak`.
//! - [`scenario`]: the subcommands (`fanout`, `chat`, `connect`, `idle`,
//!   `presence`, `recover`, `sweep`, `soak`, `ceiling`).
//!
//! Every latency is measured inside this one process with one monotonic
//! clock: the publisher stamps the send time into the payload, and the
//! receiving thread subtracts it from the time it read the frame. No clock is
//! ever compared across processes.

pub mod app;
pub mod chart;
pub mod cli;
pub mod client;
pub mod clock;
pub mod format;
pub mod outcome;
pub mod payload;
pub mod phoenix;
pub mod proc_stats;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod spread;
pub mod system;
pub mod tracker;
pub mod wire;
pub mod worker;
