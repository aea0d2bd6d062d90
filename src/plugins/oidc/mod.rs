//! `oidc`: an OpenID Connect relying party for browser logins (authorization-code flow with
//! PKCE), with an encrypted session cookie, refresh, logout, and bearer access tokens.
//!
//! A request without a session is sent to the provider (browsers) or gets 401 (API clients);
//! the callback checks the login's `state` once, exchanges the code, verifies the ID token
//! (signature by a provider key and an algorithm the provider announced, `iss`, `aud`/`azp`,
//! `exp`, `iat`, `nonce`) and seals the session into a cookie. The provider's discovery and
//! keys are fetched before the snapshot first serves and on a schedule; while they are not
//! known, the routes answer 503 `auth_unavailable`: they fail closed, never open.

mod login;
mod provider;
pub(crate) mod redirect;
pub(crate) mod session;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, StatusCode, header, request, response};

use super::auth::Consumer;
use super::{BuildError, Flow, Phase, Plugin};
use crate::config::spec_oidc::{OidcSpec, SameSite, Unauthenticated};
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};
use provider::Provider;
use session::{Attributes, Sealer, Session};

/// How long a login may take, from the redirect to the callback.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Seconds of clock skew allowed on the ID token's times.
const LEEWAY: u64 = 60;
/// Most states remembered as used (each until its login would have expired anyway).
const MAX_USED_STATES: usize = 100_000;
/// Most login transaction cookies a browser keeps at once (several tabs logging in).
const MAX_LOGINS: usize = 4;

/// A compiled `oidc`.
#[derive(Debug)]
pub(crate) struct Oidc {
    shared: Arc<Shared>,
}

