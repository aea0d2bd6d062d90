//! Stages `select` and `forward`: pick a target, rewrite the head for the hop, exchange it
//! over a pooled connection, and bring the response head back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers::{HopInfo, X_REQUEST_ID, append_via, set_forwarded, strip_hop_by_hop};
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::health::Outcome;
use crate::pool::breaker::Slot;
use crate::pool::{Checkin, Conn, TargetOutcome, TargetState};
use crate::runtime::{RetryPolicy, Route, StreamLimits, Upstream};
use crate::view::RequestView;

/// What the hop to the upstream needs from the downstream side.
#[derive(Debug)]
pub(crate) struct Hop<'a> {
    /// The client address as `X-Forwarded-For` writes it.
    pub(crate) client_value: &'a HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) scheme: &'static str,
    /// The address the client connected to (for an upstream's PROXY protocol header).
    pub(crate) local: std::net::SocketAddr,
    /// The host the client asked for (kept for the upstream).
    pub(crate) host: Option<HeaderValue>,
    /// The hop-by-hop fields the client sent (already removed from the head).
    pub(crate) info: HopInfo,
}

/// The target chosen for the first try.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selection {
    index: usize,
    /// Chosen by the sticky cookie (so no new cookie is set).
    sticky: bool,
}

struct Inflight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Inflight<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Inflight(count)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Request methods that are safe to send twice (RFC 9110 §9.2.2).
fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Why one try failed, as `retry.on` names it.
fn condition(err: &ProxyError) -> Condition {
    match err {
        ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => Condition::ConnectFailure,
        ProxyError::Timeout { .. } => Condition::Timeout,
        ProxyError::Upstream { .. } => Condition::Reset,
        _ => Condition::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    ConnectFailure,
    Reset,
    Timeout,
    /// A response status the policy lists.
    Status,
    Other,
}

/// The sticky cookie value for a target: a stable hash of its address.
fn sticky_value(target: &TargetState) -> String {
    format!(
        "{:016x}",
        crate::balance::hash::hash64(target.address.as_bytes())
    )
}

/// Stage `select`: the sticky cookie's target when it is available, else the balancer's pick.
pub(crate) fn select(
    upstream: &Upstream,
    ctx: &RequestCtx,
    head: &http::request::Parts,
) -> Result<Selection, ProxyError> {
    let sticky = upstream.sticky.as_ref().and_then(|(cookie, _)| {
        let value = crate::balance::hash::cookie(&head.headers, cookie)?;
        let wanted = u64::from_str_radix(value, 16).ok()?;
        upstream.targets.iter().position(|t| {
            t.health.available() && crate::balance::hash::hash64(t.address.as_bytes()) == wanted
        })
    });
    if let Some(index) = sticky {
        return Ok(Selection {
            index,
            sticky: true,
        });
    }
    let pick = RequestView {
        client: ctx.client.ip(),
        host: "",
        method: &head.method,
        headers: &head.headers,
        path: head.uri.path(),
        query: head.uri.query(),
    };
    match upstream.balancer.select(&upstream.targets, &pick, &[]) {
        Some(index) => Ok(Selection {
            index,
            sticky: false,
        }),
        None => Err(ProxyError::NoTarget {
            upstream: upstream.name.to_string(),
        }),
    }
}

/// Stage `forward`: the circuit breaker, the head for the hop, then the tries.
///
/// The breaker and the head are settled here, without waiting; the caller then awaits
/// [`Tries::run`]. Not one async function for both: every level of nested futures is copied
/// whole when it starts, and this one would carry the request twice.
pub(crate) fn forward<'a>(
    hop: Hop<'_>,
    ctx: &RequestCtx,
    route: &'a Route,
    upstream: &'a Arc<Upstream>,
    first: Selection,
    mut head: http::request::Parts,
    body: Body,
) -> Result<Tries<'a>, ProxyError> {
    let slot = breaker(upstream)?;
    let peers = (ctx.client, hop.local);
    let h2_accept = head
        .extensions
        .remove::<super::tunnel::h2::H2WebSocket>()
        .map(|ws| ws.accept);
    let client_upgrade = prepare_head(&hop, ctx, &mut head);
    let asked_upgrade = client_upgrade
        .is_some()
        .then(|| head.headers.get(header::UPGRADE).cloned())
        .flatten();
    let path_and_query = upstream_target(route, &head)?;

    // A body can be sent once: with one, only tries that never reached a target are retried.
    let replayable = body.is_end_stream();
    if let Some((mirror, share)) = &route.mirror
        && replayable
        && crate::balance::chance(*share)
    {
        // A copy of the head, on its own task: the primary request never waits for it.
        let copy = (
            head.method.clone(),
            head.headers.clone(),
            path_and_query.clone(),
            hop.host.clone(),
        );
        tokio::spawn(send_mirror(Arc::clone(mirror), copy, peers));
    }
    let deadline = deadline(route, &mut head.headers);
    let policy = route.retry.as_ref().unwrap_or(&DEFAULT_RETRY);
    // Any method may be retried when the try never reached a target; only idempotent ones
    // (or all, with `non_idempotent`) after a response, a reset or a timeout.
    let idempotent = policy.non_idempotent || idempotent(&head.method);
    let saved = (policy.after_sending() && replayable && idempotent)
        .then(|| (head.method.clone(), head.headers.clone()));
    Ok(Tries {
        upstream,
        policy,
        path_and_query,
        host: hop.host,
        peers,
        idempotent,
        deadline,
        saved,
        first,
        request: Request::from_parts(head, body),
        client_upgrade,
        asked_upgrade,
        h2_accept,
        stream: route.stream,
        tunnel: None,
        _slot: slot,
    })
}

