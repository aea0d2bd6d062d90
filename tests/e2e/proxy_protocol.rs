//! The PROXY protocol: HAProxy (`send-proxy-v2`, `send-proxy`) and handcrafted headers in
//! front of portico, and portico sending v1/v2 headers to a recording upstream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pki::{self, Ca};
use crate::support::{Portico, TestUpstream, cli, fill, get, temp_dir};

/// A v2 header (PROXY, TCP over IPv4) claiming `source` connected to `destination`.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// One GET over an established stream: status and body.
pub async fn get_over<S>(stream: S, path: &str) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "pp.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reads until the peer closes (or 5 s pass): what portico answered, if anything.
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection stayed open"),
        }
    }
}

/// HAProxy in the foreground, in `mode tcp`, forwarding to `server` with `option`.
pub struct Haproxy {
    child: std::process::Child,
    pub addr: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    pub async fn start(server: &str, option: &str) -> Self {
        // A free port for HAProxy to bind (it cannot report one it chose).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dir = temp_dir("haproxy");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\nfrontend f\n  bind {addr}\n  \
                 default_backend b\nbackend b\n  server s1 {server} {option}\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/sbin/haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy is installed");
        // Ready once it accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).await.is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Haproxy { child, addr }
    }
}

fn trusted_config(upstream: &str, accept: &str) -> String {
    fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - name: web
    bind: 127.0.0.1:0
    proxy_protocol: @ACCEPT@
routes:
  - name: guarded
    match: { path_prefix: /guarded }
    upstream: u
    plugins: [ { ip_restriction: { deny: [203.0.113.0/24] } } ]
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", upstream), ("ACCEPT", accept)],
    )
}

#[tokio::test]
async fn haproxy_send_proxy_v2_and_v1_convey_the_client() {
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&trusted_config(&up.addr(), "{ trusted: [127.0.0.1/32] }"));
    for (option, path) in [("send-proxy-v2", "/via-v2"), ("send-proxy", "/via-v1")] {
        let haproxy = Haproxy::start(&gw.addr("web"), option).await;
        let stream = TcpStream::connect(&haproxy.addr).await.unwrap();
        let me = stream.local_addr().unwrap();
        let (status, _) = get_over(stream, path).await;
        assert_eq!(status, 200, "{option}: {}", gw.log_text());
        let seen = up.last();
        assert_eq!(seen.uri.path(), path);
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
        // The port tells HAProxy's client (this test) from HAProxy's own connection.
        let entry = gw.access_entry(path);
        assert_eq!(entry["client"], me.to_string(), "{option}");
    }
}

#[tokio::test]
async fn a_conveyed_address_is_the_client_everywhere() {
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&trusted_config(&up.addr(), "{ trusted: [127.0.0.1/32] }"));
    let web: SocketAddr = gw.addr("web").parse().unwrap();
    let claimed: SocketAddr = "203.0.113.7:4000".parse().unwrap();

    // The header and the request in one write: the request after the header is not lost.
    let mut stream = TcpStream::connect(web).await.unwrap();
    let mut bytes = v2_header(claimed, web);
    bytes.extend_from_slice(b"GET /open HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n");
    stream.write_all(&bytes).await.unwrap();
    let answer = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/open");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7");
    assert_eq!(gw.access_entry("/open")["client"], "203.0.113.7:4000");

    // ip_restriction sees the conveyed address.
    let mut stream = TcpStream::connect(web).await.unwrap();
    stream.write_all(&v2_header(claimed, web)).await.unwrap();
    let (status, body) = get_over(stream, "/guarded").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(gw.access_entry("/guarded")["client"], "203.0.113.7:4000");

    // A v1 header split over several writes still parses.
    let mut stream = TcpStream::connect(web).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let pieces: [&[u8]; 3] = [
        b"PROXY TCP4 203.0",
        b".113.8 127.0.0.1 5000 80",
        b"\r\nGET /split HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n",
    ];
    for piece in pieces {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        // Apart in time, so portico's reads see the pieces separately.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let answer = String::from_utf8(read_to_close(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().headers["x-forwarded-for"], "203.0.113.8");
    assert_eq!(gw.access_entry("/split")["client"], "203.0.113.8:5000");

    // v2 LOCAL (a health check of the balancer in front): the socket address stands.
    let mut stream = TcpStream::connect(web).await.unwrap();
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    stream.write_all(&local).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (status, _) = get_over(stream, "/local").await;
    assert_eq!(status, 200);
    assert_eq!(gw.access_entry("/local")["client"], me.to_string());
}

