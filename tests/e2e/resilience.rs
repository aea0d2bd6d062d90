//! Balancing, health, retries and circuit breaking against real targets that fail for real.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{H1, Portico, TestUpstream, fill, get};

/// Counts failed requests from `clients` keep-alive clients doing at most `per_client` GETs
/// each, until `stop` is set. Returns (ok, failed).
async fn load(
    web: String,
    clients: usize,
    per_client: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (web, ok, failed, stop) = (
            web.clone(),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = H1::connect(&web).await;
            for _ in 0..per_client {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get("/load")
                    .header("host", "x")
                    .body(Default::default())
                    .unwrap();
                match client.send(req).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        client = H1::connect(&web).await;
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

// Log waits block a thread: the upstreams need another one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_target_under_load_fails_no_request() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: all
    upstream: u
    retry: { attempts: 3, on: [connect_failure, reset, 502, 503], backoff: 1ms, max_backoff: 5ms, budget_percent: 100 }
upstreams:
  u:
    targets: [ { address: '@A@' }, { address: '@B@' } ]
    health_check: { passive: { consecutive_failures: 1, eject_for: 10s } }
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let web = gw.addr("web");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runner = tokio::spawn(load(web.clone(), 4, 3000, Arc::clone(&stop)));
    // Let traffic reach both targets, then crash B mid-load.
    b.wait_count(50, Duration::from_secs(5)).await;
    b.kill();
    let before = a.count();
    a.wait_count(before + 300, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = runner.await.unwrap();
    assert_eq!(
        failed, 0,
        "client-visible failures with retries on ({ok} ok)"
    );
    assert!(
        gw.wait_log("target ejected", Duration::from_secs(2)),
        "{}",
        gw.log_text()
    );
}

/// A TCP server that accepts and never answers.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_hanging_target_times_out_and_the_retry_lands_elsewhere() {
    let (hole, _task) = black_hole().await;
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: bare, match: { path_prefix: /bare/ }, upstream: hole, timeout: 300ms }
  - name: retried
    upstream: both
    timeout: 2s
    retry: { attempts: 2, on: [timeout], per_try_timeout: 200ms, backoff: 1ms, max_backoff: 1ms }
upstreams:
  hole: { targets: [ { address: '@H@' } ] }
  both: { targets: [ { address: '@H@' }, { address: '@A@' } ] }
",
        &[("H", &hole), ("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let started = Instant::now();
    let reply = get(&web, "/bare/x").await;
    assert_eq!(reply.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..4 {
        let started = Instant::now();
        let reply = get(&web, "/r").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_reset_mid_response_breaks_only_that_response() {
    // Answers a head promising 100 bytes, sends 3, and resets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    .await;
                // Dropped mid-body: the peer sees the response break off.
                drop(stream);
            });
        }
    });
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: bad, match: { path_prefix: /bad/ }, upstream: bad }
  - { name: good, upstream: good }
upstreams:
  bad: { targets: [ { address: '@BAD@' } ] }
  good: { targets: [ { address: '@A@' } ] }
",
        &[("BAD", &bad), ("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    let req = http::Request::get("/bad/x")
        .header("host", "x")
        .body(Default::default())
        .unwrap();
    // The head arrived, so the client sees 200, then a body that breaks off.
    if let Ok(reply) = client.send(req).await {
        assert!(
            reply.body.len() < 100,
            "a truncated body was completed: {}",
            reply.body.len()
        );
    }
    // Nothing else is affected.
    for _ in 0..3 {
        assert_eq!(get(&web, "/fine").await.status, 200);
    }
}

// Log waits block a thread: the upstreams need another one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_target_out_and_bring_it_back() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: '@A@' }, { address: '@B@' } ]
    health_check:
      active: { path: /healthz, interval: 50ms, timeout: 500ms, healthy: 2, unhealthy: 2 }
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();
    b.set_healthy(false);
    let started = Instant::now();
    assert!(
        gw.wait_log("target unhealthy", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let detected = started.elapsed();
    assert!(
        detected < Duration::from_secs(4),
        "took {detected:?} to notice"
    );
    let before_b = b.count();
    let mut client = H1::connect(&web).await;
    for _ in 0..20 {
        let reply = client.get("x", "/q").await;
        assert_eq!(
            reply.header("x-upstream"),
            Some("A"),
            "{} {}\n{}",
            reply.status,
            reply.body,
            gw.log_text()
        );
    }
    assert_eq!(b.count(), before_b, "an unhealthy target got traffic");
    let targets = get(&admin, "/upstreams/u/targets").await.json();
    assert_eq!(targets["targets"][1]["healthy"], false, "{targets}");
    let metrics = get(&admin, "/metrics").await.body;
    let gauge = format!(
        "portico_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}} 0",
        b.addr()
    );
    assert!(metrics.contains(&gauge), "{metrics}");

    b.set_healthy(true);
    assert!(
        gw.wait_log("target healthy", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let mut seen_b = false;
    for _ in 0..10 {
        seen_b |= client.get("x", "/q").await.header("x-upstream") == Some("B");
    }
    assert!(seen_b, "the recovered target got no traffic");
}

// Log waits block a thread: the upstreams need another one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_targets_down_answers_503_fast_or_spreads_in_panic_mode() {
    let a = TestUpstream::start("A").await;
    a.set_healthy(false);
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: strict, match: { path_prefix: /strict/ }, upstream: strict }
  - { name: panic, upstream: panicky }
upstreams:
  strict:
    targets: [ { address: '@A@' } ]
    health_check: { active: { path: /healthz, interval: 50ms, unhealthy: 1 } }
  panicky:
    targets: [ { address: '@A@' } ]
    health_check: { active: { path: /healthz, interval: 50ms, unhealthy: 1 }, panic: true }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    assert!(
        gw.wait_log_count("target unhealthy", 2, Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let started = Instant::now();
    let reply = get(&web, "/strict/x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "no_healthy_target");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        get(&web, "/panic").await.status,
        200,
        "panic mode still forwards"
    );
}

#[tokio::test]
async fn circuit_breaker_answers_503_when_full() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: '@A@' } ]
    circuit_breaker: { max_requests: 2 }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let web = web.clone();
            tokio::spawn(async move { get(&web, "/slow/800").await.status })
        })
        .collect();
    a.wait_count(2, Duration::from_secs(5)).await;
    let reply = get(&web, "/third").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "circuit_open");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(
        get(&web, "/after").await.status,
        200,
        "the breaker closes again"
    );
}

