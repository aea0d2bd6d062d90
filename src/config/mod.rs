//! Config files: reading, `${ENV}` substitution, and the typed [`Spec`].
//!
//! `load` turns a file into a [`Spec`] or into *every* problem it can find, each as a
//! [`Diagnostic`] printed `FILE:LINE:COL: message`. Checks that need the whole file (names,
//! references) happen later, in `runtime::compile`, with the same diagnostics.

pub(crate) mod aggregate;
pub(crate) mod de;
pub(crate) mod node;
#[cfg(test)]
mod reference;
pub(crate) mod schema;
pub(crate) mod secret;
pub(crate) mod spec;
mod spec_admission;
pub(crate) mod spec_cache;
pub(crate) mod spec_compression;
pub(crate) mod spec_forward_auth;
pub(crate) mod spec_introspection;
pub(crate) mod spec_oidc;
mod spec_proxy_protocol;
pub(crate) mod spec_static;
mod spec_transcode;
mod spec_trusted;
mod spec_udp;
pub(crate) mod suggest;
pub(crate) mod units;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

pub(crate) use de::At;
pub(crate) use node::Pos;
pub(crate) use spec::Spec;

use de::{DeErrorKind, Step};
use node::{Node, Value};

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Severity {
    /// The config is refused.
    Error,
    /// The config works, but likely not as meant (`validate --strict` refuses it).
    Warning,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnostic {
    /// The file, as the user named it.
    pub(crate) file: String,
    /// Where in the file.
    pub(crate) pos: Pos,
    /// Error or warning.
    pub(crate) severity: Severity,
    /// What is wrong, in words a user can act on.
    pub(crate) message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => write!(f, "{}:{}: {}", self.file, self.pos, self.message),
            Severity::Warning => write!(f, "{}:{}: warning: {}", self.file, self.pos, self.message),
        }
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    file: String,
    /// The errors found so far.
    pub(crate) list: Vec<Diagnostic>,
    /// The warnings found so far.
    pub(crate) warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty list for `file`.
    pub(crate) fn new(file: impl Into<String>) -> Self {
        Diagnostics {
            file: file.into(),
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records a problem at `pos`.
    pub(crate) fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            pos,
            severity: Severity::Error,
            message: message.into(),
        });
    }

    /// Records a warning at `pos`.
    pub(crate) fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            file: self.file.clone(),
            pos,
            severity: Severity::Warning,
            message: message.into(),
        });
    }

    /// The file these diagnostics are about.
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// `Ok` with `value` and the warnings if no error was recorded, else every error and
    /// warning; both in file order.
    pub(crate) fn finish<T>(self, value: T) -> Result<(T, Vec<Diagnostic>), Vec<Diagnostic>> {
        let Diagnostics {
            mut list,
            mut warnings,
            ..
        } = self;
        sort_diagnostics(&mut warnings);
        if list.is_empty() {
            Ok((value, warnings))
        } else {
            list.extend(warnings);
            sort_diagnostics(&mut list);
            Err(list)
        }
    }

    fn take<T: DeserializeOwned>(&mut self, node: &Node) -> Option<T> {
        self.take_lenient(node).map(|(value, _)| value)
    }

    /// Deserializes `T` from `node`. On an error it reports it, drops the entry at fault and
    /// tries again with what is left, so that one bad key does not hide what the rest of the
    /// item says (and what `compile` finds wrong with it). The flag is `true` when something
    /// was dropped; `None` when nothing usable is left.
    fn take_lenient<T: DeserializeOwned>(&mut self, node: &Node) -> Option<(T, bool)> {
        let mut current = Cow::Borrowed(node);
        let mut removed: Vec<Vec<Step>> = Vec::new();
        // Unknown keys with the key they were likely meant to be, by the mapping they are in.
        let mut mistyped: Vec<(Vec<Step>, &'static str)> = Vec::new();
        // Each round drops one node, so there are at most as many rounds as nodes.
        for _ in 0..=count_nodes(node) {
            let err = match de::from_node::<T>(&current) {
                Ok(value) => return Some((value, !removed.is_empty())),
                Err(err) => err,
            };
            // An error that only exists because of what was dropped is not the user's, and a
            // key missing next to an unknown key that was taken for it is the same mistake.
            let ours = match &err.kind {
                DeErrorKind::MissingKey(key) => {
                    let mut path = err.path.clone();
                    path.push(Step::Key((*key).to_owned()));
                    removed.contains(&path)
                        || mistyped
                            .iter()
                            .any(|(at, near)| *at == err.path && near == key)
                }
                _ => removed
                    .iter()
                    .any(|r| r.len() > err.path.len() && r.starts_with(&err.path)),
            };
            if !ours {
                self.error(err.pos.unwrap_or(node.pos), err.to_string());
            }
            if let DeErrorKind::UnknownKey { key, expected } = &err.kind
                && let Some(near) = suggest::closest(key, expected.iter().copied())
            {
                let parent = err.path[..err.path.len().saturating_sub(1)].to_vec();
                mistyped.push((parent, near));
            }
            if err.path.is_empty() || !remove(current.to_mut(), &err.path) {
                return None;
            }
            removed.push(err.path);
        }
        None
    }
}

