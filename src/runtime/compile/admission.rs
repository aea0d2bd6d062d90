//! A listener's admission keys, checked and compiled: `limits.connections_per_ip`,
//! `limits.requests_per_ip`, `limits.ipv6_prefix`, `limits.max_clients` and `overload`.

use crate::admission::{Adaptive, Overload, PerIp, Rate};
use crate::config::spec::{ListenerProtocol, ListenerSpec};
use crate::config::{Diagnostics, Pos};

/// The per-address limits; `None` when the listener sets neither.
pub(super) fn per_ip(spec: &ListenerSpec, diags: &mut Diagnostics) -> Option<PerIp> {
    let limits = &spec.limits;
    let at = spec.bind.pos;
    if !(1..=128).contains(&limits.ipv6_prefix) {
        diags.error(at, "limits.ipv6_prefix must be from 1 to 128");
    }
    if limits.max_clients == 0 {
        diags.error(at, "limits.max_clients must be at least 1");
    }
    let connections = limits.connections_per_ip.map(|n| {
        if n == 0 {
            diags.error(at, "limits.connections_per_ip must be at least 1");
        }
        if spec.protocol == ListenerProtocol::Udp {
            diags.error(
                at,
                "limits.connections_per_ip applies to TCP listeners; a udp listener has flows",
            );
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    });
    let rate = limits.requests_per_ip.as_ref().and_then(|r| {
        if spec.protocol.is_l4() {
            diags.error(
                r.limit.pos,
                "limits.requests_per_ip applies to http and https listeners",
            );
        }
        if *r.limit == 0 {
            diags.error(r.limit.pos, "requests_per_ip.limit must be at least 1");
        }
        if r.window.0.is_zero() {
            diags.error(r.limit.pos, "requests_per_ip.window must be longer than 0");
        }
        if r.burst == Some(0) {
            diags.error(r.limit.pos, "requests_per_ip.burst must be at least 1");
        }
        Rate::new(*r.limit, r.window.0, r.burst.unwrap_or(*r.limit))
    });
    if connections.is_none() && rate.is_none() {
        return None;
    }
    Some(PerIp {
        connections,
        rate,
        ipv6_prefix: limits.ipv6_prefix.clamp(1, 128),
        max_clients: limits.max_clients.max(1),
    })
}

/// The listener's load shedding, if any.
pub(super) fn overload(spec: &ListenerSpec, diags: &mut Diagnostics) -> Option<Overload> {
    let overload = spec.overload.as_ref()?;
    // A key left to its default has no place of its own: its listener's name stands for it.
    let place = |pos: Pos| {
        if pos == Pos::default() {
            spec.name.pos
        } else {
            pos
        }
    };
    let at = place(overload.max_in_flight.pos);
    if spec.protocol.is_l4() {
        diags.error(
            spec.name.pos,
            "overload applies to http and https listeners (it limits requests in flight)",
        );
    }
    if *overload.max_in_flight == 0 {
        diags.error(at, "overload.max_in_flight must be at least 1");
    }
    let adaptive = overload.adaptive.as_ref().map(|a| {
        let max = *overload.max_in_flight;
        if *a.min_limit == 0 {
            diags.error(
                place(a.min_limit.pos),
                "overload.adaptive.min_limit must be at least 1",
            );
        }
        if *a.min_limit > max {
            diags.error(
                place(a.min_limit.pos),
                format!(
                    "overload.adaptive.min_limit ({}) is above max_in_flight ({})",
                    *a.min_limit, *overload.max_in_flight
                ),
            );
        }
        // The default initial limit fits itself into the range; one written must be in it.
        let explicit = a.initial_limit.pos != Pos::default();
        if explicit && !(*a.min_limit..=max).contains(&*a.initial_limit) {
            diags.error(
                a.initial_limit.pos,
                "overload.adaptive.initial_limit must be from min_limit to max_in_flight",
            );
        }
        if a.interval.0.is_zero() || a.min_rtt_interval.0 < a.interval.0 {
            diags.error(
                spec.name.pos,
                "overload.adaptive needs an interval longer than 0 and a min_rtt_interval at \
                 least as long",
            );
        }
        if !(a.tolerance.is_finite() && *a.tolerance >= 1.0) {
            diags.error(
                place(a.tolerance.pos),
                "overload.adaptive.tolerance must be at least 1",
            );
        }
        Adaptive {
            initial_limit: (*a.initial_limit).min(max).max((*a.min_limit).max(1)),
            min_limit: (*a.min_limit).max(1),
            interval: a.interval.0,
            min_rtt_interval: a.min_rtt_interval.0,
            tolerance: a.tolerance.max(1.0),
        }
    });
    Some(Overload {
        max_in_flight: (*overload.max_in_flight).max(1),
        queue_timeout: overload.queue_timeout.0,
        adaptive,
    })
}
