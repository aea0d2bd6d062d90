//! The compiled config: immutable tables the request path reads without locks.
//!
//! [`compile()`] turns a [`Spec`] into a [`Snapshot`] or into every
//! diagnostic it finds. A running portico holds one snapshot in an `ArcSwap`; a reload
//! compiles the next one and swaps it in, and each request keeps the snapshot it started with.

pub(crate) mod aggregate;
pub(crate) mod client_addr;
pub(crate) mod compile;
pub(crate) mod explain;
pub(crate) mod history;
pub(crate) mod shared;
pub(crate) mod static_files;
pub(crate) mod writes;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use regex::Regex;

pub(crate) use compile::{compile, load};
pub(crate) use shared::{Shared, Started};

use crate::balance::Balancer;
use crate::config::Spec;
use crate::observe::RouteMetrics;
use crate::plugins::PluginChain;
use crate::pool::{PoolSettings, TargetState};
use crate::routing::{HostPattern, RequestView, RouteTable};

/// One compiled config.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// The spec it was compiled from (served, redacted, by `GET /config`).
    pub(crate) spec: Spec,
    /// The spec's content hash (see [`history::config_hash`]).
    pub(crate) hash: Arc<str>,
    /// Listeners in file order.
    pub(crate) listeners: Vec<Listener>,
    /// Upstreams by name, in file order.
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    /// Worker threads wanted.
    pub(crate) workers: usize,
    /// Admin listener address and token.
    pub(crate) admin: Option<(SocketAddr, Option<String>)>,
    /// Where and how spans are exported, when tracing is configured.
    pub(crate) tracing: Option<crate::trace::Settings>,
    /// The debug header, when configured.
    pub(crate) debug: Option<DebugHeader>,
    /// The upgrade socket's path (`upgrade.socket`), resolved against the config's folder.
    pub(crate) upgrade: Option<std::path::PathBuf>,
    /// Certificate and key files in use, watched for changes.
    pub(crate) tls_files: Vec<std::path::PathBuf>,
    /// The global plugins alone, for requests that match no route.
    pub(crate) global: PluginChain,
    /// What the config does that is likely not meant (a route that can never match).
    pub(crate) warnings: Vec<crate::config::Diagnostic>,
    /// Plugin state this compile made; started and kept when the snapshot is started.
    pub(crate) fresh: Vec<crate::plugins::state::Fresh>,
    /// ACME listeners' state and the settings this config gives them, applied when the
    /// snapshot is started.
    pub(crate) acme: Vec<(Arc<crate::tls::acme::AcmeState>, crate::tls::acme::Settings)>,
}

/// `debug:` compiled: the header that carries the token and takes the summary.
#[derive(Debug)]
pub(crate) struct DebugHeader {
    /// Request and response header name.
    pub(crate) name: http::HeaderName,
    /// The token a request must carry.
    pub(crate) token: Box<[u8]>,
}

impl DebugHeader {
    /// Whether `headers` carry the token (compared in constant time).
    pub(crate) fn asked(&self, headers: &http::HeaderMap) -> bool {
        headers.get(&self.name).is_some_and(|given| {
            crate::plugins::auth::constant_time_eq(given.as_bytes(), &self.token)
        })
    }
}

impl Snapshot {
    /// The listener named `name`.
    pub(crate) fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// The listener named `name`, or, when a reload renamed it, the TCP listener bound where
    /// the connection was made (`local`): a connection accepted under the old name is the
    /// new name's.
    pub(crate) fn listener_at(&self, name: &str, local: std::net::SocketAddr) -> Option<&Listener> {
        self.listener(name).or_else(|| {
            self.listeners.iter().find(|l| {
                l.udp.is_none()
                    && l.addr.port() == local.port()
                    && (l.addr.ip() == local.ip() || l.addr.ip().is_unspecified())
            })
        })
    }

    /// The upstream named `name`.
    pub(crate) fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// A compiled listener: where it binds, its limits, and its routes.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Unique name.
    pub(crate) name: Arc<str>,
    /// Bind address.
    pub(crate) addr: SocketAddr,
    /// Limits for new connections and requests.
    pub(crate) limits: Limits,
    /// `overload`: load shedding.
    pub(crate) overload: Option<crate::admission::Overload>,
    /// Routes attached to this listener, indexed like `table`.
    pub(crate) routes: Vec<ListenerRoute>,
    /// The route matcher.
    pub(crate) table: RouteTable,
    /// TLS for `protocol: https`.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// `redirect_https`: port and status.
    pub(crate) redirect_https: Option<(u16, StatusCode)>,
    /// `Strict-Transport-Security` value for every response.
    pub(crate) hsts: Option<http::HeaderValue>,
    /// `tls_passthrough` routing; such a listener serves no HTTP routes.
    pub(crate) passthrough: Option<Passthrough>,
    /// `tcp` and `tls` listeners: where connections are relayed; no HTTP routes either.
    pub(crate) stream: Option<Stream>,
    /// `proxy_protocol`: read a PROXY header from trusted sources first.
    pub(crate) proxy_protocol: Option<Arc<ProxyAccept>>,
    /// `trusted_proxies` (the listener's, else the top level's); `None` when neither is set.
    pub(crate) trusted_proxies: Option<Arc<client_addr::TrustedProxies>>,
    /// `protocol: udp`: where flows go; such a listener serves no HTTP routes.
    pub(crate) udp: Option<UdpListener>,
}

