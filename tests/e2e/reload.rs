//! SIGHUP reload and SIGTERM drain, with connections open and requests in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::attack::rss_kib;
use crate::support::{H1, Portico, TestUpstream, fill, get};

const V1: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: old, bind: 127.0.0.1:0 }
routes:
  - { name: fixed, match: { path: /version }, respond: { status: 200, body: v1 } }
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
";

const V2: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: new, bind: 127.0.0.1:0 }
routes:
  - { name: fixed, match: { path: /version }, respond: { status: 200, body: v2 } }
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
";

#[tokio::test]
async fn reload_swaps_config_and_keeps_connections_and_pools() {
    let a = TestUpstream::start("A").await;
    let v1 = fill(V1, &[("A", &a.addr())]);
    let v2 = fill(V2, &[("A", &a.addr())]);
    let gw = Portico::start(&v1);
    let web = gw.addr("web");
    let old = gw.addr("old");
    let mut client = H1::connect(&web).await;
    assert_eq!(client.get("x", "/version").await.body, "v1");
    let mut on_old = H1::connect(&old).await;
    assert_eq!(on_old.get("x", "/version").await.body, "v1");

    // An upgraded tunnel opened before the reload.
    let mut tunnel = tokio::net::TcpStream::connect(&web).await.unwrap();
    tunnel
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tunnel.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    assert_eq!(client.get("x", "/through").await.status, 200);
    let pooled_peer = a.last().peer;

    // An HTTP/2 connection opened before the reload.
    let h2_stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2_stream),
    )
    .await
    .unwrap();
    tokio::spawn(h2_conn);
    let h2_get =
        |h2: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>| {
            h2.send_request(
                http::Request::get("http://x/version")
                    .body(http_body_util::Empty::new())
                    .unwrap(),
            )
        };
    let reply = crate::support::client::read(h2_get(&mut h2).await.unwrap()).await;
    assert_eq!(reply.body, "v1");

    assert!(gw.reload(&v2), "{}", gw.log_text());
    let reply = crate::support::client::read(h2_get(&mut h2).await.unwrap()).await;
    assert_eq!(
        reply.body, "v2",
        "the h2 connection survived and sees the new config"
    );
    // Same client connection, new config.
    assert_eq!(client.get("x", "/version").await.body, "v2");
    // Same upstream connection: the pool survived.
    assert_eq!(client.get("x", "/through").await.status, 200);
    assert_eq!(a.last().peer, pooled_peer);
    // The tunnel still works.
    tunnel.write_all(b"still here").await.unwrap();
    let n = tunnel.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"still here");
    // The added listener serves; the removed one takes no new connections.
    assert!(gw.wait_log("listening listener=new", Duration::from_secs(5)));
    let new_addr = gw.bound("new").unwrap();
    assert_eq!(get(&new_addr, "/version").await.body, "v2");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(&old).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(on_old);

    let metrics = get(gw.admin.as_deref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(r#"portico_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn invalid_reload_is_refused_and_the_old_config_stays() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(V1, &[("A", &a.addr())]));
    let web = gw.addr("web");
    let bad = "listeners:\n  - { name: web, bind: 127.0.0.1:0 }\nroutes:\n  - { name: r, upstream: ghost }\n";
    assert!(!gw.reload(bad));
    let log = gw.log_text();
    assert!(
        log.contains("portico.yaml:4:26: upstream `ghost` is not defined"),
        "{log}"
    );
    assert_eq!(get(&web, "/version").await.body, "v1");
    let admin = gw.admin.clone().unwrap();
    let health = get(&admin, "/health").await.json();
    assert!(
        health["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("ghost"),
        "{health}"
    );
    let hash = health["config_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 16, "{health}");
    // The history has the start and the refusal; the hash in force is that of the start.
    let reloads = get(&admin, "/reloads").await.json();
    let list = reloads["reloads"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{reloads}");
    assert_eq!(list[0]["trigger"], "start");
    assert_eq!(list[0]["result"], "applied");
    assert_eq!(list[0]["hash"], hash.as_str());
    assert_eq!(list[1]["trigger"], "signal");
    assert_eq!(list[1]["result"], "refused");
    assert!(list[1]["hash"].is_null(), "{reloads}");
    assert!(list[1]["error"].as_str().unwrap().contains("ghost"));
    // A good reload changes the hash everywhere.
    let v2 = fill(V1, &[("A", &a.addr())]).replace("v1", "v2");
    assert!(gw.reload(&v2), "{}", gw.log_text());
    let health = get(&admin, "/health").await.json();
    let new_hash = health["config_hash"].as_str().unwrap().to_owned();
    assert_ne!(new_hash, hash);
    let reloads = get(&admin, "/reloads").await.json();
    assert_eq!(reloads["reloads"][2]["hash"], new_hash.as_str());
    assert_eq!(reloads["reloads"][2]["result"], "applied");
    let metrics = get(&admin, "/metrics").await.body;
    assert!(
        metrics.contains(&format!("portico_config_info{{hash=\"{new_hash}\"}} 1")),
        "{metrics}"
    );
    assert!(!metrics.contains(&hash), "the old hash is gone: {metrics}");
    assert!(health["last_reload_error"].is_null(), "{health}");
    let metrics = get(&admin, "/metrics").await.body;
    assert!(
        metrics.contains(r#"portico_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert_eq!(get(&web, "/version").await.body, "v2");
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(V1, &[("A", &a.addr())]));
    let web = gw.addr("web");
    let web2 = web.clone();
    let slow = tokio::spawn(async move { get(&web2, "/slow/800").await });
    a.wait_count(1, Duration::from_secs(5)).await;
    // The new config answers everything itself: the old request must still reach A.
    let v3 = "listeners:\n  - { name: web, bind: 127.0.0.1:0 }\nroutes:\n  - { name: all, respond: { status: 200, body: v3 } }\n";
    assert!(gw.reload(v3));
    assert_eq!(get(&web, "/x").await.body, "v3");
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow"));
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let template = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@T@' } ] }
";
    let to_a = fill(template, &[("T", &a.addr())]);
    let to_b = fill(template, &[("T", &b.addr())]);
    let gw = Portico::start(&to_a);
    let web = gw.addr("web");
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (web, failures, done, stop) = (
            web.clone(),
            Arc::clone(&failures),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let mut client = H1::connect(&web).await;
            // Bounded: at most 5000 requests or until told to stop.
            for n in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // Half the clients use fresh connections now and then.
                if i % 2 == 0 && n % 50 == 0 {
                    client = H1::connect(&web).await;
                }
                match client
                    .send(
                        http::Request::get("/load")
                            .header("host", "x")
                            .body(Default::default())
                            .unwrap(),
                    )
                    .await
                {
                    Ok(reply) if reply.status == 200 => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        client = H1::connect(&web).await;
                    }
                }
            }
        }));
    }
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(gw.reload(if round % 2 == 0 { &to_b } else { &to_a }));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        done.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        done.load(Ordering::Relaxed)
    );
    assert!(
        a.count() > 0 && b.count() > 0,
        "both configs served traffic"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let a = TestUpstream::start("A").await;
    let mut gw = Portico::start(&fill(V1, &[("A", &a.addr())]));
    let web = gw.addr("web");
    let web2 = web.clone();
    let slow = tokio::spawn(async move { get(&web2, "/slow/700").await });
    a.wait_count(1, Duration::from_secs(5)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate(Duration::from_secs(10));
        (status, gw.log_text())
    });
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "slow"));
    let (status, log) = status.await.unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    assert!(log.contains("draining"), "{log}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&web).await.is_err());
}

