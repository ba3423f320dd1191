//! Fan-out: a broadcast is encoded once per wire format into a shared frame
//! ([`broadcast`]), and each shard's [`topics`] table says which of its
//! connections get a reference to it.

pub mod broadcast;
pub mod topics;