/// When the request must have its response head: after the route's `timeout`; for a gRPC
/// call, by its `grpc-timeout` if that comes first. A gRPC call's upstream is told the
/// deadline as its `grpc-timeout`.
fn deadline(route: &Route, headers: &mut HeaderMap) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now();
    let route_deadline = route.timeout.map(|t| now + t);
    if super::grpc::call(headers).is_none() {
        return route_deadline;
    }
    let asked = super::grpc::timeout(headers).map(|t| now + t);
    let deadline = match (route_deadline, asked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match deadline {
        Some(at) => {
            headers.insert(
                &super::grpc::GRPC_TIMEOUT,
                super::grpc::timeout_value(at - now),
            );
        }
        // An unparsable value is not passed on as if it were a deadline.
        None => {
            headers.remove(&super::grpc::GRPC_TIMEOUT);
        }
    }
    deadline
}

/// The circuit breaker on requests: refuse rather than queue when the upstream is at its
/// limit. The slot is taken atomically (a burst cannot overshoot `max_requests`) and held
/// until the response head is back.
fn breaker(upstream: &Upstream) -> Result<Slot<'_>, ProxyError> {
    let slot = upstream
        .state
        .try_request(upstream.max_requests)
        .ok_or_else(|| ProxyError::CircuitOpen {
            upstream: upstream.name.to_string(),
            limit: "max_requests",
        })?;
    upstream.state.count_request();
    Ok(slot)
}

