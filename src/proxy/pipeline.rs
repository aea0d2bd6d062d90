//! The request pipeline, one call per stage:
//! `decode → route → request plugins → select → forward → response plugins → respond → log`.
//!
//! Every answer leaves through `exit`: the upstream's, a plugin's and portico's own errors
//! alike, so response plugins, `x-request-id`, metrics and the access log see them all.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};

use super::access;
use super::forward::{self, Hop};
use super::headers::{self, HopInfo, X_CLIENT_CERT_SAN, X_CLIENT_CERT_SUBJECT, X_REQUEST_ID};
use crate::admission::{Admission, InFlight};
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::observe::RouteMetrics;
use crate::observe::access_log::LogHandle;
use crate::plugins::auth::{X_CONSUMER_GROUPS, X_CONSUMER_NAME};
use crate::plugins::{BodyStep, LogRecord, PluginChain};
use crate::routing::{RequestView, normalize_host, path};
use crate::runtime::Shared;
use crate::runtime::{Action, Listener, ListenerRoute, Snapshot};

/// What the connection knows about where a request came from.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// The downstream peer (the one a trusted PROXY protocol header conveyed, if any).
    pub(crate) client: SocketAddr,
    /// The address the client connected to (likewise).
    pub(crate) local: SocketAddr,
    /// The listener's name.
    pub(crate) listener: Arc<str>,
    /// What the connection's byte scanner saw of request framing; none in process.
    pub(crate) framing: Option<Arc<dyn Framing>>,
    /// The client address as `X-Forwarded-For` writes it, made once per connection.
    pub(crate) client_value: HeaderValue,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The verified client certificate (mTLS), if any.
    pub(crate) client_cert: Option<Arc<ClientCert>>,
    /// The TLS session's version and SNI, on https listeners.
    pub(crate) tls: Option<Arc<TlsInfo>>,
    /// The server side of this connection's tunnels (its listener's drain, reloads).
    pub(crate) tunnels: Option<Arc<dyn super::tunnel::TunnelHost>>,
    /// The listener's admission state (per-address rates, overload); none in process.
    pub(crate) admission: Option<Arc<Admission>>,
}

/// What the access log tells of a connection's TLS session.
#[derive(Debug)]
pub(crate) struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub(crate) version: &'static str,
    /// The server name the client asked for, if it sent one.
    pub(crate) sni: Option<Box<str>>,
}

/// The connection's view of the raw request bytes, which hyper does not give the pipeline:
/// whether a head carried both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1).
pub(crate) trait Framing: Send + Sync + std::fmt::Debug {
    /// Claims one head that carried both.
    fn take_ambiguous(&self) -> bool;
}

/// A verified client certificate as the upstream sees it.
#[derive(Debug)]
pub(crate) struct ClientCert {
    /// `x-client-cert-subject`.
    pub(crate) subject: HeaderValue,
    /// `x-client-cert-san`: every SAN, comma-separated.
    pub(crate) sans: Option<HeaderValue>,
}

/// What the stages made of a request, and what the exit needs to finish the answer.
struct Served<'s> {
    result: Result<Response<Body>, ProxyError>,
    /// The chain whose response steps run: the route's, or the global plugins when no route
    /// was found.
    plugins: &'s PluginChain,
    metrics: Option<&'s RouteMetrics>,
}

impl<'s> Served<'s> {
    fn new(
        result: Result<Response<Body>, ProxyError>,
        plugins: &'s PluginChain,
        metrics: Option<&'s RouteMetrics>,
    ) -> Self {
        Served {
            result,
            plugins,
            metrics,
        }
    }
}

