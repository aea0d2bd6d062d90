//! The `forward_auth` plugin's spec: each request checked by an auth service that is one of
//! the config's upstreams.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::{Dur, Size};

/// `forward_auth:` — asks an auth service (an upstream) about every request; a 2xx lets it
/// on, anything else is the answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardAuthSpec {
    /// The upstream the auth service is: its balancing, health checks, TLS and pools apply.
    pub(crate) upstream: At<String>,
    /// The path (and query) the check is sent to.
    #[serde(default = "slash")]
    pub(crate) path: At<String>,
    /// The method of the check: a method name, or `original` for the request's own.
    #[serde(default = "get")]
    pub(crate) method: At<String>,
    /// Request headers copied onto the check (besides the `X-Forwarded-*` ones, always
    /// sent); none by default.
    #[serde(default)]
    pub(crate) request_headers: Vec<At<String>>,
    /// Headers of a 2xx answer copied onto the upstream request. A client's own headers of
    /// these names are always removed, whether the answer has them or not.
    #[serde(default)]
    pub(crate) response_headers: Vec<At<String>>,
    /// A header of the 2xx answer whose value names the consumer (for `acl` and
    /// `rate_limit by: consumer`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) consumer_header: Option<At<String>>,
    /// Headers of a refusal (any answer but a 2xx) relayed to the client with its status and
    /// body.
    #[serde(default = "client_headers")]
    pub(crate) client_headers: Vec<At<String>>,
    /// How long the check may take, its answer's body included; past it the request gets
    /// 503 `auth_unavailable`.
    #[serde(default = "two_seconds")]
    pub(crate) timeout: Dur,
    /// Most bytes of a refusal's body; a longer one fails closed (503 `auth_unavailable`).
    #[serde(default = "sixty_four_kib")]
    pub(crate) max_body: Size,
    /// Decisions kept and reused, keyed by a SHA-256 of the named request headers' values;
    /// none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cache: Option<ForwardAuthCacheSpec>,
}

/// `forward_auth.cache:` — reuse of the auth service's decisions.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForwardAuthCacheSpec {
    /// The request headers whose values make the key (e.g. `authorization`, `cookie`); only
    /// their SHA-256 is kept.
    #[schemars(length(min = 1))]
    pub(crate) key: Vec<At<String>>,
    /// How long a 2xx decision (and the headers it copies) is reused.
    #[serde(default = "thirty_seconds")]
    pub(crate) ttl: Dur,
    /// How long a refusal is reused; `0s` (the default) does not keep refusals.
    #[serde(default = "zero")]
    pub(crate) negative_ttl: Dur,
    /// Most decisions kept; when full, expired ones are dropped and, if none expired, new
    /// decisions are not kept until some expire.
    #[schemars(range(min = 1))]
    #[serde(default = "ten_thousand")]
    pub(crate) max_entries: usize,
}

fn at<T>(value: T) -> At<T> {
    At {
        pos: Default::default(),
        value,
    }
}

fn slash() -> At<String> {
    at("/".to_owned())
}

fn get() -> At<String> {
    at("GET".to_owned())
}

fn client_headers() -> Vec<At<String>> {
    ["www-authenticate", "location", "set-cookie", "content-type"]
        .into_iter()
        .map(|h| at(h.to_owned()))
        .collect()
}

fn two_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

fn thirty_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

fn zero() -> Dur {
    Dur(std::time::Duration::ZERO)
}

fn sixty_four_kib() -> Size {
    Size(64 * 1024)
}

fn ten_thousand() -> usize {
    10_000
}
