//! Server, pool and health-check behaviour that once went wrong: active checks in the
//! upstream's protocol, HTTP/2 idle timeouts, idle upstream connections, and a second process
//! on a bound address.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::pki::{self, Ca};
use crate::support::portico::BIN;
use crate::support::{Portico, TestUpstream, fill, get, temp_dir};

/// How a health-check test upstream speaks.
#[derive(Clone, Copy)]
enum Speaks {
    /// HTTP/2 only, cleartext (prior knowledge).
    H2c,
    /// TLS with ALPN `http/1.1` only, HTTP/1.1 only.
    TlsH1,
    /// TLS with ALPN `h2` only, HTTP/2 only.
    TlsH2,
}

/// An upstream that speaks only one protocol and counts the `/healthz` requests it answers.
async fn strict_upstream(speaks: Speaks, pair: Option<&pki::Pair>) -> (String, Arc<AtomicUsize>) {
    let acceptor = pair.map(|pair| {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&pair.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pair.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = match speaks {
            Speaks::TlsH2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&checks);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        if req.uri().path() == "/healthz" {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                format!("{:?}", req.version()),
                            ))))
                        }
                    });
                match (speaks, acceptor) {
                    (Speaks::H2c, _) => {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    }
                    (Speaks::TlsH1, Some(acceptor)) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                    (Speaks::TlsH2, Some(acceptor)) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                    _ => unreachable!("a TLS upstream needs a certificate"),
                }
            });
        }
    });
    (addr, checks)
}

/// Waits (bounded) until `count` reaches `n`.
async fn wait_for(count: &AtomicUsize, n: usize, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while count.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} within {timeout:?}, wanted {n}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts portico in front of one upstream `u` with fast active checks, and proves the checks
/// reach the upstream, keep the target up, and traffic flows.
async fn checks_in_the_upstreams_protocol(speaks: Speaks, upstream_extra: &str) {
    let dir = temp_dir("check-proto");
    let ca = Ca::new(&dir, "check CA");
    let pair = ca.leaf("up", "up.test", &["up.test"], false, false);
    let tls = !matches!(speaks, Speaks::H2c);
    let (addr, checks) = strict_upstream(speaks, tls.then_some(&pair)).await;
    let config = fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: '@UP@' } ]
    health_check: { active: { path: /healthz, body_contains: 'HTTP/', interval: 50ms, timeout: 1s, healthy: 1, unhealthy: 1 } }
@EXTRA@
",
        &[
            ("UP", &addr),
            (
                "EXTRA",
                &upstream_extra.replace("@CA@", &ca.cert_path().display().to_string()),
            ),
        ],
    );
    let gw = Portico::start(&config);
    wait_for(
        &checks,
        3,
        Duration::from_secs(5),
        "health checks the upstream answered",
    )
    .await;
    assert_eq!(gw.count_lines("target unhealthy"), 0, "{}", gw.log_text());
    let reply = get(&gw.addr("web"), "/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn active_checks_speak_tls_to_a_tls_upstream() {
    checks_in_the_upstreams_protocol(Speaks::TlsH1, "    tls: { sni: up.test, ca_file: '@CA@' }")
        .await;
}

#[tokio::test]
async fn active_checks_speak_h2c_to_an_http2_upstream() {
    checks_in_the_upstreams_protocol(Speaks::H2c, "    protocol: http2").await;
}

#[tokio::test]
async fn active_checks_speak_h2_over_tls_to_an_http2_tls_upstream() {
    checks_in_the_upstreams_protocol(
        Speaks::TlsH2,
        "    protocol: http2\n    tls: { sni: up.test, ca_file: '@CA@' }",
    )
    .await;
}

// --- HTTP/2 idle timeout, with a hand-written client that sees every frame ---

const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const SETTINGS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET of `path` on stream 1: HPACK indexed `:method GET` and `:scheme http`, literal
/// `:authority` and `:path` with indexed names (RFC 7541 §6.2.1, Appendix A).
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    block.push(0x41);
    block.push(b"example.com".len() as u8);
    block.extend_from_slice(b"example.com");
    block.push(0x44);
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    // END_STREAM | END_HEADERS
    frame(0x1, 0x5, 1, &block)
}

