//! Layer 4 listeners (`tcp`, `tls`) with real `redis-server` targets and the real
//! `redis-cli`: balancing, a target killed mid-test, idle timeout, connection limits, drain,
//! TLS termination (and TLS again to the upstream), metrics and the access log.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pki::{self, Ca};
use crate::support::{Portico, cli, fill, get, temp_dir};

pub use crate::support::free_port;

/// A real `redis-server` on 127.0.0.1, without persistence; killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (again, after a kill) and waits until it answers PING.
    pub fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p PORT ARGS` and returns its trimmed output (raw format, not a tty).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `redis-cli -p PORT` with `commands` on its standard input: one connection for all.
fn redis_session(port: u16, commands: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, commands.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The access-log lines (JSON) of relayed connections on `listener`.
fn relay_lines(gw: &Portico, listener: &str) -> Vec<serde_json::Value> {
    gw.lines()
        .iter()
        .filter_map(|l| l.strip_prefix("ACCESS "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["listener"] == listener && v.get("bytes_in").is_some())
        .collect()
}

/// Waits until `count` relayed connections of `listener` are logged.
fn wait_relay_lines(gw: &Portico, listener: &str, count: usize) -> Vec<serde_json::Value> {
    assert!(
        gw.wait_log_count(
            &format!("\"listener\":\"{listener}\""),
            count,
            Duration::from_secs(10)
        ),
        "{}",
        gw.log_text()
    );
    relay_lines(gw, listener)
}

/// Sends one RESP PING on `stream` and reads the answer.
async fn ping(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> String {
    stream.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer to PING")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads until the peer closes (bounded); returns how long that took.
async fn wait_closed(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was not closed within {within:?}"),
        }
    }
}

const TWO_REDIS: &str = "\
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: redis, bind: 127.0.0.1:0, protocol: tcp, upstream: redis }
upstreams:
  redis:
    connect_timeout: 1s
@HEALTH@
    targets: [ { address: '@A@' }, { address: '@B@' } ]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_balances_redis_and_retries_past_a_killed_target() {
    let mut a = Redis::start();
    let b = Redis::start();
    assert_eq!(redis_cli(a.port, &["SET", "who", "a"]), "OK");
    assert_eq!(redis_cli(b.port, &["SET", "who", "b"]), "OK");
    let config = fill(
        TWO_REDIS,
        &[("A", &a.addr()), ("B", &b.addr()), ("HEALTH", "")],
    );
    let gw = Portico::start(&config);
    let port = port_of(&gw.addr("redis"));
    // One connection, several commands: SET then GET on the same target.
    assert_eq!(
        redis_session(port, "SET greeting hello\nGET greeting\n"),
        "OK\nhello"
    );
    // Round robin: new connections alternate between the two servers.
    let seen: Vec<String> = (0..4).map(|_| redis_cli(port, &["GET", "who"])).collect();
    assert_eq!(seen.iter().filter(|w| *w == "a").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|w| *w == "b").count(), 2, "{seen:?}");

    // One target dies: every new connection still gets an answer, from the other one (a
    // failed connect is retried on another target).
    a.kill();
    for _ in 0..6 {
        assert_eq!(redis_cli(port, &["GET", "who"]), "b");
    }
    assert!(gw.wait_log("relay connect failed", Duration::from_secs(5)));
    // Three failed connects in a row eject it (passive detection's default for connects).
    assert!(
        gw.wait_log("target ejected after failures", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let lines = wait_relay_lines(&gw, "redis", 11);
    let retried: Vec<_> = lines.iter().filter(|l| l["attempts"] == 2).collect();
    assert!(!retried.is_empty(), "{lines:?}");
    for line in &retried {
        assert_eq!(line["target"], b.addr().as_str());
        assert_eq!(line["result"], "relayed");
        assert_eq!(line["end"], "closed");
        assert!(line["bytes_in"].as_u64().unwrap() > 0, "{line}");
        assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["protocol"], "tcp");
        assert_eq!(line["upstream"], "redis");
    }
    let metrics = get(gw.admin.as_deref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(
            "portico_l4_connections_total{listener=\"redis\",upstream=\"redis\",result=\"relayed\"} 11"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_l4_bytes_total{listener=\"redis\",direction=\"in\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_tcp_check_takes_a_dead_redis_out_before_any_connect() {
    let mut a = Redis::start();
    let b = Redis::start();
    redis_cli(a.port, &["SET", "who", "a"]);
    redis_cli(b.port, &["SET", "who", "b"]);
    let health = "    health_check:\n      active: { type: tcp, interval: 50ms, timeout: 500ms, healthy: 1, unhealthy: 1 }";
    let config = fill(
        TWO_REDIS,
        &[("A", &a.addr()), ("B", &b.addr()), ("HEALTH", health)],
    );
    let gw = Portico::start(&config);
    let port = port_of(&gw.addr("redis"));
    a.kill();
    assert!(
        gw.wait_log("target unhealthy", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    for _ in 0..4 {
        assert_eq!(redis_cli(port, &["GET", "who"]), "b");
    }
    // The check took it out: no connect to the dead one was even tried.
    let lines = wait_relay_lines(&gw, "redis", 4);
    assert!(lines.iter().all(|l| l["attempts"] == 1), "{lines:?}");
    assert!(!gw.log_text().contains("relay connect failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_down_closes_the_client_connection_and_says_why() {
    let port = free_port();
    let config = format!(
        "\
listeners:
  - {{ name: redis, bind: 127.0.0.1:0, protocol: tcp, upstream: redis }}
upstreams:
  redis: {{ connect_timeout: 500ms, targets: [ {{ address: '127.0.0.1:{port}' }} ] }}
"
    );
    let gw = Portico::start(&config);
    let mut client = TcpStream::connect(gw.addr("redis")).await.unwrap();
    wait_closed(&mut client, Duration::from_secs(5)).await;
    assert!(gw.wait_log(
        "closing client connection: no target took it",
        Duration::from_secs(5)
    ));
    let lines = wait_relay_lines(&gw, "redis", 1);
    assert_eq!(lines[0]["result"], "connect_failed");
    assert_eq!(lines[0]["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_connection() {
    let redis = Redis::start();
    let config = format!(
        "\
listeners:
  - name: redis
    bind: 127.0.0.1:0
    protocol: tcp
    upstream: redis
    limits: {{ idle_timeout: 300ms }}
upstreams:
  redis: {{ targets: [ {{ address: '{}' }} ] }}
",
        redis.addr()
    );
    let gw = Portico::start(&config);
    let mut client = TcpStream::connect(gw.addr("redis")).await.unwrap();
    assert_eq!(ping(&mut client).await, "+PONG\r\n");
    let quiet = wait_closed(&mut client, Duration::from_secs(5)).await;
    assert!(quiet >= Duration::from_millis(250), "{quiet:?}");
    let lines = wait_relay_lines(&gw, "redis", 1);
    assert_eq!(lines[0]["end"], "idle_timeout");
    assert_eq!(lines[0]["bytes_in"], 6);
    assert_eq!(lines[0]["bytes_out"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_listener_and_per_target() {
    let a = Redis::start();
    let b = Redis::start();
    let config = fill(
        "\
listeners:
  - name: one
    bind: 127.0.0.1:0
    protocol: tcp
    upstream: single
    limits: { max_connections: 1 }
  - { name: per-target, bind: 127.0.0.1:0, protocol: tcp, upstream: pair }
upstreams:
  single: { targets: [ { address: '@A@' } ] }
  pair:
    circuit_breaker: { max_connections_per_target: 1 }
    targets: [ { address: '@A@' }, { address: '@B@' } ]
",
        &[("A", &a.addr()), ("B", &b.addr())],
    );
    let gw = Portico::start(&config);

    // The listener's limit: a second connection waits, unserved, until the first closes.
    let mut first = TcpStream::connect(gw.addr("one")).await.unwrap();
    assert_eq!(ping(&mut first).await, "+PONG\r\n");
    let mut second = TcpStream::connect(gw.addr("one")).await.unwrap();
    second.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf))
            .await
            .is_err(),
        "served over max_connections"
    );
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");

    // Per target: two held connections fill both targets; a third finds none and is closed.
    let mut x = TcpStream::connect(gw.addr("per-target")).await.unwrap();
    assert_eq!(ping(&mut x).await, "+PONG\r\n");
    let mut y = TcpStream::connect(gw.addr("per-target")).await.unwrap();
    assert_eq!(ping(&mut y).await, "+PONG\r\n");
    let mut z = TcpStream::connect(gw.addr("per-target")).await.unwrap();
    wait_closed(&mut z, Duration::from_secs(5)).await;
    let lines = wait_relay_lines(&gw, "per-target", 1);
    assert_eq!(lines[0]["result"], "no_target");
    // The two held ones went to different targets and still work.
    assert_eq!(ping(&mut x).await, "+PONG\r\n");
    assert_eq!(ping(&mut y).await, "+PONG\r\n");
    // Once one of them is closed (and logged), its target takes a new one.
    drop(x);
    wait_relay_lines(&gw, "per-target", 2);
    let mut w = TcpStream::connect(gw.addr("per-target")).await.unwrap();
    assert_eq!(ping(&mut w).await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_connections_and_sigterm_drains_until_the_deadline() {
    let redis = Redis::start();
    let config = |extra: &str| {
        format!(
            "\
drain_timeout: 1s
listeners:
  - {{ name: redis, bind: 127.0.0.1:0, protocol: tcp, upstream: redis }}
{extra}upstreams:
  redis: {{ targets: [ {{ address: '{}' }} ] }}
",
            redis.addr()
        )
    };
    let mut gw = Portico::start(&config(""));
    let mut client = TcpStream::connect(gw.addr("redis")).await.unwrap();
    assert_eq!(ping(&mut client).await, "+PONG\r\n");
    // A reload that keeps the listener keeps its connection.
    assert!(gw.reload(&config(
        "  - { name: web, bind: 127.0.0.1:0 }\nroutes:\n  - { name: r, respond: { status: 200 } }\n"
    )));
    assert_eq!(ping(&mut client).await, "+PONG\r\n");

    // SIGTERM: the open connection keeps working while the drain lasts…
    gw.signal("TERM");
    assert!(
        gw.wait_log("draining", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    assert_eq!(ping(&mut client).await, "+PONG\r\n");
    // …and is closed at the deadline, then portico exits.
    let held = wait_closed(&mut client, Duration::from_secs(5)).await;
    assert!(held <= Duration::from_secs(3), "{held:?}");
    let status = gw.terminate(Duration::from_secs(5));
    assert!(status.is_some(), "portico did not exit:\n{}", gw.log_text());
    assert!(
        gw.log_text()
            .contains("drain timeout: relayed connection closed")
    );
}

/// A CA, a server certificate for `redis.test` and the client config trusting it.
fn pki_setup() -> (std::path::PathBuf, Ca, pki::Pair) {
    let dir = temp_dir("l4-tls");
    let ca = Ca::new(&dir, "test CA");
    let leaf = ca.leaf("redis", "redis.test", &["redis.test"], false, false);
    (dir, ca, leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_terminates_then_relays_to_redis_in_plain_and_in_tls_again() {
    let redis = Redis::start();
    let (_dir, ca, leaf) = pki_setup();
    let inner = free_port();
    let config = fill(
        "\
listeners:
  # TLS terminated, then plain TCP to redis.
  - name: tls
    bind: 127.0.0.1:@INNER@
    protocol: tls
    tls: { certificates: [ { cert_file: '@CERT@', key_file: '@KEY@' } ] }
    upstream: redis
  # TLS terminated, then TLS again to an upstream (here: the listener above).
  - name: front
    bind: 127.0.0.1:0
    protocol: tls
    tls: { certificates: [ { cert_file: '@CERT@', key_file: '@KEY@' } ] }
    upstream: secure
upstreams:
  redis: { targets: [ { address: '@REDIS@' } ] }
  secure:
    tls: { sni: redis.test, ca_file: '@CA@' }
    targets: [ { address: '127.0.0.1:@INNER@' } ]
",
        &[
            ("INNER", &inner.to_string()),
            ("CERT", &leaf.cert()),
            ("KEY", &leaf.key()),
            ("REDIS", &redis.addr()),
            ("CA", &ca.cert_path().display().to_string()),
        ],
    );
    let gw = Portico::start(&config);
    let client = pki::client_config(&ca.cert_path(), None, &[]);
    for listener in ["tls", "front"] {
        let mut stream = pki::connect(&gw.addr(listener), "redis.test", Arc::clone(&client))
            .await
            .unwrap();
        // No ALPN is offered: the bytes inside are not HTTP.
        assert_eq!(stream.get_ref().1.alpn_protocol(), None);
        assert_eq!(ping(&mut stream).await, "+PONG\r\n");
    }
    // The real redis-cli, speaking TLS to portico.
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca.cert_path().display().to_string()])
        .args(["--sni", "redis.test", "-h", "127.0.0.1"])
        .args(["-p", &port_of(&gw.addr("front")).to_string()])
        .args(["SET", "k", "over-tls"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(redis_cli(redis.port, &["GET", "k"]), "over-tls");
    let lines = wait_relay_lines(&gw, "front", 2);
    assert!(
        lines
            .iter()
            .all(|l| l["protocol"] == "tls" && l["sni"] == "redis.test"),
        "{lines:?}"
    );
    // A client that is not speaking TLS is closed without reaching redis.
    let mut plain = TcpStream::connect(gw.addr("tls")).await.unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    wait_closed(&mut plain, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_gains_the_idle_timeout_and_the_access_log() {
    let (_dir, ca, leaf) = pki_setup();
    let redis = Redis::start();
    // portico's own tls listener plays the TLS server behind the passthrough one.
    let inner = free_port();
    let config = fill(
        "\
listeners:
  - name: tls
    bind: 127.0.0.1:@INNER@
    protocol: tls
    tls: { certificates: [ { cert_file: '@CERT@', key_file: '@KEY@' } ] }
    upstream: redis
  - name: pass
    bind: 127.0.0.1:0
    protocol: tls_passthrough
    sni: { redis.test: inner }
    limits: { idle_timeout: 300ms }
upstreams:
  redis: { targets: [ { address: '@REDIS@' } ] }
  inner: { targets: [ { address: '127.0.0.1:@INNER@' } ] }
",
        &[
            ("INNER", &inner.to_string()),
            ("CERT", &leaf.cert()),
            ("KEY", &leaf.key()),
            ("REDIS", &redis.addr()),
        ],
    );
    let gw = Portico::start(&config);
    let client = pki::client_config(&ca.cert_path(), None, &[]);
    let mut stream = pki::connect(&gw.addr("pass"), "redis.test", client)
        .await
        .unwrap();
    assert_eq!(ping(&mut stream).await, "+PONG\r\n");
    let quiet = wait_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(quiet >= Duration::from_millis(250), "{quiet:?}");
    let lines = wait_relay_lines(&gw, "pass", 1);
    assert_eq!(lines[0]["protocol"], "tls_passthrough");
    assert_eq!(lines[0]["sni"], "redis.test");
    assert_eq!(lines[0]["upstream"], "inner");
    assert_eq!(lines[0]["end"], "idle_timeout");
    assert!(lines[0]["bytes_in"].as_u64().unwrap() > 6);
}

#[test]
fn layer4_config_errors_are_reported_at_their_position() {
    let dir = temp_dir("l4-errors");
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - { name: no-upstream, bind: 127.0.0.1:0, protocol: tcp }
  - { name: unknown, bind: 127.0.0.1:0, protocol: tcp, upstream: nope }
  - { name: no-tls, bind: 127.0.0.1:0, protocol: tls, upstream: db }
  - { name: grpc, bind: 127.0.0.1:0, protocol: tcp, upstream: g }
  - { name: web, bind: 127.0.0.1:0, upstream: db }
routes:
  - { name: r, listeners: [ unknown ], respond: { status: 200 } }
upstreams:
  db: { targets: [ { address: 127.0.0.1:1 } ] }
  g: { protocol: grpc, hash_key: path, balance: ring_hash, targets: [ { address: 127.0.0.1:2 } ] }
  h:
    circuit_breaker: { max_connections_per_target: 2 }
    targets: [ { address: 127.0.0.1:3 } ]
",
    )
    .unwrap();
    let (code, out, err) = cli(&["validate", "-c", &file.display().to_string()]);
    let text = format!("{out}{err}");
    assert_ne!(code, 0, "{text}");
    for expected in [
        ":2:",
        "a tcp listener needs `upstream: NAME`",
        ":3:",
        "upstream `nope` is not defined",
        ":4:",
        "a tls listener needs `tls: { certificates: [...] }`",
        ":5:",
        "speaks `protocol: grpc`, which a tcp listener does not",
        ":11:",
        "whose connections have no `path` to hash",
        ":6:",
        "`upstream` applies to `tcp`, `tls`, `udp` and `tls_passthrough` listeners",
        ":8:",
        "route `r` names listener `unknown`, a tcp listener, which relays connections",
        ":13:",
        "max_connections_per_target limits connections relayed by tcp",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn explain_says_where_a_tcp_listener_relays() {
    let dir = temp_dir("l4-explain");
    let file = dir.join("tcp.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - { name: redis, bind: 127.0.0.1:6390, protocol: tcp, upstream: redis }
upstreams:
  redis: { balance: ip_hash, targets: [ { address: 127.0.0.1:6379 }, { address: 127.0.0.1:6380 } ] }
",
    )
    .unwrap();
    let file = file.display().to_string();
    let (code, out, err) = cli(&["explain", "-c", &file, "GET", "http://127.0.0.1:6390/"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listener  redis (127.0.0.1:6390)"), "{out}");
    assert!(
        out.contains("action    relay the connection (layer 4) to upstream redis"),
        "{out}"
    );
    assert!(out.contains("target    127.0.0.1:63"), "{out}");
    assert!(!out.contains("404"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_balancers_keep_a_client_address_on_one_target() {
    let a = Redis::start();
    let b = Redis::start();
    redis_cli(a.port, &["SET", "who", "a"]);
    redis_cli(b.port, &["SET", "who", "b"]);
    let algorithms = [
        "ip_hash",
        "ring_hash",
        "maglev",
        "random",
        "p2c_ewma",
        "least_request",
    ];
    let mut config = String::from("listeners:\n");
    for algorithm in algorithms {
        config.push_str(&format!(
            "  - {{ name: {algorithm}, bind: 127.0.0.1:0, protocol: tcp, upstream: {algorithm} }}\n"
        ));
    }
    config.push_str("upstreams:\n");
    for algorithm in algorithms {
        config.push_str(&format!(
            "  {algorithm}: {{ balance: {algorithm}, targets: [ {{ address: '{}' }}, {{ address: '{}' }} ] }}\n",
            a.addr(),
            b.addr()
        ));
    }
    let gw = Portico::start(&config);
    for algorithm in algorithms {
        let port = port_of(&gw.addr(algorithm));
        let seen: Vec<String> = (0..6).map(|_| redis_cli(port, &["GET", "who"])).collect();
        assert!(
            seen.iter().all(|w| w == "a" || w == "b"),
            "{algorithm}: {seen:?}"
        );
        if algorithm.contains("hash") || algorithm == "maglev" {
            // Every connection comes from 127.0.0.1: one target takes them all.
            assert!(seen.iter().all(|w| *w == seen[0]), "{algorithm}: {seen:?}");
        }
        if algorithm == "least_request" {
            // Closed connections leave both at zero: ties take turns.
            assert!(seen.iter().any(|w| w == "a") && seen.iter().any(|w| w == "b"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_requires_client_certificates_as_https_does() {
    let redis = Redis::start();
    let (_dir, ca, leaf) = pki_setup();
    let alice = ca.leaf("alice", "alice", &["alice.example"], true, false);
    let config = fill(
        "\
listeners:
  - name: mtls
    bind: 127.0.0.1:0
    protocol: tls
    tls:
      certificates: [ { cert_file: '@CERT@', key_file: '@KEY@' } ]
      client_auth: { ca_file: '@CA@', required: true }
    upstream: redis
upstreams:
  redis: { targets: [ { address: '@REDIS@' } ] }
",
        &[
            ("CERT", &leaf.cert()),
            ("KEY", &leaf.key()),
            ("CA", &ca.cert_path().display().to_string()),
            ("REDIS", &redis.addr()),
        ],
    );
    let gw = Portico::start(&config);
    let with_cert = pki::client_config(&ca.cert_path(), Some(&alice), &[]);
    let mut stream = pki::connect(&gw.addr("mtls"), "redis.test", with_cert)
        .await
        .unwrap();
    assert_eq!(ping(&mut stream).await, "+PONG\r\n");
    drop(stream);
    // Without a certificate the handshake fails (TLS 1.3: at the first read) and nothing
    // reaches redis.
    let without = pki::client_config(&ca.cert_path(), None, &[]);
    if let Ok(mut stream) = pki::connect(&gw.addr("mtls"), "redis.test", without).await {
        let _ = stream.write_all(b"PING\r\n").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    let lines = wait_relay_lines(&gw, "mtls", 2);
    assert!(
        lines.iter().any(|l| l["result"] == "handshake_failed"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_listener_drains_its_connections() {
    let redis = Redis::start();
    let config = |listener: &str| {
        format!(
            "\
drain_timeout: 1s
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
{listener}routes:
  - {{ name: r, respond: {{ status: 200 }} }}
upstreams:
  redis: {{ targets: [ {{ address: '{}' }} ] }}
",
            redis.addr()
        )
    };
    let gw = Portico::start(&config(
        "  - { name: redis, bind: 127.0.0.1:0, protocol: tcp, upstream: redis }\n",
    ));
    let mut client = TcpStream::connect(gw.addr("redis")).await.unwrap();
    assert_eq!(ping(&mut client).await, "+PONG\r\n");
    // `redis` unused now: a warning, not an error.
    assert!(gw.reload(&config("")));
    assert!(gw.wait_log(
        "listener removed; draining listener=redis",
        Duration::from_secs(5)
    ));
    // Still served while the drain lasts, closed at its deadline.
    assert_eq!(ping(&mut client).await, "+PONG\r\n");
    let held = wait_closed(&mut client, Duration::from_secs(5)).await;
    assert!(held <= Duration::from_secs(3), "{held:?}");
    let lines = wait_relay_lines(&gw, "redis", 1);
    assert_eq!(lines[0]["end"], "drain_timeout");
    assert_eq!(lines[0]["bytes_out"], 14);
}
