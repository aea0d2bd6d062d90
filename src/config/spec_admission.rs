//! Admission keys of a listener: `limits.connections_per_ip`, `limits.requests_per_ip`,
//! `limits.ipv6_prefix`, `limits.max_clients` and `overload:` (docs/config.md, "Admission").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Dur;

/// `limits.requests_per_ip:` — a request rate per client address, GCRA as `rate_limit`:
/// `burst` at once (the `limit` when absent), refilled at `limit` per `window`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsPerIpSpec {
    /// Requests per `window`, at least 1.
    #[schemars(range(min = 1))]
    pub(crate) limit: At<u32>,
    /// The window `limit` refers to; longer than 0.
    pub(crate) window: Dur,
    /// Requests allowed at once, at least 1 (`limit` when absent).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) burst: Option<u32>,
}

/// `overload:` of a listener — load shedding: requests beyond a concurrency limit wait in a
/// queue at most `queue_timeout`, then get 503 `overloaded`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverloadSpec {
    /// Most requests in flight at once on the listener (with `adaptive`, the most the
    /// adaptive limit may reach); at least 1.
    #[schemars(range(min = 1))]
    #[serde(default = "max_in_flight")]
    pub(crate) max_in_flight: At<usize>,
    /// Longest a request waits for a place before its 503; `0s` refuses at once.
    #[serde(default = "queue_timeout")]
    pub(crate) queue_timeout: Dur,
    /// An adaptive concurrency limit (gradient method) below `max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) adaptive: Option<AdaptiveSpec>,
}

/// `overload.adaptive:` — the limit follows the latency: every `interval` it becomes
/// `limit × clamp(min_rtt × tolerance / sample_rtt, 0.5, 1) + √limit`, within
/// `[min_limit, max_in_flight]`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdaptiveSpec {
    /// The limit before any latency was measured.
    #[schemars(range(min = 1))]
    #[serde(default = "initial_limit")]
    pub(crate) initial_limit: At<usize>,
    /// The limit never goes below this; at least 1.
    #[schemars(range(min = 1))]
    #[serde(default = "min_limit")]
    pub(crate) min_limit: At<usize>,
    /// How often the limit is recomputed from the latency of the requests that ended.
    #[serde(default = "interval")]
    pub(crate) interval: Dur,
    /// How often the no-load latency (`min_rtt`) is measured again, with the limit held at
    /// `min_limit` for one `interval`.
    #[serde(default = "min_rtt_interval")]
    pub(crate) min_rtt_interval: Dur,
    /// How much above `min_rtt` the latency may be before the limit falls; at least 1.
    #[schemars(range(min = 1.0))]
    #[serde(default = "tolerance")]
    pub(crate) tolerance: At<f64>,
}

fn at<T>(value: T) -> At<T> {
    At {
        pos: Default::default(),
        value,
    }
}

fn max_in_flight() -> At<usize> {
    at(1000)
}

fn queue_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

fn initial_limit() -> At<usize> {
    at(20)
}

fn min_limit() -> At<usize> {
    at(3)
}

fn interval() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

fn min_rtt_interval() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

fn tolerance() -> At<f64> {
    at(1.25)
}
