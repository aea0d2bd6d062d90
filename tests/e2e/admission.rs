//! Listener admission through the binary: connections and request rates per client address,
//! and load shedding with a fixed and an adaptive limit, against real upstreams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::client::{H1, Reply, read};
use crate::support::udp::metric;
use crate::support::{Portico, TestUpstream, fill, get};

/// A TCP connection to `addr` from the loopback address `from` (all of 127/8 is local).
async fn connect_from(from: [u8; 4], addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("loopback source address");
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// A keep-alive HTTP/1.1 client on `stream`.
async fn h1_on(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> Reply {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header("host", "example.com")
        .body(Full::default())
        .unwrap();
    read(sender.send_request(req).await.unwrap()).await
}

/// Writes a request and reads: `true` when the server closed without answering within `wait`.
async fn closed_unanswered(stream: &mut TcpStream, wait: Duration) -> bool {
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn metrics(gw: &Portico) -> String {
    get(gw.admin.as_deref().unwrap(), "/metrics").await.body
}

const PER_IP: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: @LIMITS@
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

#[tokio::test]
async fn the_connection_past_the_per_ip_limit_is_closed_and_other_addresses_connect() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        PER_IP,
        &[("UP", &up.addr()), ("LIMITS", "{ connections_per_ip: 2 }")],
    ));
    let addr = gw.addr("web");
    let mut first = h1_on(connect_from([127, 0, 0, 1], &addr).await).await;
    let mut second = h1_on(connect_from([127, 0, 0, 1], &addr).await).await;
    assert_eq!(send(&mut first, "/a").await.status, 200);
    assert_eq!(send(&mut second, "/b").await.status, 200);
    // The third from 127.0.0.1 is closed at accept, unanswered.
    let mut third = connect_from([127, 0, 0, 1], &addr).await;
    assert!(
        closed_unanswered(&mut third, Duration::from_secs(5)).await,
        "a third connection from 127.0.0.1 was served"
    );
    // Another address is its own client.
    let mut other = h1_on(connect_from([127, 0, 0, 2], &addr).await).await;
    assert_eq!(send(&mut other, "/c").await.status, 200);
    // A closed connection gives its place back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let mut again = connect_from([127, 0, 0, 1], &addr).await;
        if !closed_unanswered(&mut again, Duration::from_millis(500)).await {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(
        served,
        "the place of a closed connection was not given back"
    );
    assert_eq!(send(&mut second, "/d").await.status, 200);
    let text = metrics(&gw).await;
    assert!(
        metric(
            &text,
            r#"portico_connections_refused_total{listener="web",reason="per_ip"}"#
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_proxy_protocol_listener_limits_the_conveyed_address() {
    let up = TestUpstream::start("up").await;
    let config = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: web
    bind: 127.0.0.1:0
    proxy_protocol: { trusted: [127.0.0.1/32] }
    limits: { connections_per_ip: 1 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";
    let gw = Portico::start(&fill(config, &[("UP", &up.addr())]));
    let addr = gw.addr("web");
    let via = |client: &str| format!("PROXY TCP4 {client} 192.0.2.1 40000 80\r\n");
    // Two clients behind one proxy address: each is counted apart.
    let mut a = TcpStream::connect(&addr).await.unwrap();
    a.write_all(via("198.51.100.1").as_bytes()).await.unwrap();
    let mut a = h1_on(a).await;
    assert_eq!(send(&mut a, "/a").await.status, 200);
    let mut b = TcpStream::connect(&addr).await.unwrap();
    b.write_all(via("198.51.100.2").as_bytes()).await.unwrap();
    let mut b = h1_on(b).await;
    assert_eq!(send(&mut b, "/b").await.status, 200);
    // A second connection for 198.51.100.1 is closed once its header is read.
    let mut again = TcpStream::connect(&addr).await.unwrap();
    again
        .write_all(via("198.51.100.1").as_bytes())
        .await
        .unwrap();
    assert!(closed_unanswered(&mut again, Duration::from_secs(5)).await);
    assert_eq!(send(&mut a, "/c").await.status, 200);
}

#[tokio::test]
async fn the_request_rate_per_ip_answers_429_with_retry_after_and_recovers() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        PER_IP,
        &[
            ("UP", &up.addr()),
            ("LIMITS", "{ requests_per_ip: { limit: 2, window: 1s } }"),
        ],
    ));
    let addr = gw.addr("web");
    let mut client = H1::connect(&addr).await;
    assert_eq!(client.get("example.com", "/1").await.status, 200);
    assert_eq!(client.get("example.com", "/2").await.status, 200);
    let refused = client.get("example.com", "/3").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"], "rate_limited");
    assert!(refused.header("x-request-id").is_some());
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(up.count(), 2, "a refused request reached the upstream");
    // Another address has its own budget.
    let mut other = h1_on(connect_from([127, 0, 0, 2], &addr).await).await;
    assert_eq!(send(&mut other, "/other").await.status, 200);
    // After Retry-After the client is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(client.get("example.com", "/4").await.status, 200);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            r#"portico_requests_refused_total{listener="web",reason="per_ip"}"#
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn each_http2_stream_counts_as_a_request() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        PER_IP,
        &[
            ("UP", &up.addr()),
            ("LIMITS", "{ requests_per_ip: { limit: 2, window: 10s } }"),
        ],
    ));
    let addr = gw.addr("web");
    let stream = TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for n in 0..3 {
        let req = Request::get(format!("http://example.com/h2/{n}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let reply = read(sender.send_request(req).await.unwrap()).await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.json()["error"], "rate_limited");
            let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
}

const OVERLOAD: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: web
    bind: 127.0.0.1:0
    overload: @OVERLOAD@
routes:
  - name: health
    match: { path: /healthz }
    respond: { status: 200, body: ok }
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

#[tokio::test]
async fn past_max_in_flight_a_request_waits_the_queue_timeout_then_gets_503_overloaded() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        OVERLOAD,
        &[
            ("UP", &up.addr()),
            ("OVERLOAD", "{ max_in_flight: 2, queue_timeout: 300ms }"),
        ],
    ));
    let addr = gw.addr("web");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move { get(&addr, "/slow/2000").await })
        })
        .collect();
    up.wait_count(2, Duration::from_secs(5)).await;
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"portico_overload_in_flight{listener="web"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"portico_overload_limit{listener="web"}"#),
        2.0
    );
    // A health check is never shed.
    let started = Instant::now();
    assert_eq!(get(&addr, "/healthz").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The third waits in the queue, then is refused.
    let started = Instant::now();
    let third = get(&addr, "/slow/10").await;
    let waited = started.elapsed();
    assert_eq!(third.status, 503, "{}", third.body);
    assert_eq!(third.json()["error"], "overloaded");
    assert_eq!(third.header("retry-after"), Some("1"));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "refused after {waited:?}"
    );
    for first in slow {
        assert_eq!(first.await.unwrap().status, 200);
    }
    assert_eq!(up.count(), 2, "the shed request reached the upstream");
    // The places are given back.
    assert_eq!(get(&addr, "/after").await.status, 200);
    let text = metrics(&gw).await;
    assert_eq!(
        metric(
            &text,
            r#"portico_requests_refused_total{listener="web",reason="overloaded"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"portico_overload_in_flight{listener="web"}"#),
        0.0
    );
}