#[tokio::test]
async fn rate_limits_and_ip_hash_count_conveyed_clients() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0, proxy_protocol: { trusted: [127.0.0.1/32] } }
routes:
  - name: limited
    match: { path_prefix: /limited }
    upstream: u
    plugins: [ { rate_limit: { limit: 1, window: 60s, by: ip } } ]
  - { name: all, upstream: u }
upstreams:
  u:
    balance: ip_hash
    targets: [ { address: '@A@' }, { address: '@B@' } ]
",
        &[("A", &a.addr()), ("B", &b.addr())],
    ));
    let web: SocketAddr = gw.addr("web").parse().unwrap();
    let as_client = |ip: &str, path: &'static str| {
        let source: SocketAddr = format!("{ip}:1000").parse().unwrap();
        async move {
            let mut stream = TcpStream::connect(web).await.unwrap();
            stream.write_all(&v2_header(source, web)).await.unwrap();
            get_over(stream, path).await.0
        }
    };
    // One request per conveyed address: a second from the same one is limited, another
    // address has its own allowance (all arrive from 127.0.0.1).
    assert_eq!(as_client("198.51.100.1", "/limited").await, 200);
    assert_eq!(as_client("198.51.100.1", "/limited").await, 429);
    assert_eq!(as_client("198.51.100.2", "/limited").await, 200);

    // ip_hash: each conveyed address sticks to one target, and different ones spread.
    let mut targets = std::collections::HashSet::new();
    for i in 1..=16 {
        let ip = format!("192.0.2.{i}");
        let before = (a.count(), b.count());
        for _ in 0..3 {
            assert_eq!(as_client(&ip, "/hash").await, 200);
        }
        let after = (a.count(), b.count());
        let to_a = after.0 - before.0;
        assert!(to_a == 0 || to_a == 3, "{ip} moved between targets");
        targets.insert(to_a == 3);
    }
    assert_eq!(targets.len(), 2, "16 clients all hashed to one target");
}

