//! Metrics of relayed (layer 4) connections: `portico_l4_connections_total` by listener,
//! upstream and result, and `portico_l4_bytes_total` by listener and direction.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of `portico_l4_connections_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnectionLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// Upstream name; empty when none was chosen.
    pub(crate) upstream: String,
    /// How the connection ended (a fixed set: see docs/config.md).
    pub(crate) result: &'static str,
}

/// Labels of `portico_l4_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    /// Listener name.
    pub(crate) listener: String,
    /// `in` (client to upstream) or `out` (upstream to client).
    pub(crate) direction: &'static str,
}

/// The layer 4 families.
#[derive(Debug, Clone, Default)]
pub(crate) struct L4Metrics {
    connections: Family<ConnectionLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
}

impl L4Metrics {
    /// Creates the families and registers them.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = L4Metrics::default();
        registry.register(
            "l4_connections",
            "Relayed (tcp, tls, tls_passthrough) connections ended, by result",
            metrics.connections.clone(),
        );
        registry.register(
            "l4_bytes",
            "Bytes relayed by tcp, tls and tls_passthrough listeners (in: client to upstream)",
            metrics.bytes.clone(),
        );
        metrics
    }

    /// Counts one ended connection and its bytes.
    pub(crate) fn ended(
        &self,
        listener: &str,
        upstream: &str,
        result: &'static str,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.connections
            .get_or_create(&ConnectionLabels {
                listener: listener.to_owned(),
                upstream: upstream.to_owned(),
                result,
            })
            .inc();
        for (direction, n) in [("in", bytes_in), ("out", bytes_out)] {
            if n > 0 {
                self.bytes
                    .get_or_create(&BytesLabels {
                        listener: listener.to_owned(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
    }
}
