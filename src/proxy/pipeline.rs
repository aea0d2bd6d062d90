//! The request pipeline, one call per stage:
//! `decode → route → on_request plugins → select → forward → on_response plugins → respond → log`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;

use super::body::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::forward;
use super::headers::{self, X_CLIENT_CERT_SAN, X_CLIENT_CERT_SUBJECT, X_REQUEST_ID};
use crate::observe::RouteMetrics;
use crate::plugins::auth::{X_CONSUMER_GROUPS, X_CONSUMER_NAME};
use crate::routing::{RequestView, normalize_host, path};
use crate::runtime::{Action, Listener, ListenerRoute};
use crate::server::Shared;

/// What the connection knows about where a request came from.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The downstream peer.
    pub client: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// State shared with the connection's I/O.
    pub conn: Arc<crate::server::conn::ConnShared>,
    /// The client address as `X-Forwarded-For` writes it, made once per connection.
    pub client_value: HeaderValue,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The verified client certificate (mTLS), if any.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// A verified client certificate as the upstream sees it.
#[derive(Debug)]
pub struct ClientCert {
    /// `x-client-cert-subject`.
    pub subject: HeaderValue,
    /// `x-client-cert-san`: every SAN, comma-separated.
    pub sans: Option<HeaderValue>,
}

/// Serves one request; never fails (errors become JSON responses).
pub async fn handle(shared: &Shared, conn: &ConnInfo, req: Request<Incoming>) -> Response<Body> {
    // This request keeps this config until it is done, whatever reloads happen meanwhile.
    let snap = shared.snapshot.load_full();
    let (head, body) = req.into_parts();
    let mut ctx = RequestCtx {
        request_id: headers::request_id(&head.headers),
        client: conn.client,
        start: Instant::now(),
        listener: Arc::clone(&conn.listener),
        route: None,
        upstream: None,
        target: None,
        consumer: None,
        cors_origin: None,
        body_limit: None,
        rate_limit: None,
        request_json: None,
        response_json: None,
        body_check: None,
    };
    let method = head.method.clone();
    let version = head.version;
    let log_path = shared
        .access_log
        .enabled()
        .then(|| head.uri.path().to_owned());

    let listener = snap.listener(&conn.listener);
    let acme_token = head
        .uri
        .path()
        .strip_prefix(crate::tls::acme::HTTP01_PREFIX)
        .and_then(|token| shared.acme.http01(token));
    let outcome = match listener {
        // An ACME HTTP-01 validation, answered before routing and redirects (RFC 8555 §8.3).
        Some(_) if acme_token.is_some() => {
            let mut response = Response::new(Body::full(acme_token.unwrap_or_default()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            (Ok(response), None)
        }
        Some(listener) => run(conn, listener, &mut ctx, head, body).await,
        // The listener was removed by a reload; this connection is draining.
        None => (Err(ProxyError::NoRoute), None),
    };
    let (mut response, metrics) = finish(outcome, &ctx);
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, ctx.request_id.clone());
    if let Some(hsts) = listener.and_then(|l| l.hsts.as_ref()) {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let status = response.status().as_u16();
    let elapsed = ctx.start.elapsed();
    match metrics {
        Some(m) => m.record(status, elapsed),
        None => shared.metrics.unrouted(&conn.listener, status),
    }
    if let Some(path) = log_path {
        shared
            .access_log
            .write(access_line(&ctx, &method, version, &path, status, elapsed));
    }
    response
}

type Outcome<'a> = (Result<Response<Body>, ProxyError>, Option<&'a RouteMetrics>);

/// Turns an error into its JSON response, logging server-side failures.
fn finish<'a>(
    outcome: Outcome<'a>,
    ctx: &RequestCtx,
) -> (Response<Body>, Option<&'a RouteMetrics>) {
    let (result, metrics) = outcome;
    let response = result.unwrap_or_else(|err| {
        if err.status().is_server_error() {
            tracing::warn!(
                request_id = ?ctx.request_id,
                error = %err,
                cause = ?std::error::Error::source(&err),
                "request failed"
            );
        }
        let mut response = err.into_response(&ctx.request_id);
        if err.closes_connection() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    });
    (response, metrics)
}

