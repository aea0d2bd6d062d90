//! `trusted_proxies:` at the top level and on a listener: the proxies whose
//! `X-Forwarded-For` / `Forwarded` headers name the client; docs/config.md, "Trusted proxies".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;

/// Source blocks (`10.0.0.0/8`, `127.0.0.1/32`, `::1`) whose forwarding headers are believed.
/// From a peer inside one, the client address is taken from `X-Forwarded-For` (the right-most
/// address not in the list) or `Forwarded`; from any other peer those headers and `X-Real-IP`
/// are removed and the client is the peer. `[]` trusts no one.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(transparent)]
pub(crate) struct TrustedProxiesSpec(pub(crate) Vec<At<String>>);
