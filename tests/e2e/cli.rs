//! `validate`, `run` on bad files, `explain`, `test`, `schema`, `version`.

use crate::support::{Portico, cli, temp_dir};

fn write(name: &str, text: &str) -> String {
    let path = temp_dir("cli").join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const BAD: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0, protocl: http }
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: r, upstream: nope, timeout: soon }
  - { name: s, upstream: missing }
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1, weight: 0 } ]
";

#[test]
fn validate_reports_every_error_with_position() {
    let file = write("bad.yaml", BAD);
    let (code, _, stderr) = cli(&["validate", "--config", &file]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    // Parse errors of one item hide neither those of the next nor what compile finds in the
    // parts that did parse.
    let expected = [
        format!("{file}:2:37: unknown key `protocl`: did you mean `protocol`?"),
        format!("{file}:3:13: duplicate listener name `web` (first at line 2)"),
        format!("{file}:5:26: upstream `nope` is not defined"),
        format!("{file}:5:41: invalid duration `soon`"),
        format!("{file}:6:26: upstream `missing` is not defined"),
        format!("{file}:9:48: a target's weight must be at least 1"),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "{want} in\n{stderr}");
    }

    // Once it parses, semantic errors come all at once too.
    let file = write(
        "bad2.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: s, upstream: missing }
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1, weight: 0 } ]
",
    );
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    let expected = [
        format!("{file}:3:13: duplicate listener name `web`"),
        format!("{file}:5:26: upstream `missing` is not defined"),
        format!("{file}:8:48: a target's weight must be at least 1"),
    ];
    for want in &expected {
        assert!(
            stderr.lines().any(|l| l.starts_with(want.as_str())),
            "missing {want} in\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), expected.len(), "{stderr}");
}

#[test]
fn validate_accepts_the_quickstart_and_json() {
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml");
    let (code, stdout, stderr) = cli(&["validate", "-c", quickstart]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"));

    let json = write(
        "c.json",
        r#"{"listeners": [{"name": "web", "bind": "127.0.0.1:0"}],
            "routes": [{"name": "r", "respond": {"status": 204}}]}"#,
    );
    let (code, _, stderr) = cli(&["validate", "-c", &json]);
    assert_eq!(code, 0, "{stderr}");
    let bad_json = write(
        "bad.json",
        "{\"listeners\": [{\"name\": \"web\", \"bind\": 5, \"x\": 1}]}",
    );
    let (code, _, stderr) = cli(&["validate", "-c", &bad_json]);
    assert_eq!(code, 1);
    assert!(stderr.contains(":1:"), "{stderr}");
}

#[test]
fn env_substitution_and_missing_variables() {
    let file = write(
        "env.yaml",
        "listeners:\n  - { name: web, bind: \"${PORTICO_TEST_BIND}\" }\n",
    );
    let out = std::process::Command::new(crate::support::portico::BIN)
        .args(["validate", "-c", &file])
        .env("PORTICO_TEST_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(":2:24: environment variable `PORTICO_TEST_BIND` is not set"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_file() {
    let err = match Portico::try_start(BAD) {
        Ok(_) => panic!("portico started on an invalid config"),
        Err(log) => log,
    };
    assert!(err.contains("unknown key `protocl`"), "{err}");
}

#[test]
fn run_refuses_a_busy_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = format!(
        "listeners:\n  - {{ name: web, bind: {addr} }}\nroutes:\n  - {{ name: r, respond: {{ status: 200 }} }}\n"
    );
    let err = match Portico::try_start(&config) {
        Ok(gw) => panic!("portico started on a busy port {addr}:\n{}", gw.log_text()),
        Err(log) => log,
    };
    assert!(
        err.contains(&format!("cannot bind listener `web` to {addr}")),
        "{err}"
    );
}

#[test]
fn explain_names_listener_route_plugins_and_target() {
    let file = write(
        "explain.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
  - { name: other, bind: 127.0.0.1:8081 }
routes:
  - name: users
    match: { hosts: [api.example.com], path_prefix: /users/, methods: [GET] }
    plugins: [ { request_headers: { set: { x-a: b } } } ]
    rewrite: { strip_prefix: /users }
    upstream: users
  - { name: fallback, respond: { status: 404, body: nope } }
upstreams:
  users:
    targets: [ { address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002, weight: 3 } ]
",
    );
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://api.example.com:8080/users/../users/42",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("listener  web (127.0.0.1:8080) — its port 8080 is the URL's"),
        "{out}"
    );
    assert!(
        out.contains("(normalised from /users/../users/42)"),
        "{out}"
    );
    assert!(out.contains("route     users"), "{out}");
    assert!(out.contains("plugins   request_headers"), "{out}");
    assert!(out.contains("rewrite   /users/42 → /42"), "{out}");
    assert!(
        out.contains("target    127.0.0.1:9002 (next pick of round_robin)"),
        "{out}"
    );
    assert!(
        out.contains("fallback") && out.contains("a more specific route wins"),
        "{out}"
    );

    let (code, out, _) = cli(&[
        "explain",
        "-c",
        &file,
        "POST",
        "http://api.example.com:8080/users/42",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("no: method does not match"), "{out}");
    assert!(out.contains("route     fallback"), "{out}");
}

#[test]
fn version_prints() {
    let (code, out, _) = cli(&["version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("portico "), "{out}");
    for wanted in [
        "tls: rustls, ring",
        "ACME",
        "h2c",
        "plugins: ",
        "jwt",
        "request_validator",
        "grpc-web",
        "grpc_transcode",
        "quota",
    ] {
        assert!(out.contains(wanted), "{wanted} missing: {out}");
    }
}

#[test]
fn validate_reports_shape_and_semantic_errors_of_one_route_together() {
    // An unknown key in a route does not hide that the same route names a missing upstream.
    let file = write(
        "both.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: r, upstream: missing_pool, timeot: 5s }
upstreams:
  pool:
    targets: [ { address: 127.0.0.1:1 } ]
",
    );
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:4:26: upstream `missing_pool` is not defined"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:4:40: unknown key `timeot`")),
        "{stderr}"
    );
}

