//! The task guides (docs/guides/) and the example files they are built around: every example
//! validates, every guide's example runs through the binary and does what the guide shows, and
//! a guide that shows a whole example shows it exactly as the file is.
//!
//! An example runs as written except for a few explicit textual substitutions: its listener
//! binds become `127.0.0.1:0` (the bound ports are read from the log) and its upstream
//! addresses become real test upstreams, whose answers are those of examples/demo_app.py
//! (`NAME PATH` with `x-upstream: NAME`, `ok` on `/healthz`, a JSON body on `/json`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::client::Reply;
use crate::support::pki::{self, Ca};
use crate::support::portico::BIN;
use crate::support::{H1, Portico, TestUpstream, cli, get, temp_dir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The environment variables the examples name, as a user would export them.
const ENV: &[(&str, &str)] = &[
    ("ALICE_KEY", "alice-4f1c2a9e8b7d6c5a"),
    ("BOB_KEY", "bob-9a8b7c6d5e4f3a2b"),
    ("JWT_SECRET", "a-jwt-secret-of-32-bytes-or-more!"),
    ("CHAT_KEY", "chat-3b9f2e71c0a84d56"),
    ("PORTICO_ADMIN_TOKEN", "change-me-to-a-long-random-string"),
    ("DEBUG_TOKEN", "5e6f0a9c1d2b3e4f7a8b"),
    ("INTROSPECTION_SECRET", "s3cret"),
    ("OIDC_CLIENT_SECRET", crate::oidc_op::SECRET),
    (
        "OIDC_COOKIE_KEY",
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
    ),
];

fn env(name: &str) -> &'static str {
    ENV.iter().find(|(k, _)| *k == name).unwrap().1
}

/// Every `examples/*.yaml`, sorted.
fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        // Route cases for `portico test` are not configs; cli.rs runs them.
        .filter(|p| !p.to_string_lossy().ends_with(".cases.yaml"))
        .collect();
    files.sort();
    files
}

/// Every page of docs/guides/, and the README (which shows examples/my-app.yaml).
fn guide_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs/guides"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.push(Path::new(ROOT).join("README.md"));
    files
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("examples").join(name)).unwrap()
}

/// The example's text with each `from` replaced by its `to`. Every `from` must occur, so a
/// changed example fails here instead of running with a stale address.
fn substitute(text: &str, subs: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in subs {
        assert!(out.contains(from), "the example no longer says `{from}`");
        out = out.replace(from, to);
    }
    out
}

/// The usual substitutions: every bind and the admin address to port 0, and upstream
/// addresses to test upstreams.
fn ephemeral(binds: &[&str], upstreams: &[(&str, &TestUpstream)]) -> Vec<(String, String)> {
    let mut subs = Vec::new();
    for bind in binds {
        subs.push((format!("bind: {bind}"), "bind: 127.0.0.1:0".to_owned()));
    }
    for (address, up) in upstreams {
        subs.push((
            format!("address: {address}"),
            format!("address: {}", up.addr()),
        ));
    }
    subs
}

/// The admin API on port 0 too.
fn admin_ephemeral() -> (String, String) {
    (
        "listen: 127.0.0.1:9901".to_owned(),
        "listen: 127.0.0.1:0".to_owned(),
    )
}

/// Writes what the TLS examples read from next to them: certs/example.com.pem and .key, for
/// example.com and www.example.com, signed by a fresh CA (returned).
fn certificates(dir: &Path) -> Ca {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new(&certs, "guide CA");
    ca.leaf(
        "example.com",
        "example.com",
        &["example.com", "www.example.com"],
        false,
        false,
    );
    ca
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost:8080");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::default()).unwrap()
}

async fn send(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr)
        .await
        .send(request(method, path, headers))
        .await
        .unwrap()
}

#[test]
fn every_example_validates_strictly() {
    let files = example_files();
    assert!(files.len() >= 8, "examples found: {files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        // In a folder of its own with the certificate files the TLS examples read.
        let dir = temp_dir("validate");
        certificates(&dir);
        let copy = dir.join(&name);
        std::fs::copy(&file, &copy).unwrap();
        if name == "grpc-json.yaml" {
            greeter_descriptor_set(&dir);
        }
        if name == "static-site.yaml" {
            std::os::unix::fs::symlink(Path::new(ROOT).join("examples/site"), dir.join("site"))
                .unwrap();
        }
        let out = Command::new(BIN)
            .args(["validate", "--strict", "--config"])
            .arg(&copy)
            .envs(ENV.iter().copied())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && !stdout.contains("warning") && !stderr.contains("warning"),
            "examples/{name} does not validate with --strict:\n{stdout}{stderr}"
        );
    }
}

/// Writes `dir/greeter.pb`, the descriptor set examples/grpc-json.yaml reads, as its guide
/// makes it.
fn greeter_descriptor_set(dir: &Path) {
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(Path::new(ROOT).join("examples"))
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            dir.join("greeter.pb").display()
        ))
        .arg(Path::new(ROOT).join("examples/greeter.proto"))
        .status()
        .expect("python3 with grpcio-tools (scripts/test.sh installs it)");
    assert!(status.success(), "protoc failed on examples/greeter.proto");
}

/// The ```yaml blocks of a markdown page.
fn yaml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn guides_name_every_example_and_show_whole_files_exactly() {
    let guides: Vec<(PathBuf, String)> = guide_files()
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    for file in example_files() {
        let name = format!("examples/{}", file.file_name().unwrap().to_str().unwrap());
        assert!(
            guides.iter().any(|(_, text)| text.contains(&name)),
            "no guide in docs/guides/ mentions {name}"
        );
    }
    // A block that opens with `# examples/NAME.yaml` claims to be that whole file.
    let mut whole = 0;
    for (path, text) in &guides {
        for block in yaml_blocks(text) {
            let Some(rest) = block.strip_prefix("# examples/") else {
                continue;
            };
            let name = rest.split(':').next().unwrap().trim();
            let file = std::fs::read_to_string(Path::new(ROOT).join("examples").join(name))
                .unwrap_or_else(|e| panic!("{} shows examples/{name}: {e}", path.display()));
            assert_eq!(
                block.trim_end(),
                file.trim_end(),
                "{} shows examples/{name}, but not as the file is",
                path.display()
            );
            whole += 1;
        }
    }
    assert!(
        whole >= 8,
        "only {whole} whole example files shown in the guides"
    );
}

