//! The steps of `oidc` that talk to the provider or answer by themselves: the login redirect,
//! the callback (state once, code exchange, ID token checks), refresh, logout, bearer tokens.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, header, request};

use super::provider::Refreshed;
use super::redirect::{self, Use};
use super::session::{self, Session, Transaction};
use super::{
    LEEWAY, LOGIN_TTL, MAX_LOGINS, SetCookies, Shared, found, login_denied, login_failed,
    login_invalid, now_secs, query_param, unavailable,
};
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::plugins::jwt::{self, Checks, Refused};
use crate::plugins::{Deferred, Flow};

/// Most bytes read of a token endpoint's answer.
const MAX_ANSWER: usize = 64 * 1024;

/// ID token claims the session does not keep: single-use values and hashes.
const DROPPED: &[&str] = &["nonce", "at_hash", "c_hash", "s_hash"];

/// Why a call to the token endpoint failed.
enum Failed {
    /// The provider refused (a 4xx, or an answer without what is needed).
    Refused,
    /// It could not be reached, or failed (5xx, timeout).
    Unavailable,
}

/// What a token endpoint answered.
#[derive(serde::Deserialize)]
struct Tokens {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The login error name a provider sent, if it is one (RFC 6749 §4.1.2.1: `%x20-21 /
/// %x23-5B / %x5D-7E`, kept to letters, digits and `_` here).
fn error_name(error: &str) -> &str {
    if !error.is_empty()
        && error.len() <= 64
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        error
    } else {
        "invalid_error"
    }
}

impl Shared {
    /// The cookie holding the login transaction for `state`.
    fn tx_cookie(&self, state: &str) -> String {
        let prefix: String = state.chars().take(16).collect();
        format!("{}_tx_{prefix}", self.cookie)
    }

