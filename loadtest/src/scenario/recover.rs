//! `recover`: a reconnect storm of clients recovering the broadcasts they
//! missed on history topics.
//!
//! 1. C clients connect and join T history topics (`PREFIX:(i mod T)`)
//!    with a plain join; each keeps the `position` its ok reply carries.
//! 2. Every client closes its connection. M messages per topic are
//!    published through the HTTP API, each stamped with its per-topic
//!    sequence number, and accepted before anyone comes back.
//! 3. Every client reconnects and rejoins with `{"since": position}`, as
//!    fast as the server accepts them (on the next `--url` when there are
//!    several). Each must get an ok reply saying `recovered: true`, then
//!    exactly the M messages, in publish order, once each.
//!
//! Measured: recoveries per second (clients fully recovered ÷ from the
//! first reconnect to the last client's last message) and, per client,
//! `phx_join` sent → its M-th replayed message received. A client that
//! missed or duplicated a message (or got them out of order) fails the run
//! (exit status 3).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::cli::{RecoverArgs, WatchPid};
use crate::client::HistoryJoin;
use crate::clock;
use crate::outcome::{self, Loss};
use crate::payload::Stamp;
use crate::proc_stats;
use crate::publisher::{HttpPublisher, MessageShape, PublishError, Publisher};
use crate::report::{Latency, RecoverReport, Report, Totals, WatchedCpu};
use crate::scenario::{
    base_report, complete_report, server_sample, warn_about_server_pid, Session,
};
use crate::worker::{self, ClientOutcome};

/// Why a `recover` run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A setting that cannot work.
    #[error("{0}")]
    Settings(String),
    /// Connecting the clients failed before any could try.
    #[error("{0}")]
    Session(String),
    /// No client's first join was answered ok.
    #[error("no client joined: {0}")]
    NoneJoined(String),
    /// Joins succeeded but none carried a position: the topics have no
    /// history (or the server does not know it).
    #[error(
        "no join reply carried a `position`: is `{0}:*` a route with `history` on this server?"
    )]
    NoPosition(String),
    /// The publish API refused or failed a request.
    #[error("publishing failed after {accepted} of {total} messages: {source}")]
    Publish {
        /// Messages accepted before the failure.
        accepted: u64,
        /// Messages that were to be published.
        total: u64,
        /// What went wrong.
        source: PublishError,
    },
}

impl From<String> for RecoverError {
    fn from(message: String) -> RecoverError {
        RecoverError::Session(message)
    }
}

