//! The config file's shape, and nothing else: every type here mirrors what users write.
//!
//! Values that later checks may need to point at are wrapped in [`At`], which keeps their line
//! and column. Defaults live here, next to the field they belong to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::{Dur, Size};

/// The whole config file.
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// Worker threads.
    pub workers: Workers,
    /// How long SIGTERM (or a removed listener) waits for in-flight requests.
    pub drain_timeout: Dur,
    /// The admin listener, if any.
    pub admin: Option<AdminSpec>,
    /// The access log.
    pub access_log: AccessLogSpec,
    /// Where portico accepts traffic.
    pub listeners: Vec<ListenerSpec>,
    /// How requests are matched and what is done with them.
    pub routes: Vec<RouteSpec>,
    /// Named groups of targets, in file order.
    pub upstreams: Vec<(At<String>, UpstreamSpec)>,
    /// Plugins that run on every route, before the route's own.
    pub plugins: Vec<At<PluginSpec>>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            workers: Workers::Auto,
            drain_timeout: Dur(std::time::Duration::from_secs(30)),
            admin: None,
            access_log: AccessLogSpec::default(),
            listeners: Vec::new(),
            routes: Vec::new(),
            upstreams: Vec::new(),
            plugins: Vec::new(),
        }
    }
}

/// `workers: auto` or a number of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// One per CPU the process may use.
    #[default]
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected `auto` or a number of worker threads")
        })? {
            Raw::Count(0) => Err(serde::de::Error::custom("workers must be at least 1")),
            Raw::Count(n) => Ok(Workers::Count(n)),
            Raw::Word(w) if w == "auto" => Ok(Workers::Auto),
            Raw::Word(_) => Err(serde::de::Error::custom(
                "expected `auto` or a number of worker threads",
            )),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

/// `admin:` — the admin API and `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    /// Address to listen on, like `127.0.0.1:9901`.
    pub listen: At<String>,
    /// Bearer token; required when `listen` is not a loopback address.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redact"
    )]
    pub token: Option<String>,
}

fn redact<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// `access_log:` — one JSON line per request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSpec {
    /// Whether requests are logged at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `-` (standard output, the default) or a file path to append to.
    #[serde(default = "dash")]
    pub path: String,
}

impl Default for AccessLogSpec {
    fn default() -> Self {
        AccessLogSpec {
            enabled: true,
            path: dash(),
        }
    }
}

fn yes() -> bool {
    true
}

fn dash() -> String {
    "-".to_owned()
}

/// One entry of `listeners:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Unique name, used by routes and metrics.
    pub name: At<String>,
    /// `IP:PORT` to bind.
    pub bind: At<String>,
    /// What is spoken on the socket.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Per-connection and per-request limits.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// `protocol:` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
    #[default]
    Http,
}

/// `limits:` of a listener; the defaults are safe for a public port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSpec {
    /// Most bytes of request head (request line and headers); beyond it: 431.
    pub max_header_size: Size,
    /// Most bytes of request target; beyond it: 414.
    pub max_uri_length: Size,
    /// Time allowed to receive a whole request head (slowloris guard).
    pub header_timeout: Dur,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Dur,
    /// Most open client connections on this listener; more wait in the backlog.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_header_size: Size(64 << 10),
            max_uri_length: Size(8 << 10),
            header_timeout: Dur(std::time::Duration::from_secs(10)),
            idle_timeout: Dur(std::time::Duration::from_secs(60)),
            max_connections: 10_000,
            max_concurrent_streams: 256,
        }
    }
}

/// One entry of `routes:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name, used by metrics, logs and `explain`.
    pub name: At<String>,
    /// Listeners this route attaches to; all http listeners when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listeners: Option<Vec<At<String>>>,
    /// Conditions; a route without `match` matches every request.
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    /// Route plugins, run after global ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<At<PluginSpec>>,
    /// Action: forward to this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<At<String>>,
    /// Action: forward to one of several upstreams by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<At<Vec<SplitSpec>>>,
    /// Action: answer directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    /// Action: answer with a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectSpec>,
    /// Path rewrite before forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteSpec>,
    /// Whole-request timeout (to the response head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// `match:` of a route.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Host names, exact or `*.suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<At<String>>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<At<String>>,
    /// Path prefix, matched on segment boundaries when it ends with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<At<String>>,
    /// Path template like `/users/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<At<String>>,
    /// Path regular expression, anchored at both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<At<String>>,
    /// Methods, like `GET`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<At<String>>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, At<String>>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
}

/// One arm of `split:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Upstream name.
    pub upstream: At<String>,
    /// Relative weight.
    pub weight: u32,
}

/// `respond:` — a fixed answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// Status code.
    #[serde(default = "ok")]
    pub status: At<u16>,
    /// Body text.
    #[serde(default)]
    pub body: String,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, At<String>>,
}

fn ok() -> At<u16> {
    At {
        pos: Default::default(),
        value: 200,
    }
}

/// `redirect:` — an answer with `Location`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// Target; `{path}`, `{query}`, `{uri}` (path and query) and `{host}` are replaced.
    pub to: At<String>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "found")]
    pub status: At<u16>,
}

fn found() -> At<u16> {
    At {
        pos: Default::default(),
        value: 302,
    }
}

/// `rewrite:` — the path the upstream receives.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    /// Removes this prefix from the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<At<String>>,
    /// Replaces the route's `path_prefix` with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix: Option<At<String>>,
    /// Regular expression over the path; with `replace`, `$1`-style groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<At<String>>,
    /// Replacement for `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<String>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// How a target is picked.
    #[serde(default)]
    pub balance: BalanceSpec,
    /// Where requests go.
    pub targets: At<Vec<TargetSpec>>,
    /// Protocol spoken to targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time allowed to establish a TCP connection.
    #[serde(default = "connect_timeout")]
    pub connect_timeout: Dur,
    /// How often DNS names in target addresses are resolved again.
    #[serde(default = "resolve_every")]
    pub resolve_every: Dur,
    /// Keep-alive pool.
    #[serde(default)]
    pub pool: PoolSpec,
}

fn connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn resolve_every() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// `balance:` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSpec {
    /// Smooth weighted round robin, as nginx does it.
    #[default]
    RoundRobin,
    /// Fewest requests in flight, relative to weight.
    LeastRequest,
}

/// `protocol:` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    Http2,
}

/// `pool:` of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSpec {
    /// Most idle connections kept per target and worker.
    pub max_idle: usize,
    /// An idle connection unused for this long is closed.
    pub idle_timeout: Dur,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            max_idle: 128,
            idle_timeout: Dur(std::time::Duration::from_secs(60)),
        }
    }
}

/// One entry of `targets:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `IP:PORT` or `NAME:PORT`.
    pub address: At<String>,
    /// Relative weight.
    #[serde(default = "one")]
    pub weight: At<u32>,
}

fn one() -> At<u32> {
    At {
        pos: Default::default(),
        value: 1,
    }
}

/// One entry of a `plugins:` list: a mapping with one key naming the plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PluginSpec {
    /// Edits request headers before forwarding.
    RequestHeaders(HeaderOpsSpec),
    /// Edits response headers before answering.
    ResponseHeaders(HeaderOpsSpec),
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes; applied remove, set, add.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    /// Headers to replace.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Header names to delete.
    #[serde(default)]
    pub remove: Vec<String>,
}
