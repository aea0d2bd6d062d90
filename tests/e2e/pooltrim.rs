//! The upstream pool trimmed to recent demand: after a burst the idle connections beyond the
//! peak of the last `pool.demand_window` are closed, and a steady load keeps its connection.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{Portico, TestUpstream, get};

/// `(open_connections, idle_connections)` of the upstream's one target, from the admin API.
async fn pool(admin: &str) -> (u64, u64) {
    let targets = get(admin, "/upstreams/u/targets").await.json();
    let target = &targets["targets"][0];
    (
        target["open_connections"].as_u64().unwrap(),
        target["idle_connections"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn after_a_burst_the_pool_shrinks_to_recent_demand_and_a_steady_load_does_not_churn() {
    const BURST: usize = 12;
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&format!(
        "\
workers: 1
admin: {{ listen: 127.0.0.1:0 }}
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
  - {{ name: all, upstream: u }}
upstreams:
  u:
    targets: [ {{ address: '{}' }} ]
    pool: {{ idle_timeout: 60s, demand_window: 1s }}
",
        a.addr()
    ));
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();

    // A burst of concurrent requests, each held 300 ms by the upstream: one connection each.
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { get(&web, "/slow/300").await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    let (open, idle) = pool(&admin).await;
    assert_eq!(
        (open, idle),
        (BURST as u64, BURST as u64),
        "after the burst"
    );
    let burst_done = Instant::now();

    // Then one request at a time: the burst's surplus is closed within the window (and a
    // quarter of it), leaving the one connection the load uses.
    loop {
        assert_eq!(get(&web, "/steady").await.status, 200);
        let (open, idle) = pool(&admin).await;
        if (open, idle) == (1, 1) {
            break;
        }
        assert!(
            burst_done.elapsed() < Duration::from_secs(5),
            "the pool kept {open} open, {idle} idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shrunk_after = burst_done.elapsed();
    assert!(
        shrunk_after >= Duration::from_millis(700),
        "trimmed before the window passed: {shrunk_after:?}"
    );

    // The same steady load for over two windows: every request on the one kept connection.
    let before = a.seen().len();
    let end = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < end {
        assert_eq!(get(&web, "/steady").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = a.seen();
    let peers: HashSet<_> = seen[before..].iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "steady requests came over {peers:?}");
    assert!(seen.len() - before >= 20);
    assert_eq!(pool(&admin).await, (1, 1));
    // The upstream saw the burst's connections and no new one since the trim.
    let all: HashSet<_> = seen.iter().map(|s| s.peer).collect();
    assert_eq!(all.len(), BURST, "{all:?}");
}