/// Runs the three phases and reports the storm.
pub fn run(args: &RecoverArgs) -> Result<Report, RecoverError> {
    check(args)?;
    let pid = args.output.server_pid;
    warn_about_server_pid(pid);
    let messages = args.messages;
    let urls = args.conn.urls.len();
    let publish_url = publish_url(&args.conn.urls, args.publish.as_deref())?;
    let mut publisher = Publisher::Http(
        HttpPublisher::new(&publish_url, args.api_key.clone()).map_err(RecoverError::Settings)?,
    );

    // 1. Join and keep the position.
    let rss_before = server_sample(pid);
    let first = Session::start_with(&args.conn, None, args.output.quiet, |spec| {
        spec.history = Some(HistoryJoin::default());
        true
    })?;
    first.phase("first join");
    first.wait_joined();
    let rss_joined = server_sample(pid);
    let topics = first.topics.clone();
    first.phase("leaving");
    let left = first.finish()?;
    let positions = positions(&left.clients);
    let first_joined = positions.iter().flatten().count() as u64;
    if left.connections.joined == 0 {
        return Err(RecoverError::NoneJoined(format!(
            "{:?}",
            left.connections.failures
        )));
    }
    if first_joined == 0 {
        return Err(RecoverError::NoPosition(args.conn.topic_prefix.clone()));
    }

    // 2. Publish while everyone is away.
    let shape = MessageShape {
        topics: topics.clone(),
        event: args.event.clone(),
        payload_bytes: args.payload_bytes,
    };
    let publish_started = clock::now_ns();
    let published = publish(&mut publisher, &shape, messages, args.batch)?;
    let publish_seconds = (clock::now_ns() - publish_started) as f64 / 1e9;
    std::thread::sleep(args.rejoin_after);

    // 3. Everyone comes back at once and asks for what it missed.
    let cpu_before = server_sample(pid).map(|s| s.cpu_ns);
    let watched_before = watched_cpu(&args.watch_pids);
    let storm_started = clock::now_ns();
    let storm = Session::start_with(&args.conn, None, args.output.quiet, |spec| {
        let Some((node, since)) = positions.get(spec.index).and_then(Option::as_ref) else {
            return false;
        };
        spec.node = rejoin_node(*node, urls);
        spec.history = Some(HistoryJoin {
            since: Some(since.clone()),
            replay: messages,
        });
        true
    })?;
    storm.phase("recovering");
    wait_recovered(&storm, first_joined, args);
    let server_cpu_ns =
        cpu_before.and_then(|before| Some(server_sample(pid)?.cpu_ns.saturating_sub(before)));
    let watched = args
        .watch_pids
        .iter()
        .zip(watched_before.iter().zip(watched_cpu(&args.watch_pids)))
        .map(|(w, (before, after))| WatchedCpu {
            name: w.name.clone(),
            pid: w.pid,
            cpu_ms: after
                .zip(*before)
                .map(|(a, b)| a.saturating_sub(b) as f64 / 1e6),
        })
        .collect();
    let rss_end = server_sample(pid);
    let collected = storm.finish()?;

    let tally = Tally::of(&collected.clients, messages);
    let storm_seconds = tally.last_completed_ns.saturating_sub(storm_started) as f64 / 1e9;
    let mut report = Report {
        publish: Some(publish_url),
        payload_bytes: args.payload_bytes,
        batch: args.batch,
        ..base_report("recover", &args.conn)
    };
    report.totals = Totals {
        published,
        expected: tally.rejoined * messages,
        received: tally.received,
        lost: tally.missing,
        duplicates: tally.duplicates,
        unexpected: tally.unexpected,
        push_errors: 0,
    };
    report.recover = Some(RecoverReport {
        messages_per_topic: messages,
        cross_node: urls > 1,
        first_joined,
        first_join_seconds: left.setup.seconds,
        published,
        publish_seconds,
        rejoining: first_joined,
        rejoined: tally.rejoined,
        recovered: tally.recovered,
        not_recovered: tally.not_recovered,
        clients_with_gaps: tally.clients_with_gaps,
        missing: tally.missing,
        clients_with_duplicates: tally.clients_with_duplicates,
        duplicates: tally.duplicates,
        out_of_order: tally.out_of_order,
        before_reply: tally.before_reply,
        without_position: tally.without_position,
        storm_seconds,
        recoveries_per_sec: if storm_seconds > 0.0 {
            tally.recovered as f64 / storm_seconds
        } else {
            0.0
        },
        latency: Latency::from_histogram(&tally.latency),
        reply_latency: Latency::from_histogram(&tally.reply_latency),
        server_cpu_ms: server_cpu_ns.map(|ns| ns as f64 / 1e6),
        server_cpu_per_recovery_us: server_cpu_ns
            .filter(|_| tally.recovered > 0)
            .map(|ns| ns as f64 / 1e3 / tally.recovered as f64),
        watched,
    });
    complete_report(
        &mut report,
        collected,
        pid,
        [rss_before, rss_joined, rss_end],
    );
    Ok(report)
}

/// The run as a loss when any client missed, duplicated or reordered a
/// message (the exit status is then [`outcome::EXIT_LOST`]).
pub fn losses(report: &Report) -> Vec<Loss> {
    let Some(r) = &report.recover else {
        return outcome::losses([(report.scenario.clone(), report)]);
    };
    let disorder = r.out_of_order + r.before_reply;
    if report.totals.lost == 0 && report.totals.duplicates == 0 && disorder == 0 {
        return Vec::new();
    }
    vec![Loss {
        run: report.scenario.clone(),
        lost: report.totals.lost,
        expected: report.totals.expected,
        duplicates: report.totals.duplicates,
        out_of_order: disorder,
    }]
}

fn check(args: &RecoverArgs) -> Result<(), RecoverError> {
    let bad = |m: &str| Err(RecoverError::Settings(m.into()));
    if args.messages == 0 {
        return bad("--messages must be at least 1");
    }
    if args.batch == 0 {
        return bad("--batch must be at least 1");
    }
    if args.conn.urls.is_empty() {
        return bad("--url is needed");
    }
    Ok(())
}

