//! The hooks component: asking the backend (on the worker pool) and acting
//! on the answer when it comes back through the shard's inbox.
//!
//! The connection or client may be gone, or its key reused, by the time an
//! answer arrives: every ask carries the serial number of what asked, and
//! answers for another serial are dropped.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde_json::value::RawValue;

use super::connection::{ConnectionKey, PendingTransport, PendingUpgrade, Phase};
use super::Shard;
use crate::connect::{ConnectPolicy, Identity};
use crate::fanout::broadcast::Content;
use crate::fanout::topics::ClientId;
use crate::hooks::{failure_reason, HookFailure, HookOutcome, HookPool, HookRequest};
use crate::protocol::channels::{hook_reply, Action, HookAsk, HookVerdict};
use crate::protocol::json_object::JsonObject;
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
pub enum HookAnswer {
    /// The connect decision for a parked connect request.
    Connect(ConnectAnswer),
    /// A join or client event decision.
    Channel(Box<ChannelAnswer>),
}

/// The backend's answer to a parked connect request.
#[derive(Debug)]
pub struct ConnectAnswer {
    /// The connection that asked.
    pub connection: ConnectionKey,
    /// Its serial number (guards against key reuse).
    pub serial: u64,
    /// The backend's answer.
    pub outcome: HookOutcome,
}

/// The backend's answer to a join or client event.
#[derive(Debug)]
pub struct ChannelAnswer {
    /// The client that asked.
    pub client: ClientId,
    /// Its serial number (guards against id reuse).
    pub serial: u64,
    /// Join or event.
    pub kind: HookKind,
    /// The question, with what is needed to answer the client.
    pub ask: HookAsk,
    /// The backend's answer.
    pub outcome: HookOutcome,
}

/// Where a worker puts an answer: the asking shard's inbox.
pub type AnswerSink = Arc<dyn Fn(HookAnswer) + Send + Sync>;

/// The hooks component: the pool asks go to, and the way back.
pub struct Hooks {
    pool: Option<HookPool>,
    answers: AnswerSink,
}

impl Hooks {
    /// The component of a shard whose answers go to `answers`.
    pub fn new(pool: Option<HookPool>, answers: AnswerSink) -> Hooks {
        Hooks { pool, answers }
    }

    /// Submits `request`; the answer comes back through the inbox as made
    /// by `answer`. Without a pool (config validation makes webhook
    /// policies require one) the answer is an immediate failure.
    fn submit(
        &self,
        request: HookRequest,
        answer: impl FnOnce(HookOutcome) -> HookAnswer + Send + 'static,
    ) {
        let answers = self.answers.clone();
        match &self.pool {
            Some(pool) => pool.submit(request, Box::new(move |outcome| answers(answer(outcome)))),
            None => answers(answer(HookOutcome::Failed(HookFailure::Unreachable(
                "no webhook.url".into(),
            )))),
        }
    }
}

