use super::*;
use crate::config::load_str;

fn compile_text(text: &str) -> Result<Snapshot, Vec<String>> {
    let registry = Registry::default();
    let metrics = Metrics::new();
    let acme = crate::tls::acme::Store::default();
    let spec = load_str("c.yaml", text, &|_| None)
        .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    compile(
        spec,
        "c.yaml",
        Env {
            registry: &registry,
            metrics: &metrics,
            acme: &acme,
            states: &Default::default(),
        },
    )
    .map_err(|d| d.iter().map(ToString::to_string).collect())
}

/// Reads and compiles like `portico validate`: errors and warnings, as printed.
fn check_text(text: &str) -> Vec<String> {
    let (spec, errors) = crate::config::read_str("c.yaml", text, &|_| None);
    match with_test_env(|env| compile_read(spec, errors, "c.yaml", env)) {
        Ok(snap) => snap.warnings.iter().map(ToString::to_string).collect(),
        Err(all) => all.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_broken_upstream_is_reported_once_not_at_every_reference() {
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
  - { name: pass, bind: 127.0.0.1:0, protocol: tls_passthrough, upstream: u }
routes:
  - { name: a, match: { path: /a }, upstream: u }
  - { name: b, match: { path: /b }, split: [ { upstream: u, weight: 1 }, { upstream: v, weight: 1 } ] }
  - { name: c, match: { path: /c }, upstream: v, mirror: { upstream: w } }
upstreams:
  u: { targets: [ { address: 'bad address' } ] }
  v: { targets: [ { address: 127.0.0.1:1 } ] }
  w: { targets: [] , balance: nope }
",
    );
    assert_eq!(
        lines,
        [
            "c.yaml:9:30: invalid target address `bad address`: expected HOST:PORT, like 10.0.0.5:8080 or api.internal:80",
            "c.yaml:11:17: upstream `w` has no targets",
            "c.yaml:11:31: unknown value `nope`, expected one of: round_robin, least_request, random, p2c_ewma, ring_hash, maglev, ip_hash",
        ],
        "{lines:#?}"
    );
}

#[test]
fn unknown_names_get_a_suggestion() {
    let lines = check_text(
        "\
listeners:
  - { name: public, bind: 127.0.0.1:0 }
routes:
  - { name: a, listeners: [pubic], upstream: orders }
  - { name: b, listeners: [nothing_like_it], upstream: order }
  - { name: c, upstream: zzz }
upstreams:
  orders: { targets: [ { address: 127.0.0.1:1 } ] }
",
    );
    assert_eq!(
        lines,
        [
            "c.yaml:4:28: route `a` names listener `pubic`, which does not exist: did you mean `public`?",
            "c.yaml:5:28: route `b` names listener `nothing_like_it`, which does not exist",
            "c.yaml:5:56: upstream `order` is not defined: did you mean `orders`?",
            "c.yaml:6:26: upstream `zzz` is not defined",
        ],
        "{lines:#?}"
    );
}

#[test]
fn whole_item_checks_are_skipped_for_an_item_that_parsed_in_part() {
    // `upstrem` is a typo: "needs exactly one action, found 0" would only repeat it.
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0, limits: { max_conections: 5 } }
  - { name: gone, bind: 127.0.0.1:0, tls: 5 }
routes:
  - { name: a, upstrem: u }
  - { name: b, listeners: [web, gone], respond: { status: 200 } }
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    );
    assert_eq!(
        lines,
        [
            "c.yaml:2:47: unknown key `max_conections`: did you mean `max_connections`?",
            "c.yaml:3:43: expected a mapping, found an integer",
            "c.yaml:5:16: unknown key `upstrem`: did you mean `upstream`?",
        ],
        "{lines:#?}"
    );
}