/// The head for the hop: the client's hop-by-hop fields are gone already (decode removed
/// them); what this hop needs is added. Returns the client side of an upgrade, if one is
/// asked for.
fn prepare_head(
    hop: &Hop<'_>,
    ctx: &RequestCtx,
    head: &mut http::request::Parts,
) -> Option<OnUpgrade> {
    let client_version = head.version;
    // Room for the fields added below, so the map grows once rather than field by field.
    head.headers.reserve(6);
    let wants_upgrade = head.headers.contains_key(header::UPGRADE);
    let upgrade = wants_upgrade && hop.info.connection_upgrade;
    if upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if wants_upgrade {
        // Upgrade without `Connection: upgrade` is not an upgrade (RFC 9110 §7.8).
        head.headers.remove(header::UPGRADE);
    }
    if hop.info.te_trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(
        &mut head.headers,
        hop.client_value,
        hop.scheme,
        hop.host.as_ref(),
    );
    append_via(&mut head.headers, client_version);
    head.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    let client_upgrade = if upgrade {
        head.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    head.extensions.clear();
    client_upgrade
}

/// The path and query the upstream gets: the canonical path after the route's rewrite, and
/// the query as plugins left it. Without a rewrite the client's target is reused, uncopied.
fn upstream_target(route: &Route, head: &http::request::Parts) -> Result<PathAndQuery, ProxyError> {
    let invalid = |_| ProxyError::BadRequest("the request target is invalid");
    let original = head.uri.path_and_query();
    let Some(rewrite) = &route.rewrite else {
        return Ok(original
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    };
    let path = rewrite.apply(head.uri.path());
    match (original, head.uri.query()) {
        (Some(original), _) if original.path() == path => Ok(original.clone()),
        (_, Some(q)) => PathAndQuery::try_from(format!("{path}?{q}")).map_err(invalid),
        (_, None) => PathAndQuery::try_from(&*path).map_err(invalid),
    }
}

/// One request's way through an upstream's targets: what every try needs.
pub(crate) struct Tries<'a> {
    upstream: &'a Arc<Upstream>,
    policy: &'a RetryPolicy,
    path_and_query: PathAndQuery,
    host: Option<HeaderValue>,
    /// The client's address (the balancer's on a retry) and the one it connected to (for a
    /// PROXY protocol header).
    peers: (std::net::SocketAddr, std::net::SocketAddr),
    /// Retries after a response, a reset or a timeout are allowed.
    idempotent: bool,
    /// The route's timeout, across every try.
    deadline: Option<tokio::time::Instant>,
    /// Method and fields kept to send a body-less request again once it has left.
    saved: Option<(http::Method, HeaderMap)>,
    /// The target of the first try.
    first: Selection,
    /// The request, ready for the hop.
    request: Request<Body>,
    /// The client side of an upgrade, when one is asked for.
    client_upgrade: Option<OnUpgrade>,
    /// The protocols the client asked to upgrade to.
    asked_upgrade: Option<HeaderValue>,
    /// For WebSocket over HTTP/2: the `Sec-WebSocket-Accept` the upstream must answer.
    h2_accept: Option<HeaderValue>,
    /// The route's limits on response bodies and tunnels.
    stream: StreamLimits,
    /// What a tunnel needs, for an upgrade (boxed: most requests have none).
    tunnel: Option<Box<super::tunnel::Setup>>,
    /// The circuit breaker's request slot, held until the response head is back.
    _slot: Slot<'a>,
}

/// The retry policy of a route without `retry:`.
static DEFAULT_RETRY: RetryPolicy = RetryPolicy::DEFAULT;

/// Most tries of one request (`retry.attempts` is capped to this at compile time).
const MAX_TRIES: usize = 10;

impl Tries<'_> {
    /// Whether the request asks for an upgrade the upstream may accept.
    pub(crate) fn upgrading(&self) -> bool {
        self.client_upgrade.is_some()
    }

    /// What the tunnel needs if the upstream accepts the upgrade.
    pub(crate) fn tunnel(&mut self, setup: super::tunnel::Setup) {
        self.tunnel = Some(Box::new(setup));
    }

    /// The retry loop: each try goes to a target not tried yet if there is one.
    pub(crate) async fn run(mut self, ctx: &mut RequestCtx) -> Result<Response<Body>, ProxyError> {
        let first = self.first;
        let request = std::mem::replace(&mut self.request, Request::new(Body::Empty));
        let client_upgrade = self.client_upgrade.take();
        let upstream = self.upstream;
        let attempts = (self.policy.attempts as usize).clamp(1, MAX_TRIES);
        // No allocation for the bookkeeping: at most MAX_TRIES targets are tried.
        let mut tried = [0usize; MAX_TRIES];
        let mut index = first.index;
        let mut pending = Some(request);
        let mut last_error = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                match self.next_target(&tried[..attempt]) {
                    Some(next) => index = next,
                    None => break,
                }
            }
            tried[attempt] = index;
            let state = &upstream.targets[index];
            ctx.target = Some(Arc::clone(&state.address));
            ctx.attempts += 1;
            let Some(mut request) = pending.take().or_else(|| self.replay()) else {
                break;
            };
            prepare(
                &mut request,
                upstream,
                state,
                &self.path_and_query,
                self.host.as_ref(),
            )?;
            // The try's own span: its id is the parent the target sees.
            let span = ctx.trace.as_ref().map(|trace| {
                let id = crate::trace::span_id();
                let headers = request.headers_mut();
                headers.insert(&crate::trace::TRACEPARENT, trace.header(id));
                if let Some(state) = &trace.state {
                    headers.insert("tracestate", state.clone());
                }
                (id, std::time::Instant::now())
            });
            let started = tokio::time::Instant::now();
            let more = attempt + 1 < attempts;
            let tried = self.attempt(state, request).await;
            let took = started.elapsed();
            ctx.upstream_us += u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            if let (Some(trace), Some((id, start))) = (&ctx.trace, span) {
                use crate::trace::Value;
                let mut attributes = vec![
                    ("server.address", Value::Str(state.address.to_string())),
                    ("portico.upstream", Value::Str(upstream.name.to_string())),
                    ("portico.attempt", Value::Int(attempt as i64 + 1)),
                ];
                let failed = match &tried {
                    Ok((response, _)) => {
                        let status = response.status().as_u16();
                        attributes.push(("http.response.status_code", Value::Int(status.into())));
                        status >= 500
                    }
                    Err((err, _)) => {
                        attributes.push(("error.type", Value::Str(err.to_string())));
                        true
                    }
                };
                let kind = crate::trace::Kind::Client;
                trace.span("upstream attempt", kind, start, id, attributes, failed);
            }
            match tried {
                Ok((response, upstream_upgrade)) => {
                    state.health.observe_latency(took);
                    let status = response.status().as_u16();
                    state
                        .outcomes
                        .inc(TargetOutcome::of_status(status) as usize);
                    record(upstream, index, Observed::Answered { status });
                    let retry_status = self.idempotent && self.policy.on_status.contains(&status);
                    if retry_status && more && self.saved.is_some() {
                        if Box::pin(self.take_retry(Condition::Status, attempt)).await {
                            tracing::debug!(upstream = %upstream.name, status, "retrying");
                            last_error = None;
                            continue;
                        }
                        ctx.budget_spent = true;
                    }
                    let upgrade = Upgrade {
                        client: client_upgrade,
                        asked: self.asked_upgrade.take(),
                        h2_accept: self.h2_accept.take(),
                        tunnel: self.tunnel.take(),
                    };
                    // The server side times the body by the route's limits once the head
                    // is out.
                    ctx.stream = Some(self.stream);
                    return respond(
                        upstream,
                        state,
                        !(first.sticky && index == first.index),
                        response,
                        upstream_upgrade,
                        upgrade,
                    );
                }
                Err((err, unsent)) => {
                    let condition = condition(&err);
                    let outcome = match condition {
                        Condition::ConnectFailure => TargetOutcome::ConnectFailure,
                        Condition::Timeout => TargetOutcome::Timeout,
                        Condition::Reset | Condition::Status | Condition::Other => {
                            TargetOutcome::Failed
                        }
                    };
                    state.outcomes.inc(outcome as usize);
                    match condition {
                        Condition::ConnectFailure => {
                            record(upstream, index, Observed::NoConnection)
                        }
                        Condition::Reset | Condition::Timeout => {
                            record(upstream, index, Observed::Broke)
                        }
                        Condition::Status | Condition::Other => {}
                    }
                    // A request that never left can be sent again whatever its body.
                    pending = unsent;
                    let can_resend = pending.is_some() || self.saved.is_some();
                    if !(self.wants(condition) && more && can_resend) {
                        return Err(err);
                    }
                    if !Box::pin(self.take_retry(condition, attempt)).await {
                        ctx.budget_spent = true;
                        return Err(ProxyError::BudgetSpent(Box::new(err)));
                    }
                    tracing::debug!(upstream = %upstream.name, error = %err, "retrying");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ProxyError::NoTarget {
            upstream: upstream.name.to_string(),
        }))
    }

    /// A target not tried yet if there is one, else any (a lone target gets retried).
    fn next_target(&self, tried: &[usize]) -> Option<usize> {
        let pick = RequestView {
            client: self.peers.0.ip(),
            host: "",
            method: &http::Method::GET,
            headers: &EMPTY_HEADERS,
            path: self.path_and_query.path(),
            query: self.path_and_query.query(),
        };
        let upstream = self.upstream;
        upstream
            .balancer
            .select(&upstream.targets, &pick, tried)
            .or_else(|| upstream.balancer.select(&upstream.targets, &pick, &[]))
    }

    /// The request again, from the saved method and fields (only body-less requests).
    fn replay(&self) -> Option<Request<Body>> {
        let (method, headers) = self.saved.as_ref()?;
        let mut request = Request::new(Body::Empty);
        *request.method_mut() = method.clone();
        *request.headers_mut() = headers.clone();
        Some(request)
    }

    /// Whether the policy retries after this kind of failure.
    fn wants(&self, condition: Condition) -> bool {
        let policy = self.policy;
        match condition {
            Condition::ConnectFailure => policy.on_connect_failure,
            Condition::Reset => self.idempotent && policy.on_reset,
            Condition::Timeout => self.idempotent && policy.on_timeout,
            Condition::Status | Condition::Other => false,
        }
    }

    /// One try: a connection slot, then the exchange, within the per-try timeout and what is
    /// left of the route's.
    async fn attempt(&self, state: &Arc<TargetState>, request: Request<Body>) -> Tried {
        let upstream = self.upstream;
        let _inflight = Inflight::new(&state.inflight);
        // Boxed: the wait is rare (only at `max_connections`), and its state would otherwise
        // be part of every request's future.
        if upstream.max_connections.is_some()
            && let Err(err) = Box::pin(connection_slot(upstream, state)).await
        {
            return Err((err, Some(request)));
        }
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let limit = match (self.policy.per_try_timeout, left) {
            (Some(p), Some(left)) => Some(p.min(left)),
            (p, left) => p.or(left),
        };
        let exchange = exchange(state, upstream, request, self.peers);
        match limit {
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(result) => result,
                Err(_) => Err((
                    ProxyError::Timeout {
                        upstream: upstream.name.to_string(),
                        timeout: limit,
                    },
                    None,
                )),
            },
            None => exchange.await,
        }
    }

    /// Waits the backoff and takes a retry from the upstream's budget. A try that never
    /// connected sent nothing and loaded no target, so it is not counted against the budget:
    /// the budget bounds the retries that add load to live targets.
    async fn take_retry(&self, condition: Condition, attempt: usize) -> bool {
        let (percent, min) = self.policy.budget;
        if condition != Condition::ConnectFailure && !self.upstream.state.take_retry(percent, min) {
            tracing::debug!(upstream = %self.upstream.name, "retry budget spent");
            return false;
        }
        let (base, max) = self.policy.backoff;
        if !max.is_zero() {
            // Full jitter: a random wait up to the capped exponential step.
            let cap = base
                .saturating_mul(1 << attempt.min(8))
                .min(max)
                .as_micros() as u64;
            let wait = crate::balance::random_u64() % cap.max(1);
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        true
    }
}

