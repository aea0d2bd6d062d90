//! Precedence of the levels, merged at compile time.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;

/// A plugin with a name, a phase and a tag (to tell instances apart).
#[derive(Debug)]
struct Named(
    &'static str,
    Phase,
    #[expect(dead_code, reason = "read through Debug by `show`")] &'static str,
);

impl Plugin for Named {
    fn name(&self) -> &'static str {
        self.0
    }
    fn phase(&self) -> Phase {
        self.1
    }
}

fn p(name: &'static str, phase: Phase, tag: &'static str) -> Arc<dyn Plugin> {
    Arc::new(Named(name, phase, tag))
}

/// `tag@level` of each plugin in force, in order.
fn show(in_force: &InForce) -> Vec<String> {
    in_force
        .placed()
        .map(|(plugin, level)| {
            let tag = format!("{plugin:?}");
            let tag = tag.rsplit('"').nth(1).unwrap_or("?").to_owned();
            format!("{tag}@{level}")
        })
        .collect()
}

fn replaced(in_force: &InForce) -> Vec<String> {
    in_force
        .replaced()
        .iter()
        .map(|r| format!("{} {} by {}", r.plugin.plugin.name(), r.plugin.level, r.by))
        .collect()
}

fn consumers(list: &[(&str, Vec<Arc<dyn Plugin>>)]) -> ConsumerPlugins {
    ConsumerPlugins(Arc::new(
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), v.clone()))
            .collect(),
    ))
}

#[test]
fn a_route_plugin_replaces_every_global_one_of_its_name() {
    let global = [
        p("request_headers", Phase::Transform, "g1"),
        p("request_headers", Phase::Transform, "g2"),
        p("cors", Phase::Preflight, "gc"),
        p("key_auth", Phase::Authenticate, "gk"),
    ];
    let route = [
        p("request_headers", Phase::Transform, "r1"),
        p("key_auth", Phase::Authenticate, "rk"),
    ];
    let chain = PluginChain::build(
        &global,
        &route,
        &ConsumerPlugins::default(),
        &HashMap::new(),
    );
    let base = chain.in_force(None);
    // Before authentication too: the route is more specific than the global list.
    assert_eq!(show(base), ["gc@global", "rk@route", "r1@route"]);
    assert_eq!(
        replaced(base),
        [
            "request_headers global by route",
            "request_headers global by route",
            "key_auth global by route"
        ]
    );
    assert_eq!(base.authenticated(), 2);
}

#[test]
fn several_of_one_name_at_one_level_all_stay() {
    let route = [
        p("rate_limit", Phase::Access, "a"),
        p("rate_limit", Phase::Access, "b"),
    ];
    let global = [p("rate_limit", Phase::Access, "g")];
    let chain = PluginChain::build(
        &global,
        &route,
        &ConsumerPlugins::default(),
        &HashMap::new(),
    );
    assert_eq!(show(chain.in_force(None)), ["a@route", "b@route"]);
}