impl Shard {
    /// Parks a connect request until the backend decides (both transports).
    pub(super) fn park_for_connect(
        &mut self,
        key: ConnectionKey,
        pending: PendingUpgrade,
        body: Vec<u8>,
    ) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Authorizing(Box::new(pending));
        let serial = conn.serial;
        let request = HookRequest {
            path: "connect",
            body,
            idempotent: true,
        };
        self.hooks.submit(request, move |outcome| {
            HookAnswer::Connect(ConnectAnswer {
                connection: key,
                serial,
                outcome,
            })
        });
    }

    /// Sends a join or event `ask` of client `id` to the backend.
    pub(super) fn ask_hook(&mut self, id: ClientId, kind: HookKind, ask: HookAsk, _now: Instant) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let serial = client.serial;
        let body = hook_body(kind, &ask, client.session.identity());
        if let Some(session) = client.longpoll() {
            // A POST line waiting for this answer is held until it comes.
            session.pending_asks += 1;
        }
        let request = HookRequest {
            path: match kind {
                HookKind::Join => "join",
                HookKind::Event => "event",
            },
            body,
            // A join decision can be asked twice; an event may have effects.
            idempotent: kind == HookKind::Join,
        };
        self.hooks.submit(request, move |outcome| {
            HookAnswer::Channel(Box::new(ChannelAnswer {
                client: id,
                serial,
                kind,
                ask,
                outcome,
            }))
        });
    }

    /// Acts on a backend answer (the hooks component's inbox message).
    pub(super) fn on_hook_answer(&mut self, answer: HookAnswer, now: Instant) {
        match answer {
            HookAnswer::Connect(answer) => self.on_connect_answer(answer, now),
            HookAnswer::Channel(answer) => self.on_channel_answer(*answer, now),
        }
    }

    /// Finishes or refuses a parked connect request. 2xx admits (the body
    /// may name `user_id` and `channels`); 401/403 refuse with 403 and the
    /// body's `reason`; anything else, or no answer, refuses with 503 so
    /// the client retries later.
    fn on_connect_answer(&mut self, answer: ConnectAnswer, now: Instant) {
        let key = answer.connection;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.serial != answer.serial || !matches!(conn.phase, Phase::Authorizing(_)) {
            return;
        }
        let Phase::Authorizing(pending) = std::mem::replace(&mut conn.phase, Phase::http()) else {
            return;
        };
        let admitted = match (&self.config.connect, &answer.outcome) {
            (ConnectPolicy::Webhook(policy), HookOutcome::Response { status, body })
                if (200..300).contains(status) =>
            {
                Ok(policy.identity_from(body))
            }
            (
                _,
                HookOutcome::Response {
                    status: 401 | 403,
                    body,
                },
            ) => Err((403, refusal_reason(body))),
            (_, HookOutcome::Failed(failure)) => Err((503, failure_reason(failure).to_string())),
            _ => Err((503, "backend error".to_string())),
        };
        match (pending.transport, admitted) {
            (PendingTransport::LongPoll { keep_alive }, admitted) => {
                self.finish_session_connect(key, pending.serializer, keep_alive, admitted, now)
            }
            (
                PendingTransport::WebSocket {
                    accept_key,
                    subprotocol,
                },
                Ok(identity),
            ) => self.complete_upgrade(
                key,
                pending.serializer,
                &accept_key,
                subprotocol.as_deref(),
                identity,
                now,
            ),
            (PendingTransport::WebSocket { .. }, Err((status, reason))) => {
                self.refuse_upgrade(key, status, &reason, now)
            }
        }
    }

    /// Answers a join or event: the verdict goes through the client's
    /// channels (a join the client gave up meanwhile is dropped there).
    fn on_channel_answer(&mut self, answer: ChannelAnswer, now: Instant) {
        let Some(client) = self.clients.get_current(answer.client, answer.serial) else {
            return;
        };
        let mut resume_post = false;
        if let Some(session) = client.longpoll() {
            session.pending_asks = session.pending_asks.saturating_sub(1);
            resume_post = true;
        }
        let mut actions = std::mem::take(&mut self.scratch.actions);
        let (verdict, broadcast) = verdict_of(answer.kind, &answer.outcome);
        match answer.kind {
            HookKind::Join => {
                client
                    .session
                    .channels
                    .finish_join(&answer.ask, &verdict, &mut actions)
            }
            HookKind::Event => {
                if let Some((event, payload)) = broadcast {
                    let event = event.unwrap_or_else(|| answer.ask.event.clone());
                    match Content::new(answer.ask.topic.clone(), event, payload) {
                        Ok(content) => actions.push(Action::Publish {
                            content,
                            from_sender: false,
                        }),
                        Err(error) => {
                            tracing::warn!(%error, "webhook asked for an invalid broadcast")
                        }
                    }
                }
                actions.push(Action::Send(hook_reply(&answer.ask, &verdict)));
            }
        }
        self.apply_all(answer.client, &mut actions, now);
        self.scratch.actions = actions;
        if resume_post {
            // The POST line that asked is done: go on with the next ones.
            self.continue_post(answer.client, now);
        }
    }
}

/// The `reason` of a refusing backend answer, or `unauthorized`.
fn refusal_reason(body: &[u8]) -> String {
    JsonObject::parse_bytes(body)
        .ok()
        .and_then(|answer| answer.get("reason"))
        .and_then(|reason| serde_json::from_str::<String>(reason.get()).ok())
        .unwrap_or_else(|| "unauthorized".to_string())
}

