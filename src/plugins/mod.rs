//! Stages `on_request` and `on_response`: plugins, in phases, then in config order (global
//! first).
//!
//! A plugin has up to five steps, each optional:
//!
//! | step | runs | may |
//! |---|---|---|
//! | [`Plugin::on_request`] | on the request head, in chain order | edit the head, answer now ([`Flow`]) |
//! | [`Plugin::request_body`] | once every head step went on | see the body chunk by chunk, or whole (bounded) |
//! | [`Plugin::on_answer`] | on the route's answer (or error) before the response steps, last plugin first; only chains with a plugin that [takes answers](Plugin::takes_answers) | replace the answer |
//! | [`Plugin::on_response`] | on every response head, upstream's or portico's own, last plugin first | edit the head |
//! | [`Plugin::response_body`] | after the response heads | see the response body, like the request body |
//! | [`Plugin::log`] | once the response head left | record what happened |
//!
//! Phases make the order safe whatever the config says: address rules, size limits and
//! rate limits by address come first, then CORS preflights, then authentication, then
//! authorisation and per-consumer limits, then transformations.

pub(crate) mod acl;
pub(crate) mod auth;
pub(crate) mod basic_auth;
pub(crate) mod cache;
mod chain;
pub(crate) mod cluster;
pub(crate) mod compression;
pub(crate) mod cors;
pub(crate) mod decisions;
pub(crate) mod forward_auth;
pub(crate) mod grpc_web;
pub(crate) mod headers;
pub(crate) mod introspection;
pub(crate) mod ip_restriction;
pub(crate) mod jwt;
pub(crate) mod key_auth;
pub(crate) mod mtls_auth;
pub(crate) mod oidc;
pub(crate) mod quota;
pub(crate) mod rate_limit;
pub(crate) mod request_size_limit;
pub(crate) mod respond;
pub(crate) mod shape;
pub(crate) mod state;
pub(crate) mod transcode;
pub(crate) mod transform;
pub(crate) mod validate;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, request, response};

use crate::body::{Body, ChunkFilter};
use crate::config::spec::PluginSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

pub(crate) use chain::{BodyStep, ConsumerPlugins, InForce, Level, PluginChain, run_on_request};

/// What a plugin decides after looking at a request.
// A verdict lives on the stack for one call: boxing the answer would cost an allocation for
// every plugin answer to save a few bytes of copy.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Flow {
    /// Go on to the next plugin, then the upstream.
    Continue,
    /// Answer now: later plugins and the upstream are skipped.
    Respond(http::Response<Body>),
    /// Decide after some work that must not block the worker (a password hash, a lookup);
    /// the chain awaits it, applies it, and goes on. The hot path never allocates for this:
    /// only plugins that need it return it.
    Defer(std::pin::Pin<Box<dyn Future<Output = Deferred> + Send>>),
    /// Like [`Flow::Defer`], for work that calls an upstream: the chain hands the closure the
    /// proxy's way of calling one ([`Subrequests`]), then awaits the work.
    Subrequest(Box<SubrequestWork>),
}

/// The work of a [`Flow::Subrequest`].
pub(crate) type SubrequestWork = dyn FnOnce(
        &RequestCtx,
        &dyn Subrequests,
    ) -> std::pin::Pin<Box<dyn Future<Output = Deferred> + Send>>
    + Send;

/// An upstream a plugin calls, found by name when the config compiled. What it holds is the
/// proxy's business: plugins only pass it back to [`Subrequests::call`].
#[derive(Clone)]
pub(crate) struct SubTarget {
    /// The upstream's name.
    pub(crate) name: Arc<str>,
    /// What the proxy needs to call it.
    pub(crate) inner: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for SubTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubTarget({})", self.name)
    }
}

/// Why a call to an upstream has no usable answer; the words name no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubError {
    /// No answer (no healthy target, refused, reset, timed out, broken).
    Failed(&'static str),
    /// A body longer than allowed.
    TooLarge,
}

impl std::fmt::Display for SubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubError::Failed(why) => f.write_str(why),
            SubError::TooLarge => f.write_str("the answer is longer than max_body"),
        }
    }
}

/// An upstream's answer to a plugin's call, its body read whole (bounded).
pub(crate) type SubResult = Result<http::Response<Bytes>, SubError>;

