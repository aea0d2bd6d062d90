use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::shed::next_limit;
use super::*;
use crate::observe::Metrics;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn admission() -> Arc<Admission> {
    Arc::new(Admission::new(Metrics::new().admission("web")))
}

#[test]
fn ipv6_clients_count_by_prefix_and_mapped_ipv4_as_ipv4() {
    assert_eq!(
        client_key(ip("2001:db8:1:2:aaaa::1"), 64),
        ip("2001:db8:1:2::")
    );
    assert_eq!(
        client_key(ip("2001:db8:1:2:aaaa::1"), 64),
        client_key(ip("2001:db8:1:2:ffff:1:2:3"), 64)
    );
    assert_ne!(
        client_key(ip("2001:db8:1:2::1"), 64),
        client_key(ip("2001:db8:1:3::1"), 64)
    );
    assert_eq!(client_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
    assert_eq!(client_key(ip("2001:db8:ff::1"), 32), ip("2001:db8::"));
    assert_eq!(client_key(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
    assert_eq!(client_key(ip("192.0.2.7"), 1), ip("192.0.2.7"));
    assert_eq!(client_key(ip("8000::1"), 1), ip("8000::"));
}

#[test]
fn connections_per_address_are_limited_and_given_back() {
    let admission = admission();
    let per_ip = PerIp {
        connections: Some(2),
        rate: None,
        ipv6_prefix: 64,
        max_clients: 100,
    };
    let a = admission.connect(ip("2001:db8::1"), &per_ip).unwrap();
    let b = admission.connect(ip("2001:db8::2"), &per_ip).unwrap();
    // Same /64: a third address of it is over the limit; another /64 is not.
    assert_eq!(
        admission.connect(ip("2001:db8::3"), &per_ip).err(),
        Some(Refusal::PerIp)
    );
    let other = admission.connect(ip("2001:db8:0:1::1"), &per_ip).unwrap();
    assert_eq!(admission.connections.tracked(), 2);
    drop(a);
    let c = admission.connect(ip("2001:db8::3"), &per_ip).unwrap();
    drop((b, c, other));
    // Counts at zero are removed.
    assert_eq!(admission.connections.tracked(), 0);
}

#[test]
fn a_full_table_refuses_new_addresses_only() {
    let admission = admission();
    let per_ip = PerIp {
        connections: Some(10),
        rate: None,
        ipv6_prefix: 64,
        max_clients: 16,
    };
    let mut slots = Vec::new();
    let mut refused = 0;
    for n in 0..200u32 {
        match admission.connect(IpAddr::from(n.to_be_bytes()), &per_ip) {
            Ok(slot) => slots.push(slot),
            Err(reason) => {
                assert_eq!(reason, Refusal::MaxClients);
                refused += 1;
            }
        }
    }
    assert!(refused > 0);
    assert!(admission.connections.tracked() <= 16 * 16);
    // A tracked address still gets its places.
    let first = IpAddr::from(0u32.to_be_bytes());
    assert!(admission.connect(first, &per_ip).is_ok());
}

#[test]
fn the_request_rate_is_gcra_per_address() {
    let admission = admission();
    let rate = Rate::new(2, Duration::from_secs(1), 2).unwrap();
    let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
    let ms = 1_000_000u64;
    assert!(admission.rates.check(a, &rate, 100, ms).is_ok());
    assert!(admission.rates.check(a, &rate, 100, ms).is_ok());
    let (reason, wait) = admission.rates.check(a, &rate, 100, ms).unwrap_err();
    assert_eq!(reason, Refusal::PerIp);
    assert_eq!(wait, 500 * ms);
    assert!(admission.rates.check(b, &rate, 100, ms).is_ok());
    // Half a second later one more is allowed.
    assert!(admission.rates.check(a, &rate, 100, 501 * ms).is_ok());
    // A full table forgets addresses whose allowance is whole again.
    let small = Rate::new(1, Duration::from_millis(10), 1).unwrap();
    let rates = clients::Rates::default();
    for n in 0..64u32 {
        let _ = rates.check(IpAddr::from(n.to_be_bytes()), &small, 16, ms);
    }
    assert!(rates.tracked() <= 16);
    assert!(
        rates
            .check(ip("198.51.100.1"), &small, 16, 1000 * ms)
            .is_ok()
    );
}

#[test]
fn the_gradient_lowers_the_limit_when_latency_rises_and_raises_it_when_it_holds() {
    let bounds = (3, 100);
    // Latency at min_rtt: the limit grows by its square root.
    assert_eq!(next_limit(16, 0.010, 0.010, 1.25, bounds, false), 20);
    // Within the tolerance, still growing.
    assert_eq!(next_limit(16, 0.010, 0.0125, 1.25, bounds, false), 20);
    // Twice the tolerated latency: gradient 0.625.
    assert_eq!(next_limit(16, 0.010, 0.020, 1.25, bounds, false), 13);
    // Far above: the gradient is floored at 0.5, and the limit at min_limit.
    assert_eq!(next_limit(16, 0.010, 1.0, 1.25, bounds, false), 10);
    assert_eq!(next_limit(4, 0.010, 1.0, 1.25, bounds, false), 3);
    // Capped at max_in_flight.
    assert_eq!(next_limit(99, 0.010, 0.010, 1.25, bounds, false), 100);
    // Under-used: may fall, never grows.
    assert_eq!(next_limit(16, 0.010, 0.010, 1.25, bounds, true), 16);
    assert_eq!(next_limit(16, 0.010, 1.0, 1.25, bounds, true), 10);
    // Repeated high latency converges on the floor; then recovery climbs back.
    let mut limit = 50;
    for _ in 0..20 {
        limit = next_limit(limit, 0.010, 0.5, 1.25, bounds, false);
    }
    assert_eq!(limit, 3);
    for _ in 0..20 {
        limit = next_limit(limit, 0.010, 0.010, 1.25, bounds, false);
    }
    assert_eq!(limit, 100);
}

#[tokio::test]
async fn requests_beyond_the_limit_wait_then_are_refused() {
    let admission = admission();
    let overload = Overload {
        max_in_flight: 1,
        queue_timeout: Duration::from_millis(50),
        adaptive: None,
    };
    let first = admission.admit(&overload).unwrap();
    assert!(admission.admit(&overload).is_none());
    let started = std::time::Instant::now();
    let err = Arc::clone(&admission).queue(overload).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(err.code(), "overloaded");
    // A place given back wakes a waiter.
    let waiter = tokio::spawn(Arc::clone(&admission).queue(Overload {
        queue_timeout: Duration::from_secs(5),
        ..overload
    }));
    tokio::task::yield_now().await;
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(second.is_ok());
}