/// What the request steps and the deferred calls share.
#[derive(Debug)]
struct Shared {
    issuer: String,
    client_id: String,
    /// `Authorization: Basic` for `client_auth: basic`.
    basic: Option<HeaderValue>,
    /// `&client_id=...&client_secret=...` for `client_auth: post`.
    post: String,
    redirect_path: String,
    redirect_uri: Option<String>,
    scope: String,
    sealer: Sealer,
    cookie: String,
    lifetime: Duration,
    attrs: Attributes,
    /// The login transactions' cookie attributes (on the callback's path, `SameSite=Lax` at
    /// most, since the provider sends the browser back cross-site).
    tx_attrs: Attributes,
    refresh: bool,
    refresh_before: Duration,
    logout_path: String,
    logout_redirect: String,
    logout_provider: bool,
    origins: Vec<String>,
    unauthenticated: Unauthenticated,
    bearer: bool,
    bearer_audience: Vec<String>,
    consumer_claim: String,
    claims_to_headers: Vec<(String, HeaderName)>,
    timeout: Duration,
    provider: Arc<Provider>,
    consumers: Arc<super::auth::Consumers>,
    /// When the session cookie is `Secure`, redirect URIs built from the request are `https`.
    https: bool,
    /// `portico_oidc_events_total`.
    events: prometheus_client::metrics::family::Family<
        crate::observe::metrics::OidcLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

fn invalid(pos: crate::config::Pos, message: impl Into<String>) -> BuildError {
    BuildError::At {
        pos,
        message: message.into(),
    }
}

impl Oidc {
    /// Checks the settings; `ca_file` is relative to the config.
    pub(crate) fn new(spec: &OidcSpec, env: super::BuildEnv<'_>) -> Result<Self, BuildError> {
        let pos = spec.issuer.pos;
        let (_, https) = super::auth::server_url(&spec.issuer, "issuer")?;
        let mut keys = Vec::new();
        for key in spec.session.keys.iter() {
            keys.push(session::decode_key(key).map_err(|e| invalid(key.pos, e.to_string()))?);
        }
        let sealer = Sealer::new(&keys).ok_or_else(|| {
            invalid(
                spec.session.keys.pos,
                "session.keys needs at least one key (32 bytes, base64)",
            )
        })?;
        let cookie = spec.session.cookie.value.clone();
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                spec.session.cookie.pos,
                "session.cookie must be letters, digits, `_` or `-`",
            ));
        }
        if !spec.redirect_path.starts_with('/') {
            return Err(invalid(
                spec.redirect_path.pos,
                "redirect_path must start with `/`",
            ));
        }
        let mut redirect_path = spec.redirect_path.value.clone();
        let redirect_uri = match &spec.redirect_uri {
            Some(uri) => {
                let parsed: http::Uri = uri
                    .parse()
                    .map_err(|_| invalid(uri.pos, "redirect_uri is not a URL"))?;
                if redirect::origin_of(uri).is_none() {
                    return Err(invalid(
                        uri.pos,
                        "redirect_uri must be an absolute http(s) URL",
                    ));
                }
                redirect_path = parsed.path().to_owned();
                Some(uri.value.clone())
            }
            None => None,
        };
        let mut origins = Vec::new();
        for origin in &spec.allowed_redirect_origins {
            match redirect::origin_of(origin) {
                Some(o) if o.len() == origin.trim_end_matches('/').len() => origins.push(o),
                _ => {
                    return Err(invalid(
                        origin.pos,
                        "an allowed redirect origin is like https://app.example.com",
                    ));
                }
            }
        }
        let at = spec.session.keys.pos;
        if let Some(domain) = &spec.session.domain
            && (domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(invalid(at, "session.domain must be a host name"));
        }
        let plain_path = |p: &str| {
            p.starts_with('/')
                && !p
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b';' || b == b' ')
        };
        if !plain_path(&spec.session.path) {
            return Err(invalid(at, "session.path must be a path starting with `/`"));
        }
        if !plain_path(&spec.logout.path) {
            return Err(invalid(pos, "logout.path must be a path starting with `/`"));
        }
        if redirect::safe_target(&spec.logout.redirect, &origins) != spec.logout.redirect {
            return Err(invalid(
                pos,
                "logout.redirect must be a relative path or a URL on an allowed_redirect_origins origin",
            ));
        }
        if spec.session.same_site == SameSite::None && !spec.session.secure {
            return Err(invalid(
                spec.session.keys.pos,
                "session.same_site: none needs session.secure: true",
            ));
        }
        let tls = super::auth::server_tls(https, spec.ca_file.as_ref(), &env, pos)?;
        let (basic, post) = super::auth::client_credentials(
            spec.client_auth,
            &spec.client_id,
            &spec.client_secret,
        )?;
        let mut scopes = vec!["openid".to_owned()];
        for s in &spec.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let attrs = Attributes {
            secure: spec.session.secure,
            same_site: spec.session.same_site,
            domain: spec.session.domain.clone(),
            path: spec.session.path.clone(),
        };
        let tx_attrs = Attributes {
            same_site: match spec.session.same_site {
                SameSite::None => SameSite::None,
                _ => SameSite::Lax,
            },
            path: redirect_path.clone(),
            ..attrs.clone()
        };
        let issuer = spec.issuer.value.clone();
        let timeout = spec.timeout.0.max(Duration::from_millis(1));
        let provider = env.state.keep(|| Provider {
            issuer: issuer.clone(),
            tls: tls.clone(),
            timeout,
            refresh: spec.discovery_refresh.0.max(Duration::from_secs(1)),
            // A changed oidc of the same issuer starts from what is known of it.
            current: Arc::new(ArcSwapOption::new(
                env.state
                    .live::<Provider>()
                    .iter()
                    .find(|old| old.issuer == issuer)
                    .and_then(|old| old.current.load_full()),
            )),
            used: redirect::UsedStates::new(MAX_USED_STATES),
            refreshes: crate::plugins::decisions::Decisions::new(provider::MAX_REFRESHES),
            wake: Arc::new(tokio::sync::Notify::new()),
            last_forced: AtomicU64::new(0),
            live_tasks: env.metrics.background_tasks().clone(),
            refresher: OnceLock::new(),
        });
        Ok(Oidc {
            shared: Arc::new(Shared {
                issuer,
                client_id: spec.client_id.value.clone(),
                basic,
                post,
                redirect_path,
                redirect_uri,
                scope: scopes.join(" "),
                sealer,
                cookie,
                lifetime: spec.session.lifetime.0.max(Duration::from_secs(1)),
                attrs,
                tx_attrs,
                refresh: spec.refresh,
                refresh_before: spec.refresh_before.0,
                logout_path: spec.logout.path.clone(),
                logout_redirect: spec.logout.redirect.clone(),
                logout_provider: spec.logout.provider,
                origins,
                unauthenticated: spec.unauthenticated,
                bearer: spec.bearer,
                bearer_audience: if spec.bearer_audience.is_empty() {
                    vec![spec.client_id.value.clone()]
                } else {
                    spec.bearer_audience.clone()
                },
                consumer_claim: spec.consumer_claim.clone(),
                claims_to_headers: super::auth::claim_headers(&spec.claims_to_headers)?,
                timeout,
                provider,
                consumers: Arc::clone(env.consumers),
                https: spec.session.secure,
                events: env.metrics.oidc_family(),
            }),
        })
    }
}

/// Cookies to set on the response that goes out (a refreshed session).
#[derive(Debug, Clone)]
struct SetCookies(Vec<HeaderValue>);

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Adds `Set-Cookie` values to an answer.
fn with_cookies(
    mut response: http::Response<crate::body::Body>,
    cookies: Vec<HeaderValue>,
) -> http::Response<crate::body::Body> {
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// 400 `login_invalid`: a callback that belongs to no login under way.
fn login_invalid(message: &str, request_id: &HeaderValue) -> http::Response<crate::body::Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "login_invalid",
        message,
        request_id,
    )
}

