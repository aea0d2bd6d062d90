//! The admin dashboard (`GET /`, `GET /stats`, `POST /explain`) through the real binary: its
//! endpoints read with an HTTP client, then the page driven in headless Chromium
//! (`support/dashboard.mjs`) while a target's backend is stopped.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use crate::support::{H1, Portico, TestUpstream, fill, get, temp_dir};

const TOKEN: &str = "dash-board-token-1234";

const CONFIG: &str = "\
admin: { listen: 127.0.0.1:0, token: @TOKEN@ }
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: orders-api
    match: { path_prefix: /orders, headers: { x-api-key: sk-live-secret-value } }
    upstream: orders
  - name: catalog
    match: { path_prefix: /catalog }
    upstream: orders
  - name: ping
    match: { path: /ping }
    respond: { status: 200, body: pong }
upstreams:
  orders:
    targets: [ { address: '@A@' }, { address: '@B@' } ]
    health_check:
      active: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }
";

async fn admin(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> crate::support::client::Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    H1::connect(addr).await.send(req).await.unwrap()
}

async fn stats(addr: &str) -> Value {
    let reply = admin(addr, Method::GET, "/stats", Some(TOKEN), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

fn route<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {stats}"))
}

fn setup_config(a: &TestUpstream, b: &TestUpstream) -> String {
    fill(
        CONFIG,
        &[("A", &a.addr()), ("B", &b.addr()), ("TOKEN", TOKEN)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_explain_answer_from_the_registry_and_the_config() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&setup_config(&a, &b));
    let web = gw.addr("web");
    let adm = gw.admin.clone().unwrap();

    // The page shell needs no token and carries no data; the data does.
    let page = admin(&adm, Method::GET, "/", None, "").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = &page.body;
    assert!(!html.contains("orders"), "the page shell holds data");
    // Everything it loads is its own: the script and the style, same-origin.
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let value = &html[at + attr.len()..];
            assert!(
                value.starts_with("/dashboard/"),
                "{}",
                &value[..40.min(value.len())]
            );
        }
    }
    let script = admin(&adm, Method::GET, "/dashboard/app.js", None, "").await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        script.body.matches("fetch(").count(),
        script.body.matches("fetch('/").count(),
        "the script fetches only from its origin"
    );
    let style = admin(&adm, Method::GET, "/dashboard/app.css", None, "").await;
    assert_eq!(style.status, 200);
    assert!(!style.body.contains("url("), "the style loads nothing");
    assert_eq!(
        admin(&adm, Method::GET, "/stats", None, "").await.status,
        401
    );
    let question = r#"{"method":"GET","url":"http://x/catalog/1","headers":[]}"#;
    assert_eq!(
        admin(&adm, Method::POST, "/explain", None, question)
            .await
            .status,
        401
    );

    // Counts, 5xx and latency come from the metrics registry.
    for _ in 0..10 {
        assert_eq!(get(&web, "/catalog/item").await.status, 200);
        assert_eq!(get(&web, "/ping").await.status, 200);
    }
    let s = stats(&adm).await;
    let catalog = route(&s, "catalog");
    assert_eq!(catalog["requests"], 10, "{s}");
    assert_eq!(catalog["errors"], 0);
    assert_eq!(catalog["action"], "upstream orders");
    assert_eq!(catalog["listeners"][0], "web");
    let (p50, p99) = (
        catalog["p50_ms"].as_f64().unwrap(),
        catalog["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 30_000.0, "{catalog}");
    let buckets: u64 = catalog["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 10);
    assert_eq!(route(&s, "ping")["requests"], 10);
    assert_eq!(route(&s, "ping")["action"], "respond 200");
    assert_eq!(s["totals"]["requests"], 20);
    // The matcher on a credential header is shown redacted.
    let shown = route(&s, "orders-api")["match"].to_string();
    assert!(!shown.contains("sk-live-secret-value"), "{shown}");
    assert_eq!(s["listeners"][0]["name"], "web");
    assert_eq!(s["upstreams"][0]["targets"].as_array().unwrap().len(), 2);
    assert_eq!(s["reloads"][0]["trigger"], "start");
    assert_eq!(s["reloads"][0]["hash"], s["config_hash"]);

    // A 5xx is counted as an error: both targets gone, the route answers 503.
    a.kill();
    b.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(&adm).await;
        let down = s["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["healthy"] == false);
        if down {
            break;
        }
        assert!(Instant::now() < deadline, "targets still healthy: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&web, "/catalog/x").await.status, 503);
    let s = stats(&adm).await;
    assert_eq!(route(&s, "catalog")["errors"], 1, "{s}");
    assert_eq!(route(&s, "catalog")["requests"], 11);

    // The explain box answers what `portico explain` prints.
    let reply = admin(&adm, Method::POST, "/explain", Some(TOKEN), question).await;
    assert_eq!(reply.status, 200);
    let text = reply.json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("route     catalog"), "{text}");
    let cfg = gw.config.to_str().unwrap().to_owned();
    let (code, out, _) =
        crate::support::cli(&["explain", "--config", &cfg, "GET", "http://x/catalog/1"]);
    assert_eq!(code, 0);
    // The live answer sees the targets' health; the file alone does not: compare the rest.
    let strip = |t: &str| {
        t.lines()
            .filter(|l| !l.starts_with("target "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&text), strip(&out));
    // Malformed and oversized questions are refused with a reason.
    for (body, status) in [
        (r#"{"url": 5}"#.to_owned(), 400),
        (
            r#"{"url":"http://x/","headers":["no colon"]}"#.to_owned(),
            400,
        ),
        (r#"{"method":"G E T","url":"http://x/"}"#.to_owned(), 400),
        (
            format!(r#"{{"url":"http://x/{}"}}"#, "a".repeat(20_000)),
            413,
        ),
    ] {
        let reply = admin(&adm, Method::POST, "/explain", Some(TOKEN), &body).await;
        assert_eq!(reply.status, status, "{}", reply.body);
        assert!(reply.json()["message"].is_string());
    }
    let plain = Request::builder()
        .method(Method::POST)
        .uri("/explain")
        .header("host", &adm)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "text/plain");
    // A cross-site form can post text/plain without asking first; not application/json.
    let reply = H1::connect(&adm)
        .await
        .send(plain.body(Full::new(Bytes::from(question))).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
}

/// The script's next line, waited for at most a minute.
async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .ok()
        .flatten()
}

/// The node script `name` (under support/), run with the oidc suite's playwright-core and
/// Debian's Chromium.
pub(crate) fn browser_script(name: &str) -> Command {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/test.sh, which installs chromium"
    );
    assert!(
        Path::new(dir)
            .join("oidc/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed in tests/e2e/oidc/node_modules: run scripts/test.sh"
    );
    let mut cmd = Command::new("node");
    cmd.current_dir(dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .arg(format!("{dir}/support/{name}"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_shows_routes_a_target_going_down_and_explains() {
    let a = TestUpstream::start("A").await;
    let b = TestUpstream::start("B").await;
    let gw = Portico::start(&setup_config(&a, &b));
    let web = gw.addr("web");
    let adm = gw.admin.clone().unwrap();
    let target_b = b.addr();

    // Steady traffic, so the page has rates and percentiles to show.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (web, stop) = (web.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut client = H1::connect(&web).await;
            while !stop.load(Ordering::Relaxed) {
                let _ = client.get("shop", "/catalog/item").await;
                let _ = client.get("shop", "/ping").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let shot = temp_dir("dashboard").join("dashboard.png");
    let mut child = browser_script("dashboard.mjs")
        .args([
            &format!("http://{adm}/"),
            TOKEN,
            "catalog",
            &target_b,
            &format!("http://{web}/catalog/42"),
        ])
        .arg(&shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): run scripts/test.sh, which installs nodejs")
        });
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let Some(loaded) = next_line(&mut rx).await else {
        let _ = child.kill();
        panic!("the page did not load: {}", errors.join().unwrap());
    };
    assert_eq!(
        serde_json::from_str::<Value>(&loaded).unwrap()["step"],
        "loaded"
    );
    // Stop B's backend: the active checks fail and the page must show it.
    b.kill();
    writeln!(stdin, "go").unwrap();
    let Some(done) = next_line(&mut rx).await else {
        let _ = child.kill();
        panic!(
            "the page never showed {target_b} unhealthy or never explained: {}",
            errors.join().unwrap()
        );
    };
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "dashboard.mjs: {status}\n{}",
        errors.join().unwrap()
    );
    let seen: Value = serde_json::from_str(&done).unwrap();

    // The page loads clean, under its policy, and reaches nothing but the admin listener.
    assert_eq!(seen["pageErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["foreignRequests"], serde_json::json!([]), "{seen}");
    // Before the token, the only complaint is the browser noting the refused fetch.
    for message in seen["consoleErrorsBeforeToken"].as_array().unwrap() {
        assert!(message.as_str().unwrap().contains("401"), "{seen}");
    }
    assert_eq!(seen["statusBeforeToken"], "token needed");
    assert_eq!(seen["tokenNoticeHidden"], true);
    assert!(
        seen["headers"]["content-security-policy"]
            .as_str()
            .unwrap()
            .starts_with("default-src 'self'")
    );

    // The route, its traffic, the target going down, the reloads.
    let route_text = seen["routeText"].as_str().unwrap();
    assert!(
        route_text.contains("catalog") && route_text.contains("upstream orders"),
        "{route_text}"
    );
    assert!(
        route_text.contains("ms") || route_text.contains("µs"),
        "no latency shown: {route_text}"
    );
    let unhealthy_after = seen["unhealthyAfterMs"].as_u64().unwrap();
    assert!(
        unhealthy_after < 10_000,
        "{unhealthy_after} ms to show the target down"
    );
    assert!(
        seen["targetText"].as_str().unwrap().contains("unhealthy"),
        "{seen}"
    );
    assert_ne!(seen["totalRate"], "–");
    let hash = seen["hash"].as_str().unwrap();
    assert_eq!(hash, stats(&adm).await["config_hash"]);
    assert!(seen["reloadsText"].as_str().unwrap().contains(hash));

    // The explain box names the route.
    let explained = seen["explainText"].as_str().unwrap();
    assert!(explained.contains("route     catalog"), "{explained}");

    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!(
        "target shown unhealthy after {unhealthy_after} ms; screenshot {}",
        shot.display()
    );
}
