//! Admin API reads and writes of the config: `GET|PUT /config`, and `GET|PUT|DELETE` of one
//! route, upstream or consumer.
//!
//! A write is parsed here, then handed to the control thread, which checks `If-Match`,
//! builds the whole new config, validates and compiles it as a file, and puts it in force as
//! a reload does (recorded in `/reloads` with trigger `admin`). Every answer about the config
//! carries `ETag: "<config hash>"`.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::json;
use crate::body::Body;
use crate::config::spec::AdminWrites;
use crate::error::error_response;
use crate::proxy::headers::new_request_id;
use crate::runtime::writes::{Edit, Origin, Problem, Refusal, Section, Write, Written};
use crate::runtime::{Shared, Snapshot};

/// Largest write body read.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// `ETag` of a config hash.
fn etag(hash: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

fn with_etag(mut response: Response<Body>, hash: &str) -> Response<Body> {
    response.headers_mut().insert(header::ETAG, etag(hash));
    response
}

/// The running config as `GET /config` serves it: every secret redacted.
pub(crate) fn redacted(spec: &crate::config::Spec) -> Result<serde_json::Value, String> {
    let mut value = serde_json::to_value(spec).map_err(|e| e.to_string())?;
    // Route matchers on credential headers and parameters hold secrets too.
    crate::config::secret::Credentials::of(spec).redact(&mut value);
    Ok(value)
}

/// The answer when the config could not be written out.
fn internal(message: &str) -> Response<Body> {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &serde_json::json!({ "error": "internal", "message": message }),
    )
}

/// Where the running config came from, for `/health`.
pub(crate) fn origin(shared: &Shared) -> (Origin, u64) {
    match shared.source.lock() {
        Ok(source) => (source.origin, source.writes),
        Err(poisoned) => {
            let source = poisoned.into_inner();
            (source.origin, source.writes)
        }
    }
}

/// `GET /config`: the running config, redacted, with its hash as `ETag`; with
/// `?source=file`, the file's config and how the running one differs from it.
pub(crate) fn get_config(shared: &Shared, snap: &Snapshot, query: Option<&str>) -> Response<Body> {
    let from_file = query.is_some_and(|q| q.split('&').any(|p| p == "source=file"));
    let running = match redacted(&snap.spec) {
        Ok(value) => value,
        Err(message) => return internal(&message),
    };
    if !from_file {
        return with_etag(json(StatusCode::OK, &running), &snap.hash);
    }
    let (spec, errors) = crate::config::read(&shared.config_path);
    let file = match redacted(&spec) {
        Ok(value) => value,
        Err(message) => return internal(&message),
    };
    let (source, writes) = origin(shared);
    let body = serde_json::json!({
        "file": shared.config_path.display().to_string(),
        "source": source.name(),
        "diverged_from_file": source == Origin::Admin,
        "admin_writes": writes,
        "running_hash": &*snap.hash,
        "file_hash": errors.is_empty().then(|| crate::runtime::history::config_hash(&spec).to_string()),
        "file_errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "difference": difference(&file, &running),
        "config": file,
    });
    with_etag(json(StatusCode::OK, &body), &snap.hash)
}

