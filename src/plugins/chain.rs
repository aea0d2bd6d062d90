//! A route's plugin chain: the levels plugins are configured at, merged once at compile time
//! by precedence, and the steps run over the result.
//!
//! Precedence, most specific first: route + consumer (`consumer_plugins` of the route), the
//! consumer's own `plugins`, the route's, the global ones. A level's plugins replace every
//! plugin of the same name at the less specific levels; several of one name at one level all
//! stay. A consumer-scoped plugin replaces only plugins that run after authentication: what
//! runs before cannot depend on who the consumer is.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, request, response};

use super::{BodyFilter, Deferred, Flow, LogRecord, Phase, Plugin, Subrequests};
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// Where a plugin was configured, least specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    /// The top-level `plugins:`.
    Global,
    /// The route's `plugins:`.
    Route,
    /// The consumer's own `plugins:`.
    Consumer(Arc<str>),
    /// The route's `consumer_plugins:` for this consumer.
    RouteConsumer(Arc<str>),
}

impl Level {
    fn rank(&self) -> u8 {
        match self {
            Level::Global => 0,
            Level::Route => 1,
            Level::Consumer(_) => 2,
            Level::RouteConsumer(_) => 3,
        }
    }

    /// Whether it applies to one consumer only (so it may not touch what runs before
    /// authentication).
    pub(crate) fn consumer_scoped(&self) -> bool {
        matches!(self, Level::Consumer(_) | Level::RouteConsumer(_))
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Global => f.write_str("global"),
            Level::Route => f.write_str("route"),
            Level::Consumer(name) => write!(f, "consumer {name}"),
            Level::RouteConsumer(name) => write!(f, "route+consumer {name}"),
        }
    }
}

/// A plugin and the level it was configured at.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// The plugin.
    pub(crate) plugin: Arc<dyn Plugin>,
    /// Where it was configured.
    pub(crate) level: Level,
}

/// A plugin that gives way to a more specific level's plugin of the same name.
#[derive(Debug, Clone)]
pub(crate) struct Replaced {
    /// The plugin left out, with its level.
    pub(crate) plugin: Placed,
    /// The level whose same-named plugin is in force instead.
    pub(crate) by: Level,
}

/// The plugins in force for one kind of request (no consumer yet, or one consumer), by
/// phase, then level (least specific first), then config order.
#[derive(Debug, Clone, Default)]
pub(crate) struct InForce {
    steps: Vec<Arc<dyn Plugin>>,
    levels: Vec<Level>,
    replaced: Vec<Replaced>,
    /// Index of the first step that runs after authentication.
    authenticated: usize,
}

impl InForce {
    /// Merges plugins given least specific level first, config order within a level.
    /// Consumer-scoped plugins that run before authentication are left out (compile refuses
    /// them).
    pub(crate) fn resolve(mut all: Vec<Placed>) -> Self {
        all.retain(|p| !p.level.consumer_scoped() || p.plugin.phase() > Phase::Authenticate);
        let mut kept: Vec<Placed> = Vec::with_capacity(all.len());
        let mut replaced = Vec::new();
        for p in &all {
            let by = all
                .iter()
                .filter(|q| {
                    q.level.rank() > p.level.rank()
                        && q.plugin.name() == p.plugin.name()
                        && (!q.level.consumer_scoped() || p.plugin.phase() > Phase::Authenticate)
                })
                .map(|q| &q.level)
                .max_by_key(|l| l.rank());
            match by {
                Some(by) => replaced.push(Replaced {
                    plugin: p.clone(),
                    by: by.clone(),
                }),
                None => kept.push(p.clone()),
            }
        }
        // Stable: level order, then config order, within a phase.
        kept.sort_by_key(|p| p.plugin.phase());
        let authenticated = kept
            .iter()
            .position(|p| p.plugin.phase() > Phase::Authenticate)
            .unwrap_or(kept.len());
        let (steps, levels) = kept.into_iter().map(|p| (p.plugin, p.level)).unzip();
        InForce {
            steps,
            levels,
            replaced,
            authenticated,
        }
    }