/// 401 `login_failed`: the provider or its ID token failed the login.
fn login_failed(
    message: &str,
    request_id: &HeaderValue,
    cookies: Vec<HeaderValue>,
) -> http::Response<crate::body::Body> {
    with_cookies(
        error_response(
            StatusCode::UNAUTHORIZED,
            "login_failed",
            message,
            request_id,
        ),
        cookies,
    )
}

/// 403 `login_denied`: the user or the provider said no (`access_denied`).
fn login_denied(message: &str, request_id: &HeaderValue) -> http::Response<crate::body::Body> {
    error_response(StatusCode::FORBIDDEN, "login_denied", message, request_id)
}

/// The 503 while the provider is not known: fail closed.
fn unavailable(request_id: &HeaderValue) -> http::Response<crate::body::Body> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
        "the identity provider cannot be reached now",
        request_id,
    )
}

/// A 302 to `location`, with cookies.
fn found(location: &str, cookies: Vec<HeaderValue>) -> http::Response<crate::body::Body> {
    let mut response = http::Response::new(crate::body::Body::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    } else {
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// One query parameter, decoded.
fn query_param(head: &request::Parts, name: &str) -> Option<String> {
    form_urlencoded::parse(head.uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Shared {
    /// Counts a login, refresh or logout by its result.
    fn count(&self, event: &'static str, result: &'static str) {
        self.events
            .get_or_create(&crate::observe::metrics::OidcLabels { event, result })
            .inc();
    }

    /// `scheme://host` of the request: where callbacks and logout targets are built.
    fn origin(&self, head: &request::Parts) -> String {
        let scheme = head
            .uri
            .scheme_str()
            .unwrap_or(if self.https { "https" } else { "http" });
        let host = head
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                head.headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{scheme}://{host}")
    }

    fn redirect_uri(&self, head: &request::Parts) -> String {
        match &self.redirect_uri {
            Some(uri) => uri.clone(),
            None => format!("{}{}", self.origin(head), self.redirect_path),
        }
    }

    /// An absolute URL for a checked target (relative ones on the request's origin).
    fn absolute(&self, head: &request::Parts, target: &str) -> String {
        if target.starts_with('/') {
            format!("{}{}", self.origin(head), target)
        } else {
            target.to_owned()
        }
    }

    fn consumer(&self, name: &str) -> Arc<Consumer> {
        self.consumers.by_name(name).unwrap_or_else(|| {
            Arc::new(Consumer {
                name_value: HeaderValue::from_str(name)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                name: name.to_owned(),
                groups: Vec::new(),
                groups_value: None,
            })
        })
    }

    /// Sends the verified identity on: the consumer, the claim headers, the claims.
    fn apply(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        claims: BTreeMap<String, serde_json::Value>,
    ) {
        let text = |name: &str| crate::plugins::jwt::claim_text(&claims, name);
        if let Some(name) = text(&self.consumer_claim) {
            ctx.consumer = Some(self.consumer(&name));
        }
        for (claim, name) in &self.claims_to_headers {
            if let Some(value) = text(claim).and_then(|v| HeaderValue::from_str(&v).ok()) {
                head.headers.insert(name.clone(), value);
            }
        }
        ctx.slots
            .insert(crate::plugins::jwt::Claims(Arc::new(claims)));
    }

    /// The session the request carries, if it opens and has not ended.
    fn session(&self, head: &request::Parts) -> Option<Session> {
        let sealed = session::read_sealed(&head.headers, &self.cookie)?;
        let plain = self.sealer.open(&self.cookie, &sealed)?;
        let session: Session = serde_json::from_slice(&plain).ok()?;
        (session.ends > now_secs()).then_some(session)
    }

    /// Whether the request carries any form of the session cookie.
    fn has_session_cookie(&self, head: &request::Parts) -> bool {
        session::cookies(&head.headers).any(|(c, _)| {
            c == self.cookie
                || c.strip_prefix(self.cookie.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
    }

    /// Whether a request without a session is sent to the provider (else 401).
    fn redirects(&self, head: &request::Parts) -> bool {
        match self.unauthenticated {
            Unauthenticated::Redirect => true,
            Unauthenticated::Deny => false,
            Unauthenticated::Auto => head
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains("text/html")),
        }
    }

    /// The 401 of an API client without a session or token.
    fn challenge(
        &self,
        request_id: &HeaderValue,
        cookies: Vec<HeaderValue>,
    ) -> http::Response<crate::body::Body> {
        let mut response = super::auth::unauthorized(
            request_id,
            &HeaderValue::from_static("Bearer realm=\"portico\""),
            "a login or a bearer token is required",
        );
        for c in cookies {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
        response
    }

    /// No (more) session: a redirect to the provider, or 401; `cookies` are set too (clearing
    /// a session that ended).
    fn unauthenticated(
        &self,
        head: &request::Parts,
        request_id: &HeaderValue,
        cookies: Vec<HeaderValue>,
    ) -> http::Response<crate::body::Body> {
        if !self.redirects(head) {
            return self.challenge(request_id, cookies);
        }
        let target = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        self.start_login(head, request_id, &target, cookies)
    }
}

impl Plugin for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn stops(&self) -> Option<&'static str> {
        Some(
            "302 to the provider (browsers) or 401 without a session; answers the callback \
             and logout paths; 503 while the provider cannot be reached",
        )
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let s = &self.shared;
        let path = head.uri.path();
        let note = if path == s.redirect_path {
            format!(
                "{path} is the login callback: the state is checked once and the code \
                 exchanged at {}'s token endpoint, which is not called offline",
                s.issuer
            )
        } else if path == s.logout_path {
            format!(
                "{path} is the logout path: the session cookie is cleared{}",
                if s.logout_provider {
                    ", then the browser goes to the provider's end_session_endpoint if it has one"
                } else {
                    ""
                }
            )
        } else if s.bearer && matches!(super::auth::bearer(head), Ok(Some(_))) {
            format!(
                "the bearer token (not shown) would be verified with {}'s keys (iss {}, aud \
                 one of {}), which are not fetched offline",
                s.issuer,
                s.issuer,
                s.bearer_audience.join(", ")
            )
        } else if let Some(session) = s.session(head) {
            let subject = crate::plugins::jwt::claim_text(&session.claims, &s.consumer_claim);
            if let Some(name) = &subject {
                ctx.consumer = Some(s.consumer(name));
            }
            format!(
                "a session cookie that opens: {} {}, ending in {} s",
                s.consumer_claim,
                subject.as_deref().unwrap_or("(none)"),
                session.ends.saturating_sub(now_secs())
            )
        } else if s.redirects(head) {
            format!(
                "no session: the browser would be sent to {}'s authorization endpoint \
                 (discovery is not fetched offline)",
                s.issuer
            )
        } else {
            "no session and not a browser (no text/html in Accept): 401".to_owned()
        };
        super::Explained::Offline(vec![note])
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let s = &self.shared;
        for (_, name) in &s.claims_to_headers {
            head.headers.remove(name);
        }
        let path = head.uri.path();
        if path == s.redirect_path {
            return Ok(Arc::clone(s).callback(ctx, head));
        }
        if path == s.logout_path {
            return Ok(Flow::Respond(s.logout(head)));
        }
        if s.bearer {
            match super::auth::bearer(head) {
                Err(()) => {
                    return Ok(Flow::Respond(super::auth::unauthorized(
                        &ctx.request_id,
                        &HeaderValue::from_static(
                            "Bearer realm=\"portico\", error=\"invalid_token\"",
                        ),
                        "more than one Authorization header",
                    )));
                }
                Ok(Some(token)) => {
                    let token = token.to_owned();
                    return Ok(s.bearer_token(ctx, head, &token));
                }
                Ok(None) => {}
            }
        }
        let found_session = s.session(head);
        if let Some(session) = &found_session
            && s.refresh
            && session.refresh_token.is_some()
            && session
                .access_expires
                .is_some_and(|at| at <= now_secs() + s.refresh_before.as_secs())
        {
            // The refresh strips portico's cookies once done: it needs them to reseal.
            return Ok(Arc::clone(s).refresh(ctx, head, session.clone()));
        }
        let had_cookie = found_session.is_none() && s.has_session_cookie(head);
        let clear = if had_cookie {
            session::clear(&s.attrs, &head.headers, &s.cookie)
        } else {
            Vec::new()
        };
        session::strip(&mut head.headers, &s.cookie);
        let Some(session) = found_session else {
            if s.provider.current.load().is_none() {
                return Ok(Flow::Respond(unavailable(&ctx.request_id)));
            }
            // A cookie that does not open (another key, tampered, ended) is cleared.
            return Ok(Flow::Respond(s.unauthenticated(
                head,
                &ctx.request_id,
                clear,
            )));
        };
        s.apply(ctx, head, session.claims);
        Ok(Flow::Continue)
    }

    fn on_response(&self, ctx: &RequestCtx, head: &mut response::Parts) {
        if let Some(SetCookies(cookies)) = ctx.slots.get::<SetCookies>() {
            for c in cookies {
                head.headers.append(header::SET_COOKIE, c.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
