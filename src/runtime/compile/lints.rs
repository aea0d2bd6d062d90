//! Warnings about a config that is valid as a whole but likely not meant: consumers no
//! plugin can authenticate, API keys accepted in the query string by routes whose limits
//! count the key's header, and active checks written as the path clients send.

use crate::config::spec::{ConsumerSpec, PluginSpec, RouteSpec};
use crate::config::{At, Diagnostics, Spec};

/// Every plugin a config writes: global, on routes (for everyone and per consumer), on
/// consumers.
fn all_plugins(spec: &Spec) -> impl Iterator<Item = &At<PluginSpec>> {
    spec.plugins
        .iter()
        .chain(spec.routes.iter().flat_map(|r| r.plugins.iter()))
        .chain(
            spec.routes
                .iter()
                .flat_map(|r| r.consumer_plugins.values().flatten()),
        )
        .chain(spec.consumers.iter().flat_map(|c| c.plugins.iter()))
}

/// Runs every lint of this module.
pub(super) fn lint(spec: &Spec, diags: &mut Diagnostics) {
    unused_consumers(spec, diags);
    query_keys_uncounted(spec, diags);
    client_paths_in_checks(spec, diags);
}

/// A consumer no authentication plugin of the config can ever map a request to.
fn unused_consumers(spec: &Spec, diags: &mut Diagnostics) {
    let has = |f: fn(&PluginSpec) -> bool| all_plugins(spec).any(|p| f(&p.value));
    let key_auth = has(|p| matches!(p, PluginSpec::KeyAuth(_)));
    let basic_auth = has(|p| matches!(p, PluginSpec::BasicAuth(_)));
    let mtls_auth = has(|p| matches!(p, PluginSpec::MtlsAuth(_)));
    // A JWT, an introspection answer or an auth service names its consumer: any consumer may
    // be one.
    if has(|p| {
        matches!(
            p,
            PluginSpec::Jwt(_)
                | PluginSpec::Oauth2Introspection(_)
                | PluginSpec::ForwardAuth(_)
                | PluginSpec::Oidc(_)
        )
    }) {
        return;
    }
    for consumer in &spec.consumers {
        let ConsumerSpec {
            api_keys,
            basic_auth: basic,
            cert_subject,
            ..
        } = consumer;
        let ways = [
            (!api_keys.is_empty(), key_auth, "api_keys", "key_auth"),
            (basic.is_some(), basic_auth, "basic_auth", "basic_auth"),
            (
                cert_subject.is_some(),
                mtls_auth,
                "cert_subject",
                "mtls_auth",
            ),
        ];
        if ways.iter().any(|(given, used, _, _)| *given && *used) {
            continue;
        }
        let given: Vec<String> = ways
            .iter()
            .filter(|(given, ..)| *given)
            .map(|(_, _, key, plugin)| format!("its `{key}` would need a `{plugin}` plugin"))
            .collect();
        let why = if given.is_empty() {
            "it has no credentials (`api_keys`, `basic_auth`, `cert_subject`) and no `jwt` \
             or `oauth2_introspection` plugin names consumers"
                .to_owned()
        } else {
            format!("{}, and no route or global list has one", given.join("; "))
        };
        diags.warning(
            consumer.name.pos,
            format!(
                "consumer `{}` can never be authenticated: {why}",
                consumer.name.as_str()
            ),
        );
    }
}

/// A limit that counts by the header carrying an API key, where some `key_auth` also takes
/// the key from the query string: requests that send it there all count as one key (the
/// header's absence), so the limit is not the key holder's.
fn query_keys_uncounted(spec: &Spec, diags: &mut Diagnostics) {
    let queried: Vec<(&str, &str, u32)> = all_plugins(spec)
        .filter_map(|p| match &p.value {
            PluginSpec::KeyAuth(k) => k
                .query
                .as_deref()
                .map(|q| (k.header.as_str(), q, p.pos.line)),
            _ => None,
        })
        .collect();
    if queried.is_empty() {
        return;
    }
    for plugin in all_plugins(spec) {
        let (name, by) = match &plugin.value {
            PluginSpec::RateLimit(l) => ("rate_limit", &l.by),
            PluginSpec::Quota(q) => ("quota", &q.by),
            _ => continue,
        };
        let Some(header) = by.strip_prefix("header:") else {
            continue;
        };
        if let Some((_, query, line)) = queried
            .iter()
            .find(|(h, ..)| h.eq_ignore_ascii_case(header))
        {
            diags.warning(
                by.pos,
                format!(
                    "{name} counts by header `{header}`, but `key_auth` (line {line}) also takes \
                     the key from query parameter `{query}`: requests that send it there all \
                     count as one client without the header; use `by: consumer`"
                ),
            );
        }
    }
}

/// The client-side prefix a route removes before forwarding, if it removes one.
fn removed_prefix(route: &RouteSpec) -> Option<&str> {
    let rewrite = route.rewrite.as_ref()?;
    let prefix = match (&rewrite.strip_prefix, &rewrite.replace_prefix) {
        (Some(strip), _) => strip.as_str(),
        (None, Some(_)) => route.matches.path_prefix.as_deref()?,
        (None, None) => return None,
    };
    let prefix = prefix.trim_end_matches('/');
    (!prefix.is_empty()).then_some(prefix)
}

/// An active HTTP check whose path starts with a prefix that routes to the upstream strip:
/// targets are asked for it as written, not as a client's request would reach them.
fn client_paths_in_checks(spec: &Spec, diags: &mut Diagnostics) {
    for (name, upstream) in &spec.upstreams {
        let Some(active) = upstream
            .health_check
            .as_ref()
            .and_then(|h| h.active.as_ref())
        else {
            continue;
        };
        if active.kind != crate::config::spec::CheckType::Http {
            continue;
        }
        let path = active.path.as_str();
        let sends_here = |route: &&RouteSpec| {
            route.upstream.as_ref().map(|u| u.as_str()) == Some(name.as_str())
                || route
                    .split
                    .as_ref()
                    .is_some_and(|arms| arms.iter().any(|a| a.upstream.as_str() == name.as_str()))
        };
        let found = spec.routes.iter().filter(sends_here).find_map(|route| {
            let prefix = removed_prefix(route)?;
            let rest = path.strip_prefix(prefix)?;
            (rest.is_empty() || rest.starts_with('/')).then_some((route, prefix, rest))
        });
        if let Some((route, prefix, rest)) = found {
            let rest = if rest.is_empty() { "/" } else { rest };
            diags.warning(
                name.pos,
                format!(
                    "the active check of upstream `{}` asks targets for `{path}`, the path as \
                     clients send it: route `{}` removes `{prefix}` before forwarding, so a \
                     client's `{path}` reaches targets as `{rest}`; checks go to targets \
                     directly, unrewritten",
                    name.as_str(),
                    route.name.as_str()
                ),
            );
        }
    }
}