#[tokio::test]
async fn sticky_cookie_and_header_hashing_keep_clients_in_place() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let c = TestUpstream::start("C").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: sticky, match: { path_prefix: /sticky/ }, upstream: sticky }
  - { name: hashed, upstream: hashed }
upstreams:
  sticky:
    targets: [ { address: '@A@' }, { address: '@B@' }, { address: '@C@' } ]
    sticky: { cookie: srv, ttl: 10m }
  hashed:
    balance: maglev
    hash_key: header:x-user
    targets: [ { address: '@A@' }, { address: '@B@' }, { address: '@C@' } ]
",
        &[("A", &a.addr()), ("B", &b.addr()), ("C", &c.addr())],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    let first = client.get("x", "/sticky/1").await;
    let cookie = first
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_owned();
    assert!(
        cookie.starts_with("srv=") && cookie.contains("Max-Age=600") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pinned = first.header("x-upstream").unwrap().to_owned();
    let value = cookie.split(';').next().unwrap().to_owned();
    for _ in 0..9 {
        let req = http::Request::get("/sticky/n")
            .header("host", "x")
            .header("cookie", &value)
            .body(Default::default())
            .unwrap();
        let reply = client.send(req).await.unwrap();
        assert_eq!(reply.header("x-upstream"), Some(pinned.as_str()));
        assert!(
            reply.header("set-cookie").is_none(),
            "the cookie is set once"
        );
    }

    let mut by_user = std::collections::HashMap::new();
    let mut spread = std::collections::HashSet::new();
    for round in 0..3 {
        for user in 0..30 {
            let req = http::Request::get("/h")
                .header("host", "x")
                .header("x-user", format!("user-{user}"))
                .body(Default::default())
                .unwrap();
            let got = client
                .send(req)
                .await
                .unwrap()
                .header("x-upstream")
                .unwrap()
                .to_owned();
            spread.insert(got.clone());
            let first = by_user.entry(user).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "user {user} moved in round {round}");
        }
    }
    assert_eq!(spread.len(), 3, "30 users use every target");
}