/// How plugins call upstreams: through the proxy's own select and forward stages, so
/// balancing, health, retries, pools and upstream TLS apply.
pub(crate) trait Subrequests: Sync {
    /// Sends `head` (no body) to `target` for the request of `ctx`; the answer's body is read
    /// up to `max_body` bytes (past it, a 2xx answer's body is dropped and any other answer
    /// fails with [`SubError::TooLarge`]). The future owns what it needs.
    fn call(
        &self,
        ctx: &RequestCtx,
        target: &SubTarget,
        head: request::Parts,
        max_body: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = SubResult> + Send>>;

    /// Sends `head` (no body) to the upstream of the request's own route, as a forward of
    /// it would go (rewrite, balancing, retries); the answer's body is read up to
    /// `max_body` bytes, past it the call fails with [`SubError::TooLarge`] whatever the
    /// status. Fails when the route does not forward (`cache` refreshes a stale answer in
    /// the background with it).
    fn call_route(
        &self,
        _ctx: &RequestCtx,
        _head: request::Parts,
        _max_body: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = SubResult> + Send>> {
        Box::pin(std::future::ready(Err(SubError::Failed(
            "the route does not forward",
        ))))
    }
}

/// No upstream can be called (`explain`, unit tests): every call fails.
pub(crate) struct NoSubrequests;

impl Subrequests for NoSubrequests {
    fn call(
        &self,
        _ctx: &RequestCtx,
        _target: &SubTarget,
        _head: request::Parts,
        _max_body: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = SubResult> + Send>> {
        Box::pin(std::future::ready(Err(SubError::Failed(
            "no upstream can be called here",
        ))))
    }
}

/// Finds an upstream of the config by name, for plugins that call one; the error is shown
/// at the name's position.
#[derive(Clone, Copy)]
pub(crate) struct UpstreamLookup<'a>(
    pub(crate) &'a (dyn Fn(&str) -> Result<SubTarget, String> + Sync),
);

impl std::fmt::Debug for UpstreamLookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamLookup")
    }
}

/// The outcome of a [`Flow::Defer`].
#[allow(clippy::large_enum_variant)]
pub(crate) enum Deferred {
    /// Go on, as this consumer (if any).
    Continue(Option<Arc<auth::Consumer>>),
    /// Go on, as this consumer (if any), with these headers set on the request.
    ContinueWith(
        Option<Arc<auth::Consumer>>,
        Vec<(http::HeaderName, http::HeaderValue)>,
    ),
    /// Answer now.
    Respond(http::Response<Body>),
    /// Go on, after this edit of the context and the head (a consumer, claims and a note
    /// for the response step).
    Apply(Box<dyn EditRequest>),
}

/// A deferred edit of the context and request head ([`Deferred::Apply`]).
pub(crate) trait EditRequest: FnOnce(&mut RequestCtx, &mut request::Parts) + Send {}

impl<F: FnOnce(&mut RequestCtx, &mut request::Parts) + Send> EditRequest for F {}

/// What a plugin does with a body it wants to see.
pub(crate) enum BodyFilter {
    /// Each data chunk as it passes; nothing is buffered.
    Chunks(Box<dyn ChunkFilter>),
    /// The whole body, buffered by portico up to `max` bytes. A longer request body is
    /// refused with 413; a longer response body with 502.
    Whole {
        /// Most bytes buffered.
        max: usize,
        /// What is done with the body once it is all there.
        edit: Box<dyn WholeBody>,
    },
}

/// A plugin's work on a whole, buffered body.
pub(crate) trait WholeBody: Send {
    /// Gets the body and the head's fields (to fix `Content-Length` or the content type);
    /// returns the body to pass on, or an answer that replaces the message.
    fn apply(
        self: Box<Self>,
        ctx: &RequestCtx,
        headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>>;
}

/// What the log step of a plugin sees of a finished exchange.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "read by plugins' log steps; no built-in plugin has one yet"
    )
)]
pub(crate) struct LogRecord {
    /// The status sent to the client.
    pub(crate) status: http::StatusCode,
    /// Time from the request head to the response head.
    pub(crate) elapsed: std::time::Duration,
}

/// When a plugin runs, before config order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
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
pub(crate) trait Plugin: Send + Sync + std::fmt::Debug {
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

    /// Before any plugin of the chain may answer: note what the response steps need whatever
    /// answers the request (`cors` notes an allowed origin, so a 429 carries its headers).
    fn observe(&self, _ctx: &mut RequestCtx, _head: &request::Parts) {}

    /// The request head, in chain order.
    fn on_request(
        &self,
        _ctx: &mut RequestCtx,
        _head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        Ok(Flow::Continue)
    }

    /// Whether (and how) it sees the request body; asked in chain order once every
    /// [`Plugin::on_request`] went on. A plugin keeps what it learnt from the head in a typed
    /// slot of the context ([`RequestCtx::slots`]).
    fn request_body(&self, _ctx: &mut RequestCtx, _head: &request::Parts) -> Option<BodyFilter> {
        None
    }