/// What one try came to: the response (its body returns the connection to its pool) and, for
/// a 101, the upstream's side of the upgrade.
type Tried = Result<(Response<Body>, Option<OnUpgrade>), (ProxyError, Option<Request<Body>>)>;

/// Headers the balancer sees on a retry: the request's are gone with it.
static EMPTY_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

/// Sends a mirrored copy and discards the answer; failures are only logged at debug level.
async fn send_mirror(
    upstream: Arc<Upstream>,
    (method, headers, path_and_query, host): (
        http::Method,
        HeaderMap,
        PathAndQuery,
        Option<HeaderValue>,
    ),
    peers: (std::net::SocketAddr, std::net::SocketAddr),
) {
    let pick = RequestView {
        client: std::net::IpAddr::from([0, 0, 0, 0]),
        host: "",
        method: &http::Method::GET,
        headers: &headers,
        path: path_and_query.path(),
        query: path_and_query.query(),
    };
    let Some(index) = upstream.balancer.select(&upstream.targets, &pick, &[]) else {
        return;
    };
    let state = &upstream.targets[index];
    let mut request = Request::new(Body::Empty);
    *request.method_mut() = method;
    *request.headers_mut() = headers;
    if prepare(
        &mut request,
        &upstream,
        state,
        &path_and_query,
        host.as_ref(),
    )
    .is_err()
    {
        return;
    }
    let exchange = exchange(state, &upstream, request, peers);
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok((response, _))) => {
            // Drained so the connection can go back to its pool.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        }
        Ok(Err((err, _))) => {
            tracing::debug!(upstream = %upstream.name, error = %err, "mirror failed")
        }
        Err(_) => tracing::debug!(upstream = %upstream.name, "mirror timed out"),
    }
}

