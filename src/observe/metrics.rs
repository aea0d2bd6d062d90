//! Prometheus metrics. Families live for the life of the process; compiled routes hold
//! handles resolved on first use, so the request path is an atomic add, not a label lookup,
//! and compiling a config (even one a reload then refuses) adds no series.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::sharded;

/// Labels of `portico_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// Route name; empty when no route matched.
    pub(crate) route: String,
    /// Upstream name; empty when the route answered itself.
    pub(crate) upstream: String,
    /// Response status.
    pub(crate) status: u16,
}

/// Labels of `portico_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DurationLabels {
    /// Route name.
    pub(crate) route: String,
    /// Upstream name.
    pub(crate) upstream: String,
}

/// Labels keyed by listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    /// Listener name.
    pub(crate) listener: String,
}

/// Labels keyed by upstream and target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabels {
    /// Upstream name.
    pub(crate) upstream: String,
    /// Target address as configured.
    pub(crate) target: String,
}

/// Labels keyed by route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    /// Route name.
    pub(crate) route: String,
}

/// Labels of `portico_tunnel_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TunnelBytesLabels {
    /// Route name.
    pub(crate) route: String,
    /// `to_upstream` or `to_client`.
    pub(crate) direction: &'static str,
}

/// The metric handles of one tunnel, resolved when it opens.
#[derive(Debug, Clone)]
pub(crate) struct TunnelMetrics {
    /// `portico_tunnels_active{route}`.
    pub(crate) active: Gauge,
    /// `portico_tunnel_bytes_total{route,direction="to_upstream"}`.
    pub(crate) to_upstream: Counter,
    /// `portico_tunnel_bytes_total{route,direction="to_client"}`.
    pub(crate) to_client: Counter,
}

/// Labels of `portico_config_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    /// `success` or `failure`.
    pub(crate) result: String,
}

/// Labels of `portico_config_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HashLabels {
    /// The config's content hash.
    pub(crate) hash: String,
}

/// Labels of `portico_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    /// Route name.
    pub(crate) route: String,
    /// `hit`, `miss`, `stale`, `revalidated` or `bypass`.
    pub(crate) result: &'static str,
}

/// Labels of `portico_cluster_limit_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    /// `redis`, or the fallback that decided: `local`, `open`, `closed`.
    pub(crate) by: &'static str,
}

/// Labels of `portico_tls_handshakes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `ok`, `failed` or `timeout`.
    pub(crate) result: &'static str,
}

/// Labels of `portico_plugin_answers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginAnswerLabels {
    /// Route name; empty for a request no route took (global plugins).
    pub(crate) route: String,
    /// The plugin's name (`key_auth`, `rate_limit`, ...).
    pub(crate) plugin: &'static str,
    /// The status it answered with.
    pub(crate) status: u16,
}

/// Labels of `portico_upstream_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetOutcomeLabels {
    /// Upstream name.
    pub(crate) upstream: String,
    /// Target address as configured.
    pub(crate) target: String,
    /// `1xx` .. `5xx`, `connect_failure`, `timeout` or `failed`.
    pub(crate) outcome: &'static str,
}

/// Labels of `portico_upstream_connections`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabels {
    /// Upstream name.
    pub(crate) upstream: String,
    /// Target address as configured.
    pub(crate) target: String,
    /// `open` (all connections) or `idle` (pooled, waiting for a request).
    pub(crate) state: &'static str,
}

