//! Idle HTTP/1.1 connections parked outside hyper (see docs/config.md, Listeners): after the
//! park delay (250 ms) a keep-alive connection drops its HTTP state, and everything about it
//! must stay as before: the next request, bytes already sent, bodies, timeouts.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Portico, TestUpstream, fill};

const CONFIG: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { header_timeout: 1s, idle_timeout: 3s }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

/// Longer than the park delay: the connection is parked when this has passed.
const PARKED: Duration = Duration::from_millis(700);

/// Reads one answer (its head and a `content-length` body); its status, or `None` when the
/// connection closed first. Bounded by 5 s.
async fn answer(stream: &mut TcpStream) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                assert_eq!(got.len(), end + 4 + length, "one answer at a time: {head}");
                return head.get(9..12).and_then(|s| s.parse().ok());
            }
        }
        let wait = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// Waits for the server to close `stream` (EOF or reset), at most `wait`; when it did.
async fn closed_after(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        let left = wait.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(CONFIG, &[("UP", &up.addr())]));
    let mut stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    for round in 0..3 {
        // Idle past the park delay, then a request: served on the same connection.
        tokio::time::sleep(PARKED).await;
        stream.write_all(GET).await.unwrap();
        assert_eq!(answer(&mut stream).await, Some(200), "round {round}");
    }
    // A request body (Content-Length) and then idleness: parked after it, served again.
    stream
        .write_all(
            b"POST /count HTTP/1.1\r\nHost: example.com\r\nContent-Length: 8\r\n\r\n\r\n\r\nabcd",
        )
        .await
        .unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    tokio::time::sleep(PARKED).await;
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    // Two requests pipelined in one write, then idleness.
    let two = [GET, GET].concat();
    stream.write_all(&two).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    assert_eq!(answer(&mut stream).await, Some(200));
    tokio::time::sleep(PARKED).await;
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    // An upgrade on a connection back from parking: the tunnel carries bytes both ways.
    tokio::time::sleep(PARKED).await;
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(answer(&mut stream).await, Some(101));
    // Tunnels are not parked: past the park delay, the echo still answers.
    tokio::time::sleep(PARKED).await;
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(&echo, b"ping");
    let seen = up.seen();
    assert_eq!(seen.len(), 10, "every request reached the upstream once");
    assert!(
        seen.iter().any(|s| s.body_len == 8),
        "the body went up whole"
    );
}

#[tokio::test]
async fn bytes_sent_before_idleness_are_kept() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(CONFIG, &[("UP", &up.addr())]));
    let mut stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    // A request and the start of the next in one write; the rest comes after the park delay.
    // The connection must not be parked with those bytes in hyper's buffer.
    let mut first = GET.to_vec();
    first.extend_from_slice(b"GET /next HT");
    stream.write_all(&first).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    tokio::time::sleep(PARKED).await;
    stream
        .write_all(b"TP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    // A body still to come after the park delay: the connection waits for it.
    stream
        .write_all(b"POST /count HTTP/1.1\r\nHost: example.com\r\nContent-Length: 6\r\n\r\nab")
        .await
        .unwrap();
    tokio::time::sleep(PARKED).await;
    stream.write_all(b"cdef").await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].uri.path(), "/next");
    assert_eq!(seen[2].body_len, 6);
}

#[tokio::test]
async fn a_parked_connection_keeps_its_timeouts() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(CONFIG, &[("UP", &up.addr())]));
    // Idle: closed at the idle timeout (3 s after the answer), parked or not.
    let mut stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    let closed = closed_after(&mut stream, Duration::from_secs(6)).await;
    let closed = closed.expect("an idle connection is closed at the idle timeout");
    assert!(
        closed > Duration::from_millis(2500),
        "closed after {closed:?}, before the idle timeout"
    );
    // A head started on a parked connection: cut at the header timeout (1 s).
    let mut stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    tokio::time::sleep(PARKED).await;
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let closed = closed_after(&mut stream, Duration::from_secs(4)).await;
    let closed = closed.expect("a trickled head is cut at the header timeout");
    assert!(
        closed < Duration::from_millis(2000),
        "closed after {closed:?}"
    );
    // A malformed head on a parked connection gets portico's JSON answer, not hyper's.
    let mut stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, Some(200));
    tokio::time::sleep(PARKED).await;
    stream
        .write_all(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("application/json"), "{raw}");
}
