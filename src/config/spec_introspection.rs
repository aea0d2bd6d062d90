//! The `oauth2_introspection` plugin's spec (RFC 7662 token introspection).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Dur;

/// `oauth2_introspection:` — opaque bearer tokens checked at an introspection endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntrospectionSpec {
    /// The authorization server's introspection endpoint, `http://` or `https://`.
    #[schemars(pattern(r"^https?://"))]
    pub(crate) introspection_url: At<String>,
    /// The client portico authenticates as at the endpoint.
    #[schemars(length(min = 1))]
    pub(crate) client_id: At<String>,
    /// That client's secret (use `${ENV}`); never shown by `GET /config` or `explain`.
    #[serde(serialize_with = "redact")]
    pub(crate) client_secret: At<String>,
    /// How the client credentials are sent: `basic` (HTTP Basic, RFC 6749 §2.3.1) or `post`
    /// (`client_id` and `client_secret` in the form body).
    #[serde(default)]
    pub(crate) client_auth: ClientAuth,
    /// Scopes every token must have (all of them, in its space-separated `scope`); none by
    /// default. A token without one of them gets 403 `insufficient_scope`.
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    /// Accepted `aud` values (a string or an array in the answer); any when empty.
    #[serde(default)]
    pub(crate) audience: Vec<String>,
    /// The answer's member whose value is the consumer's name (`username`, as Kong's
    /// `consumer_by` does, or `sub`, `client_id`...).
    #[serde(default = "username")]
    pub(crate) consumer_claim: String,
    /// A mapping of answer member to the header name its value is sent upstream in; a
    /// client's own headers of these names are removed.
    #[serde(default)]
    pub(crate) claims_to_headers: BTreeMap<String, String>,
    /// Whether the `Authorization` header is removed before forwarding.
    #[serde(default)]
    pub(crate) hide_credentials: bool,
    /// How long one introspection call may take; past it the request gets 503.
    #[serde(default = "two_seconds")]
    pub(crate) timeout: Dur,
    /// How long an active answer is reused (never past the token's `exp`).
    #[serde(default = "sixty_seconds")]
    pub(crate) cache_ttl: Dur,
    /// How long an inactive or refused token's answer is reused; `0s` does not cache them.
    #[serde(default = "ten_seconds")]
    pub(crate) negative_cache_ttl: Dur,
    /// Most answers cached; when full, expired ones are dropped and, if none expired, new
    /// answers are not cached until some expire.
    #[schemars(range(min = 1))]
    #[serde(default = "ten_thousand")]
    pub(crate) cache_max_entries: usize,
    /// PEM CA certificates that verify an `https` endpoint instead of the system roots
    /// (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
}

/// How client credentials reach the introspection endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

fn redact<S: serde::Serializer>(_: &At<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(super::secret::REDACTED)
}

fn username() -> String {
    "username".to_owned()
}

fn two_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

fn sixty_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

fn ten_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

fn ten_thousand() -> usize {
    10_000
}
