//! The schema against the loader: both accept and refuse the same files.

use std::path::{Path, PathBuf};

use super::*;
use crate::config::node::{self, Node, Value};

/// A config tree as JSON, read by the loader's own YAML reader (so both see the same types).
fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::UInt(n) => (*n).into(),
        Value::Int(n) => (*n).into(),
        Value::Float(n) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Str(s) => s.clone().into(),
        Value::Seq(items) => items.iter().map(to_json).collect(),
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.name.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// The schema's complaints about `text`, one line each.
fn schema_errors(validator: &jsonschema::Validator, text: &str) -> Vec<String> {
    let doc = to_json(&node::parse(text).expect("the test config is YAML"));
    validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// What `portico validate` says about `text`, written as `name` in `dir`.
fn validate(dir: &Path, name: &str, text: &str) -> Result<(), Vec<String>> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    crate::runtime::compile::with_test_env(|env| crate::runtime::compile::load(&path, env))
        .map(drop)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// A fresh folder with a self-signed certificate `cert.pem` / `key.pem` (also usable as a CA).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portico-schema-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir
}

#[test]
fn the_schema_compiles_and_is_deterministic() {
    let first = text();
    assert_eq!(first, text(), "two runs gave different schemas");
    let value: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        value["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(value["$id"], ID);
    jsonschema::draft202012::meta::validate(&value).expect("a valid draft 2020-12 schema");
    validator();
}

#[test]
fn defaults_are_the_loaders() {
    let value = schema();
    let defs = &value["$defs"];
    let default = |def: &str, key: &str| defs[def]["properties"][key]["default"].clone();
    assert_eq!(default("RateLimitSpec", "by"), "ip");
    assert_eq!(default("RateLimitSpec", "max_keys"), 100_000);
    assert_eq!(default("KeyAuthSpec", "header"), "x-api-key");
    assert_eq!(
        default("RetrySpec", "on"),
        serde_json::json!(["connect_failure"])
    );
    assert_eq!(default("RetrySpec", "backoff"), "25ms");
    assert_eq!(default("LimitsSpec", "max_header_size"), "64KiB");
    assert_eq!(default("JwtSpec", "consumer_claim"), "sub");
    assert_eq!(value["properties"]["workers"]["default"], "auto");
    assert_eq!(
        value["properties"]["upstreams"]["default"],
        serde_json::json!({})
    );
    // Every default the schema states is itself valid where it stands: the whole file made of
    // them is checked below, and each duration and size default parses.
    let spec = crate::config::Spec::default();
    let written = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        value["properties"]["drain_timeout"]["default"],
        written["drain_timeout"]
    );
}

/// The YAML files under `dir` and its folders.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            // Route cases for `portico test` are not configs.
            && !path.to_string_lossy().ends_with(".cases.yaml")
        {
            out.push(path);
        }
    }
}

/// Every key's schema, with the path it is found at.
fn keys<'a>(
    schema: &'a serde_json::Value,
    at: &str,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
        for (key, property) in properties {
            out.push((format!("{at}.{key}"), property));
        }
    }
}

#[test]
fn every_key_has_a_description_and_a_valid_default() {
    let root = schema();
    let defs = root["$defs"].as_object().unwrap();
    let mut all = Vec::new();
    keys(&root, "", &mut all);
    for (name, def) in defs {
        keys(def, name, &mut all);
    }
    for (at, property) in all {
        let described = property.get("description").and_then(|d| d.as_str());
        assert!(
            described.is_some_and(|d| !d.trim().is_empty()),
            "{at} has no doc comment: write one, it is the key's description in \
             docs/reference.md and in editors"
        );
        let Some(default) = property.get("default") else {
            continue;
        };
        let mut own = property.clone();
        own["$defs"] = root["$defs"].clone();
        let check = jsonschema::draft202012::new(&own).unwrap();
        let errors: Vec<String> = check.iter_errors(default).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{at}: the default {default} is refused: {errors:?}"
        );
    }
}

#[test]
fn every_example_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let validator = validator();
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let seen = files.len();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let errors = schema_errors(&validator, &text);
        assert!(
            errors.is_empty(),
            "{} does not match `portico schema`: {errors:#?}",
            path.display()
        );
    }
    assert!(seen > 0, "no example in {}", dir.display());
}

