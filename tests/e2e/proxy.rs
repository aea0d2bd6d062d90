//! Forwarding, balancing, routing, actions, headers and protocols through the real proxy.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::{H1, Portico, TestUpstream, fill, get, h2_get, raw, statuses};

const TWO_UPSTREAMS: &str = "\
workers: 2
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: admin-area
    match: { path_prefix: /admin/ }
    respond: { status: 200, body: admin-route }
  - name: a-area
    match: { path_prefix: /a/ }
    upstream: pair
  - name: weighted
    match: { path_prefix: /weighted/ }
    upstream: weighted
  - name: api
    match: { hosts: ['*.example.com'], path_prefix: /api/ }
    rewrite: { strip_prefix: /api }
    plugins:
      - request_headers: { set: { x-from-route: api }, remove: [x-drop-me] }
      - response_headers: { add: { x-route: api } }
    upstream: pair
  - name: v1
    match: { path_prefix: /v1/ }
    rewrite: { replace_prefix: /v2/ }
    upstream: pair
  - name: old
    match: { path_regex: '/old/[0-9]+' }
    rewrite: { regex: '^/old/([0-9]+)$', replace: '/new/$1' }
    upstream: pair
  - name: canary
    match: { path_prefix: /split/ }
    split: [ { upstream: only-a, weight: 3 }, { upstream: only-b, weight: 1 } ]
  - name: moved
    match: { path_prefix: /moved/ }
    redirect: { to: 'https://{host}{uri}', status: 301 }
  - name: fixed
    match: { path: /fixed, methods: [GET, HEAD] }
    respond: { status: 201, body: made here, headers: { x-fixed: yes } }
  - name: everything
    upstream: pair
upstreams:
  pair:
    targets: [ { address: '@A@' }, { address: '@B@' } ]
  weighted:
    targets: [ { address: '@A@', weight: 1 }, { address: '@B@', weight: 3 } ]
  only-a:
    targets: [ { address: '@A@' } ]
  only-b:
    targets: [ { address: '@B@' } ]
";

async fn two() -> (TestUpstream, TestUpstream, Portico) {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&fill(TWO_UPSTREAMS, &[("A", &a.addr()), ("B", &b.addr())]));
    (a, b, gw)
}

#[tokio::test]
async fn round_robin_and_weights() {
    let (a, b, gw) = two().await;
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let reply = client.get("example.com", "/x").await;
        assert_eq!(reply.status, 200);
        order.push(reply.header("x-upstream").unwrap().to_owned());
    }
    assert_eq!(order, ["A", "B", "A", "B", "A", "B"]);
    assert_eq!((a.count(), b.count()), (3, 3));

    let mut seen_b = 0;
    for _ in 0..40 {
        if client
            .get("example.com", "/weighted/x")
            .await
            .header("x-upstream")
            == Some("B")
        {
            seen_b += 1;
        }
    }
    assert_eq!(seen_b, 30, "weights 1:3 give B three in four");
}

