//! `udp:` of a `protocol: udp` listener (docs/config.md, "UDP listeners").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::de::At;
use super::units::Dur;

/// `udp:` of a listener: how sessions (one per client address and port) live.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UdpSpec {
    /// A session with no datagram either way for this long ends; the client's next datagram
    /// opens a new one (and may go to another target).
    #[serde(default = "session_timeout")]
    pub(crate) session_timeout: Dur,
    /// Most sessions open at once on this listener; a datagram that would open one more is
    /// dropped (and counted).
    #[schemars(range(min = 1))]
    #[serde(default = "max_sessions")]
    pub(crate) max_sessions: At<usize>,
    /// End a session after this many datagrams from the upstream (`1` for DNS: one answer per
    /// query); without it a session ends only when idle.
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) responses: Option<At<u32>>,
}

impl Default for UdpSpec {
    fn default() -> Self {
        UdpSpec {
            session_timeout: session_timeout(),
            max_sessions: max_sessions(),
            responses: None,
        }
    }
}

fn session_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

fn max_sessions() -> At<usize> {
    At {
        pos: Default::default(),
        value: 10_000,
    }
}
