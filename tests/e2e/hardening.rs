//! Slow clients against the real binary: slowloris heads, slow readers and readers that stop,
//! each while a normal client keeps being served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::attack::{normal_client, rss_kib};
use crate::support::{Portico, TestUpstream, fill};

const SLOW: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { header_timeout: 1s, idle_timeout: 2s, send_timeout: 2s }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

/// Reads until EOF or a reset within `wait`: `true` when the server closed.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        match tokio::time::timeout(deadline - now, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slowloris_heads_are_cut_at_the_header_timeout_and_normal_clients_are_served() {
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(SLOW, &[("UP", &up.addr())]));
    let addr = gw.addr("web");
    // 300 connections, each trickling a request head one byte every 100 ms: a head that
    // would take far longer than the header timeout to complete.
    let head = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut attackers = Vec::new();
    for _ in 0..300 {
        let addr = addr.clone();
        attackers.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(&addr).await else {
                return (false, Duration::ZERO);
            };
            let start = Instant::now();
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    return (true, start.elapsed());
                }
                // A read that waits 100 ms: the trickle's pace, and the server's close.
                if closed_within(&mut stream, Duration::from_millis(100)).await {
                    return (true, start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(8) {
                    break;
                }
            }
            (false, start.elapsed())
        }));
    }
    let served = normal_client(addr.clone(), "/", 200, Duration::from_secs(10)).await;
    served.check("slowloris (300 connections)");
    let mut longest = Duration::ZERO;
    for attacker in attackers {
        let (closed, after) = attacker.await.unwrap();
        assert!(
            closed,
            "a slowloris connection was still open after {after:?}"
        );
        longest = longest.max(after);
    }
    println!("slowloris: every head cut, the last after {longest:?}");
    // header_timeout 1s; the trickle notices the close at its next byte.
    assert!(longest < Duration::from_secs(4), "{longest:?}");
    // The listener still accepts at once.
    let served = normal_client(addr, "/", 20, Duration::from_secs(5)).await;
    served.check("after slowloris");
}

/// A connection to `addr` with a small receive buffer that asks for `path` and reads nothing.
async fn stalled(addr: &str, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// Polls portico's RSS until it has not grown for 1 s (bounded by 15 s).
async fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = rss_kib(pid);
    let mut still_since = Instant::now();
    while Instant::now() < deadline && still_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now > last {
            last = now;
            still_since = Instant::now();
        }
    }
    last
}

const STALLED: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

#[tokio::test]
async fn a_stalled_reader_holds_a_bounded_buffer() {
    const CLIENTS: usize = 200;
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(STALLED, &[("UP", &up.addr())]));
    let addr = gw.addr("web");
    // Warm up: thread stacks, pools and allocator arenas are not per-client costs.
    let warm = normal_client(addr.clone(), "/big/1048576", 20, Duration::from_secs(10)).await;
    warm.check("warm-up");
    let mut warm_stalled = Vec::new();
    for _ in 0..20 {
        warm_stalled.push(stalled(&addr, "/big/1048576").await);
    }
    up.wait_count(40, Duration::from_secs(10)).await;
    let before = settled_rss(gw.pid()).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(stalled(&addr, "/big/1048576").await);
    }
    up.wait_count(40 + CLIENTS, Duration::from_secs(20)).await;
    let after = settled_rss(gw.pid()).await;
    let per_client = after.saturating_sub(before) / CLIENTS as u64;
    println!(
        "slow readers: RSS {before} KiB -> {after} KiB with {CLIENTS} stalled on 1 MiB: \
         {per_client} KiB each"
    );
    // A normal client is served meanwhile.
    let served = normal_client(addr, "/", 50, Duration::from_secs(10)).await;
    served.check("200 stalled readers");
    assert!(
        per_client < 150,
        "each stalled reader holds {per_client} KiB in portico"
    );
    drop(clients);
    drop(warm_stalled);
}

#[tokio::test]
async fn a_reader_that_stops_is_closed_at_the_send_timeout() {
    const TOTAL: usize = 32 << 20;
    let up = TestUpstream::start("up").await;
    let gw = Portico::start(&fill(SLOW, &[("UP", &up.addr())]));
    let addr = gw.addr("web");
    let mut stream = stalled(&addr, &format!("/big/{TOTAL}")).await;
    up.wait_count(1, Duration::from_secs(5)).await;
    let mut buf = vec![0u8; 64 << 10];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(n > 0);
    // Then nothing is read for longer than the send timeout (2 s): the answer stops moving
    // once the kernel buffers are full, and portico must give up on this client.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // What is left in the buffers arrives, then the end: far from the whole answer.
    let mut received = n;
    let mut eof = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                eof = true;
                break;
            }
            Ok(Ok(n)) => received += n,
            Err(_) => break,
        }
    }
    println!("send timeout: a stopped reader got {received} of {TOTAL} bytes, then the close");
    assert!(eof, "no close after {received} bytes");
    assert!(
        received < TOTAL,
        "the whole answer arrived: no send timeout"
    );
    // A client that keeps reading gets all of a long answer with the same timeout.
    let served = normal_client(addr, "/big/4194304", 3, Duration::from_secs(20)).await;
    served.check("a reader that keeps reading");
}

#[test]
fn bad_send_limits_are_refused_with_their_place() {
    let dir = crate::support::temp_dir("send-limits");
    let file = dir.join("portico.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    limits: { send_buffer: 1KiB, send_timeout: 0s }\nroutes:\n  - { name: all, respond: { status: 200 } }\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (code, _, stderr) = crate::support::cli(&["validate", "-c", &file]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!(
            "{file}:3:11: limits.send_buffer must be at least 16KiB"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("limits.send_timeout must be longer than 0"),
        "{stderr}"
    );
}
