//! A compiled `aggregate:` action: the calls, their templates and shaping, and the order they
//! run in. The proxy runs it (proxy/aggregate.rs); `explain` prints it.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::{Route, Upstream};
use crate::aggregate::convert::Format;
use crate::aggregate::shape::Shape;
use crate::aggregate::template::Template;

/// A compiled aggregate.
#[derive(Debug)]
pub(crate) struct Aggregate {
    /// The calls in config order (the merge order).
    pub(crate) calls: Vec<Call>,
    /// Stages of call indices: a stage's calls depend only on earlier stages'.
    pub(crate) stages: Vec<Vec<usize>>,
    /// `on_error: partial`.
    pub(crate) partial: bool,
    /// Time allowed to the whole aggregate.
    pub(crate) timeout: Option<Duration>,
    /// The route's `path_template`, to read `{path.NAME}` values from the request path.
    pub(crate) path_template: Option<PathParams>,
}

/// One backend call.
#[derive(Debug)]
pub(crate) struct Call {
    /// Its name.
    pub(crate) name: Arc<str>,
    /// Its upstream.
    pub(crate) upstream: Arc<Upstream>,
    /// Request method.
    pub(crate) method: Method,
    /// Path and query template.
    pub(crate) path: Template,
    /// Header templates.
    pub(crate) headers: Vec<(HeaderName, Template)>,
    /// Time allowed to the call, its body included.
    pub(crate) timeout: Option<Duration>,
    /// Send a second try when no answer came after this long.
    pub(crate) hedge: Option<Duration>,
    /// Most bytes of answer body.
    pub(crate) max_body: usize,
    /// How the answer is read.
    pub(crate) format: Format,
    /// Its failure fails the request even under `partial`.
    pub(crate) required: bool,
    /// Field operations on its answer.
    pub(crate) shape: Shape,
    /// The calls it takes fields from.
    pub(crate) deps: Vec<usize>,
    /// What the forwarding stage needs of a route, for this call: its upstream, the route's
    /// retry policy, the call's timeout for the response head.
    pub(crate) route: Arc<Route>,
}

/// A path template's parameter reader.
pub(crate) struct PathParams(pub(crate) matchit::Router<()>);

impl std::fmt::Debug for PathParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathParams")
    }
}

impl PathParams {
    /// The value of parameter `name` in `path`.
    pub(crate) fn get(&self, path: &str, name: &str) -> Option<String> {
        let matched = self.0.at(path).ok()?;
        matched.params.get(name).map(str::to_owned)
    }
}

/// An upstream a plugin calls (`forward_auth`), as [`crate::plugins::SubTarget`] carries it:
/// the proxy calls it through its forward stage like an aggregate call.
#[derive(Debug)]
pub(crate) struct PluginCall {
    /// The upstream.
    pub(crate) upstream: Arc<Upstream>,
    /// What the forwarding stage needs of a route: no rewrite, no retries but the
    /// upstream's own, no timeout of its own (the plugin times the whole call).
    pub(crate) route: Route,
}

impl PluginCall {
    /// The call target of `upstream`.
    pub(crate) fn target(upstream: &Arc<Upstream>) -> crate::plugins::SubTarget {
        let route = Route {
            name: Arc::from(format!("forward_auth:{}", upstream.name)),
            action: super::Action::Forward {
                arms: vec![Arc::clone(upstream)],
                sequence: vec![0],
                next: std::sync::atomic::AtomicUsize::new(0),
            },
            plugins: crate::plugins::PluginChain::default(),
            rewrite: None,
            path_policy: Default::default(),
            timeout: None,
            retry: None,
            mirror: None,
            stream: super::StreamLimits::DEFAULT,
        };
        crate::plugins::SubTarget {
            name: Arc::clone(&upstream.name),
            inner: Arc::new(PluginCall {
                upstream: Arc::clone(upstream),
                route,
            }),
        }
    }
}