/// The JSON body of a join or event call. The client's payload goes to the
/// backend as the exact text the client sent.
fn hook_body(kind: HookKind, ask: &HookAsk, identity: &Identity) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct HookBody<'a> {
        topic: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_base64: Option<String>,
        user_id: Option<&'a str>,
        socket_id: Option<&'a str>,
    }
    let (payload, payload_base64) = match &ask.payload {
        // Decoded payloads are one JSON value already; anything else would
        // be a bug upstream, and goes as `null` rather than as broken JSON.
        Payload::Json(text) => (
            Some(
                std::str::from_utf8(text)
                    .ok()
                    .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
                    .unwrap_or(RawValue::NULL),
            ),
            None,
        ),
        Payload::Binary(bytes) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    let body = HookBody {
        topic: &ask.topic,
        event: (kind == HookKind::Event).then_some(ask.event.as_str()),
        payload,
        payload_base64,
        user_id: identity.user_id.as_deref(),
        socket_id: identity.socket_id.as_deref(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A broadcast the backend asked for: event (default: the client's) and payload.
type HookBroadcast = Option<(Option<String>, Payload)>;

/// Reads the backend's answer. 2xx allows (response in `response` for
/// joins, `reply` for events; events may carry `broadcast`), any other
/// status refuses (with the body's `response`, or a reason), and no answer
/// refuses with the failure's reason. Objects the backend sends on go as
/// the exact text it wrote.
fn verdict_of(kind: HookKind, outcome: &HookOutcome) -> (HookVerdict, HookBroadcast) {
    let (status, body) = match outcome {
        HookOutcome::Response { status, body } => (*status, body),
        HookOutcome::Failed(failure) => {
            return (HookVerdict::Error(reason(failure_reason(failure))), None)
        }
    };
    let answer = JsonObject::parse_bytes(body).ok();
    let object = |name: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get_object(name))
            .map(|v| v.get().as_bytes().to_vec())
    };
    if (200..300).contains(&status) {
        let response_key = match kind {
            HookKind::Join => "response",
            HookKind::Event => "reply",
        };
        let broadcast = (kind == HookKind::Event)
            .then(|| answer.as_ref()?.get_object("broadcast"))
            .flatten()
            .and_then(|b| {
                let b = JsonObject::parse(b.get()).ok()?;
                let payload = b.get_object("payload")?;
                let event = b
                    .get("event")
                    .and_then(|e| serde_json::from_str::<String>(e.get()).ok());
                Some((event, Payload::Json(payload.get().as_bytes().to_vec())))
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

    fn refused(reason: &str) -> HookVerdict {
        HookVerdict::Error(format!(r#"{{"reason":"{reason}"}}"#).into_bytes())
    }

    #[test]
    fn backend_answers_become_verdicts() {
        let ok = |text: &str| HookVerdict::Ok(text.as_bytes().to_vec());
        let joins = [
            (
                200,
                r#"{"response":{"color":"red"}}"#,
                ok(r#"{"color":"red"}"#),
            ),
            (403, "", refused("unauthorized")),
            (
                403,
                r#"{"response":{"reason":"banned"}}"#,
                refused("banned"),
            ),
            (500, "oops", refused("backend error")),
        ];
        for (status, body, expected) in joins {
            let (v, _) = verdict_of(HookKind::Join, &response(status, body));
            assert_eq!(v, expected, "{status} {body}");
        }
        let (v, b) = verdict_of(
            HookKind::Event,
            &response(200, r#"{"reply":{"id":7},"broadcast":{"payload":{"x":1}}}"#),
        );
        assert_eq!(v, ok(r#"{"id":7}"#));
        assert_eq!(b, Some((None, Payload::Json(br#"{"x":1}"#.to_vec()))));
        let (v, _) = verdict_of(HookKind::Event, &HookOutcome::Failed(HookFailure::Timeout));
        assert_eq!(v, refused("backend timeout"));
    }
}
