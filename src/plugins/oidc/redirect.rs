//! Where `oidc` may send a browser after login and logout, the PKCE challenge, and the set of
//! states already used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `target` if it is a safe place to send the browser: a relative path (one `/`, then not
/// `/` or `\`, no control characters or backslashes anywhere, and no percent-encoded slash or
/// backslash right after the first `/`), or an absolute `http(s)` URL on one of `origins`.
/// Anything else is `/`.
pub(crate) fn safe_target(target: &str, origins: &[String]) -> String {
    if is_relative(target) {
        return target.to_owned();
    }
    if let Some(origin) = origin_of(target)
        && origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
        && !target.bytes().any(|b| b.is_ascii_control() || b == b'\\')
    {
        return target.to_owned();
    }
    "/".to_owned()
}

fn is_relative(target: &str) -> bool {
    let bytes = target.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes
        .iter()
        .any(|b| b.is_ascii_control() || *b == b'\\' || *b == b' ' || *b >= 0x80)
    {
        return false;
    }
    match bytes.get(1) {
        Some(b'/') => return false,
        Some(b'%') => {
            let next = target.get(2..4).map(str::to_ascii_lowercase);
            if matches!(next.as_deref(), Some("2f" | "5c")) {
                return false;
            }
        }
        _ => {}
    }
    true
}

/// `scheme://host[:port]` of an absolute `http`/`https` URL, lowercased; `None` otherwise.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    // `https:evil.example` does not parse as absolute; `https://h` must start exactly so.
    if !url
        .get(..scheme.len() + 3)
        .is_some_and(|p| p.eq_ignore_ascii_case(&format!("{scheme}://")))
    {
        return None;
    }
    Some(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The S256 PKCE challenge of `verifier` (RFC 7636 §4.2).
pub(super) fn challenge(verifier: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// `n` random bytes in base64url: states, nonces, verifiers.
pub(super) fn random(n: usize) -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(B64.encode(bytes))
}

/// The SHA-256 of every state used, until it could no longer be used anyway; bounded.
#[derive(Debug)]
pub(super) struct UsedStates {
    used: Mutex<HashMap<[u8; 32], Instant>>,
    max: usize,
}

/// Whether a state may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// First use: go on.
    First,
    /// Seen before: refuse.
    Again,
    /// The set is full of live states: refuse for now.
    Full,
}

impl UsedStates {
    /// A set of at most `max` states.
    pub(super) fn new(max: usize) -> Self {
        UsedStates {
            used: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Marks `state` used until `ttl` from now; whether it was the first use.
    pub(super) fn use_once(&self, state: &str, ttl: Duration) -> Use {
        let digest = ring::digest::digest(&ring::digest::SHA256, state.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let mut used = match self.used.lock() {
            Ok(u) => u,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        if let Some(until) = used.get(&key)
            && *until > now
        {
            return Use::Again;
        }
        if used.len() >= self.max {
            used.retain(|_, until| *until > now);
            if used.len() >= self.max {
                return Use::Full;
            }
        }
        used.insert(key, now + ttl);
        Use::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn only_relative_paths_and_allowed_origins() {
        let allowed = vec!["https://app.example.com".to_owned()];
        for ok in ["/", "/a/b?c=d#e", "/a//b", "/%41"] {
            assert_eq!(safe_target(ok, &allowed), ok, "{ok}");
        }
        assert_eq!(
            safe_target("https://app.example.com/x?y", &allowed),
            "https://app.example.com/x?y"
        );
        assert_eq!(
            safe_target("HTTPS://APP.example.com/x", &allowed),
            "HTTPS://APP.example.com/x"
        );
        for bad in [
            "//evil.example",
            "///evil.example",
            "https://evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2fevil.example",
            "/%5cevil.example",
            "https:evil.example",
            "https:/evil.example",
            "javascript:alert(1)",
            "/\tevil",
            "/\n/evil.example",
            "\t//evil.example",
            " /x",
            "https://app.example.com@evil.example/",
            "https://app.example.com.evil.example/",
            "http://app.example.com/",
            "evil.example",
            "",
        ] {
            assert_eq!(safe_target(bad, &allowed), "/", "{bad:?}");
        }
    }

    #[test]
    fn a_state_is_used_once() {
        let set = UsedStates::new(2);
        let ttl = Duration::from_secs(60);
        assert_eq!(set.use_once("a", ttl), Use::First);
        assert_eq!(set.use_once("a", ttl), Use::Again);
        assert_eq!(set.use_once("b", Duration::ZERO), Use::First);
        // Full: the expired entry makes room; then full of live ones.
        assert_eq!(set.use_once("c", ttl), Use::First);
        assert_eq!(set.use_once("d", ttl), Use::Full);
        assert_eq!(set.use_once("a", ttl), Use::Again);
    }
}
