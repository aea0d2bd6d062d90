//! Requests hyper refuses before portico's pipeline sees them (parse errors, header-line
//! floods, heads past the read buffer) still get portico's JSON answer with `x-request-id`,
//! and the connection closes after it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Portico, TestUpstream, fill, statuses};

const CONFIG: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { max_header_size: 4KiB, max_uri_length: 1KiB }
  - name: wide
    bind: 127.0.0.1:0
    limits: { max_header_size: 256KiB, max_uri_length: 100KiB }
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

/// Writes `request` on a fresh connection; returns what came back and whether portico
/// closed the connection afterwards (end of stream or reset, not a quiet open socket).
async fn exchange(addr: &str, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The peer may answer and close before all of a long head is written.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// One response split into status, lower-cased headers and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn parse(raw: &str) -> Answer {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Asserts one JSON error answer from portico, the last thing on a closed connection.
fn assert_json(case: &str, (raw, closed): &(String, bool), status: u16, code: &str) {
    assert_eq!(statuses(raw).len(), 1, "{case}: one answer only: {raw:?}");
    let answer = Answer::parse(raw);
    assert_eq!(answer.status, status, "{case}: {raw:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{case}: {raw:?}"
    );
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "{case}: {raw:?}"
    );
    let id = answer
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{case}: no x-request-id: {raw:?}"));
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str()),
        "{case}: {raw:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {raw:?}"));
    assert_eq!(body["error"], code, "{case}: {raw:?}");
    assert_eq!(body["request_id"], id, "{case}: {raw:?}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: {raw:?}"
    );
    assert!(closed, "{case}: the connection stayed open: {raw:?}");
}