/// Serves one request; never fails (errors become JSON responses). Also returns the route's
/// stream limits when the answer's body is the upstream's, for the server to time it by.
///
/// The body is portico's own type, so the pipeline runs the same with a request read from
/// a socket ([`Body::stream`]) and with one made in process ([`Body::full`]).
pub(crate) async fn handle(
    shared: &Shared,
    conn: &ConnInfo,
    req: Request<Body>,
) -> (Response<Body>, Option<crate::ctx::StreamLimits>) {
    // This request keeps this config until it is done, whatever reloads happen meanwhile.
    let snap = shared.pin();
    let (mut head, mut body) = req.into_parts();
    let mut ctx = RequestCtx::new(
        headers::request_id(&head.headers),
        conn.client,
        Arc::clone(&conn.listener),
    );
    if let Some(tracer) = &shared.tracer {
        ctx.trace = Some(Box::new(tracer.begin(&head)));
    }
    let is_head = head.method == Method::HEAD;
    let grpc = super::grpc::call(&head.headers);
    let log_head = match shared.access_log.handle() {
        Some(log) => {
            let (taken, counted) = access::LogHead::take(&head, body);
            body = counted;
            // Boxed: the request future carries it across every stage.
            Some(Box::new((taken, log)))
        }
        None => None,
    };
    // The debug token is never forwarded, whether or not it is the right one.
    let debug = snap.debug.as_ref().is_some_and(|debug| {
        let asked = debug.asked(&head.headers);
        head.headers.remove(&debug.name);
        asked
    });
    let listener = snap.listener_at(&conn.listener, conn.local);
    let served = match listener {
        Some(listener) => serve(shared, conn, &snap, listener, &mut ctx, head, body).await,
        // The listener was removed by a reload; this connection is draining.
        None => Served::new(Err(ProxyError::NoRoute), &snap.global, None),
    };
    let plugins = served.plugins;
    let metrics = served.metrics;
    let mut response = exit(served, &ctx, listener, is_head, grpc).await;
    if let Some(header) = snap.debug.as_ref().filter(|_| debug) {
        debug_summary(&mut response, &header.name, &ctx, plugins);
    }
    let tail = log(
        shared,
        &ctx,
        plugins,
        metrics,
        log_head,
        conn.tls.as_deref(),
        response.status(),
    );
    let response = match grpc {
        // A gRPC call's outcome is in its trailers: its line is written when it ends.
        Some(_) => super::grpc::watch(response, shared, &ctx, tail),
        None => match tail {
            Some(tail) => access::at_end(response, tail),
            None => response,
        },
    };
    (response, ctx.stream)
}

