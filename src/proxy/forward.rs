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

use super::body::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{X_REQUEST_ID, append_via, set_forwarded, strip_hop_by_hop};
use crate::balance::PickCtx;
use crate::health::Outcome;
use crate::pool::{Checkin, Conn, TargetState};
use crate::runtime::{RetryPolicy, Route, Upstream};

/// Where the request goes on the upstream side.
#[derive(Debug)]
pub struct Target<'a> {
    /// The host the client asked for (kept for the upstream).
    pub host: Option<HeaderValue>,
    /// The normalised (and rewritten) path.
    pub path: &'a str,
    /// The query, untouched.
    pub query: Option<&'a str>,
    /// The client's target, reused (without copying) when `path` is unchanged.
    pub original: Option<&'a PathAndQuery>,
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
    Other,
}

/// The sticky cookie value for a target: a stable hash of its address.
fn sticky_value(target: &TargetState) -> String {
    format!(
        "{:016x}",
        crate::balance::hash::hash64(target.address.as_bytes())
    )
}

/// Forwards one request to `upstream` and returns the response to send back.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    client_value: &HeaderValue,
    scheme: &'static str,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    route: &Route,
    mut head: http::request::Parts,
    body: Body,
    target: Target<'_>,
) -> Result<Response<Body>, ProxyError> {
    // Circuit breaker: refuse rather than queue when the upstream is at its limit.
    if let Some(max) = upstream.max_requests
        && upstream.state.inflight.load(Ordering::Relaxed) >= max
    {
        return Err(ProxyError::CircuitOpen {
            upstream: upstream.name.to_string(),
            limit: "max_requests",
        });
    }
    let _upstream_inflight = Inflight::new(&upstream.state.inflight);
    upstream.state.count_request();

    // What the balancer may look at, before the head is rewritten for the hop.
    let pick_ctx_client = ctx.client.ip();
    let sticky_target = upstream.sticky.as_ref().and_then(|(cookie, _)| {
        let value = crate::balance::hash::cookie(&head.headers, cookie)?;
        let wanted = u64::from_str_radix(value, 16).ok()?;
        upstream.targets.iter().position(|t| {
            t.health.available() && crate::balance::hash::hash64(t.address.as_bytes()) == wanted
        })
    });
    let first = {
        let pick = PickCtx {
            client: pick_ctx_client,
            headers: &head.headers,
            path: target.path,
            query: target.query,
        };
        match sticky_target {
            Some(t) => Some(t),
            None => upstream.balancer.select(&upstream.targets, &pick, &[]),
        }
    };
    let first = first.ok_or_else(|| ProxyError::NoTarget {
        upstream: upstream.name.to_string(),
    })?;

    // The head for this hop.
    let client_version = head.version;
    let wants_upgrade =
        client_version == Version::HTTP_11 && head.headers.contains_key(header::UPGRADE);
    let hop = strip_hop_by_hop(&mut head.headers, wants_upgrade);
    // Room for the fields added below, so the map grows once rather than field by field.
    head.headers.reserve(6);
    let upgrade = wants_upgrade && hop.connection_upgrade;
    if upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if wants_upgrade {
        // Upgrade without `Connection: upgrade` is not an upgrade (RFC 9110 §7.8).
        head.headers.remove(header::UPGRADE);
    }
    if hop.te_trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(
        &mut head.headers,
        client_value,
        scheme,
        target.host.as_ref(),
    );
    append_via(&mut head.headers, client_version);
    head.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    let path_and_query = match (target.original, target.query) {
        (Some(original), _) if original.path() == target.path => Ok(original.clone()),
        (_, Some(q)) => PathAndQuery::try_from(format!("{}?{q}", target.path)),
        (_, None) => PathAndQuery::try_from(target.path),
    }
    .map_err(|_| ProxyError::BadRequest("the request target is invalid"))?;
    let client_upgrade = if upgrade {
        head.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    head.extensions.clear();

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
            target.host.clone(),
        );
        tokio::spawn(send_mirror(Arc::clone(mirror), copy));
    }
    let timeout = route.timeout;
    let retry = route.retry.as_ref();
    // Any method may be retried when the try never reached a target; only idempotent ones
    // (or all, with `non_idempotent`) after a response, a reset or a timeout.
    let idempotent = retry.is_some_and(|r| r.non_idempotent) || idempotent(&head.method);
    let attempts = retry.map_or(1, |r| r.attempts);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let saved = (retry.is_some() && replayable && idempotent)
        .then(|| (head.method.clone(), head.headers.clone()));
    let mut request = Some(Request::from_parts(head, body));
    let mut tried: Vec<usize> = Vec::new();
    let mut index = first;
    let mut last_error = None;

    for attempt in 0..attempts {
        if attempt > 0 {
            let pick = PickCtx {
                client: pick_ctx_client,
                headers: &HeaderMap::new(),
                path: target.path,
                query: target.query,
            };
            // A target not tried yet if there is one, else any (a lone target gets retried).
            let next = upstream
                .balancer
                .select(&upstream.targets, &pick, &tried)
                .or_else(|| upstream.balancer.select(&upstream.targets, &pick, &[]));
            let Some(next) = next else {
                break;
            };
            index = next;
        }
        tried.push(index);
        let state = &upstream.targets[index];
        ctx.target = Some(Arc::clone(state));

        let mut req = match request.take() {
            Some(r) => r,
            None => match &saved {
                Some((method, headers)) => {
                    let mut r = Request::new(Body::Empty);
                    *r.method_mut() = method.clone();
                    *r.headers_mut() = headers.clone();
                    r
                }
                None => break,
            },
        };
        prepare(
            &mut req,
            upstream,
            state,
            &path_and_query,
            target.host.as_ref(),
        )?;

        // Each try gets the per-try timeout, within what is left of the route's.
        let per_try = retry.and_then(|r| r.per_try_timeout);
        let limit = match (per_try, deadline) {
            (Some(p), Some(d)) => {
                Some(p.min(d.saturating_duration_since(tokio::time::Instant::now())))
            }
            (Some(p), None) => Some(p),
            (None, Some(d)) => Some(d.saturating_duration_since(tokio::time::Instant::now())),
            (None, None) => None,
        };
        let started = tokio::time::Instant::now();
        let outcome = {
            let _inflight = Inflight::new(&state.inflight);
            if let Err(err) = connection_slot(upstream, state).await {
                Err((err, Some(req)))
            } else {
                let exchange = exchange(state, upstream, req);
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
        };
        let more = attempt + 1 < attempts;
        match outcome {
            Ok((response, checkin)) => {
                state.health.observe_latency(started.elapsed());
                let status = response.status().as_u16();
                let failed = status >= 500;
                record(upstream, index, failed);
                let retry_status =
                    idempotent && retry.is_some_and(|r| r.on_status.contains(&status));
                if retry_status
                    && more
                    && saved.is_some()
                    && take_retry(upstream, retry, attempt).await
                {
                    tracing::debug!(upstream = %upstream.name, status, "retrying");
                    last_error = None;
                    drop((response, checkin));
                    continue;
                }
                return respond(
                    upstream,
                    state,
                    sticky_target != Some(index),
                    response,
                    checkin,
                    client_upgrade,
                );
            }
            Err((err, unsent)) => {
                let condition = condition(&err);
                if condition != Condition::Other {
                    record(upstream, index, true);
                }
                let wanted = retry.is_some_and(|r| match condition {
                    Condition::ConnectFailure => r.on_connect_failure,
                    Condition::Reset => idempotent && r.on_reset,
                    Condition::Timeout => idempotent && r.on_timeout,
                    Condition::Other => false,
                });
                // A request that never left can be sent again whatever its body.
                request = unsent;
                let can_resend = request.is_some() || saved.is_some();
                if wanted && more && can_resend && take_retry(upstream, retry, attempt).await {
                    tracing::debug!(upstream = %upstream.name, error = %err, "retrying");
                    last_error = Some(err);
                    continue;
                }
                return Err(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProxyError::NoTarget {
        upstream: upstream.name.to_string(),
    }))
}

/// Sends a mirrored copy and discards the answer; failures are only logged at debug level.
async fn send_mirror(
    upstream: Arc<Upstream>,
    (method, headers, path_and_query, host): (
        http::Method,
        HeaderMap,
        PathAndQuery,
        Option<HeaderValue>,
    ),
) {
    let pick = PickCtx {
        client: std::net::IpAddr::from([0, 0, 0, 0]),
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
    let exchange = exchange(state, &upstream, request);
    match tokio::time::timeout(Duration::from_secs(30), exchange).await {
        Ok(Ok((response, checkin))) => {
            let body = match checkin {
                Some(checkin) => Body::Pooled {
                    inner: response.into_body(),
                    checkin: Some(checkin),
                },
                None => Body::stream(response.into_body()),
            };
            // Drained so the connection can go back to its pool.
            let _ = http_body_util::BodyExt::collect(body).await;
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
    let waiters = upstream.max_pending.unwrap_or(0);
    let _pending = Inflight::new(&upstream.state.pending);
    if upstream.state.pending.load(Ordering::Relaxed) > waiters {
        return Err(open_circuit("max_pending"));
    }
    let deadline = tokio::time::Instant::now() + upstream.pool.connect_timeout;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if !full() {
            return Ok(());
        }
    }
    Err(open_circuit("max_connections"))
}

/// Waits the backoff and takes a retry from the upstream's budget.
async fn take_retry(upstream: &Upstream, retry: Option<&RetryPolicy>, attempt: u32) -> bool {
    let Some(retry) = retry else { return false };
    if !upstream.state.take_retry(retry.budget.0, retry.budget.1) {
        tracing::debug!(upstream = %upstream.name, "retry budget spent");
        return false;
    }
    let (base, max) = retry.backoff;
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

/// Feeds passive outlier detection.
fn record(upstream: &Upstream, index: usize, failed: bool) {
    let Some(policy) = &upstream.passive else {
        return;
    };
    let outcome = if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    let target = &upstream.targets[index];
    let total = upstream.targets.len();
    let may_eject = || {
        let now = crate::health::now_ms();
        let ejected = upstream
            .targets
            .iter()
            .filter(|t| t.health.ejected(now))
            .count();
        (ejected + 1) * 100 <= total * policy.max_ejected_percent as usize
    };
    if target.health.record(outcome, policy, may_eject) {
        tracing::warn!(
            upstream = %upstream.name,
            target = %target.address,
            for_ms = target.health.ejected_for_ms(),
            "target ejected after failures"
        );
    }
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

/// Turns the upstream's response into the one sent back: tunnels upgrades, strips hop-by-hop
/// fields, sets a sticky cookie, and returns the connection to its pool when the body ends.
fn respond(
    upstream: &Upstream,
    state: &TargetState,
    set_sticky: bool,
    mut response: Response<Incoming>,
    checkin: Option<Checkin>,
    client_upgrade: Option<OnUpgrade>,
) -> Result<Response<Body>, ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 the client did not ask for cannot be relayed.
            return Err(ProxyError::BadRequest(
                "the upstream switched protocols unasked",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(bridge(client_upgrade, upstream_upgrade));
        strip_hop_by_hop(response.headers_mut(), true);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        append_via(response.headers_mut(), Version::HTTP_11);
        // The connection now belongs to the tunnel; never pool it.
        drop(checkin);
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
    let (mut parts, incoming) = response.into_parts();
    parts.version = Version::HTTP_11;
    let body = match checkin {
        Some(checkin) if incoming.is_end_stream() => {
            checkin.release();
            Body::stream(incoming)
        }
        Some(checkin) => Body::Pooled {
            inner: incoming,
            checkin: Some(checkin),
        },
        None => Body::stream(incoming),
    };
    Ok(Response::from_parts(parts, body))
}

/// Sends the request on a pooled connection; a pooled connection that turns out closed before
/// the request was written is replaced by a fresh one, once.
async fn exchange(
    state: &Arc<TargetState>,
    upstream: &Upstream,
    request: Request<Body>,
) -> Result<(Response<Incoming>, Option<Checkin>), (ProxyError, Option<Request<Body>>)> {
    let name = &*upstream.name;
    let mut request = request;
    for attempt in 0..2 {
        let conn = match state
            .connect(name, upstream.http2, upstream.pool, upstream.tls.as_ref())
            .await
        {
            Ok(conn) => conn,
            // Nothing was sent: the caller may send this request elsewhere.
            Err(err) => return Err((err, Some(request))),
        };
        match conn {
            Conn::H1(mut checkin) => {
                let Some(sender) = checkin.sender() else {
                    let err = ProxyError::NoTarget {
                        upstream: name.to_owned(),
                    };
                    return Err((err, Some(request)));
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, Some(checkin))),
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
                    .map(|response| (response, None))
                    .map_err(|err| (upstream_error(name, err), None));
            }
        }
    }
    let err = ProxyError::NoTarget {
        upstream: name.to_owned(),
    };
    Err((err, None))
}

fn upstream_error(upstream: &str, source: hyper::Error) -> ProxyError {
    // A failing request body is the client's doing, not the upstream's.
    if source.is_user() {
        let mut cause = std::error::Error::source(&source);
        while let Some(err) = cause {
            if let Some(too_large) = err.downcast_ref::<super::body::TooLarge>() {
                return ProxyError::PayloadTooLarge { limit: too_large.0 };
            }
            cause = err.source();
        }
        return ProxyError::ClientBody;
    }
    ProxyError::Upstream {
        upstream: upstream.to_owned(),
        source,
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