    /// The plugins, in the order they run.
    pub(crate) fn steps(&self) -> &[Arc<dyn Plugin>] {
        &self.steps
    }

    /// Each plugin with its level, in the order they run.
    pub(crate) fn placed(&self) -> impl Iterator<Item = (&Arc<dyn Plugin>, &Level)> {
        self.steps.iter().zip(&self.levels)
    }

    /// The plugins left out for more specific ones.
    pub(crate) fn replaced(&self) -> &[Replaced] {
        &self.replaced
    }

    /// Index of the first plugin that runs after authentication.
    pub(crate) fn authenticated(&self) -> usize {
        self.authenticated
    }
}

/// The plugins consumers carry, by consumer name; shared by every chain of a config.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsumerPlugins(pub Arc<HashMap<String, Vec<Arc<dyn Plugin>>>>);

/// A route's plugins: those in force before a consumer is known, and, for each consumer that
/// carries plugins (its own or the route's for it), those in force for it, merged at compile
/// time so the request path only looks them up.
#[derive(Debug, Clone, Default)]
pub(crate) struct PluginChain {
    base: InForce,
    consumers: Arc<HashMap<String, InForce>>,
    /// Whether any plugin in force has an answer step ([`Plugin::takes_answers`]).
    answers: bool,
}

/// How the request-body step of a chain ended.
pub(crate) enum BodyStep {
    /// The body to send on (filtered or rebuilt).
    Continue(Body),
    /// A plugin answered instead.
    Respond(http::Response<Body>),
}

fn placed(plugins: &[Arc<dyn Plugin>], level: &Level) -> impl Iterator<Item = Placed> {
    plugins.iter().map(move |p| Placed {
        plugin: Arc::clone(p),
        level: level.clone(),
    })
}

