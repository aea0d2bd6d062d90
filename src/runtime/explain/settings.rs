//! `explain`'s lines on what happens once a request is forwarded: the route's retry and
//! timeouts, the upstream's balancer, health checks and sticky sessions.

use std::fmt::Write;

use crate::config::spec::{CheckType, Spec};
use crate::runtime::{RetryPolicy, Route, Upstream};

/// Appends the forwarding settings of `route` towards `upstream`.
pub(super) fn explain(out: &mut String, route: &Route, upstream: &Upstream, spec: &Spec) {
    let (retry, given) = match &route.retry {
        Some(r) => (r, ""),
        None => (&RetryPolicy::DEFAULT, " (default: no `retry`)"),
    };
    let _ = writeln!(
        out,
        "retry     {} attempts in all, on {}; budget {}% of requests + {}/s{}{given}",
        retry.attempts,
        retry_on(retry),
        retry.budget.0,
        retry.budget.1,
        if retry.non_idempotent {
            "; POST and PATCH too"
        } else {
            ""
        },
    );
    let spec_upstream = spec
        .upstreams
        .iter()
        .find(|(name, _)| name.as_str() == &*upstream.name)
        .map(|(_, u)| u);
    let mut timeouts = vec![match route.timeout {
        Some(t) => format!("route {}", crate::config::units::Dur(t)),
        None => "route none".to_owned(),
    }];
    if let Some(per_try) = retry.per_try_timeout {
        timeouts.push(format!("per try {}", crate::config::units::Dur(per_try)));
    }
    if let Some(u) = spec_upstream {
        timeouts.push(format!("connect {}", u.connect_timeout));
    }
    let _ = writeln!(out, "timeouts  {}", timeouts.join(", "));
    let _ = writeln!(
        out,
        "balancer  {} over {} target(s)",
        upstream.balancer.name(),
        upstream.targets.len()
    );
    let Some(u) = spec_upstream else { return };
    match &u.health_check {
        None => {
            let _ = writeln!(out, "health    no health_check: every target is used");
        }
        Some(h) => {
            let active = match &h.active {
                Some(a) if a.kind == CheckType::Tcp => {
                    format!("active tcp every {} (timeout {})", a.interval, a.timeout)
                }
                Some(a) => format!(
                    "active {} {} every {} (timeout {}, expect {}, {} up / {} down)",
                    *a.method,
                    a.path,
                    a.interval,
                    a.timeout,
                    *a.expect_status,
                    a.healthy,
                    a.unhealthy
                ),
                None => "no active check".to_owned(),
            };
            let passive = match &h.passive {
                Some(p) => {
                    let mut when = Vec::new();
                    if p.consecutive_failures > 0 {
                        when.push(format!("{} consecutive failures", p.consecutive_failures));
                    }
                    if p.error_rate > 0 {
                        when.push(format!(
                            "{}% errors in {} (at least {} requests)",
                            p.error_rate, p.window, p.min_requests
                        ));
                    }
                    if when.is_empty() {
                        "passive: off".to_owned()
                    } else {
                        format!(
                            "passive: eject after {} for {} (doubling, up to {})",
                            when.join(" or "),
                            p.eject_for,
                            p.max_eject
                        )
                    }
                }
                None => "no passive check".to_owned(),
            };
            let _ = writeln!(out, "health    {active}; {passive}");
        }
    }
    match &u.sticky {
        Some(s) => {
            let _ = writeln!(
                out,
                "sticky    cookie {} for {} (a request with it goes back to the same target)",
                *s.cookie, s.ttl
            );
        }
        None => {
            let _ = writeln!(out, "sticky    off");
        }
    }
}

fn retry_on(r: &RetryPolicy) -> String {
    let mut on: Vec<String> = Vec::new();
    if r.on_connect_failure {
        on.push("connect_failure".into());
    }
    if r.on_reset {
        on.push("reset".into());
    }
    if r.on_timeout {
        on.push("timeout".into());
    }
    on.extend(r.on_status.iter().map(u16::to_string));
    if on.is_empty() {
        "nothing".into()
    } else {
        on.join(", ")
    }
}
