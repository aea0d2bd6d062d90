//! Prometheus metrics. Families live for the life of the process; compiled routes hold
//! handles resolved on first use, so the request path is an atomic add, not a label lookup,
//! and compiling a config (even one a reload then refuses) adds no series.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
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

/// Labels of `portico_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    /// Route name.
    pub(crate) route: String,
    /// `hit`, `miss`, `stale`, `revalidated` or `bypass`.
    pub(crate) result: &'static str,
}

type HistogramFamily<L> = Family<L, sharded::DurationHistogram, fn() -> sharded::DurationHistogram>;

fn duration_histogram() -> sharded::DurationHistogram {
    // 0.25 ms to ~16 s.
    sharded::DurationHistogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// Every metric portico exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    // The request path's series are written per worker (see `sharded`).
    requests: Family<RequestLabels, sharded::Counter>,
    durations: HistogramFamily<DurationLabels>,
    connections: Family<ListenerLabels, sharded::Gauge>,
    reloads: Family<ResultLabels, Counter>,
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
        Metrics {
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

    /// Sets a target's health gauge.
    pub(crate) fn target_healthy(&self, upstream: &str, target: &str, healthy: bool) {
        self.healthy
            .get_or_create(&TargetLabels {
                upstream: upstream.to_owned(),
                target: target.to_owned(),
            })
            .set(i64::from(healthy));
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

    fn counter(&self, status: u16) -> sharded::Counter {
        let mut labels = (*self.labels).clone();
        labels.status = status;
        self.requests.get_or_create(&labels).clone()
    }
}
