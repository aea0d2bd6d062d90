//! The `aggregate:` route action's shape (docs/config.md, "Aggregation").

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::{Dur, Size};

/// `aggregate:` — one client request fans out to several backend calls whose answers are
/// merged into one JSON answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregateSpec {
    /// The backend calls, merged in this order. Calls without `{CALL.FIELD}` placeholders run
    /// at once; a call using another call's field waits for it.
    pub(crate) calls: At<Vec<CallSpec>>,
    /// What a failed call does: `fail` answers 502 (504 for a timeout) naming the call;
    /// `partial` answers what arrived, with `x-portico-completed: false` and an `errors`
    /// list. A failed `required` call fails the request either way.
    #[serde(default)]
    pub(crate) on_error: OnErrorSpec,
    /// Time allowed to the whole aggregate, every call included; the route's `timeout` when
    /// absent, else no limit beyond each call's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<Dur>,
}

/// `on_error:` of an aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnErrorSpec {
    /// Any failed call fails the request.
    #[default]
    Fail,
    /// Answer what arrived; only a failed `required` call fails the request.
    Partial,
}

/// `format:` of a call: how its answer is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FormatSpec {
    /// By the answer's `content-type` (JSON when absent or unknown).
    #[default]
    Auto,
    /// JSON.
    Json,
    /// XML, by the mapping in docs/config.md.
    Xml,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Plain text, as `{"text": "..."}`.
    Text,
}

/// One backend call of an aggregate.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallSpec {
    /// Unique name within the aggregate: `errors` entries and `{NAME.FIELD}` placeholders use
    /// it. Not `path`, `query`, `header`, `claim` or `consumer`.
    pub(crate) name: At<String>,
    /// The upstream the call goes to (its balancing, health checks, TLS and pools apply).
    pub(crate) upstream: At<String>,
    /// Request method.
    #[serde(default = "get")]
    pub(crate) method: At<String>,
    /// Path and query sent to the upstream, with placeholders (`/users/{path.id}?v={query.v}`).
    pub(crate) path: At<String>,
    /// Request headers, name to value template, with placeholders. The client's own headers
    /// are not sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) headers: BTreeMap<String, At<String>>,
    /// Time allowed to this call, its body included; none but the aggregate's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<Dur>,
    /// Hedging, for idempotent methods only: when no answer has come after this long, a
    /// second try goes out (to the balancer's next pick); the first good answer wins and the
    /// other try is cancelled. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hedge: Option<At<Dur>>,
    /// Most bytes of the call's answer body; a larger answer fails the call.
    #[serde(default = "one_mib")]
    pub(crate) max_body: Size,
    /// How the answer is read.
    #[serde(default)]
    pub(crate) format: FormatSpec,
    /// Whether the call's failure fails the request even with `on_error: partial`.
    #[serde(default = "yes")]
    pub(crate) required: bool,
    /// Put the (shaped) answer under this key of the merged answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// Keep only the value at this dotted path of the answer (`data.user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// Keep only these dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow: Vec<String>,
    /// Remove these dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) deny: Vec<String>,
    /// Move fields: a mapping of old dotted path to new dotted path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) rename: BTreeMap<String, String>,
    /// The answer is a top-level array: each item is shaped, and the array is kept under
    /// `group`, or under `collection` without one.
    #[serde(default)]
    pub(crate) collection: bool,
}

fn get() -> At<String> {
    At {
        pos: Default::default(),
        value: "GET".to_owned(),
    }
}

fn one_mib() -> Size {
    Size(1 << 20)
}

fn yes() -> bool {
    true
}

/// `response_shape:` — the conversion and field operations of aggregate calls, on a plain
/// route's answer: a 2xx answer is read whole (up to `max_body`), converted to JSON, shaped,
/// and sent as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponseShapeSpec {
    /// How the answer is read; with `auto`, answers of another content type than JSON, XML,
    /// form or text pass unchanged.
    #[serde(default)]
    pub(crate) format: FormatSpec,
    /// Keep only the value at this dotted path of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// Keep only these dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) allow: Vec<String>,
    /// Remove these dotted paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) deny: Vec<String>,
    /// Move fields: a mapping of old dotted path to new dotted path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) rename: BTreeMap<String, String>,
    /// Put the result under this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// The answer is a top-level array whose items are shaped one by one.
    #[serde(default)]
    pub(crate) collection: bool,
    /// Most bytes of answer read; a larger answer is a 502.
    #[serde(default = "one_mib")]
    pub(crate) max_body: Size,
}
