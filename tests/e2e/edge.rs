//! Limits and hostile input on raw sockets: what a proxy must refuse, and that refusing never
//! desynchronises the connection or reaches the upstream.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Portico, TestUpstream, fill, raw, statuses};

const CONFIG: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { max_header_size: 4KiB, max_uri_length: 1KiB, header_timeout: 500ms, idle_timeout: 700ms }
  - name: few
    bind: 127.0.0.1:0
    limits: { max_connections: 2 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
";

async fn start() -> (TestUpstream, Portico) {
    let a = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(CONFIG, &[("A", &a.addr())]));
    (a, gw)
}

fn seen_paths(a: &TestUpstream) -> Vec<String> {
    a.seen().iter().map(|s| s.uri.path().to_owned()).collect()
}

#[tokio::test]
async fn uri_and_header_limits_answer_json() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(2000)
    );
    let out = raw(&web, long.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), vec![414, 200], "{out}");
    assert!(out.contains(r#""error":"uri_too_long""#), "{out}");

    let big = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "b".repeat(5000)
    );
    let out = raw(&web, big.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), vec![431, 200], "{out}");
    assert!(out.contains(r#""error":"headers_too_large""#), "{out}");

    // Far past the limit, hyper's own cap answers 431 and closes.
    let huge = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "c".repeat(64 * 1024)
    );
    let out = raw(&web, huge.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&out), vec![431], "{out}");
    assert_eq!(seen_paths(&a), vec!["/after", "/after"]);
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed() {
    let (_a, gw) = start().await;
    let web = gw.addr("web");
    // Slowloris: a head that never ends.
    let mut stream = TcpStream::connect(&web).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow head was not cut off");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // Idle keep-alive connections close after idle_timeout.
    let mut stream = TcpStream::connect(&web).await.unwrap();
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection stayed open");
    let idle = idle_start.elapsed();
    assert!(
        idle >= Duration::from_millis(600) && idle < Duration::from_secs(3),
        "{idle:?}"
    );
}

#[tokio::test]
async fn max_connections_holds_the_third_until_one_closes() {
    let (_a, gw) = start().await;
    let few = gw.addr("few");
    let mut first = TcpStream::connect(&few).await.unwrap();
    let mut second = TcpStream::connect(&few).await.unwrap();
    let mut buf = [0u8; 4096];
    for s in [&mut first, &mut second] {
        s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let mut third = TcpStream::connect(&few).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served past max_connections"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Sends `request` followed by a pipelined `GET /smuggled`; returns the statuses seen.
async fn smuggle(web: &str, request: &str) -> (Vec<u16>, String) {
    let payload = format!("{request}GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let out = raw(web, payload.as_bytes(), Duration::from_millis(1500)).await;
    (statuses(&out), out)
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_never_forwarded() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    let cases: &[(&str, &str)] = &[
        // TE with another coding: portico cannot forward it faithfully.
        (
            "te-gzip",
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        // Chunked not last, or not chunked at all.
        (
            "te-not-final",
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "te-unknown",
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "te-twice",
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "te-http10",
            "POST /count HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "cl-conflict",
            "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        ),
        (
            "cl-garbage",
            "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd",
        ),
        (
            "bad-chunk",
            "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "GET /count HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "space-before-colon",
            "GET /count HTTP/1.1\r\nHost : x\r\n\r\n",
        ),
        (
            "two-hosts",
            "GET /count HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        ),
        ("no-host", "GET /count HTTP/1.1\r\n\r\n"),
        (
            "absolute-mismatch",
            "GET http://evil.example/count HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (name, request) in cases {
        let (codes, out) = smuggle(&web, request).await;
        // Refused, and the connection closes: nothing after a malformed request is trusted.
        assert_eq!(codes, vec![400], "{name}: {out}");
    }
    let paths = seen_paths(&a);
    assert!(
        paths.is_empty(),
        "a refused request reached the upstream: {paths:?}"
    );

    // CL + TE, in either order and however the head is split into segments: 400, the
    // connection closes, and nothing after it is read as a request.
    for request in [
        "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
    ] {
        let (codes, out) = smuggle(&web, request).await;
        assert_eq!(codes, vec![400], "{out}");
        assert!(
            out.contains("both Content-Length and Transfer-Encoding"),
            "{out}"
        );
        for cut in [20, 40, 52] {
            let mut stream = TcpStream::connect(&web).await.unwrap();
            stream.write_all(&request.as_bytes()[..cut]).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            stream.write_all(&request.as_bytes()[cut..]).await.unwrap();
            stream
                .write_all(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
            let out = String::from_utf8_lossy(&out);
            assert_eq!(statuses(&out), vec![400], "cut {cut}: {out}");
        }
    }
    let paths = seen_paths(&a);
    assert!(
        !paths.iter().any(|p| p == "/count" || p == "/smuggled"),
        "{paths:?}"
    );

    // A request with a body the proxy refuses without reading still cannot smuggle.
    let (codes, out) = smuggle(
        &web,
        "GET /count HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 37\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(codes, vec![400], "{out}");
    assert!(!seen_paths(&a).iter().any(|p| p == "/smuggled"), "{out}");
}

#[tokio::test]
async fn never_an_open_proxy() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    // An absolute-form target for a foreign host goes to the configured upstream, never there.
    let out = raw(
        &web,
        b"GET http://example.net/x HTTP/1.1\r\nHost: example.net\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    assert!(out.contains("A /x"), "{out}");
    assert_eq!(a.last().uri, "/x", "origin-form upstream");
    let out = raw(
        &web,
        b"CONNECT example.net:443 HTTP/1.1\r\nHost: example.net:443\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(statuses(&out), vec![405], "{out}");
}
