//! The dashboard on the admin listener: `GET /` (a page, its script and its style, embedded
//! in the binary), `GET /stats` (what the page polls) and `POST /explain` (what its explain
//! box asks).
//!
//! The page, script and style are served without the bearer token: they are the same bytes
//! for everyone and carry no data. The page asks for the token, keeps it in the tab's
//! `sessionStorage` and sends it on every fetch; `/stats` and `/explain` need it as every
//! other admin endpoint does. Everything is same-origin under a `default-src 'self'` policy.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::error_response;
use crate::observe::sharded::HistogramReading;
use crate::proxy::headers::new_request_id;
use crate::runtime::{Shared, Snapshot, explain};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Where the script and the style are served.
pub(super) const SCRIPT_PATH: &str = "/dashboard/app.js";
/// See [`SCRIPT_PATH`].
pub(super) const STYLE_PATH: &str = "/dashboard/app.css";

/// Same-origin only: no inline script or style, no frames, no form posts, no plugins.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                      img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// Largest `POST /explain` body read.
const MAX_EXPLAIN_BODY: usize = 16 * 1024;

/// Reloads shown, newest first.
const RELOADS_SHOWN: usize = 10;

/// The page, its script or its style for `GET` of their path; `None` for any other request.
pub(super) fn asset(method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET {
        return None;
    }
    let (body, kind) = match path {
        "/" => (PAGE, "text/html; charset=utf-8"),
        SCRIPT_PATH => (SCRIPT, "text/javascript; charset=utf-8"),
        STYLE_PATH => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    guard(headers);
    Some(response)
}

/// Headers every dashboard answer carries.
fn guard(headers: &mut http::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = super::json(status, value);
    guard(response.headers_mut());
    response
}

fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| (s * 1e6).round() / 1e3)
}

/// `GET /stats`: listeners, routes with their cumulative counts and latency, upstreams with
/// their targets' health, recent reloads. Counts are since the start of the process; the
/// page makes rates of two readings.
pub(super) fn stats(shared: &Shared, snap: &Snapshot) -> Response<Body> {
    // Matchers on credential headers and parameters hold secrets: shown redacted, as in
    // `GET /config`.
    let mut spec = serde_json::to_value(&snap.spec).unwrap_or_default();
    crate::config::secret::Credentials::of(&snap.spec).redact(&mut spec);
    let spec_routes = spec
        .get("routes")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let spec_listeners = spec
        .get("listeners")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();

    let listeners: Vec<_> = snap
        .listeners
        .iter()
        .map(|l| {
            let written = spec_listeners
                .iter()
                .find(|s| s.get("name").and_then(serde_json::Value::as_str) == Some(&*l.name));
            let field = |key: &str| written.and_then(|s| s.get(key)).cloned();
            serde_json::json!({
                "name": &*l.name,
                "bind": field("bind"),
                "protocol": field("protocol"),
                "tls": l.tls.is_some(),
                "routes": l.routes.len(),
                "connections": shared.metrics.open_connections(&l.name),
            })
        })
        .collect();

    // Per route name: the listeners it is on, 5xx over every listener and arm, and the
    // histograms of its (route, upstream) series, each counted once.
    #[derive(Default)]
    struct Seen {
        listeners: Vec<String>,
        errors: u64,
        upstreams: BTreeMap<String, Option<HistogramReading>>,
    }
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    for listener in &snap.listeners {
        for attached in &listener.routes {
            let entry = seen.entry(&attached.route.name).or_default();
            entry.listeners.push(listener.name.to_string());
            for arm in &attached.metrics {
                entry.errors = entry.errors.wrapping_add(arm.errors());
                entry
                    .upstreams
                    .entry(arm.upstream_name().to_owned())
                    .or_insert_with(|| arm.durations());
            }
        }
    }
    let mut routes = Vec::new();
    let (mut all_requests, mut all_errors) = (0u64, 0u64);
    for (index, route) in snap.spec.routes.iter().enumerate() {
        let name = route.name.as_str();
        let found = seen.remove(name).unwrap_or_default();
        let mut durations = HistogramReading::default();
        for reading in found.upstreams.values().flatten() {
            durations.add(reading);
        }
        all_requests = all_requests.wrapping_add(durations.count);
        all_errors = all_errors.wrapping_add(found.errors);
        let matches = spec_routes
            .get(index)
            .and_then(|r| r.get("match"))
            .cloned()
            .unwrap_or_default();
        routes.push(serde_json::json!({
            "name": name,
            "listeners": found.listeners,
            "match": matches,
            "action": action(route),
            "requests": durations.count,
            "errors": found.errors,
            "p50_ms": ms(durations.quantile(0.5)),
            "p90_ms": ms(durations.quantile(0.9)),
            "p99_ms": ms(durations.quantile(0.99)),
            "buckets": durations.buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
        }));
    }

    let upstreams: Vec<_> = snap
        .upstreams
        .iter()
        .map(|upstream| {
            let targets: Vec<_> = upstream
                .targets
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "address": &*t.address,
                        "healthy": t.health.available(),
                        "active_check_up": t.health.active_up(),
                        "ejected_for_ms": t.health.ejected_for_ms(),
                        "in_flight": t.inflight.load(Ordering::Relaxed),
                        "ewma_ms": t.health.ewma_us() as f64 / 1000.0,
                    })
                })
                .collect();
            serde_json::json!({
                "name": &*upstream.name,
                "balance": upstream.balancer.name(),
                "in_flight": upstream.state.inflight.load(Ordering::Relaxed),
                "targets": targets,
            })
        })
        .collect();

    let mut reloads = shared.history.list();
    reloads.reverse();
    reloads.truncate(RELOADS_SHOWN);

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json(
        StatusCode::OK,
        &serde_json::json!({
            "at_unix_ms": now_ms,
            "config_hash": &*snap.hash,
            "bounds_s": crate::observe::metrics::DURATION_BUCKETS,
            "totals": { "requests": all_requests, "errors": all_errors },
            "listeners": listeners,
            "routes": routes,
            "upstreams": upstreams,
            "reloads": reloads,
            "cluster": shared.cluster.as_ref().map(|c| serde_json::json!({
                "node_id": &c.node_id,
                "etcd": c.view(),
            })),
        }),
    )
}

