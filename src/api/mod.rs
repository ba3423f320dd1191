//! The HTTP API served on the socket port, as one table of endpoints.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | POST | `/api/broadcast` | publish one message or a batch |
//! | POST | `/api/disconnect` | close every connection of a user id or socket id |
//! | GET | `/api/presence?topic=…` | a presence topic's current state |
//! | GET | `/api/history?topic=…&since=…&limit=…` | a history topic's held broadcasts ([`history`]) |
//! | GET | `/healthz` | liveness |
//! | GET | `/metrics` | Prometheus counters per shard |
//!
//! Each endpoint is listed once, in [`ENDPOINTS`]; routing, `405` answers
//! and the API key rule all read that table. Handlers act on the shard
//! through [`ApiHost`], so they are plain functions of a request.

pub mod history;
pub mod parse;

use std::borrow::Cow;

pub use parse::{authorized, parse_broadcasts, parse_disconnect, ApiError};

use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::Content;
use crate::transport::http::Request;
use crate::transport::query::{last_value, parse_pairs};

/// What the API needs from the shard that serves the request.
pub trait ApiHost {
    /// Publishes a broadcast to every subscriber on every shard.
    fn publish(&mut self, content: Content);
    /// Why `content` cannot be published now, as the answer to give (a
    /// history topic while its store is unreachable); `None` when it can.
    fn publish_refusal(&self, content: &Content) -> Option<ApiResponse>;
    /// Answers `GET /api/history` with this query string.
    fn history(&mut self, query: &str) -> ApiResponse;
    /// Closes the target's connections and sessions on every shard.
    fn disconnect(&mut self, target: DisconnectTarget);
    /// A presence topic's state as `presence_state` JSON.
    fn presence_state(&mut self, topic: &str) -> Vec<u8>;
    /// The metrics in Prometheus text format.
    fn metrics_text(&self) -> String;
    /// The `cluster` object of `/healthz`, when this node is one of several.
    fn cluster_health(&self) -> Option<String>;
    /// The `phoenix_pubsub` object of `/healthz`, when bridged to an app.
    fn bridge_health(&self) -> Option<String>;
}

/// An answer, before HTTP framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// The status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// `200` with a JSON body.
    pub fn json(body: impl Into<Vec<u8>>) -> ApiResponse {
        ApiResponse::json_status(200, body)
    }

    /// A JSON body with `status`.
    pub fn json_status(status: u16, body: impl Into<Vec<u8>>) -> ApiResponse {
        ApiResponse {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `{"error": reason}` with `status`.
    pub fn error(status: u16, reason: &str) -> ApiResponse {
        ApiResponse::json_status(status, serde_json::json!({ "error": reason }).to_string())
    }
}

/// One endpoint.
pub struct Endpoint {
    /// The method it answers.
    pub method: &'static str,
    /// The path it answers.
    pub path: &'static str,
    /// What answers.
    pub handler: fn(&mut dyn ApiHost, &Request, &ApiSettings) -> ApiResponse,
}

/// The API's configuration, as handlers need it.
#[derive(Debug, Clone, Copy)]
pub struct ApiSettings<'a> {
    /// `api.api_key`: required as a Bearer token on `/api/*` when set.
    pub api_key: Option<&'a str>,
    /// `api.max_batch`.
    pub max_batch: usize,
}

/// Every endpoint, once.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        path: "/api/broadcast",
        handler: broadcast,
    },
    Endpoint {
        method: "POST",
        path: "/api/disconnect",
        handler: disconnect,
    },
    Endpoint {
        method: "GET",
        path: "/api/presence",
        handler: presence,
    },
    Endpoint {
        method: "GET",
        path: history::PATH,
        handler: history_page,
    },
    Endpoint {
        method: "GET",
        path: "/healthz",
        handler: health,
    },
    Endpoint {
        method: "GET",
        path: "/metrics",
        handler: metrics,
    },
];