/// A raw HTTP/2 client connection.
struct RawH2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    async fn connect(addr: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        RawH2 {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until the server closes, answering its SETTINGS and PINGs, and sending a PING of
    /// its own every `ping_every` when given. Returns whether a GOAWAY came, and when the
    /// connection closed (`None`: still open at `deadline`).
    async fn until_closed(
        &mut self,
        deadline: Instant,
        ping_every: Option<Duration>,
    ) -> (bool, Option<Instant>) {
        let mut goaway = false;
        let mut next_ping = ping_every.map(|every| Instant::now() + every);
        let mut chunk = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return (goaway, None);
            }
            let wake = next_ping.map_or(deadline, |p| p.min(deadline));
            let read = tokio::time::timeout(wake - now, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => {
                    if let (Some(at), Some(every)) = (next_ping, ping_every)
                        && Instant::now() >= at
                    {
                        if self
                            .stream
                            .write_all(&frame(PING, 0, 0, b"client!!"))
                            .await
                            .is_err()
                        {
                            return (goaway, Some(Instant::now()));
                        }
                        next_ping = Some(at + every);
                    }
                }
                Ok(Ok(0)) | Ok(Err(_)) => return (goaway, Some(Instant::now())),
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    while self.buf.len() >= 9 {
                        let len = (usize::from(self.buf[0]) << 16)
                            | (usize::from(self.buf[1]) << 8)
                            | usize::from(self.buf[2]);
                        if self.buf.len() < 9 + len {
                            break;
                        }
                        let (kind, flags) = (self.buf[3], self.buf[4]);
                        let payload = self.buf[9..9 + len].to_vec();
                        self.buf.drain(..9 + len);
                        let answer = match kind {
                            GOAWAY => {
                                goaway = true;
                                None
                            }
                            SETTINGS if flags & 1 == 0 => Some(frame(SETTINGS, 1, 0, &[])),
                            PING if flags & 1 == 0 => Some(frame(PING, 1, 0, &payload)),
                            _ => None,
                        };
                        if let Some(answer) = answer {
                            // The server may close while we answer; the read sees it next.
                            let _ = self.stream.write_all(&answer).await;
                        }
                    }
                }
            }
        }
    }
}

const IDLE_500MS: &str = "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    limits: { idle_timeout: 500ms }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";

#[tokio::test]
async fn h2_connection_with_a_reset_stream_closes_at_the_idle_timeout() {
    let up = TestUpstream::start("slow").await;
    let gw = Portico::start(&fill(IDLE_500MS, &[("UP", &up.addr())]));
    let mut client = RawH2::connect(&gw.addr("web")).await;
    client.send(&get_headers("/slow/10000")).await;
    up.wait_count(1, Duration::from_secs(5)).await;
    // RST_STREAM(CANCEL): hyper drops the request future (RFC 9113 §6.4).
    client.send(&frame(0x3, 0, 1, &8u32.to_be_bytes())).await;
    let reset = Instant::now();
    let (goaway, closed) = client
        .until_closed(reset + Duration::from_secs(4), None)
        .await;
    let closed = closed.expect("a connection whose only stream was reset never went idle");
    assert!(
        closed - reset >= Duration::from_millis(400),
        "closed too early: {:?}",
        closed - reset
    );
    assert!(
        goaway,
        "the idle h2 connection was cut without a GOAWAY after {:?}:\n{}",
        closed - reset,
        gw.log_text()
    );
}