#[test]
fn identical_earlier_routes_shadow_later_ones() {
    let lines = check_text(
        "\
listeners:
  - { name: a, bind: 127.0.0.1:0 }
  - { name: b, bind: 127.0.0.1:0 }
routes:
  - { name: one, listeners: [a], match: { path: /x, headers: { X-K: v } }, respond: { status: 200 } }
  - { name: two, match: { path: /x, headers: { x-k: v } }, respond: { status: 200 } }
  - { name: three, listeners: [b, a], match: { headers: { x-k: v }, path: /x }, respond: { status: 200 } }
  - { name: four, match: { path: /x, methods: [GET] }, respond: { status: 200 } }
",
    );
    // `two` still matches on `b`; `three` is behind `one` on `a` and `two` on `b`.
    assert_eq!(
        lines,
        [
            "c.yaml:7:13: warning: route `three` can never match: route `one` (line 5) comes first with the same listeners and match conditions",
        ],
        "{lines:#?}"
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let errors = compile_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:8080 }
  - { name: web, bind: 127.0.0.1:8080 }
  - { name: bad, bind: nowhere }
routes:
  - { name: a, upstream: missing }
  - { name: a, respond: { status: 200 } }
  - { name: c, upstream: u, respond: { status: 200 } }
  - { name: d, listeners: [nope], match: { path: /x/../y }, respond: { status: 200 } }
upstreams:
  u:
    targets: [ { address: 'bad address' } ]
",
    )
    .unwrap_err();
    let expected = [
        "c.yaml:3:13: duplicate listener name `web`",
        "c.yaml:3:24: two listeners bind 127.0.0.1:8080",
        "c.yaml:4:24: invalid address `nowhere`",
        "c.yaml:6:26: upstream `missing` is not defined",
        "c.yaml:7:13: duplicate route name `a`",
        "c.yaml:8:13: route `c` must have exactly one action",
        "c.yaml:9:28: route `d` names listener `nope`",
        "c.yaml:9:50: path `/x/../y` is not in normal form",
        "c.yaml:12:27: invalid target address `bad address`",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn admin_off_loopback_needs_token() {
    let errors = compile_text("admin: { listen: 0.0.0.0:9901 }\n").unwrap_err();
    assert!(errors[0].contains("needs a `token`"), "{errors:?}");
    assert!(compile_text("admin: { listen: 0.0.0.0:9901, token: t }\n").is_ok());
}

#[test]
fn routes_attach_to_listeners() {
    let snap = compile_text(
        "\
listeners:
  - { name: a, bind: 127.0.0.1:0 }
  - { name: b, bind: 127.0.0.1:0 }
routes:
  - { name: only-b, listeners: [b], respond: { status: 204 } }
  - { name: all, respond: { status: 200 } }
",
    )
    .unwrap();
    assert_eq!(snap.listener("a").unwrap().routes.len(), 1);
    assert_eq!(snap.listener("b").unwrap().routes.len(), 2);
}

#[test]
fn upstream_tls_errors_point_at_the_file_at_fault() {
    // `verify: false` leaves `ca_file` unread: a missing client certificate is the error.
    let errors = compile_text(
        "\
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1 } ]
    tls: { verify: false, ca_file: ca.pem, cert_file: no-such-client.pem, key_file: no-such.key }
",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("c.yaml:4:55: cannot read certificate file"),
        "{errors:#?}"
    );
}

#[test]
fn path_policy_compiles_into_the_route() {
    use crate::routing::path::{Backslash, EncodedSlash, MatrixParams, PathPolicy};
    let snap = compile_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: files
    match: { path_prefix: /files/ }
    path_policy: { encoded_slash: keep, backslash: reject, matrix_params: reject }
    respond: { status: 200 }
  - { name: plain, respond: { status: 200 } }
",
    )
    .unwrap();
    let routes = &snap.listeners[0].routes;
    assert_eq!(
        routes[0].route.path_policy,
        PathPolicy {
            encoded_slash: EncodedSlash::Keep,
            backslash: Backslash::Reject,
            matrix_params: MatrixParams::Reject,
        }
    );
    assert_eq!(routes[1].route.path_policy, PathPolicy::default());

    let errors = compile_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: shop
    match: { path_prefix: /shop/ }
    path_policy: { matrix_params: keep }
    rewrite: { strip_prefix: /shop }
    respond: { status: 200 }
",
    )
    .unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("c.yaml:6:18: path_policy.matrix_params: keep")),
        "{errors:#?}"
    );
    let errors = compile_text(
        "\
routes:
  - { name: bad, path_policy: { encoded_slash: maybe }, respond: { status: 200 } }
",
    )
    .unwrap_err();
    assert!(
        errors[0].contains("unknown value `maybe`, expected one of: decode, keep, reject"),
        "{errors:#?}"
    );
}

#[test]
fn plugin_and_consumer_errors_sit_at_their_spec() {
    let errors = compile_text(
        "\
consumers:
  - { name: a, api_keys: [short] }
routes:
  - name: r
    respond: { status: 200 }
    plugins:
      - rate_limit: { limit: 0, window: 1s }
      - cors: { origins: [example.com] }
",
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "c.yaml:2:27: an API key must have at least 8 characters",
            "c.yaml:7:9: rate_limit.limit must be at least 1",
            "c.yaml:8:9: invalid origin `example.com`: expected like https://app.example.com",
        ],
        "{errors:#?}"
    );
}

#[test]
fn malformed_questions_are_errors() {
    use crate::runtime::explain::{Question, QuestionError, explain};
    let snap = compile_text("routes: []\n").unwrap();
    let ask = |url| {
        explain(
            &snap,
            &Question {
                method: http::Method::GET,
                url,
                headers: http::HeaderMap::new(),
                client: std::net::Ipv4Addr::LOCALHOST.into(),
            },
        )
        .unwrap_err()
    };
    let err = ask("/users");
    assert!(matches!(err, QuestionError::NoHost(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the URL `/users` needs a host, like http://localhost:8080/"
    );
    assert!(matches!(ask("http://a b/"), QuestionError::Url { .. }));
    assert_eq!(
        ask("http://api.example/").to_string(),
        "the config has no listeners"
    );
}

#[test]
fn likely_mistakes_are_warnings() {
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: app
    upstream: used
    plugins:
      - cors: { origins: ['https://app.example.com/', 'https://ok.example.com'] }
      - cors: { origins: ['*'], credentials: true }
upstreams:
  used: { targets: [ { address: 127.0.0.1:1 } ] }
  spare: { targets: [ { address: 127.0.0.1:2 } ] }
",
    );
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("c.yaml:7:")
            && l.contains("`https://app.example.com/` can never match")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c.yaml:8:") && l.contains("credentials")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("c.yaml:11:3: warning: upstream `spare` is not used")),
        "{lines:#?}"
    );
}

