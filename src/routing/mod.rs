//! Stage `route`: which route a request belongs to.
//!
//! Routes are compiled per listener into a [`RouteTable`]. A lookup first picks the candidate
//! list for the request's host (exact name, else the longest matching `*.` wildcard, else the
//! routes without hosts; each list also holds every less specific route that could match), then
//! walks path indexes in precedence order: exact path, template, longest prefix, regex, and
//! routes without a path condition. Within one path, more conditions beat fewer, an exact host
//! beats a wildcard, and then file order decides. No request-time sorting, one hash lookup for
//! the host and one for an exact path.

pub(crate) mod host;
pub(crate) mod path;

use std::collections::HashMap;

use http::{HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};

pub(crate) use host::{HostPattern, normalize_host};

pub(crate) use crate::view::{RequestView, query_pairs};

/// How a route matches the path.
#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// A `matchit` template like `/users/{id}`.
    Template(String),
    /// This prefix on a segment boundary; stored without its trailing `/`.
    Prefix(String),
    /// An anchored regular expression.
    Regex(Regex),
}

impl PathMatch {
    /// Whether `path` matches, for checks outside the table (explain, tests).
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Template(t) => {
                let mut router = matchit::Router::new();
                router.insert(t.as_str(), ()).is_ok() && router.at(path).is_ok()
            }
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Path specificity: exact 4, template 3, prefix 2, regex 1, none 0.
    #[cfg(test)]
    pub(crate) fn rank(&self) -> u8 {
        match self {
            PathMatch::Exact(_) => 4,
            PathMatch::Template(_) => 3,
            PathMatch::Prefix(_) => 2,
            PathMatch::Regex(_) => 1,
            PathMatch::Any => 0,
        }
    }
}

/// A segment-aware prefix test: `/users` matches `/users` and `/users/42`, not `/users2`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// Everything a route asks of a request.
#[derive(Debug, Clone)]
pub(crate) struct Conditions {
    /// Host patterns; empty = any host.
    pub(crate) hosts: Vec<HostPattern>,
    /// Path condition.
    pub(crate) path: PathMatch,
    /// Methods; empty = any method.
    pub(crate) methods: Vec<Method>,
    /// Headers that must be present with these values.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Query parameters (decoded) that must be present with these values.
    pub(crate) query: Vec<(String, String)>,
    /// Cookies that must be present with these values.
    pub(crate) cookies: Vec<(String, String)>,
}

impl Conditions {
    /// How many conditions the route states; more beat fewer.
    pub(crate) fn count(&self) -> usize {
        usize::from(!self.hosts.is_empty())
            + usize::from(!matches!(self.path, PathMatch::Any))
            + usize::from(!self.methods.is_empty())
            + self.headers.len()
            + self.query.len()
            + self.cookies.len()
    }

    fn host_rank(&self) -> usize {
        self.hosts.iter().map(HostPattern::rank).max().unwrap_or(0)
    }

    /// Whether the conditions other than host and path hold; the first failing one is named.
    pub(crate) fn check_rest(&self, req: &RequestView<'_>) -> Result<(), &'static str> {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return Err("method");
        }
        for (name, value) in &self.headers {
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return Err("headers");
            }
        }
        for (name, value) in &self.cookies {
            if crate::view::cookie(req.headers, name) != Some(value.as_str()) {
                return Err("cookies");
            }
        }
        if !self.query.is_empty() {
            let query = req.query.unwrap_or("");
            for (name, value) in &self.query {
                if !query_pairs(query).any(|(k, v)| k == *name && v == *value) {
                    return Err("query");
                }
            }
        }
        Ok(())
    }

    /// Whether every condition holds.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(req.host)))
            && self.path.matches(req.path)
            && self.check_rest(req).is_ok()
    }
}

/// An error building a table: the route index and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub(crate) struct TableError {
    /// Index of the route (in the order given to [`RouteTable::build`]).
    pub(crate) route: usize,
    /// What is wrong.
    #[source]
    pub(crate) problem: TableProblem,
}

/// What keeps a route out of the table.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TableProblem {
    /// A path template the router refuses (it conflicts with another, or is malformed).
    #[error("path template `{template}` cannot be routed: {source}")]
    Template {
        /// The template as written.
        template: String,
        /// What the router found.
        #[source]
        source: matchit::InsertError,
    },
    /// A path regex that does not compile.
    #[error("invalid path regex: {0}")]
    Regex(#[source] regex::Error),
}

#[derive(Debug, Default)]
struct Candidates {
    exact: HashMap<String, Vec<usize>>,
    templates: matchit::Router<Vec<usize>>,
    template_paths: Vec<(String, Vec<usize>)>,
    prefixes: Vec<(String, usize)>,
    regexes: Option<(RegexSet, Vec<usize>)>,
    any: Vec<usize>,
}

/// The compiled routes of one listener.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    conditions: Vec<Conditions>,
    exact_hosts: HashMap<String, Candidates>,
    wildcard_hosts: HashMap<String, Candidates>,
    any_host: Candidates,
}