    /// Whether it has an [`Plugin::on_answer`] step; chains without such a plugin skip the
    /// step entirely.
    fn takes_answers(&self) -> bool {
        false
    }

    /// The answer as the route's action (or a plugin, or portico's own error) gave it,
    /// before any response step, last plugin first: returns it, or another answer in its
    /// place (`cache` tees a storable body into its store, turns an upstream 304 into the
    /// stored answer, and a failure into a stale one). Runs only when
    /// [`Plugin::takes_answers`].
    fn on_answer(
        &self,
        _ctx: &RequestCtx,
        answer: Result<http::Response<Body>, ProxyError>,
    ) -> Result<http::Response<Body>, ProxyError> {
        answer
    }

    /// The response head, last plugin first, on portico's own responses too.
    fn on_response(&self, _ctx: &RequestCtx, _head: &mut response::Parts) {}

    /// Whether (and how) it sees the response body; asked last plugin first, after every
    /// [`Plugin::on_response`].
    fn response_body(&self, _ctx: &RequestCtx, _head: &response::Parts) -> Option<BodyFilter> {
        None
    }

    /// [`Plugin::response_body`] for a plugin that also edits the head as it takes the body
    /// (`compression` sets `Content-Encoding` only once every plugin after it has had the
    /// body). What the chain calls; by default [`Plugin::response_body`].
    fn response_body_head(
        &self,
        ctx: &RequestCtx,
        head: &mut response::Parts,
    ) -> Option<BodyFilter> {
        self.response_body(ctx, head)
    }

    /// Once the response head has been sent on its way.
    fn log(&self, _ctx: &RequestCtx, _record: &LogRecord) {}

    /// For `explain`, before [`Plugin::on_request`] runs on the same request: what the plugin
    /// finds in it besides its verdict (the key a limit counts by, where a credential is
    /// read). Never a secret: names in `secrets` are shown without their values.
    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        _head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> Explained {
        Explained::Run(Vec::new())
    }
}

/// What `explain` learns from a plugin before its verdict.
#[derive(Debug)]
pub(crate) enum Explained {
    /// These notes; then the plugin's request step gives the verdict.
    Run(Vec<String>),
    /// The verdict cannot be known offline (keys behind a URL): these notes say why and what
    /// is known; the plugin has set on the context what would follow if the request passes.
    Offline(Vec<String>),
}

/// The index of plugin `name` in [`NAMES`], as [`RequestCtx::answered_by`] keeps it.
pub(crate) fn name_index(name: &str) -> Option<u8> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// The plugin that answered or refused the request itself, if one did.
pub(crate) fn answered_by(ctx: &RequestCtx) -> Option<&'static str> {
    ctx.answered_by
        .and_then(|i| NAMES.get(usize::from(i)))
        .copied()
}

/// Every plugin name the config accepts (`portico version` lists them; a test checks the
/// list against the config parser).
pub(crate) const NAMES: &[&str] = &[
    "request_headers",
    "response_headers",
    "key_auth",
    "acl",
    "rate_limit",
    "quota",
    "cors",
    "ip_restriction",
    "request_size_limit",
    "jwt",
    "oauth2_introspection",
    "basic_auth",
    "mtls_auth",
    "respond",
    "request_transformer",
    "response_transformer",
    "response_shape",
    "request_validator",
    "grpc_web",
    "forward_auth",
    "oidc",
    "cache",
    "compression",
];

/// What plugins are built with: the consumers, and metric families.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BuildEnv<'a> {
    /// API keys and groups.
    pub(crate) consumers: &'a Arc<auth::Consumers>,
    /// Metric families.
    pub(crate) metrics: &'a crate::observe::Metrics,
    /// The config file's folder, for relative paths.
    pub(crate) base: &'a std::path::Path,
    /// State kept across reloads, under this plugin's identity.
    pub(crate) state: crate::plugins::state::StateScope<'a>,
    /// The config's upstreams, for plugins that call one.
    pub(crate) upstreams: UpstreamLookup<'a>,
    /// `cluster.redis`, for limits of scope `cluster`.
    pub(crate) redis: Option<&'a Arc<cluster::Redis>>,
}