/// Answers an API request: the key rule for `/api/*`, then the endpoint the
/// table names, `405` for a known path with another method, else `404`.
pub fn handle(host: &mut dyn ApiHost, request: &Request, settings: &ApiSettings) -> ApiResponse {
    if request.path.starts_with("/api/")
        && !authorized(settings.api_key, request.header("authorization"))
    {
        let mut response = ApiResponse::json_status(
            401,
            &br#"{"error":"unauthorized","reason":"missing or wrong API key (Authorization: Bearer <api_key>)"}"#[..],
        );
        response
            .headers
            .push(("www-authenticate", Cow::Borrowed("Bearer")));
        return response;
    }
    let same_path = || ENDPOINTS.iter().filter(|e| e.path == request.path);
    if let Some(endpoint) = same_path().find(|e| e.method == request.method) {
        return (endpoint.handler)(host, request, settings);
    }
    let allow: Vec<&str> = same_path().map(|e| e.method).collect();
    if allow.is_empty() {
        return ApiResponse::error(404, "not found");
    }
    let mut response = ApiResponse::json_status(405, &br#"{"error":"method not allowed"}"#[..]);
    response
        .headers
        .push(("allow", Cow::Owned(allow.join(", "))));
    response
}

/// `POST /api/broadcast`: `{"ok":true,"count":N}`, N messages accepted.
fn broadcast(host: &mut dyn ApiHost, request: &Request, settings: &ApiSettings) -> ApiResponse {
    match parse_broadcasts(&request.body, settings.max_batch) {
        Ok(batch) => {
            let count = batch.len();
            // All or nothing: a refused message refuses the batch.
            if let Some(refusal) = batch.iter().find_map(|c| host.publish_refusal(c)) {
                return refusal;
            }
            for content in batch {
                // Phoenix's forced disconnect: `disconnect` sent to a socket
                // id closes that socket's connections.
                if content.event() == "disconnect" {
                    host.disconnect(DisconnectTarget::SocketId(content.topic().to_string()));
                }
                host.publish(content);
            }
            ApiResponse::json(format!(r#"{{"ok":true,"count":{count}}}"#))
        }
        Err(error) => ApiResponse::error(400, &error.to_string()),
    }
}

/// `POST /api/disconnect`.
fn disconnect(host: &mut dyn ApiHost, request: &Request, _: &ApiSettings) -> ApiResponse {
    match parse_disconnect(&request.body) {
        Ok(target) => {
            host.disconnect(target);
            ApiResponse::json(&br#"{"ok":true}"#[..])
        }
        Err(error) => ApiResponse::error(400, &error.to_string()),
    }
}

/// `GET /api/presence?topic=…`.
fn presence(host: &mut dyn ApiHost, request: &Request, _: &ApiSettings) -> ApiResponse {
    let params = parse_pairs(&request.query);
    match last_value(&params, "topic").filter(|t| !t.is_empty()) {
        Some(topic) => ApiResponse::json(host.presence_state(topic)),
        None => ApiResponse::error(
            400,
            "the topic query parameter is required: /api/presence?topic=room:lobby",
        ),
    }
}

/// `GET /api/history?topic=…`.
fn history_page(host: &mut dyn ApiHost, request: &Request, _: &ApiSettings) -> ApiResponse {
    host.history(&request.query)
}

/// `GET /healthz`: 200 while the node serves — in a cluster too, whether
/// Redis is up or not (the node keeps serving its own clients), with the
/// bus's state in `cluster` and the Phoenix PubSub bridge's in
/// `phoenix_pubsub`.
fn health(host: &mut dyn ApiHost, _: &Request, _: &ApiSettings) -> ApiResponse {
    let mut body = String::from(r#"{"status":"ok""#);
    if let Some(cluster) = host.cluster_health() {
        body.push_str(&format!(r#","cluster":{cluster}"#));
    }
    if let Some(bridge) = host.bridge_health() {
        body.push_str(&format!(r#","phoenix_pubsub":{bridge}"#));
    }
    body.push('}');
    ApiResponse::json(body)
}

/// `GET /metrics`.
fn metrics(host: &mut dyn ApiHost, _: &Request, _: &ApiSettings) -> ApiResponse {
    ApiResponse {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        headers: Vec::new(),
        body: host.metrics_text().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Host {
        published: Vec<Content>,
        disconnected: Vec<DisconnectTarget>,
    }

    impl ApiHost for Host {
        fn publish(&mut self, content: Content) {
            self.published.push(content);
        }
        fn publish_refusal(&self, content: &Content) -> Option<ApiResponse> {
            (content.topic() == "h:down").then(|| ApiResponse::error(503, "down"))
        }
        fn history(&mut self, query: &str) -> ApiResponse {
            ApiResponse::json(format!(r#"{{"query":"{query}"}}"#))
        }
        fn disconnect(&mut self, target: DisconnectTarget) {
            self.disconnected.push(target);
        }
        fn presence_state(&mut self, topic: &str) -> Vec<u8> {
            format!(r#"{{"topic":"{topic}"}}"#).into_bytes()
        }
        fn metrics_text(&self) -> String {
            "m 1\n".into()
        }
        fn cluster_health(&self) -> Option<String> {
            None
        }

        fn bridge_health(&self) -> Option<String> {
            None
        }
    }

    fn request(method: &str, path: &str, body: &str) -> Request {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
            minor_version: 1,
        }
    }

    const OPEN: ApiSettings = ApiSettings {
        api_key: None,
        max_batch: 10,
    };

    #[test]
    fn the_table_routes_and_explains_refusals() {
        let mut host = Host::default();
        let ok = handle(
            &mut host,
            &request(
                "POST",
                "/api/broadcast",
                r#"{"topic":"t","event":"disconnect","payload":{}}"#,
            ),
            &OPEN,
        );
        assert_eq!(ok.body, br#"{"ok":true,"count":1}"#);
        assert_eq!(host.published.len(), 1);
        assert_eq!(
            host.disconnected,
            vec![DisconnectTarget::SocketId("t".into())]
        );
        let refused = handle(
            &mut host,
            &request(
                "POST",
                "/api/broadcast",
                r#"{"messages":[{"topic":"a","event":"e","payload":{}},{"topic":"h:down","event":"e","payload":{}}]}"#,
            ),
            &OPEN,
        );
        assert_eq!(refused.status, 503);
        assert_eq!(
            host.published.len(),
            1,
            "nothing of a refused batch is published"
        );
        let page = handle(
            &mut host,
            &request("GET", "/api/history?topic=t", ""),
            &OPEN,
        );
        assert_eq!(page.body, br#"{"query":"topic=t"}"#);
        let wrong = handle(&mut host, &request("GET", "/api/broadcast", ""), &OPEN);
        assert_eq!(
            (wrong.status, wrong.headers.clone()),
            (405, vec![("allow", Cow::Borrowed("POST"))])
        );
        assert_eq!(
            handle(&mut host, &request("GET", "/nope", ""), &OPEN).status,
            404
        );
        let state = handle(
            &mut host,
            &request("GET", "/api/presence?topic=room:1", ""),
            &OPEN,
        );
        assert_eq!(state.body, br#"{"topic":"room:1"}"#);
        assert_eq!(
            handle(&mut host, &request("GET", "/api/presence", ""), &OPEN).status,
            400
        );
        assert_eq!(
            handle(&mut host, &request("GET", "/metrics", ""), &OPEN).body,
            b"m 1\n"
        );
    }

    #[test]
    fn the_key_guards_api_paths_only() {
        let mut host = Host::default();
        let keyed = ApiSettings {
            api_key: Some("k3y"),
            max_batch: 10,
        };
        let refused = handle(
            &mut host,
            &request("POST", "/api/disconnect", r#"{"user_id":"a"}"#),
            &keyed,
        );
        assert_eq!(refused.status, 401);
        assert!(host.disconnected.is_empty());
        assert_eq!(
            handle(&mut host, &request("GET", "/healthz", ""), &keyed).status,
            200
        );
        let mut with_key = request("POST", "/api/disconnect", r#"{"user_id":"a"}"#);
        with_key
            .headers
            .push(("authorization".into(), "Bearer k3y".into()));
        assert_eq!(handle(&mut host, &with_key, &keyed).status, 200);
    }
}
