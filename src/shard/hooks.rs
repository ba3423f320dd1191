//! The shard's side of backend hooks: asking (on the worker pool) and
//! acting on the answer when it comes back through the shard's queue.
//!
//! The connection may be gone, or its slab key reused, by the time an answer
//! arrives: every ask carries the connection's serial number, and answers for
//! another serial are dropped.

use base64::Engine as _;
use serde_json::Value;

use super::connection::{PendingTransport, Phase};
use super::inbox::ShardMessage;
use super::longpoll::is_session;
use super::Shard;
use crate::connect::{ConnectPolicy, Identity};
use crate::fanout::broadcast::Broadcast;
use crate::fanout::topics::LONGPOLL_TAG;
use crate::hooks::{failure_reason, HookOutcome, HookRequest};
use crate::protocol::channels::{hook_reply, Action, HookAsk, HookVerdict};
use crate::protocol::message::Payload;

/// What a hook was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `POST {url}/join`.
    Join,
    /// `POST {url}/event`.
    Event,
}

/// A backend answer on its way back to the shard that asked.
#[derive(Debug)]
pub struct HookDone {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial number (guards against key reuse).
    pub serial: u64,
    /// Join or event.
    pub kind: HookKind,
    /// The question, with what is needed to answer the client.
    pub ask: HookAsk,
    /// The backend's answer.
    pub outcome: HookOutcome,
}

/// The backend's connect decision on its way back.
#[derive(Debug)]
pub struct ConnectDone {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial number.
    pub serial: u64,
    /// The backend's answer.
    pub outcome: HookOutcome,
}

impl Shard {
    /// Asks the backend whether a parked upgrade may proceed.
    pub(super) fn ask_connect(&mut self, key: usize, body: Vec<u8>) {
        let Some(serial) = self.connections.get(key).map(|c| c.serial) else {
            return;
        };
        let Some(pool) = self.hooks.clone() else {
            return self.refuse_upgrade(key, 503, "backend unavailable");
        };
        let inbox = self.peers[self.id].clone();
        pool.submit(
            HookRequest {
                path: "connect",
                body,
                idempotent: true,
            },
            Box::new(move |outcome| {
                inbox.send(ShardMessage::ConnectDone(Box::new(ConnectDone {
                    key,
                    serial,
                    outcome,
                })));
            }),
        );
    }

    /// Finishes or refuses a parked upgrade. 2xx admits (the body may name
    /// `user_id` and `channels`); 401/403 refuse with 403 and the body's
    /// `reason`; anything else, or no answer, refuses with 503 so the
    /// client retries later.
    pub(super) fn on_connect_done(&mut self, done: ConnectDone) {
        let Some(conn) = self.connections.get_mut(done.key) else {
            return;
        };
        if conn.serial != done.serial || !matches!(conn.phase, Phase::Authorizing(_)) {
            return;
        }
        let Phase::Authorizing(pending) = std::mem::replace(&mut conn.phase, Phase::Http) else {
            return;
        };
        let ConnectPolicy::Webhook(policy) = &self.config.connect else {
            return self.refuse_upgrade(done.key, 503, "backend unavailable");
        };
        let admitted = match &done.outcome {
            HookOutcome::Response { status, body } if (200..300).contains(status) => {
                Ok(policy.identity_from(body))
            }
            HookOutcome::Response {
                status: 401 | 403,
                body,
            } => Err((403, refusal_reason(body))),
            HookOutcome::Response { .. } => Err((503, "backend error".to_string())),
            HookOutcome::Failed(failure) => Err((503, failure_reason(failure).to_string())),
        };
        match (pending.transport, admitted) {
            (PendingTransport::LongPoll { keep_alive }, admitted) => {
                self.finish_session_connect(done.key, pending.serializer, keep_alive, admitted)
            }
            (
                PendingTransport::WebSocket {
                    accept_key,
                    subprotocol,
                },
                Ok(identity),
            ) => self.complete_upgrade(
                done.key,
                pending.serializer,
                &accept_key,
                subprotocol.as_deref(),
                identity,
            ),
            (PendingTransport::WebSocket { .. }, Err((status, reason))) => {
                self.refuse_upgrade(done.key, status, &reason)
            }
        }
    }