/// The publish API: `--publish`, or `/api/broadcast` on the first
/// `--url`'s host.
pub fn publish_url(urls: &[String], publish: Option<&str>) -> Result<String, RecoverError> {
    if let Some(url) = publish {
        return Ok(url.to_string());
    }
    let first = urls
        .first()
        .ok_or_else(|| RecoverError::Settings("--url is needed".into()))?;
    let rest = first.strip_prefix("ws://").ok_or_else(|| {
        RecoverError::Settings(format!("`{first}`: only ws:// URLs are supported"))
    })?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    Ok(format!("http://{authority}/api/broadcast"))
}

/// The `--url` a client whose first join was on `node` rejoins on: the
/// next one, round robin (the same one when there is only one).
pub fn rejoin_node(node: usize, urls: usize) -> usize {
    (node + 1) % urls.max(1)
}

/// Each first-join client's node and position, by client index; `None`
/// for a client that did not join or was given no position.
fn positions(clients: &[ClientOutcome]) -> Vec<Option<(usize, Arc<str>)>> {
    let len = clients.iter().map(|c| c.index + 1).max().unwrap_or(0);
    let mut positions = vec![None; len];
    for client in clients {
        let position = client
            .replay
            .as_ref()
            .filter(|log| log.replied_ns > 0)
            .and_then(|log| log.answer.as_ref()?.position.as_deref());
        if let Some(position) = position {
            positions[client.index] = Some((client.node, Arc::from(position)));
        }
    }
    positions
}

/// The order messages are published in: sequence 0 of every topic, then
/// 1, …, cut into requests of `batch`. Each topic's messages go out in
/// sequence order, which is the order its clients must get them in.
pub fn publish_order(topics: usize, messages: u64, batch: usize) -> Vec<Vec<(usize, u64)>> {
    let all: Vec<(usize, u64)> = (0..messages)
        .flat_map(|seq| (0..topics).map(move |topic| (topic, seq)))
        .collect();
    all.chunks(batch.max(1)).map(<[_]>::to_vec).collect()
}

/// Publishes `messages` per topic; returns how many were accepted (all of
/// them, or the error).
fn publish(
    publisher: &mut Publisher,
    shape: &MessageShape,
    messages: u64,
    batch: usize,
) -> Result<u64, RecoverError> {
    let total = messages * shape.topics.len() as u64;
    let mut accepted = 0;
    let mut request = Vec::with_capacity(batch);
    for chunk in publish_order(shape.topics.len(), messages, batch) {
        request.clear();
        let sent_ns = clock::now_ns();
        request.extend(chunk.iter().map(|&(topic, seq)| {
            (
                topic,
                Stamp {
                    sender: 0,
                    seq,
                    window: 0,
                    sent_ns,
                },
            )
        }));
        publisher
            .send(shape, &request)
            .map_err(|source| RecoverError::Publish {
                accepted,
                total,
                source,
            })?;
        accepted += chunk.len() as u64;
    }
    Ok(accepted)
}

