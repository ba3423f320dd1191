//! The figures of a soak, minute by minute, and the checks made on them:
//! event counters and their per-minute deltas, one row per minute, and
//! whether a series stayed flat after the warm-up.
//!
//! Everything here is plain data and arithmetic, so it is unit-tested
//! without a server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::tracker::Tracker;

/// Declares the event counters every soak thread adds to, a plain reading
/// of them, and the difference of two readings (the events of a minute).
macro_rules! counters {
    ($($(#[doc = $doc:expr])* $name:ident,)*) => {
        /// Event counters shared by every soak thread (relaxed atomics: they
        /// are only read once a minute).
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A reading of [`Counters`], or the difference of two.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
        pub struct CounterValues {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter.
            pub fn read(&self) -> CounterValues {
                CounterValues {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl CounterValues {
            /// What happened between `earlier` and this reading.
            pub fn since(&self, earlier: &CounterValues) -> CounterValues {
                CounterValues {
                    $($name: self.$name.saturating_sub(earlier.$name),)*
                }
            }
        }
    };
}

counters! {
    /// Measured messages published to the healthy topics.
    published,
    /// Publish requests that failed (their messages are excused from loss).
    publish_errors,
    /// Messages published to the slow consumers' topic.
    slow_published,
    /// Healthy subscribers the server closed or that failed.
    healthy_dropped,
    /// Churning clients started.
    churn_started,
    /// Churning clients whose join succeeded.
    churn_joined,
    /// Churning clients whose leave was answered ok.
    churn_left,
    /// Churning clients whose close handshake completed.
    churn_closed,
    /// Churning clients that failed somewhere (connect, upgrade, join,
    /// leave, close); the reasons are in the report's `failures`.
    churn_failed,
    /// Slow consumers started.
    slow_started,
    /// Slow consumers that read the server's 1008 close.
    slow_closed_1008,
    /// Slow consumers whose connection the server ended without a close
    /// frame reaching them (it was dropped after the grace period).
    slow_closed_reset,
    /// Slow consumers the server closed with another code.
    slow_closed_other,
    /// Slow consumers still open when they gave up waiting to be closed.
    slow_not_closed,
    /// Slow consumers that never joined.
    slow_failed,
    /// Long-poll sessions opened (`410` + token).
    longpoll_sessions,
    /// Long-poll polls answered.
    longpoll_polls,
    /// Measured messages received over long-poll.
    longpoll_messages,
    /// Long-poll sessions the server ended (a poll answered `410`).
    longpoll_restarts,
    /// Sequence numbers missing inside a long-poll session's received range.
    longpoll_gaps,
    /// Long-poll requests that failed (I/O, unexpected answers).
    longpoll_errors,
    /// Abusive connections made.
    abuse_attempts,
    /// Abusive connections the server refused or closed, as it should.
    abuse_refused,
    /// Abusive connections the server let through (answered as valid, or
    /// left open past the deadline).
    abuse_not_refused,
    /// Longest a slowloris connection stayed open before the server closed
    /// it, in milliseconds (a maximum, not a count; its delta is meaningless).
    slowloris_max_ms,
}

/// One minute of a soak.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MinuteRow {
    /// Minute number, from 1.
    pub minute: u32,
    /// Server resident set size at the end of the minute.
    pub rss_bytes: Option<u64>,
    /// Smallest server RSS seen in the minute (read every second): the
    /// floor a leak would raise.
    pub rss_min_bytes: Option<u64>,
    /// Largest server RSS seen in the minute (read every second).
    pub rss_max_bytes: Option<u64>,
    /// Mean of the minute's RSS readings: the memory the minute held, which
    /// one reading cannot tell when buffers come and go within the minute.
    pub rss_mean_bytes: Option<u64>,
    /// Server open file descriptors at the end of the minute.
    pub fds: Option<u64>,
    /// Server CPU use over the minute, percent of one core.
    pub server_cpu_pct: Option<f64>,
    /// This load generator's CPU use over the minute, percent of one core.
    pub client_cpu_pct: f64,
    /// The machine's 1-minute load average at the end of the minute (the
    /// load generator, the server and anything else running).
    pub loadavg: Option<f64>,
    /// Open connections the server reports (`cinder_connections`, all shards).
    pub server_connections: Option<u64>,
    /// Joined channels the server reports (`cinder_channels`).
    pub server_channels: Option<u64>,
    /// Long-poll sessions the server reports (`cinder_longpoll_sessions`).
    pub server_longpoll_sessions: Option<u64>,
    /// Slow-consumer closes the server counted this minute.
    pub server_slow_consumer_closes: Option<u64>,
    /// Protocol-error closes the server counted this minute.
    pub server_protocol_closes: Option<u64>,
    /// Messages published to the healthy topics this minute.
    pub published: u64,
    /// Deliveries those messages owe the healthy subscribers.
    pub expected: u64,
    /// Distinct deliveries of this minute's messages to healthy subscribers.
    pub deliveries: u64,
    /// `deliveries` per second of the minute.
    pub deliveries_per_sec: f64,
    /// Send → receive latency of this minute's healthy deliveries, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// Owed deliveries of this minute's messages still missing when the
    /// minute was settled (`--settle` after its end).
    pub lost: u64,
    /// Duplicate deliveries to healthy subscribers that arrived this minute.
    pub duplicates: u64,
    /// Healthy subscribers still joined.
    pub healthy_joined: u64,
    /// Churning clients' join latency p99 this minute, µs.
    pub churn_join_p99_us: f64,
    /// Presence diffs received by the churning clients this minute.
    pub presence_diffs: u64,
    /// Every event counter's change over the minute.
    pub events: CounterValues,
}

/// How a series behaved after the warm-up.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Flatness {
    /// First minute judged (the one after the warm-up).
    pub from_minute: u32,
    /// Minutes judged.
    pub minutes: usize,
    /// Value in the first judged minute.
    pub first: f64,
    /// Smallest judged value.
    pub min: f64,
    /// Largest judged value.
    pub max: f64,
    /// Value in the last minute.
    pub last: f64,
    /// `(max - min) / min`, percent: the whole band the series moved in.
    pub spread_pct: f64,
    /// The least-squares line's change from the first judged minute to the
    /// last, percent of the mean: a slow leak shows here even when every
    /// step is small.
    pub trend_pct: f64,
    /// Whether `spread_pct` is within the tolerance.
    pub flat: bool,
}

/// Judges `points` (minute, value) after `warmup` minutes: flat when the
/// judged values span at most `tolerance_pct` percent of their minimum.
/// `None` when no minute is left after the warm-up.
pub fn flatness(points: &[(u32, f64)], warmup: u32, tolerance_pct: f64) -> Option<Flatness> {
    let judged: Vec<(f64, f64)> = points
        .iter()
        .filter(|(minute, value)| *minute > warmup && value.is_finite())
        .map(|&(minute, value)| (f64::from(minute), value))
        .collect();
    let (&(first_minute, first), &(_, last)) = (judged.first()?, judged.last()?);
    let min = judged.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let max = judged.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let spread_pct = if min > 0.0 {
        (max - min) / min * 100.0
    } else if max == min {
        0.0
    } else {
        f64::INFINITY
    };
    let n = judged.len() as f64;
    let mean_x = judged.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = judged.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = judged.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = judged.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let span = judged.last().map_or(0.0, |p| p.0) - first_minute;
    let trend_pct = if mean_y != 0.0 {
        slope * span / mean_y * 100.0
    } else {
        0.0
    };
    Some(Flatness {
        from_minute: first_minute as u32,
        minutes: judged.len(),
        first,
        min,
        max,
        last,
        spread_pct,
        trend_pct,
        flat: spread_pct <= tolerance_pct,
    })
}

/// Sums a Prometheus text exposition by metric name (over all label sets,
/// e.g. every shard). Comments and malformed lines are skipped.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).trim();
        if name.is_empty() {
            continue;
        }
        *sums.entry(name.to_string()).or_insert(0.0) += value;
    }
    sums
}

/// A gauge from parsed metrics.
pub fn gauge(metrics: Option<&BTreeMap<String, f64>>, name: &str) -> Option<u64> {
    metrics?.get(name).map(|v| v.max(0.0) as u64)
}

/// How much a counter grew between two parsed readings.
pub fn counter_delta(
    now: Option<&BTreeMap<String, f64>>,
    before: Option<&BTreeMap<String, f64>>,
    name: &str,
) -> Option<u64> {
    let (now, before) = (now?.get(name)?, before?.get(name)?);
    Some((now - before).max(0.0) as u64)
}

/// Server CPU use between two readings `elapsed_ns` apart, percent of one core.
pub fn cpu_pct(before_ns: Option<u64>, after_ns: Option<u64>, elapsed_ns: u64) -> Option<f64> {
    let (before, after) = (before_ns?, after_ns?);
    (elapsed_ns > 0).then(|| after.saturating_sub(before) as f64 / elapsed_ns as f64 * 100.0)
}

/// The column heads of the per-minute table.
pub fn table_header() -> String {
    format!(
        "{:>4} {:>8} {:>8} {:>10} {:>6} {:>6} {:>6} {:>5} {:>7} {:>12} {:>8} {:>8} {:>5} {:>5} {:>11} {:>9} {:>8} {:>9}",
        "min",
        "rss MiB",
        "mean",
        "min-max",
        "fds",
        "conns",
        "cpu %",
        "load",
        "msgs/s",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "dups",
        "churn ok/x",
        "slow cl/n",
        "lp msgs",
        "abuse r/n"
    )
}

impl MinuteRow {
    /// The row as one table line (`-` where the server was not read).
    pub fn line(&self) -> String {
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        let e = &self.events;
        let slow_closed = e.slow_closed_1008 + e.slow_closed_reset + e.slow_closed_other;
        format!(
            "{:>4} {:>8} {:>8} {:>10} {:>6} {:>6} {:>6} {:>5} {:>7.0} {:>12.0} {:>8.2} {:>8.2} {:>5} {:>5} {:>11} {:>9} {:>8} {:>9}",
            self.minute,
            or_dash(self.rss_bytes.map(|b| format!("{:.1}", mib(b)))),
            or_dash(self.rss_mean_bytes.map(|b| format!("{:.1}", mib(b)))),
            or_dash(
                self.rss_min_bytes
                    .zip(self.rss_max_bytes)
                    .map(|(lo, hi)| format!("{:.1}-{:.1}", mib(lo), mib(hi)))
            ),
            or_dash(self.fds.map(|f| f.to_string())),
            or_dash(self.server_connections.map(|c| c.to_string())),
            or_dash(self.server_cpu_pct.map(|c| format!("{c:.0}"))),
            or_dash(self.loadavg.map(|l| format!("{l:.2}"))),
            self.published as f64 / 60.0,
            self.deliveries_per_sec,
            self.p50_us / 1000.0,
            self.p99_us / 1000.0,
            self.lost,
            self.duplicates,
            format!("{}/{}", e.churn_closed, e.churn_failed),
            format!("{}/{}", slow_closed, e.slow_not_closed),
            e.longpoll_messages,
            format!("{}/{}", e.abuse_refused, e.abuse_not_refused),
        )
    }
}

/// The smallest and largest of a minute's readings.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Smallest reading.
    pub min: u64,
    /// Largest reading.
    pub max: u64,
    /// Readings taken.
    pub count: u64,
    /// Sum of the readings (for their mean).
    pub sum: u64,
}

