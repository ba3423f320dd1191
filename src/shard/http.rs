//! HTTP on a shard: parse a request, then route it — the WebSocket upgrade,
//! a long-poll request, or the API's table of endpoints.

use std::time::Instant;

use super::connection::{ConnectionKey, Phase};
use super::inbox::ShardMessage;
use super::Shard;
use crate::api::{self, ApiHost, ApiResponse, ApiSettings};
use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::Content;
use crate::longpoll::session::HeldRequest;
use crate::transport::http::{write_json_error, write_response, HttpLimits, Parsed, Request};

/// The interim answer to `Expect: 100-continue`: send the body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Largest request head accepted (request line and headers).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What handling a request did to the connection.
pub(super) enum Handled {
    /// Answered; keep reading requests.
    KeepAlive,
    /// Answered; close after the response is flushed.
    Close,
    /// Upgraded to a WebSocket; what follows is frames.
    Upgraded,
    /// The upgrade (or long-poll session) waits for the backend's connect
    /// decision.
    Parked,
    /// A long-poll session holds the request open.
    Held,
    /// The request belongs to a long-poll session on shard `owner`: the
    /// connection moves there with it.
    HandOver {
        /// The owning shard.
        owner: usize,
        /// The request, parsed.
        request: Request,
    },
}

impl Handled {
    /// A request answered in place: keep the connection for the next one,
    /// or close it after the answer.
    pub(super) fn answered(keep_alive: bool) -> Handled {
        if keep_alive {
            Handled::KeepAlive
        } else {
            Handled::Close
        }
    }
}

impl Shard {
    /// Parses at most one request from `input` and handles it; returns the
    /// bytes consumed (0 when the request is incomplete).
    pub(super) fn process_http(
        &mut self,
        key: ConnectionKey,
        input: &mut [u8],
        now: Instant,
    ) -> usize {
        let limits = HttpLimits {
            max_header_bytes: MAX_HEADER_BYTES,
            max_body_bytes: self.config.api.max_body_size,
        };
        let Some(Phase::Http(http)) = self.connections.get_mut(key).map(|c| &mut c.phase) else {
            return input.len();
        };
        // The request's deadline counts from its first byte.
        http.request_started.get_or_insert(now);
        let (request, consumed) = match http.parser.parse(input, &limits) {
            Ok(Parsed::Incomplete {
                consumed,
                send_continue,
            }) => {
                if send_continue {
                    self.send_bytes(key, CONTINUE);
                }
                return consumed;
            }
            Ok(Parsed::Complete { request, consumed }) => {
                http.request_started = None;
                (request, consumed)
            }
            Err(error) => {
                let mut out = Vec::new();
                write_json_error(&mut out, error.status(), &error.to_string(), false);
                self.send_bytes(key, &out);
                self.start_closing(key, now);
                return input.len();
            }
        };
        match self.handle_request(key, request, now) {
            Handled::KeepAlive | Handled::Upgraded | Handled::Parked | Handled::Held => consumed,
            Handled::Close => {
                self.start_closing(key, now);
                input.len()
            }
            Handled::HandOver { owner, request } => {
                if let Some(hand_over) =
                    self.release_for_hand_over(key, request, &input[consumed..])
                {
                    self.peers[owner].send(ShardMessage::HandOver(Box::new(hand_over)));
                }
                input.len()
            }
        }
    }

    /// Routes one request by path.
    pub(super) fn handle_request(
        &mut self,
        key: ConnectionKey,
        request: Request,
        now: Instant,
    ) -> Handled {
        if self.config.socket.websocket && request.path == self.config.websocket_path() {
            return self.upgrade(key, &request, now);
        }
        if self.config.socket.longpoll.enabled && request.path == self.config.longpoll_path() {
            return self.longpoll_request(key, request, now);
        }
        if let Some(handled) = self.route_history_request(key, &request, now) {
            return handled;
        }
        let keep_alive = request.keep_alive && self.stop_deadline.is_none();
        let config = self.config.clone();
        let settings = ApiSettings {
            api_key: config.api.api_key.as_deref(),
            max_batch: config.api.max_batch,
        };
        let response = api::handle(&mut ApiOnShard { shard: self, now }, &request, &settings);
        let mut out = Vec::with_capacity(response.body.len() + 128);
        write_api_response(&mut out, &response, keep_alive);
        self.send_bytes(key, &out);
        Handled::answered(keep_alive)
    }

    /// Answers an API request that was held (for a read of Redis).
    pub(super) fn answer_held_api(
        &mut self,
        held: HeldRequest,
        response: &ApiResponse,
        now: Instant,
    ) {
        self.answer_held(held, now, |out, keep_alive| {
            write_api_response(out, response, keep_alive)
        });
    }
}

/// Frames an API answer as an HTTP response.
fn write_api_response(out: &mut Vec<u8>, response: &ApiResponse, keep_alive: bool) {
    let mut headers: Vec<(&str, &str)> = vec![("content-type", response.content_type)];
    headers.extend(
        response
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_ref())),
    );
    write_response(out, response.status, &headers, &response.body, keep_alive);
}

/// The shard as the API sees it, for one request.
struct ApiOnShard<'a> {
    shard: &'a mut Shard,
    now: Instant,
}

impl ApiHost for ApiOnShard<'_> {
    fn publish(&mut self, content: Content) {
        self.shard.publish(content, None, self.now);
    }

    fn publish_refusal(&self, content: &Content) -> Option<ApiResponse> {
        self.shard.history_publish_refusal(content)
    }

    fn history(&mut self, query: &str) -> ApiResponse {
        self.shard.history_api(query)
    }

    fn disconnect(&mut self, target: DisconnectTarget) {
        self.shard.disconnect_everywhere(target, self.now);
    }

    fn presence_state(&mut self, topic: &str) -> Vec<u8> {
        self.shard.presence.state_json(topic).to_vec()
    }

    fn metrics_text(&self) -> String {
        let mut text = crate::metrics::render_prometheus(&self.shard.metrics);
        self.shard.lifecycle_metrics(&mut text);
        if let Some(cluster) = self.shard.distributor.cluster() {
            cluster.status().render_prometheus(&mut text);
        }
        if let Some(bridge) = &self.shard.bridge {
            bridge.status().render_prometheus(&mut text);
        }
        text
    }

    fn cluster_health(&self) -> Option<String> {
        let cluster = self.shard.distributor.cluster()?;
        Some(cluster.status().health_json())
    }

    fn bridge_health(&self) -> Option<String> {
        let bridge = self.shard.bridge.as_ref()?;
        Some(bridge.status().health_json())
    }
}