/// Waits until every client recovered or failed to join; or, once all
/// have joined or failed, until nothing arrived for `--settle`; or until
/// `--recover-timeout`.
fn wait_recovered(session: &Session, clients: u64, args: &RecoverArgs) {
    let shared = &session.shared;
    let started = clock::now_ns();
    let deadline = started + args.recover_timeout.as_nanos() as u64;
    let settle = args.settle.as_nanos() as u64;
    let mut last = None;
    let mut last_change = started;
    loop {
        let now = clock::now_ns();
        let done = shared.replays_done.load(Ordering::Relaxed);
        let joined = shared.joined.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let received = shared.received.load(Ordering::Relaxed);
        if done + failed >= clients || now >= deadline {
            return;
        }
        let state = Some((joined, failed, received, done));
        if state != last {
            last = state;
            last_change = now;
        } else if joined + failed >= clients && now - last_change > settle {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU time of each watched process now; `None` for one that cannot be read.
fn watched_cpu(watch: &[WatchPid]) -> Vec<Option<u64>> {
    watch
        .iter()
        .map(|w| proc_stats::sample(w.pid).ok().map(|s| s.cpu_ns))
        .collect()
}

/// What the rejoined clients got, added up.
#[derive(Debug)]
struct Tally {
    rejoined: u64,
    recovered: u64,
    not_recovered: u64,
    clients_with_gaps: u64,
    missing: u64,
    clients_with_duplicates: u64,
    duplicates: u64,
    out_of_order: u64,
    before_reply: u64,
    without_position: u64,
    unexpected: u64,
    received: u64,
    last_completed_ns: u64,
    latency: Histogram<u64>,
    reply_latency: Histogram<u64>,
}

impl Tally {
    /// Adds up `clients`, each owed `messages` replayed messages. Clients
    /// whose rejoin was never answered ok are not charged (they are the
    /// connections' failures).
    fn of(clients: &[ClientOutcome], messages: u64) -> Tally {
        let mut t = Tally {
            rejoined: 0,
            recovered: 0,
            not_recovered: 0,
            clients_with_gaps: 0,
            missing: 0,
            clients_with_duplicates: 0,
            duplicates: 0,
            out_of_order: 0,
            before_reply: 0,
            without_position: 0,
            unexpected: 0,
            received: 0,
            last_completed_ns: 0,
            latency: worker::new_histogram(),
            reply_latency: worker::new_histogram(),
        };
        for client in clients {
            let Some(log) = client.replay.as_ref().filter(|log| log.replied_ns > 0) else {
                continue;
            };
            t.rejoined += 1;
            let _ = t
                .reply_latency
                .record(log.replied_ns.saturating_sub(log.join_sent_ns).max(1));
            let recovered_true = log.answer.as_ref().and_then(|a| a.recovered) == Some(true);
            if !recovered_true {
                t.not_recovered += 1;
            }
            let (lost, unexpected) = client.tracker.settle(&[messages]);
            t.missing += lost;
            t.clients_with_gaps += u64::from(lost > 0);
            t.unexpected += unexpected;
            let duplicates = client.tracker.duplicates;
            t.duplicates += duplicates;
            t.clients_with_duplicates += u64::from(duplicates > 0);
            t.out_of_order += log.out_of_order;
            t.before_reply += log.before_reply;
            t.without_position += log.without_position;
            t.received += log.distinct;
            if log.completed_ns > 0 {
                t.last_completed_ns = t.last_completed_ns.max(log.completed_ns);
                let _ = t
                    .latency
                    .record(log.completed_ns.saturating_sub(log.join_sent_ns).max(1));
            }
            if log.clean(messages) && duplicates == 0 && unexpected == 0 {
                t.recovered += 1;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ReplayLog;
    use crate::phoenix::JoinAnswer;
    use crate::tracker::Tracker;

    /// A rejoined client that got `seqs` (in that order) after a reply
    /// saying `recovered`.
    fn client(index: usize, recovered: bool, seqs: &[u64], messages: u64) -> ClientOutcome {
        let mut log = ReplayLog {
            answer: Some(JoinAnswer {
                recovered: Some(recovered),
                position: Some("n1:5".into()),
            }),
            join_sent_ns: 1_000,
            replied_ns: 2_000,
            ..ReplayLog::default()
        };
        let mut tracker = Tracker::default();
        for (i, &seq) in seqs.iter().enumerate() {
            if tracker.record(0, seq) {
                log.arrived(seq, messages, true, 3_000 + i as u64 * 1_000);
            }
        }
        ClientOutcome {
            index,
            topic: 0,
            slot: 0,
            joined: true,
            joined_ns: 2_000,
            tracker,
            pushes_sent: 0,
            pushes_acked: 0,
            push_errors: 0,
            node: 0,
            replay: Some(log),
        }
    }

    #[test]
    fn a_clean_replay_counts_as_recovered_and_is_timed_to_its_last_message() {
        let t = Tally::of(&[client(0, true, &[0, 1, 2, 3], 4)], 4);
        assert_eq!((t.rejoined, t.recovered, t.not_recovered), (1, 1, 0));
        assert_eq!((t.missing, t.duplicates, t.out_of_order), (0, 0, 0));
        assert_eq!(t.received, 4);
        // The 4th message came at 6 µs; the join went at 1 µs.
        assert_eq!(t.last_completed_ns, 6_000);
        assert_eq!(t.latency.len(), 1);
        assert!((t.latency.max() as i64 - 5_000).abs() < 10);
    }

    #[test]
    fn gaps_duplicates_disorder_and_refusals_are_each_counted() {
        let clients = [
            client(0, true, &[0, 1, 3], 4),       // 2 missing
            client(1, true, &[0, 1, 1, 2, 3], 4), // 1 duplicate
            client(2, true, &[0, 2, 1, 3], 4),    // out of order
            client(3, false, &[], 4),             // not recovered
            client(4, true, &[0, 1, 2, 3, 4], 4), // one nobody published
        ];
        let t = Tally::of(&clients, 4);
        assert_eq!(t.rejoined, 5);
        assert_eq!(t.recovered, 0);
        assert_eq!(t.not_recovered, 1);
        assert_eq!((t.clients_with_gaps, t.missing), (2, 1 + 4));
        assert_eq!((t.clients_with_duplicates, t.duplicates), (1, 1));
        // 3 after 1 (client 0); 2 then 1 (client 2).
        assert_eq!(t.out_of_order, 1 + 2);
        assert_eq!(t.unexpected, 1);
        // Clients 1, 2 and 4 got all four.
        assert_eq!(t.latency.len(), 3);
    }

    #[test]
    fn clients_never_answered_are_not_charged() {
        let mut never = client(0, true, &[], 4);
        never.replay.as_mut().unwrap().replied_ns = 0;
        let mut plain = client(1, true, &[], 4);
        plain.replay = None;
        let t = Tally::of(&[never, plain], 4);
        assert_eq!((t.rejoined, t.missing), (0, 0));
    }

    #[test]
    fn arrivals_before_the_reply_break_the_order() {
        let mut log = ReplayLog::default();
        assert!(!log.arrived(0, 2, false, 10));
        assert!(log.arrived(1, 2, true, 20));
        assert_eq!((log.before_reply, log.completed_ns), (1, 20));
        log.answer = Some(JoinAnswer {
            recovered: Some(true),
            position: None,
        });
        assert!(!log.clean(2));
    }

    #[test]
    fn each_topic_is_published_in_sequence_order_in_bounded_requests() {
        let order = publish_order(3, 4, 5);
        assert_eq!(order.len(), 3);
        assert!(order.iter().all(|r| r.len() <= 5));
        let flat: Vec<(usize, u64)> = order.into_iter().flatten().collect();
        assert_eq!(flat.len(), 12);
        for topic in 0..3 {
            let seqs: Vec<u64> = flat
                .iter()
                .filter(|(t, _)| *t == topic)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(seqs, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn clients_rejoin_on_the_next_url() {
        assert_eq!(rejoin_node(0, 1), 0);
        assert_eq!(rejoin_node(0, 2), 1);
        assert_eq!(rejoin_node(1, 2), 0);
        assert_eq!(rejoin_node(2, 3), 0);
    }

    #[test]
    fn the_publish_api_defaults_to_the_first_urls_host() {
        let urls = vec![
            "ws://127.0.0.1:4100/socket/websocket".to_string(),
            "ws://127.0.0.1:4200/socket/websocket".to_string(),
        ];
        assert_eq!(
            publish_url(&urls, None).unwrap(),
            "http://127.0.0.1:4100/api/broadcast"
        );
        assert_eq!(
            publish_url(&urls, Some("http://x:1/api/broadcast")).unwrap(),
            "http://x:1/api/broadcast"
        );
        assert!(publish_url(&["http://a".to_string()], None).is_err());
    }

    #[test]
    fn losses_name_missing_duplicated_and_disordered_messages() {
        let mut report = Report {
            scenario: "recover".into(),
            recover: Some(RecoverReport::default()),
            ..Report::default()
        };
        report.totals.expected = 1000;
        assert!(losses(&report).is_empty());
        report.totals.duplicates = 3;
        let found = losses(&report);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].duplicates, 3);
        assert_eq!(outcome::exit_code(&found), outcome::EXIT_LOST);
        report.totals.duplicates = 0;
        report.recover.as_mut().unwrap().before_reply = 1;
        assert_eq!(losses(&report)[0].out_of_order, 1);
    }
}