/// A config with everything that keeps state or runs in the background: a jwt with a JWKS
/// URL, a rate limit, active health checks and an ACME listener (its CA unreachable, so its
/// renewal task keeps retrying).
const STATEFUL: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      acme: { directory: 'http://127.0.0.1:@CA_PORT@/dir', domains: [a.test], storage: '@ACME@', check_every: 1h }
routes:
  - name: jwt
    match: { path_prefix: /jwt/ }
    plugins: [ { jwt: { jwks_url: '@JWKS@' } } ]
    upstream: u
  - name: limited
    match: { path_prefix: /limited/ }
    plugins: [ { rate_limit: { limit: 1, window: 1h, burst: 2, by: route } } ]
    upstream: u
  - { name: version, match: { path: /version }, respond: { status: 200, body: '@VERSION@' } }
upstreams:
  u:
    targets: [ { address: '@A@' }, { address: '@B@' } ]
    health_check: { active: { path: /health, interval: 200ms } }
";

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `/metrics` until the background task gauge reads `want` (bounded).
async fn wait_tasks(admin: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(
            &get(admin, "/metrics").await.body,
            "portico_background_tasks",
        );
        if now == Some(want) || Instant::now() >= deadline {
            return now.unwrap_or(-1.0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_keep_tasks_memory_keys_and_limits() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let secret = b"jwks-secret-0123456789abcdef";
    let doc = serde_json::json!({"keys": [
        {"kty": "oct", "kid": "k1", "alg": "HS256", "k": crate::jwt::b64url(secret)}
    ]})
    .to_string();
    let (jwks, fetches) = crate::jwt::jwks_server(doc).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ca_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let dir = crate::support::temp_dir("reloads");
    let acme = dir.join("acme").display().to_string();
    let config = |version: usize| {
        fill(
            STATEFUL,
            &[
                ("A", &a.addr()),
                ("B", &b.addr()),
                ("JWKS", &jwks),
                ("CA_PORT", &ca_port),
                ("ACME", &acme),
                ("VERSION", &format!("v{version}")),
            ],
        )
    };
    let gw = Portico::start_in(&dir, &config(0));
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());
    let token = crate::jwt::hs(
        Some("k1"),
        &crate::jwt::claims(serde_json::json!({})),
        secret,
    );
    let jwt_get = || {
        let web = web.clone();
        let req = http::Request::get("/jwt/x")
            .header("host", "x")
            .header("authorization", format!("Bearer {token}"))
            .body(Default::default())
            .unwrap();
        async move { H1::connect(&web).await.send(req).await.unwrap().status }
    };
    assert_eq!(jwt_get().await, 200);
    let mut c = H1::connect(&web).await;
    assert_eq!(c.get("x", "/limited/1").await.status, 200);
    assert_eq!(c.get("x", "/limited/2").await.status, 200);
    assert_eq!(c.get("x", "/limited/3").await.status, 429);

    // The DNS resolver, two health checks, one JWKS refresher, one ACME renewal.
    assert_eq!(wait_tasks(&admin, 5.0).await, 5.0);
    let rss_before = rss_kib(gw.pid());
    let probes = |up: &TestUpstream| {
        up.seen()
            .iter()
            .filter(|s| s.uri.path() == "/health")
            .count()
    };
    let probes_before = probes(&a);
    let started = Instant::now();

    for version in 1..=50 {
        assert!(
            tokio::task::block_in_place(|| gw.reload(&config(version))),
            "{}",
            gw.log_text()
        );
        assert_eq!(c.get("x", "/version").await.body, format!("v{version}"));
        assert_eq!(jwt_get().await, 200, "reload {version}");
    }
    // A kept target keeps its check task: no fresh probe per reload, only the 200 ms cadence.
    let cadence = (started.elapsed().as_millis() / 200) as usize;
    assert!(
        probes(&a) - probes_before <= cadence + 3,
        "{} probes in {:?}: each reload restarted the checks",
        probes(&a) - probes_before,
        started.elapsed()
    );
    assert_eq!(
        c.get("x", "/limited/4").await.status,
        429,
        "the exhausted limit was reset by a reload"
    );
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        1,
        "the JWKS was fetched again"
    );
    assert_eq!(
        wait_tasks(&admin, 5.0).await,
        5.0,
        "background tasks leaked"
    );
    let rss_after = rss_kib(gw.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over 50 reloads"
    );

    // Without the ACME listener, its renewal goes with it; without the jwt, its refresher.
    let mut fewer = config(51);
    let secure = fewer.find("  - name: secure").unwrap();
    let routes = fewer.find("routes:").unwrap();
    fewer.replace_range(secure..routes, "");
    assert!(tokio::task::block_in_place(|| gw.reload(&fewer)));
    assert_eq!(
        wait_tasks(&admin, 4.0).await,
        4.0,
        "the ACME renewal outlived its listener"
    );
    let fewer = fewer.replace("plugins: [ { jwt: { jwks_url: '", "# '");
    assert!(tokio::task::block_in_place(|| gw.reload(&fewer)), "{fewer}");
    assert_eq!(
        wait_tasks(&admin, 3.0).await,
        3.0,
        "the JWKS refresher outlived its jwt"
    );
    let fewer = fewer.replace("    health_check:", "    # health_check:");
    assert!(tokio::task::block_in_place(|| gw.reload(&fewer)), "{fewer}");
    assert_eq!(
        wait_tasks(&admin, 1.0).await,
        1.0,
        "health checks outlived their config"
    );
}

