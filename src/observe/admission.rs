//! The families of listener admission: connections and requests refused per client address
//! or for overload, and the overload limiter's gauges. Series appear on first use, so a
//! listener without these limits adds none.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::ListenerLabels;

/// Labels of `portico_connections_refused_total` and `portico_requests_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AdmissionLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `per_ip`, `max_clients` or `overloaded`.
    pub(crate) reason: &'static str,
}

/// The families, registered once.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionMetrics {
    connections_refused: Family<AdmissionLabels, Counter>,
    requests_refused: Family<AdmissionLabels, Counter>,
    limit: Family<ListenerLabels, Gauge>,
    in_flight: Family<ListenerLabels, Gauge>,
}

impl AdmissionMetrics {
    /// Creates and registers the families.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = AdmissionMetrics {
            connections_refused: Family::default(),
            requests_refused: Family::default(),
            limit: Family::default(),
            in_flight: Family::default(),
        };
        registry.register(
            "connections_refused",
            "Connections closed at accept by a listener's per-address limits, by reason",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused before routing (per-address rate) or shed (overload), by reason",
            metrics.requests_refused.clone(),
        );
        registry.register(
            "overload_limit",
            "The listener's current limit on requests in flight (overload)",
            metrics.limit.clone(),
        );
        registry.register(
            "overload_in_flight",
            "Requests in flight under the listener's overload limit",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// The handles of one listener, each resolved on first use.
    pub(crate) fn listener(&self, listener: &str) -> ListenerAdmissionMetrics {
        ListenerAdmissionMetrics {
            families: self.clone(),
            listener: listener.to_owned(),
            handles: Default::default(),
        }
    }
}

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its client address is over its limit.
    PerIp,
    /// Its client address is new and the table of addresses is full.
    MaxClients,
    /// The listener is over its overload limit and the queue wait ran out.
    Overloaded,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::MaxClients => "max_clients",
            Refusal::Overloaded => "overloaded",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
struct Handles {
    connections: [OnceLock<Counter>; 3],
    requests: [OnceLock<Counter>; 3],
    limit: OnceLock<Gauge>,
    in_flight: OnceLock<Gauge>,
}

/// One listener's admission series.
#[derive(Debug)]
pub(crate) struct ListenerAdmissionMetrics {
    families: AdmissionMetrics,
    listener: String,
    handles: Handles,
}

impl ListenerAdmissionMetrics {
    fn labels(&self, reason: Refusal) -> AdmissionLabels {
        AdmissionLabels {
            listener: self.listener.clone(),
            reason: reason.label(),
        }
    }

    /// Counts a connection closed at accept.
    pub(crate) fn connection_refused(&self, reason: Refusal) {
        self.handles.connections[reason.index()]
            .get_or_init(|| {
                let labels = self.labels(reason);
                self.families
                    .connections_refused
                    .get_or_create(&labels)
                    .clone()
            })
            .inc();
    }

    /// Counts a request refused or shed.
    pub(crate) fn request_refused(&self, reason: Refusal) {
        self.handles.requests[reason.index()]
            .get_or_init(|| {
                let labels = self.labels(reason);
                self.families
                    .requests_refused
                    .get_or_create(&labels)
                    .clone()
            })
            .inc();
    }

    fn gauge<'a>(
        &'a self,
        cell: &'a OnceLock<Gauge>,
        family: &Family<ListenerLabels, Gauge>,
    ) -> &'a Gauge {
        cell.get_or_init(|| {
            family
                .get_or_create(&ListenerLabels {
                    listener: self.listener.clone(),
                })
                .clone()
        })
    }

    /// `portico_overload_limit{listener}`.
    pub(crate) fn limit(&self) -> &Gauge {
        self.gauge(&self.handles.limit, &self.families.limit)
    }

    /// `portico_overload_in_flight{listener}`.
    pub(crate) fn in_flight(&self) -> &Gauge {
        self.gauge(&self.handles.in_flight, &self.families.in_flight)
    }
}
