//! Delivery accounting for one receiving connection.
//!
//! Each message is identified by (sender slot, sequence number). A bit per
//! sequence number and sender records what arrived, so a second arrival is a
//! duplicate and a missing bit at the end is a lost message — exact, not
//! estimated.

/// Sequence numbers above this are not stored (counted as unexpected), so a
/// misbehaving server cannot make the tracker allocate without bound.
const MAX_TRACKED_SEQ: u64 = 1 << 30;

/// What arrived on one connection.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    senders: Vec<Vec<u64>>,
    /// Messages that arrived a second (or later) time.
    pub duplicates: u64,
    /// Messages whose sequence number is beyond anything trackable.
    pub out_of_range: u64,
}

impl Tracker {
    /// Records one arrival; returns `false` if it was a duplicate.
    pub fn record(&mut self, sender: u32, seq: u64) -> bool {
        if seq >= MAX_TRACKED_SEQ {
            self.out_of_range += 1;
            return true;
        }
        let sender = sender as usize;
        if self.senders.len() <= sender {
            self.senders.resize_with(sender + 1, Vec::new);
        }
        let bits = &mut self.senders[sender];
        let word = (seq / 64) as usize;
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (seq % 64);
        if bits[word] & mask != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= mask;
        true
    }

    /// Whether `seq` from `sender` arrived.
    pub fn has(&self, sender: u32, seq: u64) -> bool {
        self.senders
            .get(sender as usize)
            .and_then(|bits| bits.get((seq / 64) as usize))
            .is_some_and(|word| word & (1u64 << (seq % 64)) != 0)
    }

    /// How many distinct sequence numbers below `published` arrived from `sender`.
    pub fn distinct_below(&self, sender: u32, published: u64) -> u64 {
        let Some(bits) = self.senders.get(sender as usize) else {
            return 0;
        };
        let full_words = (published / 64) as usize;
        let mut count: u64 = bits
            .iter()
            .take(full_words)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = published % 64;
        if rest != 0 {
            if let Some(word) = bits.get(full_words) {
                count += u64::from((word & ((1u64 << rest) - 1)).count_ones());
            }
        }
        count
    }

    /// How many distinct messages arrived from `sender` in all.
    pub fn distinct(&self, sender: u32) -> u64 {
        self.senders.get(sender as usize).map_or(0, |bits| {
            bits.iter().map(|w| u64::from(w.count_ones())).sum()
        })
    }

    /// Compares against what was sent: `published[sender]` messages from
    /// each sender slot. Returns (lost, unexpected).
    pub fn settle(&self, published: &[u64]) -> (u64, u64) {
        let mut lost = 0;
        let mut unexpected = self.out_of_range;
        for (sender, &sent) in published.iter().enumerate() {
            let arrived = self.distinct_below(sender as u32, sent);
            lost += sent - arrived;
            unexpected += self.distinct(sender as u32) - arrived;
        }
        for sender in published.len()..self.senders.len() {
            unexpected += self.distinct(sender as u32);
        }
        (lost, unexpected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_lost_and_unexpected_exactly() {
        let mut tracker = Tracker::default();
        for seq in 0..100 {
            if seq != 17 && seq != 64 {
                assert!(tracker.record(0, seq));
            }
        }
        assert!(!tracker.record(0, 5));
        assert!(!tracker.record(0, 5));
        assert!(tracker.record(0, 150)); // never published
        assert!(tracker.record(2, 0)); // from a sender that does not exist
        assert_eq!(tracker.duplicates, 2);
        assert_eq!(tracker.settle(&[100]), (2, 2));
        assert_eq!(tracker.settle(&[100, 0, 1]), (2, 1));
    }

    #[test]
    fn huge_sequence_numbers_do_not_allocate() {
        let mut tracker = Tracker::default();
        tracker.record(0, u64::MAX);
        assert_eq!(tracker.settle(&[0]), (0, 1));
    }
}