#[test]
fn validate_suggests_close_keys_and_names() {
    let file = write(
        "typos.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0, protocl: http }
routes:
  - { name: r, listeners: [wbe], upstream: users }
  - { name: s, upstream: user }
upstreams:
  users:
    balance: round_robbin
    targets: [ { address: 127.0.0.1:1 } ]
",
    );
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        format!("{file}:2:37: unknown key `protocl`: did you mean `protocol`?"),
        format!(
            "{file}:4:28: route `r` names listener `wbe`, which does not exist: did you mean `web`?"
        ),
        format!("{file}:5:26: upstream `user` is not defined: did you mean `users`?"),
        format!("{file}:8:14: unknown value `round_robbin`: did you mean `round_robin`?"),
    ];
    for want in &expected {
        assert!(
            stderr.lines().any(|l| l == want.as_str()),
            "missing {want} in\n{stderr}"
        );
    }
}

#[test]
fn one_bad_target_is_reported_once() {
    let file = write(
        "target.yaml",
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: a, match: { path_prefix: /a/ }, upstream: u }
  - { name: b, match: { path_prefix: /b/ }, upstream: u }
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1 }, { address: 'not an address' } ]
",
    );
    let (code, _, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:8:53: invalid target address `not an address`"
        )),
        "{stderr}"
    );
}

const SHADOWED: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - { name: first, match: { hosts: [a.example.com], path_prefix: /api/, methods: [GET] }, respond: { status: 200 } }
  - { name: second, match: { methods: [get], path_prefix: /api, hosts: [A.example.com] }, respond: { status: 201 } }
  - { name: other, match: { path_prefix: /api/ }, respond: { status: 202 } }
";

#[test]
fn validate_warns_about_shadowed_routes_and_strict_fails_on_warnings() {
    let file = write("shadow.yaml", SHADOWED);
    let (code, stdout, stderr) = cli(&["validate", "-c", &file]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{file}:5:13: warning: route `second` can never match: route `first` (line 4)"
        )),
        "{stderr}"
    );
    let (code, _, strict) = cli(&["validate", "--strict", "-c", &file]);
    assert_eq!(code, 1, "{strict}");
    assert!(strict.contains("warning: route `second`"), "{strict}");
}

#[test]
fn run_logs_warnings() {
    let gw = Portico::start(SHADOWED);
    assert!(
        gw.wait_log(
            "warning: route `second` can never match",
            std::time::Duration::from_secs(5)
        ),
        "{}",
        gw.log_text()
    );
}