/// Every stage up to the answer: decode, route, request plugins, then the route's action.
async fn serve<'s>(
    shared: &Shared,
    conn: &ConnInfo,
    snap: &'s Snapshot,
    listener: &'s Listener,
    ctx: &mut RequestCtx,
    mut head: http::request::Parts,
    body: Body,
) -> Served<'s> {
    let global = &snap.global;
    // admission: the client address's request rate, before anything is spent on the request
    if let (Some(per_ip), Some(admission)) = (&listener.limits.per_ip, &conn.admission)
        && let Err(err) = admission.request(conn.client.ip(), per_ip)
    {
        return Served::new(Err(err), global, None);
    }
    // decode
    let decoded = match decode_request(listener, conn, &mut head) {
        Ok(decoded) => decoded,
        Err(err) => return Served::new(Err(err), global, None),
    };
    // The client address, once: every later stage, the log and the upstream see this one.
    if let Some(trusted) = &listener.trusted_proxies {
        ctx.client = trusted.apply(conn.client, &mut head.headers);
    }
    let host_name = decoded
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .map(normalize_host)
        .unwrap_or_default();

    // Answers of the listener itself, before any route.
    if let Some(response) = acme_answer(shared, &head) {
        return Served::new(Ok(response), global, None);
    }
    if let Some((port, status)) = listener.redirect_https {
        // The client's own path (checked): the https side resolves it under the route's
        // path policy, which may keep `%2F`.
        let uri = decoded.raw.as_ref().unwrap_or(&head.uri);
        return Served::new(redirect_https(&host_name, uri, port, status), global, None);
    }

    // route
    let view = RequestView {
        client: ctx.client.ip(),
        host: &host_name,
        path: head.uri.path(),
        query: head.uri.query(),
        method: &head.method,
        headers: &head.headers,
    };
    let Some(ListenerRoute { route, metrics }) = listener.find(&view) else {
        // Global plugins still run: address rules and limits hold for unknown paths too.
        let result = match request_plugins(global, conn, None, ctx, &mut head, body).await {
            Ok(BodyStep::Respond(response)) => Ok(response),
            Ok(BodyStep::Continue(_)) => Err(ProxyError::NoRoute),
            Err(err) => Err(err),
        };
        return Served::new(result, global, None);
    };
    ctx.route = Some(Arc::clone(&route.name));
    let plugins = &route.plugins;
    // shed: a place in flight, held until the answer's head is ready
    let _in_flight = match shed(conn, listener, route) {
        Ok(in_flight) => in_flight,
        Err(wait) => match wait.await {
            Ok(in_flight) => Some(in_flight),
            Err(err) => return Served::new(Err(err), plugins, metrics.first()),
        },
    };
    if let Err(err) = apply_path_policy(
        listener,
        route,
        decoded.raw.as_ref(),
        &mut head,
        &host_name,
        ctx.client.ip(),
    ) {
        return Served::new(Err(err), plugins, metrics.first());
    }

    // request plugins
    let body = match request_plugins(plugins, conn, Some(route), ctx, &mut head, body).await {
        Ok(BodyStep::Continue(body)) => body,
        Ok(BodyStep::Respond(response)) => {
            return Served::new(Ok(response), plugins, metrics.first());
        }
        Err(err) => return Served::new(Err(err), plugins, metrics.first()),
    };
    set_consumer_headers(ctx, &mut head);

    // the route's action
    match &route.action {
        Action::Respond(respond) => {
            let response = respond.response(head.method == Method::HEAD);
            Served::new(Ok(response), plugins, metrics.first())
        }
        Action::Redirect(redirect) => {
            let location = redirect.location(&host_name, head.uri.path(), head.uri.query());
            let result = HeaderValue::from_str(&location)
                .map(|location| redirect_to(redirect.status, location))
                .map_err(|_| {
                    ProxyError::BadRequest("the redirect target is not a valid header value")
                });
            Served::new(result, plugins, metrics.first())
        }
        Action::Static(site) => {
            // Boxed: its state would otherwise be part of every request's future.
            let result = Box::pin(super::static_files::serve(
                site,
                &head,
                decoded.raw.as_ref(),
                &ctx.request_id,
            ))
            .await;
            Served::new(result, plugins, metrics.first())
        }
        Action::Aggregate(agg) => {
            let input = super::aggregate::Input {
                head: &head,
                ctx,
                client_value: &conn.client_value,
                scheme: conn.scheme,
                local: conn.local,
            };
            let result = Box::pin(super::aggregate::run(agg, input)).await;
            Served::new(result, plugins, metrics.first())
        }
        Action::Forward { arms, .. } => {
            let arm = route.action.pick_arm();
            let upstream = &arms[arm];
            ctx.upstream = Some(Arc::clone(&upstream.name));
            // select
            let result = match forward::select(upstream, ctx, &head) {
                Ok(first) => {
                    let hop = Hop {
                        client_value: &conn.client_value,
                        scheme: conn.scheme,
                        local: conn.local,
                        host: decoded.host,
                        info: decoded.hop,
                    };
                    // forward
                    match forward::forward(hop, ctx, route, upstream, first, head, body) {
                        Ok(mut tries) => {
                            if tries.upgrading() {
                                tries.tunnel(super::tunnel::Setup {
                                    host: conn.tunnels.clone(),
                                    listener: Arc::clone(&conn.listener),
                                    route: Arc::clone(&route.name),
                                    upstream: Arc::clone(&upstream.name),
                                    limits: route.stream,
                                    metrics: shared.metrics.tunnel(&route.name),
                                });
                            }
                            tries.run(ctx).await
                        }
                        Err(err) => Err(err),
                    }
                }
                Err(err) => Err(err),
            };
            Served::new(result, plugins, metrics.get(arm))
        }
    }
}

/// A wait for a place in flight, boxed: only requests that queue pay for it.
type Wait = std::pin::Pin<Box<dyn Future<Output = Result<InFlight, ProxyError>> + Send>>;

/// Stage `route`, its admission: a place in flight under the listener's `overload`, now or
/// after a wait. Answers portico makes itself (`respond` and `redirect` routes, such as a load
/// balancer's health check) are never shed.
fn shed(
    conn: &ConnInfo,
    listener: &Listener,
    route: &crate::runtime::Route,
) -> Result<Option<InFlight>, Wait> {
    let (Some(overload), Some(admission)) = (&listener.overload, &conn.admission) else {
        return Ok(None);
    };
    if matches!(route.action, Action::Respond(_) | Action::Redirect(_)) {
        return Ok(None);
    }
    match admission.admit(overload) {
        Some(in_flight) => Ok(Some(in_flight)),
        None => Err(Box::pin(Arc::clone(admission).queue(*overload))),
    }
}

