//! `forward_auth`: each request is described to an auth service — one of the config's
//! upstreams — which decides (what Traefik's ForwardAuth, nginx's `auth_request` and Envoy's
//! HTTP ext_authz do).
//!
//! The check is a bodiless request to `path` (method `GET` unless configured) carrying the
//! original request in `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host`,
//! `X-Forwarded-Proto` and `X-Forwarded-For` (the trusted client address), plus the
//! `request_headers` listed. A 2xx lets the request on with the answer's `response_headers`
//! copied onto it (the client's own headers of those names are always removed first); any
//! other answer is the client's: status, `client_headers` and body. No answer in time, no
//! healthy target, a broken or too long answer: 503 `auth_unavailable`, never through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request};

use super::auth::Consumers;
use super::decisions::{Decisions, Key};
use super::{BuildError, Deferred, Flow, Phase, Plugin, SubResult, SubTarget};
use crate::body::Body;
use crate::config::At;
use crate::config::spec_forward_auth::ForwardAuthSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

/// `x-forwarded-method`.
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `x-forwarded-uri`.
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// `x-forwarded-host`.
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the auth service decided.
#[derive(Debug)]
enum Decision {
    /// Let the request on, with these headers, as this consumer (if named).
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
        consumer: Option<String>,
    },
    /// Answer the client this.
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// `cache:` compiled.
#[derive(Debug)]
struct Cache {
    key: Vec<HeaderName>,
    ttl: Duration,
    negative_ttl: Duration,
    decisions: Decisions<Decision>,
}

/// A compiled `forward_auth`.
#[derive(Debug)]
pub(crate) struct ForwardAuth {
    shared: Arc<Shared>,
}

/// What the deferred call needs.
#[derive(Debug)]
struct Shared {
    target: SubTarget,
    path: PathAndQuery,
    /// `None`: the request's own.
    method: Option<Method>,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    client_headers: Vec<HeaderName>,
    timeout: Duration,
    max_body: usize,
    cache: Option<Cache>,
    consumers: Arc<Consumers>,
}

fn invalid(pos: crate::config::Pos, message: String) -> BuildError {
    BuildError::At { pos, message }
}

fn names(list: &[At<String>]) -> Result<Vec<HeaderName>, BuildError> {
    list.iter().map(name).collect()
}

fn name(text: &At<String>) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| invalid(text.pos, format!("invalid header name `{}`", **text)))
}

impl ForwardAuth {
    /// Checks the settings and finds the upstream.
    pub(crate) fn new(
        spec: &ForwardAuthSpec,
        env: super::BuildEnv<'_>,
    ) -> Result<Self, BuildError> {
        let target = (env.upstreams.0)(&spec.upstream)
            .map_err(|message| invalid(spec.upstream.pos, message))?;
        let path = spec
            .path
            .starts_with('/')
            .then(|| PathAndQuery::try_from(spec.path.as_str()).ok())
            .flatten()
            .ok_or_else(|| {
                invalid(
                    spec.path.pos,
                    "path must be an absolute path like /check (a query may follow)".to_owned(),
                )
            })?;
        let method = if spec.method.eq_ignore_ascii_case("original") {
            None
        } else {
            let method = Method::from_bytes(spec.method.as_bytes())
                .ok()
                .filter(|m| *m != Method::CONNECT)
                .ok_or_else(|| {
                    invalid(
                        spec.method.pos,
                        format!(
                            "method `{}`: expected a method like GET, or `original`",
                            *spec.method
                        ),
                    )
                })?;
            Some(method)
        };
        let cache = match &spec.cache {
            None => None,
            Some(c) => {
                if c.key.is_empty() {
                    return Err(invalid(
                        spec.upstream.pos,
                        "cache.key needs at least one header name".to_owned(),
                    ));
                }
                if c.ttl.0.is_zero() {
                    return Err(invalid(
                        spec.upstream.pos,
                        "cache.ttl must be longer than 0".to_owned(),
                    ));
                }
                Some(Cache {
                    key: names(&c.key)?,
                    ttl: c.ttl.0,
                    negative_ttl: c.negative_ttl.0,
                    decisions: Decisions::new(c.max_entries),
                })
            }
        };
        Ok(ForwardAuth {
            shared: Arc::new(Shared {
                target,
                path,
                method,
                request_headers: names(&spec.request_headers)?,
                response_headers: names(&spec.response_headers)?,
                consumer_header: spec.consumer_header.as_ref().map(name).transpose()?,
                client_headers: names(&spec.client_headers)?,
                timeout: spec.timeout.0.max(Duration::from_millis(1)),
                max_body: usize::try_from(spec.max_body.0).unwrap_or(usize::MAX),
                cache,
                consumers: Arc::clone(env.consumers),
            }),
        })
    }
}

