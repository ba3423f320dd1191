//! Topic history: the last broadcasts of `history` routes' topics, so a
//! client that rejoins with the position it last saw gets what it missed.
//!
//! | file | what lives there |
//! | --- | --- |
//! | [`position`] | positions (`"<epoch>:<offset>"`) and epochs, the lives of a stream |
//! | [`log`] | one topic's retained broadcasts and the answer to "what came after this position?" |
//! | [`store`] | the logs a shard owns, under the memory limit |
//!
//! Everything here is sans-IO and single-threaded. The shard component
//! (`shard/history.rs`) routes each history topic's publishes through the
//! topic's owner shard ([`owner_shard`]), which gives them their offsets in
//! one place, and answers the joins that ask to recover. With `[cluster]`
//! the offsets come from Redis instead and each node's owner shard keeps a
//! mirror of the stream; `docs/recovery.md` has the guarantee.

pub mod log;
pub mod position;
pub mod store;

use std::hash::{Hash, Hasher};

use crate::config::config_section;

pub use log::{Recovery, RecoveryFailure, Retention, TopicLog};
pub use position::{Epoch, Position};
pub use store::HistoryStore;

config_section! {
    /// `[history]`: limits shared by every route with `history`.
    pub struct HistoryConfig {
        /// Memory all topics' histories may hold together, in bytes (an
        /// estimate: payloads and their encoded frames). Past it the least
        /// recently used topics' histories are dropped.
        pub memory_limit: usize = 64 * 1024 * 1024,
        /// Most broadcasts one `GET /api/history` returns.
        pub api_max_limit: usize = 1000,
    }
}

impl HistoryConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.memory_limit < 64 * 1024 {
            return Err(("history.memory_limit", "must be at least 65536".into()));
        }
        if self.api_max_limit == 0 {
            return Err(("history.api_max_limit", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The shard that sequences `topic`'s broadcasts and holds its history,
/// of `shards` shards. Stable for the life of the process.
pub fn owner_shard(topic: &str, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_stay_put() {
        let owners: Vec<usize> = (0..64)
            .map(|i| owner_shard(&format!("room:{i}"), 4))
            .collect();
        for shard in 0..4 {
            assert!(owners.contains(&shard), "shard {shard} owns nothing");
        }
        assert_eq!(owner_shard("room:1", 4), owner_shard("room:1", 4));
        assert_eq!(owner_shard("room:1", 1), 0);
    }

    #[test]
    fn the_config_refuses_a_useless_limit() {
        assert!(HistoryConfig::default().validate().is_ok());
        let tiny = HistoryConfig {
            memory_limit: 10,
            ..HistoryConfig::default()
        };
        assert!(tiny.validate().is_err());
    }
}