/// What decoding found out about the request head.
struct Decoded {
    /// The `Host` header, or the URI's authority for HTTP/2 and absolute-form requests.
    host: Option<HeaderValue>,
    /// The hop-by-hop fields the client sent, already removed.
    hop: HopInfo,
    /// The client's target, when its path was not canonical.
    raw: Option<http::Uri>,
}

/// Stage `decode`: refuses what a proxy must not forward, puts the path in its canonical
/// form, and leaves only end-to-end fields of the client's, so that what portico adds later
/// (identity headers) cannot be removed through `Connection` (RFC 9110 §7.6.1).
fn decode_request(
    listener: &Listener,
    conn: &ConnInfo,
    head: &mut http::request::Parts,
) -> Result<Decoded, ProxyError> {
    if head.headers.contains_key(header::TRANSFER_ENCODING)
        && conn.framing.as_ref().is_some_and(|f| f.take_ambiguous())
    {
        return Err(ProxyError::AmbiguousFraming);
    }
    // WebSocket over HTTP/2 (RFC 8441) is routed as a GET of its path.
    let h2_websocket = super::tunnel::h2::accept(head);
    let host = decode(listener, head)?;
    let raw = canonical_path(head)?;
    let wants_upgrade =
        head.version == Version::HTTP_11 && head.headers.contains_key(header::UPGRADE);
    let mut hop = headers::strip_hop_by_hop(&mut head.headers, wants_upgrade);
    if h2_websocket {
        super::tunnel::h2::to_upgrade(head, &mut hop);
    }
    set_client_cert_headers(conn, head);
    Ok(Decoded { host, hop, raw })
}

/// Replaces the request path by its canonical form (routing/path.rs), the one routing,
/// plugins and, by default, the upstream see; the query is kept as it came. Returns the
/// client's own target when it differed, for the route's path policy and `redirect_https`.
fn canonical_path(head: &mut http::request::Parts) -> Result<Option<http::Uri>, ProxyError> {
    let normal =
        path::normalize(head.uri.path()).map_err(|err| ProxyError::BadRequest(err.reason()))?;
    let std::borrow::Cow::Owned(normal) = normal else {
        // Already canonical: the common case costs nothing.
        return Ok(None);
    };
    // A cheap clone (shared bytes).
    let raw = head.uri.clone();
    set_path(&mut head.uri, &normal)?;
    Ok(Some(raw))
}

/// Replaces the path of `uri`, keeping its scheme, authority and query.
fn set_path(uri: &mut http::Uri, path: &str) -> Result<(), ProxyError> {
    const INVALID: ProxyError = ProxyError::BadRequest("the request target is invalid");
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| INVALID)?);
    *uri = http::Uri::from_parts(parts).map_err(|_| INVALID)?;
    Ok(())
}

/// Stage `route`, second half: the route's path policy may refuse the client's path, or
/// forward a form that keeps `%2F` or `;params` (routing/path.rs). Only a path that was not
/// canonical as it came has anything to keep.
fn apply_path_policy(
    listener: &Listener,
    route: &Arc<crate::runtime::Route>,
    raw: Option<&http::Uri>,
    head: &mut http::request::Parts,
    host: &str,
    client: std::net::IpAddr,
) -> Result<(), ProxyError> {
    let Some(raw) = raw else { return Ok(()) };
    let view = RequestView {
        client,
        host,
        path: head.uri.path(),
        query: head.uri.query(),
        method: &head.method,
        headers: &head.headers,
    };
    let same_route = |kept: &str| {
        let kept = RequestView { path: kept, ..view };
        listener
            .find(&kept)
            .is_some_and(|e| Arc::ptr_eq(&e.route, route))
    };
    let kept = route
        .path_policy
        .apply(raw.path(), same_route)
        .map_err(|err| ProxyError::BadRequest(err.reason()))?;
    match kept {
        Some(kept) => set_path(&mut head.uri, &kept),
        None => Ok(()),
    }
}