/// Puts diagnostics in file order (an error before a warning at the same place), once each.
pub(crate) fn sort_diagnostics(list: &mut Vec<Diagnostic>) {
    list.sort_by_key(|d| (d.pos, d.severity));
    list.dedup();
}

fn count_nodes(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(count_nodes).sum(),
        Value::Map(entries) => entries.iter().map(|(_, v)| count_nodes(v)).sum(),
        _ => 0,
    }
}

/// Removes the node at `path` below `node`; `false` when there is none.
fn remove(node: &mut Node, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = node;
    for step in parents {
        let next = match (&mut node.value, step) {
            (Value::Map(entries), Step::Key(key)) => entries
                .iter_mut()
                .find(|(k, _)| k.name == *key)
                .map(|(_, v)| v),
            (Value::Seq(items), Step::Index(i)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (&mut node.value, last) {
        (Value::Map(entries), Step::Key(key)) => {
            let before = entries.len();
            entries.retain(|(k, _)| k.name != *key);
            entries.len() < before
        }
        (Value::Seq(items), Step::Index(i)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        _ => false,
    }
}

/// What [`read_str`] could not read in full, so that `compile` neither reports it a second
/// time nor reports what only follows from its absence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Unparsed {
    /// Listeners whose entry did not parse: routes naming them are not reported.
    pub(crate) listeners: Vec<String>,
    /// Upstreams whose entry did not parse: references to them are not reported.
    pub(crate) upstreams: Vec<String>,
    /// Consumers whose entry did not parse.
    pub(crate) consumers: Vec<String>,
    /// Sections (`listeners`, `upstreams`, `consumers`) that were not a list or mapping at
    /// all: no reference into them is checked.
    pub(crate) sections: Vec<&'static str>,
    /// The name positions of items that parsed only in part: errors there are about the item
    /// as a whole (like "needs exactly one action") and may be about what was dropped.
    pub(crate) partial: Vec<Pos>,
}

impl Unparsed {
    /// Whether `name` in `section` was declared but could not be read.
    pub(crate) fn declares(&self, section: &str, name: &str) -> bool {
        let names = match section {
            "listeners" => &self.listeners,
            "upstreams" => &self.upstreams,
            "consumers" => &self.consumers,
            _ => return false,
        };
        self.sections.contains(&section) || names.iter().any(|n| n == name)
    }
}

/// Reads the file at `path` as far as it goes: the spec of what parsed, and every error.
pub(crate) fn read(path: &Path) -> (Spec, Vec<Diagnostic>) {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => read_str(&file, &text, &|name| std::env::var(name).ok()),
        Err(err) => (
            Spec::default(),
            vec![Diagnostic {
                file,
                pos: Pos { line: 0, col: 0 },
                severity: Severity::Error,
                message: format!("cannot read the config file: {err}"),
            }],
        ),
    }
}

/// Checks config `text`, naming it `file` in diagnostics; `env` answers `${NAME}`.
pub(crate) fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, Vec<Diagnostic>> {
    strict(read_str(file, text, env))
}

fn strict((spec, errors): (Spec, Vec<Diagnostic>)) -> Result<Spec, Vec<Diagnostic>> {
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// Reads config `text` as far as it goes: every item, and every key of an item, that parses
/// is kept (and recorded in [`Spec::unparsed`] when something around it was not), and every
/// error is returned in file order.
pub(crate) fn read_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Spec, Vec<Diagnostic>) {
    let mut diags = Diagnostics::new(file);
    let mut spec = Spec::default();
    let mut root = match node::parse(text) {
        Ok(root) => root,
        Err(err) => {
            diags.error(err.pos, err.to_string());
            return (spec, diags.list);
        }
    };
    substitute_env(&mut root, env, &mut diags);

    let entries = match &root.value {
        Value::Map(entries) => entries.as_slice(),
        Value::Null => &[],
        other => {
            diags.error(
                root.pos,
                format!("the config must be a mapping, found {}", other.kind()),
            );
            &[]
        }
    };
    let mut unparsed = Unparsed::default();
    for (key, value) in entries {
        match key.name.as_str() {
            "workers" => spec.workers = diags.take(value).unwrap_or_default(),
            "pin_workers" => spec.pin_workers = diags.take(value).unwrap_or_default(),
            "drain_timeout" => {
                if let Some(t) = diags.take(value) {
                    spec.drain_timeout = t;
                }
            }
            "admin" => {
                spec.admin = diags.take_lenient(value).map(|(admin, partial)| {
                    let admin: spec::AdminSpec = admin;
                    if partial {
                        // A mistyped `token` must not also read as "needs a token".
                        unparsed.partial.push(admin.listen.pos);
                    }
                    admin
                })
            }
            "access_log" => spec.access_log = diags.take(value).unwrap_or_default(),
            "upgrade" => spec.upgrade = diags.take(value),
            "trusted_proxies" => spec.trusted_proxies = diags.take(value),
            "debug" => spec.debug = diags.take(value),
            "tracing" => spec.tracing = diags.take(value),
            "cluster" => spec.cluster = diags.take(value),
            "listeners" => {
                let list = take_list(&mut diags, value, "listeners", &mut unparsed);
                for item in list {
                    match item {
                        Ok((listener, partial)) => {
                            let listener: spec::ListenerSpec = listener;
                            if partial {
                                unparsed.partial.push(listener.name.pos);
                            }
                            spec.listeners.push(listener);
                        }
                        Err(name) => unparsed.listeners.extend(name),
                    }
                }
            }
            "routes" => {
                let list = take_list(&mut diags, value, "routes", &mut unparsed);
                for (route, partial) in list.into_iter().flatten() {
                    let route: spec::RouteSpec = route;
                    if partial {
                        unparsed.partial.push(route.name.pos);
                    }
                    spec.routes.push(route);
                }
            }
            "plugins" => {
                let list = take_list(&mut diags, value, "plugins", &mut unparsed);
                spec.plugins = list.into_iter().flatten().map(|(p, _)| p).collect();
            }
            "consumers" => {
                let list = take_list(&mut diags, value, "consumers", &mut unparsed);
                for item in list {
                    match item {
                        Ok((consumer, partial)) => {
                            let consumer: spec::ConsumerSpec = consumer;
                            if partial {
                                unparsed.partial.push(consumer.name.pos);
                            }
                            spec.consumers.push(consumer);
                        }
                        Err(name) => unparsed.consumers.extend(name),
                    }
                }
            }
            "upstreams" => match &value.value {
                Value::Map(upstreams) => {
                    for (name, body) in upstreams {
                        match diags.take_lenient(body) {
                            Some((upstream, partial)) => {
                                if partial {
                                    unparsed.partial.push(name.pos);
                                }
                                let name = At {
                                    pos: name.pos,
                                    value: name.name.clone(),
                                };
                                spec.upstreams.push((name, upstream));
                            }
                            None => unparsed.upstreams.push(name.name.clone()),
                        }
                    }
                }
                Value::Null => {}
                other => {
                    unparsed.sections.push("upstreams");
                    diags.error(
                        value.pos,
                        format!(
                            "`upstreams` must be a mapping of names to upstreams, found {}",
                            other.kind()
                        ),
                    )
                }
            },
            other => diags.error(key.pos, unknown_top_level(other)),
        }
    }
    spec.unparsed = unparsed;
    let mut errors = diags.list;
    sort_diagnostics(&mut errors);
    (spec, errors)
}

const TOP_LEVEL: &[&str] = &[
    "workers",
    "pin_workers",
    "drain_timeout",
    "admin",
    "access_log",
    "upgrade",
    "trusted_proxies",
    "debug",
    "tracing",
    "cluster",
    "listeners",
    "routes",
    "upstreams",
    "plugins",
    "consumers",
];

fn unknown_top_level(key: &str) -> String {
    match suggest::closest(key, TOP_LEVEL.iter().copied()) {
        Some(near) => format!("unknown key `{key}`: did you mean `{near}`?"),
        None => format!(
            "unknown key `{key}`, expected one of: {}",
            TOP_LEVEL.join(", ")
        ),
    }
}

/// Deserializes each item of a list on its own, so that one bad item does not hide the next.
/// An item that did not parse at all comes back as `Err` with its `name`, if it has one.
fn take_list<T: DeserializeOwned>(
    diags: &mut Diagnostics,
    node: &Node,
    section: &'static str,
    unparsed: &mut Unparsed,
) -> Vec<Result<(T, bool), Option<String>>> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .map(|item| diags.take_lenient(item).ok_or_else(|| name_of(item)))
            .collect(),
        Value::Null => Vec::new(),
        other => {
            unparsed.sections.push(section);
            diags.error(node.pos, format!("expected a list, found {}", other.kind()));
            Vec::new()
        }
    }
}

