//! The admin API on `admin.listen`: `/metrics`, `/health`, `/config` (read and written),
//! `/reloads`, `/routes/{name}`, `/upstreams/{name}`, `/consumers/{name}` (read, written and
//! deleted one at a time), `/upstreams/{name}/targets`, `POST /cache/purge`, the [dashboard]
//! at `/` with `GET /stats` and `POST /explain`, and `/openapi.json`, which documents all of
//! them ([`ENDPOINTS`]).
//!
//! When a token is configured every request needs `Authorization: Bearer <token>`, except
//! the dashboard's page, script and style, which hold no data.

pub(crate) mod write;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::body::Body;
use crate::error::error_response;
use crate::proxy::headers::new_request_id;
use crate::runtime::writes::Section;
use crate::runtime::{Shared, Snapshot};

/// Every method and path template the admin API answers; `/openapi.json` documents each
/// (a unit test checks both ways).
pub(crate) const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("GET", "/health"),
    ("GET", "/reloads"),
    ("GET", "/config"),
    ("PUT", "/config"),
    ("GET", "/routes/{name}"),
    ("PUT", "/routes/{name}"),
    ("DELETE", "/routes/{name}"),
    ("GET", "/upstreams/{name}"),
    ("PUT", "/upstreams/{name}"),
    ("DELETE", "/upstreams/{name}"),
    ("GET", "/upstreams/{name}/targets"),
    ("GET", "/consumers/{name}"),
    ("PUT", "/consumers/{name}"),
    ("DELETE", "/consumers/{name}"),
    ("POST", "/cache/purge"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/dashboard/app.js"),
    ("GET", "/dashboard/app.css"),
    ("GET", "/stats"),
    ("POST", "/explain"),
    ("GET", "/cluster/nodes"),
];

/// The OpenAPI 3.1 document of the admin API.
const OPENAPI: &str = include_str!("openapi.json");

/// The path template `path` falls under, and the name in it (undecoded).
pub(crate) fn template(path: &str) -> Option<(&'static str, Option<&str>)> {
    let fixed = [
        "/metrics",
        "/health",
        "/reloads",
        "/config",
        "/cache/purge",
        "/openapi.json",
        "/",
        dashboard::SCRIPT_PATH,
        dashboard::STYLE_PATH,
        "/stats",
        "/explain",
        "/cluster/nodes",
    ];
    if let Some(found) = fixed.iter().find(|f| **f == path) {
        return Some((found, None));
    }
    let segment = |s: &str| !s.is_empty() && !s.contains('/');
    if let Some(name) = path
        .strip_prefix("/upstreams/")
        .and_then(|rest| rest.strip_suffix("/targets"))
        .filter(|n| segment(n))
    {
        return Some(("/upstreams/{name}/targets", Some(name)));
    }
    for (prefix, tpl) in [
        ("/routes/", "/routes/{name}"),
        ("/upstreams/", "/upstreams/{name}"),
        ("/consumers/", "/consumers/{name}"),
    ] {
        if let Some(name) = path.strip_prefix(prefix).filter(|n| segment(n)) {
            return Some((tpl, Some(name)));
        }
    }
    None
}

mod dashboard;

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
                    if let Some(refusal) = rebound(&shared, &req) {
                        return Ok::<_, Infallible>(refusal);
                    }
                    // The dashboard's page, script and style hold no data: no token needed.
                    if let Some(page) = dashboard::asset(req.method(), req.uri().path()) {
                        return Ok::<_, Infallible>(page);
                    }
                    Ok::<_, Infallible>(handle(&shared, req).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One admin request: the token check, then the endpoint.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let snap = shared.snapshot.load_full();
    if let Some(refusal) = refused(&snap, req.headers()) {
        return refusal;
    }
    let path = req.uri().path().to_owned();
    let Some((tpl, raw_name)) = template(&path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
            &new_request_id(),
        );
    };
    let allowed: Vec<&str> = ENDPOINTS
        .iter()
        .filter(|(_, t)| *t == tpl)
        .map(|(m, _)| *m)
        .collect();
    let method = req.method().as_str().to_owned();
    if !allowed.contains(&method.as_str()) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{tpl} answers {}", allowed.join(", ")),
            &new_request_id(),
        );
        if let Ok(allow) = HeaderValue::from_str(&allowed.join(", ")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }
    let name = match raw_name.map(write::decode) {
        Some(None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the name in the path is not valid percent-encoded UTF-8",
                &new_request_id(),
            );
        }
        Some(Some(name)) => Some(name),
        None => None,
    };
    let section = tpl
        .split('/')
        .nth(1)
        .filter(|_| tpl.ends_with("{name}"))
        .and_then(Section::of);
    match (method.as_str(), tpl) {
        ("POST", "/explain") => dashboard::explain(shared, req).await,
        ("POST", _) => cache_purge(shared, req).await,
        ("GET", "/stats") => dashboard::stats(shared, &snap),
        ("GET", "/cluster/nodes") => cluster_nodes(shared).await,
        ("PUT" | "DELETE", _) => write::write(shared, &snap, req, section, name.as_deref()).await,
        ("GET", "/config") => write::get_config(shared, &snap, req.uri().query()),
        ("GET", "/openapi.json") => {
            let mut response = Response::new(Body::full(Bytes::from_static(OPENAPI.as_bytes())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        (_, _) => match (section, name) {
            (Some(section), Some(name)) => write::get_item(&snap, section, &name),
            (_, name) => answer(shared, &snap, tpl, name.as_deref()),
        },
    }
}

/// `GET /cluster/nodes`: every node's entry, and whether each runs the shared config
/// revision this node last saw.
async fn cluster_nodes(shared: &Shared) -> Response<Body> {
    let Some(cluster) = shared.cluster.as_deref() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node is not in a cluster (no cluster.etcd in its config)",
            &new_request_id(),
        );
    };
    let nodes = match crate::cluster::nodes::list(cluster).await {
        Ok(nodes) => nodes,
        Err(err) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                &err.to_string(),
                &new_request_id(),
            );
        }
    };
    let newest = cluster.status.seen();
    let listed: Vec<serde_json::Value> = nodes
        .iter()
        .map(|node| {
            let mut value = serde_json::json!(node);
            value["same_revision"] = serde_json::json!(node.config_revision == newest);
            value
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "revision": newest,
            "all_same_revision": nodes.iter().all(|n| n.config_revision == newest),
            "nodes": listed,
        }),
    )
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

