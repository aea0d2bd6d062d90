//! The admin API on `admin.listen`: `/metrics`, `/health`, `/config`, `/upstreams/{name}/targets`.
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
                async move { Ok::<_, Infallible>(answer(&shared, req)) }
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

fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let snap = shared.snapshot.load_full();
    if let Some((_, Some(token))) = &snap.admin {
        let expected = format!("Bearer {token}");
        let given = req
            .headers()
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
            return response;
        }
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
