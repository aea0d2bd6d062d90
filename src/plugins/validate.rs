//! `request_validator`: JSON Schema for bodies, or an OpenAPI 3 document for paths, methods,
//! parameters and bodies. A failing request gets 400 with every problem listed.
//!
//! Schemas are compiled once. Local `$ref`s of an OpenAPI document (`#/components/...`) are
//! resolved when it is loaded; remote references are not fetched.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header, request};
use serde_json::Value;

use super::{BodyFilter, BuildError, Flow, Phase, Plugin, WholeBody};
use crate::body::Body;
use crate::config::spec::ValidatorSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

type Schema = jsonschema::Validator;

/// One OpenAPI operation, compiled.
#[derive(Debug)]
struct Operation {
    method: Method,
    params: Vec<Param>,
    body: Option<(bool, Option<Arc<Schema>>)>,
}

#[derive(Debug)]
struct Param {
    name: String,
    location: String,
    required: bool,
    schema: Option<(Arc<Schema>, String)>,
}

/// A compiled `request_validator`.
#[derive(Debug)]
pub(crate) struct RequestValidator {
    body: Option<Arc<Schema>>,
    routes: Option<matchit::Router<Vec<Arc<Operation>>>>,
    /// Largest body checked.
    pub(crate) max: usize,
}

/// What the body check needs, decided from the head.
#[derive(Debug, Clone)]
pub(crate) struct BodyCheck {
    schema: Arc<Schema>,
    required: bool,
    max: usize,
}

fn compile(schema: &Value) -> Result<Arc<Schema>, BuildError> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| BuildError::Schema(Box::new(e)))
}

/// Replaces local `$ref`s with what they point at (depth-limited: cycles stop at 32).
fn inline(value: &Value, root: &Value, depth: u32) -> Value {
    if depth > 32 {
        return Value::Object(Default::default());
    }
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref")
                && let Some(pointer) = r.strip_prefix('#')
                && let Some(target) = root.pointer(pointer)
            {
                return inline(target, root, depth + 1);
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), inline(v, root, depth + 1)))
                    .collect(),
            )
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| inline(v, root, depth + 1)).collect())
        }
        other => other.clone(),
    }
}

fn to_json(node: &crate::config::node::Node) -> Value {
    use crate::config::node::Value as N;
    match &node.value {
        N::Null => Value::Null,
        N::Bool(b) => Value::Bool(*b),
        N::UInt(n) => Value::from(*n),
        N::Int(n) => Value::from(*n),
        N::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        N::Str(s) => Value::String(s.clone()),
        N::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        N::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}

fn load_openapi(path: &Path) -> Result<matchit::Router<Vec<Arc<Operation>>>, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|source| BuildError::Read {
        path: path.to_owned(),
        source,
    })?;
    let node = crate::config::node::parse(&text).map_err(|source| BuildError::Document {
        path: path.to_owned(),
        source,
    })?;
    let doc = to_json(&node);
    if !doc
        .get("openapi")
        .and_then(Value::as_str)
        .is_some_and(|v| v.starts_with('3'))
    {
        return Err(BuildError::NotOpenApi {
            path: path.to_owned(),
        });
    }
    let doc = inline(&doc, &doc, 0);
    let mut router = matchit::Router::new();
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or(BuildError::NoPaths)?;
    for (template, item) in paths {
        let shared: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut operations = Vec::new();
        for (method, op) in item.as_object().into_iter().flatten() {
            let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                continue;
            };
            if !op.is_object() {
                continue;
            }
            let mut params = Vec::new();
            for p in shared.iter().chain(
                op.get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            ) {
                let (Some(name), Some(location)) = (
                    p.get("name").and_then(Value::as_str),
                    p.get("in").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let schema = match p.get("schema") {
                    Some(s) => Some((
                        compile(s)?,
                        s.get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_owned(),
                    )),
                    None => None,
                };
                params.retain(|q: &Param| !(q.name == name && q.location == location));
                params.push(Param {
                    name: name.to_owned(),
                    location: location.to_owned(),
                    required: p
                        .get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(location == "path"),
                    schema,
                });
            }
            let body = match op.get("requestBody") {
                Some(rb) => {
                    let required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
                    let schema = rb
                        .pointer("/content/application~1json/schema")
                        .map(compile)
                        .transpose()?;
                    Some((required, schema))
                }
                None => None,
            };
            operations.push(Arc::new(Operation {
                method,
                params,
                body,
            }));
        }
        router
            .insert(template.as_str(), operations)
            .map_err(|source| BuildError::PathTemplate {
                template: template.clone(),
                source,
            })?;
    }
    Ok(router)
}

/// Turns a parameter's text into the JSON type its schema names, for validation.
fn typed(text: &str, kind: &str) -> Value {
    match kind {
        "integer" => text
            .parse::<i64>()
            .map_or_else(|_| Value::String(text.to_owned()), Value::from),
        "number" => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.to_owned()), Value::Number),
        "boolean" => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_owned()),
        },
        _ => Value::String(text.to_owned()),
    }
}

fn errors_of(schema: &Schema, value: &Value, prefix: &str) -> Vec<String> {
    schema
        .iter_errors(value)
        .take(20)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                format!("{prefix}: {e}")
            } else {
                format!("{prefix} {at}: {e}")
            }
        })
        .collect()
}

