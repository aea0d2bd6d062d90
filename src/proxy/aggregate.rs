//! The `aggregate` action: expand each call's templates, run the calls through the same
//! `select` and `forward` stages as any forward (so balancing, health, retries, TLS and the
//! pools apply), read each answer (bounded) as JSON, shape and merge them.
//!
//! The calls are futures of the request's own future: a client that goes away drops them,
//! which cancels the calls still out.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::forward::{self, Hop};
use super::headers::HopInfo;
use crate::aggregate::convert::{self, Format};
use crate::aggregate::shape;
use crate::aggregate::template::{self, Piece};
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::plugins::jwt::Claims;
use crate::runtime::aggregate::{Aggregate, Call};

/// `x-portico-completed`: whether every call's answer is in the merged one.
pub(crate) static X_PORTICO_COMPLETED: HeaderName = HeaderName::from_static("x-portico-completed");

/// Why a call has no answer.
#[derive(Debug, Clone)]
enum Failure {
    /// It did not finish in time.
    Timeout,
    /// It failed; the words name no address.
    Failed(String),
}

/// What a call came to.
#[derive(Debug)]
enum Outcome {
    /// Its answer as JSON (before shaping), and how long it may be cached, if at all.
    Done(Value, Option<u64>),
    /// No answer.
    Failed(Failure),
}

/// The client's request, as the templates read it.
pub(crate) struct Input<'a> {
    /// The request head (after the request plugins).
    pub(crate) head: &'a http::request::Parts,
    /// The request's state (consumer, claims).
    pub(crate) ctx: &'a RequestCtx,
    /// The client address as `X-Forwarded-For` writes it.
    pub(crate) client_value: &'a HeaderValue,
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The address the client connected to.
    pub(crate) local: std::net::SocketAddr,
}

/// The request values a template may use.
struct Values<'a> {
    agg: &'a Aggregate,
    path: &'a str,
    query: HashMap<String, String>,
    headers: &'a HeaderMap,
    consumer: Option<&'a str>,
    claims: Option<&'a Claims>,
}

impl Values<'_> {
    /// A request placeholder's text (empty when the request has no such value); `None` for a
    /// call's field.
    fn request(&self, piece: &Piece) -> Option<String> {
        Some(match piece {
            Piece::Literal(text) => text.clone(),
            Piece::Path(name) => self
                .agg
                .path_template
                .as_ref()
                .and_then(|p| p.get(self.path, name))
                .unwrap_or_default(),
            Piece::Query(name) => self.query.get(name).cloned().unwrap_or_default(),
            Piece::Header(name) => self
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            Piece::Consumer => self.consumer.unwrap_or_default().to_owned(),
            Piece::Claim(name) => self
                .claims
                .and_then(|c| c.0.get(name))
                .and_then(template::text)
                .unwrap_or_default(),
            Piece::Call { .. } => return None,
        })
    }
}