/// Identity headers are portico's to set: a client's own are never trusted.
fn set_client_cert_headers(conn: &ConnInfo, head: &mut http::request::Parts) {
    head.headers.remove(&X_CLIENT_CERT_SUBJECT);
    head.headers.remove(&X_CLIENT_CERT_SAN);
    if let Some(cert) = &conn.client_cert {
        head.headers
            .insert(&X_CLIENT_CERT_SUBJECT, cert.subject.clone());
        if let Some(sans) = &cert.sans {
            head.headers.insert(&X_CLIENT_CERT_SAN, sans.clone());
        }
    }
}

/// The consumer a plugin found, for the upstream; a client's own copies never reach it.
fn set_consumer_headers(ctx: &RequestCtx, head: &mut http::request::Parts) {
    head.headers.remove(&X_CONSUMER_NAME);
    head.headers.remove(&X_CONSUMER_GROUPS);
    if let Some(consumer) = &ctx.consumer {
        head.headers
            .insert(&X_CONSUMER_NAME, consumer.name_value.clone());
        if let Some(groups) = &consumer.groups_value {
            head.headers.insert(&X_CONSUMER_GROUPS, groups.clone());
        }
    }
}

/// Stage `request plugins`: the head steps, then the body steps.
async fn request_plugins(
    plugins: &PluginChain,
    conn: &ConnInfo,
    route: Option<&Arc<crate::runtime::Route>>,
    ctx: &mut RequestCtx,
    head: &mut http::request::Parts,
    body: Body,
) -> Result<BodyStep, ProxyError> {
    if plugins.is_empty() {
        return Ok(BodyStep::Continue(body));
    }
    // Boxed: the steps' state would otherwise be part of every request's future, plugins or
    // not, and copied with it; a route with plugins pays one allocation instead.
    Box::pin(async {
        let start = std::time::Instant::now();
        let step = async {
            if let Some(response) = plugins
                .on_request(ctx, head, &super::subrequest::Calls { conn, route })
                .await?
            {
                return Ok(BodyStep::Respond(response));
            }
            plugins.request_body(ctx, head, body).await
        }
        .await;
        if let Some(trace) = &ctx.trace {
            trace_plugins(trace, "plugins request", start, plugins, ctx, step.is_err());
        }
        step
    })
    .await
}

/// An ACME HTTP-01 validation, answered before routing and redirects (RFC 8555 §8.3).
fn acme_answer(shared: &Shared, head: &http::request::Parts) -> Option<Response<Body>> {
    let token = head
        .uri
        .path()
        .strip_prefix(crate::tls::acme::HTTP01_PREFIX)
        .and_then(|token| shared.acme.http01(token))?;
    let mut response = Response::new(Body::full(token));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(response)
}

/// `redirect_https`: everything moves to https, same host (without its port), path and query.
fn redirect_https(
    host_name: &str,
    uri: &http::Uri,
    port: u16,
    status: StatusCode,
) -> Result<Response<Body>, ProxyError> {
    let target = crate::runtime::https_location(port, host_name, uri.path(), uri.query());
    match HeaderValue::from_str(&target) {
        Ok(location) if !host_name.is_empty() => Ok(redirect_to(status, location)),
        _ => Err(ProxyError::BadRequest("no host to redirect to")),
    }
}

