//! The `oidc` plugin's spec: an OpenID Connect relying party for browser logins.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::spec_introspection::ClientAuth;
use super::units::Dur;

/// `oidc:` — logs browser users in at an OpenID Provider (authorization-code flow with PKCE)
/// and keeps them in an encrypted session cookie; bearer access tokens are accepted too.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcSpec {
    /// The provider's issuer URL; discovery is read at
    /// `{issuer}/.well-known/openid-configuration`, and the ID token's `iss` must equal it.
    #[schemars(pattern(r"^https?://"))]
    pub(crate) issuer: At<String>,
    /// The client portico is registered as at the provider.
    #[schemars(length(min = 1))]
    pub(crate) client_id: At<String>,
    /// That client's secret (use `${ENV}`); never shown by `GET /config` or `explain`.
    #[serde(serialize_with = "redact")]
    pub(crate) client_secret: At<String>,
    /// How the client authenticates at the token endpoint: `basic` (`client_secret_basic`)
    /// or `post` (`client_secret_post`).
    #[serde(default)]
    pub(crate) client_auth: ClientAuth,
    /// The callback path, on the request's own scheme and host.
    #[serde(default = "callback")]
    pub(crate) redirect_path: At<String>,
    /// An absolute callback URL instead of one built from the request and `redirect_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redirect_uri: Option<At<String>>,
    /// Scopes asked for; `openid` is always sent.
    #[serde(default = "openid")]
    pub(crate) scopes: Vec<String>,
    /// The session cookie.
    pub(crate) session: SessionSpec,
    /// Whether the refresh token is used before the access token expires.
    #[serde(default = "yes")]
    pub(crate) refresh: bool,
    /// How long before the access token's expiry it is refreshed.
    #[serde(default = "thirty_seconds")]
    pub(crate) refresh_before: Dur,
    /// Logout.
    #[serde(default)]
    pub(crate) logout: LogoutSpec,
    /// Absolute origins (`https://app.example.com`) that post-login and post-logout
    /// redirects may go to besides relative paths.
    #[serde(default)]
    pub(crate) allowed_redirect_origins: Vec<At<String>>,
    /// What a request without a session gets: `auto` (a redirect to the provider when its
    /// `Accept` has `text/html`, else 401), `redirect` or `deny` (always 401).
    #[serde(default)]
    pub(crate) unauthenticated: Unauthenticated,
    /// Whether `Authorization: Bearer` JWT access tokens signed by the provider are accepted
    /// too.
    #[serde(default = "yes")]
    pub(crate) bearer: bool,
    /// Accepted `aud` values of bearer access tokens; `[client_id]` when empty.
    #[serde(default)]
    pub(crate) bearer_audience: Vec<String>,
    /// The claim whose value names the consumer (for `acl` and `rate_limit by: consumer`).
    #[serde(default = "sub")]
    pub(crate) consumer_claim: String,
    /// A mapping of claim name to the header its value is sent upstream in; a client's own
    /// headers of these names are removed.
    #[serde(default)]
    pub(crate) claims_to_headers: BTreeMap<String, String>,
    /// How often discovery and the JWKS are fetched again.
    #[serde(default = "one_hour")]
    pub(crate) discovery_refresh: Dur,
    /// How long any one call to the provider may take.
    #[serde(default = "five_seconds")]
    pub(crate) timeout: Dur,
    /// PEM CA certificates that verify an `https` provider instead of the system roots
    /// (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca_file: Option<String>,
}

/// `oidc.session:` — the sealed session cookie.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionSpec {
    /// AES-256-GCM keys, 32 bytes each written in base64 (use `${ENV}`): the first seals,
    /// every one opens (list an old key second to rotate).
    #[serde(serialize_with = "redact_all")]
    #[schemars(length(min = 1))]
    pub(crate) keys: At<Vec<At<String>>>,
    /// The cookie's name; long sessions are split into `NAME.0`, `NAME.1`...
    #[serde(default = "cookie_name")]
    pub(crate) cookie: At<String>,
    /// The absolute session lifetime: past it, the user logs in again.
    #[serde(default = "eight_hours")]
    pub(crate) lifetime: Dur,
    /// The `Secure` attribute.
    #[serde(default = "yes")]
    pub(crate) secure: bool,
    /// The `SameSite` attribute.
    #[serde(default)]
    pub(crate) same_site: SameSite,
    /// The `Domain` attribute; host-only when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) domain: Option<String>,
    /// The `Path` attribute.
    #[serde(default = "slash")]
    pub(crate) path: String,
}

/// `oidc.logout:` — local and RP-initiated logout.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutSpec {
    /// The path that ends the session.
    #[serde(default = "logout_path")]
    pub(crate) path: String,
    /// Where to after logout: a relative path or a URL on an allowed origin.
    #[serde(default = "slash")]
    pub(crate) redirect: String,
    /// Whether logout goes on at the provider's `end_session_endpoint` when it has one.
    #[serde(default = "yes")]
    pub(crate) provider: bool,
}

impl Default for LogoutSpec {
    fn default() -> Self {
        LogoutSpec {
            path: logout_path(),
            redirect: slash(),
            provider: true,
        }
    }
}

/// What a request without a session gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unauthenticated {
    /// A redirect when the client accepts `text/html`, else 401.
    #[default]
    Auto,
    /// Always a redirect to the provider.
    Redirect,
    /// Always 401.
    Deny,
}

/// A cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SameSite {
    /// `SameSite=Lax`.
    #[default]
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None` (needs `secure`).
    None,
}

fn redact<S: serde::Serializer>(_: &At<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(super::secret::REDACTED)
}

fn redact_all<S: serde::Serializer>(keys: &At<Vec<At<String>>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(keys.len()))?;
    for _ in keys.iter() {
        seq.serialize_element(super::secret::REDACTED)?;
    }
    seq.end()
}

fn at<T>(value: T) -> At<T> {
    At {
        pos: Default::default(),
        value,
    }
}

fn callback() -> At<String> {
    at("/oauth2/callback".to_owned())
}

fn cookie_name() -> At<String> {
    at("portico_session".to_owned())
}

fn logout_path() -> String {
    "/oauth2/logout".to_owned()
}

fn slash() -> String {
    "/".to_owned()
}

fn openid() -> Vec<String> {
    vec!["openid".to_owned()]
}

fn sub() -> String {
    "sub".to_owned()
}

fn yes() -> bool {
    true
}

fn thirty_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

fn five_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn one_hour() -> Dur {
    Dur(std::time::Duration::from_secs(3600))
}

fn eight_hours() -> Dur {
    Dur(std::time::Duration::from_secs(8 * 3600))
}
