//! The admin API on `admin.listen`: `/metrics`, `/health`, `/config`, `/upstreams/{name}/targets`,
//! and `POST /cache/purge`.
//!
//! When a token is configured every request needs `Authorization: Bearer <token>`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::body::Body;
use crate::error::error_response;
use crate::proxy::headers::new_request_id;
use crate::runtime::Shared;

/// Accepts admin connections until the process ends.
pub(crate) async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/cache/purge" {
                        return Ok::<_, Infallible>(cache_purge(&shared, req).await);
                    }
                    Ok::<_, Infallible>(answer(&shared, req))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The bearer token check when one is configured: the refusal, if any.
fn refused(snap: &crate::runtime::Snapshot, headers: &http::HeaderMap) -> Option<Response<Body>> {
    if let Some((_, Some(token))) = &snap.admin {
        let expected = format!("Bearer {token}");
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !given.is_some_and(|g| crate::plugins::auth::constant_time_eq(g, expected.as_bytes())) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs a bearer token",
                &new_request_id(),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(response);
        }
    }
    None
}

/// Largest `POST /cache/purge` body read.
const MAX_PURGE_BODY: usize = 64 * 1024;

/// `POST /cache/purge` with `{"key": URL}` or `{"prefix": URL}`: drops those answers from
/// every cache store; answers with how many entries and bytes were dropped.
async fn cache_purge(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let snap = shared.snapshot.load_full();
    if let Some(refusal) = refused(&snap, req.headers()) {
        return refusal;
    }
    let bad = |message: &str| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            &new_request_id(),
        )
    };
    let body = match http_body_util::Limited::new(req.into_body(), MAX_PURGE_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return bad("the body is unreadable or longer than 64 KiB"),
    };
    let Ok(serde_json::Value::Object(asked)) = serde_json::from_slice(&body) else {
        return bad("expected a JSON object: {\"key\": URL} or {\"prefix\": URL}");
    };
    let (which, url) = match (asked.get("key"), asked.get("prefix")) {
        (Some(serde_json::Value::String(url)), None) => ("key", url),
        (None, Some(serde_json::Value::String(url))) => ("prefix", url),
        _ => return bad("expected exactly one of `key` and `prefix`, a URL string"),
    };
    let Some(target) = crate::plugins::cache::purge_url(url) else {
        return bad("the URL must start with http:// or https://");
    };
    let purge = if which == "key" {
        crate::plugins::cache::Purge::Key(target)
    } else {
        crate::plugins::cache::Purge::Prefix(target)
    };
    let (entries, bytes) = crate::plugins::cache::purge(&shared.states, &purge);
    json(
        StatusCode::OK,
        &serde_json::json!({ which: url, "purged": entries, "bytes": bytes }),
    )
}

fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let snap = shared.snapshot.load_full();
    if let Some(refusal) = refused(&snap, req.headers()) {
        return refusal;
    }
    if req.method() != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this admin endpoint only answers GET",
            &new_request_id(),
        );
    }
    let path = req.uri().path();
    match path {
        "/metrics" => {
            // Health is read at scrape time, so the gauge is exact whatever changed it.
            for upstream in &snap.upstreams {
                for target in &upstream.targets {
                    shared.metrics.target_healthy(
                        &upstream.name,
                        &target.address,
                        target.health.available(),
                    );
                }
            }
            let mut response = Response::new(Body::full(shared.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/health" => {
            let last_error = shared.last_reload_error.lock().ok().and_then(|e| e.clone());
            let restart: Vec<String> = shared
                .restart_required
                .lock()
                .map(|list| list.clone())
                .unwrap_or_default();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "last_reload_error": last_error,
                    "restart_required": restart,
                }),
            )
        }
        "/config" => match serde_json::to_value(&snap.spec) {
            Ok(mut value) => {
                // Route matchers on credential headers and parameters hold secrets too.
                crate::config::secret::Credentials::of(&snap.spec).redact(&mut value);
                json(StatusCode::OK, &value)
            }
            Err(err) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({ "error": "internal", "message": err.to_string() }),
            ),
        },
        _ => {
            if let Some(name) = path
                .strip_prefix("/upstreams/")
                .and_then(|rest| rest.strip_suffix("/targets"))
                && let Some(upstream) = snap.upstream(name)
            {
                let balancer = &upstream.balancer;
                let targets: Vec<_> = upstream
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let weight = balancer.weights.get(i).copied().unwrap_or(1);
                        serde_json::json!({
                            "address": &*t.address,
                            "resolved": t.addrs.load().iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "healthy": t.health.available(),
                            "active_check_up": t.health.active_up(),
                            "ejected_for_ms": t.health.ejected_for_ms(),
                            "in_flight": t.inflight.load(Ordering::Relaxed),
                            "open_connections": t.open.load(Ordering::Relaxed),
                            "idle_connections": t.idle_count(),
                            "ewma_ms": t.health.ewma_us() as f64 / 1000.0,
                            "weight": weight,
                            "effective_weight": f64::from(weight) * t.health.warmth(balancer.slow_start),
                        })
                    })
                    .collect();
                let body = serde_json::json!({
                    "upstream": name,
                    "balance": balancer.name(),
                    "in_flight": upstream.state.inflight.load(Ordering::Relaxed),
                    "targets": targets,
                });
                return json(StatusCode::OK, &body);
            }
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint",
                &new_request_id(),
            )
        }
    }
}