impl Shared {
    /// The check's request head for the request `head`.
    fn check(&self, head: &request::Parts) -> request::Parts {
        let (mut check, ()) = http::Request::new(()).into_parts();
        check.method = self.method.clone().unwrap_or_else(|| head.method.clone());
        check.uri = http::Uri::from(self.path.clone());
        let headers = &mut check.headers;
        headers.reserve(4 + self.request_headers.len());
        if let Ok(method) = HeaderValue::from_str(head.method.as_str()) {
            headers.insert(&X_FORWARDED_METHOD, method);
        }
        let uri = head.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        if let Ok(uri) = HeaderValue::from_str(uri) {
            headers.insert(&X_FORWARDED_URI, uri);
        }
        if let Some(host) = host(head) {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        for name in &self.request_headers {
            for value in head.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        check
    }

    /// The cache key of a request: the SHA-256 of the key headers' values and of what the
    /// auth service is told about the request (method, host, URI), so a decision about one
    /// path is never reused for another.
    fn key(&self, cache: &Cache, head: &request::Parts) -> Key {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut part = |bytes: &[u8]| {
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        part(head.method.as_str().as_bytes());
        part(host(head).as_ref().map_or(&b""[..], HeaderValue::as_bytes));
        part(
            head.uri
                .path_and_query()
                .map_or("/", PathAndQuery::as_str)
                .as_bytes(),
        );
        for name in &cache.key {
            let values = head.headers.get_all(name);
            part(&(values.iter().count() as u64).to_be_bytes());
            for value in values {
                part(value.as_bytes());
            }
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.finish().as_ref());
        key
    }

    /// The decision of an answer, with how long it may be kept; `None` for no usable answer.
    fn decide(&self, answer: SubResult) -> Option<(Decision, Duration)> {
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(upstream = %self.target.name, error = %err, "forward_auth: the auth service gave no usable answer");
                return None;
            }
        };
        let (parts, body) = answer.into_parts();
        let kept = self.cache.as_ref();
        if parts.status.is_success() {
            let headers = self
                .response_headers
                .iter()
                .filter_map(|name| Some((name.clone(), parts.headers.get(name)?.clone())))
                .collect();
            let consumer = self
                .consumer_header
                .as_ref()
                .and_then(|name| parts.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned);
            let ttl = kept.map_or(Duration::ZERO, |c| c.ttl);
            return Some((Decision::Allow { headers, consumer }, ttl));
        }
        let mut headers = Vec::new();
        for name in &self.client_headers {
            for value in parts.headers.get_all(name) {
                headers.push((name.clone(), value.clone()));
            }
        }
        // A refusal that sets a cookie is for one client (a login's state): never reused.
        let ttl = if parts.headers.contains_key(header::SET_COOKIE) {
            Duration::ZERO
        } else {
            kept.map_or(Duration::ZERO, |c| c.negative_ttl)
        };
        Some((
            Decision::Deny {
                status: parts.status,
                headers,
                body,
            },
            ttl,
        ))
    }

    /// One check, within the timeout.
    async fn ask(
        &self,
        call: std::pin::Pin<Box<dyn Future<Output = SubResult> + Send>>,
    ) -> Option<(Decision, Duration)> {
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(super::SubError::Failed(
                "the auth service did not answer in time",
            )));
        self.decide(answer)
    }
}