/// A route's action in a few words.
fn action(route: &crate::config::spec::RouteSpec) -> String {
    if let Some(upstream) = &route.upstream {
        return format!("upstream {}", upstream.as_str());
    }
    if let Some(split) = &route.split {
        let arms: Vec<String> = split
            .iter()
            .map(|arm| format!("{} ({})", arm.upstream.as_str(), arm.weight))
            .collect();
        return format!("split {}", arms.join(", "));
    }
    if let Some(respond) = &route.respond {
        return format!("respond {}", *respond.status);
    }
    if let Some(redirect) = &route.redirect {
        return format!("redirect {} {}", *redirect.status, redirect.to.as_str());
    }
    if route.aggregate.is_some() {
        return "aggregate".to_owned();
    }
    if let Some(files) = &route.static_files {
        return format!("static {}", files.root.as_str());
    }
    String::new()
}

/// `POST /explain` with `{"method": "GET", "url": "http://host/path", "headers": ["Name:
/// value"]}`: answers `{"text": ...}`, what `portico explain` prints for that request against
/// the config in force.
pub(super) async fn explain(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let snap = shared.snapshot.load_full();
    if let Some(refusal) = super::refused(&snap, req.headers()) {
        return refusal;
    }
    let bad = |message: &str| {
        let mut response = error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            &new_request_id(),
        );
        guard(response.headers_mut());
        response
    };
    // A cross-site page can send a simple POST without asking; it cannot send this type.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return bad("send the question as Content-Type: application/json");
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_EXPLAIN_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let mut response = error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is unreadable or longer than 16 KiB",
                &new_request_id(),
            );
            guard(response.headers_mut());
            return response;
        }
    };
    let shape = "expected {\"method\": \"GET\", \"url\": \"http://host/path\", \
                 \"headers\": [\"Name: value\"]}";
    let Ok(serde_json::Value::Object(asked)) = serde_json::from_slice(&body) else {
        return bad(shape);
    };
    let method = match asked.get("method") {
        None => "GET",
        Some(serde_json::Value::String(m)) if !m.trim().is_empty() => m.trim(),
        Some(_) => return bad(shape),
    };
    let Some(serde_json::Value::String(url)) = asked.get("url") else {
        return bad(shape);
    };
    let headers: Vec<String> = match asked.get("headers") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for h in list {
                match h {
                    serde_json::Value::String(h) if h.trim().is_empty() => {}
                    serde_json::Value::String(h) => out.push(h.clone()),
                    _ => return bad(shape),
                }
            }
            out
        }
        Some(_) => return bad(shape),
    };
    let mut question = match explain::Question::parse(method, url.trim(), &headers) {
        Ok(q) => q,
        Err(e) => return bad(&e),
    };
    match asked.get("client") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(ip)) => match ip.trim().parse() {
            Ok(ip) => question.client = ip,
            Err(_) => return bad("`client` must be an IP address"),
        },
        Some(_) => return bad("`client` must be an IP address"),
    }
    match explain::explain(&snap, &question) {
        Ok(text) => json(StatusCode::OK, &serde_json::json!({ "text": text })),
        Err(e) => bad(&e.to_string()),
    }
}