/// The 400 answer listing what is wrong.
pub(crate) fn invalid(ctx: &RequestCtx, errors: Vec<String>) -> http::Response<Body> {
    let message = errors.join("; ");
    let body = serde_json::json!({
        "error": "request_invalid",
        "message": "the request does not match its description",
        "errors": errors,
        "request_id": ctx.request_id.to_str().unwrap_or_default(),
    });
    let mut response = http::Response::new(Body::full(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(crate::error::OwnError {
        code: "request_invalid",
        message: message.into(),
    });
    response
}

impl RequestValidator {
    /// Compiles the schema or loads the document (relative to `base`).
    pub(crate) fn new(spec: &ValidatorSpec, base: &Path) -> Result<Self, BuildError> {
        let body = spec.body_schema.as_ref().map(compile).transpose()?;
        let routes = match &spec.openapi_file {
            Some(file) => {
                let path = if Path::new(file.as_str()).is_absolute() {
                    Path::new(file.as_str()).to_owned()
                } else {
                    base.join(file.as_str())
                };
                Some(load_openapi(&path)?)
            }
            None => None,
        };
        if body.is_none() && routes.is_none() {
            return Err(BuildError::NothingToValidate);
        }
        Ok(RequestValidator {
            body,
            routes,
            max: spec.max_body.bytes(),
        })
    }

    /// Checks the body held in `bytes` against `check`; the errors, if any.
    pub(crate) fn check_body(
        check: &BodyCheck,
        headers: &http::HeaderMap,
        bytes: &Bytes,
    ) -> Vec<String> {
        if bytes.is_empty() {
            return if check.required {
                vec!["body: a request body is required".into()]
            } else {
                Vec::new()
            };
        }
        if !super::transform::is_json(headers) {
            return vec!["body: the content type must be application/json".into()];
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => errors_of(&check.schema, &value, "body"),
            Err(e) => vec![format!("body: not JSON ({e})")],
        }
    }
}

impl Plugin for RequestValidator {
    fn name(&self) -> &'static str {
        "request_validator"
    }

    fn stops(&self) -> Option<&'static str> {
        Some("400 when the request does not match its description")
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let mut errors = Vec::new();
        let mut body_check = self.body.as_ref().map(|schema| BodyCheck {
            schema: Arc::clone(schema),
            required: false,
            max: self.max,
        });
        if let Some(routes) = &self.routes {
            let path = head.uri.path();
            let Ok(found) = routes.at(path) else {
                return Ok(Flow::Respond(invalid(
                    ctx,
                    vec![format!("path: {path} is not in the API description")],
                )));
            };
            let Some(op) = found.value.iter().find(|op| op.method == head.method) else {
                return Ok(Flow::Respond(invalid(
                    ctx,
                    vec![format!("method: {} is not allowed on {path}", head.method)],
                )));
            };
            let query: Vec<(String, String)> = head
                .uri
                .query()
                .map(|q| crate::routing::query_pairs(q).collect())
                .unwrap_or_default();
            for p in &op.params {
                let value: Option<String> = match p.location.as_str() {
                    "path" => found.params.get(p.name.as_str()).map(str::to_owned),
                    "query" => query
                        .iter()
                        .find(|(k, _)| *k == p.name)
                        .map(|(_, v)| v.clone()),
                    "header" => head
                        .headers
                        .get(p.name.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    _ => continue,
                };
                match (value, &p.schema) {
                    (None, _) if p.required => {
                        errors.push(format!("{} parameter `{}` is required", p.location, p.name))
                    }
                    (Some(v), Some((schema, kind))) => {
                        errors.extend(errors_of(
                            schema,
                            &typed(&v, kind),
                            &format!("{} parameter `{}`", p.location, p.name),
                        ));
                    }
                    _ => {}
                }
            }
            if let Some((required, schema)) = &op.body {
                body_check = schema.as_ref().map(|s| BodyCheck {
                    schema: Arc::clone(s),
                    required: *required,
                    max: self.max,
                });
                let has_body = head.headers.contains_key(header::TRANSFER_ENCODING)
                    || head
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .is_some_and(|v| v != "0");
                if *required && !has_body && schema.is_none() {
                    errors.push("body: a request body is required".into());
                }
            }
        }
        if !errors.is_empty() {
            return Ok(Flow::Respond(invalid(ctx, errors)));
        }
        if let Some(check) = body_check {
            let key = self.key();
            match ctx.slots.get_mut::<PendingChecks>() {
                Some(pending) => pending.0.push((key, check)),
                None => {
                    ctx.slots.insert(PendingChecks(vec![(key, check)]));
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn request_body(&self, ctx: &mut RequestCtx, _head: &request::Parts) -> Option<BodyFilter> {
        let pending = ctx.slots.get_mut::<PendingChecks>()?;
        let key = self.key();
        let at = pending.0.iter().position(|(k, _)| *k == key)?;
        let (_, check) = pending.0.swap_remove(at);
        Some(BodyFilter::Whole {
            max: check.max,
            edit: Box::new(check),
        })
    }
}

impl RequestValidator {
    /// Tells this validator's pending check from another's in the same chain.
    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// Body checks decided from the head, waiting for the body: one per validator of the chain.
#[derive(Debug, Clone, Default)]
struct PendingChecks(Vec<(usize, BodyCheck)>);

impl WholeBody for BodyCheck {
    fn apply(
        self: Box<Self>,
        ctx: &RequestCtx,
        headers: &mut http::HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>> {
        let errors = RequestValidator::check_body(&self, headers, &body);
        if errors.is_empty() {
            Ok(body)
        } else {
            Err(Box::new(invalid(ctx, errors)))
        }
    }
}
