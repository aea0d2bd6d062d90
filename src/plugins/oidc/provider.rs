//! The OpenID Provider as `oidc` knows it: its discovery document and signing keys, fetched
//! before the snapshot first serves and then on a schedule, kept across reloads; and the
//! states already used, so a callback cannot be replayed across a reload either.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;

use super::redirect::UsedStates;
use crate::background::{self, BackgroundTask};
use crate::plugins::jwt::{Key, public_keys};
use crate::plugins::state::{Kept, StartWork};

/// Most bytes read of a discovery document or JWKS.
const MAX_DOCUMENT: usize = 1 << 20;

/// What discovery and the JWKS said.
#[derive(Debug)]
pub(super) struct Discovered {
    pub(super) authorization_endpoint: String,
    pub(super) token_endpoint: http::Uri,
    pub(super) end_session_endpoint: Option<String>,
    /// The provider's signing keys, each for one algorithm the provider says it signs ID
    /// tokens with (never `none` or HMAC).
    pub(super) keys: Vec<Key>,
}

/// The provider's state, kept across reloads.
#[derive(Debug)]
pub(super) struct Provider {
    pub(super) issuer: String,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) timeout: Duration,
    pub(super) refresh: Duration,
    pub(super) current: Arc<ArcSwapOption<Discovered>>,
    pub(super) used: UsedStates,
    /// Refresh outcomes by the SHA-256 of the refresh token: one grant per session however
    /// many requests need it at once.
    pub(super) refreshes: crate::plugins::decisions::Decisions<Refreshed>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) last_forced: AtomicU64,
    pub(super) live_tasks: prometheus_client::metrics::gauge::Gauge,
    pub(super) refresher: OnceLock<BackgroundTask>,
}

impl Kept for Provider {
    fn start(self: Arc<Self>) -> StartWork {
        Box::pin(async move {
            let fetcher = Fetcher {
                issuer: self.issuer.clone(),
                tls: self.tls.clone(),
                timeout: self.timeout,
                current: Arc::clone(&self.current),
            };
            let ok = fetcher.fetch().await;
            if !ok {
                tracing::warn!(
                    issuer = %self.issuer,
                    "the OpenID Provider cannot be reached: its routes answer 503 until it can"
                );
            }
            let (refresh, wake) = (self.refresh, Arc::clone(&self.wake));
            // The task holds what it fills, not `self`: dropping the last `Provider` drops the
            // handle and so stops the task.
            let task = background::spawn(&self.live_tasks, async move {
                let mut ok = ok;
                let mut backoff = Duration::from_secs(1);
                loop {
                    // Until the provider answers, try again soon (1 s doubling to 60 s).
                    let wait = if ok { refresh } else { refresh.min(backoff) };
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wake.notified() => {}
                    }
                    ok = fetcher.fetch().await;
                    backoff = if ok {
                        Duration::from_secs(1)
                    } else {
                        (backoff * 2).min(Duration::from_secs(60))
                    };
                }
            });
            let _ = self.refresher.set(task);
        })
    }
}

impl Provider {
    /// Asks for a fetch now, at most once a minute (an unknown `kid`).
    pub(super) fn refresh_soon(&self) {
        let now = crate::health::now_ms();
        let last = self.last_forced.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 60_000)
            && self
                .last_forced
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }
}

/// What the refresher needs.
struct Fetcher {
    issuer: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    current: Arc<ArcSwapOption<Discovered>>,
}

impl Fetcher {
    /// Fetches discovery and the JWKS; on failure what was known stays.
    async fn fetch(&self) -> bool {
        match self.discover().await {
            Ok(found) => {
                self.current.store(Some(Arc::new(found)));
                true
            }
            Err(why) => {
                tracing::warn!(issuer = %self.issuer, error = %why, "OpenID Provider discovery failed; keeping what was known");
                false
            }
        }
    }

    async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
        crate::tls::get(&uri, self.tls.clone(), self.timeout, MAX_DOCUMENT)
            .await
            .map_err(|e| format!("{url}: {e}"))
    }

    async fn discover(&self) -> Result<Discovered, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("discovery is not JSON: {e}"))?;
        let text = |name: &str| doc.get(name).and_then(serde_json::Value::as_str);
        // OpenID Connect Discovery §4.3: the document's issuer is exactly the one asked for.
        if text("issuer") != Some(self.issuer.as_str()) {
            return Err("the discovery document names another issuer".to_owned());
        }
        let authorization_endpoint = text("authorization_endpoint")
            .ok_or("discovery has no authorization_endpoint")?
            .to_owned();
        let token_endpoint: http::Uri = text("token_endpoint")
            .ok_or("discovery has no token_endpoint")?
            .parse()
            .map_err(|_| "the token_endpoint is not a URL".to_owned())?;
        let jwks_uri = text("jwks_uri").ok_or("discovery has no jwks_uri")?;
        // Only what the provider says it signs ID tokens with (RS256 when it does not say,
        // OpenID Connect Discovery §3); never `none`, never HMAC.
        let algs: Vec<Algorithm> = match doc.get("id_token_signing_alg_values_supported") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter(|a| !a.eq_ignore_ascii_case("none"))
                .filter_map(|a| Algorithm::from_str(a).ok())
                .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
                .collect(),
            _ => vec![Algorithm::RS256],
        };
        let set: JwkSet = serde_json::from_slice(&self.get(jwks_uri).await?)
            .map_err(|e| format!("the JWKS is not valid: {e}"))?;
        let keys = public_keys(&set, &algs);
        if keys.is_empty() {
            return Err("the JWKS has no key for the provider's ID token algorithms".to_owned());
        }
        Ok(Discovered {
            authorization_endpoint,
            token_endpoint,
            end_session_endpoint: text("end_session_endpoint").map(str::to_owned),
            keys,
        })
    }
}

/// What a refresh grant came to (a provider that could not be asked is no outcome).
#[derive(Debug, Clone)]
pub(super) enum Refreshed {
    /// The renewed session.
    Session(Arc<super::session::Session>),
    /// Refused: the session is over.
    Ended,
}

/// How long a refresh's outcome serves requests still sending the old cookie.
pub(super) const SHARED_FOR: Duration = Duration::from_secs(30);
/// Most refresh outcomes kept at once.
pub(super) const MAX_REFRESHES: usize = 10_000;
