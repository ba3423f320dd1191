//! The lookups shared by the shard's two tables, [`Clients`] and
//! [`Connections`]: both wrap a `slab: Slab<_>` whose index is wrapped in a
//! key type of its own, so a client id can never look up a connection.
//!
//! [`Clients`]: super::clients::Clients
//! [`Connections`]: super::connection::Connections

/// Implements `get`, `get_mut`, `len`, `is_empty` and `iter` on `$table`,
/// a struct with a `slab: Slab<$entry>` field whose entries are addressed by
/// `$key`, a newtype over the slab index.
macro_rules! keyed_lookups {
    ($table:ty, $key:ident, $entry:ty) => {
        impl $table {
            /// The entry at `key`.
            #[inline]
            pub fn get(&self, key: $key) -> Option<&$entry> {
                self.slab.get(key.0)
            }

            /// The entry at `key`, mutably.
            #[inline]
            pub fn get_mut(&mut self, key: $key) -> Option<&mut $entry> {
                self.slab.get_mut(key.0)
            }

            /// Number of entries.
            pub fn len(&self) -> usize {
                self.slab.len()
            }

            /// Whether there are none.
            pub fn is_empty(&self) -> bool {
                self.slab.is_empty()
            }

            /// Every entry with its key.
            pub fn iter(&self) -> impl Iterator<Item = ($key, &$entry)> {
                self.slab.iter().map(|(index, entry)| ($key(index), entry))
            }
        }
    };
}

pub(super) use keyed_lookups;