fn redirect_to(status: StatusCode, location: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// Stages `response plugins` and `respond`: the one way out for every answer. Errors become
/// their JSON response first (for a gRPC call, portico's own answers become gRPC statuses),
/// so response plugins run on them too.
async fn exit(
    served: Served<'_>,
    ctx: &RequestCtx,
    listener: Option<&Listener>,
    is_head: bool,
    grpc: Option<super::grpc::Call>,
) -> Response<Body> {
    let Served {
        result, plugins, ..
    } = served;
    let result = plugins.on_answer(ctx, result);
    let (mut response, close) = match result {
        Ok(response) => (response, false),
        Err(err) => (error_answer(&err, ctx), err.closes_connection()),
    };
    if let Some(call) = grpc {
        response = super::grpc::answer(response, call);
    }
    if !plugins.is_empty() {
        // Boxed, like the request steps: their state stays out of every request's future.
        response = Box::pin(response_plugins(plugins, ctx, response, is_head, grpc)).await;
    }
    let headers = response.headers_mut();
    headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some(hsts) = listener.and_then(|l| l.hsts.as_ref()) {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The response steps of a route's plugins, timed as a span when the request is traced.
async fn response_plugins(
    plugins: &PluginChain,
    ctx: &RequestCtx,
    mut response: Response<Body>,
    is_head: bool,
    grpc: Option<super::grpc::Call>,
) -> Response<Body> {
    let start = std::time::Instant::now();
    let (mut parts, body) = response.into_parts();
    plugins.on_response(ctx, &mut parts);
    response = if is_head || !may_have_body(parts.status) {
        Response::from_parts(parts, body)
    } else {
        match plugins.response_body(ctx, parts, body).await {
            Ok(response) => response,
            Err(err) => match grpc {
                Some(call) => super::grpc::answer(error_answer(&err, ctx), call),
                None => error_answer(&err, ctx),
            },
        }
    };
    if let Some(trace) = &ctx.trace {
        let failed = response.status().is_server_error();
        trace_plugins(trace, "plugins response", start, plugins, ctx, failed);
    }
    response
}

/// Whether a response with this status carries a body at all (RFC 9110 §6.4.1).
fn may_have_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// The JSON answer for an error, logging server-side failures.
fn error_answer(err: &ProxyError, ctx: &RequestCtx) -> Response<Body> {
    if err.status().is_server_error() {
        tracing::warn!(
            request_id = ?ctx.request_id,
            error = %err,
            cause = ?std::error::Error::source(err),
            "request failed"
        );
    }
    err.to_response(&ctx.request_id)
}

/// A span of one plugin phase, naming the plugins in force.
fn trace_plugins(
    trace: &crate::trace::RequestTrace,
    name: &'static str,
    start: std::time::Instant,
    plugins: &PluginChain,
    ctx: &RequestCtx,
    failed: bool,
) {
    let names: Vec<&str> = plugins.names(ctx).collect();
    let attributes = vec![("portico.plugins", crate::trace::Value::Str(names.join(",")))];
    let id = crate::trace::span_id();
    trace.span(
        name,
        crate::trace::Kind::Internal,
        start,
        id,
        attributes,
        failed,
    );
}

/// The debug header's value: `route=NAME; upstream=NAME; target=ADDR; attempts=N;
/// plugins=A,B; answered_by=P; consumer=C; head_ms=X; upstream_ms=Y` (parts that do not
/// apply left out).
fn debug_summary(
    response: &mut Response<Body>,
    name: &http::HeaderName,
    ctx: &RequestCtx,
    plugins: &PluginChain,
) {
    use std::fmt::Write;
    let mut out = String::with_capacity(160);
    let mut part = |key: &str, value: &dyn std::fmt::Display| {
        if !out.is_empty() {
            out.push_str("; ");
        }
        let _ = write!(out, "{key}={value}");
    };
    part("route", &ctx.route.as_deref().unwrap_or("-"));
    if let Some(upstream) = &ctx.upstream {
        part("upstream", upstream);
    }
    if let Some(target) = &ctx.target {
        part("target", target);
    }
    part("attempts", &ctx.attempts);
    let names: Vec<&str> = plugins.names(ctx).collect();
    if !names.is_empty() {
        part("plugins", &names.join(","));
    }
    if let Some(plugin) = crate::plugins::answered_by(ctx) {
        part("answered_by", &plugin);
    }
    if let Some(consumer) = &ctx.consumer {
        part("consumer", &consumer.name);
    }
    if ctx.budget_spent {
        part("retry_budget_spent", &true);
    }
    part("head_ms", &access::duration_ms(ctx.start.elapsed()));
    if ctx.attempts > 0 {
        part("upstream_ms", &access::duration_ms(ctx.upstream_time()));
    }
    // Names from the config are header-safe in practice; a value that is not is left out.
    if let Ok(value) = HeaderValue::from_str(&out) {
        response.headers_mut().insert(name.clone(), value);
    }
}

/// Stage `log`: metrics, the plugins' log steps, and the access-log line's fields, whose
/// line is written when the answer ends.
#[allow(clippy::too_many_arguments)]
fn log(
    shared: &Shared,
    ctx: &RequestCtx,
    plugins: &PluginChain,
    metrics: Option<&RouteMetrics>,
    log_head: Option<Box<(access::LogHead, LogHandle)>>,
    tls: Option<&TlsInfo>,
    status: StatusCode,
) -> Option<access::Tail> {
    let elapsed = ctx.start.elapsed();
    match metrics {
        Some(m) => m.record(status.as_u16(), elapsed),
        None => shared.metrics.unrouted(&ctx.listener, status.as_u16()),
    }
    if let Some(plugin) = crate::plugins::answered_by(ctx) {
        let route = ctx.route.as_deref().unwrap_or("");
        shared.metrics.plugin_answer(route, plugin, status.as_u16());
    }
    if !plugins.is_empty() {
        plugins.log(ctx, &LogRecord { status, elapsed });
    }
    if let (Some(tracer), Some(trace)) = (&shared.tracer, &ctx.trace) {
        use crate::trace::Value;
        let mut attributes = vec![
            (
                "http.response.status_code",
                Value::Int(i64::from(status.as_u16())),
            ),
            ("portico.listener", Value::Str(ctx.listener.to_string())),
        ];
        if let Some(route) = &ctx.route {
            attributes.push(("http.route", Value::Str(route.to_string())));
        }
        if let Some(plugin) = crate::plugins::answered_by(ctx) {
            attributes.push(("portico.answered_by", Value::Str(plugin.to_owned())));
        }
        tracer.end(trace, "request", attributes, status.is_server_error());
    }
    let (head, handle) = *log_head?;
    let fields = access::fields(ctx, &head, tls, status.as_u16());
    Some(access::Tail::new(fields, handle, ctx.start, &head))
}

/// Checks the request head for what a proxy must refuse; returns the host (the `Host` header,
/// or the URI's authority for HTTP/2 and absolute-form requests).
pub(crate) fn decode(
    listener: &Listener,
    head: &http::request::Parts,
) -> Result<Option<HeaderValue>, ProxyError> {
    if head.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    let limits = &listener.limits;
    let target_len = head.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > limits.max_uri_length {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_uri_length,
        });
    }
    // One pass over the fields: size, Host count, Transfer-Encoding.
    let mut head_size = target_len;
    let mut host_header = None;
    let mut hosts = 0;
    let mut te_fields = 0;
    let mut te_chunked = true;
    for (name, value) in &head.headers {
        head_size += name.as_str().len() + value.len() + 4;
        if name == header::HOST {
            hosts += 1;
            host_header = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            te_fields += 1;
            te_chunked = value.as_bytes().eq_ignore_ascii_case(b"chunked");
        }
    }
    if head_size > limits.max_header_size {
        return Err(ProxyError::HeadersTooLarge {
            limit: limits.max_header_size,
        });
    }
    // HTTP/1 only: HTTP/2 clients may split `Cookie` into one field per cookie (RFC 9113
    // §8.2.3), and its header block is bounded by size alone.
    if head.version < Version::HTTP_2 && head.headers.len() > crate::error::MAX_HEADER_FIELDS {
        return Err(ProxyError::TooManyHeaders {
            limit: crate::error::MAX_HEADER_FIELDS,
        });
    }
    // RFC 9112 §6.1: only `chunked` is forwarded faithfully; anything else is refused.
    if te_fields > 1 || (te_fields == 1 && !te_chunked) {
        return Err(ProxyError::BadRequest("unsupported transfer-encoding"));
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let authority = head.uri.authority().map(|a| a.as_str());
    match (head.version, host_header, authority) {
        // RFC 9112 §3.2.2: an absolute-form target and a different Host is an attack or a bug.
        (_, Some(h), Some(a)) => {
            if normalize_host(h.to_str().unwrap_or("")) != normalize_host(a) {
                return Err(ProxyError::BadRequest(
                    "the Host header does not match the request target",
                ));
            }
            Ok(Some(h.clone()))
        }
        (_, Some(h), None) => Ok(Some(h.clone())),
        (_, None, Some(a)) => Ok(HeaderValue::from_str(a).ok()),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400.
        (Version::HTTP_11, None, None) => Err(ProxyError::BadRequest("missing Host header")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests;
