//! `basic_auth`: `Authorization: Basic` against consumers' argon2 or bcrypt hashes, verified on
//! a blocking thread, successes cached briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, header, request};

use super::auth::{Consumer, Consumers};
use super::{Deferred, Flow, Phase, Plugin};
use crate::body::Body;
use crate::config::spec::BasicAuthSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// How long a verified password is remembered (hashes are slow on purpose).
const CACHE_FOR: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 10_000;

/// `basic_auth`.
#[derive(Debug)]
pub(crate) struct BasicAuth {
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    hide: bool,
    /// SHA-256 of `user:password` → (consumer, verified at).
    cache: Arc<Mutex<Verified>>,
}

/// Recently verified credentials.
type Verified = HashMap<[u8; 32], (Arc<Consumer>, Instant)>;

/// The credentials of `Authorization: Basic`, padded or not (RFC 7617 uses RFC 4648 base64).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(text).ok()
}

/// Checks a password against an argon2 PHC string or a bcrypt hash.
pub(crate) fn verify_password(password: &[u8], hash: &str) -> bool {
    use argon2::PasswordVerifier;
    if hash.starts_with("$argon2") {
        return argon2::password_hash::PasswordHash::new(hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password, &parsed)
                .is_ok()
        });
    }
    if hash.starts_with("$2") {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    false
}

impl BasicAuth {
    /// From its spec.
    pub(crate) fn new(spec: &BasicAuthSpec, consumers: &Arc<Consumers>) -> Self {
        let challenge = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            spec.realm
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"portico\""));
        BasicAuth {
            consumers: Arc::clone(consumers),
            challenge,
            hide: spec.hide_credentials,
            cache: Arc::default(),
        }
    }

    fn unauthorized(
        challenge: &HeaderValue,
        request_id: &HeaderValue,
        message: &str,
    ) -> http::Response<Body> {
        super::auth::unauthorized(request_id, challenge, message)
    }
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic_auth"
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let user = head
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b64| decode_base64(b64.trim()))
            .and_then(|decoded| {
                let colon = decoded.iter().position(|&b| b == b':')?;
                Some(String::from_utf8_lossy(&decoded[..colon]).into_owned())
            });
        let note = match user {
            Some(user) => format!(
                "credentials for user {user}; the password is checked against the consumer's \
                 hash (not shown)"
            ),
            None => "no basic credentials sent".to_owned(),
        };
        super::Explained::Run(vec![note])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("401 without valid credentials")
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let refuse = |message: &str| {
            Ok(Flow::Respond(Self::unauthorized(
                &self.challenge,
                &ctx.request_id,
                message,
            )))
        };
        let mut values = head.headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next();
        if values.next().is_some() {
            return refuse("more than one Authorization header");
        }
        let Some(decoded) = value
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b64| decode_base64(b64.trim()))
        else {
            return refuse("credentials are required");
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return refuse("malformed credentials");
        };
        let (user, password) = (&decoded[..colon], decoded[colon + 1..].to_vec());
        let Some((consumer, hash)) = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.consumers.basic(u))
        else {
            return refuse("unknown user or wrong password");
        };
        if self.hide {
            head.headers.remove(header::AUTHORIZATION);
        }
        let digest = {
            let d = ring::digest::digest(&ring::digest::SHA256, &decoded);
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        if let Ok(cache) = self.cache.lock()
            && let Some((cached, at)) = cache.get(&digest)
            && at.elapsed() < CACHE_FOR
        {
            ctx.consumer = Some(Arc::clone(cached));
            return Ok(Flow::Continue);
        }
        // The hash is slow by design: verify it off the worker thread.
        let (cache, challenge, request_id) = (
            Arc::clone(&self.cache),
            self.challenge.clone(),
            ctx.request_id.clone(),
        );
        Ok(Flow::Defer(Box::pin(async move {
            let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
                .await
                .unwrap_or(false);
            if !ok {
                return Deferred::Respond(Self::unauthorized(
                    &challenge,
                    &request_id,
                    "unknown user or wrong password",
                ));
            }
            if let Ok(mut cache) = cache.lock() {
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(digest, (Arc::clone(&consumer), Instant::now()));
            }
            Deferred::Continue(Some(consumer))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_password_hashes() {
        assert_eq!(decode_base64("YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert!(decode_base64("!!").is_none());
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
        assert!(verify_password(b"s3cret", &bcrypt_hash));
        assert!(!verify_password(b"wrong", &bcrypt_hash));
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        let argon = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password(b"s3cret", &argon));
        assert!(!verify_password(b"wrong", &argon));
        assert!(!verify_password(b"s3cret", "plaintext"));
    }
}