#[tokio::test]
async fn my_app_example_forwards_to_the_app() {
    let app = TestUpstream::start("my-app").await;
    let config = substitute(
        &example("my-app.yaml"),
        &ephemeral(&["0.0.0.0:8080"], &[("127.0.0.1:3000", &app)]),
    );
    let gw = Portico::start_in(&temp_dir("my-app"), &config);
    let reply = get(&gw.addr("web"), "/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "my-app /hello");
    assert_eq!(reply.header("via"), Some("1.1 portico"));
    assert!(reply.header("x-request-id").is_some());

    // While the health check fails, requests get 503 at once.
    app.set_healthy(false);
    assert!(
        gw.wait_log("target unhealthy", Duration::from_secs(30)),
        "{}",
        gw.log_text()
    );
    let reply = get(&gw.addr("web"), "/hello").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "no_healthy_target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_guide() {
    let app1 = TestUpstream::start("app1").await;
    let app2 = TestUpstream::start("app2").await;
    let mut subs = ephemeral(
        &["127.0.0.1:8080"],
        &[("127.0.0.1:9001", &app1), ("127.0.0.1:9002", &app2)],
    );
    subs.push(admin_ephemeral());
    let config = substitute(&example("load-balancing.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("lb"), &config);
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();

    // Step 1: requests go to both instances.
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let r = get(&web, "/").await;
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(bodies.contains(&"app1 /".to_owned()), "{bodies:?}");
    assert!(bodies.contains(&"app2 /".to_owned()), "{bodies:?}");
    let targets = get(&admin, "/upstreams/app/targets").await.json();
    assert_eq!(targets["balance"], "least_request");
    for t in targets["targets"].as_array().unwrap() {
        assert_eq!(t["healthy"], true, "{targets}");
    }

    // Step 2: app2 dies; every request still succeeds, on app1.
    app2.kill();
    for _ in 0..10 {
        let r = get(&web, "/").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "app1 /");
    }

    // Step 3: the admin API shows app2 down: ejected by the passive check at once, then
    // reported down by the active check as well.
    let app2_state = |targets: &serde_json::Value| {
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == app2.addr())
            .cloned()
            .unwrap()
    };
    let state = app2_state(&get(&admin, "/upstreams/app/targets").await.json());
    assert_eq!(state["healthy"], false, "{state}");
    assert!(state["ejected_for_ms"].as_u64().unwrap() > 0, "{state}");
    assert!(
        gw.wait_log("target ejected after failures", Duration::from_secs(1)),
        "{}",
        gw.log_text()
    );
    assert!(
        gw.wait_log("target unhealthy", Duration::from_secs(10)),
        "{}",
        gw.log_text()
    );
    let state = app2_state(&get(&admin, "/upstreams/app/targets").await.json());
    assert_eq!(state["active_check_up"], false, "{state}");
    // The retried requests say so in the access log.
    assert!(
        gw.lines()
            .iter()
            .any(|l| l.starts_with("ACCESS") && l.contains("\"attempts\":2")),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn cluster_rate_limits_guide() {
    let mut redis = crate::l4::Redis::start();
    let api = TestUpstream::start("api").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &api)]);
    subs.push(admin_ephemeral());
    subs.push((
        "url: redis://127.0.0.1:6379".to_owned(),
        format!("url: redis://127.0.0.1:{}", redis.port),
    ));
    let config = substitute(&example("cluster-rate-limit.yaml"), &subs);
    let nodes = [
        Portico::start_in_env(&temp_dir("cluster-a"), &config, ENV),
        Portico::start_in_env(&temp_dir("cluster-b"), &config, ENV),
    ];
    let key = env("ALICE_KEY");
    let headers = [("x-api-key", key)];

    // Step 1: five pass, alternating nodes; the sixth is refused on either.
    for i in 0..5 {
        let r = send(&nodes[i % 2].addr("web"), "GET", "/api/x", &headers).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = send(&nodes[1].addr("web"), "GET", "/api/x", &headers).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("5;w=60"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&wait), "{wait}");

    // Step 2: Redis away; the node limits on its own.
    redis.kill();
    let r = send(&nodes[0].addr("web"), "GET", "/api/x", &headers).await;
    assert_eq!(r.status, 200);
    let metrics = get(nodes[0].admin.as_ref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains(r#"portico_cluster_limit_decisions_total{by="local"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portico_cluster_limit_decisions_total{by="redis"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn api_keys_guide() {
    let api = TestUpstream::start("api").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &api)]);
    subs.push(admin_ephemeral());
    let config = substitute(&example("api-keys.yaml"), &subs);
    let gw = Portico::start_in_env(&temp_dir("keys"), &config, ENV);
    let web = gw.addr("web");
    let (alice, bob) = (env("ALICE_KEY"), env("BOB_KEY"));

    // Step 0: an unset key is an error at its position.
    let out = Command::new(BIN)
        .current_dir(ROOT)
        .args(["validate", "-c", "examples/api-keys.yaml"])
        .envs(ENV.iter().copied().filter(|(k, _)| *k != "ALICE_KEY"))
        .env_remove("ALICE_KEY")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("examples/api-keys.yaml:15:16: environment variable `ALICE_KEY` is not set"),
        "{text}"
    );
    assert_eq!(
        text.matches("api-keys.yaml:15:16").count(),
        1,
        "reported once: {text}"
    );

    // Step 1: no key, a wrong key.
    let r = send(&web, "GET", "/api/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Key realm=\"portico\""));
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(r.json()["message"], "an API key is required");
    let r = send(
        &web,
        "GET",
        "/api/orders",
        &[("x-api-key", "wrong-key-123")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "the API key is not valid");
    assert_eq!(api.count(), 0);

    // Step 2: alice's first request, and what the API receives.
    let r = send(&web, "GET", "/api/orders", &[("x-api-key", alice)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "api /orders");
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.header("ratelimit-remaining"), Some("4"));
    assert_eq!(r.header("ratelimit-reset"), Some("2"));
    assert_eq!(r.header("ratelimit-policy"), Some("5;w=10"));
    let seen = api.last();
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "paid");
    assert!(seen.headers.get("x-api-key").is_none());

    // Step 3: four more pass, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            send(&web, "GET", "/api/orders", &[("x-api-key", alice)])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let r = send(&web, "GET", "/api/orders", &[("x-api-key", alice)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("ratelimit-reset"), Some("2"));
    assert_eq!(r.header("ratelimit-policy"), Some("5;w=10"));
    assert_eq!(r.json()["error"], "rate_limited");

    // Step 4: bob has his own, smaller limit.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&web, "GET", "/api/orders", &[("x-api-key", bob)]).await);
    }
    assert_eq!(
        statuses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 429]
    );
    assert_eq!(statuses[0].header("ratelimit-policy"), Some("2;w=10"));
    assert_eq!(statuses[2].header("retry-after"), Some("5"));

    // Step 5: the paid-only route.
    let r = send(&web, "GET", "/reports/daily", &[("x-api-key", bob)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(
        r.json()["message"],
        "the consumer is in no group allowed on this route"
    );
    // alice is allowed, but her limit holds on every route: it is spent.
    let r = send(&web, "GET", "/reports/daily", &[("x-api-key", alice)]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-policy"), Some("5;w=10"));

    // Step 6: the keys never show in the admin API.
    let config = get(gw.admin.as_deref().unwrap(), "/config").await;
    assert!(config.body.contains("<redacted>"), "{}", config.body);
    assert!(!config.body.contains(alice) && !config.body.contains(bob));
    let out = Command::new(BIN)
        .arg("explain")
        .arg("-c")
        .arg(Path::new(ROOT).join("examples/api-keys.yaml"))
        .args(["GET", "http://localhost:8080/api/orders", "-H"])
        .arg(format!("x-api-key: {bob}"))
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{explained}");
    for line in [
        "plugins   key_auth [route] → rate_limit [route] (by phase; level in brackets)",
        "          consumers with plugins of their own here: alice, bob",
        "          → passes: authenticated as consumer bob",
        "consumer  bob: in force after authentication: rate_limit [consumer bob]",
        "replaced  rate_limit [route] by the rate_limit [consumer bob] in force",
        "          counts by consumer bob; policy 2;w=10 (RateLimit-Policy)",
        "action    forward to upstream api",
        "rewrite   /api/orders → /orders",
    ] {
        assert!(explained.contains(line), "{line}\n{explained}");
    }
    assert!(!explained.contains(alice) && !explained.contains(bob));
}

/// One request over TLS with SNI `example.com`, trusting `ca`, speaking `alpn`.
async fn over_tls(addr: &str, ca: &Path, alpn: &[u8], path: &str) -> Reply {
    let client = pki::client_config(ca, None, &[alpn]);
    let stream = pki::connect(addr, "example.com", client).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
    let io = TokioIo::new(stream);
    let resp = if alpn == b"h2" {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://example.com{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "example.com")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

#[tokio::test]
async fn https_guide_with_certificate_files() {
    let app = TestUpstream::start("app").await;
    let dir = temp_dir("https");
    let ca = certificates(&dir);
    let config = substitute(
        &example("https.yaml"),
        &ephemeral(
            &["127.0.0.1:8443", "127.0.0.1:8080"],
            &[("127.0.0.1:9001", &app)],
        ),
    );
    let gw = Portico::start_in(&dir, &config);
    let (secure, web) = (gw.addr("secure"), gw.addr("web"));

    // Step 1: plain HTTP is redirected, path and query kept.
    let r = H1::connect(&web)
        .await
        .get("example.com:8080", "/orders?id=7")
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://example.com:8443/orders?id=7")
    );

    // Step 2: HTTPS over HTTP/2, with HSTS; and over HTTP/1.1.
    let r = over_tls(&secure, &ca.cert_path(), b"h2", "/orders?id=7").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, "app /orders?id=7");
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(app.last().headers["x-forwarded-proto"], "https");
    let r = over_tls(&secure, &ca.cert_path(), b"http/1.1", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);

    // Step 3: plain HTTP sent to the HTTPS port gets a hint.
    let r = get(&secure, "/").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "plain_http_on_https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_guide_with_acme() {
    use crate::acme::{free_port, pebble_root, start_pebble};
    let app = TestUpstream::start("app").await;
    for challenge in ["tls_alpn_01", "http_01"] {
        let dir = temp_dir("guide-acme");
        let directory_ca = Ca::new(&dir, "directory CA");
        let (http_port, tls_port) = (free_port(), free_port());
        let pebble = start_pebble(&dir, &directory_ca, http_port, tls_port);
        let mut subs = vec![
            (
                "bind: 0.0.0.0:443".to_owned(),
                format!("bind: 127.0.0.1:{tls_port}"),
            ),
            (
                "bind: 0.0.0.0:80".to_owned(),
                format!("bind: 127.0.0.1:{http_port}"),
            ),
            (
                "directory: https://acme-v02.api.letsencrypt.org/directory".to_owned(),
                format!(
                    "directory: '{}'\n        directory_ca_file: '{}'",
                    pebble.directory,
                    directory_ca.cert_path().display()
                ),
            ),
            (
                "address: 127.0.0.1:9001".to_owned(),
                format!("address: {}", app.addr()),
            ),
        ];
        if challenge == "http_01" {
            subs.push((
                "challenge: tls_alpn_01".to_owned(),
                "challenge: http_01".to_owned(),
            ));
        }
        let config = substitute(&example("https-acme.yaml"), &subs);
        let gw = Portico::start_in(&dir, &config);
        assert!(
            gw.wait_log("certificate issued", Duration::from_secs(90)),
            "{challenge}: {}",
            gw.log_text()
        );
        let root = pebble_root(&pebble, &dir);
        let client = pki::client_config(&root, None, &[b"h2"]);
        let stream = pki::connect(&gw.addr("secure"), "www.example.com", Arc::clone(&client))
            .await
            .unwrap();
        let mut names = pki::peer_names(&stream);
        names.sort();
        assert_eq!(names, ["example.com", "www.example.com"], "{challenge}");
        drop(stream);
        let r = over_tls(&gw.addr("secure"), &root, b"h2", "/").await;
        assert_eq!(r.status, 200, "{challenge}");
        assert_eq!(r.body, "app /");
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert!(dir.join("acme/example.com/cert.pem").exists());
        let r = H1::connect(&gw.addr("web"))
            .await
            .get("example.com", "/login")
            .await;
        assert_eq!(r.status, 308);
        assert_eq!(r.header("location"), Some("https://example.com/login"));
    }
}

#[tokio::test]
async fn jwt_cors_guide() {
    use crate::jwt::{hs, now};
    let api = TestUpstream::start("api").await;
    let config = substitute(
        &example("jwt-cors.yaml"),
        &ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &api)]),
    );
    let gw = Portico::start_in_env(&temp_dir("jwt-cors"), &config, ENV);
    let web = gw.addr("web");
    let secret = env("JWT_SECRET").as_bytes();
    let claims = |exp: u64, aud: &str| {
        serde_json::json!({
            "sub": "alice", "email": "alice@example.com",
            "iss": "https://auth.example.com", "aud": aud, "exp": exp,
        })
    };
    let token = hs(None, &claims(now() + 3600, "orders-api"), secret);
    let bearer = format!("Bearer {token}");
    let origin = ("origin", "https://app.example.com");

    // Step 1: the browser's preflight.
    let r = send(
        &web,
        "OPTIONS",
        "/api/orders",
        &[
            origin,
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, PUT, DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(api.count(), 0, "a preflight never reaches the API");

    // Step 2: the call with a token.
    let r = send(
        &web,
        "GET",
        "/api/orders",
        &[origin, ("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "api /orders");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    let seen = api.last();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["authorization"], bearer.as_str());
    // A client cannot set the claim headers itself.
    send(
        &web,
        "GET",
        "/api/orders",
        &[("authorization", &bearer), ("x-user-id", "mallory")],
    )
    .await;
    assert_eq!(api.last().headers["x-user-id"], "alice");

    // Step 3: what 401s look like.
    let r = send(&web, "GET", "/api/orders", &[origin]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(r.json()["message"], "a bearer token is required");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "the page can read the 401"
    );
    let invalid = "Bearer realm=\"portico\", error=\"invalid_token\"";
    let tampered = format!("{bearer}x");
    let expired = format!(
        "Bearer {}",
        hs(None, &claims(now() - 3600, "orders-api"), secret)
    );
    let elsewhere = format!(
        "Bearer {}",
        hs(None, &claims(now() + 3600, "billing"), secret)
    );
    for auth in [&tampered, &expired, &elsewhere] {
        let r = send(&web, "GET", "/api/orders", &[("authorization", auth)]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some(invalid));
        assert_eq!(r.json()["error"], "unauthorized");
    }
    let r = send(&web, "GET", "/api/orders", &[("authorization", &expired)]).await;
    assert_eq!(r.json()["message"], "the token has expired");

    // Step 4: another site's preflight.
    let r = send(
        &web,
        "OPTIONS",
        "/api/orders",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "cors_forbidden");
    assert_eq!(api.count(), 2);
}

#[tokio::test]
async fn oauth2_introspection_guide() {
    let endpoint = crate::introspection::Endpoint::start(env("INTROSPECTION_SECRET"));
    let api = TestUpstream::start("api").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &api)]);
    subs.push((
        "http://127.0.0.1:9100/introspect".to_owned(),
        endpoint.url(),
    ));
    let config = substitute(&example("oauth2-introspection.yaml"), &subs);
    let gw = Portico::start_in_env(&temp_dir("oauth2-introspection"), &config, ENV);
    let web = gw.addr("web");
    let bearer = |t: &str| format!("Bearer {t}");

    let r = send(&web, "GET", "/api/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(r.json()["message"], "a bearer token is required");

    let r = send(
        &web,
        "GET",
        "/api/orders",
        &[("authorization", &bearer("tok-good"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "api /orders");
    assert_eq!(r.header("ratelimit-policy"), Some("100;w=60"));
    let seen = api.last();
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-scopes"], "read write");
    assert_eq!(seen.headers["x-consumer-name"], "alice");
    assert_eq!(seen.headers["x-consumer-groups"], "admins");
    assert!(seen.headers.get("authorization").is_none());

    for (token, message) in [
        ("tok-inactive", "the token is not active"),
        ("tok-expired", "the token has expired"),
    ] {
        let r = send(
            &web,
            "GET",
            "/api/orders",
            &[("authorization", &bearer(token))],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico\", error=\"invalid_token\"")
        );
        assert_eq!(r.json()["message"], message);
    }

    let admin = |token: &'static str| {
        let web = web.clone();
        async move {
            send(
                &web,
                "GET",
                "/admin/users",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await
        }
    };
    let r = admin("tok-readonly").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\", error=\"insufficient_scope\", scope=\"write\"")
    );
    assert_eq!(r.json()["message"], "the token lacks a required scope");
    let r = admin("tok-writer").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "the consumer is in no group allowed on this route"
    );
    let r = admin("tok-good").await;
    assert_eq!((r.status, r.body.as_str()), (200, "api /admin/users"));

    assert_eq!(endpoint.calls().await, 6);
    for _ in 0..5 {
        let r = send(
            &web,
            "GET",
            "/api/orders",
            &[("authorization", &bearer("tok-good"))],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(endpoint.calls().await, 6, "answers come from the cache");

    drop(endpoint);
    let r = send(
        &web,
        "GET",
        "/api/orders",
        &[("authorization", &bearer("tok-otheraud"))],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert!(gw.wait_log("token introspection failed", Duration::from_secs(5)));
}

#[tokio::test]
async fn oidc_login_guide() {
    use crate::support::oidc::{LoginOpts, Provider, login};
    // The provider must know portico's callback and portico the provider's issuer: the
    // provider starts, portico starts on it, and the provider starts again on its port with
    // the same keys and portico's callback registered.
    let jwks = serde_json::json!({ "keys": [crate::oidc::private_jwk()] });
    let extra = serde_json::json!({});
    let first = Provider::start(crate::oidc::op_config(None, &jwks, None, &extra));
    let (issuer, port) = (first.issuer().to_owned(), first.port());
    let app = TestUpstream::start("app").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &app)]);
    subs.push((
        "issuer: http://127.0.0.1:9200".to_owned(),
        format!("issuer: {issuer}"),
    ));
    let config = substitute(&example("oidc.yaml"), &subs);
    let gw = Portico::start_in_env(&temp_dir("oidc-guide"), &config, ENV);
    let web = gw.addr("web");
    drop(first);
    let _op = Provider::start(crate::oidc::op_config(
        Some(&web),
        &jwks,
        Some(port),
        &extra,
    ));

    // An API client: 401; a browser: to the provider, with PKCE.
    let r = send(&web, "GET", "/hello", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
    assert_eq!(r.json()["message"], "a login or a bearer token is required");
    let r = send(&web, "GET", "/hello", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(location.starts_with(&format!(
        "{issuer}/auth?response_type=code&client_id=portico"
    )));
    assert!(
        location.contains("scope=openid+email+profile")
            && location.contains("code_challenge_method=S256")
    );
    let tx = r.header("set-cookie").unwrap();
    assert!(tx.starts_with("portico_session_tx_"));
    assert!(
        tx.ends_with("; Path=/oauth2/callback; Max-Age=600; HttpOnly; SameSite=Lax"),
        "{tx}"
    );

    // The login, then the app with the identity headers and without portico's cookie.
    let jar = temp_dir("oidc-guide-jar").join("jar.json");
    let done = login(
        &format!("http://{web}/hello"),
        &LoginOpts::default().jar(&jar),
    )
    .await;
    assert_eq!((done.status, done.body.as_str()), (200, "app /hello"));
    let seen = app.last();
    assert_eq!(seen.headers["x-user-email"], "alice@example.com");
    assert_eq!(seen.headers["x-user-name"], "Alice");
    assert_eq!(seen.headers["x-consumer-name"], "alice-sub");
    assert_eq!(seen.headers["x-consumer-groups"], "admins");
    let forwarded = seen
        .headers
        .get("cookie")
        .map_or("", |c| c.to_str().unwrap());
    assert!(!forwarded.contains("portico_session"), "{forwarded}");
    let session = done.cookie("portico_session").unwrap();
    assert!(session.http_only && session.value.len() < 3800);
    assert_eq!(session.same_site.as_deref(), Some("Lax"));
    let cookie = format!("portico_session={}", session.value);
    let r = send(&web, "GET", "/admin/users", &[("cookie", &cookie)]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /admin/users"));
    let bob = login(
        &format!("http://{web}/admin/users"),
        &LoginOpts::user("bob"),
    )
    .await;
    assert_eq!(bob.status, 403);

    // A cookie cut short: cleared, 401.
    let short = format!("portico_session={}", &session.value[..16]);
    let r = send(&web, "GET", "/admin/users", &[("cookie", &short)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("set-cookie"),
        Some("portico_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
    );

    // Logout, here and at the provider, back to `/`, which asks for a login again.
    let out = login(
        &format!("http://{web}/oauth2/logout"),
        &LoginOpts::default()
            .jar(&jar)
            .stop_at(format!("http://{web}/")),
    )
    .await;
    assert!(out.url.starts_with(&format!("http://{web}/")), "{out:?}");
    assert!(
        out.hops
            .iter()
            .any(|h| h.url.contains("/session/end?id_token_hint="))
    );
    assert!(out.cookie("portico_session").is_none());

    // explain, offline.
    let out = Command::new(BIN)
        .arg("explain")
        .arg("-c")
        .arg(Path::new(ROOT).join("examples/oidc.yaml"))
        .args([
            "-H",
            "Accept: text/html",
            "GET",
            "http://localhost:8080/admin/users",
        ])
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{explained}");
    for line in [
        "plugins   oidc [global] → acl [route] (by phase; level in brackets)",
        "no session: the browser would be sent to http://127.0.0.1:9200's authorization endpoint (discovery is not fetched offline)",
    ] {
        assert!(explained.contains(line), "{line}\n{explained}");
    }
}

#[tokio::test]
async fn forward_auth_guide() {
    let auth = crate::forward_auth::AuthService::start();
    let app = TestUpstream::start("app").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &app)]);
    subs.push((
        "address: 127.0.0.1:9200".to_owned(),
        format!("address: {}", auth.addr),
    ));
    let config = substitute(&example("forward-auth.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("forward-auth"), &config);
    let web = gw.addr("web");
    let bearer = |who: &str| format!("Bearer tok-{who}");

    let r = send(&web, "GET", "/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"example\"")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["message"], "sign in first");

    let r = send(&web, "GET", "/orders", &[("accept", "text/html")]).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with("http://login.example/login?rd=http%3A%2F%2F"),
        "{location}"
    );

    let r = send(&web, "GET", "/orders", &[("authorization", &bearer("bob"))]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /orders"));
    assert_eq!(r.header("ratelimit-policy"), Some("100;w=60"));
    let seen = app.last();
    assert_eq!(seen.headers["x-user"], "bob");
    assert_eq!(seen.headers["x-consumer-name"], "bob");
    assert!(seen.headers.get("x-auth-debug").is_none());
    let check = auth.last().await;
    assert_eq!(check.header("x-forwarded-method"), Some("GET"));
    assert_eq!(check.header("x-forwarded-uri"), Some("/orders"));
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    assert_eq!(check.header("x-forwarded-for"), Some("127.0.0.1"));

    let r = send(
        &web,
        "GET",
        "/orders",
        &[("authorization", &bearer("bob")), ("x-user", "alice")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.last().headers["x-user"],
        "bob",
        "a client cannot forge it"
    );

    let r = send(
        &web,
        "GET",
        "/admin/users",
        &[("authorization", &bearer("bob"))],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (403, "admins only\n"));
    let r = send(
        &web,
        "GET",
        "/reports/q3",
        &[("authorization", &bearer("bob"))],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "the consumer is in no group allowed on this route"
    );
    let r = send(
        &web,
        "GET",
        "/reports/q3",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /reports/q3"));
    assert_eq!(app.last().headers["x-consumer-groups"], "admins");

    assert_eq!(auth.calls().await, 6);
    for _ in 0..3 {
        let r = send(
            &web,
            "GET",
            "/reports/q3",
            &[("authorization", &bearer("alice"))],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(auth.calls().await, 6, "decisions come from the cache");

    drop(auth);
    let r = send(
        &web,
        "GET",
        "/orders?page=2",
        &[("authorization", &bearer("alice"))],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "auth_unavailable");
    assert!(!r.body.contains("tok-alice"));
    assert!(gw.wait_log(
        "the auth service gave no usable answer",
        Duration::from_secs(5)
    ));
}

#[tokio::test]
async fn debugging_guide() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let mut subs = ephemeral(
        &["127.0.0.1:8080"],
        &[("127.0.0.1:9001", &a), ("127.0.0.1:9002", &b)],
    );
    subs.push(admin_ephemeral());
    let receiver = crate::tracing::Receiver::start();
    subs.push((
        "endpoint: http://127.0.0.1:4318/v1/traces".to_owned(),
        format!("endpoint: http://127.0.0.1:{}/v1/traces", receiver.port),
    ));
    let config = substitute(&example("debugging.yaml"), &subs);
    let gw = Portico::start_in_env(&temp_dir("debugging"), &config, ENV);
    let web = gw.addr("web");
    let (token, alice) = (env("DEBUG_TOKEN"), env("ALICE_KEY"));

    // Step 1: the decision, for the token only; the header never reaches the backend.
    let r = send(
        &web,
        "GET",
        "/api/users",
        &[("x-api-key", alice), ("x-portico-debug", token)],
    )
    .await;
    assert_eq!(r.status, 200);
    let summary = r.header("x-portico-debug").unwrap().to_owned();
    let target = if r.body.starts_with("a ") {
        a.addr()
    } else {
        b.addr()
    };
    let want = format!(
        "route=api; upstream=app; target={target}; attempts=1; plugins=key_auth; consumer=alice; head_ms="
    );
    assert!(summary.starts_with(&want), "{summary}");
    assert!(summary.contains("; upstream_ms="), "{summary}");
    let seen = if r.body.starts_with("a ") {
        a.last()
    } else {
        b.last()
    };
    assert!(seen.headers.get("x-portico-debug").is_none());

    let r = send(&web, "GET", "/api/users", &[("x-portico-debug", token)]).await;
    assert_eq!(r.status, 401);
    let summary = r.header("x-portico-debug").unwrap();
    assert!(
        summary
            .starts_with("route=api; attempts=0; plugins=key_auth; answered_by=key_auth; head_ms="),
        "{summary}"
    );

    for wrong in [None, Some("not-the-token-at-all")] {
        let mut headers = vec![("x-api-key", alice)];
        headers.extend(wrong.map(|w| ("x-portico-debug", w)));
        let r = send(&web, "GET", "/api/users", &headers).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-portico-debug").is_none());
        let seen = if r.body.starts_with("a ") {
            a.last()
        } else {
            b.last()
        };
        assert!(seen.headers.get("x-portico-debug").is_none());
    }
    let config = get(gw.admin.as_ref().unwrap(), "/config").await.body;
    assert!(config.contains(r#""token":"<redacted>""#), "{config}");
    assert!(!config.contains(token));

    // Step 2: the access line, with the trace id.
    let r = send(
        &web,
        "GET",
        "/page",
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = gw.access_entry("/page");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["bytes_out"], 7);
    assert_eq!(line["route"], "site");
    assert!(line["duration_ms"].as_f64().unwrap() >= line["head_ms"].as_f64().unwrap());

    // Step 4: the caller sampled that trace, so portico exported its part of it.
    let spans = receiver.trace("4bf92f3577b34da6a3ce929d0e0e4736", 2).await;
    let server = spans.iter().find(|s| s["name"] == "request").unwrap();
    assert_eq!(server["parent"], "00f067aa0ba902b7");
    assert_eq!(server["service"], "portico");
    assert!(spans.iter().any(|s| s["name"] == "upstream attempt"));
}

#[tokio::test]
async fn rewrites_and_mocks_guide() {
    let users = TestUpstream::start("users").await;
    let config = substitute(
        &example("rewrites-and-mocks.yaml"),
        &ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &users)]),
    );
    let gw = Portico::start_in(&temp_dir("rewrites"), &config);
    let web = gw.addr("web");

    // Step 1: strip_prefix and header edits both ways.
    let r = send(
        &web,
        "GET",
        "/users/42",
        &[("x-api-version", "9"), ("cookie", "session=abc")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "users /42");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let seen = users.last();
    assert_eq!(seen.uri, "/42");
    assert_eq!(seen.headers["x-api-version"], "2");
    assert!(seen.headers.get("cookie").is_none());

    // Step 2: replace_prefix and a regex rewrite.
    assert_eq!(
        send(&web, "GET", "/v1/orders?page=2", &[]).await.body,
        "users /v2/orders?page=2"
    );
    assert_eq!(
        send(&web, "GET", "/items/7/details", &[]).await.body,
        "users /catalog?item=7"
    );

    // Step 3: the transformers.
    let r = send(&web, "GET", "/profile", &[("x-token", "Bearer abc")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"n":1,"source":"portico","user":{"email":"a@b"}}"#
    );
    assert!(r.header("x-internal").is_none());
    let seen = users.last();
    assert_eq!(seen.uri, "/json?format=full");
    assert_eq!(seen.headers["authorization"], "Bearer abc");
    assert!(seen.headers.get("x-token").is_none());

    // Step 4: the mock, which never reaches the backend.
    let before = users.count();
    let r = send(&web, "GET", "/status", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"status": "ok", "version": "1.4.2"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("max-age=5"));
    assert_eq!(send(&web, "POST", "/status", &[]).await.status, 404);

    // Step 5: redirects.
    let r = send(&web, "GET", "/docs/old/install?v=2", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://docs.example.com/docs/old/install?v=2")
    );
    let r = send(&web, "GET", "/", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/users/"));
    assert_eq!(users.count(), before);
}

#[tokio::test]
async fn canary_and_mirroring_guide() {
    let stable = TestUpstream::start("stable").await;
    let canary = TestUpstream::start("canary").await;
    let shadow = TestUpstream::start("shadow").await;
    let config = substitute(
        &example("canary-and-mirroring.yaml"),
        &ephemeral(
            &["127.0.0.1:8080"],
            &[
                ("127.0.0.1:9001", &stable),
                ("127.0.0.1:9002", &canary),
                ("127.0.0.1:9003", &shadow),
            ],
        ),
    );
    let gw = Portico::start_in(&temp_dir("canary"), &config);
    let web = gw.addr("web");

    // Step 1: 9 in 10 to stable, 1 in 10 to the canary.
    let (mut bodies, mut ids) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let r = send(&web, "GET", "/", &[]).await;
        ids.push(r.header("x-request-id").unwrap().to_owned());
        bodies.push(r.body);
    }
    assert_eq!(bodies.iter().filter(|b| *b == "stable /").count(), 9);
    assert_eq!(bodies.iter().filter(|b| *b == "canary /").count(), 1);

    // Step 2: chosen clients.
    assert_eq!(
        send(&web, "GET", "/orders", &[("x-canary", "1")])
            .await
            .body,
        "canary /orders"
    );
    assert_eq!(
        send(&web, "GET", "/orders", &[("cookie", "canary=yes")])
            .await
            .body,
        "canary /orders"
    );

    // Step 3: the shadow got a copy of each of the ten, and nothing else.
    shadow.wait_count(10, Duration::from_secs(5)).await;
    // ...with the same request ids as the answers the clients got.
    let mut copied: Vec<String> = shadow
        .seen()
        .iter()
        .map(|s| {
            assert_eq!(s.uri, "/");
            s.headers["x-request-id"].to_str().unwrap().to_owned()
        })
        .collect();
    copied.sort();
    ids.sort();
    assert_eq!(copied, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_guide() {
    use crate::grpc::{Server, access_lines, calls};
    use serde_json::json;
    let one = Server::start();
    let two = Server::start();
    let mut subs = vec![
        (
            "bind: 127.0.0.1:8080".to_owned(),
            "bind: 127.0.0.1:0".to_owned(),
        ),
        (
            "address: 127.0.0.1:50051".to_owned(),
            format!("address: {}", one.addr),
        ),
        (
            "address: 127.0.0.1:50052".to_owned(),
            format!("address: {}", two.addr),
        ),
    ];
    subs.push(admin_ephemeral());
    let config = substitute(&example("grpc.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("grpc-guide"), &config);
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();

    // Step 1: calls of every kind; the route's 5 s caps the client's 10 s.
    let r = calls(
        &web,
        json!([
            { "kind": "unary", "text": "hello", "n": 1 },
            { "kind": "server_stream", "text": "tick", "n": 3 },
        ]),
    );
    assert_eq!(r[0]["text"], "echo:hello");
    assert_eq!(r[0]["trailers"]["x-trailer"], "yes");
    let left = r[0]["remaining_ms"].as_i64().unwrap();
    assert!((4000..=5000).contains(&left), "{left}");
    assert_eq!(r[1]["items"], json!([0, 1, 2]));

    // Step 2: a method no route takes.
    let r = calls(
        &web,
        json!([{ "kind": "unary", "path": "/test.Nope/Unary" }]),
    );
    assert_eq!(r[0]["code"], "UNIMPLEMENTED");
    assert_eq!(r[0]["details"], "no route matched the request");

    // Step 3: a sick instance is taken out; calls go to the other one.
    calls(&one.addr, json!([{ "kind": "unary", "text": "sick" }]));
    assert!(gw.wait_log(
        &format!("target unhealthy upstream=echo target={}", one.addr),
        Duration::from_secs(10)
    ));
    let targets = get(&admin, "/upstreams/echo/targets").await.json();
    assert_eq!(targets["targets"][0]["healthy"], false);
    assert_eq!(targets["targets"][1]["healthy"], true);
    let r = calls(
        &web,
        json!([{ "kind": "unary", "text": "x" }, { "kind": "unary", "text": "y" }]),
    );
    assert!(r.iter().all(|c| c["code"] == "OK"), "{r:?}");
    let before = access_lines(&gw, "/test.Echo/Unary");
    assert!(
        before
            .iter()
            .rev()
            .take(2)
            .all(|l| l["target"] == two.addr.as_str()),
        "{before:?}"
    );
    calls(&one.addr, json!([{ "kind": "unary", "text": "well" }]));
    assert!(gw.wait_log(
        &format!("target healthy upstream=echo target={}", one.addr),
        Duration::from_secs(10)
    ));

    // Step 4: a browser's call, with curl, byte for byte as the guide shows.
    let mut curl = Command::new("curl")
        .args([
            "-s",
            "--data-binary",
            "@-",
            "-H",
            "content-type: application/grpc-web+proto",
        ])
        .arg(format!("http://{web}/test.Echo/Unary"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    curl.stdin
        .take()
        .unwrap()
        .write_all(b"\x00\x00\x00\x00\x04\x0a\x02hi")
        .unwrap();
    let out = curl.wait_with_output().unwrap();
    let body = out.stdout;
    assert_eq!(&body[..14], b"\x00\x00\x00\x00\x0c\x0a\x07echo:hi");
    let trailer = &body[17..];
    assert_eq!(trailer[0], 0x80);
    let text = String::from_utf8_lossy(&trailer[5..]);
    assert!(
        text.contains("grpc-status:0\r\n") && text.contains("x-trailer:yes\r\n"),
        "{text}"
    );

    // Step 5: the access log and the metrics.
    let lines = access_lines(&gw, "/test.Echo/Unary");
    assert!(lines.iter().all(|l| l["grpc_status"] == 0), "{lines:?}");
    let metrics = get(&admin, "/metrics").await.body;
    assert!(
        metrics.contains(
            "portico_grpc_responses_total{route=\"\",upstream=\"\",grpc_status=\"12\"} 1"
        )
    );

    // Step 6: nothing left: UNAVAILABLE at once.
    drop(one);
    drop(two);
    let r = calls(&web, json!([{ "kind": "unary", "text": "hi" }]));
    assert_eq!(r[0]["code"], "UNAVAILABLE", "{r:?}");
}

#[tokio::test]
async fn grpc_json_guide() {
    // The guide's gRPC server, on a free port.
    let server = crate::support::peer::Peer::python([
        Path::new(ROOT)
            .join("examples/greeter_server.py")
            .into_os_string(),
        "0".into(),
    ]);

    let dir = temp_dir("grpc-json");
    greeter_descriptor_set(&dir);
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[]);
    subs.push((
        "address: 127.0.0.1:50051".to_owned(),
        format!("address: {}", server.addr),
    ));
    let config = substitute(&example("grpc-json.yaml"), &subs);
    let gw = Portico::start_in(&dir, &config);
    let web = gw.addr("web");

    let r = send(&web, "GET", "/v1/hello/Ada", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        r#"{"at":"2025-01-02T03:04:05Z","message":"Hello, Ada!"}"#
    );

    let mut h1 = H1::connect(&web).await;
    let post = |body: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/hello")
            .header("host", "localhost:8080")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    let r = h1.send(post(r#"{"name":"Grace"}"#)).await.unwrap();
    assert_eq!(
        r.body,
        r#"{"at":"2025-01-02T03:04:05Z","message":"Hello, Grace!"}"#
    );
    let r = h1.send(post(r#"{"name":""}"#)).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"code":3,"details":[],"message":"name is required"}"#
    );
    let r = h1.send(post(r#"{"name":"#)).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("the body is not JSON: EOF while parsing a value at line 1 column 8"),
        "{}",
        r.body
    );

    let r = send(&web, "GET", "/v1/hello/Ada/stream?count=3", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(
        r.body,
        "{\"at\":\"2025-01-02T03:04:05Z\",\"message\":\"Hello #1, Ada!\"}\n\
         {\"at\":\"2025-01-02T03:04:05Z\",\"message\":\"Hello #2, Ada!\"}\n\
         {\"at\":\"2025-01-02T03:04:05Z\",\"message\":\"Hello #3, Ada!\"}\n"
    );

    let r = send(&web, "GET", "/v1/hello/nobody", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"code":5,"details":[],"message":"no one called nobody"}"#
    );
    let r = send(&web, "DELETE", "/v1/hello/Ada", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no_route"), "{}", r.body);

    // explain, as the guide shows it.
    let file = dir.join("explain.yaml");
    std::fs::write(&file, example("grpc-json.yaml")).unwrap();
    let out = Command::new(BIN)
        .args(["explain", "-c"])
        .arg(&file)
        .args(["GET", "http://localhost:8080/v1/hello/Ada/stream?count=3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "gRPC method /helloworld.Greeter/StreamHellos (server streaming, answered as NDJSON)",
        "binding GET /v1/hello/{name}/stream",
        "from the path: name=\"Ada\"",
        "from the query: count",
    ] {
        assert!(text.contains(wanted), "{wanted}: {text}");
    }
}

#[tokio::test]
async fn aggregation_guide() {
    use crate::aggregate::Backend;
    let users = Backend::start().await;
    let orders = Backend::start().await;
    let catalog = Backend::start().await;
    let config = substitute(
        &example("aggregation.yaml"),
        &[
            (
                "bind: 127.0.0.1:8080".to_owned(),
                "bind: 127.0.0.1:0".to_owned(),
            ),
            (
                "address: 127.0.0.1:9001".to_owned(),
                format!("address: {}", users.addr),
            ),
            (
                "address: 127.0.0.1:9002".to_owned(),
                format!("address: {}", orders.addr),
            ),
            (
                "address: 127.0.0.1:9003".to_owned(),
                format!("address: {}", catalog.addr),
            ),
        ],
    );
    let gw = Portico::start_in(&temp_dir("aggregation"), &config);
    let web = gw.addr("web");

    // Step 1: three calls, one answer.
    let r = get(&web, "/profile/42").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-portico-completed"), Some("true"));
    assert_eq!(
        r.body,
        r#"{"favourite":{"name":"Desk lamp","sku":"A1","stock":"3"},"orders":[{"order":1,"user":"42"},{"order":2,"user":"42"}],"user":{"address":{"city":"Paris","zip":"75001"},"favourite":"A1","id":"42","name":"Ada"}}"#
    );
    assert_eq!(users.log.lock().unwrap().calls[0].0, "/users/42");
    assert_eq!(orders.log.lock().unwrap().calls[0].0, "/orders?user=42");
    assert_eq!(catalog.log.lock().unwrap().calls[0].0, "/items/A1");

    // Step 2: the optional call fails; the answer says so.
    let r = get(&web, "/profile/13").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-portico-completed"), Some("false"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.body,
        r#"{"errors":[{"call":"orders","error":"aggregate_failed","message":"its upstream answered 500"}],"favourite":{"name":"Desk lamp","sku":"A1","stock":"3"},"user":{"address":{"city":"Paris","zip":"75001"},"favourite":"A1","id":"13","name":"Ada"}}"#
    );

    // Step 3: the plan, as the guide shows it.
    let file = Path::new(ROOT).join("examples/aggregation.yaml");
    let out = Command::new(BIN)
        .args(["explain", "-c"])
        .arg(&file)
        .args(["GET", "http://127.0.0.1:8080/profile/42"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let guide =
        std::fs::read_to_string(Path::new(ROOT).join("docs/guides/aggregation.md")).unwrap();
    for line in text.lines() {
        assert!(guide.contains(line), "the guide does not show `{line}`");
    }
    assert!(
        text.contains("stage 2: orders, favourite (in parallel)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_tls_guide() {
    use crate::l4::{Redis, redis_cli};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = Redis::start();
    let second = Redis::start();
    let dir = temp_dir("tcp-guide");
    let ca = certificates(&dir);
    let mut subs = ephemeral(&["127.0.0.1:6390", "127.0.0.1:6391"], &[]);
    subs.push((
        "address: 127.0.0.1:6379".to_owned(),
        format!("address: {}", first.addr()),
    ));
    subs.push((
        "address: 127.0.0.1:6380".to_owned(),
        format!("address: {}", second.addr()),
    ));
    subs.push(admin_ephemeral());
    let gw = Portico::start_in(&dir, &substitute(&example("tcp.yaml"), &subs));
    let port = |name: &str| -> u16 { gw.addr(name).rsplit(':').next().unwrap().parse().unwrap() };

    // Each server marked; new connections take turns (least connections, ties in turn).
    assert_eq!(redis_cli(first.port, &["SET", "who", "first"]), "OK");
    assert_eq!(redis_cli(second.port, &["SET", "who", "second"]), "OK");
    let mut seen: Vec<String> = (0..2)
        .map(|_| redis_cli(port("redis"), &["GET", "who"]))
        .collect();
    seen.sort();
    assert_eq!(seen, ["first", "second"]);

    // Over TLS: the real redis-cli, trusting the guide's CA.
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &ca.cert_path().display().to_string()])
        .args(["--sni", "example.com", "-h", "127.0.0.1"])
        .args(["-p", &port("redis-tls").to_string(), "PING"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    // And a rustls client: no ALPN, RESP inside.
    let client = pki::client_config(&ca.cert_path(), None, &[]);
    let mut tls = pki::connect(&gw.addr("redis-tls"), "example.com", client)
        .await
        .unwrap();
    tls.write_all(b"GET who\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"$"), "{:?}", &buf[..n]);
    drop(tls);

    // One server dies: every new connection is still answered, by the other.
    first.kill();
    for _ in 0..3 {
        assert_eq!(redis_cli(port("redis"), &["GET", "who"]), "second");
    }
    assert!(gw.wait_log("relay connect failed", Duration::from_secs(5)));
    assert!(gw.wait_log("target unhealthy", Duration::from_secs(10)));
    let metrics = get(gw.admin.as_deref().unwrap(), "/metrics").await.body;
    assert!(
        metrics.contains("portico_l4_connections_total{listener=\"redis\",upstream=\"redis\",result=\"relayed\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn proxy_protocol_guide() {
    use crate::proxy_protocol::{
        Haproxy, Recorder, get_over, parse_answer, read_to_close, v2_header,
    };
    use tokio::io::AsyncWriteExt;
    let app = TestUpstream::start("app").await;
    let legacy = Recorder::start("v1").await;
    let mut subs = ephemeral(&["0.0.0.0:8080"], &[("127.0.0.1:3000", &app)]);
    subs.push((
        "address: 127.0.0.1:3001".to_owned(),
        format!("address: {}", legacy.addr),
    ));
    let config = substitute(&example("proxy-protocol.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("proxy-protocol"), &config);
    let web = gw.addr("web");
    let haproxy = Haproxy::start(&web, "send-proxy-v2").await;

    // Through HAProxy: served, with the client's address.
    let stream = tokio::net::TcpStream::connect(&haproxy.addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (status, body) = get_over(stream, "/hello").await;
    assert_eq!((status, body.as_str()), (200, "app /hello"));
    assert_eq!(app.last().headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        gw.wait_log(&format!("\"client\":\"{me}\""), Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    // The admin route judges that address: not the office network.
    let stream = tokio::net::TcpStream::connect(&haproxy.addr).await.unwrap();
    assert_eq!(get_over(stream, "/admin/users").await.0, 403);
    // A client the balancer saw in the office network passes.
    let mut stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    let office = "192.0.2.7:1234".parse().unwrap();
    stream
        .write_all(&v2_header(office, web.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(get_over(stream, "/admin/users").await.0, 200);
    assert_eq!(app.last().headers["x-forwarded-for"], "192.0.2.7");

    // From a trusted address without a header: closed.
    let mut stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"");

    // The legacy upstream gets a v1 header naming the client.
    let stream = tokio::net::TcpStream::connect(&haproxy.addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (status, body) = get_over(stream, "/legacy/x").await;
    assert_eq!(status, 200);
    assert_eq!(parse_answer(&body).1, me.to_string());
}

/// `python3 examples/udp_demo.py serve 0 ADDRESS`: a stand-in resolver on a free port.
struct DemoResolver {
    child: std::process::Child,
    addr: String,
}

impl DemoResolver {
    fn start(address: &str) -> Self {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(Path::new(ROOT).join("examples/udp_demo.py"))
            .args(["serve", "0", address])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // It prints each query it gets: keep reading, so its prints never fail.
        std::thread::spawn(move || for _ in out.lines() {});
        // `dns ADDRESS listening on 127.0.0.1:PORT (...)`
        let addr = line
            .split(" on ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        DemoResolver {
            addr: addr.to_owned(),
            child,
        }
    }
}

impl Drop for DemoResolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `python3 examples/udp_demo.py ask ADDR www.example.test 4`, as the guide runs it.
fn ask_demo(addr: &str) -> String {
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("examples/udp_demo.py"))
        .args(["ask", addr, "www.example.test", "4"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn udp_guide() {
    let one = DemoResolver::start("192.0.2.1");
    let mut two = DemoResolver::start("192.0.2.2");
    let config = substitute(
        &example("udp.yaml"),
        &[
            (
                "bind: 127.0.0.1:5353".to_owned(),
                "bind: 127.0.0.1:0".to_owned(),
            ),
            admin_ephemeral(),
            (
                "address: 127.0.0.1:5301".to_owned(),
                format!("address: {}", one.addr),
            ),
            (
                "address: 127.0.0.1:5302".to_owned(),
                format!("address: {}", two.addr),
            ),
        ],
    );
    let gw = Portico::start_in(&temp_dir("udp"), &config);
    let dns = gw.addr("dns");
    let guide = std::fs::read_to_string(Path::new(ROOT).join("docs/guides/udp.md")).unwrap();

    // Step 1: four flows alternate between the resolvers, as the guide shows.
    let answers = ask_demo(&dns);
    assert_eq!(
        answers,
        "query 1: www.example.test A 192.0.2.1\nquery 2: www.example.test A 192.0.2.2\n\
         query 3: www.example.test A 192.0.2.1\nquery 4: www.example.test A 192.0.2.2\n"
    );
    assert!(guide.contains(&format!("```\n{answers}```")));

    // Step 2: the second resolver stops; once its check fails, every query goes to the first.
    let _ = two.child.kill();
    let _ = two.child.wait();
    assert!(
        gw.wait_log(
            &format!("target unhealthy upstream=resolvers target={}", two.addr),
            Duration::from_secs(10)
        ),
        "{}",
        gw.log_text()
    );
    let answers = ask_demo(&dns);
    let expected: String = (1..=4)
        .map(|i| format!("query {i}: www.example.test A 192.0.2.1\n"))
        .collect();
    assert_eq!(answers, expected);
    assert!(guide.contains(&format!("```\n{answers}```")));

    // Step 3: the metrics the guide lists, with this run's counts.
    let metrics = get(gw.admin.as_deref().unwrap(), "/metrics").await.body;
    let shown: Vec<&str> = guide
        .lines()
        .filter(|l| l.starts_with("portico_udp"))
        .collect();
    assert_eq!(shown.len(), 9);
    for line in shown {
        let series = line.rsplit_once(' ').unwrap().0;
        assert!(
            metrics
                .lines()
                .any(|m| m.starts_with(&format!("{series} "))),
            "no {series} in:\n{metrics}"
        );
    }
    for direction in ["in", "out"] {
        let series =
            format!(r#"portico_udp_datagrams_total{{listener="dns",direction="{direction}"}} 8"#);
        assert!(metrics.contains(&series), "{metrics}");
    }
    assert!(metrics.contains(r#"portico_udp_sessions_total{listener="dns"} 8"#));
    assert!(metrics.contains(r#"portico_udp_sessions_active{listener="dns"} 0"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_and_sse_guide() {
    let app = Path::new(ROOT).join("examples/realtime_app.py");
    let chat = crate::support::peer::Peer::python([app.as_os_str(), "chat".as_ref(), "0".as_ref()]);
    let feed = crate::support::peer::Peer::python([app.as_os_str(), "feed".as_ref(), "0".as_ref()]);
    let subs = vec![
        (
            "bind: 127.0.0.1:8080".to_owned(),
            "bind: 127.0.0.1:0".to_owned(),
        ),
        admin_ephemeral(),
        (
            "address: 127.0.0.1:9001".to_owned(),
            format!("address: {}", chat.addr),
        ),
        (
            "address: 127.0.0.1:9002".to_owned(),
            format!("address: {}", feed.addr),
        ),
    ];
    let config = substitute(&example("websockets.yaml"), &subs);
    let gw = Portico::start_in_env(&temp_dir("ws-guide"), &config, ENV);
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();

    // Without the key: 401, and no tunnel.
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = send(&web, "GET", "/chat", &upgrade).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "an API key is required");

    // With the key: messages echo through the tunnel, which the metrics count.
    let url = format!("ws://{web}/chat");
    let mut client = crate::websocket::Client::connect(&url, Some(env("CHAT_KEY")));
    assert!(client.first.starts_with("open"), "{}", client.first);
    assert_eq!(
        client.cmd("echo hello through portico"),
        "echo hello through portico"
    );
    let metrics = get(&admin, "/metrics").await.body;
    assert!(
        metrics.contains("portico_tunnels_active{route=\"chat\"} 1"),
        "{metrics}"
    );

    // The feed: events one at a time, a second apart.
    let mut h1 = H1::connect(&web).await;
    let response = h1.send_raw(request("GET", "/feed", &[])).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut events = Vec::new();
    let read = async {
        while events.len() < 2 {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                events.push((std::time::Instant::now(), data));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
    assert_eq!(&events[0].1[..], b"data: tick 0\n\n");
    assert_eq!(&events[1].1[..], b"data: tick 1\n\n");
    assert!(events[1].0 - events[0].0 >= Duration::from_millis(500));
}

#[tokio::test]
async fn behind_a_load_balancer_guide() {
    let app = TestUpstream::start("app").await;
    let subs = ephemeral(
        &["0.0.0.0:8080", "0.0.0.0:8081"],
        &[("127.0.0.1:3000", &app)],
    );
    let text = example("trusted-proxies.yaml");
    let config = substitute(&text, &subs);
    let gw = Portico::start_in(&temp_dir("trusted-proxies"), &config);
    let (web, direct) = (gw.addr("web"), gw.addr("direct"));

    // Through the balancer (this host): the right-most untrusted hop is the client.
    let office = [("x-forwarded-for", "198.51.100.4, 192.0.2.7")];
    let r = send(&web, "GET", "/admin/users", &office).await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /admin/users"));
    assert_eq!(
        app.last().headers["x-forwarded-for"],
        "198.51.100.4, 192.0.2.7, 127.0.0.1"
    );
    assert!(
        gw.wait_log("\"client\":\"192.0.2.7\"", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );
    let outside = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(
        send(&web, "GET", "/admin/users", &outside).await.status,
        403
    );

    // The direct listener trusts no one: the claim is ignored and not forwarded.
    assert_eq!(
        send(
            &direct,
            "GET",
            "/admin/users",
            &[("x-forwarded-for", "192.0.2.7")]
        )
        .await
        .status,
        403
    );
    let forged = [
        ("x-forwarded-for", "192.0.2.7"),
        ("x-real-ip", "192.0.2.7"),
        ("forwarded", "for=192.0.2.7"),
    ];
    let r = send(&direct, "GET", "/hello", &forged).await;
    assert_eq!((r.status, r.body.as_str()), (200, "app /hello"));
    let seen = app.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.get("x-real-ip").is_none());
    assert!(seen.headers.get("forwarded").is_none());

    // Limits count clients, not the balancer.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(send(&web, "GET", "/api/x", &outside).await.status);
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429]);
    let other = [("x-forwarded-for", "203.0.113.10")];
    assert_eq!(send(&web, "GET", "/api/x", &other).await.status, 200);

    // explain, as the guide shows it.
    let file = Path::new(ROOT).join("examples/trusted-proxies.yaml");
    let file = file.display().to_string();
    let url = "http://localhost:8080/admin/users";
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        url,
        "-H",
        "X-Forwarded-For: 192.0.2.7, 10.0.0.3",
        "--peer",
        "10.0.0.2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "client    192.0.2.7 (from X-Forwarded-For: the right-most hop not in \
             trusted_proxies; the peer 10.0.0.2 is a trusted proxy); 1 trusted hop(s) passed over"
        ),
        "{out}"
    );
    assert!(out.contains("→ passes"), "{out}");
    let (_, out, _) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        url,
        "-H",
        "X-Forwarded-For: 192.0.2.7",
        "--peer",
        "203.0.113.50",
    ]);
    assert!(
        out.contains("client    203.0.113.50 (the peer: it is not in trusted_proxies"),
        "{out}"
    );
    assert!(
        out.contains("→ answers 403 Forbidden — the client address may not use this route"),
        "{out}"
    );
}

#[tokio::test]
async fn static_sites_guide() {
    let dir = temp_dir("static-site");
    std::os::unix::fs::symlink(Path::new(ROOT).join("examples/site"), dir.join("site")).unwrap();
    let config = substitute(
        &example("static-site.yaml"),
        &ephemeral(&["127.0.0.1:8080"], &[]),
    );
    let gw = Portico::start_in(&dir, &config);
    let web = gw.addr("web");
    let index = std::fs::read_to_string(Path::new(ROOT).join("examples/site/index.html")).unwrap();

    // The app at `/` and at a deep link.
    for path in ["/", "/users/42"] {
        let r = send(&web, "GET", path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, index);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
    }
    // A missing asset is 404.
    let r = send(&web, "GET", "/logo.png", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
    // Revalidation.
    let etag = send(&web, "GET", "/", &[])
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let r = send(&web, "GET", "/", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    // The gzip sibling, with the asset route's caching.
    let r = send(
        &web,
        "HEAD",
        "/assets/app.js",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let gz = std::fs::metadata(Path::new(ROOT).join("examples/site/assets/app.js.gz")).unwrap();
    assert_eq!(
        r.header("content-length"),
        Some(gz.len().to_string().as_str())
    );
    // A range.
    let r = send(&web, "GET", "/assets/style.css", &[("range", "bytes=0-15")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, "body { font-fami");
    assert_eq!(r.header("content-range"), Some("bytes 0-15/80"));
    // Only GET and HEAD, and no way out.
    let r = send(&web, "POST", "/", &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = send(&web, "GET", "/../static-site.yaml", &[]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn http_cache_guide() {
    let app = TestUpstream::start("app").await;
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[("127.0.0.1:9001", &app)]);
    subs.push(admin_ephemeral());
    let config = substitute(&example("http-cache.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("http-cache"), &config);
    let web = gw.addr("web");
    let admin = gw.admin.clone().unwrap();
    let reached = |path: &str| app.seen().iter().filter(|s| s.uri.path() == path).count();

    let r = send(&web, "GET", "/catalog/items", &[]).await;
    assert_eq!(
        (r.header("x-cache"), r.body.as_str()),
        (Some("MISS"), "app /catalog/items")
    );
    let r = send(&web, "GET", "/catalog/items", &[]).await;
    assert_eq!(
        (r.header("x-cache"), r.body.as_str()),
        (Some("HIT"), "app /catalog/items")
    );
    assert!(r.header("age").is_some());
    assert_eq!(reached("/catalog/items"), 1);

    // Another language, another answer.
    let fr = [("accept-language", "fr")];
    assert_eq!(
        send(&web, "GET", "/catalog/items", &fr)
            .await
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        send(&web, "GET", "/catalog/items", &fr)
            .await
            .header("x-cache"),
        Some("HIT")
    );
    assert_eq!(reached("/catalog/items"), 2);

    // No cache on /account.
    for _ in 0..2 {
        let r = send(&web, "GET", "/account/me", &[]).await;
        assert_eq!((r.status, r.header("x-cache")), (200, None));
    }
    assert_eq!(reached("/account/me"), 2);

    // Purge one URL (both languages), then a prefix.
    let purge = |body: &str| {
        let req = Request::builder()
            .method("POST")
            .uri("/cache/purge")
            .header("host", "127.0.0.1:9901")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let admin = admin.clone();
        async move { H1::connect(&admin).await.send(req).await.unwrap() }
    };
    let r = purge(r#"{"key": "http://localhost/catalog/items"}"#).await;
    assert_eq!(r.json()["purged"], 2, "{}", r.body);
    assert!(r.json()["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        send(&web, "GET", "/catalog/items", &[])
            .await
            .header("x-cache"),
        Some("MISS")
    );
    let r = purge(r#"{"prefix": "http://localhost/catalog/"}"#).await;
    assert_eq!(r.json()["purged"], 1, "{}", r.body);

    let metrics = get(&admin, "/metrics").await.body;
    assert!(
        metrics.contains("portico_cache_requests_total{route=\"catalog\",result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_cache_stored_bytes 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn compression_guide() {
    use crate::compression::{curl, decode};
    let script = Path::new(ROOT).join("examples/compression_app.py");
    let app = crate::support::peer::Peer::python([script.as_os_str(), "0".as_ref()]);
    let subs = vec![
        (
            "bind: 127.0.0.1:8080".to_owned(),
            "bind: 127.0.0.1:0".to_owned(),
        ),
        (
            "address: 127.0.0.1:9001".to_owned(),
            format!("address: {}", app.addr),
        ),
    ];
    let config = substitute(&example("compression.yaml"), &subs);
    let gw = Portico::start_in(&temp_dir("compression-guide"), &config);
    let web = gw.addr("web");

    // Step 1: the same JSON, smaller, with the head edits.
    let plain = curl(&[], format!("http://{web}/api/items")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body.len(), 26726);
    let got = curl(
        &["-H", "Accept-Encoding: zstd, br, gzip"],
        format!("http://{web}/api/items"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("zstd"));
    assert_eq!(got.header("etag"), Some("W/\"items-v1\""));
    assert_eq!(got.header("vary"), Some("Accept-Encoding"));
    assert!(got.body.len() < 2500, "{}", got.body.len());
    assert_eq!(decode("zstd", &got.body), plain.body);

    // Step 2: q-values first.
    let got = curl(
        &["-H", "Accept-Encoding: gzip;q=1, br;q=0.5"],
        format!("http://{web}/api/items"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
    let got = curl(
        &["-H", "Accept-Encoding: *;q=0"],
        format!("http://{web}/api/items"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), None);

    // Step 3: the image goes as it is.
    let got = curl(
        &["-H", "Accept-Encoding: gzip, br"],
        format!("http://{web}/logo.png"),
    )
    .await;
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.header("content-length"), Some("8192"));

    // Step 4: the events, compressed, whole.
    let got = curl(&["-N", "--compressed"], format!("http://{web}/events")).await;
    let events: String = (0..5).map(|i| format!("data: tick {i}\n\n")).collect();
    assert_eq!(String::from_utf8(got.body).unwrap(), events);

    // Step 5: a compressed upload decoded; a bomb refused.
    let dir = temp_dir("compression-guide-bodies");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &[b'x'; 100_000]).unwrap();
    std::fs::write(dir.join("up.gz"), gz.finish().unwrap()).unwrap();
    let upload = format!("@{}", dir.join("up.gz").display());
    let got = curl(
        &["-H", "Content-Encoding: gzip", "--data-binary", &upload],
        format!("http://{web}/upload"),
    )
    .await;
    assert_eq!(
        String::from_utf8(got.body).unwrap(),
        "received 100000 bytes, content-encoding none\n"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![0u8; 50_000_000]).unwrap();
    std::fs::write(dir.join("bomb.gz"), gz.finish().unwrap()).unwrap();
    let bomb = format!("@{}", dir.join("bomb.gz").display());
    let got = curl(
        &["-H", "Content-Encoding: gzip", "--data-binary", &bomb],
        format!("http://{web}/upload"),
    )
    .await;
    assert_eq!(got.status, 413);
    let error: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(error["error"], "payload_too_large");
}

#[tokio::test]
async fn hardening_guide() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestUpstream::start("app").await;
    let config = substitute(
        &example("hardening.yaml"),
        &ephemeral(&["0.0.0.0:8080"], &[("127.0.0.1:3000", &app)]),
    );
    let gw = Portico::start_in(&temp_dir("hardening"), &config);
    let web = gw.addr("web");
    let reply = get(&web, "/hello").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "app /hello"));
    // A head that never ends is closed at the 5 s header_timeout, not before.
    let mut stream = tokio::net::TcpStream::connect(&web).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let after = start.elapsed();
    assert!(
        after >= Duration::from_millis(4500) && after < Duration::from_secs(10),
        "{after:?}"
    );
    // A 16 KiB head limit: a bigger head gets 431.
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = crate::support::raw(&web, big.as_bytes(), Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // requests_per_ip: 40 at once, then 20 a second; the rest get 429 with Retry-After.
    let mut client = crate::support::H1::connect(&web).await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..80 {
        let reply = client.get("example.com", "/burst").await;
        statuses.push(reply.status);
        if reply.status == 429 && refused.is_none() {
            refused = Some(reply);
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("no 429 in {statuses:?}"));
    assert_eq!(refused.json()["error"], "rate_limited");
    assert!(refused.header("retry-after").is_some());
    assert!(statuses[..35].iter().all(|&s| s == 200), "{statuses:?}");
    // connections_per_ip: of 65 connections from one address, one is closed unanswered.
    let mut streams = Vec::new();
    for _ in 0..65 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        streams.push(socket.connect(web.parse().unwrap()).await.unwrap());
    }
    let mut closed = 0;
    for stream in &mut streams {
        let _ = stream
            .write_all(b"GET /conn HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await;
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "connections closed of 65 from 127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_upgrade_guide() {
    let app = TestUpstream::start("app").await;
    let mut subs = ephemeral(&["0.0.0.0:8080"], &[("127.0.0.1:3000", &app)]);
    subs.push(admin_ephemeral());
    let config = substitute(&example("zero-downtime-upgrade.yaml"), &subs);
    let dir = temp_dir("zero-downtime-upgrade");
    let mut old = Portico::start_in(&dir, &config);
    let web = old.addr("web");
    let admin = old.admin.clone().unwrap();
    assert_eq!(get(&web, "/hello").await.body, "app /hello");
    assert!(dir.join("portico.sock").exists());

    // Step 3: the same config, a new process, the sockets taken over.
    let socket = dir.join("portico.sock").to_str().unwrap().to_owned();
    let new_dir = dir.clone();
    let new = tokio::task::spawn_blocking(move || {
        Portico::try_start_args(
            &new_dir,
            "portico.yaml",
            &config,
            &["--upgrade-from", &socket],
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|log| panic!("the new process did not start:\n{log}"));
    assert_eq!(
        (new.addr("web"), new.admin.clone().unwrap()),
        (web.clone(), admin.clone())
    );
    // Step 4: the old one drains and exits 0; the new one answers on the same addresses.
    let status = tokio::task::spawn_blocking(move || old.wait_exit(Duration::from_secs(35)))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(get(&web, "/hello").await.body, "app /hello");
    assert_eq!(get(&admin, "/health").await.status, 200);
    // Step 5: the new process listens on the upgrade socket in turn.
    assert!(
        new.log_text().contains("upgrade socket listening"),
        "{}",
        new.log_text()
    );
    assert!(new.log_text().contains("listeners="), "{}", new.log_text());
}

/// An admin API answer as the guide prints it: config hashes and request ids written as
/// placeholders, so that this run's values compare.
fn admin_answer_shape(text: &str) -> String {
    let request_id = regex::Regex::new(r#""request_id":"[0-9a-f]{32}""#).unwrap();
    let hash = regex::Regex::new(r"\b[0-9a-f]{16}\b").unwrap();
    let text = request_id.replace_all(text.trim(), r#""request_id":"...""#);
    hash.replace_all(&text, "HASH").into_owned()
}

/// Whether `got` is what the guide shows: equal, or, where the guide elides with `...`, the
/// shown pieces in order.
fn shows(expected: &str, got: &str) -> bool {
    let (expected, got) = (admin_answer_shape(expected), admin_answer_shape(got));
    if !expected.contains("...") {
        return expected == got;
    }
    let mut rest = got.as_str();
    for piece in expected.split("...").filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

// The commands run on a blocking thread while the test upstreams answer on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_guide_runs_as_written() {
    let app = TestUpstream::start("app").await;
    let users = TestUpstream::start("users").await;
    let token = env("PORTICO_ADMIN_TOKEN");
    let mut subs = ephemeral(&["0.0.0.0:8080"], &[("127.0.0.1:9001", &app)]);
    subs.push(admin_ephemeral());
    let config = substitute(&example("admin-api.yaml"), &subs);
    let dir = temp_dir("admin-guide");
    let gw = Portico::start_in_env(&dir, &config, &[("PORTICO_ADMIN_TOKEN", token)]);
    let (web, admin) = (gw.addr("web"), gw.admin.clone().unwrap());

    let guide = std::fs::read_to_string(Path::new(ROOT).join("docs/guides/admin-api.md")).unwrap();
    // The shell lines of the guide after portico is started, each with the answer it shows.
    let mut steps: Vec<(String, Option<String>)> = Vec::new();
    let (mut in_sh, mut in_text) = (false, false);
    for line in guide.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```text" => in_text = true,
            "```" => (in_sh, in_text) = (false, false),
            // A text block shows what the command before it prints.
            shown if in_text => {
                if let Some(last) = steps.last_mut() {
                    let block = last.1.get_or_insert_with(String::new);
                    block.push_str(shown);
                    block.push('\n');
                }
            }
            shown if in_sh => {
                if let Some(answer) = shown.strip_prefix("# ") {
                    if let Some(last) = steps.last_mut() {
                        last.1 = Some(answer.to_owned());
                    }
                } else if shown.starts_with("curl ")
                    || shown.starts_with("ETAG=")
                    || shown.starts_with("portico plan")
                    || shown.starts_with("kill -HUP")
                {
                    steps.push((shown.to_owned(), None));
                }
            }
            _ => {}
        }
    }
    assert!(steps.len() >= 12, "{steps:?}");
    let config_path = gw.config.display().to_string();
    let mut etag = String::new();
    for (command, shown) in &steps {
        if command.starts_with("kill -HUP") {
            // As `kill -HUP $(pidof portico)` would, for this portico only.
            assert!(gw.reload(&config), "{}", gw.log_text());
            continue;
        }
        if command.starts_with("portico plan") {
            // The file, with the admin address the running portico has, as the plan reads
            // it from there.
            let plan_config = dir.join("plan.yaml");
            std::fs::write(
                &plan_config,
                config.replace("listen: 127.0.0.1:0", &format!("listen: {admin}")),
            )
            .unwrap();
            let out = Command::new(BIN)
                .args(["plan", "-c"])
                .arg(&plan_config)
                .env("PORTICO_ADMIN_TOKEN", token)
                .output()
                .unwrap();
            let got = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(out.status.code(), Some(0), "{got}");
            let squeeze = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
            let lines: Vec<String> = got.lines().map(squeeze).collect();
            let shown = shown.as_deref().unwrap_or_default();
            let changes: Vec<&str> = shown
                .lines()
                .filter(|l| l.starts_with("  - ") || l.starts_with("  + ") || l.starts_with("  ~ "))
                .collect();
            assert!(changes.len() >= 2, "{shown}");
            for change in changes {
                assert!(
                    lines.contains(&squeeze(change)),
                    "the guide shows `{change}`; portico plan printed:\n{got}"
                );
            }
            continue;
        }
        let line = command
            .replace("localhost:9901", &admin)
            .replace("localhost:8080", &web)
            .replace("127.0.0.1:9002", &users.addr())
            .replace("@examples/admin-api.yaml", &format!("@{config_path}"));
        let script = if line.starts_with("ETAG=") {
            format!("{line}; printf %s \"$ETAG\"")
        } else {
            line
        };
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("PORTICO_ADMIN_TOKEN", token)
            .env("ETAG", &etag)
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command}: {got}");
        if command.starts_with("ETAG=") {
            etag = got.trim().to_owned();
            assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
            continue;
        }
        if let Some(shown) = shown {
            assert!(
                shows(shown, &got),
                "{command}\nthe guide shows: {shown}\nportico answered: {got}"
            );
        }
    }
    // The whole file, sent last, came through the admin API.
    let bearer = format!("Bearer {token}");
    let health = send(&admin, "GET", "/health", &[("authorization", &bearer)]).await;
    assert_eq!(health.json()["source"], "admin", "{}", health.body);
    assert_eq!(get(&admin, "/health").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_config_guide() {
    let etcd = crate::support::etcd::Etcd::start();
    let (one, two) = (
        TestUpstream::start("app-1").await,
        TestUpstream::start("app-2").await,
    );
    let dir = temp_dir("cluster-config");
    let endpoint = (
        "endpoints: [ http://127.0.0.1:2379 ]".to_owned(),
        format!("endpoints: [ {} ]", etcd.url()),
    );
    let mut subs = ephemeral(&["127.0.0.1:8080"], &[]);
    subs.push(admin_ephemeral());
    subs.push(endpoint);
    let node_1 = substitute(&example("cluster-node.yaml"), &subs);
    let node_2 = node_1.replace("node_id: node-1", "node_id: node-2");
    std::fs::write(dir.join("node-1.yaml"), &node_1).unwrap();
    let shared = substitute(
        &example("cluster-shared.yaml"),
        &ephemeral(&[], &[("127.0.0.1:9001", &one), ("127.0.0.1:9002", &two)]),
    );
    std::fs::write(dir.join("shared.yaml"), &shared).unwrap();
    let node_file = dir.join("node-1.yaml").display().to_string();
    let shared_file = dir.join("shared.yaml").display().to_string();

    // Step 3: the push is checked, then written.
    let (code, out, err) =
        crate::support::cli(&["config", "push", &shared_file, "--config", &node_file]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("written to etcd at /portico/config, revision"),
        "{out}"
    );
    std::fs::write(dir.join("bad.yaml"), "listeners: []\n").unwrap();
    let bad = dir.join("bad.yaml").display().to_string();
    let (code, _, err) = crate::support::cli(&["config", "push", &bad, "--config", &node_file]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.yaml:1:1:"), "{err}");

    // Step 4: both nodes serve the shared routes, from etcd.
    let nodes = [Portico::start(&node_1), Portico::start(&node_2)];
    let mut bodies = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let r = get(&node.addr("web"), "/").await;
            assert_eq!(r.status, 200);
            bodies.push(r.body.split(' ').next().unwrap().to_owned());
        }
        let health = get(node.admin.as_ref().unwrap(), "/health").await.json();
        assert_eq!(health["source"], "etcd");
        assert_eq!(health["cluster"]["etcd"]["connected"], true);
    }
    assert!(bodies.contains(&"app-1".to_owned()) && bodies.contains(&"app-2".to_owned()));

    // Step 5: a route through node 1 serves on node 2.
    let written = crate::admin_api::call(
        nodes[0].admin.as_ref().unwrap(),
        "PUT",
        "/routes/health",
        &[],
        r#"{ "match": { "path": "/healthz" }, "respond": { "status": 200, "body": "ok" } }"#,
    )
    .await;
    assert_eq!(written.status, 201, "{}", written.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = get(&nodes[1].addr("web"), "/healthz").await;
        if r.status == 200 {
            assert_eq!(r.body, "ok");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never served /healthz"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Step 6: the node list and the history.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let list = get(nodes[1].admin.as_ref().unwrap(), "/cluster/nodes")
            .await
            .json();
        let ids: Vec<&str> = list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["id"].as_str())
            .collect();
        if ids == ["node-1", "node-2"] && list["all_same_revision"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, out, _) = crate::support::cli(&["config", "history", "--config", &node_file]);
    assert_eq!(code, 0);
    assert!(
        out.contains("routes 2, upstreams 1") && out.contains("routes 1, upstreams 1"),
        "{out}"
    );
}