impl PluginChain {
    /// Global plugins alone, by phase, config order within one.
    #[cfg(test)]
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        PluginChain::build(&plugins, &[], &ConsumerPlugins::default(), &HashMap::new())
    }

    /// Merges the levels: global plugins, a route's, the consumers' own and the route's
    /// plugins for single consumers (`on_route`, by consumer name).
    pub(crate) fn build(
        global: &[Arc<dyn Plugin>],
        route: &[Arc<dyn Plugin>],
        consumers: &ConsumerPlugins,
        on_route: &HashMap<String, Vec<Arc<dyn Plugin>>>,
    ) -> Self {
        let shared = || placed(global, &Level::Global).chain(placed(route, &Level::Route));
        let base = InForce::resolve(shared().collect());
        let mut names: Vec<&String> = consumers
            .0
            .iter()
            .chain(on_route.iter())
            .filter(|(_, plugins)| !plugins.is_empty())
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names.dedup();
        let merged = names
            .into_iter()
            .map(|name| {
                let id: Arc<str> = Arc::from(name.as_str());
                let own = consumers.0.get(name).map_or(&[][..], Vec::as_slice);
                let here = on_route.get(name).map_or(&[][..], Vec::as_slice);
                let all = shared()
                    .chain(placed(own, &Level::Consumer(Arc::clone(&id))))
                    .chain(placed(here, &Level::RouteConsumer(id)))
                    .collect();
                (name.clone(), InForce::resolve(all))
            })
            .collect::<HashMap<String, InForce>>();
        let answers = base
            .steps
            .iter()
            .chain(merged.values().flat_map(|f| f.steps.iter()))
            .any(|p| p.takes_answers());
        PluginChain {
            base,
            consumers: Arc::new(merged),
            answers,
        }
    }

    /// The plugins in force for a request authenticated as `consumer` (or not at all).
    pub(crate) fn in_force(&self, consumer: Option<&str>) -> &InForce {
        consumer
            .and_then(|name| self.consumers.get(name))
            .unwrap_or(&self.base)
    }

    /// The consumers with plugins of their own in force here, in name order.
    pub(crate) fn scoped_consumers(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.consumers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The plugins in force for this request: the chain's, or, once the request is
    /// authenticated as a consumer that carries plugins, the chain merged with them.
    fn steps(&self, ctx: &RequestCtx) -> &InForce {
        if self.consumers.is_empty() {
            return &self.base;
        }
        self.in_force(ctx.consumer.as_ref().map(|c| c.name.as_str()))
    }

    /// The names of the plugins in force for this request (its consumer's, once known), in
    /// chain order.
    pub(crate) fn names<'a>(&'a self, ctx: &RequestCtx) -> impl Iterator<Item = &'static str> + 'a {
        self.steps(ctx).steps.iter().map(|p| p.name())
    }

    /// Runs `on_request` of each plugin until one answers; the answer, if any.
    pub(crate) async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        calls: &dyn Subrequests,
    ) -> Result<Option<http::Response<Body>>, ProxyError> {
        for plugin in &self.base.steps {
            plugin.observe(ctx, head);
        }
        // Up to authentication, what every request meets; then, once the consumer is known,
        // what is in force for it. Both share the same plugins before authentication.
        for plugin in &self.base.steps[..self.base.authenticated] {
            if let Some(response) = run_on_request(plugin, ctx, head, calls).await? {
                return Ok(Some(response));
            }
        }
        let in_force = self.steps(ctx);
        for plugin in &in_force.steps[in_force.authenticated..] {
            if let Some(response) = run_on_request(plugin, ctx, head, calls).await? {
                return Ok(Some(response));
            }
        }
        Ok(None)
    }

    /// The request-body step: each plugin that asks gets the body, in chain order, so a
    /// whole-body plugin sees what the chunk filters before it passed on.
    pub(crate) async fn request_body(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        mut body: Body,
    ) -> Result<BodyStep, ProxyError> {
        let steps = &self.steps(ctx).steps;
        for plugin in steps.iter() {
            match plugin.request_body(ctx, head) {
                None => {}
                Some(BodyFilter::Chunks(filter)) => body = body.filter(filter),
                Some(BodyFilter::Whole { max, edit }) => {
                    let bytes = buffer(body, max).await.map_err(|err| match err {
                        Buffered::TooLarge(limit) => ProxyError::PayloadTooLarge { limit },
                        Buffered::Broken => ProxyError::ClientBody,
                    })?;
                    match edit.apply(ctx, &mut head.headers, bytes) {
                        Ok(bytes) => {
                            set_length(&mut head.headers, bytes.len());
                            body = Body::full(bytes);
                        }
                        Err(response) => return Ok(BodyStep::Respond(*response)),
                    }
                }
            }
        }
        Ok(BodyStep::Continue(body))
    }

    /// Runs `on_answer` of each plugin that takes answers, last first; a chain without one
    /// returns the answer as it came.
    #[inline]
    pub(crate) fn on_answer(
        &self,
        ctx: &RequestCtx,
        mut answer: Result<http::Response<Body>, ProxyError>,
    ) -> Result<http::Response<Body>, ProxyError> {
        if !self.answers {
            return answer;
        }
        for plugin in self.steps(ctx).steps.iter().rev() {
            if plugin.takes_answers() {
                answer = plugin.on_answer(ctx, answer);
            }
        }
        answer
    }

    /// Runs `on_response` of each plugin, last first.
    pub(crate) fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        for plugin in self.steps(ctx).steps.iter().rev() {
            plugin.on_response(ctx, head);
        }
    }

    /// The response-body step, last plugin first. A whole-body plugin's answer replaces the
    /// response (its head steps do not run again).
    pub(crate) async fn response_body(
        &self,
        ctx: &RequestCtx,
        mut head: response::Parts,
        mut body: Body,
    ) -> Result<http::Response<Body>, ProxyError> {
        let steps = &self.steps(ctx).steps;
        for plugin in steps.iter().rev() {
            match plugin.response_body_head(ctx, &mut head) {
                None => {}
                Some(BodyFilter::Chunks(filter)) => body = body.filter(filter),
                // An event stream has no end to wait for: never buffered, it passes as it
                // comes, event by event.
                Some(BodyFilter::Whole { .. }) if super::is_event_stream(&head.headers) => {}
                Some(BodyFilter::Whole { max, edit }) => {
                    let bytes = buffer(body, max).await.map_err(|err| match err {
                        Buffered::TooLarge(limit) => ProxyError::ResponseTooLarge { limit },
                        Buffered::Broken => ProxyError::BrokenResponse,
                    })?;
                    match edit.apply(ctx, &mut head.headers, bytes) {
                        Ok(bytes) => {
                            set_length(&mut head.headers, bytes.len());
                            body = Body::full(bytes);
                        }
                        Err(response) => return Ok(*response),
                    }
                }
            }
        }
        Ok(http::Response::from_parts(head, body))
    }

    /// Runs `log` of each plugin.
    pub(crate) fn log(&self, ctx: &RequestCtx, record: &LogRecord) {
        for plugin in self.steps(ctx).steps.iter() {
            plugin.log(ctx, record);
        }
    }

    /// Whether the chain is empty and no consumer carries plugins (the request path skips
    /// it entirely).
    pub(crate) fn is_empty(&self) -> bool {
        self.base.steps.is_empty() && self.consumers.is_empty()
    }
}

