//! Fan-out: the whole path of a broadcast, from publish to every
//! subscriber's sink, in the order it happens.
//!
//! 1. [`broadcast`]: the publisher's [`Content`](broadcast::Content) is
//!    validated once; publishing stamps it into a
//!    [`Broadcast`](broadcast::Broadcast) with an id, an origin and a time.
//! 2. [`deliver`]: the [`Distributor`](deliver::Distributor) sends it to
//!    every other shard; each shard looks its topic up in its
//!    [`topics`] table and calls [`deliver::deliver`], which queues one
//!    shared frame per subscriber on the subscriber's sink.
//! 3. [`frame`]: the frames themselves, encoded at most once per
//!    [`FrameKind`](frame::FrameKind) for the whole process and shared by
//!    reference.
//!
//! Sinks (a WebSocket's outbox, a long-poll session's buffer) and the flush
//! of sockets belong to the shard; `docs/architecture.md` draws the path.

pub mod broadcast;
pub mod deliver;
pub mod frame;
pub mod topics;