    /// Sends `ask` to the backend; the answer comes back as
    /// [`ShardMessage::HookDone`].
    pub(super) fn ask_hook(&mut self, key: usize, kind: HookKind, ask: HookAsk) {
        let Some(serial) = self.client_serial(key) else {
            return;
        };
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let identity = client.identity().clone();
        if is_session(key) {
            // A POST line waiting for this answer is held until it comes.
            if let Some(session) = self.sessions.get_mut(key & !LONGPOLL_TAG) {
                session.pending_asks += 1;
            }
        }
        let body = hook_body(kind, &ask, &identity);
        let inbox = self.peers[self.id].clone();
        let Some(pool) = self.hooks.clone() else {
            // Config validation makes webhook routes require a pool.
            let outcome = HookOutcome::Failed(crate::hooks::HookFailure::Unreachable(
                "no webhook.url".into(),
            ));
            return self.on_hook_done(HookDone {
                key,
                serial,
                kind,
                ask,
                outcome,
            });
        };
        let request = HookRequest {
            path: match kind {
                HookKind::Join => "join",
                HookKind::Event => "event",
            },
            body,
            // A join decision can be asked twice; an event may have effects.
            idempotent: kind == HookKind::Join,
        };
        pool.submit(
            request,
            Box::new(move |outcome| {
                inbox.send(ShardMessage::HookDone(Box::new(HookDone {
                    key,
                    serial,
                    kind,
                    ask,
                    outcome,
                })));
            }),
        );
    }

    /// Acts on a backend answer.
    pub(super) fn on_hook_done(&mut self, done: HookDone) {
        if self.client_serial(done.key) != Some(done.serial) {
            return;
        }
        let session_key = is_session(done.key).then_some(done.key & !LONGPOLL_TAG);
        if let Some(session) = session_key.and_then(|k| self.sessions.get_mut(k)) {
            session.pending_asks = session.pending_asks.saturating_sub(1);
        }
        let mut actions = std::mem::take(&mut self.actions);
        let Some(session) = self.client_mut(done.key) else {
            self.actions = actions;
            return;
        };
        let (verdict, broadcast) = verdict_of(done.kind, &done.outcome);
        match done.kind {
            HookKind::Join => session
                .channels
                .finish_join(&done.ask, &verdict, &mut actions),
            HookKind::Event => {
                if let Some((event, payload)) = broadcast {
                    let event = event.unwrap_or_else(|| done.ask.event.clone());
                    match Broadcast::new(done.ask.topic.clone(), event, payload, None) {
                        Ok(broadcast) => actions.push(Action::Publish(broadcast)),
                        Err(error) => {
                            tracing::warn!(%error, "webhook asked for an invalid broadcast")
                        }
                    }
                }
                actions.push(Action::Send(hook_reply(&done.ask, &verdict)));
            }
        }
        for action in actions.drain(..) {
            self.apply(done.key, action);
        }
        self.actions = actions;
        if let Some(skey) = session_key {
            // The POST line that asked is done: go on with the next ones.
            self.continue_post(skey);
        }
    }
}

/// The `reason` of a refusing backend answer, or `unauthorized`.
fn refusal_reason(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("reason")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unauthorized".to_string())
}

/// The JSON body of a join or event call.
fn hook_body(kind: HookKind, ask: &HookAsk, identity: &Identity) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    body.insert("topic".into(), Value::from(ask.topic.clone()));
    if kind == HookKind::Event {
        body.insert("event".into(), Value::from(ask.event.clone()));
    }
    match &ask.payload {
        Payload::Json(text) => {
            let value = serde_json::from_slice(text).unwrap_or(Value::Null);
            body.insert("payload".into(), value);
        }
        Payload::Binary(bytes) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
            body.insert("payload_base64".into(), Value::from(encoded));
        }
    }
    body.insert("user_id".into(), Value::from(identity.user_id.clone()));
    body.insert("socket_id".into(), Value::from(identity.socket_id.clone()));
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