impl Span {
    /// Takes in one reading.
    pub fn add(&mut self, value: u64) {
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        self.sum += value;
    }

    /// The mean of the readings, if there were any.
    pub fn mean(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum / self.count)
    }
}

/// What one subscriber was owed for the messages `start..end` of its topic
/// (sender 0) and what it got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// Messages owed: the range, less the uncertain ones that did not arrive.
    pub expected: u64,
    /// Distinct messages of the range that arrived.
    pub received: u64,
    /// Owed messages that did not arrive.
    pub lost: u64,
}

impl Owed {
    /// Adds another subscriber's (or range's) figures.
    pub fn add(&mut self, other: Owed) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
    }
}

/// Settles the range `start..end` of one subscriber's messages. Messages
/// of a failed publish request (`uncertain`, their sequence numbers) may or
/// may not have been broadcast: one that did not arrive is not lost, one
/// that did is counted as received — as `fanout` does.
pub fn settle_range(tracker: &Tracker, start: u64, end: u64, uncertain: &[u64]) -> Owed {
    let end = end.max(start);
    let received = tracker.distinct_below(0, end) - tracker.distinct_below(0, start);
    let excused = uncertain
        .iter()
        .filter(|&&seq| (start..end).contains(&seq) && !tracker.has(0, seq))
        .count() as u64;
    let missing = (end - start) - received;
    Owed {
        expected: (end - start) - excused,
        received,
        lost: missing - excused,
    }
}

