//! The sealed cookies of `oidc`: the session and the login transactions.
//!
//! A sealed value is `base64url(version ‖ nonce ‖ AES-256-GCM(json) ‖ tag)`: version 1, a
//! random 96-bit nonce per seal, the cookie's name (and the version) as associated data, so a
//! value moved to another cookie does not open. The first key seals; every configured key is
//! tried to open (rotation). A value that does not open — another key, tampered, truncated,
//! another version — is no value: the user logs in again.
//!
//! A sealed session longer than [`CHUNK`] bytes is split into `NAME.0`, `NAME.1`... (at most
//! [`MAX_CHUNKS`]); writing one form clears the other and any stale chunks the browser sent.

use std::collections::BTreeMap;

use base64::Engine;
use http::HeaderValue;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::config::spec_oidc::SameSite;

/// The format version, the first byte of a sealed value.
const VERSION: u8 = 1;
/// The longest cookie value before the session is split (browsers keep about 4096 bytes per
/// cookie, name and attributes included).
pub(super) const CHUNK: usize = 3800;
/// The most chunks a session may take.
pub(super) const MAX_CHUNKS: usize = 4;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The AES-256-GCM keys: the first seals, all open.
pub(super) struct Sealer {
    keys: Vec<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Why a configured key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyError {
    /// Not base64.
    Base64,
    /// Not 32 bytes once decoded.
    Length(usize),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Base64 => f.write_str("a session key must be base64 (of 32 bytes)"),
            KeyError::Length(n) => write!(f, "a session key must be 32 bytes, this one has {n}"),
        }
    }
}

/// Decodes a key written in standard or URL-safe base64, padded or not.
pub(super) fn decode_key(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or(KeyError::Base64)?;
    if bytes.len() != 32 {
        return Err(KeyError::Length(bytes.len()));
    }
    Ok(bytes)
}

impl Sealer {
    /// The sealer of 32-byte keys.
    pub(super) fn new(keys: &[Vec<u8>]) -> Option<Self> {
        let keys = keys
            .iter()
            .map(|k| UnboundKey::new(&AES_256_GCM, k).ok().map(LessSafeKey::new))
            .collect::<Option<Vec<_>>>()?;
        (!keys.is_empty()).then_some(Sealer { keys })
    }

    /// Seals `plain` for the cookie `name`.
    pub(super) fn seal(&self, name: &str, plain: &[u8]) -> Option<String> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut data = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(name)),
            &mut data,
        )
        .ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + data.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Some(B64.encode(out))
    }

    /// Opens a value sealed for the cookie `name` with any key; `None` if none opens it.
    pub(super) fn open(&self, name: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = B64.decode(sealed.trim()).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, data) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|key| {
            let mut buf = data.to_vec();
            let plain = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(name)),
                    &mut buf,
                )
                .ok()?;
            Some(plain.to_vec())
        })
    }
}

fn aad(name: &str) -> Vec<u8> {
    let mut aad = vec![VERSION];
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// What the session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Session {
    /// The ID token's claims that portico uses (`sub`, the consumer claim, the claims sent as
    /// headers, `iss`, `email`...), without `nonce` and the hashes.
    pub(super) claims: BTreeMap<String, serde_json::Value>,
    /// When the session began (Unix seconds).
    pub(super) created: u64,
    /// When it ends whatever happens (`created` + `lifetime`).
    pub(super) ends: u64,
    /// When the access token expires, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) access_expires: Option<u64>,
    /// The refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) refresh_token: Option<String>,
    /// The ID token, for `id_token_hint` at logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id_token: Option<String>,
}

/// A login under way, kept in a cookie named after its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct Transaction {
    /// The `state` sent.
    pub(super) state: String,
    /// The `nonce` sent.
    pub(super) nonce: String,
    /// The PKCE verifier.
    pub(super) verifier: String,
    /// Where to go once logged in (a checked relative path or allowed URL).
    pub(super) target: String,
    /// When the login began (Unix seconds).
    pub(super) created: u64,
    /// The `redirect_uri` sent (the token request repeats it).
    pub(super) redirect_uri: String,
}

