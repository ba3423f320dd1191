//! Request bodies of the publish API, parsed and validated.
//!
//! Parsing keeps each payload as the raw JSON text the publisher sent
//! (`serde_json::value::RawValue`): it is validated once here and then copied
//! straight into the encoded frames, never re-serialized.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::{Content, PublishError};
use crate::protocol::message::Payload;

/// Whether a request may use `/api/*`: always when no key is configured,
/// otherwise only with `Authorization: Bearer <key>`. The comparison takes
/// the same time wherever the first difference is, so the key cannot be
/// guessed byte by byte from response times.
pub fn authorized(api_key: Option<&str>, authorization: Option<&str>) -> bool {
    let Some(key) = api_key else {
        return true;
    };
    let Some(presented) = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }) else {
        return false;
    };
    let (a, b) = (key.as_bytes(), presented.as_bytes());
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

/// Parses `{"user_id": "..."}` or `{"socket_id": "..."}` (exactly one).
pub fn parse_disconnect(body: &[u8]) -> Result<DisconnectTarget, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DisconnectBody {
        user_id: Option<String>,
        socket_id: Option<String>,
    }
    let request: DisconnectBody =
        serde_json::from_slice(body).map_err(|e| ApiError::Body(e.to_string()))?;
    match (request.user_id, request.socket_id) {
        (Some(id), None) if !id.is_empty() => Ok(DisconnectTarget::UserId(id)),
        (None, Some(id)) if !id.is_empty() => Ok(DisconnectTarget::SocketId(id)),
        _ => Err(ApiError::Body(
            "give exactly one non-empty \"user_id\" or \"socket_id\"".into(),
        )),
    }
}

/// Why a publish request body was refused (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not JSON, or not the expected shape.
    #[error("invalid request body: {0}")]
    Body(String),
    /// Too many messages in one batch.
    #[error("a batch holds at most {max} messages, got {got}")]
    BatchTooLarge {
        /// The configured maximum.
        max: usize,
        /// Messages in the request.
        got: usize,
    },
    /// A message was unusable.
    #[error("message {index}: {problem}")]
    Message {
        /// Position in the batch (0 for a single message).
        index: usize,
        /// What is wrong.
        problem: String,
    },
}

/// One message as the API receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody<'a> {
    topic: String,
    event: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// A request body: either one message, or `{"messages":[...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<MessageBody<'a>>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// Parses and validates a publish request. Either every message is valid and
/// returned, or none is published.
pub fn parse_broadcasts(body: &[u8], max_batch: usize) -> Result<Vec<Content>, ApiError> {
    let request: RequestBody<'_> =
        serde_json::from_slice(body).map_err(|e| ApiError::Body(e.to_string()))?;
    let messages = match request.messages {
        Some(messages) => {
            if request.topic.is_some() || request.event.is_some() || request.payload.is_some() {
                return Err(ApiError::Body(
                    "send either one message or {\"messages\":[...]}, not both".to_string(),
                ));
            }
            if messages.len() > max_batch {
                return Err(ApiError::BatchTooLarge {
                    max: max_batch,
                    got: messages.len(),
                });
            }
            messages
        }
        None => {
            let (Some(topic), Some(event)) = (request.topic, request.event) else {
                return Err(ApiError::Body(
                    "missing field `topic` or `event`".to_string(),
                ));
            };
            vec![MessageBody {
                topic,
                event,
                payload: request.payload,
                payload_base64: request.payload_base64,
            }]
        }
    };
    messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            to_content(message).map_err(|problem| ApiError::Message { index, problem })
        })
        .collect()
}

fn to_content(message: MessageBody<'_>) -> Result<Content, String> {
    let payload = match (message.payload, message.payload_base64) {
        (Some(json), None) => Payload::Json(json.get().as_bytes().to_vec()),
        (None, Some(encoded)) => Payload::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| format!("payload_base64 is not valid base64: {e}"))?,
        ),
        (Some(_), Some(_)) => {
            return Err("give `payload` or `payload_base64`, not both".to_string())
        }
        (None, None) => {
            return Err("missing `payload` (a JSON object) or `payload_base64`".to_string())
        }
    };
    Content::new(message.topic, message.event, payload).map_err(|e: PublishError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_bodies() {
        assert_eq!(
            parse_disconnect(br#"{"user_id":"alice"}"#).unwrap(),
            DisconnectTarget::UserId("alice".into())
        );
        assert_eq!(
            parse_disconnect(br#"{"socket_id":"user_socket:alice"}"#).unwrap(),
            DisconnectTarget::SocketId("user_socket:alice".into())
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"user_id":"a","socket_id":"b"}"#,
            br#"{"user_id":""}"#,
            b"nope",
            br#"{"user":"a"}"#,
        ] {
            assert!(
                parse_disconnect(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn api_key_needs_the_exact_bearer_token() {
        assert!(authorized(None, None));
        assert!(authorized(Some("k3y"), Some("Bearer k3y")));
        assert!(authorized(Some("k3y"), Some("bearer  k3y ")));
        assert!(!authorized(Some("k3y"), None));
        assert!(!authorized(Some("k3y"), Some("Bearer k3")));
        assert!(!authorized(Some("k3y"), Some("Bearer k3yy")));
        assert!(!authorized(Some("k3y"), Some("Basic k3y")));
        assert!(!authorized(Some("k3y"), Some("k3y")));
    }

    #[test]
    fn single_and_batch() {
        let one =
            parse_broadcasts(br#"{"topic":"room:1","event":"e","payload":{"a":1}}"#, 10).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].payload(), &Payload::Json(br#"{"a":1}"#.to_vec()));
        let batch = parse_broadcasts(
            br#"{"messages":[{"topic":"a","event":"e","payload":{}},{"topic":"b","event":"e","payload_base64":"AQI="}]}"#,
            10,
        )
        .unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].payload(), &Payload::Binary(vec![1, 2]));
    }

    #[test]
    fn refusals_say_why() {
        let err = |body: &[u8]| parse_broadcasts(body, 2).unwrap_err().to_string();
        assert!(err(b"nope").contains("invalid request body"));
        assert!(err(br#"{"topic":"a","event":"e","payload":[1]}"#).contains("JSON object"));
        assert!(err(br#"{"topic":"a","event":"e"}"#).contains("missing `payload`"));
        assert!(err(br#"{"topic":"","event":"e","payload":{}}"#).contains("topic"));
        assert!(err(br#"{"topic":"a","event":"e","payload":{},"extra":1}"#).contains("extra"));
        let three = br#"{"messages":[{"topic":"a","event":"e","payload":{}},{"topic":"a","event":"e","payload":{}},{"topic":"a","event":"e","payload":{}}]}"#;
        assert!(err(three).contains("at most 2"));
        assert!(err(br#"{"messages":[{"topic":"a","event":"e","payload":{}},{"topic":"a","event":"e","payload":3}]}"#)
            .contains("message 1"));
    }
}