#[tokio::test]
async fn non_idempotent_requests_are_not_replayed() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: all
    upstream: u
    retry: { attempts: 3, on: [503], backoff: 1ms }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    let reply = client.get("x", "/status/503").await;
    assert_eq!(reply.status, 503);
    assert_eq!(a.count(), 3, "a GET is tried three times");
    let req = http::Request::post("/status/503")
        .header("host", "x")
        .body(Default::default())
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 503);
    assert_eq!(a.count(), 4, "a POST is sent once");
}

#[tokio::test]
async fn mirror_copies_without_slowing_and_cookie_canary_routes() {
    let primary = TestUpstream::start("P").await;
    let shadow = TestUpstream::start("S").await;
    let canary = TestUpstream::start("C").await;
    let (hole, _task) = black_hole().await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: canary, match: { cookies: { canary: 'yes' } }, upstream: canary }
  - { name: stuck, match: { path_prefix: /stuck/ }, upstream: primary, mirror: { upstream: hole } }
  - { name: main, upstream: primary, mirror: { upstream: shadow, percent: 100 } }
upstreams:
  primary: { targets: [ { address: '@P@' } ] }
  shadow: { targets: [ { address: '@S@' } ] }
  canary: { targets: [ { address: '@C@' } ] }
  hole: { targets: [ { address: '@H@' } ] }
",
        &[
            ("P", &primary.addr()),
            ("S", &shadow.addr()),
            ("C", &canary.addr()),
            ("H", &hole),
        ],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    for i in 0..5 {
        let reply = client.get("x", &format!("/copy/{i}")).await;
        assert_eq!(reply.header("x-upstream"), Some("P"));
    }
    shadow.wait_count(5, Duration::from_secs(5)).await;
    let copied: Vec<String> = shadow
        .seen()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert!(copied.contains(&"/copy/4".to_owned()), "{copied:?}");
    // A mirror that never answers does not slow the primary.
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(client.get("x", "/stuck/x").await.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // The canary cookie takes a request to the canary upstream.
    let req = http::Request::get("/c")
        .header("host", "x")
        .header("cookie", "a=1; canary=yes")
        .body(Default::default())
        .unwrap();
    assert_eq!(
        client.send(req).await.unwrap().header("x-upstream"),
        Some("C")
    );
    let req = http::Request::get("/c")
        .header("host", "x")
        .header("cookie", "canary=no")
        .body(Default::default())
        .unwrap();
    assert_eq!(
        client.send(req).await.unwrap().header("x-upstream"),
        Some("P")
    );
}

#[tokio::test]
async fn connection_limit_queues_max_pending_and_refuses_the_rest() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: '@A@' } ]
    circuit_breaker: { max_connections: 1, max_pending: 1 }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let first = {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/slow/600").await.status })
    };
    a.wait_count(1, Duration::from_secs(5)).await;
    let second = {
        let web = web.clone();
        tokio::spawn(async move { get(&web, "/queued").await.status })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = get(&web, "/refused").await;
    assert_eq!(third.status, 503);
    assert_eq!(third.json()["error"], "circuit_open");
    assert!(
        third.json()["message"]
            .as_str()
            .unwrap()
            .contains("max_pending")
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        second.await.unwrap(),
        200,
        "the waiting request got the freed connection"
    );
}