/// The cookie attributes of one `oidc`.
#[derive(Debug, Clone)]
pub(super) struct Attributes {
    pub(super) secure: bool,
    pub(super) same_site: SameSite,
    pub(super) domain: Option<String>,
    pub(super) path: String,
}

impl Attributes {
    /// `Set-Cookie: name=value` with these attributes; `max_age` in seconds (0 deletes).
    pub(super) fn set(&self, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        self.set_at(name, value, max_age, &self.path)
    }

    /// The same on another path (the transaction cookies live on the callback's path).
    pub(super) fn set_at(
        &self,
        name: &str,
        value: &str,
        max_age: u64,
        path: &str,
    ) -> Option<HeaderValue> {
        let mut out = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly");
        if self.secure {
            out.push_str("; Secure");
        }
        out.push_str(match self.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        if let Some(domain) = &self.domain {
            out.push_str("; Domain=");
            out.push_str(domain);
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// Every `name=value` pair of the request's `Cookie` headers.
pub(crate) fn cookies(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// Whether `cookie` is one of portico's for session name `name`: the session, a chunk of it,
/// or a login transaction.
pub(crate) fn is_ours(name: &str, cookie: &str) -> bool {
    cookie
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with("_tx_"))
}

/// The sealed session the request carries: `NAME`, or `NAME.0`, `NAME.1`... joined.
pub(crate) fn read_sealed(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let mut whole = None;
    let mut chunks: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    for (cookie, value) in cookies(headers) {
        if cookie == name {
            whole = Some(value);
        } else if let Some(n) = cookie
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|n| n.parse::<usize>().ok())
            && n < MAX_CHUNKS
        {
            chunks[n] = Some(value);
        }
    }
    if let Some(whole) = whole {
        return Some(whole.to_owned());
    }
    let mut out = String::new();
    for chunk in chunks.iter() {
        match chunk {
            Some(c) => out.push_str(c),
            None => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `Set-Cookie` values that store `sealed` as the session `name` (one cookie, or chunks)
/// and clear the other form and the stale chunks the request sent; `None` when it needs more
/// than [`MAX_CHUNKS`] chunks.
pub(super) fn write_sealed(
    attrs: &Attributes,
    headers: &http::HeaderMap,
    name: &str,
    sealed: &str,
    max_age: u64,
) -> Option<Vec<HeaderValue>> {
    let mut out = Vec::new();
    let sent: Vec<&str> = cookies(headers)
        .map(|(c, _)| c)
        .filter(|c| *c == name || c.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
        .collect();
    let written: Vec<String> = if sealed.len() <= CHUNK {
        out.push(attrs.set(name, sealed, max_age)?);
        vec![name.to_owned()]
    } else {
        let parts: Vec<&str> = sealed
            .as_bytes()
            .chunks(CHUNK)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        if parts.len() > MAX_CHUNKS {
            return None;
        }
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let chunk = format!("{name}.{i}");
            out.push(attrs.set(&chunk, part, max_age)?);
            names.push(chunk);
        }
        names
    };
    for stale in sent {
        if !written.iter().any(|w| w == stale) {
            out.push(attrs.set(stale, "", 0)?);
        }
    }
    Some(out)
}

/// The `Set-Cookie` values that clear the session (every form the request sent, and `NAME`).
pub(super) fn clear(attrs: &Attributes, headers: &http::HeaderMap, name: &str) -> Vec<HeaderValue> {
    let mut names: Vec<&str> = cookies(headers)
        .map(|(c, _)| c)
        .filter(|c| *c == name || c.strip_prefix(name).is_some_and(|r| r.starts_with('.')))
        .collect();
    if !names.contains(&name) {
        names.push(name);
    }
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| attrs.set(n, "", 0))
        .collect()
}

/// Removes portico's cookies from the request's `Cookie` headers (the upstream never sees
/// them); the header goes when nothing is left.
pub(crate) fn strip(headers: &mut http::HeaderMap, name: &str) {
    if !cookies(headers).any(|(c, _)| is_ours(name, c)) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let cookie = pair.split_once('=').map_or(*pair, |(n, _)| n.trim());
            !is_ours(name, cookie)
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::COOKIE);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(http::header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(seeds: &[u8]) -> Sealer {
        Sealer::new(&seeds.iter().map(|s| vec![*s; 32]).collect::<Vec<_>>()).unwrap()
    }

    fn attrs() -> Attributes {
        Attributes {
            secure: true,
            same_site: SameSite::Lax,
            domain: None,
            path: "/".to_owned(),
        }
    }

    #[test]
    fn seals_open_with_any_key_and_nothing_else() {
        let new = sealer(&[1, 2]);
        let sealed = new.seal("s", b"hello").unwrap();
        assert_eq!(new.open("s", &sealed).unwrap(), b"hello");
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(sealed, new.seal("s", b"hello").unwrap());
        // Rotation: sealed by the old key, opened by a config listing it second.
        let old = sealer(&[2]);
        assert_eq!(new.open("s", &old.seal("s", b"x").unwrap()).unwrap(), b"x");
        // Another key, another cookie name, tampering, truncation, garbage: nothing.
        assert!(sealer(&[3]).open("s", &sealed).is_none());
        assert!(new.open("t", &sealed).is_none());
        let mut raw = B64.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(new.open("s", &B64.encode(&raw)).is_none());
        raw[last] ^= 1;
        raw[0] = 2;
        assert!(new.open("s", &B64.encode(&raw)).is_none());
        assert!(new.open("s", &sealed[..sealed.len() - 4]).is_none());
        assert!(new.open("s", &sealed[..10]).is_none());
        assert!(new.open("s", "").is_none());
        assert!(new.open("s", "!!!").is_none());
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(decode_key(&key).unwrap(), vec![7u8; 32]);
        let url = B64.encode([0xfbu8; 32]);
        assert_eq!(decode_key(&url).unwrap(), vec![0xfb; 32]);
        assert_eq!(decode_key("c2hvcnQ="), Err(KeyError::Length(5)));
        assert_eq!(decode_key("not base64 at all!"), Err(KeyError::Base64));
    }

    fn request(cookie: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn long_sessions_are_chunked_and_stale_chunks_cleared() {
        let long = "a".repeat(CHUNK * 2 + 10);
        let sent = request("s=old; s.5=x; other=1");
        let set = write_sealed(&attrs(), &sent, "s", &long, 60).unwrap();
        let text: Vec<&str> = set.iter().map(|v| v.to_str().unwrap()).collect();
        assert!(
            text[0].starts_with("s.0=")
                && text[1].starts_with("s.1=")
                && text[2].starts_with("s.2=")
        );
        // `s` (the unsplit form) is cleared; `s.5` was never read (past the bound) but is ours.
        assert!(
            text.iter()
                .any(|t| t.starts_with("s=; ") && t.contains("Max-Age=0"))
        );
        assert!(text.iter().any(|t| t.starts_with("s.5=; ")));
        assert!(!text.iter().any(|t| t.starts_with("other")));
        assert!(
            text[0].contains("HttpOnly")
                && text[0].contains("Secure")
                && text[0].contains("SameSite=Lax")
                && text[0].contains("Path=/")
        );
        // Read back: the chunks joined.
        let back: Vec<String> = set[..3]
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        assert_eq!(read_sealed(&request(&back.join("; ")), "s").unwrap(), long);
        // A short one replaces the chunks.
        let set = write_sealed(&attrs(), &request(&back.join("; ")), "s", "short", 60).unwrap();
        assert_eq!(set.len(), 4);
        assert!(set[0].to_str().unwrap().starts_with("s=short;"));
        // Bounded.
        let huge = "a".repeat(CHUNK * MAX_CHUNKS + 1);
        assert!(write_sealed(&attrs(), &sent, "s", &huge, 60).is_none());
        // A missing chunk ends the value there (it will not open).
        assert_eq!(read_sealed(&request("s.0=ab; s.2=cd"), "s").unwrap(), "ab");
        assert!(read_sealed(&request("x=1"), "s").is_none());
    }

    #[test]
    fn portico_cookies_never_reach_the_upstream() {
        let mut h = request("a=1; s=xx; s.0=y; s_tx_abc=z; sx=keep; b=2");
        strip(&mut h, "s");
        assert_eq!(h[http::header::COOKIE], "a=1; sx=keep; b=2");
        let mut h = request("s=1");
        strip(&mut h, "s");
        assert!(h.get(http::header::COOKIE).is_none());
    }
}
