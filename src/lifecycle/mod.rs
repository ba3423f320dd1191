//! Lifecycle webhooks: the backend hears when channels and connections end.
//!
//! | file | what lives there |
//! | --- | --- |
//! | [`event`] | the events, their reasons and JSON form, unique ids |
//! | [`batch`] | batching and retry timing of deliveries (sans-IO) |
//! | [`delivery`] | the delivery thread: bounded queues per shard, batches, retries, signatures |
//! | [`order`] | the shards' queues read back in the order events were made |
//! | [`occupancy`] | what this node holds: topics with subscribers, presence keys with metas (sans-IO) |
//!
//! Shards produce events without blocking (`shard/lifecycle.rs`): each
//! pushes the event's JSON into its own bounded queue; one thread batches
//! them and `POST`s `{"events":[…]}` to `{webhook.url}/events`, retrying
//! with backoff (at least once, in the order the events were made). A slow or dead
//! backend costs the fan-out nothing: a full queue drops new events,
//! counted and logged once per episode.
//!
//! Topics filling and emptying and presence keys coming and going are
//! judged by each topic's owner shard for its node (`shard/occupancy.rs`);
//! with `[cluster]`, Redis judges them for the whole cluster
//! (`cluster/lifecycle.rs`), so each is reported once, by one node.

pub mod batch;
pub mod delivery;
pub mod event;
pub mod occupancy;
pub mod order;