/// One plugin's head step, its deferred work awaited; the answer, if it gives one.
pub(crate) async fn run_on_request(
    plugin: &Arc<dyn Plugin>,
    ctx: &mut RequestCtx,
    head: &mut request::Parts,
    calls: &dyn Subrequests,
) -> Result<Option<http::Response<Body>>, ProxyError> {
    let work = match plugin.on_request(ctx, head) {
        Ok(Flow::Continue) => return Ok(None),
        Ok(Flow::Respond(response)) => return Ok(Some(answered(plugin, ctx, response))),
        Ok(Flow::Defer(work)) => work,
        Ok(Flow::Subrequest(start)) => start(ctx, calls),
        Err(err) => {
            ctx.answered_by = super::name_index(plugin.name());
            return Err(err);
        }
    };
    match work.await {
        Deferred::Continue(consumer) => {
            if consumer.is_some() {
                ctx.consumer = consumer;
            }
            Ok(None)
        }
        Deferred::ContinueWith(consumer, headers) => {
            if consumer.is_some() {
                ctx.consumer = consumer;
            }
            for (name, value) in headers {
                head.headers.insert(name, value);
            }
            Ok(None)
        }
        Deferred::Respond(response) => Ok(Some(answered(plugin, ctx, response))),
        Deferred::Apply(edit) => {
            edit(ctx, head);
            Ok(None)
        }
    }
}

/// Notes which plugin answered, for the log and `portico_plugin_answers_total`.
fn answered(
    plugin: &Arc<dyn Plugin>,
    ctx: &mut RequestCtx,
    response: http::Response<Body>,
) -> http::Response<Body> {
    ctx.answered_by = super::name_index(plugin.name());
    response
}

/// Why a body could not be buffered.
enum Buffered {
    TooLarge(u64),
    Broken,
}

/// Reads a whole body, at most `max` bytes of it.
async fn buffer(body: Body, max: usize) -> Result<Bytes, Buffered> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if err.is::<http_body_util::LengthLimitError>() {
                Err(Buffered::TooLarge(max as u64))
            } else if let Some(too_large) = err.downcast_ref::<crate::body::TooLarge>() {
                Err(Buffered::TooLarge(too_large.0))
            } else {
                Err(Buffered::Broken)
            }
        }
    }
}

/// A rebuilt body has a known length: say so, and drop any other framing.
fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
}

#[cfg(test)]
mod tests;