/// Circuit breaker on connections: with `max_connections` open and none idle, a request waits
/// (at most `max_pending` of them, each up to the connect timeout) for one to free up.
async fn connection_slot(upstream: &Upstream, state: &TargetState) -> Result<(), ProxyError> {
    let Some(max) = upstream.max_connections else {
        return Ok(());
    };
    let full = || {
        let open: usize = upstream
            .targets
            .iter()
            .map(|t| t.open.load(Ordering::Relaxed))
            .sum();
        open >= max && state.idle_count() == 0
    };
    if !full() {
        return Ok(());
    }
    let open_circuit = |limit| ProxyError::CircuitOpen {
        upstream: upstream.name.to_string(),
        limit,
    };
    let Some(_pending) = upstream
        .state
        .try_pending(upstream.max_pending.unwrap_or(0))
    else {
        return Err(open_circuit("max_pending"));
    };
    // Woken when a connection of the upstream is checked in or closes; no polling.
    let deadline = tokio::time::Instant::now() + upstream.pool.connect_timeout;
    if upstream.state.wait_for_connection(deadline, full).await {
        return Ok(());
    }
    Err(open_circuit("max_connections"))
}

/// What a try told about its target, for passive outlier detection.
#[derive(Debug, Clone, Copy)]
enum Observed {
    /// It answered with this status.
    Answered { status: u16 },
    /// No connection could be made.
    NoConnection,
    /// The exchange broke or timed out.
    Broke,
}

