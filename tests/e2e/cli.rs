//! `validate`, `run` on bad files, `explain`, `version`.

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
    // Parse errors of one item do not hide those of the next.
    assert!(
        lines[0].starts_with(&format!("{file}:2:37: unknown key `protocl`")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}:5:41: invalid duration `soon`")),
        "{stderr}"
    );
    assert_eq!(lines.len(), 2, "{stderr}");

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
}