/// `/metrics` without the reload counter, which a refused reload does move.
fn series(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.contains("config_reloads") && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name).to_owned())
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_leaves_metric_series_and_tasks_as_they_were() {
    let a = TestUpstream::start("A").await;
    let good = fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
",
        &[("A", &a.addr())],
    );
    // New routes, a checked upstream and a JWKS URL, refused for a dangling reference.
    let bad = fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
  - name: fresh
    match: { path_prefix: /fresh/ }
    plugins: [ { jwt: { jwks_url: 'http://127.0.0.1:9/jwks.json' } } ]
    upstream: checked
  - { name: broken, upstream: ghost }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
  checked:
    targets: [ { address: '@A@' } ]
    health_check: { active: { path: /health, interval: 100ms } }
",
        &[("A", &a.addr())],
    );
    let gw = Portico::start(&good);
    let admin = gw.admin.clone().unwrap();
    assert_eq!(get(&gw.addr("web"), "/x").await.status, 200);
    let before = get(&admin, "/metrics").await.body;
    // The DNS resolver alone.
    assert_eq!(
        metric(&before, "portico_background_tasks"),
        Some(1.0),
        "{before}"
    );
    assert!(!tokio::task::block_in_place(|| gw.reload(&bad)));
    let after = get(&admin, "/metrics").await.body;
    assert_eq!(series(&before), series(&after), "{after}");
    assert_eq!(metric(&after, "portico_background_tasks"), Some(1.0));
    assert_eq!(
        gw.count_lines("target healthy"),
        0,
        "a refused config ran checks"
    );
    assert!(
        !gw.log_text().contains("JWKS"),
        "a refused config fetched keys"
    );
}