/// A broadcast the backend asked for: event (default: the client's) and payload.
type HookBroadcast = Option<(Option<String>, Payload)>;

/// Reads the backend's answer. 2xx allows (response in `response` for
/// joins, `reply` for events; events may carry `broadcast`), any other
/// status refuses (with the body's `response`, or a reason), and no answer
/// refuses with the failure's reason.
fn verdict_of(kind: HookKind, outcome: &HookOutcome) -> (HookVerdict, HookBroadcast) {
    let (status, body) = match outcome {
        HookOutcome::Response { status, body } => (*status, body),
        HookOutcome::Failed(failure) => {
            return (HookVerdict::Error(reason(failure_reason(failure))), None)
        }
    };
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let object = |name: &str| {
        value
            .get(name)
            .filter(|v| v.is_object())
            .map(|v| serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()))
    };
    if (200..300).contains(&status) {
        let response_key = match kind {
            HookKind::Join => "response",
            HookKind::Event => "reply",
        };
        let broadcast = (kind == HookKind::Event)
            .then(|| value.get("broadcast"))
            .flatten()
            .and_then(|b| {
                let payload = b.get("payload").filter(|p| p.is_object())?;
                let event = b.get("event").and_then(Value::as_str).map(str::to_string);
                Some((event, Payload::Json(serde_json::to_vec(payload).ok()?)))
            });
        let response = object(response_key).unwrap_or_else(|| b"{}".to_vec());
        return (HookVerdict::Ok(response), broadcast);
    }
    let refused = match (kind, status) {
        (HookKind::Join, 401 | 403) => "unauthorized",
        (HookKind::Event, 400..=499) => "rejected",
        _ => "backend error",
    };
    (
        HookVerdict::Error(object("response").unwrap_or_else(|| reason(refused))),
        None,
    )
}

fn reason(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "reason": text })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookFailure;

    fn response(status: u16, body: &str) -> HookOutcome {
        HookOutcome::Response {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn backend_answers_become_verdicts() {
        let (v, _) = verdict_of(
            HookKind::Join,
            &response(200, r#"{"response":{"color":"red"}}"#),
        );
        assert_eq!(v, HookVerdict::Ok(br#"{"color":"red"}"#.to_vec()));
        let (v, _) = verdict_of(HookKind::Join, &response(403, ""));
        assert_eq!(
            v,
            HookVerdict::Error(br#"{"reason":"unauthorized"}"#.to_vec())
        );
        let (v, _) = verdict_of(
            HookKind::Join,
            &response(403, r#"{"response":{"reason":"banned"}}"#),
        );
        assert_eq!(v, HookVerdict::Error(br#"{"reason":"banned"}"#.to_vec()));
        let (v, _) = verdict_of(HookKind::Join, &response(500, "oops"));
        assert_eq!(
            v,
            HookVerdict::Error(br#"{"reason":"backend error"}"#.to_vec())
        );
        let (v, b) = verdict_of(
            HookKind::Event,
            &response(200, r#"{"reply":{"id":7},"broadcast":{"payload":{"x":1}}}"#),
        );
        assert_eq!(v, HookVerdict::Ok(br#"{"id":7}"#.to_vec()));
        assert_eq!(b, Some((None, Payload::Json(br#"{"x":1}"#.to_vec()))));
        let (v, _) = verdict_of(HookKind::Event, &HookOutcome::Failed(HookFailure::Timeout));
        assert_eq!(
            v,
            HookVerdict::Error(br#"{"reason":"backend timeout"}"#.to_vec())
        );
    }
}