/// Feeds passive outlier detection.
fn record(upstream: &Upstream, index: usize, observed: Observed) {
    let Some(policy) = &upstream.passive else {
        return;
    };
    let target = &upstream.targets[index];
    let outcome = match observed {
        // The default policy only counts targets that cannot be reached; an answer of any
        // status shows it is there. Most answers find nothing to reset: no write then.
        Observed::Answered { .. } if policy.connect_only && target.health.clean() => return,
        Observed::Answered { .. } if policy.connect_only => Outcome::Success,
        Observed::Broke if policy.connect_only => return,
        Observed::Answered { status } if status < 500 => Outcome::Success,
        Observed::Answered { .. } | Observed::Broke | Observed::NoConnection => Outcome::Failure,
    };
    upstream.record_outcome(target, policy, outcome);
}

/// Sets the version, URI and Host of a request for one target.
fn prepare(
    req: &mut Request<Body>,
    upstream: &Upstream,
    state: &TargetState,
    path_and_query: &PathAndQuery,
    host: Option<&HeaderValue>,
) -> Result<(), ProxyError> {
    if upstream.http2 {
        *req.version_mut() = Version::HTTP_2;
        let authority = host.and_then(|h| h.to_str().ok()).unwrap_or(&state.address);
        *req.uri_mut() = Uri::builder()
            .scheme(if upstream.tls.is_some() {
                "https"
            } else {
                "http"
            })
            .authority(authority)
            .path_and_query(path_and_query.clone())
            .build()
            .map_err(|_| ProxyError::BadRequest("the Host header is not a valid authority"))?;
        req.headers_mut().remove(header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = Uri::from(path_and_query.clone());
        if !req.headers().contains_key(header::HOST) {
            let host = match host {
                Some(h) => h.clone(),
                None => HeaderValue::from_str(&state.address)
                    .map_err(|_| ProxyError::BadRequest("no Host to send upstream"))?,
            };
            req.headers_mut().insert(header::HOST, host);
        }
    }
    Ok(())
}

/// The client's side of an upgrade it asked for.
struct Upgrade {
    client: Option<OnUpgrade>,
    /// The `Upgrade` the client sent.
    asked: Option<HeaderValue>,
    /// For WebSocket over HTTP/2: the `Sec-WebSocket-Accept` expected.
    h2_accept: Option<HeaderValue>,
    tunnel: Option<Box<super::tunnel::Setup>>,
}

/// Turns the upstream's response into the one sent back: tunnels upgrades, strips hop-by-hop
/// fields, sets a sticky cookie, and returns the connection to its pool when the body ends.
fn respond(
    upstream: &Upstream,
    state: &TargetState,
    set_sticky: bool,
    mut response: Response<Body>,
    upstream_upgrade: Option<OnUpgrade>,
    upgrade: Upgrade,
) -> Result<Response<Body>, ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(asked), Some(upstream_upgrade)) =
            (upgrade.client, upgrade.asked, upstream_upgrade)
        else {
            // A 101 the client did not ask for cannot be relayed.
            return Err(ProxyError::BadUpgrade {
                upstream: upstream.name.to_string(),
            });
        };
        let answered = response.headers().get(header::UPGRADE);
        if !super::tunnel::upgrade_matches(&asked, answered) {
            // Never a tunnel to a protocol the client did not ask for; the connection is
            // dropped with the response.
            return Err(ProxyError::BadUpgrade {
                upstream: upstream.name.to_string(),
            });
        }
        if let Some(accept) = &upgrade.h2_accept
            && response.headers().get(header::SEC_WEBSOCKET_ACCEPT) != Some(accept)
        {
            return Err(ProxyError::BadUpgrade {
                upstream: upstream.name.to_string(),
            });
        }
        let websocket = super::tunnel::is_websocket(answered);
        match upgrade.tunnel {
            Some(setup) => {
                tokio::spawn(super::tunnel::run(
                    *setup,
                    client_upgrade,
                    upstream_upgrade,
                    websocket,
                ));
            }
            None => {
                tokio::spawn(bridge(client_upgrade, upstream_upgrade));
            }
        }
        let h2 = upgrade.h2_accept.is_some();
        strip_hop_by_hop(response.headers_mut(), !h2);
        if h2 {
            // RFC 8441 §5: the HTTP/2 client is answered 200; the accept value was this hop's.
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().remove(header::SEC_WEBSOCKET_ACCEPT);
        } else {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        append_via(response.headers_mut(), Version::HTTP_11);
        // The connection now belongs to the tunnel (it was never pooled again).
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::Empty));
    }

    let upstream_version = response.version();
    strip_hop_by_hop(response.headers_mut(), false);
    append_via(response.headers_mut(), upstream_version);
    if set_sticky && let Some((cookie, ttl)) = &upstream.sticky {
        let value = format!(
            "{cookie}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            sticky_value(state),
            ttl.as_secs()
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    *response.version_mut() = Version::HTTP_11;
    Ok(response)
}

/// hyper's response as the one passed on: its body returns the connection with `checkin`
/// when it ends (at once when it has none). A 101's connection belongs to the tunnel and is
/// never pooled: its upstream side comes back with it.
fn hyper_response(
    mut response: Response<Incoming>,
    checkin: Option<Checkin>,
) -> (Response<Body>, Option<OnUpgrade>) {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        return (Response::from_parts(parts, Body::Empty), Some(upgraded));
    }
    let (parts, incoming) = response.into_parts();
    let body = match checkin {
        Some(checkin) if incoming.is_end_stream() => {
            checkin.release();
            Body::stream(incoming)
        }
        Some(checkin) => Body::pooled(incoming, checkin),
        None => Body::stream(incoming),
    };
    (Response::from_parts(parts, body), None)
}

