//! Consumers — who calls — and what every authentication plugin shares: the identity
//! headers portico sets for the upstream, the 401 answer, and constant-time comparison.
//! Failures fail closed; error bodies never echo a credential.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::config::spec::ConsumerSpec;
use crate::error::error_response;

/// `x-consumer-name`, set for the upstream after authentication.
pub(crate) static X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
/// `x-consumer-groups`, comma-separated.
pub(crate) static X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");

pub(crate) use crate::consumer::Consumer;

/// Keys by the first bytes of their digest: (full digest, holder).
type KeyIndex = HashMap<[u8; 8], Vec<([u8; 32], Arc<Consumer>)>>;

/// Every consumer, with API keys indexed by their SHA-256.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    by_key: KeyIndex,
    by_name: HashMap<String, Arc<Consumer>>,
    by_user: HashMap<String, (Arc<Consumer>, String)>,
    by_subject: HashMap<String, Arc<Consumer>>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why the consumers cannot be indexed; each error knows the position it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConsumerError {
    /// A name that cannot go in the consumer header.
    #[error("a consumer name must be printable")]
    Name(crate::config::Pos),
    /// A password hash that is neither argon2 nor bcrypt.
    #[error("password_hash must be an argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash")]
    PasswordHash(crate::config::Pos),
    /// A basic-auth username two consumers share.
    #[error("this username is given twice")]
    DuplicateUser(crate::config::Pos),
    /// An API key shorter than 8 characters.
    #[error("an API key must have at least 8 characters")]
    ShortKey(crate::config::Pos),
    /// An API key given twice.
    #[error("this API key is given twice")]
    DuplicateKey(crate::config::Pos),
}

impl ConsumerError {
    /// The position in the config the error is about.
    pub(crate) fn pos(&self) -> crate::config::Pos {
        match self {
            ConsumerError::Name(pos)
            | ConsumerError::PasswordHash(pos)
            | ConsumerError::DuplicateUser(pos)
            | ConsumerError::ShortKey(pos)
            | ConsumerError::DuplicateKey(pos) => *pos,
        }
    }
}

impl Consumers {
    /// Indexes consumers; the error names a problem (a key given twice, a bad name).
    pub(crate) fn build(specs: &[ConsumerSpec]) -> Result<Self, ConsumerError> {
        let mut by_key = KeyIndex::new();
        let mut by_name = HashMap::new();
        let mut by_user = HashMap::new();
        let mut by_subject = HashMap::new();
        for spec in specs {
            let name_value = HeaderValue::from_str(&spec.name)
                .map_err(|_| ConsumerError::Name(spec.name.pos))?;
            let groups_value = (!spec.groups.is_empty())
                .then(|| HeaderValue::from_str(&spec.groups.join(",")).ok())
                .flatten();
            let consumer = Arc::new(Consumer {
                name: spec.name.value.clone(),
                groups: spec.groups.clone(),
                name_value,
                groups_value,
            });
            by_name.insert(spec.name.value.clone(), Arc::clone(&consumer));
            if let Some(basic) = &spec.basic_auth {
                if !basic.password_hash.starts_with("$argon2")
                    && !basic.password_hash.starts_with("$2")
                {
                    return Err(ConsumerError::PasswordHash(basic.password_hash.pos));
                }
                if by_user
                    .insert(
                        basic.username.value.clone(),
                        (Arc::clone(&consumer), basic.password_hash.value.clone()),
                    )
                    .is_some()
                {
                    return Err(ConsumerError::DuplicateUser(basic.username.pos));
                }
            }
            if let Some(subject) = &spec.cert_subject {
                by_subject.insert(subject.clone(), Arc::clone(&consumer));
            }
            for key in &spec.api_keys {
                if key.len() < 8 {
                    return Err(ConsumerError::ShortKey(key.pos));
                }
                let digest = sha256(key.as_bytes());
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&digest[..8]);
                let bucket = by_key.entry(prefix).or_default();
                if bucket.iter().any(|(d, _)| *d == digest) {
                    return Err(ConsumerError::DuplicateKey(key.pos));
                }
                bucket.push((digest, Arc::clone(&consumer)));
            }
        }
        Ok(Consumers {
            by_key,
            by_name,
            by_user,
            by_subject,
        })
    }

    /// The consumer with basic-auth user `user`, and its password hash.
    pub(crate) fn basic(&self, user: &str) -> Option<(Arc<Consumer>, String)> {
        self.by_user.get(user).cloned()
    }

    /// The consumer whose certificate subject is `subject`.
    pub(crate) fn by_cert_subject(&self, subject: &str) -> Option<Arc<Consumer>> {
        self.by_subject.get(subject).cloned()
    }

    /// The consumer named `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<Arc<Consumer>> {
        self.by_name.get(name).cloned()
    }

    /// The consumer holding `key`; the digests are compared in constant time.
    pub(crate) fn by_api_key(&self, key: &[u8]) -> Option<Arc<Consumer>> {
        let digest = sha256(key);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&digest[..8]);
        self.by_key
            .get(&prefix)?
            .iter()
            .find_map(|(d, consumer)| constant_time_eq(d, &digest).then(|| Arc::clone(consumer)))
    }
}

