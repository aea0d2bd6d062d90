//! Stage `accept` and the start of `route`: who may come in. A listener's per-client-address
//! limits (open connections, request rate) and its load shedding (`overload`), with the state
//! they keep: one [`Admission`] per bound listener, shared by its workers' accept loops and
//! kept across reloads, so connections and requests that began under an earlier config still
//! count. The limits themselves come from the config in force ([`PerIp`], [`Overload`]).
//!
//! The client address is the TCP peer's, or the one a trusted PROXY protocol header conveyed
//! when the listener reads one; `X-Forwarded-For` (`trusted_proxies`) is not consulted,
//! since it arrives only with a request, after the connection was admitted.

mod clients;
mod shed;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) use clients::{ClientSlot, client_key};
pub(crate) use shed::InFlight;

use crate::error::ProxyError;
use crate::observe::admission::{ListenerAdmissionMetrics, Refusal};

/// `limits.connections_per_ip`, `requests_per_ip`, `ipv6_prefix` and `max_clients`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PerIp {
    /// Most open connections per client address.
    pub(crate) connections: Option<u32>,
    /// The request rate per client address.
    pub(crate) rate: Option<Rate>,
    /// IPv6 addresses are grouped by this prefix length.
    pub(crate) ipv6_prefix: u8,
    /// Most addresses each table tracks.
    pub(crate) max_clients: usize,
}

/// A GCRA rate: one request every `interval`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// `window / limit`, in nanoseconds.
    pub(crate) interval: u64,
    /// `(burst - 1) × interval`, in nanoseconds.
    pub(crate) tolerance: u64,
}

impl Rate {
    /// `limit` per `window`, `burst` at once; `None` when `limit`, `burst` or `window` is 0.
    pub(crate) fn new(limit: u32, window: Duration, burst: u32) -> Option<Self> {
        if limit == 0 || burst == 0 || window.is_zero() {
            return None;
        }
        let interval = (window.as_nanos() / u128::from(limit)).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        Some(Rate {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
        })
    }

    /// One GCRA step at `now` (ns) for a key whose theoretical arrival time is `tat` (`None`
    /// for a key not seen yet): its next arrival time when the request may go, else how long
    /// it must wait (ns).
    pub(crate) fn step(&self, tat: Option<u64>, now: u64) -> Result<u64, u64> {
        let tat = tat.unwrap_or(now).max(now);
        let allow_at = tat.saturating_sub(self.tolerance);
        if now < allow_at {
            return Err(allow_at - now);
        }
        Ok(tat.saturating_add(self.interval))
    }
}

/// A listener's `overload:`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Overload {
    /// Most requests in flight (the adaptive limit's ceiling).
    pub(crate) max_in_flight: usize,
    /// Longest wait for a place.
    pub(crate) queue_timeout: Duration,
    /// The gradient limit, if chosen.
    pub(crate) adaptive: Option<Adaptive>,
}

/// `overload.adaptive`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Adaptive {
    /// The limit before any measurement.
    pub(crate) initial_limit: usize,
    /// The floor.
    pub(crate) min_limit: usize,
    /// How often the limit is recomputed.
    pub(crate) interval: Duration,
    /// How often `min_rtt` is measured again.
    pub(crate) min_rtt_interval: Duration,
    /// Latency allowed above `min_rtt` before the limit falls.
    pub(crate) tolerance: f64,
}

/// The admission state of one bound listener.
#[derive(Debug)]
pub(crate) struct Admission {
    connections: clients::Counts,
    rates: clients::Rates,
    shed: shed::Shed,
    metrics: ListenerAdmissionMetrics,
}

/// Nanoseconds on a process-wide monotonic clock, never 0.
pub(crate) fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(elapsed).unwrap_or(u64::MAX).saturating_add(1)
}

impl Admission {
    /// Empty tables for a listener; `metrics` are its series.
    pub(crate) fn new(metrics: ListenerAdmissionMetrics) -> Self {
        Admission {
            connections: clients::Counts::default(),
            rates: clients::Rates::default(),
            shed: shed::Shed::default(),
            metrics,
        }
    }

    /// Takes a connection place for `client` when `per_ip` limits connections; `Err` (the
    /// refusal counted) means close the connection now. The place is given back when the
    /// slot drops.
    pub(crate) fn connect(
        self: &Arc<Self>,
        client: IpAddr,
        per_ip: &PerIp,
    ) -> Result<Option<ClientSlot>, Refusal> {
        let Some(limit) = per_ip.connections else {
            return Ok(None);
        };
        let key = client_key(client, per_ip.ipv6_prefix);
        self.connections
            .enter(self, key, limit, per_ip.max_clients)
            .map(Some)
            .inspect_err(|&reason| {
                tracing::debug!(client = %client, reason = ?reason, "connection refused at accept");
                self.metrics.connection_refused(reason);
            })
    }

    /// Checks the request rate of `client`: `Err` is the 429 to answer (counted).
    pub(crate) fn request(&self, client: IpAddr, per_ip: &PerIp) -> Result<(), ProxyError> {
        let Some(rate) = per_ip.rate else {
            return Ok(());
        };
        let key = client_key(client, per_ip.ipv6_prefix);
        self.rates
            .check(key, &rate, per_ip.max_clients, now_ns())
            .map_err(|(reason, wait)| {
                self.metrics.request_refused(reason);
                ProxyError::ClientRateLimited {
                    retry_after: Duration::from_nanos(wait).as_secs_f64().ceil().max(1.0) as u64,
                }
            })
    }

    /// A place in flight under `overload` now, or `None`: then [`Admission::queue`] waits for
    /// one.
    pub(crate) fn admit(self: &Arc<Self>, overload: &Overload) -> Option<InFlight> {
        self.shed.admit(self, overload)
    }

    /// Waits at most `overload.queue_timeout` for a place; `Err` is the 503 (counted).
    pub(crate) async fn queue(self: Arc<Self>, overload: Overload) -> Result<InFlight, ProxyError> {
        match shed::Shed::queue(&self, &overload).await {
            Some(in_flight) => Ok(in_flight),
            None => {
                self.metrics.request_refused(Refusal::Overloaded);
                Err(ProxyError::Overloaded {
                    limit: self.shed.limit(&overload),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
