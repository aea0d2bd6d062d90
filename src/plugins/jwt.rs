//! `jwt`: bearer JSON Web Tokens (RFC 7519) verified against pinned keys.
//!
//! Every key names its algorithm, and a token is checked only with a key of exactly its `alg`:
//! `none` (in any casing) is not an algorithm here, and an RSA public key can never be used as
//! an HMAC secret. Keys come from the config (secrets, PEM files) and from a JWKS URL refreshed
//! in the background; an unknown `kid` asks for a refresh at most once a minute and the token is
//! refused meanwhile.
//!
//! The JWKS keys are fetched once before the snapshot first serves (start-up and reload wait
//! for it, bounded by the fetch timeout), and they are kept across reloads that leave the
//! plugin as it was; the refresher belongs to those keys and stops when no config uses them.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, header, request};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::auth::Consumer;
use super::{BuildError, Flow, Phase, Plugin};
use crate::background::{self, BackgroundTask};
use crate::config::spec::JwtSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::plugins::state::{Kept, StartWork};

mod source;

/// Time allowed for one JWKS fetch, the first one (which start-up and reloads wait for)
/// included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
pub(crate) struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// A compiled `jwt`.
#[derive(Debug)]
pub(crate) struct Jwt {
    keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    consumer_claim: String,
    claims_to_headers: Vec<(String, HeaderName)>,
    /// `exp` and the configured `required_claims`.
    required: std::collections::HashSet<String>,
    consumers: Arc<super::auth::Consumers>,
    /// Where tokens are read from, and whether they are hidden from the upstream.
    sources: source::Sources,
}

/// The keys of a `jwks_url`, kept across reloads, and their refresher.
#[derive(Debug)]
struct Jwks {
    url: String,
    refresh: Duration,
    keys: Arc<ArcSwap<Vec<Key>>>,
    wake: Arc<tokio::sync::Notify>,
    last_forced: AtomicU64,
    fetches: Arc<AtomicU64>,
    live_tasks: prometheus_client::metrics::gauge::Gauge,
    refresher: OnceLock<BackgroundTask>,
}

impl Kept for Jwks {
    fn start(self: Arc<Self>) -> StartWork {
        Box::pin(async move {
            fetch(&self.url, &self.keys, &self.fetches).await;
            let (url, refresh, wake, keys, fetches) = (
                self.url.clone(),
                self.refresh,
                Arc::clone(&self.wake),
                Arc::clone(&self.keys),
                Arc::clone(&self.fetches),
            );
            // The task holds the key cache, not `self`: dropping the last `Jwks` drops the
            // handle and so stops the task.
            let task = background::spawn(&self.live_tasks, async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(refresh) => {}
                        () = wake.notified() => {}
                    }
                    fetch(&url, &keys, &fetches).await;
                }
            });
            let _ = self.refresher.set(task);
        })
    }
}

/// Fetches the JWKS at `url` into `keys`; on failure the keys stay as they were.
async fn fetch(url: &str, keys: &ArcSwap<Vec<Key>>, fetches: &AtomicU64) {
    fetches.fetch_add(1, Ordering::Relaxed);
    match crate::tls::fetch(url, FETCH_TIMEOUT, 1 << 20).await {
        Ok(body) => match serde_json::from_slice::<JwkSet>(&body) {
            Ok(set) => keys.store(Arc::new(from_jwks(&set))),
            Err(err) => tracing::warn!(url = %url, error = %err, "JWKS is not valid"),
        },
        Err(err) => {
            tracing::warn!(url = %url, error = %err, "cannot fetch JWKS; keeping the keys")
        }
    }
}

fn algorithm(name: &str) -> Result<Algorithm, BuildError> {
    if name.eq_ignore_ascii_case("none") {
        return Err(BuildError::NoneAlgorithm);
    }
    Algorithm::from_str(name).map_err(|_| BuildError::Algorithm {
        name: name.to_owned(),
    })
}

fn from_jwks(set: &JwkSet) -> Vec<Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&a.to_string()).ok())?;
            Some(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key: DecodingKey::from_jwk(jwk).ok()?,
            })
        })
        .collect()
}

/// The public keys of a provider's JWKS, each for the algorithms in `allowed` it can verify:
/// a key naming its `alg` only for that one, a key without `alg` for every allowed algorithm
/// of its type. HMAC algorithms and symmetric (`oct`) keys are never taken.
pub(crate) fn public_keys(set: &JwkSet, allowed: &[Algorithm]) -> Vec<Key> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let mut out = Vec::new();
    for jwk in &set.keys {
        let fits: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => &[],
            },
            AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) => &[],
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let named = jwk
            .common
            .key_algorithm
            .map(|a| Algorithm::from_str(&a.to_string()).ok());
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        for alg in allowed {
            let wanted = match named {
                Some(Some(named)) => named == *alg,
                // An `alg` jsonwebtoken does not know (an encryption one): not for signatures.
                Some(None) => false,
                None => true,
            };
            if wanted && fits.contains(alg) {
                out.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg: *alg,
                    key: key.clone(),
                });
            }
        }
    }
    out
}

