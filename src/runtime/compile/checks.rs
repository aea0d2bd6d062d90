//! Checks of compile that are about the config as a whole rather than one item: references
//! to upstreams (with "did you mean"), and routes that an identical earlier route hides.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::spec::MatchSpec;
use crate::config::suggest::closest;
use crate::config::{At, Diagnostics, Pos, Unparsed};
use crate::runtime::Upstream;

/// The upstreams a config declares, and those of them that compiled.
pub(super) struct Upstreams<'a> {
    pub(super) compiled: HashMap<&'a str, &'a Arc<Upstream>>,
    pub(super) declared: Vec<&'a str>,
    pub(super) unparsed: &'a Unparsed,
}

impl Upstreams<'_> {
    /// The upstream a reference names. A declared upstream that did not compile has its own
    /// error already, so naming it is not reported again.
    pub(super) fn find(&self, name: &At<String>, diags: &mut Diagnostics) -> Option<Arc<Upstream>> {
        if let Some(u) = self.compiled.get(name.as_str()) {
            return Some(Arc::clone(u));
        }
        if !self.declared.contains(&name.as_str()) && !self.unparsed.declares("upstreams", name) {
            diags.error(
                name.pos,
                format!(
                    "upstream `{}` is not defined{}",
                    **name,
                    did_you_mean(name, self.declared.iter().copied())
                ),
            );
        }
        None
    }
}

/// `: did you mean `x`?` when a candidate is close to `word`, else nothing.
pub(super) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    closest(word, candidates).map_or_else(String::new, |near| format!(": did you mean `{near}`?"))
}

/// Which attached routes an identical earlier route hides, listener by listener.
#[derive(Debug, Default)]
pub(super) struct Shadows {
    /// Per route index: for each listener it attaches to, the earlier identical route there.
    seen: HashMap<usize, Vec<Option<usize>>>,
    /// The routes of the listener being attached, with their keys.
    current: Vec<(usize, MatchKey)>,
}

impl Shadows {
    /// Starts the next listener's routes.
    pub(super) fn next_listener(&mut self) {
        self.current.clear();
    }

    /// Route `index` attaches to the current listener with these conditions.
    pub(super) fn attach(&mut self, index: usize, spec: &MatchSpec) {
        let key = MatchKey::of(spec);
        let earlier = self
            .current
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(i, _)| *i);
        self.seen.entry(index).or_default().push(earlier);
        self.current.push((index, key));
    }

    /// Warns about every route that an identical earlier one hides on each of its listeners:
    /// the table breaks ties by file order, so it never matches. `route` gives a route's name
    /// and position by index.
    pub(super) fn report<'a>(
        self,
        route: impl Fn(usize) -> (&'a str, Pos),
        diags: &mut Diagnostics,
    ) {
        let mut shadowed: Vec<(usize, usize)> = self
            .seen
            .into_iter()
            .filter_map(|(index, earlier)| {
                let first = (*earlier.first()?)?;
                earlier
                    .iter()
                    .all(Option::is_some)
                    .then_some((index, first))
            })
            .collect();
        shadowed.sort_unstable();
        for (index, first) in shadowed {
            let (name, pos) = route(index);
            let (winner, winner_pos) = route(first);
            diags.warning(
                pos,
                format!(
                    "route `{name}` can never match: route `{winner}` (line {}) comes first \
                     with the same listeners and match conditions",
                    winner_pos.line
                ),
            );
        }
    }
}

/// A route's match conditions in canonical form: routes with equal keys match the same
/// requests (host and method case, set order and a prefix's trailing `/` do not count).
#[derive(Debug, PartialEq, Eq)]
struct MatchKey {
    hosts: Vec<String>,
    path: Option<(u8, String)>,
    methods: Vec<String>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
}

impl MatchKey {
    fn of(spec: &MatchSpec) -> Self {
        let mut hosts: Vec<String> = spec
            .hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        let path = if let Some(p) = &spec.path {
            Some((0, p.value.clone()))
        } else if let Some(p) = &spec.path_prefix {
            Some((1, p.trim_end_matches('/').to_owned()))
        } else if let Some(t) = &spec.path_template {
            Some((2, t.value.clone()))
        } else {
            spec.path_regex.as_ref().map(|r| (3, r.value.clone()))
        };
        let mut methods: Vec<String> = spec
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        methods.sort_unstable();
        methods.dedup();
        let mut headers: Vec<(String, String)> = spec
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.value.clone()))
            .collect();
        headers.sort_unstable();
        let pairs = |map: &std::collections::BTreeMap<String, String>| {
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        MatchKey {
            hosts,
            path,
            methods,
            headers,
            query: pairs(&spec.query),
            cookies: pairs(&spec.cookies),
        }
    }
}

/// Warnings about a plugin's settings that are valid but likely not meant.
pub(super) fn plugin_warnings(spec: &At<crate::config::spec::PluginSpec>, diags: &mut Diagnostics) {
    let crate::config::spec::PluginSpec::Cors(cors) = &spec.value else {
        return;
    };
    for origin in cors.origins.iter() {
        if origin == "*" {
            if cors.credentials {
                diags.warning(
                    cors.origins.pos,
                    "cors origin `*` with `credentials: true` lets every site make credentialed \
                     calls: list the origins instead",
                );
            }
            continue;
        }
        // An Origin is scheme, host and port only (RFC 6454 §6.1): a path never matches.
        let rest = origin.split_once("://").map_or(origin.as_str(), |(_, r)| r);
        if rest.contains('/') {
            diags.warning(
                cors.origins.pos,
                format!(
                    "cors origin `{origin}` can never match: browsers send an origin without a \
                     path or trailing slash (`{}`)",
                    origin
                        .trim_end_matches('/')
                        .split('/')
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("/")
                ),
            );
        }
    }
}

/// A warning for each upstream no route, split, mirror, aggregate call or listener names.
pub(super) fn unused_upstreams(spec: &crate::config::Spec, diags: &mut Diagnostics) {
    let mut used: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for route in &spec.routes {
        if let Some(u) = &route.upstream {
            used.insert(u.as_str());
        }
        if let Some(split) = &route.split {
            used.extend(split.iter().map(|arm| arm.upstream.as_str()));
        }
        if let Some(mirror) = &route.mirror {
            used.insert(mirror.upstream.as_str());
        }
        if let Some(aggregate) = &route.aggregate {
            used.extend(aggregate.calls.iter().map(|c| c.upstream.as_str()));
        }
    }
    let plugin_lists = std::iter::once(&spec.plugins)
        .chain(spec.routes.iter().map(|r| &r.plugins))
        .chain(spec.consumers.iter().map(|c| &c.plugins));
    for plugin in plugin_lists.flatten() {
        if let crate::config::spec::PluginSpec::ForwardAuth(auth) = &plugin.value {
            used.insert(auth.upstream.as_str());
        }
    }
    for listener in &spec.listeners {
        if let Some(u) = &listener.upstream {
            used.insert(u.as_str());
        }
        used.extend(listener.sni.values().map(|u| u.as_str()));
    }
    for (name, _) in &spec.upstreams {
        if !used.contains(name.as_str()) {
            diags.warning(
                name.pos,
                format!(
                    "upstream `{}` is not used by any route or listener",
                    name.as_str()
                ),
            );
        }
    }
}
