//! Stage `log`: metrics and the access log.

pub(crate) mod access_log;
pub(crate) mod admission;
pub(crate) mod l4;
pub(crate) mod metrics;
pub(crate) mod sharded;
pub(crate) mod udp;

pub(crate) use access_log::AccessLog;
pub(crate) use metrics::{CacheLabels, Metrics, RouteMetrics, TunnelMetrics};