/// A 401 in portico's JSON format with its `WWW-Authenticate` challenge.
pub(crate) fn unauthorized(
    request_id: &HeaderValue,
    challenge: &HeaderValue,
    message: &str,
) -> http::Response<crate::body::Body> {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
        request_id,
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, challenge.clone());
    response
}

/// Compares without an early exit, so timing does not tell how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A `claims_to_headers` map (claim name → header name), its header names checked.
pub(crate) fn claim_headers(
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, HeaderName)>, super::BuildError> {
    map.iter()
        .map(|(claim, h)| {
            HeaderName::from_bytes(h.as_bytes())
                .map(|name| (claim.clone(), name))
                .map_err(|e| super::BuildError::header_name(h, e))
        })
        .collect()
}

/// The URL of an authorization server, named `key` in the config: absolute, `http` or `https`,
/// with a host; and whether it is `https`.
pub(crate) fn server_url(
    url: &crate::config::de::At<String>,
    key: &str,
) -> Result<(http::Uri, bool), super::BuildError> {
    let invalid = |message: String| super::BuildError::At {
        pos: url.pos,
        message,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| invalid(format!("{key} is not a URL")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(invalid(format!("{key} must be http:// or https://"))),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(format!("{key} has no host")));
    }
    Ok((uri, https))
}

/// How a client of an authorization server sends its credentials (RFC 6749 §2.3.1): an
/// `Authorization: Basic` value for `basic`, or `&client_id=…&client_secret=…` to append to the
/// form for `post` (the other one empty).
pub(crate) fn client_credentials(
    how: crate::config::spec_introspection::ClientAuth,
    client_id: &crate::config::de::At<String>,
    client_secret: &crate::config::de::At<String>,
) -> Result<(Option<HeaderValue>, String), super::BuildError> {
    use crate::config::spec_introspection::ClientAuth;
    let invalid = |pos, message: &str| super::BuildError::At {
        pos,
        message: message.to_owned(),
    };
    if client_id.trim().is_empty() {
        return Err(invalid(client_id.pos, "client_id must not be empty"));
    }
    if client_secret.is_empty() {
        return Err(invalid(
            client_secret.pos,
            "client_secret must not be empty",
        ));
    }
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Ok(match how {
        ClientAuth::Basic => {
            use base64::Engine;
            // The id and secret are form-encoded before base64.
            let pair = format!("{}:{}", encode(client_id), encode(client_secret));
            let value = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let value = HeaderValue::from_str(&value).map_err(|_| super::BuildError::At {
                pos: client_id.pos,
                message: "client_id cannot be sent".to_owned(),
            })?;
            (Some(value), String::new())
        }
        ClientAuth::Post => (
            None,
            format!(
                "&client_id={}&client_secret={}",
                encode(client_id),
                encode(client_secret)
            ),
        ),
    })
}

/// The TLS client for an `https` authorization server (`None` for `http`): the system roots,
/// or those of `ca_file` (relative to the config's folder).
pub(crate) fn server_tls(
    https: bool,
    ca_file: Option<&String>,
    env: &super::BuildEnv<'_>,
    pos: crate::config::Pos,
) -> Result<Option<Arc<rustls::ClientConfig>>, super::BuildError> {
    if !https {
        return Ok(None);
    }
    let ca = ca_file.map(|file| env.base.join(file));
    crate::tls::client_config(ca.as_deref(), None, true, false)
        .map(Some)
        .map_err(|e| super::BuildError::At {
            pos,
            message: format!("cannot set up TLS: {e}"),
        })
}

/// The bearer token of the only `Authorization` header (RFC 6750 §2.1); `Err` when the request
/// has several `Authorization` headers.
pub(crate) fn bearer(head: &http::request::Parts) -> Result<Option<&str>, ()> {
    let mut values = head.headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty()))
}