/// Without a token (which only a loopback admin listener may lack), a browser's request must
/// name a loopback host. A web page whose DNS name was rebound to 127.0.0.1 sends its own
/// name in `Host`, and browsers mark every request they send with fetch metadata
/// (`Sec-Fetch-Site`): such a request is refused instead of reading the admin API from the
/// operator's browser. Clients that are not browsers (curl, Prometheus) are not concerned.
fn rebound(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    if matches!(&shared.snapshot.load().admin, Some((_, Some(_))))
        || !req.headers().contains_key("sec-fetch-site")
    {
        return None;
    }
    let host = match req.uri().authority() {
        Some(authority) => Some(authority.host().to_owned()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().to_owned()),
    };
    if host.as_deref().is_some_and(is_loopback_name) {
        return None;
    }
    Some(error_response(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        "without admin.token, browsers reach the admin API by a loopback name only \
         (localhost, 127.0.0.1, [::1])",
        &new_request_id(),
    ))
}

/// `localhost`, a name under `.localhost`, or a loopback address (`[::1]` with brackets).
fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
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

/// The read-only endpoints: `/metrics`, `/health`, `/reloads`, `/upstreams/{name}/targets`.
fn answer(shared: &Shared, snap: &Snapshot, tpl: &str, name: Option<&str>) -> Response<Body> {
    match tpl {
        "/metrics" => {
            if let Some(cluster) = &shared.cluster {
                shared
                    .metrics
                    .cluster(cluster.status.connected(), cluster.status.applied());
            }
            // Targets are read at scrape time, so their series are exact whatever moved them.
            shared
                .metrics
                .scrape_targets(snap.upstreams.iter().flat_map(|upstream| {
                    upstream
                        .targets
                        .iter()
                        .map(|t| crate::observe::metrics::TargetReading {
                            upstream: &upstream.name,
                            target: &t.address,
                            healthy: t.health.available(),
                            outcomes: crate::pool::TargetOutcome::ALL
                                .map(|o| (o.label(), t.outcomes.get(o as usize))),
                            open: t.open.load(Ordering::Relaxed),
                            idle: t.idle_count(),
                            in_flight: t.inflight.load(Ordering::Relaxed),
                        })
                }));
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
            let (source, writes) = write::origin(shared);
            let mut health = serde_json::json!({
                    "status": "ok",
                    "config_hash": &*snap.hash,
                    "last_reload_error": last_error,
                    "restart_required": restart,
                    "source": source.name(),
                    "diverged_from_file": source == crate::runtime::writes::Origin::Admin,
                    "admin_writes": writes,
            });
            if let Some(cluster) = &shared.cluster {
                health["cluster"] = serde_json::json!({
                    "node_id": &cluster.node_id,
                    "etcd": cluster.view(),
                });
            }
            json(StatusCode::OK, &health)
        }
        "/reloads" => json(
            StatusCode::OK,
            &serde_json::json!({ "reloads": shared.history.list() }),
        ),
        _ => {
            if let Some(name) = name
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
                "no such upstream",
                &new_request_id(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_endpoint_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for (method, tpl) in ENDPOINTS {
            let sample = tpl.replace("{name}", "users");
            assert_eq!(
                template(&sample).map(|(t, _)| t),
                Some(*tpl),
                "{sample} is answered"
            );
            assert!(
                paths
                    .get(*tpl)
                    .and_then(|p| p.get(method.to_ascii_lowercase()))
                    .is_some(),
                "{method} {tpl} is missing from openapi.json"
            );
        }
        for (tpl, item) in paths {
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                if item.get(method).is_some() {
                    assert!(
                        ENDPOINTS
                            .iter()
                            .any(|(m, t)| m.eq_ignore_ascii_case(method) && t == tpl),
                        "openapi.json documents {method} {tpl}, which the admin API does not answer"
                    );
                }
            }
        }
    }

    #[test]
    fn paths_fall_under_their_template() {
        assert_eq!(
            template("/upstreams/api/targets"),
            Some(("/upstreams/{name}/targets", Some("api")))
        );
        assert_eq!(
            template("/upstreams/api"),
            Some(("/upstreams/{name}", Some("api")))
        );
        assert_eq!(template("/routes/"), None);
        assert_eq!(template("/routes/a/b"), None);
        assert_eq!(template("/"), Some(("/", None)));
        assert_eq!(template("/nope"), None);
    }
}