#[test]
fn route_consumer_over_consumer_over_route_over_global() {
    let global = [
        p("acl", Phase::Authorize, "g-acl"),
        p("request_headers", Phase::Transform, "g-h"),
    ];
    let route = [
        p("key_auth", Phase::Authenticate, "r-key"),
        p("rate_limit", Phase::Authorize, "r-rl"),
        p("request_headers", Phase::Transform, "r-h"),
    ];
    let own = consumers(&[
        (
            "alice",
            vec![
                p("rate_limit", Phase::Authorize, "a-rl"),
                p("acl", Phase::Authorize, "a-acl"),
            ],
        ),
        ("bob", vec![p("rate_limit", Phase::Authorize, "b-rl")]),
    ]);
    let mut on_route = HashMap::new();
    on_route.insert(
        "alice".to_owned(),
        vec![p("rate_limit", Phase::Authorize, "ra-rl")],
    );
    on_route.insert(
        "carol".to_owned(),
        vec![p("request_headers", Phase::Transform, "rc-h")],
    );
    let chain = PluginChain::build(&global, &route, &own, &on_route);
    assert_eq!(chain.scoped_consumers(), ["alice", "bob", "carol"]);

    let alice = chain.in_force(Some("alice"));
    assert_eq!(
        show(alice),
        [
            "r-key@route",
            "a-acl@consumer alice",
            "ra-rl@route+consumer alice",
            "r-h@route"
        ]
    );
    assert_eq!(
        replaced(alice),
        [
            "acl global by consumer alice",
            "request_headers global by route",
            "rate_limit route by route+consumer alice",
            "rate_limit consumer alice by route+consumer alice",
        ]
    );
    let bob = chain.in_force(Some("bob"));
    assert_eq!(
        show(bob),
        [
            "r-key@route",
            "g-acl@global",
            "b-rl@consumer bob",
            "r-h@route"
        ]
    );
    let carol = chain.in_force(Some("carol"));
    assert_eq!(
        show(carol),
        [
            "r-key@route",
            "g-acl@global",
            "r-rl@route",
            "rc-h@route+consumer carol"
        ]
    );
    // Anyone else, and requests without a consumer, get the route's chain.
    assert_eq!(
        show(chain.in_force(Some("dave"))),
        show(chain.in_force(None))
    );
    assert_eq!(
        show(chain.in_force(None)),
        ["r-key@route", "g-acl@global", "r-rl@route", "r-h@route"]
    );
}

#[test]
fn a_consumer_never_replaces_what_runs_before_authentication() {
    let route = [
        p("rate_limit", Phase::Access, "r-ip"),
        p("key_auth", Phase::Authenticate, "r-key"),
        p("rate_limit", Phase::Authorize, "r-consumer"),
    ];
    let own = consumers(&[(
        "alice",
        vec![
            p("rate_limit", Phase::Authorize, "a-rl"),
            // Compile refuses these; the merge leaves them out all the same.
            p("ip_restriction", Phase::Access, "a-ip"),
            p("key_auth", Phase::Authenticate, "a-key"),
        ],
    )]);
    let chain = PluginChain::build(&[], &route, &own, &HashMap::new());
    let alice = chain.in_force(Some("alice"));
    assert_eq!(
        show(alice),
        ["r-ip@route", "r-key@route", "a-rl@consumer alice"]
    );
    assert_eq!(replaced(alice), ["rate_limit route by consumer alice"]);
    // The part before authentication is the same for every consumer.
    assert_eq!(alice.authenticated(), chain.in_force(None).authenticated());
}

#[test]
fn order_is_phase_then_level_then_config_order() {
    let global = [
        p("request_headers", Phase::Transform, "g-h"),
        p("ip_restriction", Phase::Access, "g-ip"),
    ];
    let route = [
        p("response_headers", Phase::Transform, "r-h"),
        p("cors", Phase::Preflight, "r-cors"),
        p("request_size_limit", Phase::Access, "r-size"),
    ];
    let own = consumers(&[(
        "alice",
        vec![
            p("request_transformer", Phase::Transform, "a-t"),
            p("acl", Phase::Authorize, "a-acl"),
        ],
    )]);
    let chain = PluginChain::build(&global, &route, &own, &HashMap::new());
    assert_eq!(
        show(chain.in_force(Some("alice"))),
        [
            "g-ip@global",
            "r-size@route",
            "r-cors@route",
            "a-acl@consumer alice",
            "g-h@global",
            "r-h@route",
            "a-t@consumer alice"
        ]
    );
}

#[test]
fn an_empty_chain_is_skipped_unless_a_consumer_carries_plugins() {
    assert!(PluginChain::new(Vec::new()).is_empty());
    let own = consumers(&[("alice", vec![p("acl", Phase::Authorize, "a")])]);
    assert!(!PluginChain::build(&[], &[], &own, &HashMap::new()).is_empty());
    let empty = consumers(&[("alice", Vec::new())]);
    assert!(PluginChain::build(&[], &[], &empty, &HashMap::new()).is_empty());
}
