//! What portico knows about one request while it crosses the pipeline. A leaf: plugins and
//! the pipeline share it, and it names neither.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

/// Per-request state shared by the stages and plugins.
///
/// It names no plugin: what a plugin must carry from one of its steps to the next (the CORS
/// origin it allowed, the rate-limit figures for the response) goes in [`RequestCtx::slots`],
/// under a type private to that plugin.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    /// The `x-request-id` of this request (the client's, if valid, else a new one).
    pub(crate) request_id: HeaderValue,
    /// The downstream peer.
    pub(crate) client: SocketAddr,
    /// When the request head arrived.
    pub(crate) start: Instant,
    /// The listener that accepted it.
    pub(crate) listener: Arc<str>,
    /// The matched route, once routed.
    pub(crate) route: Option<Arc<str>>,
    /// The chosen upstream, once selected.
    pub(crate) upstream: Option<Arc<str>>,
    /// The chosen target's address, once selected (the last one tried).
    pub(crate) target: Option<Arc<str>>,
    /// Tries sent to targets (retries included).
    pub(crate) attempts: u32,
    /// Microseconds spent waiting on targets for answer heads, over every try (a `u64`, not
    /// a `Duration`: this state is part of every request's future).
    pub(crate) upstream_us: u64,
    /// The plugin whose request step answered or refused the request, if one did: its
    /// index in the plugin name list (a byte, not a name: this state is part of every
    /// request's future).
    pub(crate) answered_by: Option<u8>,
    /// This request's trace, when tracing is configured.
    pub(crate) trace: Option<Box<crate::trace::RequestTrace>>,
    /// A retry was wanted but the upstream's retry budget was spent.
    pub(crate) budget_spent: bool,
    /// The authenticated consumer, once a plugin found one.
    pub(crate) consumer: Option<Arc<crate::consumer::Consumer>>,
    /// Typed per-plugin state, one value per type; empty (and unallocated) unless a plugin
    /// needs it.
    pub(crate) slots: http::Extensions,
    /// The route's limits on the upstream's response body, once one is being passed on.
    pub(crate) stream: Option<StreamLimits>,
}

/// A route's `stream_idle_timeout` and `max_stream_duration`: they govern its tunnels and
/// its response bodies once the head is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamLimits {
    /// No byte either way for this long: closed.
    pub(crate) idle: Duration,
    /// The longest it may last.
    pub(crate) max: Option<Duration>,
}

impl StreamLimits {
    /// The defaults: 5 minutes idle, no maximum.
    pub(crate) const DEFAULT: StreamLimits = StreamLimits {
        idle: Duration::from_secs(300),
        max: None,
    };
}

impl RequestCtx {
    /// Time spent waiting on targets for answer heads, over every try.
    pub(crate) fn upstream_time(&self) -> Duration {
        Duration::from_micros(self.upstream_us)
    }

    /// The state of a request that just arrived.
    pub(crate) fn new(request_id: HeaderValue, client: SocketAddr, listener: Arc<str>) -> Self {
        RequestCtx {
            request_id,
            client,
            start: Instant::now(),
            listener,
            route: None,
            upstream: None,
            target: None,
            attempts: 0,
            upstream_us: 0,
            answered_by: None,
            trace: None,
            budget_spent: false,
            consumer: None,
            slots: http::Extensions::new(),
            stream: None,
        }
    }
}