#[tokio::test]
async fn untrusted_headers_and_missing_headers_close_the_connection() {
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: elsewhere, bind: 127.0.0.1:0, proxy_protocol: { trusted: [10.0.0.0/8] } }
  - { name: strict, bind: 127.0.0.1:0, proxy_protocol: { trusted: [127.0.0.1/32] } }
  - name: optional
    bind: 127.0.0.1:0
    proxy_protocol: { trusted: [127.0.0.1/32], optional: true, timeout: 2s }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("U", &up.addr())],
    ));
    let request = b"GET /r HTTP/1.1\r\nhost: pp.test\r\nconnection: close\r\n\r\n";
    let elsewhere: SocketAddr = gw.addr("elsewhere").parse().unwrap();

    // From outside `trusted`, a header is refused: closed, nothing reaches the upstream.
    let mut stream = TcpStream::connect(elsewhere).await.unwrap();
    let mut bytes = v2_header("203.0.113.7:4000".parse().unwrap(), elsewhere);
    bytes.extend_from_slice(request);
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"");
    let mut stream = TcpStream::connect(elsewhere).await.unwrap();
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 80\r\n";
    stream
        .write_all(&[v1.as_slice(), request].concat())
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"");
    assert_eq!(up.count(), 0);

    // Without a header, a connection from there is served with its own address.
    let stream = TcpStream::connect(elsewhere).await.unwrap();
    let (status, _) = get_over(stream, "/plain").await;
    assert_eq!(status, 200);
    assert_eq!(up.last().headers["x-forwarded-for"], "127.0.0.1");

    // A trusted source must send one...
    let mut stream = TcpStream::connect(gw.addr("strict")).await.unwrap();
    stream.write_all(request).await.unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"");
    assert_eq!(up.count(), 1);
    // ...unless it is optional.
    let stream = TcpStream::connect(gw.addr("optional")).await.unwrap();
    let (status, _) = get_over(stream, "/optional").await;
    assert_eq!(status, 200);
    assert_eq!(up.count(), 2);

    // A malformed header from a trusted source is closed too.
    let mut stream = TcpStream::connect(gw.addr("optional")).await.unwrap();
    // One write: the close may come before a second one.
    stream
        .write_all(&[b"PROXY TCP4 nonsense\r\n".as_slice(), request].concat())
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"");
    assert_eq!(up.count(), 2);

    let metrics = get(gw.admin.as_ref().unwrap(), "/metrics").await.body;
    for line in [
        r#"portico_proxy_protocol_refused_total{listener="elsewhere",reason="untrusted"} 2"#,
        r#"portico_proxy_protocol_refused_total{listener="strict",reason="missing"} 1"#,
        r#"portico_proxy_protocol_refused_total{listener="optional",reason="invalid"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[test]
fn config_errors_point_at_their_position() {
    let dir = temp_dir("pp-errors");
    let file = dir.join("portico.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - name: web
    bind: 127.0.0.1:0
    proxy_protocol: { trusted: [10.0.0.0/33, nope] }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1 } ]
    proxy_protocol: v3
",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, stdout, stderr) = cli(&["validate", "-c", path]);
    let text = format!("{stdout}{stderr}");
    assert_eq!(code, 1, "{text}");
    for wanted in [
        format!("{path}:4:33: proxy_protocol.trusted: invalid address block `10.0.0.0/33`"),
        format!("{path}:4:46: proxy_protocol.trusted: invalid address block `nope`"),
        format!("{path}:10:21: unknown value `v3`"),
    ] {
        assert!(text.contains(&wanted), "{wanted}\n{text}");
    }
}

#[tokio::test]
async fn an_https_listener_reads_the_header_before_the_client_hello() {
    let dir = temp_dir("pp-tls");
    let ca = Ca::new(&dir, "portico test CA");
    let leaf = ca.leaf("a", "a.test", &["a.test"], false, false);
    let up = TestUpstream::start("A").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls: { certificates: [ { cert_file: '@C@', key_file: '@K@' } ] }
    proxy_protocol: { trusted: [127.0.0.1/32] }
routes:
  - { name: all, upstream: u }
upstreams:
  u: { targets: [ { address: '@U@' } ] }
",
        &[("C", &leaf.cert()), ("K", &leaf.key()), ("U", &up.addr())],
    ));
    let secure: SocketAddr = gw.addr("secure").parse().unwrap();
    let mut stream = TcpStream::connect(secure).await.unwrap();
    stream
        .write_all(&v2_header("203.0.113.9:5555".parse().unwrap(), secure))
        .await
        .unwrap();
    let config = pki::client_config(&ca.cert_path(), None, &[b"http/1.1"]);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("a.test".try_into().unwrap(), stream)
        .await
        .unwrap();
    let (status, _) = get_over(tls, "/secure").await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn tls_passthrough_reads_and_sends_headers() {
    let recorder = Recorder::start("v2").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - name: pt
    bind: 127.0.0.1:0
    protocol: tls_passthrough
    upstream: db
    proxy_protocol: { trusted: [127.0.0.1/32] }
upstreams:
  db:
    targets: [ { address: '@R@' } ]
    proxy_protocol: v2
",
        &[("R", &recorder.addr.to_string())],
    ));
    let pt: SocketAddr = gw.addr("pt").parse().unwrap();
    let claimed: SocketAddr = "203.0.113.5:777".parse().unwrap();
    let conveyed_destination: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let mut stream = TcpStream::connect(pt).await.unwrap();
    stream
        .write_all(&v2_header(claimed, conveyed_destination))
        .await
        .unwrap();
    let dir = temp_dir("pp-pt");
    let ca = Ca::new(&dir, "portico test CA");
    let config = pki::client_config(&ca.cert_path(), None, &[b"http/1.1"]);
    // The recorder speaks no TLS: the handshake fails once it has read the header.
    let handshake = tokio_rustls::TlsConnector::from(config)
        .connect("db.test".try_into().unwrap(), stream)
        .await;
    assert!(handshake.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorder.seen().is_empty() {
        assert!(Instant::now() < deadline, "the target saw no header");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorder.seen()[0].1, Some((claimed, conveyed_destination)));
}

