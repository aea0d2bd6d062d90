//! portico's own HTTP/1.1 client against a scripted upstream: answers whose framing is
//! ambiguous get a 502, a connection is reused only after an exchange that ended cleanly, and
//! an idle connection the upstream closed is replaced, not failed on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{H1, Portico};

/// What the upstream answers for a path, and whether it closes the connection afterwards.
fn answer(path: &str) -> (&'static str, bool) {
    match path {
        "/ok" => ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        "/chunked" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n",
            false,
        ),
        "/close" => (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose",
            true,
        ),
        // Looks reusable, but the upstream closes the connection right after it.
        "/bye" => ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye", true),
        "/both" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            false,
        ),
        "/fold" => (
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        "/coding" => (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        ),
        "/lengths" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nokk",
            false,
        ),
        // Bytes beyond the answer: the connection cannot be trusted for the next one.
        "/extra" => (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        ),
        _ => ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    }
}

/// A scripted upstream; counts the connections it accepted.
async fn upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (text, close) = answer(&path);
                    if tcp.write_all(text.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn gateway(upstream: &str) -> Portico {
    Portico::start(&format!(
        "\
workers: 1
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
  - {{ name: all, upstream: u }}
upstreams:
  u:
    targets: [ {{ address: '{upstream}' }} ]
"
    ))
}

#[tokio::test]
async fn ambiguous_framing_from_the_upstream_is_a_502() {
    let (addr, accepted) = upstream().await;
    let gw = gateway(&addr).await;
    let mut client = H1::connect(&gw.addr("web")).await;
    for path in ["/both", "/fold", "/coding", "/lengths"] {
        let reply = client.get("x", path).await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.body);
        assert_eq!(reply.json()["error"], "upstream_failed", "{path}");
    }
    // None of those connections was kept: each answer came on a new one.
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_connection_is_reused_only_after_a_clean_exchange() {
    let (addr, accepted) = upstream().await;
    let gw = gateway(&addr).await;
    let mut client = H1::connect(&gw.addr("web")).await;
    let reply = client.get("x", "/ok").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    let reply = client.get("x", "/chunked").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "abcde"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a clean exchange reuses"
    );

    // `Connection: close`: the next request needs a new connection.
    let reply = client.get("x", "/close").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "close"));
    assert_eq!(client.get("x", "/ok").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // Bytes after the answer: the body is passed on, the connection is not kept.
    let reply = client.get("x", "/extra").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert_eq!(client.get("x", "/ok").await.status, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced() {
    let (addr, accepted) = upstream().await;
    let gw = gateway(&addr).await;
    let mut client = H1::connect(&gw.addr("web")).await;
    for round in 1..=3 {
        // The upstream closes after each answer, without saying so.
        let reply = client.get("x", "/bye").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "bye"),
            "round {round}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