#[tokio::test]
async fn split_follows_weights() {
    let (a, b, gw) = two().await;
    let mut client = H1::connect(&gw.addr("web")).await;
    for _ in 0..40 {
        assert_eq!(client.get("example.com", "/split/x").await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (30, 10));
    let metrics = crate::support::get(gw.admin.as_deref().unwrap(), "/metrics")
        .await
        .body;
    assert!(metrics.contains(r#"portico_requests_total{listener="web",route="canary",upstream="only-a",status="200"} 30"#), "{metrics}");
    assert!(metrics.contains(r#"portico_requests_total{listener="web",route="canary",upstream="only-b",status="200"} 10"#), "{metrics}");
}

#[tokio::test]
async fn headers_for_the_hop() {
    let (a, b, gw) = two().await;
    let mut client = H1::connect(&gw.addr("web")).await;
    let req = Request::get("/hdr")
        .header("host", "Shop.Example.com")
        .header("connection", "x-secret")
        .header("x-secret", "hop only")
        .header("keep-alive", "timeout=1")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-id-1")
        .body(Full::default())
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    // Response: hop-by-hop gone, Via and request id present.
    assert_eq!(reply.header("x-request-id"), Some("client-id-1"));
    assert_eq!(reply.header("via"), Some("1.1 portico"));
    assert!(
        reply.header("x-hop").is_none(),
        "a field named in the upstream's Connection leaked"
    );
    assert!(reply.header("keep-alive").is_none());
    let seen = if a.count() > 0 { a.last() } else { b.last() };
    let h = &seen.headers;
    assert_eq!(h["host"], "Shop.Example.com", "Host is preserved");
    assert!(
        !h.contains_key("x-secret")
            && !h.contains_key("keep-alive")
            && !h.contains_key("proxy-authorization")
    );
    assert!(!h.contains_key("connection") || h["connection"] == "keep-alive");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "Shop.Example.com");
    assert_eq!(h["via"], "1.1 portico");
    assert_eq!(h["x-request-id"], "client-id-1");

    // An invalid client id is replaced, and the new one reaches the upstream.
    let req = Request::get("/hdr2")
        .header("host", "a")
        .header("x-request-id", "bad id!")
        .body(Full::default())
        .unwrap();
    let reply = client.send(req).await.unwrap();
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let seen = [a.seen(), b.seen()].concat();
    assert!(
        seen.iter()
            .any(|s| s.headers["x-request-id"] == id.as_str())
    );
}

#[tokio::test]
async fn routes_hosts_rewrites_and_plugins() {
    let (a, b, gw) = two().await;
    let mut client = H1::connect(&gw.addr("web")).await;
    let last = || {
        let mut all = [a.seen(), b.seen()].concat();
        all.sort_by_key(|s| s.headers.get("x-request-id").map(|v| v.as_bytes().to_vec()));
        all
    };
    let req = Request::get("/api/items?q=1")
        .header("host", "shop.example.com")
        .header("x-drop-me", "1")
        .body(Full::default())
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-route"), Some("api"));
    let seen = last()
        .into_iter()
        .find(|s| s.uri.path() == "/items")
        .expect("strip_prefix");
    assert_eq!(seen.uri.query(), Some("q=1"));
    assert_eq!(seen.headers["x-from-route"], "api");
    assert!(!seen.headers.contains_key("x-drop-me"));

    // The wildcard does not match the bare domain: falls to the catch-all, path untouched.
    let reply = client.get("example.com", "/api/items").await;
    assert!(reply.body.ends_with(" /api/items"), "{}", reply.body);

    let reply = client.get("x", "/v1/things").await;
    assert!(reply.body.ends_with(" /v2/things"), "{}", reply.body);
    let reply = client.get("x", "/old/42").await;
    assert!(reply.body.ends_with(" /new/42"), "{}", reply.body);

    let reply = client.get("x", "/fixed").await;
    assert_eq!((reply.status, reply.body.as_str()), (201, "made here"));
    assert_eq!(reply.header("x-fixed"), Some("yes"));
    let head = Request::head("/fixed")
        .header("host", "x")
        .body(Full::default())
        .unwrap();
    let reply = client.send(head).await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (201, ""));

    let reply = client.get("shop.example.com:8080", "/moved/a?b=c").await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.header("location"),
        Some("https://shop.example.com/moved/a?b=c")
    );
}

#[tokio::test]
async fn path_normalisation_cannot_reach_a_neighbour() {
    let (a, b, gw) = two().await;
    let web = gw.addr("web");
    for (path, expect_route_admin) in [
        ("/a/%2e%2e/admin/x", true),
        ("/a/../admin/x", true),
        ("/a/%2E%2e/admin/x", true),
        ("/a//./b", false),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw(&web, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(statuses(&out), vec![200], "{out}");
        assert_eq!(
            out.contains("admin-route"),
            expect_route_admin,
            "{path}: {out}"
        );
    }
    // What the router matched is what the upstream receives.
    let seen: Vec<String> = [a.seen(), b.seen()]
        .concat()
        .iter()
        .map(|s| s.uri.path().to_owned())
        .collect();
    assert_eq!(seen, vec!["/a/b".to_owned()]);
    // An escaped slash is a separator, as the backend would read it (tests/e2e/paths.rs has
    // the rest); bad escapes are refused.
    let out = raw(
        &web,
        b"GET /a/..%2Fadmin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.contains("admin-route"), "{out}");
    let out = raw(
        &web,
        b"GET /a/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&out), vec![400], "{out}");
}

#[tokio::test]
async fn errors_are_json_with_request_id() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let slow = TestUpstream::start("slow").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: dead, match: { path_prefix: /dead/ }, upstream: dead }
  - { name: slow, match: { path_prefix: /slow/ }, upstream: slow, timeout: 200ms }
  - { name: nodns, match: { path_prefix: /nodns/ }, upstream: nodns }
  - { name: only, match: { path: /only }, respond: { status: 200 } }
upstreams:
  dead: { targets: [ { address: '@DEAD@' } ] }
  slow: { targets: [ { address: '@SLOW@' } ] }
  nodns: { targets: [ { address: 'no-such-host.invalid:80' } ] }
",
        &[("DEAD", &dead), ("SLOW", &slow.addr())],
    ));
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    for (path, status, code) in [
        ("/nowhere", 404, "no_route"),
        ("/dead/x", 502, "upstream_connect_failed"),
        ("/slow/2000", 504, "upstream_timeout"),
        ("/nodns/x", 503, "no_healthy_target"),
    ] {
        let started = std::time::Instant::now();
        let reply = client.get("x", path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"], code);
        assert_eq!(body["request_id"], reply.header("x-request-id").unwrap());
        assert!(body["message"].as_str().unwrap().len() > 5);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // The connection survived every error.
    assert_eq!(client.get("x", "/only").await.status, 200);
}

#[tokio::test]
async fn h2c_downstream_and_http2_upstream() {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: h1, match: { path_prefix: /h1/ }, upstream: h1 }
  - { name: h2, match: { path_prefix: /h2/ }, upstream: h2 }
upstreams:
  h1: { targets: [ { address: '@A@' } ] }
  h2: { protocol: http2, targets: [ { address: '@A@' } ] }
",
        &[("A", &a.addr())],
    ));
    let web = gw.addr("web");
    let reply = h2_get(&web, "api.test", "/h1/x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    let seen = a.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        seen.headers["host"], "api.test",
        "the h2 authority becomes Host"
    );
    assert_eq!(seen.headers["via"], "2 portico");

    let reply = get(&web, "/h2/y").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = a.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri.path(), "/h2/y");
    // Several h2 requests share one upstream connection without trouble.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let web = web.clone();
        tasks.push(tokio::spawn(async move {
            h2_get(&web, "api.test", &format!("/h2/{i}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn pipelining_head_204_304_and_trailers() {
    let (_a, _b, gw) = two().await;
    let web = gw.addr("web");
    let out = raw(
        &web,
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /p2 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: x\r\n\r\nGET /p5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&out), vec![200, 200, 204, 304, 200], "{out}");
    let bodies: Vec<&str> = out.split("HTTP/1.1 ").collect();
    assert!(bodies[1].ends_with(" /p1"), "{}", bodies[1]);
    assert!(
        bodies[2].ends_with("\r\n\r\n"),
        "HEAD has no body: {}",
        bodies[2]
    );
    assert!(bodies[5].ends_with(" /p5"));

    // Trailers pass when the client accepts them.
    let mut client = H1::connect(&web).await;
    let req = Request::get("/trailers")
        .header("host", "x")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let resp = client.send_raw(req).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body"));
}

#[tokio::test]
async fn expect_100_continue_and_upgrade() {
    let (_a, _b, gw) = two().await;
    let web = gw.addr("web");
    let mut stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    // The echo upstream may answer before the body arrives, so the final head can come in the
    // same read as the interim one.
    let mut out = interim.clone();
    while !out.contains("hello") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {out}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let interim_at = out.find("HTTP/1.1 100 Continue").expect("interim response");
    let final_at = out.find("HTTP/1.1 200").expect("final response");
    assert!(interim_at < final_at, "{out}");

    // An upgrade becomes a tunnel to the upstream.
    let mut stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping over the tunnel");
}

#[tokio::test]
async fn metrics_and_access_log() {
    let (_a, _b, gw) = two().await;
    let web = gw.addr("web");
    let mut client = H1::connect(&web).await;
    for _ in 0..3 {
        client.get("x", "/m").await;
    }
    client.get("x", "/fixed").await;
    let admin = gw.admin.clone().unwrap();
    let metrics = get(&admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    assert!(text.contains(r#"portico_requests_total{listener="web",route="everything",upstream="pair",status="200"} 3"#), "{text}");
    assert!(
        text.contains(
            r#"portico_requests_total{listener="web",route="fixed",upstream="",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"portico_request_duration_seconds_count{route="everything",upstream="pair"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"portico_connections_active{listener="web"}"#),
        "{text}"
    );
    assert!(!text.contains("status=\"404\"} 0"), "no empty series");

    let health = get(&admin, "/health").await;
    assert_eq!(health.json()["status"], "ok");
    let config = get(&admin, "/config").await.json();
    assert_eq!(config["listeners"][0]["name"], "web");

    assert!(
        gw.wait_log_count("ACCESS {", 4, Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let line = gw
        .lines()
        .into_iter()
        .find(|l| l.contains("\"route\":\"fixed\""))
        .unwrap();
    let entry: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("ACCESS ")).unwrap();
    assert_eq!(entry["status"], 201);
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/fixed");
    assert_eq!(entry["listener"], "web");
    assert!(entry["request_id"].as_str().unwrap().len() == 32);
}

#[tokio::test]
async fn least_request_avoids_the_busy_target() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: r, upstream: u }
upstreams:
  u:
    balance: least_request
    targets: [ { address: '@A@' }, { address: '@B@' } ]
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let web = gw.addr("web");
    // Two slow requests occupy both targets' slots unevenly: the first lands somewhere,
    // then every quick request must avoid that busy target.
    let web2 = web.clone();
    let slow = tokio::spawn(async move { get(&web2, "/slow/1500").await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = if a.count() == 1 { "A" } else { "B" };
    let mut client = H1::connect(&web).await;
    for _ in 0..10 {
        let reply = client.get("x", "/q").await;
        assert_ne!(reply.header("x-upstream"), Some(busy));
    }
    assert_eq!(slow.await.unwrap().status, 200);
}