/// What the recording upstream saw on one connection: its number and the header's
/// addresses (`None` for LOCAL / UNKNOWN).
type Record = (usize, Option<(SocketAddr, SocketAddr)>);

/// A TCP server that reads the PROXY header each connection starts with (with `ppp`), then
/// answers HTTP with `conn=N source=ADDR` and records both.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one header byte-exactly: v2 by its length field, v1 up to `\n`.
async fn read_header(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head[..5]).await.ok()?;
    if head.starts_with(b"PROXY") {
        head.truncate(5);
        while head.last() != Some(&b'\n') && head.len() < 107 {
            head.push(stream.read_u8().await.ok()?);
        }
    } else {
        stream.read_exact(&mut head[5..]).await.ok()?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await.ok()?;
        head.extend_from_slice(&rest);
    }
    Some(head)
}

fn addresses(header: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, String> {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            _ => None,
        }),
        other => Err(format!("{other:?}")),
    }
}

impl Recorder {
    pub async fn start(version: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Record>>> = Arc::default();
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            for conn in 0.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let Some(header) = read_header(&mut stream).await else {
                        return;
                    };
                    let is_v1 = header.starts_with(b"PROXY");
                    assert_eq!(is_v1, version == "v1", "the wrong version arrived");
                    let addrs = addresses(&header).unwrap();
                    record.lock().unwrap().push((conn, addrs));
                    let source = addrs.map_or("local".to_owned(), |(s, _)| s.to_string());
                    let service = hyper::service::service_fn(move |_req| {
                        let body = format!("conn={conn} source={source}");
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn seen(&self) -> Vec<Record> {
        self.seen.lock().unwrap().clone()
    }
}

/// `conn=N source=ADDR` as the pair.
pub fn parse_answer(body: &str) -> (usize, String) {
    let (conn, source) = body.split_once(' ').unwrap();
    (
        conn.trim_start_matches("conn=").parse().unwrap(),
        source.trim_start_matches("source=").to_owned(),
    )
}

#[tokio::test]
async fn upstreams_get_v1_and_v2_headers_on_connections_private_to_a_client() {
    let v1 = Recorder::start("v1").await;
    let v2 = Recorder::start("v2").await;
    let gw = Portico::start(&fill(
        "\
workers: 1
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: one, match: { path_prefix: /v1 }, upstream: one }
  - { name: two, match: { path_prefix: /v2 }, upstream: two }
upstreams:
  one:
    targets: [ { address: '@V1@' } ]
    proxy_protocol: v1
  two:
    targets: [ { address: '@V2@' } ]
    proxy_protocol: v2
    health_check: { active: { path: /healthz, interval: 100ms, healthy: 1, unhealthy: 1 } }
",
        &[("V1", &v1.addr.to_string()), ("V2", &v2.addr.to_string())],
    ));
    let web: SocketAddr = gw.addr("web").parse().unwrap();

    // Two clients, each on its own keep-alive connection, two requests each way.
    let mut conns_of = Vec::new();
    for _client in 0..2 {
        let stream = TcpStream::connect(web).await.unwrap();
        let me = stream.local_addr().unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut conns = Vec::new();
        for path in ["/v1/a", "/v2/a", "/v1/b", "/v2/b"] {
            let req = http::Request::get(path)
                .header("host", "pp.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let (conn, source) = parse_answer(std::str::from_utf8(&body).unwrap());
            // The header names this client, on every upstream connection it uses.
            assert_eq!(source, me.to_string(), "{path}");
            conns.push((path.starts_with("/v1"), conn));
        }
        // Its upstream connections are kept for it: one per upstream.
        assert_eq!(conns[0], conns[2], "{conns:?}");
        assert_eq!(conns[1], conns[3], "{conns:?}");
        conns_of.push(conns);
    }
    for conn in &conns_of[0] {
        assert!(
            !conns_of[1].contains(conn),
            "a connection carried both clients: {conns_of:?}"
        );
    }
    // The destination is the address the client connected to.
    for (_, addrs) in v1.seen() {
        assert_eq!(addrs.unwrap().1, web);
    }
    assert!(v2.seen().iter().any(|(_, a)| a.is_some_and(|a| a.1 == web)));

    // The active checks of `two` send LOCAL headers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !v2.seen().iter().any(|(_, a)| a.is_none()) {
        assert!(Instant::now() < deadline, "no LOCAL header from a check");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_read_headers_and_send_them_to_their_targets() {
    let v1 = Recorder::start("v1").await;
    let v2 = Recorder::start("v2").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: plain, bind: 127.0.0.1:0, protocol: tcp, upstream: one }
  - name: behind
    bind: 127.0.0.1:0
    protocol: tcp
    upstream: two
    proxy_protocol: { trusted: [127.0.0.1/32] }
upstreams:
  one:
    targets: [ { address: '@V1@' } ]
    proxy_protocol: v1
  two:
    targets: [ { address: '@V2@' } ]
    proxy_protocol: v2
",
        &[("V1", &v1.addr.to_string()), ("V2", &v2.addr.to_string())],
    ));
    // A direct client: the target is told the client's own address, in v1.
    let stream = TcpStream::connect(gw.addr("plain")).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (status, body) = get_over(stream, "/").await;
    assert_eq!(status, 200);
    assert_eq!(parse_answer(&body).1, me.to_string());
    let plain: SocketAddr = gw.addr("plain").parse().unwrap();
    assert_eq!(v1.seen()[0].1, Some((me, plain)));

    // Behind a balancer: the conveyed addresses travel on, in v2.
    let claimed: SocketAddr = "203.0.113.8:4242".parse().unwrap();
    let destination: SocketAddr = "198.51.100.2:6379".parse().unwrap();
    let mut stream = TcpStream::connect(gw.addr("behind")).await.unwrap();
    stream
        .write_all(&v2_header(claimed, destination))
        .await
        .unwrap();
    let (status, body) = get_over(stream, "/").await;
    assert_eq!(status, 200);
    assert_eq!(parse_answer(&body).1, claimed.to_string());
    assert_eq!(v2.seen()[0].1, Some((claimed, destination)));
    // And the access log names the conveyed client.
    assert!(
        gw.wait_log("\"client\":\"203.0.113.8:4242\"", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
}

#[test]
fn explain_says_whether_the_peer_may_send_a_header() {
    let dir = temp_dir("pp-explain");
    let file = dir.join("portico.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - name: web
    bind: 127.0.0.1:8080
    proxy_protocol: { trusted: [10.0.0.0/8], timeout: 2s }
routes:
  - { name: all, upstream: u }
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1 } ]
",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let url = "http://127.0.0.1:8080/";
    let (code, out, err) = cli(&["explain", "-c", path, "GET", url, "--peer", "10.1.2.3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "proxy     PROXY protocol v1/v2 first, within 2s; peer 10.1.2.3 is a trusted source"
        ),
        "{out}"
    );
    let (code, out, err) = cli(&["explain", "-c", path, "GET", url, "--peer", "192.0.2.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("peer 192.0.2.1 is not a trusted source: a header from it is refused"),
        "{out}"
    );
}
