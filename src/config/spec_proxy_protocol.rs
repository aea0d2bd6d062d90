//! `proxy_protocol:` of a listener (accepting the PROXY protocol) and of an upstream (sending
//! it); docs/config.md, "PROXY protocol".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Dur;

/// `proxy_protocol:` of a listener: read a PROXY protocol v1 or v2 header at the start of
/// each connection from these sources.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyProtocolAcceptSpec {
    /// Source CIDRs (`10.0.0.0/8`, `127.0.0.1/32`, `::1`) whose header is believed. A
    /// connection from any other source that sends a header is closed; one without a
    /// header is served with its socket address.
    #[schemars(length(min = 1))]
    pub(crate) trusted: Vec<At<String>>,
    /// A trusted source may also connect without a header (its socket address is used then);
    /// by default a trusted connection without one is closed.
    #[serde(default)]
    pub(crate) optional: bool,
    /// Time allowed for the whole header to arrive; then the connection is closed.
    #[serde(default = "header_timeout")]
    pub(crate) timeout: Dur,
}

fn header_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

/// `proxy_protocol:` of an upstream: the PROXY protocol header sent first on every new
/// connection to its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProxyProtocolVersion {
    /// The text header, `PROXY TCP4 SRC DST SPORT DPORT`.
    V1,
    /// The binary header.
    V2,
}
