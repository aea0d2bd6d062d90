//! Zero-downtime binary upgrade: a second portico started with `--upgrade-from` takes the
//! listening sockets of the first over its upgrade socket; the first stops accepting, drains
//! and exits 0. Proven under load, with a long-lived response, and with a refused config.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Portico, cli, fill, get, temp_dir};

const CONFIG: &str = "\
workers: 2
drain_timeout: @DRAIN@
access_log: { enabled: false }
upgrade: { socket: portico.sock }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: dns, bind: 127.0.0.1:0, protocol: udp, upstream: drip }
routes:
  - { name: drip, match: { path: /drip }, upstream: drip }
  - { name: all, respond: { status: 200, body: '@BODY@' } }
upstreams:
  drip: { targets: [ { address: '@DRIP@' } ] }
";

fn config(body: &str, drain: &str, drip: &str) -> String {
    fill(CONFIG, &[("BODY", body), ("DRAIN", drain), ("DRIP", drip)])
}

/// Starts the new process next to `old` (blocking: run on a blocking thread).
fn upgrade(dir: &std::path::Path, config: &str) -> Portico {
    let socket = dir.join("portico.sock");
    let socket = socket.to_str().unwrap();
    Portico::try_start_args(dir, "next.yaml", config, &["--upgrade-from", socket])
        .unwrap_or_else(|log| panic!("the new process did not become ready:\n{log}"))
}

/// An upstream that answers every request with a chunked body, a chunk every 100 ms, for up
/// to 30 s.
async fn drip_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let start = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if stream.write_all(start).await.is_err() {
                    return;
                }
                for _ in 0..300 {
                    if stream.write_all(b"5\r\ntick\n\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    /// Answers by body (each process answers with its own).
    answers: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Requests that got no answer (or a wrong one): must stay 0.
    failed: AtomicUsize,
    /// Keep-alive requests sent again on a fresh connection because the server closed the
    /// idle connection as they were sent (RFC 9112 §9.3.1), as every HTTP client does.
    retried: AtomicUsize,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn count(&self, body: &str) {
        if body.starts_with('v') {
            *self
                .answers
                .lock()
                .unwrap()
                .entry(body.to_owned())
                .or_default() += 1;
        } else {
            self.fail(format!("unexpected body {body:?}"));
        }
    }

    fn of(&self, body: &str) -> usize {
        self.answers.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().unwrap().push(why);
    }
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/")
        .header("host", "example.com")
        .body(Full::default())
        .unwrap()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender) -> Result<String, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request()).await?;
    let reply = crate::support::client::read(response).await;
    Ok(reply.body)
}

/// One request on a fresh connection: any error is a failure.
async fn fresh(addr: &str, tally: &Tally) {
    let sent = async {
        let mut sender = connect(addr).await?;
        send(&mut sender).await.map_err(|e| format!("request: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(5), sent).await {
        Ok(Ok(body)) => tally.count(&body),
        Ok(Err(e)) => tally.fail(format!("fresh connection: {e}")),
        Err(_) => tally.fail("fresh connection: no answer in 5 s".to_owned()),
    }
}

/// One request on a kept-alive connection, opened again when the server closed it.
async fn kept(addr: &str, sender: &mut Option<Sender>, tally: &Tally) {
    let attempt = async {
        for round in 0..2 {
            let reused = sender.is_some();
            let mut current = match sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => connect(addr).await?,
            };
            match send(&mut current).await {
                Ok(body) => {
                    *sender = Some(current);
                    return Ok(body);
                }
                // Closed before an answer (the drain closing an idle connection as the
                // request went out): sent again once, on a new connection.
                Err(e)
                    if reused
                        && round == 0
                        && (e.is_canceled() || e.is_incomplete_message() || e.is_closed()) =>
                {
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("keep-alive request: {e}")),
            }
        }
        Err("keep-alive request failed twice".to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(body)) => tally.count(&body),
        Ok(Err(e)) => tally.fail(e),
        Err(_) => tally.fail("keep-alive: no answer in 5 s".to_owned()),
    }
}

/// 8 clients, 4 with a fresh connection per request and 4 on keep-alive connections, until
/// `stop` (bounded: 20,000 requests each, 60 s).
fn load(
    addr: String,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|i| {
            let (addr, tally, stop) = (addr.clone(), Arc::clone(&tally), Arc::clone(&stop));
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut sender = None;
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    if i % 2 == 0 {
                        fresh(&addr, &tally).await;
                    } else {
                        kept(&addr, &mut sender, &tally).await;
                    }
                }
            })
        })
        .collect()
}

