use std::collections::HashMap;
use std::net::IpAddr;

use http::HeaderMap;
use proptest::prelude::*;

use super::*;
use crate::health::Outcome;
use crate::pool::Registry;

#[test]
fn nginx_order() {
    // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
    assert_eq!(
        smooth_sequence(&[5, 1, 1]).unwrap(),
        vec![0, 0, 1, 0, 2, 0, 0]
    );
    assert_eq!(smooth_sequence(&[2, 4]).unwrap(), vec![1, 0, 1]);
    assert!(smooth_sequence(&[0, 0]).is_none());
    assert!(smooth_sequence(&[u32::MAX, 1]).is_none());
}

proptest! {
    /// Each target appears exactly weight/gcd times per cycle, with no long starvation.
    #[test]
    fn weights_hold(weights in prop::collection::vec(1u32..50, 1..6)) {
        let seq = smooth_sequence(&weights).unwrap();
        let g = weights.iter().fold(0u32, |a, &b| { let (mut x, mut y) = (a, b); while y != 0 { (x, y) = (y, x % y); } x });
        for (i, &w) in weights.iter().enumerate() {
            let count = seq.iter().filter(|&&t| t as usize == i).count();
            prop_assert_eq!(count as u32, w / g);
        }
        let total = seq.len();
        for (i, &w) in weights.iter().enumerate() {
            let share = (w / g) as usize;
            let positions: Vec<usize> = seq.iter().enumerate().filter(|(_, t)| **t as usize == i).map(|(p, _)| p).collect();
            for pair in positions.windows(2) {
                prop_assert!(pair[1] - pair[0] <= 2 * total / share + 1);
            }
        }
    }
}

fn targets(registry: &Registry, n: usize) -> Vec<Arc<TargetState>> {
    let freed = registry.upstream("u").freed.clone();
    (0..n)
        .map(|i| registry.target("u", &format!("10.0.0.{i}:80"), &freed))
        .collect()
}

fn balancer(algorithm: Algorithm, weights: Vec<u32>) -> Balancer {
    Balancer {
        algorithm,
        weights,
        slow_start: Duration::ZERO,
        panic: false,
    }
}

fn ctx<'a>(headers: &'a HeaderMap, client: IpAddr) -> RequestView<'a> {
    RequestView {
        client,
        host: "",
        method: &http::Method::GET,
        headers,
        path: "/",
        query: None,
    }
}

fn counts(
    b: &Balancer,
    t: &[Arc<TargetState>],
    n: usize,
    client: impl Fn(usize) -> IpAddr,
) -> Vec<usize> {
    let headers = HeaderMap::new();
    let mut counts = vec![0; t.len()];
    for i in 0..n {
        counts[b.select(t, &ctx(&headers, client(i)), &[]).unwrap()] += 1;
    }
    counts
}

