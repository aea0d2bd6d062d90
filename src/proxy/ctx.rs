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
}