#[tokio::test]
async fn idle_h2_connection_closes_at_the_idle_timeout_despite_pings() {
    let up = TestUpstream::start("u").await;
    let gw = Portico::start(&fill(IDLE_500MS, &[("UP", &up.addr())]));
    let mut client = RawH2::connect(&gw.addr("web")).await;
    // One finished request first: the connection is past its first head.
    client.send(&get_headers("/done")).await;
    up.wait_count(1, Duration::from_secs(5)).await;
    let opened = Instant::now();
    // The client pings every 100 ms, and portico's own keep-alive pings too: neither is use.
    let (goaway, closed) = client
        .until_closed(
            opened + Duration::from_secs(4),
            Some(Duration::from_millis(100)),
        )
        .await;
    let closed = closed.expect("pings kept an idle h2 connection open");
    assert!(
        closed - opened >= Duration::from_millis(400),
        "closed too early: {:?}",
        closed - opened
    );
    assert!(
        goaway,
        "the idle h2 connection was cut without a GOAWAY after {:?}:\n{}",
        closed - opened,
        gw.log_text()
    );
}

#[tokio::test]
async fn h2_connection_in_use_stays_open_past_the_idle_timeout() {
    let up = TestUpstream::start("slow").await;
    let gw = Portico::start(&fill(IDLE_500MS, &[("UP", &up.addr())]));
    let mut client = RawH2::connect(&gw.addr("web")).await;
    client.send(&get_headers("/slow/1500")).await;
    let sent = Instant::now();
    let (_, closed) = client
        .until_closed(sent + Duration::from_millis(1200), None)
        .await;
    assert_eq!(closed, None, "a stream in progress did not keep it open");
}

// --- Idle upstream connections ---

/// An upstream (HTTP/1.1, or HTTP/2 only) that counts its open connections and has no idle
/// timeout of its own; `/slow` answers after 800 ms.
async fn counting_upstream(h2: bool) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let open = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (open2, accepted2) = (Arc::clone(&open), Arc::clone(&accepted));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            open2.fetch_add(1, Ordering::Relaxed);
            accepted2.fetch_add(1, Ordering::Relaxed);
            let open = Arc::clone(&open2);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(800)).await;
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
                    },
                );
                let io = TokioIo::new(tcp);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    (addr, open, accepted)
}

