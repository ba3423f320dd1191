//! Spreading connections over several servers (the nodes of a cluster):
//! which `--url` each connection uses.

/// Which URL each of `conns` connections uses, given `topics` topics
/// (connection `i` joins topic `i mod topics`) and one weight per URL.
///
/// Each topic's subscribers are dealt out separately, so every topic is
/// spread over the URLs in the same proportions: a connection's place
/// is decided by its slot in its topic (`i / topics`). With equal weights
/// that is plain round robin; otherwise a smooth weighted round robin, so
/// any run of `sum(weights)` consecutive slots holds exactly `weight`
/// connections of each URL. An empty `weights` means equal shares.
pub fn spread(conns: usize, topics: usize, urls: usize, weights: &[u32]) -> Vec<usize> {
    let urls = urls.max(1);
    let weights: Vec<i64> = if weights.is_empty() {
        vec![1; urls]
    } else {
        weights.iter().map(|&w| i64::from(w)).collect()
    };
    let total: i64 = weights.iter().sum();
    // The order of one cycle of `total` slots.
    let mut current = vec![0i64; weights.len()];
    let cycle: Vec<usize> = (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect();
    if cycle.is_empty() {
        return vec![0; conns];
    }
    (0..conns)
        .map(|i| cycle[(i / topics.max(1)) % cycle.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_watch_pid, Cli, Command, WatchPid};
    use clap::Parser;

    #[test]
    fn spreads_subscribers_round_robin_or_by_split() {
        // One URL: everything on it.
        assert_eq!(spread(5, 1, 1, &[]), vec![0; 5]);
        // Round robin over two.
        assert_eq!(spread(6, 1, 2, &[]), vec![0, 1, 0, 1, 0, 1]);
        // Every topic is spread, not one topic per URL: with 2 topics,
        // connections 0 and 1 (slot 0 of each topic) go to the first URL.
        let nodes = spread(8, 2, 2, &[]);
        assert_eq!(nodes, vec![0, 0, 1, 1, 0, 0, 1, 1]);
        for topic in 0..2 {
            let mine: Vec<usize> = (topic..8).step_by(2).map(|i| nodes[i]).collect();
            assert_eq!(mine, vec![0, 1, 0, 1]);
        }
        // A split of 1:3 gives exact shares, interleaved.
        let nodes = spread(400, 1, 2, &[1, 3]);
        assert_eq!(nodes.iter().filter(|&&n| n == 0).count(), 100);
        assert_eq!(&nodes[..4], &[1, 0, 1, 1]);
        // A zero weight gets nothing; all subscribers on the second URL.
        assert_eq!(spread(4, 1, 2, &[0, 1]), vec![1; 4]);
        // Three URLs, uneven count: shares differ by at most one.
        let nodes = spread(10, 1, 3, &[]);
        let counts: Vec<usize> = (0..3)
            .map(|u| nodes.iter().filter(|&&n| n == u).count())
            .collect();
        assert_eq!(counts, vec![4, 3, 3]);
    }

    #[test]
    fn urls_repeat_or_come_as_a_list_and_one_is_the_default() {
        let fanout = |extra: &[&str]| {
            let mut argv = vec!["cinder-load", "fanout"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Fanout(args) => args,
                _ => panic!("not a fanout"),
            }
        };
        assert_eq!(
            fanout(&[]).conn.urls,
            vec!["ws://127.0.0.1:4000/socket/websocket"]
        );
        let repeated = fanout(&["--url", "ws://a:1/s", "--url", "ws://b:2/s"]);
        let listed = fanout(&["--url", "ws://a:1/s,ws://b:2/s", "--split", "1,3"]);
        assert_eq!(repeated.conn.urls, listed.conn.urls);
        assert_eq!(listed.conn.split, vec![1, 3]);
        let watched = fanout(&["--watch-pid", "b=42", "--watch-pid", "redis=7"]);
        assert_eq!(
            watched.watch_pids[1],
            WatchPid {
                name: "redis".into(),
                pid: 7
            }
        );
        assert!(parse_watch_pid("42").is_err());
        assert!(parse_watch_pid("=42").is_err());
    }
}