async fn run<'s>(
    conn: &ConnInfo,
    listener: &'s Listener,
    ctx: &mut RequestCtx,
    mut head: http::request::Parts,
    body: Incoming,
) -> Outcome<'s> {
    // decode
    if head.headers.contains_key(header::TRANSFER_ENCODING) && conn.conn.take_ambiguous() {
        return (Err(ProxyError::AmbiguousFraming), None);
    }
    let host = match decode(listener, &head) {
        Ok(host) => host,
        Err(err) => return (Err(err), None),
    };
    // A cheap clone (shared bytes), so the normalised path can borrow it while `head` moves on.
    let uri = head.uri.clone();
    let normal = match path::normalize(uri.path()) {
        Ok(p) => p,
        Err(err) => return (Err(ProxyError::BadRequest(err.reason())), None),
    };
    let host_name = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
    let host_name = normalize_host(host_name);

    if let Some((port, status)) = listener.redirect_https {
        // Everything moves to https: same host (without its port), path and query.
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        // The client's own path (checked above): the https side resolves it under the route's
        // path policy, which may keep `%2F`.
        let path = uri.path();
        let target = match uri.query() {
            Some(q) => format!("https://{host_name}{port}{path}?{q}"),
            None => format!("https://{host_name}{port}{path}"),
        };
        return match HeaderValue::from_str(&target) {
            Ok(location) if !host_name.is_empty() => {
                let mut response = Response::new(Body::Empty);
                *response.status_mut() = status;
                response.headers_mut().insert(header::LOCATION, location);
                (Ok(response), None)
            }
            _ => (Err(ProxyError::BadRequest("no host to redirect to")), None),
        };
    }

    // Identity headers are portico's to set: a client's own are never trusted.
    head.headers.remove(&X_CLIENT_CERT_SUBJECT);
    head.headers.remove(&X_CLIENT_CERT_SAN);
    if let Some(cert) = &conn.client_cert {
        head.headers
            .insert(&X_CLIENT_CERT_SUBJECT, cert.subject.clone());
        if let Some(sans) = &cert.sans {
            head.headers.insert(&X_CLIENT_CERT_SAN, sans.clone());
        }
    }

    // route
    let query = uri.query();
    let view = RequestView {
        host: &host_name,
        path: &normal,
        query,
        method: &head.method,
        headers: &head.headers,
    };
    let Some(entry) = listener.find(&view) else {
        return (Err(ProxyError::NoRoute), None);
    };
    let ListenerRoute { route, metrics } = entry;
    ctx.route = Some(Arc::clone(&route.name));
    // The route's path policy may refuse the path, or forward a form that keeps `%2F` or
    // `;params` (routing/path.rs); by default the upstream gets what was matched.
    let normal = match path_policy(listener, route, view, uri.path()) {
        Ok(Some(kept)) => std::borrow::Cow::Owned(kept),
        Ok(None) => normal,
        Err(err) => return (Err(err), metrics.first()),
    };
    // Plugins that read the path (request_validator) see the form that is forwarded.
    if let std::borrow::Cow::Owned(path) = &normal {
        set_path(&mut head.uri, path);
    }

    // on_request plugins
    let plugins = &route.plugins;
    if !plugins.is_empty() {
        match plugins.on_request(ctx, &mut head).await {
            Ok(None) => {}
            Ok(Some(response)) => {
                return (Ok(on_response(plugins, ctx, response)), metrics.first());
            }
            Err(err) => return (Err(err), metrics.first()),
        }
    }

    // Identity headers are portico's to set: a client's own never reach the upstream.
    head.headers.remove(&X_CONSUMER_NAME);
    head.headers.remove(&X_CONSUMER_GROUPS);
    if let Some(consumer) = &ctx.consumer {
        head.headers
            .insert(&X_CONSUMER_NAME, consumer.name_value.clone());
        if let Some(groups) = &consumer.groups_value {
            head.headers.insert(&X_CONSUMER_GROUPS, groups.clone());
        }
    }
    let body = match ctx.body_limit {
        Some(limit) => Body::Capped {
            inner: body,
            limit,
            seen: 0,
        },
        None => Body::stream(body),
    };
    let body = match ctx.body_check.clone() {
        Some(check) => {
            use http_body_util::BodyExt;
            let collected = http_body_util::Limited::new(body, check.max())
                .collect()
                .await
                .map_err(|err| {
                    if err.is::<http_body_util::LengthLimitError>()
                        || err.is::<super::body::TooLarge>()
                    {
                        ProxyError::PayloadTooLarge {
                            limit: check.max() as u64,
                        }
                    } else {
                        ProxyError::ClientBody
                    }
                });
            let bytes = match collected {
                Ok(c) => c.to_bytes(),
                Err(err) => return (Err(err), metrics.first()),
            };
            let errors = crate::plugins::validate::RequestValidator::check_body(
                &check,
                &head.headers,
                &bytes,
            );
            if !errors.is_empty() {
                let response = crate::plugins::validate::invalid(ctx, errors);
                return (Ok(on_response(plugins, ctx, response)), metrics.first());
            }
            Body::full(bytes)
        }
        None => body,
    };
    let body = match ctx.request_json.clone() {
        Some(edit) => match edit_request(&mut head, body, &edit).await {
            Ok(body) => body,
            Err(err) => return (Err(err), metrics.first()),
        },
        None => body,
    };

    let result = match &route.action {
        Action::Respond(respond) => {
            let mut response = Response::new(if head.method == Method::HEAD {
                Body::Empty
            } else {
                Body::full(respond.body.clone())
            });
            *response.status_mut() = respond.status;
            *response.headers_mut() = respond.headers.clone();
            if !respond.body.is_empty() && !response.headers().contains_key(header::CONTENT_TYPE) {
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            Ok(response)
        }
        Action::Redirect(redirect) => {
            let location = redirect.location(&host_name, &normal, query);
            match HeaderValue::from_str(&location) {
                Ok(value) => {
                    let mut response = Response::new(Body::Empty);
                    *response.status_mut() = redirect.status;
                    response.headers_mut().insert(header::LOCATION, value);
                    Ok(response)
                }
                Err(_) => Err(ProxyError::BadRequest(
                    "the redirect target is not a valid header value",
                )),
            }
        }
        Action::Forward { arms, .. } => {
            let arm = route.action.pick_arm();
            let upstream = &arms[arm];
            ctx.upstream = Some(Arc::clone(&upstream.name));
            let path = match &route.rewrite {
                Some(rewrite) => rewrite.apply(&normal),
                None => std::borrow::Cow::Borrowed(&*normal),
            };
            // A plugin may have edited the query.
            let edited = head.uri.query() != query;
            let edited_query = edited
                .then(|| head.uri.query().map(str::to_owned))
                .flatten();
            let (query, original) = if edited {
                (edited_query.as_deref(), None)
            } else {
                (query, uri.path_and_query())
            };
            let result = forward::forward(
                &conn.client_value,
                conn.scheme,
                ctx,
                upstream,
                route,
                head,
                body,
                forward::Target {
                    host,
                    path: &path,
                    query,
                    original,
                },
            )
            .await;
            let result = match (result, ctx.response_json.clone()) {
                (Ok(response), Some(edit)) => edit_response(response, &edit).await,
                (other, _) => other,
            };
            return (
                result.map(|r| on_response(plugins, ctx, r)),
                metrics.get(arm),
            );
        }
    };
    (
        result.map(|r| on_response(plugins, ctx, r)),
        metrics.first(),
    )
}