/// Builds with a fresh environment (no consumers, new metrics and state), for unit tests.
#[cfg(test)]
pub(crate) fn with_test_env<R>(build: impl FnOnce(BuildEnv<'_>) -> R) -> R {
    let metrics = crate::observe::Metrics::new();
    let states = state::PluginStates::default();
    let fresh = std::sync::Mutex::new(Vec::new());
    build(BuildEnv {
        consumers: &Arc::default(),
        metrics: &metrics,
        base: std::path::Path::new("."),
        state: state::StateScope::new(&states, &fresh),
        upstreams: UpstreamLookup(&|name| Err(format!("upstream `{name}` is not defined"))),
        redis: None,
    })
}

/// Why a plugin spec cannot be built; the message is shown at the spec's position.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// A header name that is not a token (RFC 9110 §5.1).
    #[error("invalid header name `{name}`")]
    HeaderName {
        /// The name as written.
        name: String,
        /// What `http` found.
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// A `request_headers` / `response_headers` value that is not a field value.
    #[error("invalid value for header `{name}`")]
    HeaderValue {
        /// The header the value is for.
        name: String,
        /// What `http` found.
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    /// A field value in `respond` or a transformer that is not a field value.
    #[error("invalid value for `{name}`")]
    Value {
        /// The field the value is for.
        name: String,
        /// What `http` found.
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    /// A `cors` origin without a scheme.
    #[error("invalid origin `{origin}`: expected like https://app.example.com")]
    Origin {
        /// The origin as written.
        origin: String,
    },
    /// A `cors` method or header list that does not make a field value.
    #[error("invalid header list")]
    HeaderList(#[source] http::header::InvalidHeaderValue),
    /// `cors.origins` is empty.
    #[error("cors.origins needs at least one origin")]
    NoOrigins,
    /// An `ip_restriction` block that is not `ADDR` or `ADDR/PREFIX`.
    #[error("invalid address block `{block}`: expected like 10.0.0.0/8")]
    AddressBlock {
        /// The block as written.
        block: String,
    },
    /// `rate_limit.limit` is 0.
    #[error("rate_limit.limit must be at least 1")]
    ZeroLimit,
    /// `rate_limit.window` is 0.
    #[error("rate_limit.window must be longer than 0")]
    ZeroWindow,
    /// `rate_limit.burst` of 0.
    #[error("rate_limit.burst is the bucket's capacity: at least 1")]
    ZeroBurst,
    /// `scope: cluster` without `cluster.redis`.
    #[error(
        "rate_limit scope `cluster` counts in Redis: set `cluster.redis` (url) at the top level"
    )]
    NoClusterRedis,
    /// `rate_limit.by` or `quota.by` is none of the known keys.
    #[error("by `{by}`: expected ip, consumer, route or header:NAME")]
    LimitKey {
        /// The key as written.
        by: String,
    },
    /// `quota.limit` is 0.
    #[error("quota.limit must be at least 1")]
    ZeroQuota,
    /// `quota.period` is not a whole number of seconds above 0.
    #[error("quota.period must be a whole number of seconds, at least 1s")]
    QuotaPeriod,
    /// `respond.status` is not a final status.
    #[error("respond.status must be between 200 and 599")]
    Status,
    /// A `response_transformer` that edits the query.
    #[error("a response has no query to edit")]
    ResponseQuery,
    /// A `jwt` key with algorithm `none`.
    #[error("`none` is not an accepted algorithm")]
    NoneAlgorithm,
    /// A `jwt` key algorithm that is not known.
    #[error("unknown JWT algorithm `{name}`")]
    Algorithm {
        /// The algorithm as written.
        name: String,
    },
    /// A `jwt` HMAC secret shorter than 16 bytes.
    #[error("an HMAC secret must have at least 16 bytes")]
    ShortSecret,
    /// A key file (or document) that cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file, resolved against the config's folder.
        path: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A public key file given for an HMAC algorithm.
    #[error("{alg:?} takes a `secret`, not a public key")]
    SecretOnly {
        /// The key's algorithm.
        alg: jsonwebtoken::Algorithm,
    },
    /// A PEM public key that does not fit its algorithm.
    #[error("unusable public key in {}: {source}", path.display())]
    PublicKey {
        /// The key file.
        path: std::path::PathBuf,
        /// What `jsonwebtoken` found.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A `jwt` key without the material its algorithm needs.
    #[error("a {alg:?} key needs {}", if *hmac { "a `secret`" } else { "a `public_key_file`" })]
    KeyMaterial {
        /// The key's algorithm.
        alg: jsonwebtoken::Algorithm,
        /// Whether the algorithm takes a secret.
        hmac: bool,
    },
    /// An inline JWKS that is not a key set.
    #[error("invalid inline JWKS: {0}")]
    InlineJwks(#[source] serde_json::Error),
    /// An inline JWKS key without a supported `alg`.
    #[error("every inline JWKS key needs a supported `alg`")]
    JwksAlgorithm,
    /// A `jwt` with nothing to check signatures with.
    #[error("jwt needs `keys` or a `jwks_url`")]
    NoKeys,
    /// A `request_validator` schema that is not a JSON Schema.
    #[error("invalid JSON Schema: {0}")]
    Schema(#[source] Box<jsonschema::ValidationError<'static>>),
    /// An OpenAPI document that is not YAML or JSON.
    #[error("{}:{}: {source}", path.display(), source.pos)]
    Document {
        /// The document.
        path: std::path::PathBuf,
        /// Where and why it does not parse.
        #[source]
        source: crate::config::node::ParseError,
    },
    /// A document without `openapi: 3...`.
    #[error("{} is not an OpenAPI 3 document", path.display())]
    NotOpenApi {
        /// The document.
        path: std::path::PathBuf,
    },
    /// An OpenAPI document without `paths`.
    #[error("the document has no `paths`")]
    NoPaths,
    /// An OpenAPI path template the router does not take.
    #[error("path `{template}`: {source}")]
    PathTemplate {
        /// The template as written.
        template: String,
        /// What the router found.
        #[source]
        source: matchit::InsertError,
    },
    /// A `request_validator` with nothing to check.
    #[error("request_validator needs `body_schema` or `openapi_file`")]
    NothingToValidate,
    /// A setting that is wrong, shown at its own position.
    #[error("{message}")]
    At {
        /// Where the setting was written.
        pos: crate::config::Pos,
        /// What is wrong with it.
        message: String,
    },
}

impl BuildError {
    /// The position of the setting the error is about, when it knows better than the
    /// plugin's.
    pub(crate) fn pos(&self) -> Option<crate::config::Pos> {
        match self {
            BuildError::At { pos, .. } => Some(*pos),
            _ => None,
        }
    }

    /// An invalid header name, kept with the text it was built from.
    pub(crate) fn header_name(name: &str, source: http::header::InvalidHeaderName) -> Self {
        BuildError::HeaderName {
            name: name.to_owned(),
            source,
        }
    }
}

/// Builds a plugin from its spec; the error is shown at the spec's position.
pub(crate) fn build(spec: &PluginSpec, env: BuildEnv<'_>) -> Result<Arc<dyn Plugin>, BuildError> {
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
        PluginSpec::Quota(spec) => Arc::new(quota::Quota::new(spec, env)?),
        PluginSpec::GrpcWeb(_) => Arc::new(grpc_web::GrpcWeb),
        PluginSpec::ForwardAuth(spec) => Arc::new(forward_auth::ForwardAuth::new(spec, env)?),
        PluginSpec::Cache(spec) => Arc::new(cache::Cache::new(spec, env)?),
        PluginSpec::Compression(spec) => Arc::new(compression::Compression::new(spec)?),
        PluginSpec::Cors(spec) => Arc::new(cors::Cors::new(spec)?),
        PluginSpec::IpRestriction(spec) => Arc::new(ip_restriction::IpRestriction::new(spec)?),
        PluginSpec::RequestSizeLimit(spec) => {
            Arc::new(request_size_limit::RequestSizeLimit(spec.max.0))
        }
        PluginSpec::Jwt(spec) => Arc::new(jwt::Jwt::new(spec, env)?),
        PluginSpec::Oauth2Introspection(spec) => {
            Arc::new(introspection::Introspection::new(spec, env)?)
        }
        PluginSpec::BasicAuth(spec) => Arc::new(basic_auth::BasicAuth::new(spec, env.consumers)),
        PluginSpec::MtlsAuth(spec) => Arc::new(mtls_auth::MtlsAuth::new(spec, env.consumers)),
        PluginSpec::Respond(spec) => Arc::new(respond::Mock::new(spec)?),
        PluginSpec::RequestTransformer(spec) => Arc::new(transform::RequestTransformer::new(spec)?),
        PluginSpec::ResponseTransformer(spec) => {
            Arc::new(transform::ResponseTransformer::new(spec)?)
        }
        PluginSpec::ResponseShape(spec) => Arc::new(shape::ResponseShape::new(spec)),
        PluginSpec::RequestValidator(spec) => {
            Arc::new(validate::RequestValidator::new(spec, env.base)?)
        }
        PluginSpec::Oidc(spec) => Arc::new(oidc::Oidc::new(spec, env)?),
    })
}

#[cfg(test)]
mod tests;

/// Whether a response is a Server-Sent Events stream (`text/event-stream`), which no plugin
/// buffers.
pub(crate) fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}