/// Sends the request on a pooled connection; a pooled connection that turns out closed before
/// the request was written is replaced by a fresh one, once.
async fn exchange(
    state: &Arc<TargetState>,
    upstream: &Upstream,
    request: Request<Body>,
    (client, local): (std::net::SocketAddr, std::net::SocketAddr),
) -> Tried {
    let name = &*upstream.name;
    // Connections that carry a client's PROXY header are that client's alone.
    let proxy = upstream
        .proxy_protocol
        .map(|version| crate::pool::ProxyHeader {
            version,
            client,
            local,
        });
    let mut request = request;
    for attempt in 0..2 {
        let conn = match state
            .connect(upstream.http2, upstream.pool, upstream.tls.as_ref(), proxy)
            .await
            .map_err(|err| connect_error(name, err))
        {
            Ok(conn) => conn,
            // Nothing was sent: the caller may send this request elsewhere.
            Err(err) => return Err((err, Some(request))),
        };
        match conn {
            Conn::H1(mut checkin) => {
                // An upgrade goes through hyper's client, which hands over the connection.
                let upgrade = request.headers().contains_key(header::UPGRADE);
                if !upgrade && let Some(conn) = checkin.take_raw() {
                    let sent = match crate::pool::h1::send(conn, checkin, request) {
                        Ok(sent) => sent,
                        Err(failed) => match *failed {
                            (err, Some(unsent)) if attempt == 0 => {
                                tracing::debug!(error = %err, "pooled upstream connection closed");
                                request = unsent;
                                continue;
                            }
                            (err, unsent) => return Err((h1_error(name, err), unsent)),
                        },
                    };
                    return match sent.await {
                        Ok(response) => Ok((response, None)),
                        Err(err) => Err((h1_error(name, err), None)),
                    };
                }
                // Boxed: rare, and its handshake state would be part of every request's future.
                if let Err(err) = Box::pin(checkin.hyper()).await {
                    return Err((connect_error(name, err), Some(request)));
                }
                let Some(sender) = checkin.sender() else {
                    let err = ProxyError::NoTarget {
                        upstream: name.to_owned(),
                    };
                    return Err((err, Some(request)));
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok(hyper_response(response, Some(checkin))),
                    Err(mut err) => match err.take_message() {
                        Some(unsent) if attempt == 0 => request = unsent,
                        unsent => return Err((upstream_error(name, err.into_error()), unsent)),
                    },
                }
            }
            Conn::H2(mut sender) => {
                return sender
                    .send_request(request)
                    .await
                    .map(|response| hyper_response(response, None))
                    .map_err(|err| (upstream_error(name, err), None));
            }
        }
    }
    let err = ProxyError::NoTarget {
        upstream: name.to_owned(),
    };
    Err((err, None))
}