#[tokio::test]
async fn a_queued_request_gets_a_place_that_opens_within_the_queue_timeout() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        OVERLOAD,
        &[
            ("UP", &up.addr()),
            ("OVERLOAD", "{ max_in_flight: 1, queue_timeout: 5s }"),
        ],
    ));
    let addr = gw.addr("web");
    let first = {
        let addr = addr.clone();
        tokio::spawn(async move { get(&addr, "/slow/300").await })
    };
    up.wait_count(1, Duration::from_secs(5)).await;
    let second = get(&addr, "/second").await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(first.await.unwrap().status, 200);
}

/// `portico_overload_limit` of listener `web`, polled until `ok` holds (bounded).
async fn wait_limit(gw: &Portico, within: Duration, ok: impl Fn(f64) -> bool) -> (bool, Vec<f64>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let text = metrics(gw).await;
        let limit = metric(&text, r#"portico_overload_limit{listener="web"}"#);
        seen.push(limit);
        if ok(limit) {
            return (true, seen);
        }
        if Instant::now() > deadline {
            return (false, seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_adaptive_limit_falls_when_upstream_latency_rises_and_recovers_when_it_falls() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(
        OVERLOAD,
        &[
            ("UP", &up.addr()),
            (
                "OVERLOAD",
                "{ max_in_flight: 24, queue_timeout: 20s, adaptive: \
                 { initial_limit: 8, min_limit: 2, interval: 100ms, tolerance: 2 } }",
            ),
        ],
    ));
    let addr = gw.addr("web");
    // Twelve clients, each one request after another, at the latency `delay` says.
    let delay = Arc::new(AtomicU64::new(50));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (addr, delay, stop) = (addr.clone(), Arc::clone(&delay), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut client = H1::connect(&addr).await;
                let mut statuses = Vec::new();
                // Bounded: at most 2000 requests or until told to stop.
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let path = format!("/slow/{}", delay.load(Ordering::Relaxed));
                    statuses.push(client.get("example.com", &path).await.status);
                }
                statuses
            })
        })
        .collect();
    // At 50 ms the limit grows from its initial 8 with the demand.
    let (grew, seen) = wait_limit(&gw, Duration::from_secs(10), |l| l >= 12.0).await;
    assert!(grew, "the limit did not grow at steady latency: {seen:?}");
    // Ten times the latency: it falls towards min_limit.
    delay.store(500, Ordering::Relaxed);
    let (fell, seen) = wait_limit(&gw, Duration::from_secs(15), |l| l <= 4.0).await;
    assert!(fell, "the limit did not fall when latency rose: {seen:?}");
    eprintln!("adaptive limit while latency rose: {seen:?}");
    // Back to 50 ms: it recovers.
    delay.store(50, Ordering::Relaxed);
    let (recovered, seen) = wait_limit(&gw, Duration::from_secs(15), |l| l >= 10.0).await;
    assert!(recovered, "the limit did not recover: {seen:?}");
    eprintln!("adaptive limit while recovering: {seen:?}");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let statuses = client.await.unwrap();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
}

