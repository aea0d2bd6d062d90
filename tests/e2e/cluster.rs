//! `rate_limit` with `scope: cluster`: three portico nodes count together in a real
//! `redis-server`; the configured fallback while Redis is away; back to Redis after.

use std::time::{Duration, Instant};

use http_body_util::Full;

use crate::l4::Redis;
use crate::support::{H1, Portico, TestUpstream, fill, get};

fn config(redis_port: u16, up: &str, fallback: &str) -> String {
    fill(
        "\
workers: 1
admin: { listen: 127.0.0.1:0 }
cluster:
  redis: { url: 'redis://127.0.0.1:@REDIS@', fallback: @FALLBACK@, timeout: 200ms }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: api
    upstream: u
    plugins: [ { rate_limit: { limit: 10, window: 1m, by: route, scope: cluster } } ]
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
",
        &[
            ("REDIS", &redis_port.to_string()),
            ("UP", up),
            ("FALLBACK", fallback),
        ],
    )
}

fn request() -> http::Request<Full<bytes::Bytes>> {
    http::Request::get("/x")
        .header("host", "api.test")
        .body(Full::default())
        .unwrap()
}

/// `n` requests on one connection to `addr`: how many passed, and the statuses seen.
async fn burst(addr: String, n: usize) -> Vec<u16> {
    let mut client = H1::connect(&addr).await;
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(client.send(request()).await.unwrap().status);
    }
    statuses
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn three_nodes_share_one_limit_and_fall_back_while_redis_is_away() {
    let mut redis = Redis::start();
    let up = TestUpstream::start("A").await;
    let nodes: Vec<Portico> = (0..3)
        .map(|_| Portico::start(&config(redis.port, &up.addr(), "local")))
        .collect();

    // 3 nodes × 3 connections × 10 requests, all at once, against one limit of 10 a minute.
    let started = Instant::now();
    let mut load = Vec::new();
    for node in &nodes {
        for _ in 0..3 {
            load.push(tokio::spawn(burst(node.addr("web"), 10)));
        }
    }
    let mut statuses = Vec::new();
    for task in load {
        statuses.extend(task.await.unwrap());
    }
    let took = started.elapsed();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(passed + refused, 90, "{statuses:?}");
    // The bucket refills one every 6 s: within the run, at most one more.
    let refills = (took.as_secs_f64() / 6.0).floor() as usize;
    assert!(
        (10..=10 + refills).contains(&passed),
        "{passed} passed of 90 in {took:?} with a shared limit of 10"
    );
    for node in &nodes {
        let text = get(node.admin.as_ref().unwrap(), "/metrics").await.body;
        assert!(
            metric(
                &text,
                r#"portico_cluster_limit_decisions_total{by="redis"}"#
            ) >= 30,
            "{text}"
        );
    }

    // Headers as the local limiter writes them.
    let r = H1::connect(&nodes[0].addr("web"))
        .await
        .send(request())
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1)
    );
    assert_eq!(r.header("ratelimit-limit"), Some("10"));
    assert_eq!(r.header("ratelimit-policy"), Some("10;w=60"));

    // Redis away: each node falls back to its own limiter, with the same limit.
    redis.kill();
    let local = burst(nodes[1].addr("web"), 12).await;
    assert_eq!(local.iter().filter(|s| **s == 200).count(), 10, "{local:?}");
    assert_eq!(local.iter().filter(|s| **s == 429).count(), 2, "{local:?}");
    let text = get(nodes[1].admin.as_ref().unwrap(), "/metrics").await.body;
    assert!(
        metric(
            &text,
            r#"portico_cluster_limit_decisions_total{by="local"}"#
        ) >= 12,
        "{text}"
    );

    // Redis back (empty: no persistence): decisions go to it again within seconds.
    let _redis = Redis::start_on(redis.port);
    let admin = nodes[2].admin.clone().unwrap();
    let before = metric(
        &get(&admin, "/metrics").await.body,
        r#"portico_cluster_limit_decisions_total{by="redis"}"#,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = H1::connect(&nodes[2].addr("web"))
            .await
            .send(request())
            .await
            .unwrap();
        let now = metric(
            &get(&admin, "/metrics").await.body,
            r#"portico_cluster_limit_decisions_total{by="redis"}"#,
        );
        if now > before {
            assert_eq!(r.status, 200, "a fresh Redis has the whole allowance");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decisions never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn fallback_closed_refuses_and_open_lets_through() {
    let up = TestUpstream::start("A").await;
    // Nothing listens there.
    let gone = crate::l4::free_port();
    let closed = Portico::start(&config(gone, &up.addr(), "closed"));
    let r = H1::connect(&closed.addr("web"))
        .await
        .send(request())
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("rate_limit_unavailable"), "{}", r.body);
    let open = Portico::start(&config(gone, &up.addr(), "open"));
    let statuses = burst(open.addr("web"), 12).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let text = get(open.admin.as_ref().unwrap(), "/metrics").await.body;
    assert_eq!(
        metric(&text, r#"portico_cluster_limit_decisions_total{by="open"}"#),
        12,
        "{text}"
    );
}

#[tokio::test]
async fn scope_cluster_without_redis_is_refused_at_its_position() {
    let dir = crate::support::portico::temp_dir("cluster-bad");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: r\n    respond: { status: 200 }\n    plugins: [ { rate_limit: { limit: 1, window: 1s, scope: cluster } } ]\n",
    )
    .unwrap();
    let (code, out, err) =
        crate::support::portico::cli(&["validate", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("bad.yaml:4:"), "{text}");
    assert!(text.contains("set `cluster.redis`"), "{text}");
}