/// Files both the schema and `validate` refuse, with what each must say.
const BAD: &[(&str, &str, &str)] = &[
    (
        "unknown key",
        "listeners: [ { name: web, bind: 127.0.0.1:0, protocl: http } ]\n",
        "unknown key `protocl`",
    ),
    (
        "unknown top-level key",
        "listners: []\n",
        "unknown key `listners`",
    ),
    (
        "unknown plugin",
        "plugins: [ { rate_limt: { limit: 1, window: 1s } } ]\n",
        "unknown key `rate_limt`",
    ),
    (
        "wrong type",
        "listeners: [ { name: web, bind: 127.0.0.1:0, limits: { max_connections: lots } } ]\n",
        "expected",
    ),
    (
        "missing required key",
        "plugins: [ { rate_limit: { window: 1s } } ]\n",
        "missing key `limit`",
    ),
    (
        "bad duration",
        "drain_timeout: 5 parsecs\n",
        "invalid duration",
    ),
    (
        "bad size",
        "plugins: [ { request_size_limit: { max: 1TiB } } ]\n",
        "invalid size",
    ),
    ("zero workers", "workers: 0\n", "at least 1"),
    (
        "unknown enum value",
        "upstreams: { u: { balance: round_robbin, targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "unknown value `round_robbin`",
    ),
    (
        "route without an action",
        "routes: [ { name: r } ]\n",
        "exactly one action",
    ),
    (
        "route with two actions",
        "routes: [ { name: r, respond: {}, redirect: { to: /x } } ]\n",
        "exactly one action",
    ),
    (
        "short API key",
        "consumers: [ { name: a, api_keys: [short] } ]\n",
        "at least 8 characters",
    ),
    (
        "zero rate limit",
        "plugins: [ { rate_limit: { limit: 0, window: 1s } } ]\n",
        "at least 1",
    ),
    (
        "unknown rate limit key",
        "plugins: [ { rate_limit: { limit: 1, window: 1s, by: cookie } } ]\n",
        "by `cookie`: expected ip",
    ),
    (
        "retry without attempts",
        "routes: [ { name: r, upstream: u, retry: { on: [reset] } } ]\nupstreams: { u: { targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "missing key `attempts`",
    ),
    (
        "zero attempts",
        "routes: [ { name: r, upstream: u, retry: { attempts: 0 } } ]\nupstreams: { u: { targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "at least 1",
    ),
    (
        "retry on a status out of range",
        "routes: [ { name: r, upstream: u, retry: { attempts: 2, on: [700] } } ]\nupstreams: { u: { targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "between 100 and 599",
    ),
    (
        "redirect status",
        "routes: [ { name: r, redirect: { to: /x, status: 200 } } ]\n",
        "redirect.status",
    ),
    (
        "mirror share",
        "routes: [ { name: r, upstream: u, mirror: { upstream: u, percent: 150 } } ]\nupstreams: { u: { targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "between 0 and 100",
    ),
    (
        "zero weight",
        "upstreams: { u: { targets: [ { address: 127.0.0.1:1, weight: 0 } ] } }\n",
        "at least 1",
    ),
    (
        "rewrite with two ways",
        "routes: [ { name: r, upstream: u, match: { path_prefix: /a }, rewrite: { strip_prefix: /a, replace_prefix: /b } } ]\nupstreams: { u: { targets: [ { address: 127.0.0.1:1 } ] } }\n",
        "exactly one of",
    ),
    (
        "request_validator without a schema",
        "plugins: [ { request_validator: {} } ]\n",
        "needs `body_schema` or `openapi_file`",
    ),
    (
        "jwt algorithm",
        "plugins: [ { jwt: { keys: [ { alg: none, secret: 0123456789abcdef } ] } } ]\n",
        "none",
    ),
    (
        "two path conditions",
        "routes: [ { name: r, respond: {}, match: { path: /a, path_prefix: /b } } ]\n",
        "only one of path",
    ),
    (
        "jwt without keys",
        "plugins: [ { jwt: { issuers: [x] } } ]\n",
        "jwt needs `keys`",
    ),
    (
        "jwt with an empty key set",
        "plugins: [ { jwt: { keys: [], jwks: { keys: [] } } } ]\n",
        "jwt needs `keys`",
    ),
    (
        "number from the environment",
        "plugins: [ { rate_limit: { limit: \"${LIMIT}\", window: 1s } } ]\n",
        "found a string",
    ),
];

