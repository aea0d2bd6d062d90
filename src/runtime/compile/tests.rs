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
        },
    )
    .map_err(|d| d.iter().map(ToString::to_string).collect())
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