/// Runs an aggregate for a request and answers the merged JSON.
pub(crate) async fn run(agg: &Aggregate, input: Input<'_>) -> Result<Response<Body>, ProxyError> {
    let values = Values {
        agg,
        path: input.head.uri.path(),
        query: input
            .head
            .uri
            .query()
            .map(|q| crate::view::query_pairs(q).collect())
            .unwrap_or_default(),
        headers: &input.head.headers,
        consumer: input.ctx.consumer.as_ref().map(|c| c.name.as_str()),
        claims: input.ctx.slots.get::<Claims>(),
    };
    let n = agg.calls.len();
    let mut results: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut started = vec![false; n];
    let mut running = FuturesUnordered::new();
    let deadline = agg.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        // Start what can start; a call whose dependency failed fails with it (which may let
        // later calls fail too: hence the repeat).
        let mut changed = true;
        while changed {
            changed = false;
            for (index, call) in agg.calls.iter().enumerate() {
                if started[index] {
                    continue;
                }
                let failed_dep = call
                    .deps
                    .iter()
                    .find(|&&d| matches!(results[d], Some(Outcome::Failed(_))));
                if let Some(&dep) = failed_dep {
                    let reason = format!("it needs `{}`, which failed", agg.calls[dep].name);
                    results[index] = Some(Outcome::Failed(Failure::Failed(reason)));
                    started[index] = true;
                    changed = true;
                    continue;
                }
                if call
                    .deps
                    .iter()
                    .all(|&d| matches!(results[d], Some(Outcome::Done(..))))
                {
                    started[index] = true;
                    let request = build(agg, call, &values, &results);
                    running.push(send(index, call, request, &input));
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let next = match deadline {
            Some(at) => tokio::select! {
                next = running.next() => next,
                () = tokio::time::sleep_until(at) => None,
            },
            None => running.next().await,
        };
        match next {
            Some((index, outcome)) => results[index] = Some(outcome),
            None => break,
        }
    }
    // What is still out when the deadline passed is cancelled here.
    drop(running);
    let outcomes: Vec<Outcome> = results
        .into_iter()
        .map(|r| r.unwrap_or(Outcome::Failed(Failure::Timeout)))
        .collect();
    merge(agg, outcomes)
}

/// A call's request head: its path and query and its headers, placeholders filled. A field
/// of an earlier answer that is missing (or not a string, number or boolean) fails the call.
fn build(
    agg: &Aggregate,
    call: &Call,
    values: &Values<'_>,
    results: &[Option<Outcome>],
) -> Result<http::request::Parts, String> {
    let mut missing = None;
    let mut fill = |piece: &Piece, encode: bool| {
        if let Some(text) = values.request(piece) {
            return Some(if encode {
                template::encode(&text)
            } else {
                text
            });
        }
        let Piece::Call { call: from, field } = piece else {
            return None;
        };
        let answer = agg
            .calls
            .iter()
            .position(|c| &*c.name == from)
            .and_then(|i| match &results[i] {
                Some(Outcome::Done(value, _)) => Some(value),
                _ => None,
            });
        let text = answer
            .and_then(|v| shape::get(v, field))
            .and_then(template::text);
        match text {
            Some(text) if encode => Some(template::encode(&text)),
            Some(text) => Some(text),
            None => {
                missing = Some(format!(
                    "`{from}.{}` is not a string, number or boolean in the answer of `{from}`",
                    field.join(".")
                ));
                None
            }
        }
    };
    let path = call.path.expand(|p| fill(p, true));
    let mut headers = HeaderMap::new();
    for (name, value) in &call.headers {
        let Some(text) = value.expand(|p| fill(p, false)) else {
            break;
        };
        if text.is_empty() {
            continue;
        }
        match HeaderValue::from_str(&text) {
            Ok(value) => {
                headers.append(name.clone(), value);
            }
            Err(_) => return Err(format!("header `{name}` is not a valid header value")),
        }
    }
    if let Some(missing) = missing {
        return Err(missing);
    }
    let path = path.ok_or_else(|| "its path could not be built".to_owned())?;
    let (mut head, ()) = Request::builder()
        .method(call.method.clone())
        .uri(path.as_str())
        .body(())
        .map_err(|_| "its path is not a valid request target".to_owned())?
        .into_parts();
    head.headers = headers;
    Ok(head)
}

/// One call: `select`, `forward` and the tries, then its answer read and converted, all
/// within the call's timeout.
async fn send(
    index: usize,
    call: &Call,
    head: Result<http::request::Parts, String>,
    input: &Input<'_>,
) -> (usize, Outcome) {
    let head = match head {
        Ok(head) => head,
        Err(reason) => return (index, Outcome::Failed(Failure::Failed(reason))),
    };
    let exchange = hedged(call, head, input);
    let result = match call.timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => exchange.await,
    };
    let outcome = match result {
        Ok((value, age)) => Outcome::Done(value, age),
        Err(failure) => Outcome::Failed(failure),
    };
    (index, outcome)
}

/// The exchange, hedged when the call says so: a second try after `hedge` unless the first
/// answered; the first good answer wins, and dropping the other cancels it.
async fn hedged(
    call: &Call,
    head: http::request::Parts,
    input: &Input<'_>,
) -> Result<(Value, Option<u64>), Failure> {
    let Some(delay) = call.hedge else {
        return exchange(call, head, input).await;
    };
    let mut copy = Request::new(());
    *copy.method_mut() = head.method.clone();
    *copy.uri_mut() = head.uri.clone();
    *copy.headers_mut() = head.headers.clone();
    let (copy, ()) = copy.into_parts();
    let first = exchange(call, head, input);
    let second = async {
        tokio::time::sleep(delay).await;
        tracing::debug!(call = %call.name, "hedging");
        exchange(call, copy, input).await
    };
    let (mut first, mut second) = (Box::pin(first), Box::pin(second));
    tokio::select! {
        result = &mut first => match result {
            Ok(answer) => Ok(answer),
            Err(_) => second.await,
        },
        result = &mut second => match result {
            Ok(answer) => Ok(answer),
            Err(_) => first.await,
        },
    }
}

async fn exchange(
    call: &Call,
    head: http::request::Parts,
    input: &Input<'_>,
) -> Result<(Value, Option<u64>), Failure> {
    let mut ctx = RequestCtx::new(
        input.ctx.request_id.clone(),
        input.ctx.client,
        Arc::clone(&input.ctx.listener),
    );
    ctx.trace = input.ctx.trace.as_ref().map(|t| Box::new(t.child()));
    let tried = async {
        let first = forward::select(&call.upstream, &ctx, &head)?;
        let hop = Hop {
            client_value: input.client_value,
            scheme: input.scheme,
            local: input.local,
            host: None,
            info: HopInfo::default(),
        };
        let tries = forward::forward(
            hop,
            &ctx,
            &call.route,
            &call.upstream,
            first,
            head,
            Body::Empty,
        )?;
        tries.run(&mut ctx).await
    };
    let tried = Box::pin(tried).await;
    if let (Some(trace), Some(call_trace)) = (&input.ctx.trace, ctx.trace.take()) {
        use crate::trace::Value;
        let mut attributes = vec![("portico.call", Value::Str(call.name.to_string()))];
        let failed = match &tried {
            Ok(response) => {
                let status = response.status().as_u16();
                attributes.push(("http.response.status_code", Value::Int(status.into())));
                !response.status().is_success()
            }
            Err(err) => {
                attributes.push(("error.type", Value::Str(err.to_string())));
                true
            }
        };
        trace.adopt(*call_trace, "aggregate call", attributes, failed);
    }
    let response = tried.map_err(|err| {
        tracing::debug!(call = %call.name, error = %err, "aggregate call failed");
        failure(&err)
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(Failure::Failed(format!(
            "its upstream answered {}",
            status.as_u16()
        )));
    }
    let format = match call.format {
        Format::Auto => Format::of(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        ),
        other => other,
    };
    let age = max_age(response.headers());
    let body = collect(response.into_body(), call.max_body).await?;
    let value = convert::convert(&body, format).map_err(|err| Failure::Failed(err.to_string()))?;
    Ok((value, age))
}

/// A forwarding error as a call's failure, in words that name no target.
fn failure(err: &ProxyError) -> Failure {
    match err.code() {
        "upstream_timeout" => Failure::Timeout,
        "upstream_connect_failed" => Failure::Failed("its upstream could not be reached".into()),
        "no_healthy_target" => Failure::Failed("its upstream has no healthy target".into()),
        "circuit_open" => Failure::Failed("its upstream's circuit breaker is open".into()),
        _ => Failure::Failed("its upstream failed to answer".into()),
    }
}

/// The body, up to `max` bytes; more fails the call rather than truncate it.
async fn collect(mut body: Body, max: usize) -> Result<Bytes, Failure> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Failure::Failed("its answer broke off".to_owned()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(Failure::Failed(format!(
                    "its answer is larger than max_body ({max} bytes)"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// How long an answer may be cached by a shared cache, from its `cache-control`: its
/// `s-maxage` or `max-age`, unless `no-store`, `no-cache` or `private` is there; none
/// without the field.
fn max_age(headers: &HeaderMap) -> Option<u64> {
    let mut age = None;
    let mut shared_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let text = value.to_str().ok()?;
        for directive in text.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (
                    n.trim().to_owned(),
                    Some(a.trim().trim_matches('"').to_owned()),
                ),
                None => (directive.clone(), None),
            };
            match (name.as_str(), arg) {
                ("no-store" | "no-cache" | "private", _) => return None,
                ("max-age", Some(a)) => age = a.parse().ok(),
                ("s-maxage", Some(a)) => shared_age = a.parse().ok(),
                _ => {}
            }
        }
    }
    shared_age.or(age)
}

/// The merged answer, or the error that fails the request.
fn merge(agg: &Aggregate, outcomes: Vec<Outcome>) -> Result<Response<Body>, ProxyError> {
    let mut merged = Map::new();
    let mut errors = Vec::new();
    let mut max_age: Option<u64> = None;
    let mut cacheable = true;
    let mut fatal: Option<ProxyError> = None;
    for (call, outcome) in agg.calls.iter().zip(outcomes) {
        match outcome {
            Outcome::Done(value, age) => {
                match age {
                    Some(age) => max_age = Some(max_age.map_or(age, |m| m.min(age))),
                    None => cacheable = false,
                }
                shape::merge(
                    &mut merged,
                    &call.shape,
                    &call.name,
                    call.shape.fields(value),
                );
            }
            Outcome::Failed(failure) => {
                cacheable = false;
                let (code, message) = match &failure {
                    Failure::Timeout => ("aggregate_timeout", "did not finish in time".to_owned()),
                    Failure::Failed(reason) => ("aggregate_failed", reason.clone()),
                };
                if (call.required || !agg.partial) && fatal.is_none() {
                    fatal = Some(match failure {
                        Failure::Timeout => ProxyError::AggregateTimeout {
                            call: Arc::clone(&call.name),
                        },
                        Failure::Failed(reason) => ProxyError::AggregateFailed {
                            call: Arc::clone(&call.name),
                            reason,
                        },
                    });
                }
                errors.push(serde_json::json!({
                    "call": &*call.name,
                    "error": code,
                    "message": message,
                }));
            }
        }
    }
    if let Some(err) = fatal {
        return Err(err);
    }
    let completed = errors.is_empty();
    if !completed {
        // portico's own key: it replaces a call's `errors` member.
        merged.insert("errors".into(), Value::Array(errors));
    }
    let body = serde_json::to_vec(&Value::Object(merged)).unwrap_or_default();
    let mut response = Response::new(Body::full(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        &X_PORTICO_COMPLETED,
        HeaderValue::from_static(if completed { "true" } else { "false" }),
    );
    let cache_control = match max_age {
        Some(age) if cacheable => HeaderValue::from_str(&format!("max-age={age}"))
            .unwrap_or(HeaderValue::from_static("no-store")),
        _ => HeaderValue::from_static("no-store"),
    };
    headers.insert(header::CACHE_CONTROL, cache_control);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn shared_cache_ages() {
        assert_eq!(max_age(&headers(&["max-age=60"])), Some(60));
        assert_eq!(
            max_age(&headers(&["public, max-age=60, s-maxage=10"])),
            Some(10)
        );
        assert_eq!(max_age(&headers(&["max-age=60", "private"])), None);
        assert_eq!(max_age(&headers(&["no-store"])), None);
        assert_eq!(max_age(&headers(&["no-cache, max-age=5"])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }
}
