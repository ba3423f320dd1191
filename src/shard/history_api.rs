//! `GET /api/history` on a shard: the request goes to the topic's owner
//! shard (its connection is handed over, as a long-poll request is to its
//! session's shard), which answers from the history it holds — in a
//! cluster once it has read the topic's stream from Redis.

use std::time::Instant;

use super::channels::unix_ms;
use super::connection::{ConnectionKey, Phase};
use super::http::Handled;
use super::Shard;
use crate::api::history::{page_json, parse_query, PATH};
use crate::api::{authorized, ApiResponse};
use crate::fanout::broadcast::Content;
use crate::longpoll::session::HeldRequest;
use crate::transport::http::Request;

/// A history request waiting for a read of its topic's stream.
#[derive(Debug)]
pub struct HeldHistoryRequest {
    /// Its connection.
    pub held: HeldRequest,
    /// Its query string.
    pub query: String,
}

impl Shard {
    /// Routes a history request before the API table answers it: to the
    /// topic's owner shard, or held until the owner has read the topic's
    /// stream. `None`: answer it here, now (the table also answers every
    /// refusal: a wrong key, a bad query).
    pub(super) fn route_history_request(
        &mut self,
        key: ConnectionKey,
        request: &Request,
        now: Instant,
    ) -> Option<Handled> {
        if request.path != PATH
            || request.method != "GET"
            || !authorized(
                self.config.api.api_key.as_deref(),
                request.header("authorization"),
            )
        {
            return None;
        }
        let query = parse_query(&request.query, self.config.history.api_max_limit).ok()?;
        self.retention(&query.topic)?;
        let owner = self.history_owner(&query.topic);
        if owner != self.id {
            return Some(Handled::HandOver {
                owner,
                request: request.clone(),
            });
        }
        if !self.needs_stream_read(&query.topic) {
            return None;
        }
        let connection = self.connections.get_mut(key)?;
        connection.phase = Phase::Held;
        let held = HeldRequest {
            connection: key,
            serial: connection.serial,
            deadline: now,
            keep_alive: request.keep_alive,
        };
        self.hold_for_stream_read(
            query.topic,
            HeldHistoryRequest {
                held,
                query: request.query.clone(),
            },
        );
        Some(Handled::Held)
    }

    /// The answer to `GET /api/history?{query}` from this shard's store.
    pub(super) fn history_api(&mut self, query: &str) -> ApiResponse {
        let query = match parse_query(query, self.config.history.api_max_limit) {
            Ok(query) => query,
            Err(reason) => return ApiResponse::error(400, &reason),
        };
        let Some(retention) = self.retention(&query.topic) else {
            return ApiResponse::error(
                404,
                "the topic has no history (no [[channel]] route with history matches it)",
            );
        };
        if self.history_owner(&query.topic) != self.id {
            // Handed over before the table runs; never answer from a
            // shard that does not hold the topic.
            return ApiResponse::error(
                500,
                "history request on a shard that does not own the topic",
            );
        }
        if self.distributor.cluster().is_some() && self.history.store.get(&query.topic).is_none() {
            return ApiResponse::error(503, "the topic's history cannot be read: Redis is down");
        }
        let now_ms = unix_ms();
        let log = self.history.store.log(&query.topic, now_ms);
        let (messages, complete) = log.read(query.since.as_ref(), query.limit, retention, now_ms);
        ApiResponse::json(page_json(
            &query.topic,
            &log.position(),
            &messages,
            complete,
        ))
    }

    /// Answers history requests that waited for a read of their topic.
    pub(super) fn answer_held_history(&mut self, waiting: Vec<HeldHistoryRequest>, now: Instant) {
        for request in waiting {
            let response = self.history_api(&request.query);
            self.answer_held_api(request.held, &response, now);
        }
    }

    /// Why `content` cannot be published now: a history topic of a
    /// cluster node without Redis (its offsets come from there).
    pub(super) fn history_publish_refusal(&self, content: &Content) -> Option<ApiResponse> {
        self.retention(content.topic())?;
        let cluster = self.distributor.cluster()?;
        (!cluster.is_up()).then(|| {
            ApiResponse::error(
                503,
                "history topics cannot be published while Redis is down (it assigns their positions)",
            )
        })
    }
}
