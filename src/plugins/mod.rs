//! Stages `on_request` and `on_response`: plugins, run in config order (global first).
//!
//! A plugin looks at the request and returns a [`Flow`]: go on, or answer now. On the way back
//! it may edit the response head; `on_response` runs in reverse order, on portico's own answers
//! too.

pub mod headers;

use std::sync::Arc;

use http::{request, response};

use crate::config::spec::PluginSpec;
use crate::proxy::body::Body;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::error::ProxyError;

/// What a plugin decides after looking at a request.
pub enum Flow {
    /// Go on to the next plugin, then the upstream.
    Continue,
    /// Answer now: later plugins and the upstream are skipped.
    Respond(http::Response<Body>),
}

/// One step of request processing, configured from the `plugins:` list.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// The config name, shown by `explain`.
    fn name(&self) -> &'static str;

    /// Runs in config order, global plugins first.
    fn on_request(
        &self,
        _ctx: &mut RequestCtx,
        _head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        Ok(Flow::Continue)
    }

    /// Runs in reverse order, on portico's own responses too.
    fn on_response(&self, _ctx: &RequestCtx, _head: &mut response::Parts) {}
}

/// A route's plugins in the order they run.
#[derive(Debug, Clone, Default)]
pub struct PluginChain(pub Vec<Arc<dyn Plugin>>);

impl PluginChain {
    /// Runs `on_request` of each plugin until one answers.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        for plugin in &self.0 {
            if let Flow::Respond(response) = plugin.on_request(ctx, head)? {
                return Ok(Flow::Respond(response));
            }
        }
        Ok(Flow::Continue)
    }

    /// Runs `on_response` of each plugin, last first.
    pub fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        for plugin in self.0.iter().rev() {
            plugin.on_response(ctx, head);
        }
    }

    /// Whether the chain is empty (the request path skips it entirely).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Plugin names in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|p| p.name()).collect()
    }
}

/// Builds a plugin from its spec; the error is a message for the spec's position.
pub fn build(spec: &PluginSpec) -> Result<Arc<dyn Plugin>, String> {
    Ok(match spec {
        PluginSpec::RequestHeaders(ops) => {
            Arc::new(headers::RequestHeaders(headers::HeaderOps::compile(ops)?))
        }
        PluginSpec::ResponseHeaders(ops) => {
            Arc::new(headers::ResponseHeaders(headers::HeaderOps::compile(ops)?))
        }
    })
}
