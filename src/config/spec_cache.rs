//! The `cache` plugin's spec: an RFC 9111 shared cache of the route's answers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::{Dur, Size};

/// `cache:` — stores the route's answers to `GET` in memory and serves them while fresh
/// (RFC 9111, shared-cache rules); `HEAD` is served from the `GET` answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSpec {
    /// How long an answer stays fresh when it says nothing itself (no `s-maxage`,
    /// `max-age` or `Expires`): heuristic freshness (RFC 9111 §4.2.2), for the statuses that
    /// allow it only (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501). Without it,
    /// such answers are not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ttl: Option<Dur>,
    /// Most bytes the memory store holds (bodies and heads); past it the least recently
    /// used answers are dropped.
    #[serde(default = "sixty_four_mebibytes")]
    pub(crate) max_size: Size,
    /// The largest answer stored; a longer body is passed on as it streams and not stored.
    #[serde(default = "one_mebibyte")]
    pub(crate) max_object_size: Size,
    /// Request headers that are part of the key besides method, host, path and query
    /// (`Accept-Language`...); none by default. Any other request header never changes
    /// what is served from the cache, unless an answer names it in `Vary`.
    #[serde(default)]
    pub(crate) key_headers: Vec<At<String>>,
    /// How long a request waits for another request of the same key that is already
    /// fetching it (one upstream request for concurrent misses); past it the request goes
    /// to the upstream itself.
    #[serde(default = "five_seconds")]
    pub(crate) lock_timeout: Dur,
    /// A disk store behind the memory one, so that answers survive a restart: every answer
    /// stored is also written (in the background) to one file per key, and a memory miss
    /// looks there. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) disk: Option<At<CacheDiskSpec>>,
}

/// `cache: { disk: }` — where and how much the disk store keeps.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheDiskSpec {
    /// The folder of the entry files, relative to the config file's folder; created (mode
    /// 0700) when missing. Two `cache` plugins cannot share one, nor two portico processes.
    #[serde(default = "dot_cache")]
    pub(crate) path: String,
    /// Most bytes of entry files in the folder; past it the oldest entries are removed.
    #[serde(default = "one_gibibyte")]
    pub(crate) max_size: Size,
}

fn dot_cache() -> String {
    "./cache".to_owned()
}

fn one_gibibyte() -> Size {
    Size(1 << 30)
}

fn sixty_four_mebibytes() -> Size {
    Size(64 << 20)
}

fn one_mebibyte() -> Size {
    Size(1 << 20)
}

fn five_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