const EDGE: &str = "\
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
  - { name: plain, bind: 127.0.0.1:80, redirect_https: { port: 8443, status: 301 } }
  - name: pass
    bind: 127.0.0.1:443
    protocol: tls_passthrough
    sni: { db.example.com: db, \"*.apps.example.com\": apps }
    upstream: fallback
routes:
  - { name: all, respond: { status: 200 } }
upstreams:
  db: { targets: [ { address: 127.0.0.1:5432 } ] }
  apps: { targets: [ { address: 127.0.0.1:9000 } ] }
  fallback: { targets: [ { address: 127.0.0.1:9999 } ] }
";

#[test]
fn explain_says_what_redirect_and_passthrough_listeners_do() {
    let file = write("edge.yaml", EDGE);
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://shop.example.com/cart?x=1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listener  plain (127.0.0.1:80)"), "{out}");
    assert!(
        out.contains("redirect 301 Moved Permanently to https://shop.example.com:8443/cart?x=1"),
        "{out}"
    );
    assert!(!out.contains("404"), "{out}");

    // https without a port is port 443: the passthrough listener, routed by SNI.
    let (code, out, err) = cli(&["explain", "-c", &file, "GET", "https://db.example.com/"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listener  pass (127.0.0.1:443)"), "{out}");
    assert!(
        out.contains("sni       db.example.com matches entry db.example.com"),
        "{out}"
    );
    assert!(out.contains("upstream db"), "{out}");
    assert!(out.contains("target    127.0.0.1:5432"), "{out}");
    assert!(!out.contains("404"), "{out}");

    let (code, out, err) = cli(&["explain", "-c", &file, "GET", "https://x.apps.example.com/"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("matches entry *.apps.example.com"), "{out}");
    assert!(out.contains("upstream apps"), "{out}");
    let (code, out, err) = cli(&["explain", "-c", &file, "GET", "https://other.example.org/"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("upstream fallback"), "{out}");
}

#[tokio::test]
async fn reload_reports_settings_that_need_a_restart() {
    let config = |workers: usize, extra: &str, limits: &str| {
        format!(
            "workers: {workers}\n{extra}admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: web, bind: 127.0.0.1:0{limits} }}\nroutes:\n  - {{ name: r, respond: {{ status: 200 }} }}\n"
        )
    };
    let gw = Portico::start(&config(2, "", ""));
    let admin = gw.admin.clone().unwrap();
    let health = crate::support::get(&admin, "/health").await.json();
    assert_eq!(
        health["restart_required"],
        serde_json::json!([]),
        "{health}"
    );

    assert!(gw.reload(&config(4, "", "")));
    assert!(
        gw.log_text()
            .contains("applied, except what needs a restart: workers: 2 -> 4"),
        "{}",
        gw.log_text()
    );
    let health = crate::support::get(&admin, "/health").await.json();
    assert_eq!(
        health["restart_required"],
        serde_json::json!(["workers: 2 -> 4"]),
        "{health}"
    );

    let more = config(
        4,
        "access_log: { enabled: false }\n",
        ", limits: { max_connections: 50 }",
    );
    assert!(gw.reload(&more));
    let health = crate::support::get(&admin, "/health").await.json();
    assert_eq!(
        health["restart_required"],
        serde_json::json!([
            "workers: 2 -> 4",
            "access_log: - -> off",
            "listener `web` max_connections: 10000 -> 50"
        ]),
        "{health}"
    );

    // Back to what runs: nothing is pending any more.
    assert!(gw.reload(&config(2, "", "")));
    let health = crate::support::get(&admin, "/health").await.json();
    assert_eq!(
        health["restart_required"],
        serde_json::json!([]),
        "{health}"
    );
}

/// The CPUs a thread may run on, from /proc (`Cpus_allowed_list`, like `0-1` or `1`).
fn allowed_cpus(pid: u32, tid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `pin_workers: true`: worker `i` runs on the `i`-th CPU the process may use, the main
/// thread keeps them all; a reload that turns it off is reported as needing a restart.
#[tokio::test]
async fn pinned_workers_run_on_one_cpu_each() {
    let config = |pin: bool| {
        format!(
            "workers: 2\npin_workers: {pin}\nadmin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: web, bind: 127.0.0.1:0 }}\nroutes:\n  - {{ name: r, respond: {{ status: 200 }} }}\n"
        )
    };
    let gw = Portico::start(&config(true));
    let pid = gw.pid();
    let all = allowed_cpus(pid, &pid.to_string());
    let cpus: Vec<usize> = all
        .split(',')
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().unwrap()..=b.parse().unwrap()).collect::<Vec<_>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect();
    let want: Vec<String> = (0..2).map(|i| cpus[i % cpus.len()].to_string()).collect();
    // A worker thread names and pins itself when it first runs, which on a busy machine may
    // be a moment after portico says it is ready: looked at until both are, for at most 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut workers = Vec::new();
        let mut names = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid = task.unwrap().file_name().into_string().unwrap();
            let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else {
                continue;
            };
            names.push(format!("{tid} {} {}", name.trim(), allowed_cpus(pid, &tid)));
            // Thread names are cut to 15 bytes: `portico-worker-` without its number.
            // Workers start in order, so their thread ids are in order too. (A blocking
            // thread a worker starts has the worker's CPU until its start hook widens it, so
            // only the workers and the main thread are checked.)
            if name.trim().starts_with("portico-worker") {
                workers.push((tid.parse::<u32>().unwrap(), allowed_cpus(pid, &tid)));
            } else if tid == pid.to_string() {
                assert_eq!(allowed_cpus(pid, &tid), all, "the main thread");
            }
        }
        workers.sort();
        let pinned: Vec<String> = workers.into_iter().map(|(_, cpus)| cpus).collect();
        if pinned == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers on {pinned:?}, not {want:?}; threads: {names:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(crate::support::get(&gw.addr("web"), "/").await.status, 200);

    assert!(gw.reload(&config(false)));
    let health = crate::support::get(&gw.admin.clone().unwrap(), "/health")
        .await
        .json();
    assert_eq!(
        health["restart_required"],
        serde_json::json!(["pin_workers: true -> false"]),
        "{health}"
    );
}

#[test]
fn explain_lists_the_consumers_that_carry_plugins() {
    let file = write(
        "consumers.yaml",
        "\
listeners: [ { name: web, bind: 127.0.0.1:8080 } ]
consumers:
  - { name: alice, api_keys: ['alice-key-123'], plugins: [ { rate_limit: { limit: 5, window: 10s } } ] }
  - { name: bob, api_keys: ['bob-key-4567'] }
routes:
  - { name: r, plugins: [ { key_auth: {} } ], respond: { status: 200 } }
",
    );
    let (code, out, err) = cli(&["explain", "-c", &file, "GET", "http://localhost:8080/"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("consumers with plugins of their own here: alice"),
        "{out}"
    );
    assert!(!out.contains("bob"), "{out}");
    assert!(!out.contains("alice-key-123"), "a key was printed: {out}");
    // With her key, the plugins in force for her.
    let (code, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://localhost:8080/",
        "-H",
        "x-api-key: alice-key-123",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("consumer  alice: in force after authentication: rate_limit [consumer alice]"),
        "{out}"
    );
    assert!(!out.contains("alice-key-123"), "a key was printed: {out}");
}

/// Standard base64, padded (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn explain_names_the_consumer_of_a_key_a_password_and_a_token_and_prints_none() {
    const KEY: &str = "alice-key-123456";
    const PASSWORD: &str = "bob-password-9";
    const SECRET: &str = "carol-hmac-secret-0123";
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let file = write(
        "secrets.yaml",
        &format!(
            "\
listeners: [ {{ name: web, bind: 127.0.0.1:8080 }} ]
consumers:
  - {{ name: alice, api_keys: ['{KEY}'] }}
  - {{ name: bob, basic_auth: {{ username: bob, password_hash: '{hash}' }} }}
  - {{ name: carol }}
routes:
  - name: keyed
    match: {{ path_prefix: /keyed/, headers: {{ x-api-key: '{KEY}' }} }}
    plugins: [ {{ key_auth: {{}} }} ]
    respond: {{ status: 200 }}
  - name: basic
    match: {{ path_prefix: /basic/ }}
    plugins: [ {{ basic_auth: {{}} }} ]
    respond: {{ status: 200 }}
  - name: token
    match: {{ path_prefix: /token/ }}
    plugins: [ {{ jwt: {{ keys: [ {{ alg: HS256, secret: '{SECRET}' }} ] }} }} ]
    respond: {{ status: 200 }}
"
        ),
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "carol", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let basic = base64(format!("bob:{PASSWORD}").as_bytes());
    let cases = [
        ("/keyed/a", format!("x-api-key: {KEY}"), "alice"),
        ("/basic/a", format!("Authorization: Basic {basic}"), "bob"),
        (
            "/token/a",
            format!("Authorization: Bearer {token}"),
            "carol",
        ),
    ];
    for (path, header, consumer) in &cases {
        let url = format!("http://localhost:8080{path}");
        let (code, out, err) = cli(&["explain", "-c", &file, "GET", &url, "-H", header]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("→ passes: authenticated as consumer {consumer}")),
            "{out}"
        );
        assert!(out.contains("action    respond 200"), "{out}");
        for secret in [KEY, PASSWORD, SECRET, &token, &signature, &basic, &hash] {
            assert!(!out.contains(secret), "{secret} in stdout: {out}");
            assert!(!err.contains(secret), "{secret} in stderr: {err}");
        }
    }
    // The route matcher on the key header: shown redacted, decided without the value.
    let (_, out, _) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://localhost:8080/keyed/a",
        "-H",
        "x-api-key: wrong-key-0000",
    ]);
    assert!(out.contains("header x-api-key=<redacted>"), "{out}");
    assert!(out.contains("no: headers does not match"), "{out}");
    assert!(
        !out.contains(KEY) && !out.contains("wrong-key-0000"),
        "{out}"
    );
    // A wrong password: why it gets 401, without the password.
    let wrong = base64(b"bob:guess-guess");
    let (_, out, err) = cli(&[
        "explain",
        "-c",
        &file,
        "GET",
        "http://localhost:8080/basic/a",
        "-H",
        &format!("Authorization: Basic {wrong}"),
        "--peer",
        "192.0.2.1",
    ]);
    assert!(
        out.contains("answers 401 Unauthorized — unknown user or wrong password"),
        "{out}{err}"
    );
    assert!(
        !out.contains("guess-guess") && !out.contains(&wrong),
        "{out}"
    );
}

#[test]
fn schema_prints_the_config_schema() {
    let (code, out, _) = cli(&["schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["$id"], "https://portico.dev/schema/config.json");
    // The quickstart validates against what the binary prints.
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart.yaml"
    ))
    .unwrap();
    let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&config)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let typo: serde_json::Value = serde_json::json!({ "listners": [] });
    assert!(!validator.is_valid(&typo));
}

#[test]
fn route_tests_pass_on_the_quickstart_and_fail_readably() {
    let root = env!("CARGO_MANIFEST_DIR");
    let quickstart = format!("{root}/examples/quickstart.yaml");
    let cases = format!("{root}/examples/quickstart.cases.yaml");
    let (code, stdout, stderr) = cli(&["test", "--config", &quickstart, &cases]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("4 cases: 4 passed, 0 failed\n"),
        "{stdout}"
    );

    let wrong = write(
        "wrong.cases.yaml",
        "- request: { url: \"http://localhost:8080/x\" }\n  expect: { route: b1, targets: [127.0.0.1:9001] }\n\
         - request: { url: \"http://localhost:8080/y\" }\n  expect: { route: app }\n",
    );
    let (code, stdout, _) = cli(&["test", "-c", &quickstart, &wrong]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("FAIL  GET http://localhost:8080/x (case 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route: expected `b1`, got `app`"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "targets: expected [127.0.0.1:9001], got [127.0.0.1:9001, 127.0.0.1:9002, 127.0.0.1:9003]"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    GET http://localhost:8080/y"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("2 cases: 1 passed, 1 failed\n"),
        "{stdout}"
    );

    let typo = write(
        "typo.cases.yaml",
        "- request: { url: \"http://localhost:8080/\" }\n  expect: { stauts: 200 }\n",
    );
    let (code, _, stderr) = cli(&["test", "-c", &quickstart, &typo]);
    assert_eq!(code, 2);
    assert!(stderr.starts_with(&format!("{typo}:2:")), "{stderr}");
    assert!(stderr.contains("stauts"), "{stderr}");

    let bad = write("bad-for-test.yaml", BAD);
    let (code, _, stderr) = cli(&["test", "-c", &bad, &cases]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("upstream `nope` is not defined"),
        "{stderr}"
    );
}
