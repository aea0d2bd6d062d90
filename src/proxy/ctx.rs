//! What portico knows about one request while it crosses the pipeline.

use std::net::SocketAddr;
use std::time::Instant;

use http::HeaderValue;

/// Per-request state shared by the stages and plugins.
#[derive(Debug)]
pub struct RequestCtx {
    /// The `x-request-id` of this request (the client's, if valid, else a new one).
    pub request_id: HeaderValue,
    /// The downstream peer.
    pub client: SocketAddr,
    /// When the request head arrived.
    pub start: Instant,
    /// The listener that accepted it.
    pub listener: std::sync::Arc<str>,
    /// The matched route, once routed.
    pub route: Option<std::sync::Arc<str>>,
    /// The chosen upstream, once selected.
    pub upstream: Option<std::sync::Arc<str>>,
    /// The chosen target, once selected.
    pub target: Option<std::sync::Arc<crate::pool::TargetState>>,
    /// The authenticated consumer, once a plugin found one.
    pub consumer: Option<std::sync::Arc<crate::plugins::auth::Consumer>>,
    /// The request's `Origin`, when CORS allowed it (for the response headers).
    pub cors_origin: Option<HeaderValue>,
    /// The request body may not exceed this many bytes (`request_size_limit`).
    pub body_limit: Option<u64>,
    /// `RateLimit-*` values for the response: limit, remaining, seconds to reset.
    pub rate_limit: Option<(u32, u32, u64)>,
    /// JSON edits for the request body.
    pub request_json: Option<std::sync::Arc<crate::plugins::transform::JsonEdit>>,
    /// A body check of `request_validator`.
    pub body_check: Option<std::sync::Arc<crate::plugins::validate::BodyCheck>>,
    /// JSON edits for the response body.
    pub response_json: Option<std::sync::Arc<crate::plugins::transform::JsonEdit>>,
}