/// The host the client asked for.
fn host(head: &request::Parts) -> Option<HeaderValue> {
    if let Some(host) = head.headers.get(header::HOST) {
        return Some(host.clone());
    }
    head.uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// The 503 of an auth service that gave no usable answer: fail closed.
fn unavailable(request_id: &HeaderValue) -> http::Response<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
        "the request cannot be authorized now",
        request_id,
    )
}

/// The auth service's refusal, as the client gets it.
fn refusal(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: &Bytes,
) -> http::Response<Body> {
    let mut response = http::Response::new(Body::full(body.clone()));
    *response.status_mut() = status;
    let map: &mut HeaderMap = response.headers_mut();
    for (name, value) in headers {
        map.append(name.clone(), value.clone());
    }
    map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

impl Decision {
    /// What the chain does with it.
    fn apply(&self, consumers: &Consumers) -> Deferred {
        match self {
            Decision::Allow { headers, consumer } => Deferred::ContinueWith(
                consumer
                    .as_deref()
                    .map(|n| super::introspection::consumer(consumers, n)),
                headers.clone(),
            ),
            Decision::Deny {
                status,
                headers,
                body,
            } => Deferred::Respond(refusal(*status, headers, body)),
        }
    }
}

impl Plugin for ForwardAuth {
    fn name(&self) -> &'static str {
        "forward_auth"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn stops(&self) -> Option<&'static str> {
        Some("the auth service's answer unless a 2xx; 503 if it gives none in time")
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let s = &self.shared;
        let method = s
            .method
            .as_ref()
            .map_or_else(|| head.method.to_string(), Method::to_string);
        let listed = |names: &[HeaderName]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names
                    .iter()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut notes = vec![format!(
            "the request would be described to upstream {} ({method} {}, X-Forwarded-Method/Uri/Host/Proto/For, \
             request headers: {}); the auth service is not called offline, so its decision is not known",
            s.target.name,
            s.path,
            listed(&s.request_headers),
        )];
        notes.push(format!(
            "a 2xx copies [{}] onto the request{}; any other answer is relayed with [{}]",
            listed(&s.response_headers),
            s.consumer_header
                .as_ref()
                .map_or_else(String::new, |h| format!(", consumer from {h}")),
            listed(&s.client_headers),
        ));
        if let Some(cache) = &s.cache {
            notes.push(format!(
                "decisions cached for {:?} by [{}], method, host and URI",
                cache.ttl,
                listed(&cache.key)
            ));
        }
        super::Explained::Offline(notes)
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let s = &self.shared;
        // Only the auth service may set these: a client's own never reach the upstream.
        for name in s.response_headers.iter().chain(&s.consumer_header) {
            head.headers.remove(name);
        }
        let key = s.cache.as_ref().map(|cache| (s.key(cache, head), cache));
        if let Some((key, cache)) = &key
            && let Some(kept) = cache.decisions.get(key)
        {
            return Ok(match kept.apply(&s.consumers) {
                Deferred::ContinueWith(consumer, headers) => {
                    if consumer.is_some() {
                        ctx.consumer = consumer;
                    }
                    for (name, value) in headers {
                        head.headers.insert(name, value);
                    }
                    Flow::Continue
                }
                Deferred::Continue(_) => Flow::Continue,
                Deferred::Respond(response) => Flow::Respond(response),
                Deferred::Apply(edit) => {
                    edit(ctx, head);
                    Flow::Continue
                }
            });
        }
        let check = s.check(head);
        let shared = Arc::clone(&self.shared);
        let key = key.map(|(key, _)| key);
        Ok(Flow::Subrequest(Box::new(move |ctx, calls| {
            let request_id = ctx.request_id.clone();
            let call = calls.call(ctx, &shared.target, check, shared.max_body);
            Box::pin(async move {
                let decided = match (key, &shared.cache) {
                    (Some(key), Some(cache)) => cache.decisions.shared(key, shared.ask(call)).await,
                    _ => shared.ask(call).await.map(|(d, _)| Arc::new(d)),
                };
                match decided {
                    Some(decision) => decision.apply(&shared.consumers),
                    None => Deferred::Respond(unavailable(&request_id)),
                }
            })
        })))
    }
}

#[cfg(test)]
mod tests;