/// The pool's failure, as the client's error.
fn connect_error(upstream: &str, err: crate::pool::ConnectError) -> ProxyError {
    use crate::pool::ConnectError;
    let upstream = upstream.to_owned();
    match err {
        ConnectError::NoAddress => ProxyError::NoTarget { upstream },
        ConnectError::Connect { target, source } => ProxyError::Connect {
            upstream,
            target,
            source,
        },
        ConnectError::Timeout { target } => ProxyError::ConnectTimeout { upstream, target },
        ConnectError::Handshake(source) => ProxyError::Upstream {
            upstream,
            source: Box::new(source),
        },
    }
}

fn upstream_error(upstream: &str, source: hyper::Error) -> ProxyError {
    // A failing request body is the client's doing, not the upstream's.
    if source.is_user() {
        let mut cause = std::error::Error::source(&source);
        while let Some(err) = cause {
            if let Some(too_large) = err.downcast_ref::<crate::body::TooLarge>() {
                return ProxyError::PayloadTooLarge { limit: too_large.0 };
            }
            cause = err.source();
        }
        return ProxyError::ClientBody;
    }
    ProxyError::Upstream {
        upstream: upstream.to_owned(),
        source: Box::new(source),
    }
}

/// portico's own client's failure, as the client's error: a failing request body is the
/// client's doing, as with hyper's.
fn h1_error(upstream: &str, err: crate::pool::h1::Error) -> ProxyError {
    use crate::pool::h1::Error;
    match err {
        Error::Body(source) => match source.downcast_ref::<crate::body::TooLarge>() {
            Some(too_large) => ProxyError::PayloadTooLarge { limit: too_large.0 },
            None => ProxyError::ClientBody,
        },
        Error::BodyLength => ProxyError::ClientBody,
        err => ProxyError::Upstream {
            upstream: upstream.to_owned(),
            source: Box::new(err),
        },
    }
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes.
async fn bridge(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    match (client, upstream) {
        (Ok(client), Ok(upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %err, "upgraded connection ended");
            }
        }
        (Err(err), _) | (_, Err(err)) => tracing::debug!(error = %err, "upgrade failed"),
    }
}
