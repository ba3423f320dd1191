//! Latency over blocks of minutes after the warm-up.
//!
//! A minute's p99 moves with whatever else the machine does that minute
//! (the scheduler, other tenants); a server whose latency degrades over
//! time moves every block's p99. Judging p99 per block of
//! [`BLOCK_MINUTES`] tells that drift from the minute-to-minute jitter,
//! which the per-minute rows still show.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::worker::new_histogram;

/// Minutes per block.
pub const BLOCK_MINUTES: u32 = 5;

/// One block's latency.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Block {
    /// First minute of the block (from 1).
    pub from_minute: u32,
    /// Last minute of the block.
    pub to_minute: u32,
    /// Deliveries timed in it.
    pub samples: u64,
    /// Its p99, µs.
    pub p99_us: f64,
}

/// Collects the minutes' latency histograms into blocks.
pub struct LatencyBlocks {
    warmup: u32,
    current: Histogram<u64>,
    current_from: u32,
    done: Vec<Block>,
}

impl LatencyBlocks {
    /// Blocks starting after `warmup` minutes.
    pub fn new(warmup: u32) -> LatencyBlocks {
        LatencyBlocks {
            warmup,
            current: new_histogram(),
            current_from: warmup + 1,
            done: Vec::new(),
        }
    }

    /// Takes in minute `minute`'s (from 1) latency; minutes of the warm-up
    /// are left out. A block ends with its last minute.
    pub fn add_minute(&mut self, minute: u32, latency: &Histogram<u64>) {
        if minute <= self.warmup {
            return;
        }
        // Both histograms have the same bounds (`new_histogram`).
        let _ = self.current.add(latency);
        if minute + 1 - self.current_from == BLOCK_MINUTES {
            self.done.push(Block {
                from_minute: self.current_from,
                to_minute: minute,
                samples: self.current.len(),
                p99_us: self.current.value_at_quantile(0.99) as f64 / 1000.0,
            });
            self.current.reset();
            self.current_from = minute + 1;
        }
    }

    /// The whole blocks so far (a block still filling is left out).
    pub fn blocks(&self) -> &[Block] {
        &self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute_of(values_us: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for v in values_us {
            h.record(v * 1000).unwrap();
        }
        h
    }

    #[test]
    fn warm_up_minutes_are_left_out_and_blocks_are_whole() {
        let mut blocks = LatencyBlocks::new(2);
        // Warm-up minutes with huge latencies must not count.
        blocks.add_minute(1, &minute_of(&[1_000_000; 100]));
        blocks.add_minute(2, &minute_of(&[1_000_000; 100]));
        for minute in 3..=13 {
            blocks.add_minute(minute, &minute_of(&[100; 100]));
        }
        let done = blocks.blocks();
        assert_eq!(done.len(), 2, "minute 13 starts a third block");
        assert_eq!((done[0].from_minute, done[0].to_minute), (3, 7));
        assert_eq!((done[1].from_minute, done[1].to_minute), (8, 12));
        assert_eq!(done[0].samples, 500);
        assert!((done[0].p99_us - 100.0).abs() < 1.0, "{:?}", done[0]);
    }

    #[test]
    fn a_block_p99_is_over_all_its_deliveries() {
        let mut blocks = LatencyBlocks::new(0);
        // One slow minute of five: 100 slow samples out of 5,000 = 2 %,
        // so the block's p99 is a slow one.
        blocks.add_minute(1, &minute_of(&[50_000; 100]));
        for minute in 2..=5 {
            blocks.add_minute(minute, &minute_of(&[1_000; 1225]));
        }
        let block = &blocks.blocks()[0];
        assert_eq!(block.samples, 5_000);
        assert!(block.p99_us > 40_000.0, "{block:?}");
    }
}
