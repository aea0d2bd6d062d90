//! The compiled config: immutable tables the request path reads without locks.
//!
//! [`compile()`] turns a [`Spec`] into a [`Snapshot`] or into every
//! diagnostic it finds. A running portico holds one snapshot in an `ArcSwap`; a reload
//! compiles the next one and swaps it in, and each request keeps the snapshot it started with.

pub mod background;
pub mod compile;
pub mod explain;
pub mod shared;
pub mod state;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use regex::Regex;

pub use compile::{compile, load};
pub use shared::{Shared, Started};

use crate::balance::Balancer;
use crate::config::Spec;
use crate::observe::RouteMetrics;
use crate::plugins::PluginChain;
use crate::pool::{PoolSettings, TargetState};
use crate::routing::{HostPattern, RequestView, RouteTable};

/// One compiled config.
#[derive(Debug)]
pub struct Snapshot {
    /// The spec it was compiled from (served, redacted, by `GET /config`).
    pub spec: Spec,
    /// Listeners in file order.
    pub listeners: Vec<Listener>,
    /// Upstreams by name, in file order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Worker threads wanted.
    pub workers: usize,
    /// Admin listener address and token.
    pub admin: Option<(SocketAddr, Option<String>)>,
    /// Certificate and key files in use, watched for changes.
    pub tls_files: Vec<std::path::PathBuf>,
    /// The global plugins alone, for requests that match no route.
    pub global: PluginChain,
    /// What the config does that is likely not meant (a route that can never match).
    pub warnings: Vec<crate::config::Diagnostic>,
    /// Plugin state this compile made; started and kept when the snapshot is started.
    pub fresh: Vec<state::Fresh>,
    /// ACME listeners' state and the settings this config gives them, applied when the
    /// snapshot is started.
    pub acme: Vec<(Arc<crate::tls::acme::AcmeState>, crate::tls::acme::Settings)>,
}

impl Snapshot {
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// A compiled listener: where it binds, its limits, and its routes.
#[derive(Debug)]
pub struct Listener {
    /// Unique name.
    pub name: Arc<str>,
    /// Bind address.
    pub addr: SocketAddr,
    /// Limits for new connections and requests.
    pub limits: Limits,
    /// Routes attached to this listener, indexed like `table`.
    pub routes: Vec<ListenerRoute>,
    /// The route matcher.
    pub table: RouteTable,
    /// TLS for `protocol: https`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `redirect_https`: port and status.
    pub redirect_https: Option<(u16, StatusCode)>,
    /// `Strict-Transport-Security` value for every response.
    pub hsts: Option<http::HeaderValue>,
    /// `tls_passthrough` routing; such a listener serves no HTTP routes.
    pub passthrough: Option<Passthrough>,
}

impl Listener {
    /// The route for a request, if any.
    pub fn find(&self, view: &RequestView<'_>) -> Option<&ListenerRoute> {
        self.table.find(view).map(|i| &self.routes[i])
    }
}

/// A route as attached to one listener, with that listener's metric handles.
#[derive(Debug)]
pub struct ListenerRoute {
    /// The route.
    pub route: Arc<Route>,
    /// Metric handles, one per action arm (one for non-split routes).
    pub metrics: Vec<RouteMetrics>,
}

/// Listener limits, resolved from the spec.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of request head.
    pub max_header_size: usize,
    /// Most bytes of request target.
    pub max_uri_length: usize,
    /// Time to receive a request head.
    pub header_timeout: Duration,
    /// Idle keep-alive time.
    pub idle_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Unique name.
    pub name: Arc<str>,
    /// What is done with a matching request.
    pub action: Action,
    /// Global then route plugins.
    pub plugins: PluginChain,
    /// Path rewrite before forwarding.
    pub rewrite: Option<Rewrite>,
    /// What the upstream is told about `%2F`, `\\` and `;params` in the path.
    pub path_policy: crate::routing::path::PathPolicy,
    /// Time allowed for the upstream to answer with a response head, across every try.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Mirror: the upstream that gets copies, and the share copied (0.0–1.0).
    pub mirror: Option<(Arc<Upstream>, f64)>,
}