/// Why a token was refused, in the words of the 401 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No key has the token's `kid` (a JWKS refresh may help).
    NoKey,
    /// The token is not acceptable; the message says why.
    Invalid(&'static str),
}

impl Refused {
    /// The message for the client.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::NoKey => "no key matches the token",
            Refused::Invalid(message) => message,
        }
    }
}

/// What a token is checked against besides its signature.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checks<'a> {
    /// Accepted `iss` values; any when empty.
    pub(crate) issuers: &'a [String],
    /// Accepted `aud` values; any when empty.
    pub(crate) audiences: &'a [String],
    /// Seconds of clock skew allowed on `exp`, `nbf`.
    pub(crate) leeway: u64,
    /// Claims that must be there (`exp` among them, if wanted).
    pub(crate) required: Option<&'a std::collections::HashSet<String>>,
}

/// Verifies `token` with the key of its `kid` and exactly its algorithm among `keys`, and
/// its registered claims against `checks`; the claims when it holds.
pub(crate) fn verify(
    token: &str,
    keys: &[&Key],
    checks: &Checks<'_>,
) -> Result<BTreeMap<String, serde_json::Value>, Refused> {
    let Ok(token_header) = jsonwebtoken::decode_header(token) else {
        return Err(Refused::Invalid(
            "the token is malformed or uses an unaccepted algorithm",
        ));
    };
    let total = keys.len();
    let candidates: Vec<&Key> = keys
        .iter()
        .copied()
        .filter(|k| match &token_header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => k.kid.is_none() || total == 1 || keys.iter().all(|o| o.kid == k.kid),
        })
        .collect();
    if candidates.is_empty() {
        return Err(if token_header.kid.is_some() {
            Refused::NoKey
        } else {
            Refused::Invalid("no key matches the token")
        });
    }
    // The key decides the algorithm: a token claiming another one is refused.
    let Some(key) = candidates.into_iter().find(|k| k.alg == token_header.alg) else {
        return Err(Refused::Invalid(
            "the token's algorithm does not match its key",
        ));
    };
    let mut validation = Validation::new(key.alg);
    validation.leeway = checks.leeway;
    validation.validate_nbf = true;
    // jsonwebtoken checks the registered claims it knows (RFC 7519 §4.1); the others are
    // checked below, once the claims are decoded.
    let exp_only: std::collections::HashSet<String> = std::iter::once("exp".to_owned()).collect();
    let required = checks.required.unwrap_or(&exp_only);
    validation.required_spec_claims = required.clone();
    if checks.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(checks.audiences);
    }
    if !checks.issuers.is_empty() {
        validation.set_issuer(checks.issuers);
    }
    let claims = match jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(
        token,
        &key.key,
        &validation,
    ) {
        Ok(data) => data.claims,
        Err(err) => {
            use jsonwebtoken::errors::ErrorKind;
            return Err(Refused::Invalid(match err.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidAudience => "the token is not for this audience",
                ErrorKind::InvalidIssuer => "the token is from an unaccepted issuer",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "the token is not valid",
            }));
        }
    };
    if required
        .iter()
        .any(|name| claims.get(name).is_none_or(serde_json::Value::is_null))
    {
        return Err(Refused::Invalid("the token lacks a required claim"));
    }
    Ok(claims)
}

/// The text of a string or number claim.
pub(crate) fn claim_text(
    claims: &BTreeMap<String, serde_json::Value>,
    name: &str,
) -> Option<String> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