/// How `running` differs from `file` (both as `GET /config` serves them): per section, the
/// names only the running config has, those only the file has, and those that differ; and
/// the other top-level keys that differ.
fn difference(file: &serde_json::Value, running: &serde_json::Value) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let named = |value: &serde_json::Value, key: &str| -> Vec<(String, serde_json::Value)> {
        match value.get(key) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match named_item(item) {
                    Some((name, value)) => (name.to_owned(), value.clone()),
                    None => (format!("#{i}"), item.clone()),
                })
                .collect(),
            Some(serde_json::Value::Object(items)) => {
                items.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            _ => Vec::new(),
        }
    };
    let mut changed_keys = Vec::new();
    let keys: std::collections::BTreeSet<&String> = file
        .as_object()
        .into_iter()
        .chain(running.as_object())
        .flat_map(|m| m.keys())
        .collect();
    for key in keys {
        if ["listeners", "routes", "upstreams", "consumers"].contains(&key.as_str()) {
            let (f, r) = (named(file, key), named(running, key));
            let find = |list: &[(String, serde_json::Value)], name: &str| {
                list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
            };
            let added: Vec<&str> = r
                .iter()
                .filter(|(n, _)| find(&f, n).is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let removed: Vec<&str> = f
                .iter()
                .filter(|(n, _)| find(&r, n).is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            let changed: Vec<&str> = r
                .iter()
                .filter(|(n, v)| find(&f, n).is_some_and(|fv| fv != *v))
                .map(|(n, _)| n.as_str())
                .collect();
            if !(added.is_empty() && removed.is_empty() && changed.is_empty()) {
                out.insert(
                    key.clone(),
                    serde_json::json!({
                        "only_running": added,
                        "only_file": removed,
                        "changed": changed,
                    }),
                );
            }
        } else if file.get(key) != running.get(key) {
            changed_keys.push(key.clone());
        }
    }
    if !changed_keys.is_empty() {
        out.insert("settings_changed".into(), serde_json::json!(changed_keys));
    }
    serde_json::Value::Object(out)
}

/// The name and value of one serialized item: a list item with a `name` (a route, a
/// consumer), or a `[name, value]` pair (an upstream).
fn named_item(item: &serde_json::Value) -> Option<(&str, &serde_json::Value)> {
    match item {
        serde_json::Value::Array(pair) if pair.len() == 2 => Some((pair[0].as_str()?, &pair[1])),
        _ => Some((item.get("name")?.as_str()?, item)),
    }
}

/// `GET /{section}/{name}`: one item of the running config, redacted like `GET /config`.
pub(crate) fn get_item(snap: &Snapshot, section: Section, name: &str) -> Response<Body> {
    let value = match redacted(&snap.spec) {
        Ok(value) => value,
        Err(message) => return internal(&message),
    };
    let found = match value.get(section.key()) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(named_item)
            .find(|(n, _)| *n == name)
            .map(|(_, item)| item.clone()),
        Some(serde_json::Value::Object(items)) => items.get(name).cloned(),
        _ => None,
    };
    match found {
        Some(item) => with_etag(json(StatusCode::OK, &item), &snap.hash),
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no {} named `{name}`", section.item()),
            &new_request_id(),
        ),
    }
}

/// The `If-Match` tags of a request: `None` without the header; quotes and `W/` dropped.
fn if_match(headers: &http::HeaderMap) -> Option<Vec<String>> {
    let values: Vec<&HeaderValue> = headers.get_all(header::IF_MATCH).iter().collect();
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| {
                let t = t.trim();
                let t = t.strip_prefix("W/").unwrap_or(t);
                t.trim_matches('"').to_owned()
            })
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

fn bad(message: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "bad_request",
        message,
        &new_request_id(),
    )
}

/// The body's problems as a 400 `invalid_config` answer; the config in force keeps `hash`.
fn invalid(problems: &[Problem], hash: &str) -> Response<Body> {
    let first = problems
        .iter()
        .find(|p| p.severity == "error")
        .or(problems.first());
    let message = match first {
        Some(p) => match (&p.path, p.line) {
            (_, Some(line)) => format!("line {line}:{}: {}", p.col.unwrap_or(0), p.message),
            (Some(path), None) => format!("{path}: {}", p.message),
            (None, None) => p.message.clone(),
        },
        None => "the config is invalid".to_owned(),
    };
    let body = serde_json::json!({
        "error": "invalid_config",
        "message": message,
        "problems": problems,
        "config_hash": hash,
        "request_id": new_request_id().to_str().unwrap_or_default(),
    });
    with_etag(json(StatusCode::BAD_REQUEST, &body), hash)
}

