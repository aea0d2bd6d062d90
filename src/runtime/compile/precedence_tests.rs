//! `consumer_plugins` and consumer-scoped plugins, as compile checks and merges them.

use super::*;

fn check(text: &str) -> Result<Snapshot, Vec<String>> {
    compile_str(text)
}

#[test]
fn consumer_plugins_name_known_consumers() {
    let errors = check(
        "\
consumers:
  - { name: alice, api_keys: [alice-key-1234] }
routes:
  - name: r
    respond: { status: 200 }
    plugins: [ { key_auth: {} } ]
    consumer_plugins:
      alice: [ { rate_limit: { limit: 2, window: 1m } } ]
      alcie: [ { rate_limit: { limit: 2, window: 1m } } ]
",
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "c.yaml:9:7: consumer_plugins names consumer `alcie`, which does not exist: did you mean `alice`?"
        ],
        "{errors:#?}"
    );
}

#[test]
fn consumer_scoped_plugins_run_after_authentication_or_are_refused() {
    let errors = check(
        "\
consumers:
  - name: alice
    api_keys: [alice-key-1234]
    plugins:
      - ip_restriction: { allow: [10.0.0.0/8] }
      - rate_limit: { limit: 2, window: 1m, by: ip }
      - rate_limit: { limit: 2, window: 1m }
routes:
  - name: r
    respond: { status: 200 }
    plugins: [ { key_auth: {} } ]
    consumer_plugins:
      alice:
        - cors: { origins: ['https://app.example.com'] }
        - acl: { allow: [paid] }
",
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "c.yaml:5:9: `ip_restriction` runs before authentication (Access phase), so it cannot apply to one consumer; put it in the route's or the global `plugins`",
            "c.yaml:6:9: `rate_limit` runs before authentication (Access phase), so it cannot apply to one consumer; put it in the route's or the global `plugins`",
            "c.yaml:14:11: `cors` runs before authentication (Preflight phase), so it cannot apply to one consumer; put it in the route's or the global `plugins`",
        ],
        "{errors:#?}"
    );
}

#[test]
fn a_route_merges_its_consumer_plugins_at_compile_time() {
    let snap = check(
        "\
listeners: [ { name: web, bind: 127.0.0.1:0 } ]
plugins: [ { request_headers: { set: { x-from: global } } } ]
consumers:
  - { name: alice, api_keys: [alice-key-1234], plugins: [ { rate_limit: { limit: 3, window: 1m } } ] }
  - { name: bob, api_keys: [bob-key-12345] }
routes:
  - name: x
    match: { path_prefix: /x/ }
    respond: { status: 200 }
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 1, window: 1m, by: consumer }
      - request_headers: { set: { x-from: route } }
    consumer_plugins:
      alice: [ { rate_limit: { limit: 2, window: 1m } } ]
",
    )
    .unwrap();
    let route = &snap.listeners[0].routes[0].route;
    let levels = |consumer: Option<&str>| -> Vec<String> {
        route
            .plugins
            .in_force(consumer)
            .placed()
            .map(|(p, level)| format!("{}@{level}", p.name()))
            .collect()
    };
    assert_eq!(
        levels(Some("alice")),
        [
            "key_auth@route",
            "rate_limit@route+consumer alice",
            "request_headers@route"
        ]
    );
    assert_eq!(
        levels(Some("bob")),
        [
            "key_auth@route",
            "rate_limit@route",
            "request_headers@route"
        ]
    );
    assert_eq!(levels(Some("bob")), levels(None));
    // The global request_headers gives way to the route's.
    assert_eq!(
        route.plugins.in_force(None).replaced()[0].plugin.level,
        crate::plugins::Level::Global
    );
}