/// The `name:` of a list item, when it is a plain string.
fn name_of(item: &Node) -> Option<String> {
    item.as_map()?
        .iter()
        .find(|(k, _)| k.name == "name")
        .and_then(|(_, v)| match &v.value {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        })
}

/// Replaces `${NAME}` in every string with the environment variable NAME.
fn substitute_env(node: &mut Node, env: &dyn Fn(&str) -> Option<String>, diags: &mut Diagnostics) {
    match &mut node.value {
        Value::Str(text) if text.contains("${") => {
            let mut out = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    diags.error(node.pos, "unterminated `${` in string");
                    return;
                };
                let name = &after[..end];
                match env(name) {
                    Some(value) => out.push_str(&value),
                    None => diags.error(
                        node.pos,
                        format!("environment variable `{name}` is not set"),
                    ),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *text = out;
        }
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|item| substitute_env(item, env, diags)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, value)| substitute_env(value, env, diags)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn reports_every_error_with_position() {
        let text = "\
listeners:
  - { name: web, bind: 127.0.0.1:0, protocl: http }
  - { name: web2, bind: 127.0.0.1:0 }
routes:
  - name: a
    timeout: soon
    upstream: u
  - name: b
    upstream: u
upstreams:
  u:
    targets: [ { address: 127.0.0.1:1, weight: -1 } ]
bogus: 1
";
        let errs = load_str("f.yaml", text, &no_env).unwrap_err();
        let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].starts_with("f.yaml:2:37: unknown key `protocl`"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("f.yaml:6:14: invalid duration `soon`"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("f.yaml:12:48:"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("f.yaml:13:1: unknown key `bogus`"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn substitutes_environment() {
        let text = "admin: { listen: \"${ADDR}\" }\n";
        let env = |name: &str| (name == "ADDR").then(|| "127.0.0.1:9".to_owned());
        let spec = load_str("f", text, &env).unwrap();
        assert_eq!(spec.admin.unwrap().listen.value, "127.0.0.1:9");
        let errs = load_str("f", "admin: { listen: \"${NOPE}\" }\n", &no_env).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "f:1:18: environment variable `NOPE` is not set"
        );
    }

    #[test]
    fn keeps_what_parsed_of_a_bad_item() {
        let text = "\
listeners:
  - { name: web, bind: 127.0.0.1:0, protocol: htps }
  - { name: db, bnd: 127.0.0.1:1 }
routes:
  - { name: r, upstream: u, timeot: 5s, match: { path: /x, hostz: [a] } }
  - name: s
    upstream: u
    plugins: [ { rate_limit: { window: 1s } }, { key_auth: {} } ]
upstreams:
  u: { targets: [ { address: 127.0.0.1:1, weigth: 2 } ] }
  v: { targets: 3 }
";
        let (spec, errors) = read_str("f", text, &no_env);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "f:2:47: unknown value `htps`: did you mean `https`?",
                "f:3:17: unknown key `bnd`: did you mean `bind`?",
                "f:5:29: unknown key `timeot`: did you mean `timeout`?",
                "f:5:60: unknown key `hostz`: did you mean `hosts`?",
                "f:8:30: missing key `limit`",
                "f:10:43: unknown key `weigth`: did you mean `weight`?",
                "f:11:17: expected a list, found an integer",
            ],
            "{lines:#?}"
        );
        // The route kept its upstream and its path; the second its other plugin.
        assert_eq!(spec.routes.len(), 2);
        assert_eq!(spec.routes[0].upstream.as_ref().unwrap().value, "u");
        assert_eq!(spec.routes[0].matches.path.as_ref().unwrap().value, "/x");
        assert_eq!(spec.routes[1].plugins.len(), 1);
        // What did not parse is known by name, so references to it are not reported again.
        assert_eq!(spec.listeners.len(), 1);
        assert_eq!(spec.unparsed.listeners, ["db"]);
        assert_eq!(spec.unparsed.upstreams, ["v"]);
        assert!(spec.unparsed.declares("upstreams", "v"));
        assert_eq!(
            spec.unparsed.partial,
            [
                Pos { line: 2, col: 13 },
                Pos { line: 5, col: 13 },
                Pos { line: 6, col: 11 },
                Pos { line: 10, col: 3 },
            ]
        );
    }

    #[test]
    fn a_mistyped_admin_token_is_one_error() {
        let registry = crate::pool::Registry::default();
        let metrics = crate::observe::Metrics::new();
        let acme = crate::tls::acme::Store::default();
        let states = crate::plugins::state::PluginStates::default();
        let env = crate::runtime::compile::Env {
            registry: &registry,
            metrics: &metrics,
            acme: &acme,
            states: &states,
        };
        let text = "admin: { listen: 0.0.0.0:9901, tokn: t }\n";
        let (spec, errors) = read_str("f", text, &no_env);
        let all = crate::runtime::compile::compile_read(spec, errors, "f", env).unwrap_err();
        let lines: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["f:1:32: unknown key `tokn`: did you mean `token`?"]);
    }

    #[test]
    fn suggests_top_level_keys() {
        let errs = load_str("f", "listners: []\n", &no_env).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "f:1:1: unknown key `listners`: did you mean `listeners`?"
        );
    }
}
