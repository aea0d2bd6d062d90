//! WebSocket through portico with real peers (Python `websockets`): messages both ways,
//! the route's plugins on the upgrade, the upstream's answer checked, and tunnels through
//! reloads, drains and the route's stream limits.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::peer::Peer;
use crate::support::{Portico, TestUpstream, fill, get, raw, statuses, temp_dir};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/ws/peer.py")
}

/// The echo server; it appends `close CODE` to `log` for each connection that ends.
fn echo_server(log: &Path) -> Peer {
    Peer::python([script().as_os_str(), "server".as_ref(), log.as_os_str()])
}

/// A WebSocket client process driven line by line (tests/e2e/ws/peer.py).
pub(crate) struct Client {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    /// The first line: `open SUBPROTOCOL` or `refused STATUS`.
    pub(crate) first: String,
}

impl Client {
    pub(crate) fn connect(url: &str, key: Option<&str>) -> Self {
        let mut command = Command::new("python3");
        command
            .arg(script())
            .arg("client")
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(key) = key {
            command.env("WS_KEY", key);
        }
        let mut child = command.spawn().expect("python3 with websockets");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        Client {
            child,
            stdin,
            out,
            first: first.trim().to_owned(),
        }
    }

    pub(crate) fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.out.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until the server's log has `count` lines with `needle`.
fn wait_file(path: &Path, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.matches(needle).count() >= count || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0 }
drain_timeout: 700ms
listeners:
  - { name: web, bind: 127.0.0.1:0, limits: { idle_timeout: 1s } }
consumers:
  - { name: app, api_keys: [secret-key-1] }
routes:
  - name: ws
    match: { path_prefix: /ws }
    stream_idle_timeout: @IDLE@
    upstream: echo
  - name: keyed
    match: { path_prefix: /keyed }
    plugins: [ { key_auth: {} } ]
    upstream: echo
  - { name: plain, match: { path_prefix: /plain }, respond: { status: 200, body: plain } }
@MORE@
upstreams:
  echo: { targets: [ { address: '@ECHO@' } ] }
";

fn config(echo: &str, idle: &str, more: &str) -> String {
    fill(CONFIG, &[("ECHO", echo), ("IDLE", idle), ("MORE", more)])
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_every_kind_pass_both_ways() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let url = format!("ws://{}/ws/chat", gw.addr("web"));
    let mut client = Client::connect(&url, None);
    // `Sec-WebSocket-Protocol` came back from the upstream through portico.
    assert_eq!(client.first, "open chat");
    let result: serde_json::Value = serde_json::from_str(&client.cmd("exchange")).unwrap();
    for kind in ["text", "binary", "ping", "fragmented", "big"] {
        assert_eq!(result[kind], true, "{kind}: {result}");
    }
    let headers: serde_json::Value = serde_json::from_str(&client.cmd("headers")).unwrap();
    assert!(headers["sec-websocket-key"].as_str().is_some(), "{headers}");
    assert_eq!(headers["sec-websocket-protocol"], "chat", "{headers}");
    assert_eq!(headers["upgrade"], "websocket", "{headers}");
    assert!(headers["x-forwarded-for"].as_str().is_some(), "{headers}");

    let admin = gw.admin.clone().unwrap();
    let metrics = get(&admin, "/metrics").await.body;
    assert_eq!(
        metric(&metrics, "portico_tunnels_active{route=\"ws\"}"),
        Some(1.0),
        "{metrics}"
    );
    // The upgraded connection still counts as the listener's.
    assert_eq!(
        metric(&metrics, "portico_connections_active{listener=\"web\"}"),
        Some(1.0),
        "{metrics}"
    );
    let up = metric(
        &metrics,
        "portico_tunnel_bytes_total{route=\"ws\",direction=\"to_upstream\"}",
    )
    .unwrap();
    let down = metric(
        &metrics,
        "portico_tunnel_bytes_total{route=\"ws\",direction=\"to_client\"}",
    )
    .unwrap();
    assert!(
        up > 16.0 * 1024.0 * 1024.0 && down > 16.0 * 1024.0 * 1024.0,
        "{up} {down}"
    );
    drop(client);
    // The tunnel ends with its client; the gauge comes back down.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(&admin, "/metrics").await.body;
        if metric(&metrics, "portico_tunnels_active{route=\"ws\"}") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_passes_the_routes_plugins() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let url = format!("ws://{}/keyed", gw.addr("web"));
    assert_eq!(Client::connect(&url, None).first, "refused 401");
    let mut client = Client::connect(&url, Some("secret-key-1"));
    assert_eq!(client.first, "open chat");
    assert_eq!(client.cmd("echo hi"), "echo hi");
    // One connection only reached the upstream: the refused one never did.
    drop(client);
    let text = wait_file(&log, "close", 1);
    assert_eq!(text.matches("open").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_pipelined_behind_a_refused_upgrade_is_a_request() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let upgrade = "GET /keyed HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let next = "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = raw(
        &gw.addr("web"),
        format!("{upgrade}{next}").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(statuses(&answer), vec![401, 200], "{answer}");
    assert!(answer.ends_with("plain"), "{answer}");
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("open")
    );
}

/// An upstream that answers every request with 101 and `Upgrade: h2c`, whatever was asked.
async fn wrong_switcher() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nRAW")
                    .await;
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_101_for_the_protocol_asked_opens_a_tunnel() {
    let (switcher, _task) = wrong_switcher().await;
    let plain = TestUpstream::start("plain").await;
    let gw = Portico::start(&fill(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: wrong, match: { path_prefix: /wrong }, upstream: wrong }
  - { name: other, upstream: plain }
upstreams:
  wrong: { targets: [ { address: '@W@' } ] }
  plain: { targets: [ { address: '@P@' } ] }
",
        &[("W", &switcher), ("P", &plain.addr())],
    ));
    let ask = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // A 101 to another protocol: 502, and none of the upstream's bytes reach the client.
    let answer = raw(
        &gw.addr("web"),
        ask("/wrong").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(statuses(&answer), vec![502], "{answer}");
    assert!(!answer.contains("RAW"), "{answer}");
    // Any other status is an answer like any other, and the connection goes on.
    let answer = raw(
        &gw.addr("web"),
        format!(
            "{}GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n",
            ask("/status/403")
        )
        .as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(statuses(&answer), vec![403, 200], "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_outlives_the_listener_idle_timeout_and_a_reload() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let mut client = Client::connect(&format!("ws://{}/ws", gw.addr("web")), None);
    assert_eq!(client.first, "open chat");
    // Quiet for longer than the listener's idle_timeout (1s): the tunnel is not cut.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.cmd("echo still"), "echo still");
    let more = "  - { name: extra, match: { path_prefix: /extra }, respond: { status: 204 } }";
    assert!(gw.reload(&config(&echo.addr, "5m", more)));
    assert_eq!(client.cmd("echo after"), "echo after");
    assert_eq!(gw.count_lines("tunnel closed by portico"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_tunnel_closes_at_the_stream_idle_timeout_with_1001() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "1500ms", ""));
    let mut client = Client::connect(&format!("ws://{}/ws", gw.addr("web")), None);
    assert_eq!(client.first, "open chat");
    assert_eq!(client.cmd("echo one"), "echo one");
    let quiet = Instant::now();
    assert_eq!(client.cmd("wait_close"), "closed 1001");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(wait_file(&log, "close 1001", 1).contains("close 1001"));
    assert!(
        gw.wait_log("reason=\"stream_idle_timeout\"", Duration::from_secs(2))
            || gw.wait_log("reason=stream_idle_timeout", Duration::from_secs(2))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_closes_tunnels_with_1001_at_its_deadline() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let mut gw = Portico::start(&config(&echo.addr, "5m", ""));
    let mut client = Client::connect(&format!("ws://{}/ws", gw.addr("web")), None);
    assert_eq!(client.first, "open chat");
    assert_eq!(client.cmd("echo before"), "echo before");
    gw.signal("TERM");
    let draining = Instant::now();
    // The tunnel still works while the drain waits for it.
    assert_eq!(client.cmd("echo draining"), "echo draining");
    assert_eq!(client.cmd("wait_close"), "closed 1001");
    let waited = draining.elapsed();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    // The upstream got a close 1001 too (masked, as a client's frames are).
    assert!(wait_file(&log, "close 1001", 1).contains("close 1001"));
    assert!(gw.terminate(Duration::from_secs(5)).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_removed_by_a_reload_closes_its_tunnels_with_1001() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let web = gw.addr("web");
    let mut kept = Client::connect(&format!("ws://{web}/keyed"), Some("secret-key-1"));
    let mut removed = Client::connect(&format!("ws://{web}/ws"), None);
    assert_eq!(kept.first, "open chat");
    assert_eq!(removed.first, "open chat");
    let without_ws = CONFIG
        .replace(
            "  - name: ws\n    match: { path_prefix: /ws }\n    stream_idle_timeout: @IDLE@\n    upstream: echo\n",
            "",
        );
    assert!(gw.reload(&fill(&without_ws, &[("ECHO", &echo.addr), ("MORE", "")])));
    let reloaded = Instant::now();
    assert_eq!(removed.cmd("wait_close"), "closed 1001");
    assert!(reloaded.elapsed() >= Duration::from_millis(600));
    // The unchanged route keeps its tunnel.
    assert_eq!(kept.cmd("echo kept"), "echo kept");
}

/// One masked client frame (RFC 6455 §5.2) with a short payload.
fn client_frame(opcode: u8, payload: &[u8]) -> bytes::Bytes {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out.into()
}

/// Reads `len` bytes from an HTTP/2 stream.
async fn read_exactly(recv: &mut h2::RecvStream, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        let chunk = tokio::time::timeout(Duration::from_secs(10), recv.data())
            .await
            .expect("no data from the tunnel")
            .expect("the stream ended")
            .unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got
}

/// Opens a WebSocket over HTTP/2 (RFC 8441) on `web`'s `/ws/h2`: the stream's two halves.
async fn h2_websocket(web: &str) -> (h2::SendStream<bytes::Bytes>, h2::RecvStream) {
    let tcp = tokio::net::TcpStream::connect(&web).await.unwrap();
    h2_websocket_over(tcp, "http", web).await
}

/// [`h2_websocket`] over an established stream (h2c, or TLS with ALPN h2).
async fn h2_websocket_over<S>(
    io: S,
    scheme: &str,
    web: &str,
) -> (h2::SendStream<bytes::Bytes>, h2::RecvStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // A first request: its answer comes after portico's SETTINGS, which enable extended
    // CONNECT (RFC 8441 §3).
    let plain = http::Request::get(format!("{scheme}://{web}/plain"))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(plain, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    assert!(client.is_extended_connect_protocol_enabled());

    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("{scheme}://{web}/ws/h2"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from("websocket"));
    let mut client = client.ready().await.unwrap();
    let (response, send) = client.send_request(req, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let recv = response.into_body();
    (send, recv)
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_over_http2_is_bridged_to_an_http11_upgrade() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let gw = Portico::start(&config(&echo.addr, "5m", ""));
    let web = gw.addr("web");
    let (mut send, mut recv) = h2_websocket(&web).await;

    let message = b"hello over h2";
    send.send_data(client_frame(0x1, message), false).unwrap();
    let echoed = read_exactly(&mut recv, 2 + message.len()).await;
    assert_eq!(echoed[..2], [0x81, message.len() as u8]);
    assert_eq!(&echoed[2..], message);

    // A normal close: 1000 both ways.
    send.send_data(client_frame(0x8, &1000u16.to_be_bytes()), false)
        .unwrap();
    let close = read_exactly(&mut recv, 4).await;
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE8]);
    // The client's end of the stream closes the tunnel toward the upstream too.
    send.send_data(bytes::Bytes::new(), true).unwrap();
    let text = wait_file(&log, "close 1000", 1);
    assert!(text.contains("close 1000"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_closes_at_the_routes_max_stream_duration_with_1001() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let capped = CONFIG.replace(
        "    stream_idle_timeout: @IDLE@\n",
        "    stream_idle_timeout: @IDLE@\n    max_stream_duration: 1s\n",
    );
    let gw = Portico::start(&fill(
        &capped,
        &[("ECHO", &echo.addr), ("IDLE", "5m"), ("MORE", "")],
    ));
    let opened = Instant::now();
    let mut client = Client::connect(&format!("ws://{}/ws", gw.addr("web")), None);
    assert_eq!(client.first, "open chat");
    assert_eq!(client.cmd("echo busy"), "echo busy");
    assert_eq!(client.cmd("wait_close"), "closed 1001");
    let lasted = opened.elapsed();
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(5),
        "{lasted:?}"
    );
    assert!(gw.wait_log("max_stream_duration", Duration::from_secs(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_closes_websockets_over_http2_with_1001() {
    let log = temp_dir("ws").join("server.log");
    let echo = echo_server(&log);
    let mut gw = Portico::start(&config(&echo.addr, "5m", ""));
    let (mut send, mut recv) = h2_websocket(&gw.addr("web")).await;
    send.send_data(client_frame(0x1, b"before"), false).unwrap();
    assert_eq!(&read_exactly(&mut recv, 8).await[2..], b"before");
    gw.signal("TERM");
    let draining = Instant::now();
    let close = read_exactly(&mut recv, 4).await;
    assert_eq!(close, [0x88, 0x02, 0x03, 0xE9]);
    assert!(draining.elapsed() >= Duration::from_millis(600));
    assert!(wait_file(&log, "close 1001", 1).contains("close 1001"));
    assert!(gw.terminate(Duration::from_secs(5)).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_over_http2_on_an_https_listener() {
    use crate::support::pki::{self, Ca};
    let dir = temp_dir("ws-h2-tls");
    let log = dir.join("server.log");
    let echo = echo_server(&log);
    let ca = Ca::new(&dir, "portico test CA");
    let pair = ca.leaf("chat", "chat.test", &["chat.test"], false, false);
    let tls = format!(
        "  - name: secure\n    bind: 127.0.0.1:0\n    protocol: https\n    tls: {{ certificates: [ {{ cert_file: '{}', key_file: '{}' }} ] }}\n",
        pair.cert.display(),
        pair.key.display()
    );
    let config = config(&echo.addr, "5m", "").replace(
        "  - { name: web, bind: 127.0.0.1:0, limits: { idle_timeout: 1s } }\n",
        &format!("  - {{ name: web, bind: 127.0.0.1:0, limits: {{ idle_timeout: 1s }} }}\n{tls}"),
    );
    let gw = Portico::start(&config);
    let client = pki::client_config(&ca.cert_path(), None, &[b"h2"]);
    let stream = pki::connect(&gw.addr("secure"), "chat.test", client)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, mut recv) = h2_websocket_over(stream, "https", "chat.test").await;
    let message = b"hello over h2 and TLS";
    send.send_data(client_frame(0x2, message), false).unwrap();
    let echoed = read_exactly(&mut recv, 2 + message.len()).await;
    assert_eq!(echoed[..2], [0x82, message.len() as u8]);
    assert_eq!(&echoed[2..], message);
}
