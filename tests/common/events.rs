//! What a lifecycle events backend received, for the events tests.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::backend::Call;
use super::{Client, WAIT};

/// A backend answering events with 200 (and anything else with 404).
pub fn ok(path: &str, _: &Value) -> (u16, String, Duration) {
    match path {
        "/hooks/events" => (200, "{}".into(), Duration::ZERO),
        _ => (404, "{}".into(), Duration::ZERO),
    }
}

/// The next `count` events the backend received (in delivery order),
/// waiting at most `wait`.
pub fn events_within(calls: &Receiver<Call>, count: usize, wait: Duration) -> Vec<Value> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, body, _) = calls
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {} of {count} events: {got:?}", got.len()));
        assert_eq!(path, "/hooks/events");
        got.extend(body["events"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(got.len(), count, "more events than expected: {got:?}");
    got
}

/// The next `count` events, within the tests' usual wait.
pub fn events(calls: &Receiver<Call>, count: usize) -> Vec<Value> {
    events_within(calls, count, WAIT)
}

/// What an event says, without its id and time.
pub fn shape(event: &Value) -> Value {
    let mut event = event.clone();
    let object = event.as_object_mut().unwrap();
    assert!(object.remove("id").unwrap().is_string());
    assert!(object.remove("time_ms").unwrap().as_u64().unwrap() > 1_700_000_000_000);
    event
}

/// The events' types and what they are about (key, else topic), sorted:
/// events from different shards or nodes may arrive in either order.
pub fn kinds(events: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let about = e["key"].as_str().or(e["topic"].as_str()).unwrap_or("");
            format!("{} {about}", e["type"].as_str().unwrap())
        })
        .collect();
    kinds.sort();
    kinds
}

/// Nothing more arrives for `wait`.
pub fn quiet_for(calls: &Receiver<Call>, wait: Duration) {
    if let Ok((_, body, _)) = calls.recv_timeout(wait) {
        panic!("an event nobody expected: {body}");
    }
}

/// Nothing more arrives for 400 ms.
pub fn quiet(calls: &Receiver<Call>) {
    quiet_for(calls, Duration::from_millis(400));
}

/// Joins `topic` as presence key `name` (the route's `presence_key` is
/// `name`), with meta `{"tab": r}`, and waits for the `ok`.
pub fn join_as(client: &mut Client, topic: &str, name: &str, r: &str) {
    client.send(&format!(
        r#"["{r}","{r}","{topic}","phx_join",{{"name":"{name}","meta":{{"tab":"{r}"}}}}]"#
    ));
    loop {
        let message = client.recv_json();
        if message[3] == "phx_reply" {
            assert_eq!(message[4]["status"], "ok", "{message}");
            return;
        }
    }
}