/// A compiled `protocol: udp` listener.
#[derive(Debug)]
pub(crate) struct UdpListener {
    /// Where flows go.
    pub(crate) upstream: Arc<Upstream>,
    /// A session idle this long ends.
    pub(crate) session_timeout: Duration,
    /// Most sessions open at once on the listener.
    pub(crate) max_sessions: usize,
    /// A session ends after this many datagrams from the upstream.
    pub(crate) responses: Option<u32>,
}

/// A listener's `proxy_protocol`, compiled.
#[derive(Debug)]
pub(crate) struct ProxyAccept {
    /// Sources whose header is believed.
    pub(crate) trusted: Vec<crate::plugins::ip_restriction::Cidr>,
    /// A trusted source may connect without a header.
    pub(crate) optional: bool,
    /// Time allowed for the header.
    pub(crate) timeout: Duration,
}

impl ProxyAccept {
    /// Whether a header from `peer` is believed.
    pub(crate) fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(peer))
    }
}

impl Listener {
    /// The route for a request, if any.
    pub(crate) fn find(&self, view: &RequestView<'_>) -> Option<&ListenerRoute> {
        self.table.find(view).map(|i| &self.routes[i])
    }
}

/// A route as attached to one listener, with that listener's metric handles.
#[derive(Debug)]
pub(crate) struct ListenerRoute {
    /// The route.
    pub(crate) route: Arc<Route>,
    /// Metric handles, one per action arm (one for non-split routes).
    pub(crate) metrics: Vec<RouteMetrics>,
}

/// Listener limits, resolved from the spec.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most bytes of request head.
    pub(crate) max_header_size: usize,
    /// Most bytes of request target.
    pub(crate) max_uri_length: usize,
    /// Time to receive a request head.
    pub(crate) header_timeout: Duration,
    /// Idle keep-alive time.
    pub(crate) idle_timeout: Duration,
    /// Most open connections.
    pub(crate) max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub(crate) max_concurrent_streams: u32,
    /// Longest a client may leave a response's bytes unaccepted.
    pub(crate) send_timeout: Duration,
    /// Most response bytes held for one HTTP/1.1 connection or HTTP/2 stream.
    pub(crate) send_buffer: usize,
    /// Per-client-address limits; `None` (one branch) when the listener sets none.
    pub(crate) per_ip: Option<crate::admission::PerIp>,
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    /// Unique name.
    pub(crate) name: Arc<str>,
    /// What is done with a matching request.
    pub(crate) action: Action,
    /// Global, route and consumer-scoped plugins, merged by precedence.
    pub(crate) plugins: PluginChain,
    /// Path rewrite before forwarding.
    pub(crate) rewrite: Option<Rewrite>,
    /// What the upstream is told about `%2F`, `\\` and `;params` in the path.
    pub(crate) path_policy: crate::routing::path::PathPolicy,
    /// Time allowed for the upstream to answer with a response head, across every try.
    pub(crate) timeout: Option<Duration>,
    /// Retries.
    pub(crate) retry: Option<RetryPolicy>,
    /// Mirror: the upstream that gets copies, and the share copied (0.0–1.0).
    pub(crate) mirror: Option<(Arc<Upstream>, f64)>,
    /// Limits on tunnels and streaming response bodies.
    pub(crate) stream: StreamLimits,
}

pub(crate) use crate::ctx::StreamLimits;

/// A route's compiled `retry:`.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Most tries in all.
    pub(crate) attempts: u32,
    /// Retry when the connection could not be made.
    pub(crate) on_connect_failure: bool,
    /// Retry when the connection broke before a response head.
    pub(crate) on_reset: bool,
    /// Retry when a try timed out.
    pub(crate) on_timeout: bool,
    /// Retry on these response statuses.
    pub(crate) on_status: Vec<u16>,
    /// Time allowed per try.
    pub(crate) per_try_timeout: Option<Duration>,
    /// Backoff base and cap.
    pub(crate) backoff: (Duration, Duration),
    /// Retry budget: percent of requests, and a floor per second.
    pub(crate) budget: (u32, u32),
    /// Retry POST and PATCH too.
    pub(crate) non_idempotent: bool,
}

