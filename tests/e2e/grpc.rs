//! gRPC through the real proxy with real gRPC peers (grpcio, tests/e2e/grpc/peers.py) on both
//! ends: every streaming kind, trailers, deadlines, portico's own answers as gRPC statuses,
//! gRPC health checks, and grpc-status in the access log and metrics.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::peer::Peer;
use crate::support::pki::Ca;
use crate::support::{Portico, fill, get, temp_dir};

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/grpc/peers.py");

/// A grpcio Echo server (with grpc.health.v1) on 127.0.0.1:0; it exits when dropped.
pub(crate) struct Server(Peer);

impl std::ops::Deref for Server {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        &self.0
    }
}

impl Server {
    pub(crate) fn start() -> Self {
        Server(Peer::python([PEERS, "server"]))
    }

    /// Over TLS with this certificate and key.
    fn start_tls(cert: &str, key: &str) -> Self {
        Server(Peer::python([PEERS, "server", cert, key]))
    }
}

/// Makes `calls` (see peers.py) with a grpcio client; one result per call.
pub(crate) fn calls(addr: &str, calls: Value) -> Vec<Value> {
    calls_tls(addr, calls, &[])
}

/// The same over TLS: `[CA file, server name]`.
fn calls_tls(addr: &str, calls: Value, tls: &[&str]) -> Vec<Value> {
    let out = Command::new("python3")
        .args([PEERS, "client", addr, &calls.to_string()])
        .args(tls)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn access_lines(gw: &Portico, path: &str) -> Vec<Value> {
    gw.lines()
        .iter()
        .filter_map(|l| l.strip_prefix("ACCESS "))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["path"] == path)
        .collect()
}

#[tokio::test]
async fn every_kind_of_call_passes_with_its_trailers_and_status() {
    let server = Server::start();
    let gw = Portico::start(&fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
upstreams:
  echo: { protocol: grpc, targets: [ { address: '@S@' } ] }
",
        &[("S", &server.addr)],
    ));
    let web = gw.addr("web");
    let results = calls(
        &web,
        json!([
            { "kind": "unary", "text": "hi", "n": 7, "timeout": null },
            { "kind": "unary", "text": "fail" },
            { "kind": "client_stream", "n": 4 },
            { "kind": "server_stream", "text": "x", "n": 5 },
            { "kind": "bidi", "n": 3 },
        ]),
    );
    assert_eq!(results[0]["code"], "OK");
    assert_eq!(results[0]["text"], "echo:hi");
    assert_eq!(results[0]["n"], 7);
    assert_eq!(
        results[0]["trailers"]["x-trailer"], "yes",
        "trailers relayed"
    );
    assert_eq!(results[0]["remaining_ms"], -1, "no deadline was asked for");
    assert_eq!(results[1]["code"], "NOT_FOUND");
    assert_eq!(results[1]["details"], "no such thing");
    assert_eq!(results[2]["text"], "0,1,2,3");
    assert_eq!(results[3]["items"], json!([0, 1, 2, 3, 4]));
    assert_eq!(results[4]["items"], json!(["re:0", "re:1", "re:2"]));

    // The access log has each call's grpc-status, read from its trailers.
    assert!(gw.wait_log_count("ACCESS", 5, Duration::from_secs(5)));
    let unary = access_lines(&gw, "/test.Echo/Unary");
    let mut statuses: Vec<i64> = unary
        .iter()
        .map(|l| l["grpc_status"].as_i64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [0, 5]);
    assert_eq!(access_lines(&gw, "/test.Echo/Bidi")[0]["grpc_status"], 0);
    let metrics = get(gw.admin.as_ref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(
            "portico_grpc_responses_total{route=\"echo\",upstream=\"echo\",grpc_status=\"0\"} 4"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "portico_grpc_responses_total{route=\"echo\",upstream=\"echo\",grpc_status=\"5\"} 1"
    ));
}