/// A route's compiled `retry:`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Most tries in all.
    pub attempts: u32,
    /// Retry when the connection could not be made.
    pub on_connect_failure: bool,
    /// Retry when the connection broke before a response head.
    pub on_reset: bool,
    /// Retry when a try timed out.
    pub on_timeout: bool,
    /// Retry on these response statuses.
    pub on_status: Vec<u16>,
    /// Time allowed per try.
    pub per_try_timeout: Option<Duration>,
    /// Backoff base and cap.
    pub backoff: (Duration, Duration),
    /// Retry budget: percent of requests, and a floor per second.
    pub budget: (u32, u32),
    /// Retry POST and PATCH too.
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// The policy of a route without `retry:`: a try whose connection could not be made goes
    /// to another target once. Nothing was sent, so this is safe for any method.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 2,
        on_connect_failure: true,
        on_reset: false,
        on_timeout: false,
        on_status: Vec::new(),
        per_try_timeout: None,
        backoff: (Duration::ZERO, Duration::ZERO),
        budget: (20, 3),
        non_idempotent: false,
    };

    /// Whether it retries requests that already left (so their head must be kept).
    pub fn after_sending(&self) -> bool {
        self.on_reset || self.on_timeout || !self.on_status.is_empty()
    }
}

/// A route's action.
#[derive(Debug)]
pub enum Action {
    /// Forward to one upstream, or to one of several by weight (`split`).
    Forward {
        /// The upstreams; one unless split.
        arms: Vec<Arc<Upstream>>,
        /// Smooth weighted order over `arms`.
        sequence: Vec<u32>,
        /// Position in `sequence`.
        next: AtomicUsize,
    },
    /// Answer with a fixed response.
    Respond(Respond),
    /// Answer with a redirect.
    Redirect(Redirect),
}

impl Action {
    /// For `Forward`, which arm the next request takes.
    pub fn pick_arm(&self) -> usize {
        match self {
            Action::Forward { sequence, next, .. } if sequence.len() > 1 => {
                sequence[next.fetch_add(1, Ordering::Relaxed) % sequence.len()] as usize
            }
            _ => 0,
        }
    }
}

/// A fixed answer.
#[derive(Debug, Clone)]
pub struct Respond {
    /// Status.
    pub status: StatusCode,
    /// Body.
    pub body: Bytes,
    /// Headers.
    pub headers: HeaderMap,
}

impl Respond {
    /// The answer; without its body for a HEAD request (RFC 9110 §9.3.2). The content type
    /// was settled at compile time.
    pub fn response(&self, head_request: bool) -> http::Response<crate::body::Body> {
        let body = if head_request {
            crate::body::Body::Empty
        } else {
            crate::body::Body::full(self.body.clone())
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// The content type of a fixed body that names none: JSON when it parses as JSON, else text.
pub fn default_content_type(body: &[u8]) -> http::HeaderValue {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        http::HeaderValue::from_static("application/json")
    } else {
        http::HeaderValue::from_static("text/plain; charset=utf-8")
    }
}

/// A redirect answer.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// Status (3xx).
    pub status: StatusCode,
    /// `Location` template, with `{path}`, `{query}`, `{uri}`, `{host}`.
    pub to: String,
}

impl Redirect {
    /// The `Location` for a request.
    pub fn location(&self, host: &str, path: &str, query: Option<&str>) -> String {
        let uri = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        self.to
            .replace("{uri}", &uri)
            .replace("{path}", path)
            .replace("{query}", query.unwrap_or(""))
            .replace("{host}", host)
    }
}

/// Where a `redirect_https` listener sends a request: same host (without its port), path and
/// query, on https at `port` (left out when it is 443).
pub fn https_location(port: u16, host: &str, path: &str, query: Option<&str>) -> String {
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    match query {
        Some(q) => format!("https://{host}{port}{path}?{q}"),
        None => format!("https://{host}{port}{path}"),
    }
}

/// How the path is rewritten before forwarding.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Remove this prefix (segment-aware; stored without trailing `/`).
    StripPrefix(String),
    /// Replace the route's prefix `from` with `to`.
    ReplacePrefix {
        /// The route's `path_prefix`, without trailing `/`.
        from: String,
        /// The replacement.
        to: String,
    },
    /// Regex replacement over the path.
    Regex {
        /// The pattern.
        regex: Regex,
        /// The replacement, with `$1`-style groups.
        replace: String,
    },
}