fn any_ip(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

#[test]
fn every_algorithm_spreads_by_weight() {
    let registry = Registry::default();
    let t = targets(&registry, 3);
    let weights = vec![1, 2, 5];
    let addrs: Vec<(&str, u32)> = t
        .iter()
        .zip(&weights)
        .map(|(t, w)| (&*t.address, *w))
        .collect();
    let algorithms = vec![
        Algorithm::RoundRobin {
            sequence: smooth_sequence(&weights).unwrap(),
            next: AtomicUsize::new(0),
        },
        Algorithm::Random,
        Algorithm::RingHash {
            ring: hash::Ring::build(&addrs),
            key: HashKey::ClientIp,
        },
        Algorithm::Maglev {
            table: hash::Maglev::build(&addrs),
            key: HashKey::ClientIp,
        },
    ];
    for algorithm in algorithms {
        let b = balancer(algorithm, weights.clone());
        let c = counts(&b, &t, 40_000, any_ip);
        for (i, &w) in weights.iter().enumerate() {
            let share = c[i] as f64 / 40_000.0;
            let want = f64::from(w) / 8.0;
            assert!(
                (share - want).abs() < 0.04,
                "{}: target {i} got {share}, want {want}",
                b.name()
            );
        }
    }
}

#[test]
fn hashing_keeps_a_client_on_one_target() {
    let registry = Registry::default();
    let t = targets(&registry, 4);
    let addrs: Vec<(&str, u32)> = t.iter().map(|t| (&*t.address, 1)).collect();
    let b = balancer(
        Algorithm::Maglev {
            table: hash::Maglev::build(&addrs),
            key: HashKey::ClientIp,
        },
        vec![1; 4],
    );
    let headers = HeaderMap::new();
    let mut seen: HashMap<IpAddr, usize> = HashMap::new();
    for i in 0..2000 {
        let ip = any_ip(i % 100);
        let pick = b.select(&t, &ctx(&headers, ip), &[]).unwrap();
        assert_eq!(*seen.entry(ip).or_insert(pick), pick);
    }
}

#[test]
fn least_request_and_p2c_avoid_busy_and_slow_targets() {
    let registry = Registry::default();
    let t = targets(&registry, 2);
    t[0].inflight.store(5, Ordering::Relaxed);
    let lr = balancer(
        Algorithm::LeastRequest {
            next: AtomicUsize::new(0),
        },
        vec![1, 1],
    );
    assert_eq!(counts(&lr, &t, 100, any_ip), vec![0, 100]);
    t[0].inflight.store(0, Ordering::Relaxed);
    // Target 0 answers in 50 ms, target 1 in 1 ms: p2c sends nearly everything to 1.
    t[0].health.observe_latency(Duration::from_millis(50));
    t[1].health.observe_latency(Duration::from_millis(1));
    let p2c = balancer(Algorithm::P2cEwma, vec![1, 1]);
    let c = counts(&p2c, &t, 1000, any_ip);
    assert!(c[1] > 450, "{c:?}");
    // With two targets, p2c compares both whenever it draws two different ones.
    assert!(c[0] < 550, "{c:?}");
}

#[test]
fn unhealthy_targets_are_skipped_and_panic_mode_spreads() {
    let registry = Registry::default();
    let t = targets(&registry, 3);
    let policy = crate::health::PassivePolicy {
        consecutive_failures: 1,
        error_rate_percent: 0,
        min_requests: 0,
        window: Duration::from_secs(10),
        eject_for: Duration::from_secs(30),
        max_eject: Duration::from_secs(60),
        max_ejected_percent: 100,
        connect_only: false,
    };
    assert!(t[1].health.record(Outcome::Failure, &policy, || true));
    let rr = balancer(
        Algorithm::RoundRobin {
            sequence: smooth_sequence(&[1, 1, 1]).unwrap(),
            next: AtomicUsize::new(0),
        },
        vec![1, 1, 1],
    );
    let c = counts(&rr, &t, 300, any_ip);
    assert_eq!(c[1], 0, "{c:?}");
    assert_eq!(c[0] + c[2], 300);
    // Excluded (already tried) targets are skipped too.
    let headers = HeaderMap::new();
    assert_eq!(rr.select(&t, &ctx(&headers, any_ip(0)), &[0, 2]), None);
    t[0].health.record(Outcome::Failure, &policy, || true);
    t[2].health.record(Outcome::Failure, &policy, || true);
    assert_eq!(
        rr.select(&t, &ctx(&headers, any_ip(0)), &[]),
        None,
        "all down: 503"
    );
    let mut panicky = rr;
    panicky.panic = true;
    let c = counts(&panicky, &t, 300, any_ip);
    assert!(
        c.iter().all(|&n| n == 100),
        "panic mode spreads over all: {c:?}"
    );
}

#[test]
fn slow_start_ramps_a_new_target() {
    let registry = Registry::default();
    let t = targets(&registry, 2);
    t[1].health.joined();
    let mut rr = balancer(
        Algorithm::RoundRobin {
            sequence: smooth_sequence(&[1, 1]).unwrap(),
            next: AtomicUsize::new(0),
        },
        vec![1, 1],
    );
    rr.slow_start = Duration::from_secs(60);
    let c = counts(&rr, &t, 2000, any_ip);
    // Just joined: about 10% of its weight.
    assert!(c[1] < 300, "{c:?}");
    rr.slow_start = Duration::ZERO;
    let c = counts(&rr, &t, 2000, any_ip);
    assert_eq!(c, vec![1000, 1000]);
}