/// One request, reuse, a request slower than the idle timeout on the same connection, then
/// the idle close within a bounded time, and a fresh connection afterwards.
async fn idle_upstream_connection_closes(protocol: &str) {
    let (addr, open, accepted) = counting_upstream(protocol == "http2").await;
    // One worker: one pool, so the second request must reuse the first connection.
    let config = fill(
        "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { protocol: @PROTO@, targets: [ { address: '@UP@' } ], pool: { idle_timeout: 300ms } }
",
        &[("UP", &addr), ("PROTO", protocol)],
    );
    let gw = Portico::start(&config);
    let web = gw.addr("web");
    assert_eq!(get(&web, "/a").await.status, 200);
    // Reused while fresh, and not cut while a request takes longer than the idle timeout.
    assert_eq!(get(&web, "/slow").await.status, 200);
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the pool did not reuse"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while open.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "an idle upstream connection outlived the pool's idle_timeout (300ms) by 3s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the pool opens a new one afterwards.
    assert_eq!(get(&web, "/c").await.status, 200);
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() {
    idle_upstream_connection_closes("http1").await;
}

#[tokio::test]
async fn idle_shared_h2_upstream_connections_close_after_the_pool_idle_timeout() {
    idle_upstream_connection_closes("http2").await;
}

// --- A second process on a bound address ---

#[tokio::test]
async fn second_process_on_a_bound_address_refuses_to_start() {
    let up = TestUpstream::start("first").await;
    let config = "\
listeners:
  - { name: web, bind: '@BIND@' }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";
    let first = Portico::start(&fill(
        config,
        &[("BIND", "127.0.0.1:0"), ("UP", &up.addr())],
    ));
    let web = first.addr("web");
    let dir = temp_dir("second");
    let path = dir.join("portico.yaml");
    std::fs::write(&path, fill(config, &[("BIND", &web), ("UP", &up.addr())])).unwrap();
    let mut second = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = second.stderr.take().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines2 = Arc::clone(&lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines2.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        let ready = lines.lock().unwrap().iter().any(|l| l.contains(" ready "));
        if ready || Instant::now() >= deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!(
                "a second portico started on {web} next to the first:\n{}",
                lines.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    reader.join().unwrap();
    let log = lines.lock().unwrap().join("\n");
    assert!(!status.success(), "exit status {status}: {log}");
    assert!(log.contains(&web), "the error does not name {web}: {log}");
    assert_eq!(get(&web, "/still").await.status, 200);
}

#[tokio::test]
async fn reload_can_rename_a_listener_on_the_same_address() {
    let up = TestUpstream::start("u").await;
    let config = "\
listeners:
  - { name: @NAME@, bind: '@BIND@' }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";
    let gw = Portico::start(&fill(
        config,
        &[("NAME", "web"), ("BIND", "127.0.0.1:0"), ("UP", &up.addr())],
    ));
    let web = gw.addr("web");
    assert!(
        gw.reload(&fill(
            config,
            &[("NAME", "www"), ("BIND", &web), ("UP", &up.addr())]
        )),
        "{}",
        gw.log_text()
    );
    assert_eq!(get(&web, "/renamed").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_listener_under_load_refuses_no_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start("u").await;
    let config = "\
listeners:
  - { name: @NAME@, bind: '@BIND@' }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";
    let gw = Portico::start(&fill(
        config,
        &[("NAME", "web"), ("BIND", "127.0.0.1:0"), ("UP", &up.addr())],
    ));
    let web = gw.addr("web");
    // One request per fresh connection: the status line, or None when the connection failed.
    async fn once(addr: &str) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        Some(text.lines().next().unwrap_or_default().to_owned())
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (web, stop) = (web.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 2000 {
                    seen.push(once(&web).await);
                }
                seen
            })
        })
        .collect();
    for round in 0..6 {
        let name = if round % 2 == 0 { "www" } else { "web" };
        let next = fill(
            config,
            &[("NAME", name), ("BIND", &web), ("UP", &up.addr())],
        );
        assert!(gw.reload(&next), "{}", gw.log_text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for task in load {
        seen.extend(task.await.unwrap());
    }
    // Every connection accepted under the old name is served as the new one (never a 404).
    let answered: Vec<&String> = seen.iter().flatten().collect();
    assert!(
        answered.iter().all(|s| s.starts_with("HTTP/1.1 200")),
        "{answered:?}"
    );
    // A connection the kernel queued on the old socket in the instant between its last
    // accept and its close is reset, unless net.ipv4.tcp_migrate_req moves it to the new
    // socket (docs/config.md, Reload and shutdown).
    let failed = seen.iter().filter(|s| s.is_none()).count();
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    let allowed = if migrate { 0 } else { seen.len() / 50 };
    assert!(
        failed <= allowed,
        "{failed} of {} connections failed (tcp_migrate_req {migrate})",
        seen.len()
    );
    println!(
        "{} connections through 6 renames, {failed} reset",
        seen.len()
    );
}

#[tokio::test]
async fn a_removed_listeners_connections_close_at_the_drain_timeout() {
    let up = TestUpstream::start("slow").await;
    let config = "\
drain_timeout: 300ms
listeners:
  - { name: web, bind: 127.0.0.1:0 }
@OLD@
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@UP@' } ] }
";
    let old = "  - { name: old, bind: 127.0.0.1:0 }";
    let gw = Portico::start(&fill(config, &[("OLD", old), ("UP", &up.addr())]));
    let mut client = RawH2::connect(&gw.addr("old")).await;
    client.send(&get_headers("/slow/10000")).await;
    up.wait_count(1, Duration::from_secs(5)).await;
    assert!(gw.reload(&fill(config, &[("OLD", ""), ("UP", &up.addr())])));
    let removed = Instant::now();
    let (goaway, closed) = client
        .until_closed(removed + Duration::from_secs(4), None)
        .await;
    assert!(goaway, "a draining h2 connection got no GOAWAY");
    let closed = closed.expect("a connection outlived its removed listener's drain timeout");
    assert!(
        closed - removed >= Duration::from_millis(200),
        "{:?}",
        closed - removed
    );
}