/// Waits (bounded) until `n` answers came with `body`.
async fn reach(tally: &Tally, body: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.of(body) < n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Upgrades a serving process this many times while the load runs.
const UPGRADES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_no_request_fails_and_the_old_process_exits_0() {
    let drip = drip_upstream().await;
    let dir = temp_dir("upgrade-load");
    let mut current = Portico::start_in(&dir, &config("v0", "2s", &drip));
    let addr = current.addr("web");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(addr.clone(), Arc::clone(&tally), Arc::clone(&stop));
    assert!(
        reach(&tally, "v0", 200).await,
        "no load on the first process"
    );
    for round in 1..=UPGRADES {
        let body = format!("v{round}");
        // Fewer workers than handed-over sockets, then more: every socket is served, and the
        // extra ones join the same port.
        let workers = match round {
            2 => "workers: 1",
            3 => "workers: 3",
            _ => "workers: 2",
        };
        let next = config(&body, "2s", &drip).replace("workers: 2", workers);
        let new_dir = dir.clone();
        let new = tokio::task::spawn_blocking(move || upgrade(&new_dir, &next))
            .await
            .unwrap();
        assert_eq!(
            new.addr("web"),
            addr,
            "the new process serves the same address"
        );
        assert_eq!(
            new.addr("dns"),
            current.addr("dns"),
            "and the same udp socket"
        );
        // The old one exits 0 once drained (its keep-alive connections close at once).
        let mut old = std::mem::replace(&mut current, new);
        let exited = tokio::task::spawn_blocking(move || {
            let status = old.wait_exit(Duration::from_secs(10));
            (status, old)
        });
        let (status, old) = exited.await.unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "the old process did not exit 0: {status:?}\n{}",
            old.log_text()
        );
        let log = old.log_text();
        assert!(log.contains("upgrade: sockets handed over"), "{log}");
        // Listed in any order; from round 3's process on, 3 sockets (it bound one more for
        // its third worker; the next, with 2 workers, serves all 3).
        let sockets = if round >= 4 { 3 } else { 2 };
        assert!(log.contains(&format!("web({sockets})")), "{log}");
        assert!(log.contains(&format!("dns({sockets})")), "{log}");
        assert!(
            current.log_text().contains("upgrade: sockets taken over"),
            "{}",
            current.log_text()
        );
        assert!(
            reach(&tally, &body, 200).await,
            "no load on process {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let answers = tally.answers.lock().unwrap().clone();
    let (f, r) = (
        tally.failed.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
    );
    let mut counts: Vec<_> = answers.iter().collect();
    counts.sort();
    eprintln!(
        "upgrade under load, {UPGRADES} upgrades: answers {counts:?}, {f} failed, {r} keep-alive requests sent again"
    );
    assert_eq!(f, 0, "{:?}", tally.errors.lock().unwrap());
    for round in 0..=UPGRADES {
        assert!(tally.of(&format!("v{round}")) > 0, "{counts:?}");
    }
    assert_eq!(get(&addr, "/").await.body, format!("v{UPGRADES}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_response_keeps_going_after_the_handover_until_the_drain_deadline() {
    let drip = drip_upstream().await;
    let dir = temp_dir("upgrade-long");
    let mut old = Portico::start_in(&dir, &config("v-old", "2s", &drip));
    let addr = old.addr("web");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /drip HTTP/1.1\r\nhost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let next = config("v-new", "2s", &drip);
    let new_dir = dir.clone();
    let new = tokio::task::spawn_blocking(move || upgrade(&new_dir, &next))
        .await
        .unwrap();
    let handed = Instant::now();
    // New connections go to the new process (the old one may take one more in the instant
    // its accept loops see the stop).
    let mut body = String::new();
    for _ in 0..50 {
        body = get(&new.addr("web"), "/").await.body;
        if body == "v-new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(body, "v-new");
    // The response keeps flowing from the old process, then ends at its drain deadline.
    let mut after_handover = 0usize;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break handed.elapsed(),
            Ok(Ok(n)) => after_handover += n,
            Err(_) => panic!("the response stalled"),
        }
        assert!(handed.elapsed() < Duration::from_secs(8), "never closed");
    };
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5),
        "closed {closed:?} after the handover"
    );
    assert!(
        after_handover >= 10 * 5,
        "{after_handover} bytes after the handover"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit(Duration::from_secs(5));
        (status, old.log_text())
    });
    let (status, log) = status.await.unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(log.contains("drain timeout reached"), "{log}");
}

#[tokio::test]
async fn an_invalid_new_config_changes_nothing() {
    let drip = drip_upstream().await;
    let dir = temp_dir("upgrade-invalid");
    let old = Portico::start_in(&dir, &config("v-old", "2s", &drip));
    let socket = dir.join("portico.sock");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        config("v-new", "2s", &drip).replace("respond:", "respnd:"),
    )
    .unwrap();
    let (code, _, stderr) = cli(&[
        "run",
        "--config",
        bad.to_str().unwrap(),
        "--upgrade-from",
        socket.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("bad.yaml:10:18: unknown key `respnd`"),
        "{stderr}"
    );
    // Nothing was asked of the old process, which keeps serving.
    assert_eq!(get(&old.addr("web"), "/").await.body, "v-old");
    assert!(!old.log_text().contains("upgrade:"), "{}", old.log_text());

    // A socket nobody listens on: a clear error, and nothing bound.
    let good = dir.join("good.yaml");
    std::fs::write(&good, config("v-new", "2s", &drip)).unwrap();
    let (code, _, stderr) = cli(&[
        "run",
        "--config",
        good.to_str().unwrap(),
        "--upgrade-from",
        dir.join("missing.sock").to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the upgrade socket"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    // A second process without --upgrade-from may not take the live upgrade socket.
    let (code, _, stderr) = cli(&["run", "--config", good.to_str().unwrap()]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("another process listens on"), "{stderr}");
    assert_eq!(get(&old.addr("web"), "/").await.body, "v-old");
}

#[test]
fn the_flag_and_the_key_are_documented() {
    let (code, help, _) = cli(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--upgrade-from <PATH>"), "{help}");
    let (code, schema, _) = cli(&["schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    assert!(
        schema["properties"]["upgrade"].is_object(),
        "{}",
        schema["properties"]
    );
}