#[test]
fn consumers_no_plugin_can_authenticate_are_warned_about() {
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: keyed, api_keys: ['keyed-key-12345'] }
  - { name: basic, basic_auth: { username: b, password_hash: '$2b$04$abcdefghijklmnopqrstuu5Qwq8cBr4XKkXcVVsyS1vCNXRpyXuZe' } }
  - { name: bare }
routes:
  - { name: app, upstream: u, plugins: [ { key_auth: {} } ] }
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    );
    assert_eq!(
        lines,
        [
            "c.yaml:5:13: warning: consumer `basic` can never be authenticated: its \
             `basic_auth` would need a `basic_auth` plugin, and no route or global list has one",
            "c.yaml:6:13: warning: consumer `bare` can never be authenticated: it has no \
             credentials (`api_keys`, `basic_auth`, `cert_subject`) and no `jwt` or \
             `oauth2_introspection` plugin names consumers",
        ],
        "{lines:#?}"
    );
    // A jwt plugin may name any consumer by its claim.
    let with_jwt = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: bare }
plugins: [ { jwt: { keys: [ { alg: HS256, secret: 0123456789abcdef0123 } ] } } ]
routes:
  - { name: app, upstream: u }
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    );
    assert!(with_jwt.is_empty(), "{with_jwt:#?}");
}

#[test]
fn a_limit_by_the_key_header_warns_when_keys_also_come_in_the_query() {
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
consumers:
  - { name: a, api_keys: ['a-key-1234567890'] }
routes:
  - name: header
    match: { path_prefix: /h }
    plugins: [ { key_auth: {} }, { rate_limit: { limit: 5, window: 1s, by: 'header:X-Api-Key' } } ]
    upstream: u
  - name: query
    match: { path_prefix: /q }
    plugins: [ { key_auth: { query: api_key } } ]
    upstream: u
upstreams:
  u: { targets: [ { address: 127.0.0.1:1 } ] }
",
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("c.yaml:8:")
            && lines[0].contains("rate_limit counts by header `X-Api-Key`")
            && lines[0].contains("(line 12)")
            && lines[0].contains("query parameter `api_key`"),
        "{lines:#?}"
    );
}

#[test]
fn an_active_check_on_a_client_path_is_warned_about() {
    let config = |path: &str| {
        format!(
            "\
listeners:
  - {{ name: web, bind: 127.0.0.1:0 }}
routes:
  - name: users
    match: {{ path_prefix: /users }}
    rewrite: {{ strip_prefix: /users }}
    upstream: users
upstreams:
  users:
    targets: [ {{ address: 127.0.0.1:1 }} ]
    health_check: {{ active: {{ path: {path} }} }}
"
        )
    };
    let lines = check_text(&config("/users/healthz"));
    assert_eq!(
        lines,
        [
            "c.yaml:9:3: warning: the active check of upstream `users` asks targets for \
          `/users/healthz`, the path as clients send it: route `users` removes `/users` \
          before forwarding, so a client's `/users/healthz` reaches targets as `/healthz`; \
          checks go to targets directly, unrewritten"
        ],
        "{lines:#?}"
    );
    assert!(check_text(&config("/healthz")).is_empty());
    assert!(check_text(&config("/usersfoo")).is_empty());
}

#[test]
fn forward_auth_names_an_upstream_of_the_config() {
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: a
    match: { path: / }
    upstream: app
    plugins:
      - forward_auth: { upstream: auht }
  - name: b
    match: { path: /b }
    upstream: app
    plugins:
      - forward_auth: { upstream: auth, response_headers: ['x user'] }
upstreams:
  app: { targets: [ { address: 127.0.0.1:1 } ] }
  auth: { targets: [ { address: 127.0.0.1:2 } ] }
",
    );
    assert_eq!(
        lines,
        [
            "c.yaml:8:35: upstream `auht` is not defined: did you mean `auth`?",
            "c.yaml:13:60: invalid header name `x user`",
        ],
        "{lines:#?}"
    );
    // An upstream only forward_auth calls is used.
    let lines = check_text(
        "\
listeners:
  - { name: web, bind: 127.0.0.1:0 }
routes:
  - name: a
    match: { path: / }
    upstream: app
    plugins:
      - forward_auth: { upstream: auth }
upstreams:
  app: { targets: [ { address: 127.0.0.1:1 } ] }
  auth: { targets: [ { address: 127.0.0.1:2 } ] }
",
    );
    assert!(lines.is_empty(), "{lines:#?}");
}
