//! Compiles an `aggregate:` action: upstream names, methods, templates, shaping, and the call
//! graph, which must be a DAG. Every error points at the key it is about.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::{HeaderName, Method};

use super::checks::{Upstreams, did_you_mean};
use crate::aggregate::convert::Format;
use crate::aggregate::shape::{Shape, path};
use crate::aggregate::template::{Piece, Template};
use crate::config::aggregate::{AggregateSpec, CallSpec, FormatSpec, OnErrorSpec};
use crate::config::spec::RouteSpec;
use crate::config::{At, Diagnostics};
use crate::plugins::PluginChain;
use crate::runtime::aggregate::{Aggregate, Call, PathParams};
use crate::runtime::{Action, RetryPolicy, Route};

/// Names a call may not take: they are the request placeholders' prefixes.
const RESERVED: &[&str] = &["path", "query", "header", "claim", "consumer"];

/// The most calls one aggregate may make.
const MAX_CALLS: usize = 32;

/// Compiles `spec.aggregate`; `None` when it has errors (all reported).
pub(super) fn compile(
    route: &RouteSpec,
    spec: &AggregateSpec,
    upstreams: &Upstreams<'_>,
    retry: Option<&RetryPolicy>,
    diags: &mut Diagnostics,
) -> Option<Action> {
    let before = diags.list.len();
    if spec.calls.is_empty() {
        diags.error(spec.calls.pos, "aggregate.calls needs at least one call");
    }
    if spec.calls.len() > MAX_CALLS {
        diags.error(
            spec.calls.pos,
            format!("aggregate.calls has more than {MAX_CALLS} calls"),
        );
    }
    let template_params = route.matches.path_template.as_ref().map(|t| params(t));
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, call) in spec.calls.iter().enumerate() {
        if RESERVED.contains(&call.name.as_str()) || call.name.is_empty() || call.name.contains('.')
        {
            diags.error(
                call.name.pos,
                format!(
                    "call name `{}` is reserved or invalid (not empty, no `.`, not one of {})",
                    *call.name,
                    RESERVED.join(", ")
                ),
            );
        }
        if names.insert(call.name.as_str(), i).is_some() {
            diags.error(
                call.name.pos,
                format!("call `{}` is defined twice in this aggregate", *call.name),
            );
        }
    }
    let mut calls = Vec::new();
    for call in spec.calls.iter() {
        if let Some(compiled) = compile_call(
            route,
            call,
            &names,
            &template_params,
            upstreams,
            retry,
            diags,
        ) {
            calls.push(compiled);
        }
    }
    if diags.list.len() > before {
        return None;
    }
    let deps: Vec<Vec<usize>> = calls.iter().map(|c| c.deps.clone()).collect();
    let stages = match crate::aggregate::plan::stages(&deps) {
        Ok(stages) => stages,
        Err(left) => {
            let listed: Vec<&str> = left.iter().map(|&i| &*calls[i].name).collect();
            diags.error(
                spec.calls[left[0]].name.pos,
                format!(
                    "calls {} take fields from each other in a cycle",
                    listed.join(", ")
                ),
            );
            return None;
        }
    };
    let path_template = match &route.matches.path_template {
        Some(t) => {
            let mut router = matchit::Router::new();
            router
                .insert(t.as_str(), ())
                .ok()
                .map(|_| PathParams(router))
        }
        None => None,
    };
    Some(Action::Aggregate(Box::new(Aggregate {
        calls,
        stages,
        partial: spec.on_error == OnErrorSpec::Partial,
        timeout: spec.timeout.or(route.timeout).map(|t| t.0),
        path_template,
    })))
}

/// The parameter names of a path template (`{id}`, `{*rest}`).
fn params(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push(
            rest[start + 1..start + len]
                .trim_start_matches('*')
                .to_owned(),
        );
        rest = &rest[start + len + 1..];
    }
    out
}