    /// A 302 to the provider's authorization endpoint, with a new login transaction.
    pub(super) fn start_login(
        &self,
        head: &request::Parts,
        request_id: &HeaderValue,
        target: &str,
        mut cookies: Vec<HeaderValue>,
    ) -> http::Response<Body> {
        let Some(discovered) = self.provider.current.load_full() else {
            return unavailable(request_id);
        };
        let (Some(state), Some(nonce), Some(verifier)) = (
            redirect::random(32),
            redirect::random(32),
            redirect::random(32),
        ) else {
            return unavailable(request_id);
        };
        let redirect_uri = self.redirect_uri(head);
        let tx = Transaction {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier: verifier.clone(),
            target: redirect::safe_target(target, &self.origins),
            created: now_secs(),
            redirect_uri: redirect_uri.clone(),
        };
        let name = self.tx_cookie(&state);
        let sealed = serde_json::to_vec(&tx)
            .ok()
            .and_then(|plain| self.sealer.seal(&name, &plain));
        let Some(set) = sealed.and_then(|v| self.tx_attrs.set(&name, &v, LOGIN_TTL.as_secs()))
        else {
            return unavailable(request_id);
        };
        // Logins under way in other tabs stay possible, a few of them: the oldest go.
        let prefix = format!("{}_tx_", self.cookie);
        let under_way: Vec<&str> = session::cookies(&head.headers)
            .map(|(c, _)| c)
            .filter(|c| c.starts_with(&prefix))
            .collect();
        let excess = (under_way.len() + 1).saturating_sub(MAX_LOGINS);
        cookies.extend(
            under_way
                .iter()
                .take(excess)
                .filter_map(|c| self.tx_attrs.set(c, "", 0)),
        );
        cookies.push(set);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &redirect::challenge(&verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if discovered.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        found(
            &format!("{}{sep}{query}", discovered.authorization_endpoint),
            cookies,
        )
    }

    /// The callback: the provider sent the browser back with a code (or an error).
    pub(super) fn callback(self: Arc<Self>, ctx: &RequestCtx, head: &request::Parts) -> Flow {
        let request_id = ctx.request_id.clone();
        let bad = |result: &'static str, message: &str| {
            self.count("login", result);
            Flow::Respond(login_invalid(message, &request_id))
        };
        if let Some(error) = query_param(head, "error") {
            let name = error_name(&error);
            let message = format!("the identity provider refused the login: {name}");
            self.count("login", "provider_error");
            return Flow::Respond(if name == "access_denied" {
                login_denied(&message, &request_id)
            } else {
                login_failed(&message, &request_id, Vec::new())
            });
        }
        let (code, state) = match (query_param(head, "code"), query_param(head, "state")) {
            (Some(code), Some(state)) if !code.is_empty() && !state.is_empty() => (code, state),
            (None, None) => {
                // `?rd=...` alone starts a login that ends at `rd` (if it is a safe target).
                let target = query_param(head, "rd").unwrap_or_else(|| "/".to_owned());
                return Flow::Respond(self.start_login(head, &request_id, &target, Vec::new()));
            }
            _ => return bad("invalid_callback", "the callback needs a code and a state"),
        };
        let name = self.tx_cookie(&state);
        let clear_tx = self.tx_attrs.set(&name, "", 0);
        let tx: Option<Transaction> = session::cookies(&head.headers)
            .find(|(c, _)| *c == name)
            .and_then(|(_, v)| self.sealer.open(&name, v))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let Some(tx) = tx.filter(|tx| {
            crate::plugins::auth::constant_time_eq(tx.state.as_bytes(), state.as_bytes())
        }) else {
            return bad("invalid_state", "no login is under way for this state");
        };
        let now = now_secs();
        if tx.created + LOGIN_TTL.as_secs() < now {
            return bad("expired", "the login took too long; try again");
        }
        match self.provider.used.use_once(&state, LOGIN_TTL) {
            Use::First => {}
            Use::Again => return bad("replayed", "this login was already used"),
            Use::Full => {
                self.count("login", "unavailable");
                return Flow::Respond(unavailable(&request_id));
            }
        }
        let headers = head.headers.clone();
        Flow::Defer(Box::pin(async move {
            let clear_tx: Vec<HeaderValue> = clear_tx.into_iter().collect();
            let Some(discovered) = self.provider.current.load_full() else {
                self.count("login", "unavailable");
                return Deferred::Respond(unavailable(&request_id));
            };
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", &code)
                .append_pair("redirect_uri", &tx.redirect_uri)
                .append_pair("code_verifier", &tx.verifier)
                .finish();
            let failed = |result: &'static str, message: &str| {
                self.count("login", result);
                Deferred::Respond(login_failed(message, &request_id, clear_tx.clone()))
            };
            let tokens = match self.token_call(&discovered.token_endpoint, form).await {
                Ok(tokens) => tokens,
                Err(Failed::Refused) => {
                    return failed(
                        "code_refused",
                        "the identity provider did not accept the login",
                    );
                }
                Err(Failed::Unavailable) => {
                    self.count("login", "unavailable");
                    return Deferred::Respond(unavailable(&request_id));
                }
            };
            let Some(id_token) = tokens.id_token.as_deref() else {
                return failed("id_token_invalid", "the identity provider sent no ID token");
            };
            let claims = match self.verify_id_token(&discovered, id_token, Some(&tx.nonce)) {
                Ok(claims) => claims,
                Err(message) => {
                    return failed("id_token_invalid", message);
                }
            };
            let now = now_secs();
            let session = Session {
                claims: keep(claims),
                created: now,
                ends: now + self.lifetime.as_secs(),
                access_expires: tokens.expires_in.map(|s| now + s),
                refresh_token: tokens.refresh_token,
                id_token: Some(id_token.to_owned()),
            };
            let Some(mut cookies) = self.seal_session(&headers, session) else {
                return failed("too_large", "the session does not fit in its cookies");
            };
            cookies.extend(clear_tx.iter().cloned());
            self.count("login", "success");
            if self.attrs.same_site == crate::config::spec_oidc::SameSite::Strict {
                // The browser came from the provider's site: a `SameSite=Strict` cookie would
                // not go with a redirect from here. A page of portico's own moves on instead.
                return Deferred::Respond(moving_on(&tx.target, cookies));
            }
            Deferred::Respond(found(&tx.target, cookies))
        }))
    }

    /// Seals `session` into `Set-Cookie` values; the ID token is left out if the whole does
    /// not fit (logout then goes without `id_token_hint`).
    fn seal_session(
        &self,
        headers: &http::HeaderMap,
        mut session: Session,
    ) -> Option<Vec<HeaderValue>> {
        let max_age = session.ends.saturating_sub(now_secs());
        for _ in 0..2 {
            let plain = serde_json::to_vec(&session).ok()?;
            let sealed = self.sealer.seal(&self.cookie, &plain)?;
            if let Some(cookies) =
                session::write_sealed(&self.attrs, headers, &self.cookie, &sealed, max_age)
            {
                return Some(cookies);
            }
            session.id_token = None;
        }
        None
    }

    /// One call to the token endpoint with the client's credentials.
    async fn token_call(&self, url: &http::Uri, mut form: String) -> Result<Tokens, Failed> {
        form.push_str(&self.post);
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .basic
            .iter()
            .map(|v| (header::AUTHORIZATION, v.clone()))
            .collect();
        let tls = self.provider.tls.clone();
        match crate::tls::post_form(
            url,
            tls,
            &headers,
            bytes::Bytes::from(form),
            self.timeout,
            MAX_ANSWER,
        )
        .await
        {
            Ok(body) => serde_json::from_slice(&body).map_err(|_| {
                tracing::warn!(issuer = %self.issuer, "the token endpoint's answer is not JSON");
                Failed::Refused
            }),
            Err(crate::tls::FetchError::Status(status)) if status.is_client_error() => {
                tracing::info!(issuer = %self.issuer, status = %status, "the token endpoint refused");
                Err(Failed::Refused)
            }
            Err(err) => {
                tracing::warn!(issuer = %self.issuer, error = %err, "the token endpoint failed");
                Err(Failed::Unavailable)
            }
        }
    }

    /// The ID token's claims if it holds (OpenID Connect Core §3.1.3.7); `nonce` is checked
    /// when given.
    fn verify_id_token(
        &self,
        discovered: &super::provider::Discovered,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<BTreeMap<String, serde_json::Value>, &'static str> {
        let keys: Vec<&jwt::Key> = discovered.keys.iter().collect();
        let issuers = [self.issuer.clone()];
        let audiences = [self.client_id.clone()];
        let required = ["exp", "iat", "sub", "iss", "aud"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let checks = Checks {
            issuers: &issuers,
            audiences: &audiences,
            leeway: LEEWAY,
            required: Some(&required),
        };
        let claims = jwt::verify(token, &keys, &checks).map_err(|refused| {
            if refused == Refused::NoKey {
                self.provider.refresh_soon();
            }
            match refused {
                Refused::NoKey => "the ID token is signed by an unknown key",
                Refused::Invalid(_) => "the ID token is not valid",
            }
        })?;
        // Several audiences: `azp` must name this client; when present, it always must.
        let several = matches!(claims.get("aud"), Some(serde_json::Value::Array(a)) if a.len() > 1);
        match claims.get("azp") {
            Some(serde_json::Value::String(azp)) if *azp == self.client_id => {}
            None if !several => {}
            _ => return Err("the ID token is for another client"),
        }
        let now = now_secs();
        match claims.get("iat").and_then(serde_json::Value::as_u64) {
            Some(iat) if iat <= now + LEEWAY => {}
            _ => return Err("the ID token is not valid"),
        }
        if let Some(nonce) = nonce {
            let sent = claims.get("nonce").and_then(serde_json::Value::as_str);
            if !sent.is_some_and(|n| {
                crate::plugins::auth::constant_time_eq(n.as_bytes(), nonce.as_bytes())
            }) {
                return Err("the ID token's nonce does not match the login");
            }
        }
        Ok(claims)
    }

    /// The session needs a fresh access token: the refresh grant, then on. Requests that
    /// arrive together with one session (a page and its assets) share one grant, and its
    /// outcome serves the requests still sending the old cookie for a little while.
    pub(super) fn refresh(
        self: Arc<Self>,
        ctx: &RequestCtx,
        head: &request::Parts,
        session: Session,
    ) -> Flow {
        let request_id = ctx.request_id.clone();
        let headers = head.headers.clone();
        let unauth_head = copy_head(head);
        Flow::Defer(Box::pin(async move {
            let Some(refresh_token) = session.refresh_token.clone() else {
                return Deferred::Respond(unavailable(&request_id));
            };
            let digest = ring::digest::digest(&ring::digest::SHA256, refresh_token.as_bytes());
            let mut key = [0u8; 32];
            key.copy_from_slice(digest.as_ref());
            let outcome = self
                .provider
                .refreshes
                .shared(key, async {
                    let outcome = self.refresh_grant(session).await?;
                    Some((outcome, super::provider::SHARED_FOR))
                })
                .await;
            let session = match outcome.as_deref() {
                Some(Refreshed::Session(session)) => Arc::clone(session),
                Some(Refreshed::Ended) => {
                    let clear = session::clear(&self.attrs, &headers, &self.cookie);
                    return Deferred::Respond(self.unauthenticated(
                        &unauth_head,
                        &request_id,
                        clear,
                    ));
                }
                None => return Deferred::Respond(unavailable(&request_id)),
            };
            let Some(cookies) = self.seal_session(&headers, (*session).clone()) else {
                let clear = session::clear(&self.attrs, &headers, &self.cookie);
                return Deferred::Respond(self.unauthenticated(&unauth_head, &request_id, clear));
            };
            Deferred::Apply(Box::new(move |ctx, head| {
                session::strip(&mut head.headers, &self.cookie);
                ctx.slots.insert(SetCookies(cookies));
                self.apply(ctx, head, session.claims.clone());
            }))
        }))
    }

    /// One refresh grant for `session`, counted; `None` when the provider cannot be asked.
    async fn refresh_grant(&self, session: Session) -> Option<Refreshed> {
        let outcome = self.refresh_once(session).await;
        self.count(
            "refresh",
            match outcome {
                Some(Refreshed::Session(_)) => "success",
                Some(Refreshed::Ended) => "refused",
                None => "unavailable",
            },
        );
        outcome
    }

    async fn refresh_once(&self, mut session: Session) -> Option<Refreshed> {
        let discovered = self.provider.current.load_full()?;
        let Some(refresh_token) = session.refresh_token.clone() else {
            return Some(Refreshed::Ended);
        };
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh_token)
            .finish();
        let tokens = match self.token_call(&discovered.token_endpoint, form).await {
            Ok(tokens) => tokens,
            Err(Failed::Refused) => return Some(Refreshed::Ended),
            Err(Failed::Unavailable) => return None,
        };
        if let Some(id_token) = tokens.id_token.as_deref() {
            // OpenID Connect Core §12.2: the same subject, else the session ends.
            match self.verify_id_token(&discovered, id_token, None) {
                Ok(claims) if claims.get("sub") == session.claims.get("sub") => {
                    session.claims = keep(claims);
                    session.id_token = Some(id_token.to_owned());
                }
                _ => return Some(Refreshed::Ended),
            }
        }
        let now = now_secs();
        session.access_expires = tokens.expires_in.map(|s| now + s);
        if tokens.refresh_token.is_some() {
            session.refresh_token = tokens.refresh_token;
        }
        Some(Refreshed::Session(Arc::new(session)))
    }

    /// Logout: the session cookies cleared, then the provider's end-session endpoint or
    /// the configured target.
    pub(super) fn logout(&self, head: &request::Parts) -> http::Response<Body> {
        let session = self.session(head);
        let cookies = session::clear(&self.attrs, &head.headers, &self.cookie);
        let target = redirect::safe_target(
            &query_param(head, "rd").unwrap_or_else(|| self.logout_redirect.clone()),
            &self.origins,
        );
        let discovered = self.provider.current.load_full();
        let end_session = discovered
            .as_ref()
            .and_then(|d| d.end_session_endpoint.as_deref())
            .filter(|_| self.logout_provider);
        let Some(end_session) = end_session else {
            self.count("logout", "local");
            return found(&target, cookies);
        };
        self.count("logout", "provider");
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(hint) = session.as_ref().and_then(|s| s.id_token.as_deref()) {
            query.append_pair("id_token_hint", hint);
        }
        query
            .append_pair("post_logout_redirect_uri", &self.absolute(head, &target))
            .append_pair("client_id", &self.client_id);
        let sep = if end_session.contains('?') { '&' } else { '?' };
        found(&format!("{end_session}{sep}{}", query.finish()), cookies)
    }

    /// A bearer access token: a JWT by the provider's keys, for this issuer and audience.
    pub(super) fn bearer_token(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        token: &str,
    ) -> Flow {
        let Some(discovered) = self.provider.current.load_full() else {
            return Flow::Respond(unavailable(&ctx.request_id));
        };
        let keys: Vec<&jwt::Key> = discovered.keys.iter().collect();
        let issuers = [self.issuer.clone()];
        let checks = Checks {
            issuers: &issuers,
            audiences: &self.bearer_audience,
            leeway: LEEWAY,
            required: None,
        };
        match jwt::verify(token, &keys, &checks) {
            Ok(claims) => {
                session::strip(&mut head.headers, &self.cookie);
                self.apply(ctx, head, claims);
                Flow::Continue
            }
            Err(refused) => {
                if refused == Refused::NoKey {
                    self.provider.refresh_soon();
                }
                Flow::Respond(crate::plugins::auth::unauthorized(
                    &ctx.request_id,
                    &HeaderValue::from_static("Bearer realm=\"portico\", error=\"invalid_token\""),
                    refused.message(),
                ))
            }
        }
    }
}

/// The claims a session keeps.
fn keep(mut claims: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, serde_json::Value> {
    for name in DROPPED {
        claims.remove(*name);
    }
    claims
}

/// A copy of a request head without its extensions (for an answer built later).
fn copy_head(head: &request::Parts) -> request::Parts {
    let mut copy = http::Request::new(()).into_parts().0;
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

/// A 200 page that sends the browser on to `target` (a checked one) by itself.
fn moving_on(target: &str, cookies: Vec<HeaderValue>) -> http::Response<Body> {
    let mut escaped = String::with_capacity(target.len());
    for c in target.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    let page = format!(
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={escaped}\">\
         <a href=\"{escaped}\">Continue</a>\n"
    );
    let mut response = http::Response::new(Body::full(bytes::Bytes::from(page)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
    response
}
