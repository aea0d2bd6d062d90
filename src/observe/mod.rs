//! Stage `log`: metrics and the access log.

pub mod access_log;
pub mod metrics;

pub use access_log::AccessLog;
pub use metrics::{Metrics, RouteMetrics};