/// Applies `route`'s path policy to the client's path; `Some` is the form to forward instead
/// of the canonical one.
fn path_policy(
    listener: &Listener,
    route: &Arc<crate::runtime::Route>,
    view: RequestView<'_>,
    raw: &str,
) -> Result<Option<String>, ProxyError> {
    let same_route = |kept: &str| {
        let kept = RequestView { path: kept, ..view };
        listener
            .find(&kept)
            .is_some_and(|e| Arc::ptr_eq(&e.route, route))
    };
    route
        .path_policy
        .apply(raw, same_route)
        .map_err(|err| ProxyError::BadRequest(err.reason()))
}

/// Replaces the path of `uri`, keeping its scheme, authority and query.
fn set_path(uri: &mut http::Uri, path: &str) {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    // The path is made of bytes of the client's own target, so both steps succeed.
    if let Ok(path_and_query) = http::uri::PathAndQuery::try_from(target) {
        parts.path_and_query = Some(path_and_query);
        if let Ok(replaced) = http::Uri::from_parts(parts) {
            *uri = replaced;
        }
    }
}

/// Buffers a JSON request body (bounded) and applies `request_transformer` edits.
async fn edit_request(
    head: &mut http::request::Parts,
    body: Body,
    edit: &crate::plugins::transform::JsonEdit,
) -> Result<Body, ProxyError> {
    use http_body_util::BodyExt;
    let collected = http_body_util::Limited::new(body, edit.max)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() || err.is::<super::body::TooLarge>() {
                ProxyError::PayloadTooLarge {
                    limit: edit.max as u64,
                }
            } else {
                ProxyError::ClientBody
            }
        })?;
    let bytes = collected.to_bytes();
    let edited = edit.apply(&bytes).unwrap_or(bytes);
    head.headers.remove(header::TRANSFER_ENCODING);
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(edited.len()));
    Ok(Body::full(edited))
}