/// `PUT /config`, `PUT /{section}/{name}` and `DELETE /{section}/{name}`.
pub(crate) async fn write(
    shared: &Shared,
    snap: &Snapshot,
    req: Request<Incoming>,
    section: Option<Section>,
    name: Option<&str>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    if snap.spec.admin.is_none() {
        // A reload dropped the section: the API still listens, but without its settings
        // (its token among them) it takes no writes.
        return error_response(
            StatusCode::FORBIDDEN,
            "writes_refused",
            "the config in force has no `admin` section, so the admin API takes no writes; \
             restart portico to apply the change",
            &new_request_id(),
        );
    }
    if snap
        .spec
        .admin
        .as_ref()
        .is_some_and(|a| a.writes == AdminWrites::Refuse)
    {
        return error_response(
            StatusCode::FORBIDDEN,
            "writes_refused",
            "this portico refuses admin API writes (`admin.writes: refuse`); change the file and \
             send SIGHUP",
            &new_request_id(),
        );
    }
    let if_match = if_match(req.headers());
    let delete = req.method() == http::Method::DELETE;
    let text = if delete {
        String::new()
    } else {
        let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is unreadable or longer than 1 MiB",
                    &new_request_id(),
                );
            }
        };
        match String::from_utf8(body.to_vec()) {
            Ok(text) => text,
            Err(_) => return bad("the body must be UTF-8 YAML or JSON"),
        }
    };
    let edit = match (section, name) {
        (None, _) => Edit::Whole(text),
        (Some(section), Some(name)) if delete => Edit::Delete {
            section,
            name: name.to_owned(),
        },
        (Some(section), Some(name)) => {
            let value = match crate::config::node::parse(&text) {
                Ok(value) => value,
                Err(err) => {
                    let problem = Problem {
                        severity: "error",
                        path: None,
                        line: Some(err.pos.line),
                        col: Some(err.pos.col),
                        message: err.to_string(),
                    };
                    return invalid(&[problem], &snap.hash);
                }
            };
            if !matches!(value.value, crate::config::node::Value::Map(_)) {
                return bad(&format!(
                    "the body must be one {} as a YAML or JSON mapping, found {}",
                    section.item(),
                    value.value.kind()
                ));
            }
            Edit::Put {
                section,
                name: name.to_owned(),
                value,
            }
        }
        (Some(_), None) => return bad("no name in the path"),
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let write = Write {
        edit,
        if_match,
        reply,
    };
    let outcome = match shared.writes.tx.send(write).await {
        Ok(()) => outcome.await.unwrap_or(Err(Refusal::Stopping)),
        Err(_) => Err(Refusal::Stopping),
    };
    let now = shared.snapshot.load_full();
    answer(outcome, section, name, delete, &now.hash)
}

/// The answer to a write's outcome; `hash` is that of the config now in force.
fn answer(
    outcome: Result<Written, Refusal>,
    section: Option<Section>,
    name: Option<&str>,
    delete: bool,
    hash: &Arc<str>,
) -> Response<Body> {
    match outcome {
        Ok(written) => {
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut body = serde_json::json!({
                "applied": true,
                "config_hash": &*written.hash,
                "restart_required": written.restart_required,
                "warnings": written.warnings,
            });
            if let (Some(section), Some(name)) = (section, name) {
                body[section.item()] = serde_json::json!(name);
                body["result"] = serde_json::json!(if delete {
                    "deleted"
                } else if written.created {
                    "created"
                } else {
                    "replaced"
                });
            }
            let mut response = with_etag(json(status, &body), &written.hash);
            if let (true, Some(section), Some(name)) = (written.created, section, name)
                && let Ok(location) =
                    HeaderValue::from_str(&format!("/{}/{}", section.key(), encode(name)))
            {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(Refusal::Precondition { current }) => with_etag(
            error_response(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                &format!(
                    "the config changed meanwhile: its hash is now {current} (If-Match named \
                     another); read it again and retry"
                ),
                &new_request_id(),
            ),
            &current,
        ),
        Err(Refusal::NotFound(message)) => with_etag(
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &message,
                &new_request_id(),
            ),
            hash,
        ),
        Err(Refusal::InUse { message, uses }) => {
            let body = serde_json::json!({
                "error": "in_use",
                "message": message,
                "used_at": uses,
                "config_hash": &**hash,
                "request_id": new_request_id().to_str().unwrap_or_default(),
            });
            with_etag(json(StatusCode::CONFLICT, &body), hash)
        }
        Err(Refusal::Bad(message)) => with_etag(bad(&message), hash),
        Err(Refusal::Invalid(problems)) => invalid(&problems, hash),
        Err(Refusal::Apply(reason)) => with_etag(
            error_response(
                StatusCode::CONFLICT,
                "not_applied",
                &format!("the config is valid but could not be put in force: {reason}"),
                &new_request_id(),
            ),
            hash,
        ),
        Err(Refusal::Unavailable(reason)) => with_etag(
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                &format!("the write was not applied: {reason}"),
                &new_request_id(),
            ),
            hash,
        ),
        Err(Refusal::Stopping) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "portico is stopping; the write was not applied",
            &new_request_id(),
        ),
    }
}

/// A name as a path segment.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment decoded (`%XX`); `None` when it does not decode to UTF-8.
pub(crate) fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
