//! Stages `on_request` and `on_response`: plugins, in phases, then in config order (global
//! first).
//!
//! A plugin looks at the request and returns a [`Flow`]: go on, or answer now. On the way back
//! it may edit the response head; `on_response` runs in reverse order, on portico's own answers
//! too. Phases make the order safe whatever the config says: address rules, size limits and
//! rate limits by address come first, then CORS preflights, then authentication, then
//! authorisation and per-consumer limits, then transformations.

pub mod acl;
pub mod auth;
pub mod basic_auth;
pub mod cors;
pub mod headers;
pub mod ip_restriction;
pub mod jwt;
pub mod key_auth;
pub mod mtls_auth;
pub mod rate_limit;
pub mod request_size_limit;
pub mod respond;
pub mod transform;
pub mod validate;

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
    /// Decide after some work that must not block the worker (a password hash, a lookup);
    /// the chain awaits it, applies it, and goes on. The hot path never allocates for this:
    /// only plugins that need it return it.
    Defer(std::pin::Pin<Box<dyn Future<Output = Deferred> + Send>>),
}

/// The outcome of a [`Flow::Defer`].
pub enum Deferred {
    /// Go on, as this consumer (if any).
    Continue(Option<Arc<auth::Consumer>>),
    /// Answer now.
    Respond(http::Response<Body>),
}

/// When a plugin runs, before config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Client address, body size, rate limits that need no identity.
    Access,
    /// CORS preflights (browsers send no credentials with them).
    Preflight,
    /// Who is calling.
    Authenticate,
    /// What they may do, and per-consumer limits.
    Authorize,
    /// Header and body edits.
    Transform,
}

/// One step of request processing, configured from the `plugins:` list.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// The config name, shown by `explain`.
    fn name(&self) -> &'static str;

    /// The phase it runs in.
    fn phase(&self) -> Phase {
        Phase::Transform
    }

    /// When it answers by itself instead of letting the request on (for `explain`).
    fn stops(&self) -> Option<&'static str> {
        None
    }

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
    /// Orders plugins by phase, keeping config order (global first) within a phase.
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Self {
        plugins.sort_by_key(|p| p.phase());
        PluginChain(plugins)
    }

    /// Runs `on_request` of each plugin until one answers; the answer, if any.
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Option<http::Response<Body>>, ProxyError> {
        for plugin in &self.0 {
            match plugin.on_request(ctx, head)? {
                Flow::Continue => {}
                Flow::Respond(response) => return Ok(Some(response)),
                Flow::Defer(work) => match work.await {
                    Deferred::Continue(consumer) => {
                        if consumer.is_some() {
                            ctx.consumer = consumer;
                        }
                    }
                    Deferred::Respond(response) => return Ok(Some(response)),
                },
            }
        }
        Ok(None)
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

    /// Each plugin with its phase and what would stop a request there.
    pub fn describe(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| match p.stops() {
                Some(stop) => format!("{} ({:?}): {stop}", p.name(), p.phase()),
                None => format!("{} ({:?})", p.name(), p.phase()),
            })
            .collect()
    }
}

/// What plugins are built with: the consumers, and metric families.
#[derive(Debug, Clone, Copy)]
pub struct BuildEnv<'a> {
    /// API keys and groups.
    pub consumers: &'a Arc<auth::Consumers>,
    /// Metric families.
    pub metrics: &'a crate::observe::Metrics,
    /// The config file's folder, for relative paths.
    pub base: &'a std::path::Path,
    /// State kept across reloads, under this plugin's identity.
    pub state: crate::runtime::state::StateScope<'a>,
}

/// Builds a plugin from its spec; the error is a message for the spec's position.
pub fn build(spec: &PluginSpec, env: BuildEnv<'_>) -> Result<Arc<dyn Plugin>, String> {
    Ok(match spec {
        PluginSpec::RequestHeaders(ops) => {
            Arc::new(headers::RequestHeaders(headers::HeaderOps::compile(ops)?))
        }
        PluginSpec::ResponseHeaders(ops) => {
            Arc::new(headers::ResponseHeaders(headers::HeaderOps::compile(ops)?))
        }
        PluginSpec::KeyAuth(spec) => Arc::new(key_auth::KeyAuth::new(spec, env.consumers)?),
        PluginSpec::Acl(spec) => Arc::new(acl::Acl::new(spec)),
        PluginSpec::RateLimit(spec) => Arc::new(rate_limit::RateLimit::new(spec, env)?),
        PluginSpec::Cors(spec) => Arc::new(cors::Cors::new(spec)?),
        PluginSpec::IpRestriction(spec) => Arc::new(ip_restriction::IpRestriction::new(spec)?),
        PluginSpec::RequestSizeLimit(spec) => {
            Arc::new(request_size_limit::RequestSizeLimit(spec.max.0))
        }
        PluginSpec::Jwt(spec) => Arc::new(jwt::Jwt::new(spec, env)?),
        PluginSpec::BasicAuth(spec) => Arc::new(basic_auth::BasicAuth::new(spec, env.consumers)),
        PluginSpec::MtlsAuth(spec) => Arc::new(mtls_auth::MtlsAuth::new(spec, env.consumers)),
        PluginSpec::Respond(spec) => Arc::new(respond::Mock::new(spec)?),
        PluginSpec::RequestTransformer(spec) => Arc::new(transform::RequestTransformer::new(spec)?),
        PluginSpec::ResponseTransformer(spec) => {
            Arc::new(transform::ResponseTransformer::new(spec)?)
        }
        PluginSpec::RequestValidator(spec) => {
            Arc::new(validate::RequestValidator::new(spec, env.base)?)
        }
    })
}
