//! What portico knows about one request while it crosses the pipeline. A leaf: plugins and
//! the pipeline share it, and it names neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

/// Per-request state shared by the stages and plugins.
///
/// It names no plugin: what a plugin must carry from one of its steps to the next (the CORS
/// origin it allowed, the rate-limit figures for the response) goes in [`RequestCtx::slots`],
/// under a type private to that plugin.
#[derive(Debug)]
pub struct RequestCtx {
    /// The `x-request-id` of this request (the client's, if valid, else a new one).
    pub request_id: HeaderValue,
    /// The downstream peer.
    pub client: SocketAddr,
    /// When the request head arrived.
    pub start: Instant,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// The matched route, once routed.
    pub route: Option<Arc<str>>,
    /// The chosen upstream, once selected.
    pub upstream: Option<Arc<str>>,
    /// The chosen target's address, once selected (the last one tried).
    pub target: Option<Arc<str>>,
    /// Tries sent to targets (retries included).
    pub attempts: u32,
    /// A retry was wanted but the upstream's retry budget was spent.
    pub budget_spent: bool,
    /// The authenticated consumer, once a plugin found one.
    pub consumer: Option<Arc<crate::consumer::Consumer>>,
    /// Typed per-plugin state, one value per type; empty (and unallocated) unless a plugin
    /// needs it.
    pub slots: http::Extensions,
}

impl RequestCtx {
    /// The state of a request that just arrived.
    pub fn new(request_id: HeaderValue, client: SocketAddr, listener: Arc<str>) -> Self {
        RequestCtx {
            request_id,
            client,
            start: Instant::now(),
            listener,
            route: None,
            upstream: None,
            target: None,
            attempts: 0,
            budget_spent: false,
            consumer: None,
            slots: http::Extensions::new(),
        }
    }
}