#[test]
fn bad_admission_keys_are_refused_with_their_place() {
    let dir = crate::support::temp_dir("admission-keys");
    let file = dir.join("portico.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { ipv6_prefix: 0, requests_per_ip: { limit: 0, window: 1s } }
    overload: { max_in_flight: 2, adaptive: { min_limit: 5 } }
  - name: db
    bind: 127.0.0.1:0
    protocol: tcp
    upstream: u
    overload: { max_in_flight: 2 }
routes:
  - { name: all, respond: { status: 200 } }
upstreams:
  u: { targets: [ { address: '127.0.0.1:1' } ] }
",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (code, _, stderr) = crate::support::cli(&["validate", "-c", &file]);
    assert_ne!(code, 0);
    for want in [
        format!("{file}:3:11: limits.ipv6_prefix must be from 1 to 128"),
        format!("{file}:4:57: requests_per_ip.limit must be at least 1"),
        format!("{file}:5:58: overload.adaptive.min_limit (5) is above max_in_flight (2)"),
        format!("{file}:6:11: overload applies to http and https listeners"),
    ] {
        assert!(stderr.contains(&want), "missing `{want}` in:\n{stderr}");
    }
    assert!(
        !stderr.contains(":0:0:"),
        "an error without its place:\n{stderr}"
    );
}

#[tokio::test]
async fn connection_counts_hold_across_a_reload() {
    let up = TestUpstream::start("up").await;
    let config = |limits: &str| fill(PER_IP, &[("UP", &up.addr()), ("LIMITS", limits)]);
    let gw = Portico::start(&config("{ connections_per_ip: 1 }"));
    let addr = gw.addr("web");
    let mut held = h1_on(connect_from([127, 0, 0, 1], &addr).await).await;
    assert_eq!(send(&mut held, "/a").await.status, 200);
    // A reload that changes other limits keeps the count: the connection opened before it
    // still holds the address's one place.
    assert!(gw.reload(&config("{ connections_per_ip: 1, idle_timeout: 30s }")));
    let mut second = connect_from([127, 0, 0, 1], &addr).await;
    assert!(closed_unanswered(&mut second, Duration::from_secs(5)).await);
    // A reload that raises the limit lets a second one in.
    assert!(gw.reload(&config("{ connections_per_ip: 2 }")));
    let mut third = h1_on(connect_from([127, 0, 0, 1], &addr).await).await;
    assert_eq!(send(&mut third, "/b").await.status, 200);
    assert_eq!(send(&mut held, "/c").await.status, 200);
}