/// Applies `response_transformer` JSON edits to a JSON response of known, bounded size;
/// anything else passes unchanged.
async fn edit_response(
    response: Response<Body>,
    edit: &crate::plugins::transform::JsonEdit,
) -> Result<Response<Body>, ProxyError> {
    use http_body_util::BodyExt;
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if !crate::plugins::transform::is_json(response.headers())
        || length.is_none_or(|n| n > edit.max)
    {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let edited = edit.apply(&bytes).unwrap_or(bytes);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(edited.len()));
            Ok(Response::from_parts(parts, Body::full(edited)))
        }
        Err(_) => Err(ProxyError::BrokenResponse),
    }
}

fn on_response(
    plugins: &crate::plugins::PluginChain,
    ctx: &RequestCtx,
    response: Response<Body>,
) -> Response<Body> {
    if plugins.is_empty() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    plugins.on_response(ctx, &mut parts);
    Response::from_parts(parts, body)
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

fn access_line(
    ctx: &RequestCtx,
    method: &Method,
    version: Version,
    path: &str,
    status: u16,
    elapsed: std::time::Duration,
) -> String {
    let mut line = serde_json::json!({
        "ts": humantime_now(),
        "request_id": ctx.request_id.to_str().unwrap_or(""),
        "client": ctx.client.to_string(),
        "listener": &*ctx.listener,
        "route": ctx.route.as_deref(),
        "upstream": ctx.upstream.as_deref(),
        "target": ctx.target.as_ref().map(|t| t.address.as_str()),
        "method": method.as_str(),
        "path": path,
        "protocol": format!("{version:?}"),
        "status": status,
        "duration_ms": (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
    })
    .to_string();
    line.push('\n');
    line
}

/// Seconds since the Unix epoch with milliseconds, as a JSON-friendly number string.
fn humantime_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}