/// The 1-minute load average from the text of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Mebibytes, for the table.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_deltas_are_per_minute() {
        let counters = Counters::default();
        counters.churn_started.fetch_add(10, Ordering::Relaxed);
        let first = counters.read();
        counters.churn_started.fetch_add(3, Ordering::Relaxed);
        counters.abuse_refused.fetch_add(2, Ordering::Relaxed);
        let delta = counters.read().since(&first);
        assert_eq!(delta.churn_started, 3);
        assert_eq!(delta.abuse_refused, 2);
        assert_eq!(delta.published, 0);
        // A reading taken out of order never underflows.
        assert_eq!(first.since(&counters.read()).churn_started, 0);
    }

    #[test]
    fn flat_series_pass_and_leaks_fail_after_the_warm_up() {
        // Warm-up growth, then flat within 5 %.
        let rss: Vec<(u32, f64)> = [10.0, 30.0, 50.0, 100.0, 102.0, 98.0, 103.0, 101.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32 + 1, v))
            .collect();
        let judged = flatness(&rss, 3, 10.0).unwrap();
        assert_eq!(judged.from_minute, 4);
        assert_eq!(judged.minutes, 5);
        assert_eq!(
            (judged.first, judged.min, judged.max, judged.last),
            (100.0, 98.0, 103.0, 101.0)
        );
        assert!((judged.spread_pct - 5.0 / 98.0 * 100.0).abs() < 1e-9);
        assert!(judged.flat);
        assert!(judged.trend_pct.abs() < 5.0);
        // The same series judged from minute 1 is not flat.
        assert!(!flatness(&rss, 0, 10.0).unwrap().flat);
        // A steady leak of 3 % a minute: each step is small, the band is not.
        let leak: Vec<(u32, f64)> = (1..=10)
            .map(|m| (m, 100.0 * 1.03f64.powi(m as i32)))
            .collect();
        let judged = flatness(&leak, 2, 10.0).unwrap();
        assert!(!judged.flat);
        assert!(judged.trend_pct > 15.0, "{judged:?}");
        // Nothing after the warm-up: no verdict.
        assert_eq!(flatness(&leak, 10, 10.0), None);
        assert_eq!(flatness(&[], 0, 10.0), None);
    }

    #[test]
    fn zero_series_are_flat_and_missing_values_are_skipped() {
        let zeros = [(1, 0.0), (2, 0.0), (3, f64::NAN), (4, 0.0)];
        let judged = flatness(&zeros, 0, 10.0).unwrap();
        assert_eq!(judged.minutes, 3);
        assert!(judged.flat);
        assert!(!flatness(&[(1, 0.0), (2, 1.0)], 0, 10.0).unwrap().flat);
    }

    #[test]
    fn prometheus_text_is_summed_over_shards() {
        let text = "# HELP cinder_connections Open connections.\n\
                    # TYPE cinder_connections gauge\n\
                    cinder_connections{shard=\"0\"} 1001\n\
                    cinder_connections{shard=\"1\"} 999\n\
                    cinder_slow_consumer_closes_total{shard=\"0\"} 2\n\
                    cinder_slow_consumer_closes_total{shard=\"1\"} 1\n\
                    plain_metric 7\n\
                    garbage line here\n";
        let metrics = parse_prometheus(text);
        assert_eq!(metrics.get("cinder_connections"), Some(&2000.0));
        assert_eq!(metrics.get("cinder_slow_consumer_closes_total"), Some(&3.0));
        assert_eq!(metrics.get("plain_metric"), Some(&7.0));
        assert_eq!(metrics.len(), 3);
        assert_eq!(gauge(Some(&metrics), "cinder_connections"), Some(2000));
        assert_eq!(gauge(None, "cinder_connections"), None);
        let mut later = metrics.clone();
        later.insert("cinder_slow_consumer_closes_total".into(), 8.0);
        assert_eq!(
            counter_delta(
                Some(&later),
                Some(&metrics),
                "cinder_slow_consumer_closes_total"
            ),
            Some(5)
        );
        assert_eq!(counter_delta(Some(&later), None, "plain_metric"), None);
    }

    #[test]
    fn ranges_are_settled_exactly_with_uncertain_messages_excused() {
        let mut tracker = Tracker::default();
        for seq in (0..200).filter(|s| ![5, 150, 151].contains(s)) {
            tracker.record(0, seq);
        }
        tracker.record(0, 7); // a duplicate changes nothing here
                              // Minute 1: 0..100 lost 5; minute 2: 100..200 lost 150 and 151.
        assert_eq!(
            settle_range(&tracker, 0, 100, &[]),
            Owed {
                expected: 100,
                received: 99,
                lost: 1
            }
        );
        assert_eq!(settle_range(&tracker, 100, 200, &[]).lost, 2);
        // 150 was in a failed request: excused; 160 too, but it arrived.
        assert_eq!(
            settle_range(&tracker, 100, 200, &[150, 160, 5]),
            Owed {
                expected: 99,
                received: 98,
                lost: 1
            }
        );
        // The whole run at once is the sum of its minutes.
        let mut total = Owed::default();
        total.add(settle_range(&tracker, 0, 100, &[]));
        total.add(settle_range(&tracker, 100, 200, &[]));
        assert_eq!(total, settle_range(&tracker, 0, 200, &[]));
        // Nothing published: nothing owed; a backwards range is empty.
        assert_eq!(settle_range(&tracker, 200, 200, &[]), Owed::default());
        assert_eq!(settle_range(&tracker, 50, 10, &[]), Owed::default());
    }

    #[test]
    fn a_row_is_one_aligned_line() {
        let row = MinuteRow {
            minute: 7,
            rss_bytes: Some(6 * 1024 * 1024 + 512 * 1024),
            rss_min_bytes: Some(6 * 1024 * 1024),
            rss_max_bytes: Some(8 * 1024 * 1024 + 300 * 1024),
            rss_mean_bytes: Some(7 * 1024 * 1024 + 200 * 1024),
            fds: Some(2107),
            server_connections: Some(2090),
            server_cpu_pct: Some(61.4),
            loadavg: Some(3.25),
            published: 45_600,
            deliveries_per_sec: 152_000.0,
            p50_us: 1_250.0,
            p99_us: 8_400.0,
            events: CounterValues {
                churn_closed: 2990,
                churn_failed: 1,
                slow_closed_1008: 1,
                slow_closed_reset: 1,
                abuse_refused: 4,
                longpoll_messages: 18_240,
                ..CounterValues::default()
            },
            ..MinuteRow::default()
        };
        let line = row.line();
        assert_eq!(
            line.len(),
            table_header().len(),
            "{line}\n{}",
            table_header()
        );
        for expected in [
            "6.5", "7.2", "6.0-8.3", "2107", "2090", "61", "3.25", "760", "152000", "1.25", "8.40",
            "2990/1", "2/0", "18240", "4/0",
        ] {
            assert!(line.contains(expected), "no {expected} in {line}");
        }
        let unread = MinuteRow {
            minute: 1,
            ..MinuteRow::default()
        }
        .line();
        assert!(unread.contains(" - "), "{unread}");
    }

    #[test]
    fn spans_keep_the_extremes() {
        let mut span = Span::default();
        for value in [7, 3, 9, 5] {
            span.add(value);
        }
        assert_eq!(
            span,
            Span {
                min: 3,
                max: 9,
                count: 4,
                sum: 24
            }
        );
        assert_eq!(span.mean(), Some(6));
        assert_eq!(Span::default().mean(), None);
        let mut one = Span::default();
        one.add(0);
        assert_eq!((one.min, one.max), (0, 0));
    }

    #[test]
    fn load_average_is_the_first_field() {
        assert_eq!(parse_loadavg("3.65 4.00 2.74 3/412 18757\n"), Some(3.65));
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(
            cpu_pct(Some(0), Some(30_000_000_000), 60_000_000_000),
            Some(50.0)
        );
        assert_eq!(cpu_pct(None, Some(1), 1), None);
        assert_eq!(cpu_pct(Some(1), Some(2), 0), None);
    }
}