/// What a scrape reads of one upstream target.
#[derive(Debug)]
pub(crate) struct TargetReading<'a> {
    /// Upstream name.
    pub(crate) upstream: &'a str,
    /// Target address as configured.
    pub(crate) target: &'a str,
    /// Takes traffic.
    pub(crate) healthy: bool,
    /// Tries by outcome label, cumulative.
    pub(crate) outcomes: [(&'static str, u64); 8],
    /// Open connections.
    pub(crate) open: usize,
    /// Idle pooled connections.
    pub(crate) idle: usize,
    /// Requests in flight.
    pub(crate) in_flight: usize,
}

type HistogramFamily<L> = Family<L, sharded::DurationHistogram, fn() -> sharded::DurationHistogram>;

/// Upper bounds of `portico_request_duration_seconds`, in seconds: from 100 µs (a proxied
/// request on loopback takes tens of µs of portico's time) to 30 s, in 1-2.5-5 steps, so that
/// dashboards read round numbers.
pub(crate) const DURATION_BUCKETS: [f64; 17] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn duration_histogram() -> sharded::DurationHistogram {
    sharded::DurationHistogram::new(DURATION_BUCKETS)
}

/// Every metric portico exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    access_log_dropped: Counter,
    trace_spans_dropped: Counter,
    cluster_decisions: Family<DecisionLabels, Counter>,
    etcd_connected: Gauge,
    etcd_revision: Gauge,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    plugin_answers: Family<PluginAnswerLabels, Counter>,
    upstream_requests: Family<TargetOutcomeLabels, Counter>,
    upstream_connections: Family<PoolLabels, Gauge>,
    upstream_in_flight: Family<TargetLabels, Gauge>,
    /// One scrape at a time brings the upstream counters up to date.
    scrape: std::sync::Mutex<()>,
    registry: Registry,
    // The request path's series are written per worker (see `sharded`).
    requests: Family<RequestLabels, sharded::Counter>,
    durations: HistogramFamily<DurationLabels>,
    connections: Family<ListenerLabels, sharded::Gauge>,
    reloads: Family<ResultLabels, Counter>,
    config_info: Family<HashLabels, Gauge>,
    healthy: Family<TargetLabels, Gauge>,
    rate_limited: Family<RouteLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
    background_tasks: Gauge,
    /// Relayed (layer 4) connections and bytes.
    pub(crate) l4: super::l4::L4Metrics,
    proxy_refused: Family<RefusedLabels, Counter>,
    udp: super::udp::UdpMetrics,
    tunnels: Family<RouteLabels, Gauge>,
    tunnel_bytes: Family<TunnelBytesLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    cache_bytes: Gauge,
    oidc: Family<OidcLabels, Counter>,
    admission: super::admission::AdmissionMetrics,
}

/// Labels of `portico_oidc_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OidcLabels {
    /// `login`, `refresh` or `logout`.
    pub(crate) event: &'static str,
    /// `success` or why not (`invalid_state`, `replayed`, `id_token_invalid`...).
    pub(crate) result: &'static str,
}

/// Labels of `portico_proxy_protocol_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `untrusted`, `missing`, `invalid` or `timeout`.
    pub(crate) reason: &'static str,
}