#[test]
fn the_schema_and_validate_refuse_the_same_files() {
    let dir = scratch("bad");
    let validator = validator();
    for (i, (what, text, says)) in BAD.iter().enumerate() {
        let schema = schema_errors(&validator, text);
        assert!(!schema.is_empty(), "{what}: the schema accepts\n{text}");
        // `${LIMIT}` becomes the string `5`, as substitution makes it, so only its type is
        // at fault.
        let errors = validate(
            &dir,
            &format!("bad{i}.yaml"),
            &text.replace("${LIMIT}", "5"),
        )
        .expect_err(what);
        assert!(
            errors.iter().any(|e| e.contains(says)),
            "{what}: validate says {errors:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Files both accept: every plugin, and every listener, route and upstream option.
const GOOD: &[(&str, &str)] = &[
    (
        "listeners",
        r#"
workers: 2
drain_timeout: 10s
admin: { listen: 127.0.0.1:0, token: "${ADMIN_TOKEN}" }
access_log: { enabled: false, path: "-" }
listeners:
  - name: web
    bind: 127.0.0.1:0
    protocol: http
    limits: { max_header_size: 32KiB, max_uri_length: 4096, header_timeout: 5s, idle_timeout: 1m,
              max_connections: 100, max_concurrent_streams: 64 }
    redirect_https: { port: 8443, status: 301 }
  - name: secure
    bind: 127.0.0.1:0
    protocol: https
    tls:
      certificates: [ { cert_file: cert.pem, key_file: key.pem } ]
      client_auth: { ca_file: cert.pem, required: false }
    hsts: { max_age: 365d, include_subdomains: true, preload: false }
  - name: acme
    bind: 127.0.0.1:0
    protocol: https
    tls:
      acme:
        directory: https://127.0.0.1:14000/dir
        email: ops@example.com
        domains: [example.com]
        challenge: tls_alpn_01
        storage: acme-store
        directory_ca_file: cert.pem
        renew_before: 30d
        check_every: 12h
  - name: pass
    bind: 127.0.0.1:0
    protocol: tls_passthrough
    sni: { db.example.com: app, "*.apps.example.com": app }
    upstream: app
routes:
  - { name: r, listeners: [secure], upstream: app }
upstreams:
  app: { targets: [ { address: 127.0.0.1:1 } ] }
"#,
    ),
    (
        "routes",
        r#"
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
routes:
  - name: users
    listeners: [web]
    match:
      hosts: [api.example.com, "*.example.com"]
      path_prefix: /users/
      methods: [GET, POST]
      headers: { x-canary: "1" }
      query: { version: "2" }
      cookies: { canary: "yes" }
    upstream: app
    rewrite: { strip_prefix: /users }
    path_policy: { encoded_slash: keep, backslash: reject, matrix_params: strip }
    timeout: 30s
    retry: { attempts: 3, on: [connect_failure, reset, timeout, 502, "503"], per_try_timeout: 2s,
             backoff: 25ms, max_backoff: 250ms, budget_percent: 20, budget_min: 3,
             non_idempotent: false }
    mirror: { upstream: shadow, percent: 10 }
  - { name: exact, match: { path: /a }, split: [ { upstream: app, weight: 9 }, { upstream: shadow, weight: 1 } ] }
  - { name: tpl, match: { path_template: "/t/{id}" }, respond: { status: 201, body: "{}", headers: { x-a: b } } }
  - { name: re, match: { path_regex: "/re/[0-9]+" }, redirect: { to: "https://{host}{uri}", status: 308 } }
  - { name: rw, match: { path_prefix: /old/ }, upstream: app, rewrite: { regex: "^/old/(.*)$", replace: "/new/$1" } }
  - { name: rp, match: { path_prefix: /v1/ }, upstream: app, rewrite: { replace_prefix: /v2/ } }
upstreams:
  app:
    balance: ring_hash
    hash_key: header:x-user
    protocol: http1
    targets: [ { address: 127.0.0.1:1, weight: 2 }, { address: localhost:2 } ]
    connect_timeout: 1s
    resolve_every: 30s
    pool: { max_idle: 16, idle_timeout: 30s }
    slow_start: 30s
    sticky: { cookie: srv, ttl: 1h }
    health_check:
      active: { type: http, path: /healthz, method: GET, expect_status: 200-399, body_contains: ok,
                interval: 5s, timeout: 1s, healthy: 2, unhealthy: 3, jitter: 500ms }
      passive: { consecutive_failures: 5, error_rate: 50, min_requests: 20, window: 10s,
                 eject_for: 30s, max_eject: 5m, max_ejected_percent: 50 }
      panic: true
    circuit_breaker: { max_requests: 100, max_connections: 50, max_pending: 10 }
  shadow:
    balance: maglev
    protocol: http2
    targets: [ { address: 127.0.0.1:3 } ]
    health_check: { active: { type: grpc, service: my.Service } }
    tls: { sni: localhost, ca_file: cert.pem, cert_file: cert.pem, key_file: key.pem, verify: true }
"#,
    ),
    (
        "plugins",
        r#"
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
plugins:
  - ip_restriction: { allow: [10.0.0.0/8, 127.0.0.1/32], deny: [10.9.0.0/16], trusted_proxies: [10.0.0.1/32] }
  - request_size_limit: { max: 1MiB }
  - rate_limit: { limit: 100, window: 1m, burst: 20, by: header:x-user, max_keys: 1000 }
  - cors: { origins: ["https://app.example.com", "https://*.example.com"], methods: [GET],
            headers: [x-a], expose_headers: [x-b], credentials: true, max_age: 10m }
consumers:
  - name: alice
    api_keys: ["${ALICE_KEY}", alice-key-0001]
    groups: [paid]
    basic_auth: { username: alice, password_hash: "$2b$04$abcdefghijklmnopqrstuu7bR0q0N8e0Yk7n2bQ0b5Xq8pE8Vf1W2" }
    cert_subject: "CN=alice"
    plugins:
      - rate_limit: { limit: 5, window: 10s }
      - quota: { limit: 10000, period: 1d }
      - request_headers: { set: { x-tier: gold } }
routes:
  - name: keys
    match: { path_prefix: /k/ }
    plugins:
      - key_auth: { header: x-api-key, query: api_key, hide_credentials: true }
      - acl: { allow: [paid], deny: [banned] }
      - rate_limit: { limit: 10, window: 1s, by: consumer }
      - quota: { limit: 1000, period: 1h, by: consumer, max_keys: 100 }
      - grpc_web: {}
      - request_headers: { set: { x-a: "1" }, add: { x-b: "2" }, remove: [x-c] }
      - response_headers: { set: { x-d: "1" } }
    upstream: app
  - name: basic
    match: { path_prefix: /b/ }
    plugins: [ { basic_auth: { realm: portico, hide_credentials: false } } ]
    upstream: app
  - name: jwt
    match: { path_prefix: /j/ }
    plugins:
      - jwt:
          keys: [ { kid: k1, alg: HS256, secret: "0123456789abcdef0123" } ]
          jwks: { keys: [] }
          jwks_refresh: 10m
          issuers: [https://issuer.example.com]
          audiences: [api]
          leeway: 30s
          consumer_claim: sub
          claims_to_headers: { email: x-user-email }
          required_claims: [sub]
    upstream: app
  - name: mtls
    match: { path_prefix: /m/ }
    plugins: [ { mtls_auth: { allow_unknown: true } } ]
    upstream: app
  - name: mock
    match: { path_prefix: /mock/ }
    plugins: [ { respond: { status: 200, body: '{"ok":true}', headers: { x-mock: "1" } } } ]
    upstream: app
  - name: transform
    match: { path_prefix: /t/ }
    plugins:
      - request_transformer:
          headers: { remove: [x-a], rename: { x-b: x-c }, set: { x-d: "1" }, add: { x-e: "2" } }
          query: { remove: [debug] }
          json: { remove: [secret], rename: { a: b }, set: { user.tier: gold } }
          max_body: 64KiB
      - response_transformer: { headers: { set: { x-f: "1" } }, json: { remove: [internal] } }
      - request_validator:
          body_schema: { type: object, required: [name] }
          max_body: 1MiB
    upstream: app
upstreams:
  app: { targets: [ { address: 127.0.0.1:1 } ] }
"#,
    ),
];

#[test]
fn the_schema_and_validate_accept_the_same_files() {
    let dir = scratch("good");
    let validator = validator();
    // The placeholders need values for `validate`.
    let text_for_validate = |text: &str| {
        text.replace("${ADMIN_TOKEN}", "admin-token")
            .replace("${ALICE_KEY}", "alice-key-0002")
    };
    for (what, text) in GOOD {
        let schema = schema_errors(&validator, text);
        assert!(schema.is_empty(), "{what}: the schema refuses: {schema:#?}");
        let file = format!("{what}.yaml");
        if let Err(errors) = validate(&dir, &file, &text_for_validate(text)) {
            panic!("{what}: validate refuses: {errors:#?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