fn compile_call(
    route: &RouteSpec,
    call: &CallSpec,
    names: &HashMap<&str, usize>,
    template_params: &Option<Vec<String>>,
    upstreams: &Upstreams<'_>,
    retry: Option<&RetryPolicy>,
    diags: &mut Diagnostics,
) -> Option<Call> {
    let before = diags.list.len();
    let upstream = upstreams.find(&call.upstream, diags);
    let method = match Method::from_bytes(call.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => Some(m),
        Err(_) => {
            diags.error(
                call.method.pos,
                format!("`{}` is not a request method", *call.method),
            );
            None
        }
    };
    if !call.path.starts_with('/') {
        diags.error(call.path.pos, "a call's path must start with `/`");
    }
    let mut deps = Vec::new();
    let path_template = template(&call.path, call, names, template_params, &mut deps, diags);
    // With every placeholder filled, the literal text must make a valid request target.
    let sample = |t: &Template| t.expand(|_| Some("x".to_owned())).unwrap_or_default();
    if let Some(t) = &path_template
        && http::uri::PathAndQuery::try_from(sample(t).as_str()).is_err()
    {
        diags.error(
            call.path.pos,
            "a call's path is not a valid request target (percent-encode spaces and other \
             characters a URL may not hold)",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &call.headers {
        let parsed = template(value, call, names, template_params, &mut deps, diags);
        if let Some(t) = &parsed
            && http::HeaderValue::from_str(&sample(t)).is_err()
        {
            diags.error(
                value.pos,
                format!("header `{name}` is not a valid header value"),
            );
        }
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => {
                if let Some(parsed) = parsed {
                    headers.push((header, parsed));
                }
            }
            Err(_) => diags.error(value.pos, format!("`{name}` is not a valid header name")),
        }
    }
    deps.sort_unstable();
    deps.dedup();
    if let (Some(hedge), Some(method)) = (&call.hedge, &method) {
        let idempotent = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        if !idempotent {
            diags.error(
                hedge.pos,
                format!("hedge needs an idempotent method; `{method}` may not be sent twice"),
            );
        } else if hedge.0.is_zero() {
            diags.error(hedge.pos, "hedge must be longer than 0");
        }
    }
    if call.max_body.0 == 0 {
        diags.error(call.name.pos, "a call's max_body must be at least 1 byte");
    }
    if diags.list.len() > before {
        return None;
    }
    let upstream = upstream?;
    let timeout = call.timeout.map(|t| t.0);
    let forward_route = Route {
        name: Arc::from(format!("{}/{}", *route.name, *call.name)),
        action: Action::Forward {
            arms: vec![Arc::clone(&upstream)],
            sequence: vec![0],
            next: AtomicUsize::new(0),
        },
        plugins: PluginChain::default(),
        rewrite: None,
        path_policy: Default::default(),
        timeout,
        retry: retry.cloned(),
        mirror: None,
        stream: crate::runtime::StreamLimits::DEFAULT,
    };
    Some(Call {
        name: Arc::from(call.name.as_str()),
        upstream,
        method: method?,
        path: path_template?,
        headers,
        timeout,
        hedge: call.hedge.as_ref().map(|h| h.0),
        max_body: usize::try_from(call.max_body.0).unwrap_or(usize::MAX),
        format: match call.format {
            FormatSpec::Auto => Format::Auto,
            FormatSpec::Json => Format::Json,
            FormatSpec::Xml => Format::Xml,
            FormatSpec::Form => Format::Form,
            FormatSpec::Text => Format::Text,
        },
        required: call.required,
        shape: Shape {
            target: call.target.as_deref().map(path),
            allow: call.allow.iter().map(|p| path(p)).collect(),
            deny: call.deny.iter().map(|p| path(p)).collect(),
            rename: call
                .rename
                .iter()
                .map(|(a, b)| (path(a), path(b)))
                .collect(),
            group: call.group.clone(),
            collection: call.collection,
        },
        deps,
        route: Arc::new(forward_route),
    })
}

/// Parses one template and checks its placeholders: path parameters the route's template
/// has, calls that exist (each becomes a dependency).
fn template(
    text: &At<String>,
    call: &CallSpec,
    names: &HashMap<&str, usize>,
    template_params: &Option<Vec<String>>,
    deps: &mut Vec<usize>,
    diags: &mut Diagnostics,
) -> Option<Template> {
    let parsed = match Template::parse(text) {
        Ok(parsed) => parsed,
        Err(err) => {
            diags.error(text.pos, err.to_string());
            return None;
        }
    };
    for piece in &parsed.0 {
        match piece {
            Piece::Path(name) => match template_params {
                None => diags.error(
                    text.pos,
                    format!("`{{path.{name}}}` needs the route to match with a path_template"),
                ),
                Some(known) if !known.contains(name) => diags.error(
                    text.pos,
                    format!(
                        "`{{path.{name}}}`: the route's path_template has no parameter `{name}`{}",
                        did_you_mean(name, known.iter().map(String::as_str))
                    ),
                ),
                Some(_) => {}
            },
            Piece::Call { call: other, .. } => match names.get(other.as_str()) {
                Some(&index) => deps.push(index),
                None => diags.error(
                    text.pos,
                    format!(
                        "call `{}` takes a field from `{other}`, which is not a call of this aggregate{}",
                        *call.name,
                        did_you_mean(other, names.keys().copied())
                    ),
                ),
            },
            _ => {}
        }
    }
    Some(parsed)
}