impl RouteTable {
    /// Builds a table over `routes`, whose positions are the indexes [`RouteTable::find`]
    /// returns. Routes earlier in the list win ties.
    pub(crate) fn build(routes: Vec<Conditions>) -> Result<Self, Vec<TableError>> {
        let mut errors = Vec::new();
        let mut exact_names: Vec<&str> = Vec::new();
        let mut wildcard_suffixes: Vec<&str> = Vec::new();
        for cond in &routes {
            for host in &cond.hosts {
                match host {
                    HostPattern::Exact(name) => exact_names.push(name),
                    HostPattern::Suffix(suffix) => wildcard_suffixes.push(suffix),
                }
            }
        }
        let host_matches = |cond: &Conditions, host: &str| {
            cond.hosts.is_empty() || cond.hosts.iter().any(|h| h.matches(host))
        };
        let mut exact_hosts = HashMap::new();
        for name in &exact_names {
            let members = (0..routes.len()).filter(|&i| host_matches(&routes[i], name));
            exact_hosts.insert(
                (*name).to_owned(),
                Candidates::build(&routes, members.collect(), &mut errors),
            );
        }
        let mut wildcard_hosts = HashMap::new();
        for suffix in &wildcard_suffixes {
            // Every name under this suffix also matches every shorter wildcard it ends with.
            let members = (0..routes.len()).filter(|&i| {
                let cond = &routes[i];
                cond.hosts.is_empty()
                    || cond.hosts.iter().any(|h| match h {
                        HostPattern::Suffix(other) => suffix.ends_with(other.as_str()),
                        HostPattern::Exact(_) => false,
                    })
            });
            wildcard_hosts.insert(
                (*suffix).to_owned(),
                Candidates::build(&routes, members.collect(), &mut errors),
            );
        }
        let any_members = (0..routes.len()).filter(|&i| routes[i].hosts.is_empty());
        let any_host = Candidates::build(&routes, any_members.collect(), &mut errors);
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.route);
            // Each host table builds the routes without a host again: one error per route.
            errors.dedup_by(|a, b| a.route == b.route && a.to_string() == b.to_string());
            return Err(errors);
        }
        Ok(RouteTable {
            conditions: routes,
            exact_hosts,
            wildcard_hosts,
            any_host,
        })
    }

    /// The index of the most specific route that matches, if any.
    pub(crate) fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        self.candidates(req.host).find(&self.conditions, req)
    }

    /// The conditions of route `index`.
    pub(crate) fn conditions(&self, index: usize) -> &Conditions {
        &self.conditions[index]
    }

    fn candidates(&self, host: &str) -> &Candidates {
        if let Some(c) = self.exact_hosts.get(host) {
            return c;
        }
        if !self.wildcard_hosts.is_empty() {
            // Longest suffix first: `.b.example.com` before `.example.com`.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(c) = self.wildcard_hosts.get(suffix) {
                    return c;
                }
                rest = &rest[dot + 1..];
            }
        }
        &self.any_host
    }
}

impl Candidates {
    fn build(routes: &[Conditions], mut members: Vec<usize>, errors: &mut Vec<TableError>) -> Self {
        // Order for ties: more conditions, then a more specific host, then file order.
        members.sort_by_key(|&i| {
            let cond = &routes[i];
            (
                std::cmp::Reverse(cond.count()),
                std::cmp::Reverse(cond.host_rank()),
                i,
            )
        });
        let mut out = Candidates::default();
        let mut regex_patterns = Vec::new();
        let mut regex_routes = Vec::new();
        for &i in &members {
            match &routes[i].path {
                PathMatch::Any => out.any.push(i),
                PathMatch::Exact(p) => out.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Template(t) => {
                    match out.template_paths.iter_mut().find(|(p, _)| p == t) {
                        Some((_, list)) => list.push(i),
                        None => out.template_paths.push((t.clone(), vec![i])),
                    }
                }
                PathMatch::Prefix(p) => out.prefixes.push((p.clone(), i)),
                PathMatch::Regex(r) => {
                    regex_patterns.push(r.as_str().to_owned());
                    regex_routes.push(i);
                }
            }
        }
        for (template, list) in &out.template_paths {
            if let Err(err) = out.templates.insert(template.as_str(), list.clone()) {
                errors.push(TableError {
                    route: list[0],
                    problem: TableProblem::Template {
                        template: template.clone(),
                        source: err,
                    },
                });
            }
        }
        // Longest prefix first; the sort is stable, so ties keep the order above.
        out.prefixes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if !regex_patterns.is_empty() {
            match RegexSet::new(&regex_patterns) {
                Ok(set) => out.regexes = Some((set, regex_routes)),
                Err(err) => errors.push(TableError {
                    route: regex_routes[0],
                    problem: TableProblem::Regex(err),
                }),
            }
        }
        out
    }

    fn find(&self, conditions: &[Conditions], req: &RequestView<'_>) -> Option<usize> {
        let pass = |i: &&usize| conditions[**i].check_rest(req).is_ok();
        if let Some(list) = self.exact.get(req.path)
            && let Some(&i) = list.iter().find(pass)
        {
            return Some(i);
        }
        if !self.template_paths.is_empty()
            && let Ok(m) = self.templates.at(req.path)
            && let Some(&i) = m.value.iter().find(pass)
        {
            return Some(i);
        }
        if let Some((_, i)) = self
            .prefixes
            .iter()
            .find(|(p, i)| prefix_matches(p, req.path) && pass(&i))
        {
            return Some(*i);
        }
        if let Some((set, routes)) = &self.regexes {
            let matched = set.matches(req.path);
            if matched.matched_any()
                && let Some(i) = matched.iter().map(|k| &routes[k]).find(pass)
            {
                return Some(*i);
            }
        }
        self.any.iter().find(pass).copied()
    }
}

#[cfg(test)]
mod tests;