impl RetryPolicy {
    /// The policy of a route without `retry:`: a try whose connection could not be made goes
    /// to another target once. Nothing was sent, so this is safe for any method.
    pub(crate) const DEFAULT: RetryPolicy = RetryPolicy {
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
    pub(crate) fn after_sending(&self) -> bool {
        self.on_reset || self.on_timeout || !self.on_status.is_empty()
    }
}

/// A route's action.
#[derive(Debug)]
pub(crate) enum Action {
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
    /// Call several upstreams and answer their merged JSON.
    Aggregate(Box<aggregate::Aggregate>),
    /// Answer with files under a folder.
    Static(Arc<static_files::StaticSite>),
}

impl Action {
    /// For `Forward`, which arm the next request takes.
    pub(crate) fn pick_arm(&self) -> usize {
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
pub(crate) struct Respond {
    /// Status.
    pub(crate) status: StatusCode,
    /// Body.
    pub(crate) body: Bytes,
    /// Headers.
    pub(crate) headers: HeaderMap,
}

impl Respond {
    /// The answer; without its body for a HEAD request (RFC 9110 §9.3.2). The content type
    /// was settled at compile time.
    pub(crate) fn response(&self, head_request: bool) -> http::Response<crate::body::Body> {
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

/// A redirect answer.
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    /// Status (3xx).
    pub(crate) status: StatusCode,
    /// `Location` template, with `{path}`, `{query}`, `{uri}`, `{host}`.
    pub(crate) to: String,
}

impl Redirect {
    /// The `Location` for a request.
    pub(crate) fn location(&self, host: &str, path: &str, query: Option<&str>) -> String {
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
pub(crate) fn https_location(port: u16, host: &str, path: &str, query: Option<&str>) -> String {
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
pub(crate) enum Rewrite {
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
    pub(crate) fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
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
pub(crate) struct Upstream {
    /// Unique name.
    pub(crate) name: Arc<str>,
    /// Target picker.
    pub(crate) balancer: Balancer,
    /// Targets, indexed like the balancer's.
    pub(crate) targets: Vec<Arc<TargetState>>,
    /// Speak HTTP/2 (prior knowledge) to targets.
    pub(crate) http2: bool,
    /// Pool and connect settings.
    pub(crate) pool: PoolSettings,
    /// DNS re-resolution interval.
    pub(crate) resolve_every: Duration,
    /// Live state shared across reloads (in-flight count, retry budget).
    pub(crate) state: Arc<crate::pool::UpstreamState>,
    /// Outlier detection, if configured.
    pub(crate) passive: Option<crate::health::PassivePolicy>,
    /// Active checks, if configured.
    pub(crate) active: Option<crate::pool::check::ActiveCheck>,
    /// Sticky sessions: cookie name and lifetime.
    pub(crate) sticky: Option<(String, Duration)>,
    /// Circuit breaker: most requests in flight.
    pub(crate) max_requests: Option<usize>,
    /// Circuit breaker: most open connections.
    pub(crate) max_connections: Option<usize>,
    /// Circuit breaker: most requests waiting for a connection.
    pub(crate) max_pending: Option<usize>,
    /// Circuit breaker: most relayed (layer 4) connections open to one target.
    pub(crate) max_connections_per_target: Option<usize>,
    /// TLS towards the targets.
    pub(crate) tls: Option<crate::tls::UpstreamTls>,
    /// The PROXY protocol header sent first on every new connection, if any.
    pub(crate) proxy_protocol: Option<crate::proxy_protocol::Version>,
}

impl Upstream {
    /// Feeds passive outlier detection with what `target` just did, ejecting it when
    /// `policy` says so — never more than `max_ejected_percent` of the targets at once.
    pub(crate) fn record_outcome(
        &self,
        target: &crate::pool::TargetState,
        policy: &crate::health::PassivePolicy,
        outcome: crate::health::Outcome,
    ) {
        let may_eject = || {
            let now = crate::health::now_ms();
            let ejected = self
                .targets
                .iter()
                .filter(|t| t.health.ejected(now))
                .count();
            (ejected + 1) * 100 <= self.targets.len() * policy.max_ejected_percent as usize
        };
        if target.health.record(outcome, policy, may_eject) {
            tracing::warn!(
                upstream = %self.name,
                target = %target.address,
                for_ms = target.health.ejected_for_ms(),
                "target ejected after failures"
            );
        }
    }
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

/// What a `tcp` or `tls` listener relays its connections to.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The upstream whose targets take the connections.
    pub(crate) upstream: Arc<Upstream>,
    /// TLS towards the targets: the upstream's `tls`, without ALPN.
    pub(crate) tls: Option<crate::tls::UpstreamTls>,
}

/// A compiled passthrough listener's routing.
#[derive(Debug)]
pub(crate) struct Passthrough {
    /// SNI patterns in precedence order (exact names before wildcards, longer wildcards first).
    pub(crate) routes: Vec<(HostPattern, Arc<Upstream>)>,
    /// Where connections without a matching SNI go; closed when absent.
    pub(crate) default: Option<Arc<Upstream>>,
}

impl Passthrough {
    /// The upstream for a server name.
    pub(crate) fn route(&self, server_name: Option<&str>) -> Option<&Arc<Upstream>> {
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