/// Labels of `portico_grpc_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    /// The route's name (`""` when none matched).
    pub(crate) route: String,
    /// The upstream's name (`""` for portico's own answers without one).
    pub(crate) upstream: String,
    /// The call's `grpc-status` (`""` when the call ended without one).
    pub(crate) grpc_status: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("portico");
        let requests = Family::<RequestLabels, sharded::Counter>::default();
        let durations: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(duration_histogram as fn() -> sharded::DurationHistogram);
        let connections = Family::<ListenerLabels, sharded::Gauge>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            durations.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        let config_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "config_info",
            "1, labelled with the content hash of the config in force",
            config_info.clone(),
        );
        let healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "upstream_target_healthy",
            "1 when the target takes traffic (active checks up, not ejected)",
            healthy.clone(),
        );

        let rate_limited = Family::<RouteLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by rate_limit or quota",
            rate_limited.clone(),
        );
        let grpc = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_responses",
            "gRPC calls ended, by grpc-status",
            grpc.clone(),
        );
        let etcd_connected = Gauge::default();
        registry.register(
            "cluster_etcd_connected",
            "1 while the last call to the cluster's etcd succeeded (cluster.etcd), else 0",
            etcd_connected.clone(),
        );
        let etcd_revision = Gauge::default();
        registry.register(
            "cluster_config_revision",
            "The etcd revision of the shared config in force (0: none from etcd)",
            etcd_revision.clone(),
        );
        let background_tasks = Gauge::default();
        registry.register(
            "background_tasks",
            "Live background tasks (JWKS refreshers, active health checks, ACME renewals)",
            background_tasks.clone(),
        );
        let l4 = super::l4::L4Metrics::register(&mut registry);
        let proxy_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "proxy_protocol_refused",
            "Connections closed by a listener's proxy_protocol, by reason",
            proxy_refused.clone(),
        );
        let udp = super::udp::UdpMetrics::register(&mut registry);
        let tunnels = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "tunnels_active",
            "Open upgraded tunnels (WebSocket and other Upgrade protocols)",
            tunnels.clone(),
        );
        let tunnel_bytes = Family::<TunnelBytesLabels, Counter>::default();
        registry.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels, by direction",
            tunnel_bytes.clone(),
        );
        let oidc = Family::<OidcLabels, Counter>::default();
        registry.register(
            "oidc_events",
            "oidc logins, refreshes and logouts, by result",
            oidc.clone(),
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests on routes with a cache, by what the cache did",
            cache_requests.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_stored_bytes",
            "Bytes held by the cache stores",
            cache_bytes.clone(),
        );
        let admission = super::admission::AdmissionMetrics::register(&mut registry);
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was 64k lines behind",
            access_log_dropped.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the trace exporter was 4096 requests behind",
            trace_spans_dropped.clone(),
        );
        let cluster_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "cluster_limit_decisions",
            "rate_limit decisions of scope cluster, by what decided: redis, or the fallback",
            cluster_decisions.clone(),
        );
        let tls_handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on https and tls listeners, by result",
            tls_handshakes.clone(),
        );
        let plugin_answers = Family::<PluginAnswerLabels, Counter>::default();
        registry.register(
            "plugin_answers",
            "Requests a plugin answered or refused itself (auth, limits, respond), by status",
            plugin_answers.clone(),
        );
        let upstream_requests = Family::<TargetOutcomeLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Tries sent to upstream targets (retries included), by outcome",
            upstream_requests.clone(),
        );
        let upstream_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "upstream_connections",
            "Connections to upstream targets: open, and idle in the pool",
            upstream_connections.clone(),
        );
        let upstream_in_flight = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "upstream_in_flight",
            "Requests in flight to a target",
            upstream_in_flight.clone(),
        );
        Metrics {
            access_log_dropped,
            trace_spans_dropped,
            cluster_decisions,
            etcd_connected,
            etcd_revision,
            tls_handshakes,
            plugin_answers,
            upstream_requests,
            upstream_connections,
            upstream_in_flight,
            scrape: std::sync::Mutex::new(()),
            admission,
            oidc,
            cache_requests,
            cache_bytes,
            tunnels,
            tunnel_bytes,
            udp,
            l4,
            proxy_refused,
            background_tasks,
            rate_limited,
            grpc,
            registry,
            requests,
            durations,
            connections,
            reloads,
            config_info,
            healthy,
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Handles for one route on one listener towards one upstream (`""` for none).
    pub(crate) fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        let labels = Arc::new(RequestLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            status: 0,
        });
        RouteMetrics {
            labels,
            fast: Arc::new(Default::default()),
            duration: Arc::new(OnceLock::new()),
            durations: self.durations.clone(),
            requests: self.requests.clone(),
        }
    }

    /// `portico_grpc_responses_total`.
    pub(crate) fn grpc_family(&self) -> Family<GrpcLabels, Counter> {
        self.grpc.clone()
    }

    /// `portico_cache_requests_total`.
    pub(crate) fn cache_requests(&self) -> Family<CacheLabels, Counter> {
        self.cache_requests.clone()
    }

    /// `portico_cache_stored_bytes`.
    pub(crate) fn cache_bytes(&self) -> &Gauge {
        &self.cache_bytes
    }

    /// The families of udp listeners.
    pub(crate) fn udp(&self) -> &super::udp::UdpMetrics {
        &self.udp
    }

    /// What the node knows of the cluster's etcd, set at scrape.
    pub(crate) fn cluster(&self, connected: bool, revision: i64) {
        self.etcd_connected.set(i64::from(connected));
        self.etcd_revision.set(revision);
    }

    /// The live background task gauge, which [`crate::background::spawn`] moves.
    pub(crate) fn background_tasks(&self) -> &Gauge {
        &self.background_tasks
    }

    /// Counts a request that no route took.
    pub(crate) fn unrouted(&self, listener: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.to_owned(),
                route: String::new(),
                upstream: String::new(),
                status,
            })
            .inc();
    }

    /// Counts a connection closed by a listener's `proxy_protocol`.
    pub(crate) fn proxy_refused(&self, listener: &str, reason: &'static str) {
        self.proxy_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// The open-connections gauge of a listener.
    pub(crate) fn connections(&self, listener: &str) -> sharded::Gauge {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// Open client connections on a listener now (0 before its first), read without making
    /// the series.
    pub(crate) fn open_connections(&self, listener: &str) -> i64 {
        self.connections
            .get(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .map_or(0, |g| g.get())
    }

    /// Brings the series of the targets read up to date, for the exposition that follows.
    pub(crate) fn scrape_targets<'a>(&self, readings: impl IntoIterator<Item = TargetReading<'a>>) {
        let _one = self.scrape.lock();
        for t in readings {
            let target = TargetLabels {
                upstream: t.upstream.to_owned(),
                target: t.target.to_owned(),
            };
            self.healthy
                .get_or_create(&target)
                .set(i64::from(t.healthy));
            self.upstream_in_flight
                .get_or_create(&target)
                .set(t.in_flight as i64);
            for (state, n) in [("open", t.open), ("idle", t.idle)] {
                self.upstream_connections
                    .get_or_create(&PoolLabels {
                        upstream: target.upstream.clone(),
                        target: target.target.clone(),
                        state,
                    })
                    .set(n as i64);
            }
            // Series appear with the first try of their outcome; a target the config made
            // anew counts from zero, which a series already past that waits for.
            for (outcome, count) in t.outcomes {
                if count == 0 {
                    continue;
                }
                let series = self.upstream_requests.get_or_create(&TargetOutcomeLabels {
                    upstream: target.upstream.clone(),
                    target: target.target.clone(),
                    outcome,
                });
                let shown = series.get();
                if count > shown {
                    series.inc_by(count - shown);
                }
            }
        }
    }

    /// The counter of access log lines dropped.
    pub(crate) fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// `portico_cluster_limit_decisions_total`.
    pub(crate) fn cluster_decisions(&self) -> Family<DecisionLabels, Counter> {
        self.cluster_decisions.clone()
    }

    /// The counter of spans dropped.
    pub(crate) fn trace_spans_dropped(&self) -> Counter {
        self.trace_spans_dropped.clone()
    }

    /// Counts a TLS handshake on `listener`: `ok`, `failed` or `timeout`.
    pub(crate) fn tls_handshake(&self, listener: &str, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a request that `plugin`'s request step answered with `status`.
    pub(crate) fn plugin_answer(&self, route: &str, plugin: &'static str, status: u16) {
        self.plugin_answers
            .get_or_create(&PluginAnswerLabels {
                route: route.to_owned(),
                plugin,
                status,
            })
            .inc();
    }

    /// The admission series of one listener (per-address limits and overload).
    pub(crate) fn admission(&self, listener: &str) -> super::admission::ListenerAdmissionMetrics {
        self.admission.listener(listener)
    }

    /// The `portico_oidc_events_total` family.
    pub(crate) fn oidc_family(&self) -> Family<OidcLabels, Counter> {
        self.oidc.clone()
    }

    /// The `portico_rate_limited_total` family.
    pub(crate) fn rate_limited_family(&self) -> Family<RouteLabels, Counter> {
        self.rate_limited.clone()
    }

    /// The handles of a tunnel on `route`.
    pub(crate) fn tunnel(&self, route: &str) -> TunnelMetrics {
        let bytes = |direction| {
            self.tunnel_bytes
                .get_or_create(&TunnelBytesLabels {
                    route: route.to_owned(),
                    direction,
                })
                .clone()
        };
        TunnelMetrics {
            active: self
                .tunnels
                .get_or_create(&RouteLabels {
                    route: route.to_owned(),
                })
                .clone(),
            to_upstream: bytes("to_upstream"),
            to_client: bytes("to_client"),
        }
    }

    /// The config in force is the one with `hash`: the info series carries it alone.
    pub(crate) fn config_hash(&self, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&HashLabels {
                hash: hash.to_owned(),
            })
            .set(1);
    }

    /// Counts a reload attempt.
    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}

const FAST_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

/// Pre-resolved metric handles for one route.
#[derive(Debug, Clone)]
pub(crate) struct RouteMetrics {
    labels: Arc<RequestLabels>,
    /// Counters for common statuses, created on first use so unused series stay absent.
    fast: Arc<[OnceLock<sharded::Counter>; FAST_STATUSES.len()]>,
    /// The duration series, created on first use like the counters.
    duration: Arc<OnceLock<sharded::DurationHistogram>>,
    durations: HistogramFamily<DurationLabels>,
    requests: Family<RequestLabels, sharded::Counter>,
}

impl RouteMetrics {
    /// Records one answered request.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        match FAST_STATUSES.iter().position(|&s| s == status) {
            Some(i) => {
                self.fast[i].get_or_init(|| self.counter(status)).inc();
            }
            None => {
                self.counter(status).inc();
            }
        }
        self.duration
            .get_or_init(|| {
                self.durations
                    .get_or_create(&DurationLabels {
                        route: self.labels.route.clone(),
                        upstream: self.labels.upstream.clone(),
                    })
                    .clone()
            })
            .observe(elapsed);
    }

    /// The upstream's name (`""` when the route answers itself).
    pub(crate) fn upstream_name(&self) -> &str {
        &self.labels.upstream
    }

    /// Answers with a 5xx status so far on this listener, route and upstream (read for the
    /// admin dashboard; the request path is untouched).
    pub(crate) fn errors(&self) -> u64 {
        let mut labels = (*self.labels).clone();
        (500..600)
            .map(|status| {
                labels.status = status;
                self.requests.get(&labels).map_or(0, |c| c.get())
            })
            .fold(0, u64::wrapping_add)
    }

    /// The duration histogram of this route and upstream so far, `None` before a first
    /// answer. It is shared by every listener the route is on (its labels have no listener),
    /// and its count is that of answers: every answer is observed.
    pub(crate) fn durations(&self) -> Option<sharded::HistogramReading> {
        self.durations
            .get(&DurationLabels {
                route: self.labels.route.clone(),
                upstream: self.labels.upstream.clone(),
            })
            .map(|h| h.read())
    }

    fn counter(&self, status: u16) -> sharded::Counter {
        let mut labels = (*self.labels).clone();
        labels.status = status;
        self.requests.get_or_create(&labels).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_readings_follow_what_was_recorded() {
        let metrics = Metrics::new();
        let web = metrics.route("web", "api", "app");
        assert_eq!(web.errors(), 0);
        assert!(web.durations().is_none());
        let ms = Duration::from_millis;
        for status in [200, 503, 599, 404, 418] {
            web.record(status, ms(2));
        }
        let internal = metrics.route("internal", "api", "app");
        internal.record(500, ms(20));
        assert_eq!(web.errors(), 2);
        assert_eq!(internal.errors(), 1);
        // One histogram for the route and upstream, whatever the listener.
        let durations = web.durations().unwrap();
        assert_eq!(durations.count, 6);
        assert_eq!(internal.durations(), Some(durations));
        // Handles compiled again (a reload) read the same series.
        assert_eq!(metrics.route("web", "api", "app").errors(), 2);
        // Reading makes no series.
        let text = metrics.encode();
        assert!(!text.contains("status=\"501\""), "{text}");
        assert_eq!(metrics.open_connections("web"), 0);
        assert!(!metrics.encode().contains("connections_active{"));
    }
}
