//! Metrics of `protocol: udp` listeners: datagrams and bytes each way, sessions open and
//! opened, and datagrams dropped by reason. Every series is labelled by listener (and a fixed
//! word), so their number is bounded by the config, never by traffic.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::metrics::ListenerLabels;

/// Labels of the datagram and byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `in` (from clients) or `out` (to clients).
    pub(crate) direction: &'static str,
}

/// Labels of `portico_udp_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DropLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `sessions_full`, `no_target` or `send_failed`.
    pub(crate) reason: &'static str,
}

/// The UDP families, registered once.
#[derive(Debug, Clone)]
pub(crate) struct UdpMetrics {
    datagrams: Family<DirectionLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    sessions: Family<ListenerLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
}

impl UdpMetrics {
    /// Creates the families and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = UdpMetrics {
            datagrams: Family::default(),
            bytes: Family::default(),
            active: Family::default(),
            sessions: Family::default(),
            dropped: Family::default(),
        };
        registry.register(
            "udp_datagrams",
            "Datagrams of udp listeners: in from clients, out to clients",
            metrics.datagrams.clone(),
        );
        registry.register(
            "udp_bytes",
            "Payload bytes of udp listeners: in from clients, out to clients",
            metrics.bytes.clone(),
        );
        registry.register(
            "udp_sessions_active",
            "Open sessions (client address and port) of udp listeners",
            metrics.active.clone(),
        );
        registry.register(
            "udp_sessions",
            "Sessions opened by udp listeners",
            metrics.sessions.clone(),
        );
        registry.register(
            "udp_dropped",
            "Datagrams a udp listener dropped, by reason",
            metrics.dropped.clone(),
        );
        metrics
    }

    /// Handles for one listener, resolved once.
    pub(crate) fn listener(&self, listener: &str) -> UdpListenerMetrics {
        let way = |family: &Family<DirectionLabels, Counter>, direction| {
            family
                .get_or_create(&DirectionLabels {
                    listener: listener.to_owned(),
                    direction,
                })
                .clone()
        };
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        let drop = |reason| {
            self.dropped
                .get_or_create(&DropLabels {
                    listener: listener.to_owned(),
                    reason,
                })
                .clone()
        };
        UdpListenerMetrics {
            datagrams_in: way(&self.datagrams, "in"),
            datagrams_out: way(&self.datagrams, "out"),
            bytes_in: way(&self.bytes, "in"),
            bytes_out: way(&self.bytes, "out"),
            active: self.active.get_or_create(&labels).clone(),
            sessions: self.sessions.get_or_create(&labels).clone(),
            full: drop("sessions_full"),
            no_target: drop("no_target"),
            send_failed: drop("send_failed"),
        }
    }
}

/// One udp listener's metric handles: each update is an atomic add.
#[derive(Debug, Clone)]
pub(crate) struct UdpListenerMetrics {
    /// Datagrams received from clients.
    pub(crate) datagrams_in: Counter,
    /// Datagrams sent to clients.
    pub(crate) datagrams_out: Counter,
    /// Payload bytes received from clients.
    pub(crate) bytes_in: Counter,
    /// Payload bytes sent to clients.
    pub(crate) bytes_out: Counter,
    /// Open sessions.
    pub(crate) active: Gauge,
    /// Sessions opened.
    pub(crate) sessions: Counter,
    /// Dropped: `max_sessions` reached.
    pub(crate) full: Counter,
    /// Dropped: no available target.
    pub(crate) no_target: Counter,
    /// Dropped: a datagram (either way) could not be sent on, or no session socket opened.
    pub(crate) send_failed: Counter,
}