#[tokio::test]
async fn portico_answers_grpc_calls_with_grpc_statuses_and_deadlines() {
    let server = Server::start();
    let gw = Portico::start(&fill(
        "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
consumers: [ { name: a, api_keys: ['a-key-1234567890'] } ]
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
  - { name: capped, match: { path_prefix: /capped.Echo/ }, upstream: echo, timeout: 1s,
      rewrite: { regex: '^/capped', replace: '/test' } }
  - { name: keyed, match: { path_prefix: /keyed.Echo/ }, upstream: echo,
      plugins: [ { key_auth: {} } ], rewrite: { regex: '^/keyed', replace: '/test' } }
  - { name: limited, match: { path_prefix: /limited.Echo/ }, upstream: echo,
      plugins: [ { rate_limit: { limit: 1, window: 1m, by: route } } ],
      rewrite: { regex: '^/limited', replace: '/test' } }
  - { name: dead, match: { path_prefix: /dead.Echo/ }, upstream: dead }
upstreams:
  echo: { protocol: http2, targets: [ { address: '@S@' } ] }
  dead: { protocol: http2, targets: [ { address: '127.0.0.1:1' } ] }
",
        &[("S", &server.addr)],
    ));
    let web = gw.addr("web");
    let started = Instant::now();
    let results = calls(
        &web,
        json!([
            // The client's deadline reaches the upstream.
            { "kind": "unary", "text": "hi", "timeout": 0.8 },
            // The route's timeout caps a longer one, and is sent on.
            { "kind": "unary", "path": "/capped.Echo/Unary", "text": "hi", "timeout": 30 },
            // Past the route's timeout: portico's DEADLINE_EXCEEDED, not a hang.
            { "kind": "unary", "path": "/capped.Echo/Unary", "text": "slow", "timeout": 30 },
            { "kind": "unary", "path": "/keyed.Echo/Unary" },
            { "kind": "unary", "path": "/keyed.Echo/Unary",
              "metadata": { "x-api-key": "a-key-1234567890" } },
            { "kind": "unary", "path": "/limited.Echo/Unary" },
            { "kind": "unary", "path": "/limited.Echo/Unary" },
            { "kind": "unary", "path": "/dead.Echo/Unary" },
            { "kind": "unary", "path": "/nowhere.Echo/Unary" },
        ]),
    );
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "OK",
            "OK",
            "DEADLINE_EXCEEDED",
            "UNAUTHENTICATED",
            "OK",
            "OK",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "UNIMPLEMENTED",
        ],
        "{results:#?}"
    );
    let left = |i: usize| results[i]["remaining_ms"].as_i64().unwrap();
    assert!((1..=800).contains(&left(0)), "{}", left(0));
    assert!((1..=1000).contains(&left(1)), "{}", left(1));
    // portico sends the capped deadline on, so the upstream's own DEADLINE_EXCEEDED may
    // arrive in the same instant as portico's: either ends the call at 1 s.
    let details = results[2]["details"].as_str().unwrap();
    assert!(
        details.contains("did not answer within") || details == "Deadline Exceeded",
        "{results:#?}"
    );
    assert_eq!(results[3]["details"], "an API key is required");
    assert!(started.elapsed() < Duration::from_secs(20));
    // portico's own answers are logged with the status they carried.
    assert!(gw.wait_log_count("ACCESS", 9, Duration::from_secs(5)));
    let keyed = access_lines(&gw, "/keyed.Echo/Unary");
    let mut statuses: Vec<i64> = keyed
        .iter()
        .map(|l| l["grpc_status"].as_i64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [0, 16]);
}

#[tokio::test]
async fn grpc_health_checks_follow_the_servers_serving_status() {
    let server = Server::start();
    let gw = Portico::start(&fill(
        "\
admin: { listen: 127.0.0.1:0 }
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
upstreams:
  echo:
    protocol: http2
    targets: [ { address: '@S@' } ]
    health_check:
      active: { type: grpc, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 1 }
",
        &[("S", &server.addr)],
    ));
    let admin = gw.admin.clone().unwrap();
    let healthy = |want: bool| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let targets = get(&admin, "/upstreams/echo/targets").await.json();
                if targets["targets"][0]["active_check_up"] == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(healthy(true).await, "SERVING brings the target up");
    // The server says NOT_SERVING from now on: the check takes the target out.
    let sick = calls(
        &gw.addr("web"),
        json!([{ "kind": "unary", "text": "sick" }]),
    );
    assert_eq!(sick[0]["code"], "OK");
    assert!(healthy(false).await, "NOT_SERVING takes the target out");
    let refused = calls(&gw.addr("web"), json!([{ "kind": "unary", "text": "x" }]));
    assert_eq!(refused[0]["code"], "UNAVAILABLE");
    // Straight to the server: SERVING again, and the target comes back.
    calls(&server.addr, json!([{ "kind": "unary", "text": "well" }]));
    assert!(healthy(true).await, "SERVING again brings it back");
}