fn flood(lines: usize) -> String {
    let mut head = String::from("GET /flood HTTP/1.1\r\nHost: x\r\n");
    for i in 0..lines {
        head.push_str(&format!("X-N{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// What hyper refuses itself: each case alone on a fresh connection.
#[tokio::test]
async fn parse_errors_answer_json() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    let cases: &[(&str, &[u8])] = &[
        ("bad method byte", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("not http", b"hello there\r\n\r\n"),
        ("bad version", b"GET / HTTP/9.1\r\nHost: x\r\n\r\n"),
        (
            "bad target byte",
            b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "space in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX Bad: v\r\n\r\n",
        ),
        (
            "control byte in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX\x01Bad: v\r\n\r\n",
        ),
        (
            "at sign in header name",
            b"GET / HTTP/1.1\r\nHost: x\r\nX@Bad: v\r\n\r\n",
        ),
        ("no colon", b"GET / HTTP/1.1\r\nHost: x\r\nnocolon\r\n\r\n"),
        (
            "control byte in a value",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        ),
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "content-length garbage",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd",
        ),
        (
            "content-length conflict",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
        ),
        (
            "transfer-encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (case, request) in cases {
        let got = exchange(&web, request).await;
        assert_json(case, &got, 400, "bad_request");
    }
    assert_eq!(a.count(), 0, "a refused request reached the upstream");
}

/// More header lines than portico allows: portico's own 431 up to hyper's cap, hyper's 431
/// (rewritten) past it; a head past hyper's read buffer is hyper's 431 too.
#[tokio::test]
async fn floods_and_huge_heads_answer_json() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    // Many fields are fine (the test upstream, hyper too, takes at most 100 with portico's own).
    let (raw, _) = exchange(
        &web,
        flood(90)
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&raw), vec![200], "{raw}");

    // 101: refused while the head is read (the parser keeps room for 100 lines on the
    // stack), in portico's JSON, and the connection closes: what follows is not answered.
    let mut two = flood(100);
    two.push_str("GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (raw, _) = exchange(&web, two.as_bytes()).await;
    assert_eq!(statuses(&raw), vec![431], "{raw}");
    let first = Answer::parse(&raw);
    assert_eq!(
        first.header("content-type"),
        Some("application/json"),
        "{raw}"
    );
    assert!(first.header("x-request-id").is_some(), "{raw}");
    assert!(raw.contains(r#""error":"headers_too_large""#), "{raw}");

    let got = exchange(&web, flood(1000).as_bytes()).await;
    assert_json("1001 fields", &got, 431, "headers_too_large");

    let huge = format!(
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "c".repeat(64 * 1024)
    );
    let got = exchange(&web, huge.as_bytes()).await;
    assert_json("head past the read buffer", &got, 431, "headers_too_large");

    // A target longer than hyper's own cap (65534 bytes), under the listener's limit.
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70 * 1024));
    let got = exchange(&gw.addr("wide"), long.as_bytes()).await;
    assert_json("target past hyper's cap", &got, 414, "uri_too_long");
    assert_eq!(a.count(), 1);
}

/// After answered requests on a keep-alive connection, hyper's answer to a malformed head
/// is rewritten too; the answers before it are untouched.
#[tokio::test]
async fn malformed_after_good_requests_answers_json() {
    let (a, gw) = start().await;
    let web = gw.addr("web");
    let good = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
    let bad: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX Bad: v\r\n\r\n";

    // One at a time: each answer read before the next request is written.
    let mut stream = TcpStream::connect(&web).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..2 {
        stream.write_all(good).await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(statuses(&answer), vec![200], "{answer}");
    }
    stream.write_all(bad).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .is_ok();
    let got = (String::from_utf8_lossy(&out).into_owned(), closed);
    assert_json("after two answers", &got, 400, "bad_request");

    // Pipelined: the good answer comes first, unchanged, then portico's JSON 400.
    let mut pipelined = good.to_vec();
    pipelined.extend_from_slice(bad);
    let (raw, closed) = exchange(&web, &pipelined).await;
    assert_eq!(statuses(&raw), vec![200, 400], "{raw}");
    let (first, second) = raw.split_at(raw.rfind("HTTP/1.1 400").unwrap());
    assert!(first.contains("\r\nx-request-id: "), "{first}");
    assert_json(
        "pipelined",
        &(second.to_owned(), closed),
        400,
        "bad_request",
    );
    assert_eq!(a.count(), 3);
}

/// hyper's answer, byte for byte, as a service would never write it on its own.
const CANNED: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 21:08:35 GMT\r\n\r\n";

/// Reads until `needle` has been seen; returns everything read.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Bytes that look like hyper's answer but come from the upstream, in a response body or
/// through an upgraded tunnel, pass untouched.
#[tokio::test]
async fn lookalikes_from_upstream_pass_untouched() {
    let (_a, gw) = start().await;
    let web = gw.addr("web");

    // A body written on its own, after its head went out.
    let mut stream = TcpStream::connect(&web).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        CANNED.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = read_until(&mut stream, b"\r\n\r\n").await;
    stream.write_all(CANNED).await.unwrap();
    out.extend(read_until(&mut stream, b"GMT\r\n\r\n").await);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with(std::str::from_utf8(CANNED).unwrap()), "{out}");

    // A tunnel after 101.
    let mut stream = TcpStream::connect(&web).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(CANNED).await.unwrap();
    let echoed = read_until(&mut stream, b"GMT\r\n\r\n").await;
    assert_eq!(echoed, CANNED, "{}", String::from_utf8_lossy(&echoed));
}

/// Over TLS the answer is rewritten the same way: portico sees hyper's bytes before
/// encryption.
#[tokio::test]
async fn parse_errors_over_tls_answer_json() {
    use crate::support::{pki, temp_dir};
    let dir = temp_dir("early-tls");
    let ca = pki::Ca::new(&dir, "portico test CA");
    let leaf = ca.leaf("a", "a.test", &["a.test"], false, false);
    let a = TestUpstream::start("A").await;
    let config = fill(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - { cert_file: '@C@', key_file: '@K@' }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@A@' } ] }
",
        &[("C", &leaf.cert()), ("K", &leaf.key()), ("A", &a.addr())],
    );
    let gw = Portico::start(&config);
    let client = pki::client_config(&ca.cert_path(), None, &[b"http/1.1"]);
    let mut stream = pki::connect(&gw.addr("secure"), "a.test", client)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX Bad: v\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // A TLS peer may close without close_notify: the bytes read so far count.
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .is_ok();
    let got = (String::from_utf8_lossy(&out).into_owned(), closed);
    assert_json("over TLS", &got, 400, "bad_request");
    assert_eq!(a.count(), 0);
}

/// A malformed head pipelined behind a long streamed answer the client reads slowly: the
/// answer arrives whole and unchanged, then a 400 (portico's JSON one, or, when hyper wrote
/// it together with the end of the answer, hyper's plain one), then the connection closes.
#[tokio::test]
async fn malformed_behind_a_long_answer_never_corrupts_it() {
    let (_a, gw) = start().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(gw.addr("web").parse().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /big/4000000 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX Bad: v\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stayed open"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    let at = text.rfind("HTTP/1.1 400 Bad Request\r\n").expect("no 400");
    let (first, second) = text.split_at(at);
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(body.ends_with("\r\n0\r\n\r\n"), "the answer was cut");
    // Chunk sizes are hex digits: every `x` is body.
    assert_eq!(body.bytes().filter(|b| *b == b'x').count(), 4_000_000);
    if second.contains("application/json") {
        assert_json(
            "behind a long answer",
            &(second.to_owned(), true),
            400,
            "bad_request",
        );
    } else {
        assert!(second.ends_with(" GMT\r\n\r\n"), "{second}");
    }
}
