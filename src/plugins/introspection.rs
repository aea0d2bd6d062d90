//! `oauth2_introspection`: opaque bearer tokens checked at an OAuth 2.0 introspection endpoint
//! (RFC 7662), with the RFC 6750 challenges.
//!
//! The token is POSTed as a form with portico's client credentials; the answer decides: not
//! `active`, expired, for another audience → 401 `invalid_token`; without a required scope →
//! 403 `insufficient_scope`. Answers are cached by the SHA-256 of the token (the token itself is
//! never kept) until the token's `exp` or `cache_ttl`, whichever is sooner; refusals for
//! `negative_cache_ttl`. Concurrent requests with one uncached token share one call. An endpoint
//! that cannot be reached, is too slow, or answers anything but a 2xx JSON object fails closed
//! with 503 `auth_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, header, request};

use super::auth::Consumer;
use super::decisions::Decisions;
use super::{BuildError, Deferred, Flow, Phase, Plugin};
use crate::body::Body;
use crate::config::spec_introspection::IntrospectionSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

/// Most bytes read of one introspection answer.
const MAX_ANSWER: usize = 64 * 1024;

/// A token's SHA-256: the cache key.
type TokenHash = [u8; 32];

/// What an introspection answer decided for the token.
#[derive(Debug)]
enum Verdict {
    /// Let the request on as this consumer (if the answer named one), with these headers.
    Allow {
        consumer: Option<String>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// 401 `invalid_token`.
    Invalid(&'static str),
    /// 403 `insufficient_scope`.
    Scope,
}

/// A compiled `oauth2_introspection`.
#[derive(Debug)]
pub(crate) struct Introspection {
    shared: Arc<Shared>,
    hide: bool,
    claims_to_headers: Vec<(String, HeaderName)>,
    consumers: Arc<super::auth::Consumers>,
}

/// What the deferred call needs.
#[derive(Debug)]
struct Shared {
    url: http::Uri,
    client_id: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization: Basic` for `client_auth: basic`.
    basic: Option<HeaderValue>,
    /// `&client_id=...&client_secret=...` for `client_auth: post`.
    post: String,
    scopes: Vec<String>,
    /// The 403 challenge, naming the required scopes (RFC 6750 §3).
    scope_challenge: HeaderValue,
    audience: Vec<String>,
    consumer_claim: String,
    claims_to_headers: Vec<(String, HeaderName)>,
    timeout: Duration,
    cache_ttl: Duration,
    negative_ttl: Duration,
    cache: Decisions<Verdict>,
}

impl Introspection {
    /// Checks the settings and builds the client; `ca_file` is relative to the config.
    pub(crate) fn new(
        spec: &IntrospectionSpec,
        env: super::BuildEnv<'_>,
    ) -> Result<Self, BuildError> {
        let url_pos = spec.introspection_url.pos;
        let (url, https) = super::auth::server_url(&spec.introspection_url, "introspection_url")?;
        let tls = super::auth::server_tls(https, spec.ca_file.as_ref(), &env, url_pos)?;
        let (basic, post) = super::auth::client_credentials(
            spec.client_auth,
            &spec.client_id,
            &spec.client_secret,
        )?;
        let claims_to_headers = super::auth::claim_headers(&spec.claims_to_headers)?;
        Ok(Introspection {
            shared: Arc::new(Shared {
                url,
                client_id: spec.client_id.value.clone(),
                tls,
                basic,
                post,
                scopes: spec.scopes.clone(),
                scope_challenge: HeaderValue::from_str(&format!(
                    "Bearer realm=\"portico\", error=\"insufficient_scope\", scope=\"{}\"",
                    spec.scopes.join(" ")
                ))
                .unwrap_or_else(|_| challenge("insufficient_scope")),
                audience: spec.audience.clone(),
                consumer_claim: spec.consumer_claim.clone(),
                claims_to_headers: claims_to_headers.clone(),
                timeout: spec.timeout.0.max(Duration::from_millis(1)),
                cache_ttl: spec.cache_ttl.0,
                negative_ttl: spec.negative_cache_ttl.0,
                cache: Decisions::new(spec.cache_max_entries),
            }),
            hide: spec.hide_credentials,
            claims_to_headers,
            consumers: Arc::clone(env.consumers),
        })
    }

    fn consumer(&self, name: &str) -> Arc<Consumer> {
        consumer(&self.consumers, name)
    }
}

/// The consumer of this name: the config's, or one made up for a name it does not list.
pub(crate) fn consumer(consumers: &super::auth::Consumers, name: &str) -> Arc<Consumer> {
    consumers.by_name(name).unwrap_or_else(|| {
        Arc::new(Consumer {
            name_value: HeaderValue::from_str(name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            name: name.to_owned(),
            groups: Vec::new(),
            groups_value: None,
        })
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The text of a string or number member.
fn claim_text(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl Shared {
    /// Decides from an introspection answer; with how long the decision may be reused.
    fn decide(&self, body: &[u8]) -> Option<(Verdict, Duration)> {
        let serde_json::Value::Object(claims) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        let negative = |message| Some((Verdict::Invalid(message), self.negative_ttl));
        if claims.get("active") != Some(&serde_json::Value::Bool(true)) {
            return negative("the token is not active");
        }
        let now = now_secs();
        let mut ttl = self.cache_ttl;
        if let Some(exp) = claims.get("exp") {
            let Some(exp) = exp.as_u64() else {
                return negative("the token is not valid");
            };
            if exp <= now {
                return negative("the token has expired");
            }
            ttl = ttl.min(Duration::from_secs(exp - now));
        }
        if !self.audience.is_empty() {
            let fits = |a: &serde_json::Value| {
                a.as_str()
                    .is_some_and(|a| self.audience.iter().any(|ok| ok == a))
            };
            let ok = match claims.get("aud") {
                Some(serde_json::Value::Array(list)) => list.iter().any(fits),
                Some(one) => fits(one),
                None => false,
            };
            if !ok {
                return negative("the token is not for this audience");
            }
        }
        let granted = claims
            .get("scope")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if !self
            .scopes
            .iter()
            .all(|need| granted.split(' ').any(|s| s == need))
        {
            return Some((Verdict::Scope, self.negative_ttl));
        }
        let headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, name)| {
                let value = HeaderValue::from_str(&claim_text(&claims, claim)?).ok()?;
                Some((name.clone(), value))
            })
            .collect();
        Some((
            Verdict::Allow {
                consumer: claim_text(&claims, &self.consumer_claim),
                headers,
            },
            ttl,
        ))
    }

    /// One introspection call and its decision; `None` when the endpoint failed.
    async fn introspect(&self, token: &str) -> Option<(Verdict, Duration)> {
        let mut form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        form.push_str(&self.post);
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .basic
            .iter()
            .map(|v| (header::AUTHORIZATION, v.clone()))
            .collect();
        match crate::tls::post_form(
            &self.url,
            self.tls.clone(),
            &headers,
            bytes::Bytes::from(form),
            self.timeout,
            MAX_ANSWER,
        )
        .await
        {
            Ok(body) => {
                let decided = self.decide(&body);
                if decided.is_none() {
                    tracing::warn!(url = %self.url, "the introspection answer is not a JSON object");
                }
                decided
            }
            Err(err) => {
                tracing::warn!(url = %self.url, error = %err, "token introspection failed");
                None
            }
        }
    }

    /// The verdict for `token`: cached, or from one call shared by every request waiting for
    /// the same token.
    async fn verdict(self: Arc<Self>, key: TokenHash, token: String) -> Option<Arc<Verdict>> {
        self.cache.shared(key, self.introspect(&token)).await
    }
}

/// RFC 6750 §3: a challenge with an error code.
fn challenge(error: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer realm=\"portico\", error=\"{error}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"portico\""))
}

/// The answer for a refused token.
fn refusal(
    verdict: &Verdict,
    scope_challenge: &HeaderValue,
    request_id: &HeaderValue,
) -> Option<http::Response<Body>> {
    match verdict {
        Verdict::Allow { .. } => None,
        Verdict::Invalid(message) => Some(super::auth::unauthorized(
            request_id,
            &challenge("invalid_token"),
            message,
        )),
        Verdict::Scope => {
            let mut response = error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the token lacks a required scope",
                request_id,
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, scope_challenge.clone());
            Some(response)
        }
    }
}

/// The 503 of an endpoint that failed: fail closed.
fn unavailable(request_id: &HeaderValue) -> http::Response<Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
        "the token cannot be checked now",
        request_id,
    )
}

impl Plugin for Introspection {
    fn name(&self) -> &'static str {
        "oauth2_introspection"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn stops(&self) -> Option<&'static str> {
        Some("401 without an active token, 403 without the scopes, 503 if the endpoint fails")
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        match super::auth::bearer(head) {
            Ok(Some(_)) => super::Explained::Offline(vec![format!(
                "the bearer token (not shown) would be POSTed to {} as client {} ({}); the \
                 endpoint is not called offline, so whether the token is active is not known",
                self.shared.url,
                self.shared.client_id,
                if self.shared.basic.is_some() {
                    "HTTP Basic"
                } else {
                    "credentials in the form"
                }
            )]),
            _ => super::Explained::Run(vec!["no bearer token sent".to_owned()]),
        }
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let token = match super::auth::bearer(head) {
            Err(()) => {
                return Ok(Flow::Respond(super::auth::unauthorized(
                    &ctx.request_id,
                    &challenge("invalid_token"),
                    "more than one Authorization header",
                )));
            }
            Ok(None) => {
                static CHALLENGE: HeaderValue =
                    HeaderValue::from_static("Bearer realm=\"portico\"");
                return Ok(Flow::Respond(super::auth::unauthorized(
                    &ctx.request_id,
                    &CHALLENGE,
                    "a bearer token is required",
                )));
            }
            Ok(Some(token)) => token.to_owned(),
        };
        if self.hide {
            head.headers.remove(header::AUTHORIZATION);
        }
        for (_, name) in &self.claims_to_headers {
            head.headers.remove(name);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(cached) = self.shared.cache.get(&key) {
            if let Some(response) = refusal(&cached, &self.shared.scope_challenge, &ctx.request_id)
            {
                return Ok(Flow::Respond(response));
            }
            if let Verdict::Allow { consumer, headers } = &*cached {
                if let Some(name) = consumer {
                    ctx.consumer = Some(self.consumer(name));
                }
                for (name, value) in headers {
                    head.headers.insert(name.clone(), value.clone());
                }
            }
            return Ok(Flow::Continue);
        }
        let shared = Arc::clone(&self.shared);
        let consumers = Arc::clone(&self.consumers);
        let request_id = ctx.request_id.clone();
        Ok(Flow::Defer(Box::pin(async move {
            let Some(verdict) = Arc::clone(&shared).verdict(key, token).await else {
                return Deferred::Respond(unavailable(&request_id));
            };
            if let Some(response) = refusal(&verdict, &shared.scope_challenge, &request_id) {
                return Deferred::Respond(response);
            }
            match &*verdict {
                Verdict::Allow {
                    consumer: name,
                    headers,
                } => Deferred::ContinueWith(
                    name.as_deref().map(|n| consumer(&consumers, n)),
                    headers.clone(),
                ),
                _ => Deferred::Respond(unavailable(&request_id)),
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(scopes: &[&str], audience: &[&str]) -> Shared {
        Shared {
            url: "http://127.0.0.1:1/introspect".parse().unwrap(),
            client_id: "portico".to_owned(),
            tls: None,
            basic: None,
            post: String::new(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            scope_challenge: challenge("insufficient_scope"),
            audience: audience.iter().map(|s| (*s).to_owned()).collect(),
            consumer_claim: "username".to_owned(),
            claims_to_headers: vec![("sub".to_owned(), HeaderName::from_static("x-user-id"))],
            timeout: Duration::from_millis(200),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            cache: Decisions::new(2),
        }
    }

    #[test]
    fn answers_decide() {
        let s = shared(&["read"], &["api"]);
        let exp = now_secs() + 30;
        let good = format!(
            r#"{{"active":true,"username":"alice","sub":"u1","scope":"read write","aud":["x","api"],"exp":{exp}}}"#
        );
        let (verdict, ttl) = s.decide(good.as_bytes()).unwrap();
        assert!(
            ttl <= Duration::from_secs(30) && ttl >= Duration::from_secs(28),
            "{ttl:?}"
        );
        match verdict {
            Verdict::Allow { consumer, headers } => {
                assert_eq!(consumer.as_deref(), Some("alice"));
                assert_eq!(headers[0].1, "u1");
            }
            other => panic!("{other:?}"),
        }
        for (body, want) in [
            (r#"{"active":false}"#.to_owned(), "the token is not active"),
            (r#"{"active":"true"}"#.to_owned(), "the token is not active"),
            (
                r#"{"active":true,"exp":1,"aud":"api","scope":"read"}"#.to_owned(),
                "the token has expired",
            ),
            (
                r#"{"active":true,"aud":"other","scope":"read"}"#.to_owned(),
                "the token is not for this audience",
            ),
        ] {
            match s.decide(body.as_bytes()) {
                Some((Verdict::Invalid(message), ttl)) => {
                    assert_eq!(message, want, "{body}");
                    assert_eq!(ttl, Duration::from_secs(10));
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            s.decide(br#"{"active":true,"aud":"api","scope":"reader write"}"#),
            Some((Verdict::Scope, _))
        ));
        assert!(s.decide(b"[1]").is_none());
        assert!(s.decide(b"not json").is_none());
    }

    #[tokio::test]
    async fn an_abandoned_call_leaves_nothing_behind() {
        // An endpoint that takes the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = shared(&[], &[]);
        s.url = format!("http://{}/introspect", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let s = Arc::new(s);
        let waiting = Arc::clone(&s).verdict([7; 32], "t".to_owned());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting)
                .await
                .is_err()
        );
        assert!(s.cache.idle());
        // A call that fails (the endpoint times out) is not cached and is forgotten too.
        let s2 = Arc::clone(&s);
        assert!(s2.verdict([8; 32], "t".to_owned()).await.is_none());
        assert!(s.cache.idle());
        assert!(s.cache.get(&[8; 32]).is_none());
    }
}
