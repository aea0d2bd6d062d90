//! One exit for every answer: response plugins on portico's own errors, global plugins on
//! unrouted requests, identity headers a client cannot remove, safe retry defaults.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::{H1, Portico, TestUpstream, fill};

/// A loopback port with nothing listening on it.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "x");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::default()).unwrap()
}

const CONFIG: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: alice, api_keys: ['alice-key-123'], groups: [paid] }
plugins:
  - response_headers: { set: { x-global: seen } }
  - ip_restriction: { deny: [203.0.113.0/24], trusted_proxies: [127.0.0.0/8] }
routes:
  - name: keyed
    match: { path_prefix: /keyed/ }
    plugins: [ { key_auth: {} } ]
    upstream: u
  - name: down
    match: { path_prefix: /down/ }
    plugins: [ { response_headers: { set: { x-route: down } } } ]
    upstream: dead
  - name: limited
    match: { path_prefix: /limited/ }
    plugins:
      - cors: { origins: ['https://app.example.com'] }
      - rate_limit: { limit: 1, window: 60s, by: route }
    upstream: u
  - name: json
    match: { path: /json }
    respond: { status: 200, body: '{\"ok\": true}' }
  - name: text
    match: { path: /text }
    respond: { status: 200, body: 'plain words' }
  - name: mock
    match: { path: /mock }
    plugins: [ { respond: { status: 201, body: '[1, 2]' } } ]
    upstream: u
upstreams:
  u: { targets: [ { address: '@U@' } ] }
  dead: { targets: [ { address: '@DEAD@' } ] }
";

async fn start() -> (TestUpstream, Portico) {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(
        CONFIG,
        &[("U", &up.addr()), ("DEAD", &closed_port())],
    ));
    (up, gw)
}

#[tokio::test]
async fn response_plugins_run_on_portico_errors() {
    let (_up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    // A 502 of portico's own still gets the route's response headers; the route's
    // `response_headers` replaces the global one of the same name.
    let r = c.send(req("GET", "/down/x", &[])).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("x-route"), Some("down"));
    assert_eq!(r.header("x-global"), None);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.json()["error"], "upstream_connect_failed");

    // A 429 carries the CORS headers, so a browser page can read why it was refused.
    let mut c = H1::connect(&gw.addr("web")).await;
    let origin = [("origin", "https://app.example.com")];
    let first = c.send(req("GET", "/limited/a", &origin)).await.unwrap();
    assert_eq!(first.status, 200);
    let limited = c.send(req("GET", "/limited/a", &origin)).await.unwrap();
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(limited.header("x-global"), Some("seen"));

    // A 401 from key_auth: response plugins too.
    let r = c.send(req("GET", "/keyed/a", &[])).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-global"), Some("seen"));
}

#[tokio::test]
async fn global_plugins_run_without_a_route() {
    let (up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c.send(req("GET", "/nowhere", &[])).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(
        r.header("x-global"),
        Some("seen"),
        "global response plugins"
    );
    // A global address rule answers before the 404.
    let r = c
        .send(req(
            "GET",
            "/nowhere",
            &[("x-forwarded-for", "203.0.113.9")],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn respond_bodies_get_their_content_type() {
    let (_up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c.send(req("GET", "/json", &[])).await.unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["ok"], true);
    let r = c.send(req("GET", "/text", &[])).await.unwrap();
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = c.send(req("GET", "/mock", &[])).await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn connection_cannot_remove_identity_headers() {
    let (up, gw) = start().await;
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c
        .send(req(
            "GET",
            "/keyed/a",
            &[
                ("x-api-key", "alice-key-123"),
                (
                    "connection",
                    "x-consumer-name, x-consumer-groups, x-forwarded-for, x-request-id",
                ),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "paid");
    assert!(seen.headers.contains_key("x-forwarded-for"));
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(!seen.headers.contains_key("connection"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_costs_no_request_by_default() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    // Two targets, no retry block, no health checks: what operators write first.
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' }, { address: '@B@' } ] }
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let web = gw.addr("web");
    let mut c = H1::connect(&web).await;
    for _ in 0..10 {
        assert_eq!(c.get("x", "/").await.status, 200);
    }
    b.kill();
    // Four clients, 500 requests in all, each on a new connection half of the time.
    let mut clients = Vec::new();
    for n in 0..4 {
        let web = web.clone();
        clients.push(tokio::spawn(async move {
            let mut failed = 0;
            let mut c = H1::connect(&web).await;
            for i in 0..125 {
                if (i + n) % 2 == 0 {
                    c = H1::connect(&web).await;
                }
                let status = tokio::time::timeout(Duration::from_secs(5), c.get("x", "/"))
                    .await
                    .map_or(0, |r| r.status);
                if status != 200 {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for c in clients {
        failed += c.await.unwrap();
    }
    assert_eq!(failed, 0, "requests failed while one target was down");
    assert!(
        gw.wait_log("target ejected", Duration::from_secs(5)),
        "the unreachable target is taken out"
    );
}

#[tokio::test]
async fn a_spent_retry_budget_says_so() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: slow
    upstream: u
    retry: { attempts: 2, on: [timeout], per_try_timeout: 100ms, budget_percent: 0, budget_min: 0 }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    let mut c = H1::connect(&gw.addr("web")).await;
    let r = c.get("x", "/slow/2000").await;
    assert_eq!(r.status, 504, "{}", r.body);
    let body = r.json();
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        body["message"].as_str().unwrap().contains("retry budget"),
        "{body}"
    );
    assert!(gw.wait_log("\"retry_budget_spent\":true", Duration::from_secs(5)));
    assert_eq!(up.count(), 1, "no retry was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_across_workers_never_passes_max_requests() {
    let up = TestUpstream::start("U").await;
    let gw = Portico::start(&fill(
        "\
workers: 2
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: '@U@' } ]
    circuit_breaker: { max_requests: 3 }
",
        &[("U", &up.addr())],
    ));
    let web = gw.addr("web");
    // Forty clients at once, each on its own connection (so both workers take some), each
    // request held 1.5 s by the upstream: at most three may be in flight.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let (web, barrier) = (web.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut c = H1::connect(&web).await;
                barrier.wait().await;
                c.get("x", "/slow/1500").await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.push(c.await.unwrap());
    }
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        passed <= 3,
        "{passed} requests passed a limit of 3: {statuses:?}"
    );
    assert!(passed >= 1, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!(up.count() <= 3);
}