impl Rewrite {
    /// The rewritten path; always starts with `/`.
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let out: Cow<'a, str> = match self {
            Rewrite::StripPrefix(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => Cow::Borrowed(rest),
                _ => Cow::Borrowed(path),
            },
            Rewrite::ReplacePrefix { from, to } => match path.strip_prefix(from.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') || from.is_empty() => {
                    let to = if rest.starts_with('/') {
                        to.trim_end_matches('/')
                    } else {
                        to.as_str()
                    };
                    Cow::Owned(format!("{to}{rest}"))
                }
                _ => Cow::Borrowed(path),
            },
            Rewrite::Regex { regex, replace } => regex.replace(path, replace.as_str()),
        };
        if out.starts_with('/') {
            out
        } else {
            Cow::Owned(format!("/{out}"))
        }
    }
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Unique name.
    pub name: Arc<str>,
    /// Target picker.
    pub balancer: Balancer,
    /// Targets, indexed like the balancer's.
    pub targets: Vec<Arc<TargetState>>,
    /// Speak HTTP/2 (prior knowledge) to targets.
    pub http2: bool,
    /// Pool and connect settings.
    pub pool: PoolSettings,
    /// DNS re-resolution interval.
    pub resolve_every: Duration,
    /// Live state shared across reloads (in-flight count, retry budget).
    pub state: Arc<crate::pool::UpstreamState>,
    /// Outlier detection, if configured.
    pub passive: Option<crate::health::PassivePolicy>,
    /// Active checks, if configured.
    pub active: Option<crate::health::active::ActiveCheck>,
    /// Sticky sessions: cookie name and lifetime.
    pub sticky: Option<(String, Duration)>,
    /// Circuit breaker: most requests in flight.
    pub max_requests: Option<usize>,
    /// Circuit breaker: most open connections.
    pub max_connections: Option<usize>,
    /// Circuit breaker: most requests waiting for a connection.
    pub max_pending: Option<usize>,
    /// TLS towards the targets.
    pub tls: Option<crate::tls::UpstreamTls>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites() {
        let strip = Rewrite::StripPrefix("/users".into());
        assert_eq!(strip.apply("/users/42"), "/42");
        assert_eq!(strip.apply("/users"), "/");
        assert_eq!(strip.apply("/usersx"), "/usersx");
        let replace = Rewrite::ReplacePrefix {
            from: "/v1".into(),
            to: "/api/v2/".into(),
        };
        assert_eq!(replace.apply("/v1/items"), "/api/v2/items");
        assert_eq!(replace.apply("/v1"), "/api/v2/");
        let regex = Rewrite::Regex {
            regex: Regex::new("^/old/(.*)$").unwrap(),
            replace: "/new/$1".into(),
        };
        assert_eq!(regex.apply("/old/a/b"), "/new/a/b");
        assert_eq!(regex.apply("/other"), "/other");
    }

    #[test]
    fn redirect_location() {
        let r = Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            to: "https://{host}{uri}".into(),
        };
        assert_eq!(
            r.location("a.com", "/x", Some("q=1")),
            "https://a.com/x?q=1"
        );
        assert_eq!(r.location("a.com", "/x", None), "https://a.com/x");
    }
}

/// A compiled passthrough listener's routing.
#[derive(Debug)]
pub struct Passthrough {
    /// SNI patterns in precedence order (exact names before wildcards, longer wildcards first).
    pub routes: Vec<(HostPattern, Arc<Upstream>)>,
    /// Where connections without a matching SNI go; closed when absent.
    pub default: Option<Arc<Upstream>>,
}

impl Passthrough {
    /// The upstream for a server name.
    pub fn route(&self, server_name: Option<&str>) -> Option<&Arc<Upstream>> {
        let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        name.as_deref()
            .and_then(|n| {
                self.routes
                    .iter()
                    .find(|(p, _)| p.matches(n))
                    .map(|(_, u)| u)
            })
            .or(self.default.as_ref())
    }
}