impl Jwt {
    /// Loads the keys (PEM paths relative to `base`).
    pub(crate) fn new(spec: &JwtSpec, env: super::BuildEnv<'_>) -> Result<Self, BuildError> {
        let base = env.base;
        let mut keys = Vec::new();
        for k in &spec.keys {
            let alg = algorithm(&k.alg)?;
            let key = match (&k.secret, &k.public_key_file, alg) {
                (Some(secret), None, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                    if secret.len() < 16 {
                        return Err(BuildError::ShortSecret);
                    }
                    DecodingKey::from_secret(secret.as_bytes())
                }
                (None, Some(file), _) => {
                    let path = if Path::new(file.as_str()).is_absolute() {
                        Path::new(file.as_str()).to_owned()
                    } else {
                        base.join(file.as_str())
                    };
                    let pem = match std::fs::read(&path) {
                        Ok(pem) => pem,
                        Err(source) => return Err(BuildError::Read { path, source }),
                    };
                    match alg {
                        Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512 => DecodingKey::from_rsa_pem(&pem),
                        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                        _ => return Err(BuildError::SecretOnly { alg }),
                    }
                    .map_err(|source| BuildError::PublicKey { path, source })?
                }
                _ => {
                    return Err(BuildError::KeyMaterial {
                        alg,
                        hmac: matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
                    });
                }
            };
            keys.push(Key {
                kid: k.kid.clone(),
                alg,
                key,
            });
        }
        if let Some(inline) = &spec.jwks {
            let set: JwkSet =
                serde_json::from_value(inline.clone()).map_err(BuildError::InlineJwks)?;
            let before = keys.len();
            keys.extend(from_jwks(&set));
            if keys.len() - before != set.keys.len() {
                return Err(BuildError::JwksAlgorithm);
            }
        }
        if keys.is_empty() && spec.jwks_url.is_none() {
            return Err(BuildError::NoKeys);
        }
        let claims_to_headers = super::auth::claim_headers(&spec.claims_to_headers)?;
        Ok(Jwt {
            keys,
            jwks: spec.jwks_url.as_ref().map(|url| {
                env.state.keep(|| Jwks {
                    url: url.value.clone(),
                    refresh: spec.jwks_refresh.0.max(Duration::from_secs(1)),
                    // A changed jwt of the same URL starts from the keys served so far, so a
                    // failing first fetch does not leave it without keys.
                    keys: Arc::new(ArcSwap::new(
                        env.state
                            .live::<Jwks>()
                            .iter()
                            .find(|old| old.url == url.value)
                            .map(|old| old.keys.load_full())
                            .unwrap_or_default(),
                    )),
                    wake: Arc::new(tokio::sync::Notify::new()),
                    last_forced: AtomicU64::new(0),
                    fetches: Arc::new(AtomicU64::new(0)),
                    live_tasks: env.metrics.background_tasks().clone(),
                    refresher: OnceLock::new(),
                })
            }),
            issuers: spec.issuers.clone(),
            audiences: spec.audiences.clone(),
            leeway: spec.leeway.0.as_secs(),
            consumer_claim: spec.consumer_claim.clone(),
            claims_to_headers,
            required: std::iter::once("exp".to_owned())
                .chain(spec.required_claims.iter().cloned())
                .collect(),
            consumers: Arc::clone(env.consumers),
            sources: source::Sources {
                cookie: spec.cookie.clone(),
                query: spec.query.clone(),
                hide: spec.hide_credentials,
            },
        })
    }

    /// Asks for a JWKS refresh, at most once a minute.
    fn refresh_soon(&self) {
        let Some(jwks) = &self.jwks else { return };
        let now = crate::health::now_ms();
        let last = jwks.last_forced.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 60_000)
            && jwks
                .last_forced
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            jwks.wake.notify_one();
        }
    }

    /// A 401 for a presented token that is not acceptable (RFC 6750 §3.1 `invalid_token`).
    fn unauthorized(&self, ctx: &RequestCtx, message: &str) -> Flow {
        static CHALLENGE: HeaderValue =
            HeaderValue::from_static("Bearer realm=\"portico\", error=\"invalid_token\"");
        Flow::Respond(super::auth::unauthorized(
            &ctx.request_id,
            &CHALLENGE,
            message,
        ))
    }

    /// A 401 for a request without bearer credentials: RFC 6750 §3.1 says the challenge then
    /// carries no error code, since nothing was presented that could be invalid.
    fn challenge(&self, ctx: &RequestCtx) -> Flow {
        static CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"portico\"");
        Flow::Respond(super::auth::unauthorized(
            &ctx.request_id,
            &CHALLENGE,
            "a bearer token is required",
        ))
    }
}

impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let Some((token, from)) = self.sources.find(head) else {
            return super::Explained::Run(vec!["no bearer token sent".to_owned()]);
        };
        let token = token.as_str();
        let Ok(token_header) = jsonwebtoken::decode_header(token) else {
            return super::Explained::Run(Vec::new());
        };
        let mut notes = vec![format!(
            "token {}alg {:?}{} (token and signature not shown)",
            from.describe(&self.sources),
            token_header.alg,
            token_header
                .kid
                .as_deref()
                .map_or_else(String::new, |kid| format!(", kid {kid}"))
        )];
        // The claims as the token states them; whether they hold is the request step's call.
        let mut unverified = Validation::new(token_header.alg);
        unverified.insecure_disable_signature_validation();
        unverified.validate_exp = false;
        unverified.validate_aud = false;
        unverified.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<BTreeMap<String, serde_json::Value>>(
            token,
            &DecodingKey::from_secret(&[]),
            &unverified,
        )
        .map(|data| data.claims)
        .unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut shown: Vec<String> = Vec::new();
        let mut used: Vec<&str> = vec![self.consumer_claim.as_str(), "iss", "aud", "exp", "nbf"];
        used.extend(self.required.iter().map(String::as_str));
        used.extend(self.claims_to_headers.iter().map(|(c, _)| c.as_str()));
        let mut seen = std::collections::HashSet::new();
        for name in used {
            if !seen.insert(name) {
                continue;
            }
            match (name, claims.get(name)) {
                ("exp" | "nbf", Some(serde_json::Value::Number(n))) => {
                    let at = n.as_u64().unwrap_or(0);
                    let when = if at >= now {
                        format!("in {} s", at - now)
                    } else {
                        format!("{} s ago", now - at)
                    };
                    shown.push(format!("{name}={at} ({when})"));
                }
                (_, Some(value)) => shown.push(format!("{name}={value}")),
                (_, None) if self.required.contains(name) => shown.push(format!("{name} missing")),
                (_, None) => {}
            }
        }
        if shown.is_empty() {
            notes.push("claims: none that portico uses".to_owned());
        } else {
            notes.push(format!("claims: {}", shown.join(" ")));
        }
        let static_key = self.keys.iter().any(|k| {
            k.alg == token_header.alg
                && match &token_header.kid {
                    Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                    None => true,
                }
        });
        if let Some(jwks) = &self.jwks
            && !static_key
        {
            notes.push(format!(
                "its key would come from jwks_url {}, which is not fetched offline: the \
                 signature, exp, nbf, iss and aud are not verified here",
                jwks.url
            ));
            if let Some(serde_json::Value::String(subject)) = claims.get(&self.consumer_claim) {
                let consumer = self.consumers.by_name(subject).unwrap_or_else(|| {
                    Arc::new(Consumer {
                        name_value: HeaderValue::from_str(subject)
                            .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                        name: subject.clone(),
                        groups: Vec::new(),
                        groups_value: None,
                    })
                });
                ctx.consumer = Some(consumer);
            }
            return super::Explained::Offline(notes);
        }
        super::Explained::Run(notes)
    }

    fn stops(&self) -> Option<&'static str> {
        Some("401 without a valid token")
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        if head
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            return Ok(self.unauthorized(ctx, "more than one Authorization header"));
        }
        let Some((token, _)) = self.sources.find(head) else {
            return Ok(self.challenge(ctx));
        };
        let token = token.as_str();
        let guard = self.jwks.as_ref().map(|jwks| jwks.keys.load());
        let fetched: &[Key] = guard.as_ref().map_or(&[], |keys| keys.as_slice());
        let keys: Vec<&Key> = self.keys.iter().chain(fetched.iter()).collect();
        let checks = Checks {
            issuers: &self.issuers,
            audiences: &self.audiences,
            leeway: self.leeway,
            required: Some(&self.required),
        };
        let claims = match verify(token, &keys, &checks) {
            Ok(claims) => claims,
            Err(refused) => {
                if refused == Refused::NoKey {
                    self.refresh_soon();
                }
                return Ok(self.unauthorized(ctx, refused.message()));
            }
        };
        let claim_text = |name: &str| claim_text(&claims, name);
        if let Some(subject) = claim_text(&self.consumer_claim) {
            let consumer = self.consumers.by_name(&subject).unwrap_or_else(|| {
                Arc::new(Consumer {
                    name_value: HeaderValue::from_str(&subject)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
                    name: subject,
                    groups: Vec::new(),
                    groups_value: None,
                })
            });
            ctx.consumer = Some(consumer);
        }
        for (claim, header) in &self.claims_to_headers {
            head.headers.remove(header);
            if let Some(value) = claim_text(claim).and_then(|v| HeaderValue::from_str(&v).ok()) {
                head.headers.insert(header.clone(), value);
            }
        }
        self.sources.hide(head);
        ctx.slots.insert(Claims(Arc::new(claims)));
        Ok(Flow::Continue)
    }
}

/// The claims of the token a `jwt` plugin verified, kept on the request for later stages
/// (an aggregate's `{claim.NAME}` placeholders).
#[derive(Debug, Clone)]
pub(crate) struct Claims(pub(crate) Arc<BTreeMap<String, serde_json::Value>>);