#[tokio::test]
async fn a_stream_the_client_cancels_is_logged_as_cancelled() {
    let server = Server::start();
    let gw = Portico::start(&fill(
        "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
upstreams:
  echo: { protocol: http2, targets: [ { address: '@S@' } ] }
",
        &[("S", &server.addr)],
    ));
    let results = calls(
        &gw.addr("web"),
        json!([{ "kind": "server_stream", "text": "trickle", "n": 100, "cancel_after": 2 }]),
    );
    assert_eq!(results[0]["items"], json!([0, 1]));
    assert!(gw.wait_log("ACCESS", Duration::from_secs(10)));
    let line = &access_lines(&gw, "/test.Echo/ServerStream")[0];
    assert_eq!(line["grpc_status"], 1, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn calls_cross_tls_on_both_sides() {
    let dir = temp_dir("grpc-tls");
    let ca = Ca::new(&dir, "test CA");
    let front = ca.leaf("front", "api.test", &["api.test"], false, false);
    let back = ca.leaf("back", "echo.test", &["echo.test"], false, false);
    let server = Server::start_tls(&back.cert(), &back.key());
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let gw = Portico::start(&fill(
        "\
listeners:
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls: { certificates: [ { cert_file: '@FC@', key_file: '@FK@' } ] }
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
upstreams:
  echo:
    protocol: grpc
    targets: [ { address: 'localhost:@P@' } ]
    tls: { sni: echo.test, ca_file: '@CA@' }
    health_check: { active: { type: grpc, interval: 100ms, healthy: 1, unhealthy: 1 } }
",
        &[
            ("FC", &front.cert()),
            ("FK", &front.key()),
            ("P", &port),
            ("CA", &ca.cert_path().display().to_string()),
        ],
    ));
    let ca_file = ca.cert_path().display().to_string();
    let results = calls_tls(
        &gw.addr("secure"),
        json!([
            { "kind": "unary", "text": "hi" },
            { "kind": "server_stream", "text": "x", "n": 3 },
            { "kind": "bidi", "n": 2 },
            { "kind": "unary", "path": "/other.Echo/Unary" },
        ]),
        &[&ca_file, "api.test"],
    );
    assert_eq!(results[0]["text"], "echo:hi", "{results:#?}");
    assert_eq!(results[0]["trailers"]["x-trailer"], "yes");
    assert_eq!(results[1]["items"], json!([0, 1, 2]));
    assert_eq!(results[2]["items"], json!(["re:0", "re:1"]));
    assert_eq!(results[3]["code"], "UNIMPLEMENTED");
    // The gRPC health check speaks TLS to the target too: NOT_SERVING takes it out, and
    // only a check that got SERVING over TLS brings it back.
    calls_tls(
        &gw.addr("secure"),
        json!([{ "kind": "unary", "text": "sick" }]),
        &[&ca_file, "api.test"],
    );
    assert!(gw.wait_log("target unhealthy", Duration::from_secs(10)));
    calls_tls(
        &server.addr,
        json!([{ "kind": "unary", "text": "well" }]),
        &[&ca_file, "echo.test"],
    );
    assert!(
        gw.wait_log("target healthy", Duration::from_secs(10)),
        "{}",
        gw.log_text()
    );
}

/// One gRPC message frame: uncompressed, length, message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// `test.Msg { text, n }` in protobuf.
fn msg(text: &str, n: u8) -> Vec<u8> {
    let mut out = vec![0x0a, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    if n > 0 {
        out.extend_from_slice(&[0x10, n]);
    }
    out
}

/// Splits a gRPC-Web body into its message frames and its trailer block.
fn web_frames(body: &[u8]) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut rest = body;
    let mut messages = Vec::new();
    let mut trailers = Vec::new();
    while !rest.is_empty() {
        let flag = rest[0];
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if flag == 0x80 {
            assert!(trailers.is_empty(), "one trailer frame, last");
            let text = std::str::from_utf8(payload).unwrap();
            assert!(text.ends_with("\r\n"), "{text:?}");
            // grpcio sends an empty `grpc-message` with a success: not worth comparing.
            trailers = text
                .trim_end()
                .split("\r\n")
                .filter(|l| *l != "grpc-message:")
                .map(str::to_owned)
                .collect();
            trailers.sort();
        } else {
            assert_eq!(flag, 0, "uncompressed message");
            assert!(trailers.is_empty(), "no message after the trailers");
            messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    (messages, trailers)
}

/// A gRPC-Web call over HTTP/1.1, as a browser makes it: status, head, body bytes.
async fn web_call(
    addr: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(path)
        .header("host", "api.test")
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header("origin", "https://app.test")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    assert!(
        collected.trailers().is_none(),
        "gRPC-Web has no HTTP trailers"
    );
    (
        parts.status.as_u16(),
        parts.headers,
        collected.to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn grpc_web_clients_reach_grpc_upstreams_in_binary_and_text() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = Server::start();
    let gw = Portico::start(&fill(
        "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - name: echo
    match: { path_prefix: /test.Echo/ }
    plugins:
      - grpc_web: {}
      - cors: { origins: ['https://app.test'], expose_headers: [grpc-status, grpc-message] }
    upstream: echo
upstreams:
  echo: { protocol: http2, targets: [ { address: '@S@' } ] }
",
        &[("S", &server.addr)],
    ));
    let web = gw.addr("web");
    // The reply the server sends for `hi`: text, n, and remaining_ms = -1 (no deadline).
    let mut reply = msg("echo:hi", 2);
    reply.extend_from_slice(&[
        0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ]);

    // Binary, unary.
    let (status, head, body) = web_call(
        &web,
        "/test.Echo/Unary",
        "application/grpc-web+proto",
        frame(&msg("hi", 2)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web+proto");
    assert_eq!(head["access-control-allow-origin"], "https://app.test");
    let (messages, trailers) = web_frames(&body);
    assert_eq!(messages, [reply.clone()]);
    assert_eq!(trailers, ["grpc-status:0", "x-trailer:yes"]);
    // Byte for byte: the message frame, then 0x80, the block's length, the block.
    assert_eq!(&body[..5 + reply.len()], &frame(&reply)[..]);
    assert_eq!(body[5 + reply.len()], 0x80);

    // Text, server streaming: base64 both ways.
    let (status, head, body) = web_call(
        &web,
        "/test.Echo/ServerStream",
        "application/grpc-web-text",
        b64.encode(frame(&msg("x", 3))).into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head["content-type"], "application/grpc-web-text");
    let text = String::from_utf8(body).unwrap();
    // Segments, each padded where it ends: every 4-character group decodes alone.
    assert_eq!(text.len() % 4, 0);
    let mut decoded = Vec::new();
    for group in text.as_bytes().chunks(4) {
        decoded.extend(b64.decode(group).unwrap());
    }
    let (messages, trailers) = web_frames(&decoded);
    assert_eq!(messages, [msg("x", 0), msg("x", 1), msg("x", 2)]);
    assert_eq!(trailers, ["grpc-status:0"]);

    // An upstream error: grpcio answers it trailers-only, which stays in the head (a status
    // in trailers would come as the last frame, as above); portico's own too.
    let (_, head, body) = web_call(
        &web,
        "/test.Echo/Unary",
        "application/grpc-web+proto",
        frame(&msg("fail", 0)),
    )
    .await;
    let (messages, trailers) = web_frames(&body);
    assert!(messages.is_empty());
    assert!(
        head.get("grpc-status").is_some_and(|s| s == "5")
            || trailers.contains(&"grpc-status:5".to_owned()),
        "{head:?} {trailers:?}"
    );
    assert_eq!(head["content-type"], "application/grpc-web+proto");
    let (status, head, body) = web_call(
        &web,
        "/nowhere.Echo/Unary",
        "application/grpc-web+proto",
        frame(&msg("x", 0)),
    )
    .await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(head["grpc-status"], "12");
    assert_eq!(head["content-type"], "application/grpc-web+proto");

    // The browser's preflight.
    let preflight = crate::support::H1::connect(&web)
        .await
        .send(
            http::Request::builder()
                .method("OPTIONS")
                .uri("/test.Echo/Unary")
                .header("host", "api.test")
                .header("origin", "https://app.test")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type,x-grpc-web")
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.test")
    );

    // The access log has the status the trailer frame carried.
    assert!(gw.wait_log_count("ACCESS", 5, Duration::from_secs(5)));
    let mut statuses: Vec<i64> = access_lines(&gw, "/test.Echo/Unary")
        .iter()
        .filter(|l| l["method"] == "POST")
        .map(|l| l["grpc_status"].as_i64().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [0, 5]);
}

#[tokio::test]
async fn grpc_health_checks_ask_about_the_configured_service() {
    let server = Server::start();
    let config = |service: &str| {
        fill(
            "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - { name: echo, match: { path_prefix: /test.Echo/ }, upstream: echo }
upstreams:
  echo:
    protocol: grpc
    targets: [ { address: '@S@' } ]
    health_check:
      active: { type: grpc, service: '@N@', interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 1 }
",
            &[("S", &server.addr), ("N", service)],
        )
    };
    // A service the server knows: the target stays in.
    let known = Portico::start(&config("test.Echo"));
    let ok = calls(
        &known.addr("web"),
        json!([{ "kind": "unary", "text": "x" }]),
    );
    assert_eq!(ok[0]["code"], "OK");
    // One it does not know (NOT_FOUND): the check fails and takes the target out.
    let unknown = Portico::start(&config("test.Nope"));
    assert!(unknown.wait_log("target unhealthy", Duration::from_secs(10)));
    let refused = calls(
        &unknown.addr("web"),
        json!([{ "kind": "unary", "text": "x" }]),
    );
    assert_eq!(refused[0]["code"], "UNAVAILABLE");
    assert!(
        !known.log_text().contains("target unhealthy"),
        "{}",
        known.log_text()
    );
}
