//! Config files: reading, `${ENV}` substitution, and the typed [`Spec`].
//!
//! `load` turns a file into a [`Spec`] or into *every* problem it can find, each as a
//! [`Diagnostic`] printed `FILE:LINE:COL: message`. Checks that need the whole file (names,
//! references) happen later, in `runtime::compile`, with the same diagnostics.

pub mod de;
pub mod node;
pub mod spec;
pub mod units;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

pub use de::At;
pub use node::Pos;
pub use spec::Spec;

use node::{Node, Value};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the user named it.
    pub file: String,
    /// Where in the file.
    pub pos: Pos,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub struct Diagnostics {
    file: String,
    /// What was found so far.
    pub list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty list for `file`.
    pub fn new(file: impl Into<String>) -> Self {
        Diagnostics {
            file: file.into(),
            list: Vec::new(),
        }
    }

    /// Records a problem at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.list.push(Diagnostic {
            file: self.file.clone(),
            pos,
            message: message.into(),
        });
    }

    /// The file these diagnostics are about.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// `Ok(value)` if nothing was recorded, else every diagnostic in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, Vec<Diagnostic>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            self.list.sort_by_key(|d| d.pos);
            self.list.dedup();
            Err(self.list)
        }
    }

    fn take<T: DeserializeOwned>(&mut self, node: &Node) -> Option<T> {
        match de::from_node(node) {
            Ok(value) => Some(value),
            Err(err) => {
                self.error(err.pos.unwrap_or(node.pos), err.message);
                None
            }
        }
    }
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Spec, Vec<Diagnostic>> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&file, &text, &|name| std::env::var(name).ok()),
        Err(err) => Err(vec![Diagnostic {
            file,
            pos: Pos { line: 0, col: 0 },
            message: format!("cannot read the config file: {err}"),
        }]),
    }
}

/// Checks config `text`, naming it `file` in diagnostics; `env` answers `${NAME}`.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Spec, Vec<Diagnostic>> {
    let mut diags = Diagnostics::new(file);
    let mut root = match node::parse(text) {
        Ok(root) => root,
        Err((pos, message)) => {
            diags.error(pos, message);
            return diags.finish(Spec::default());
        }
    };
    substitute_env(&mut root, env, &mut diags);

    let mut spec = Spec::default();
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
    for (key, value) in entries {
        match key.name.as_str() {
            "workers" => spec.workers = diags.take(value).unwrap_or_default(),
            "drain_timeout" => {
                if let Some(t) = diags.take(value) {
                    spec.drain_timeout = t;
                }
            }
            "admin" => spec.admin = diags.take(value),
            "access_log" => spec.access_log = diags.take(value).unwrap_or_default(),
            "listeners" => spec.listeners = take_list(&mut diags, value),
            "routes" => spec.routes = take_list(&mut diags, value),
            "plugins" => spec.plugins = take_list(&mut diags, value),
            "consumers" => spec.consumers = take_list(&mut diags, value),
            "upstreams" => match &value.value {
                Value::Map(upstreams) => {
                    for (name, body) in upstreams {
                        if let Some(upstream) = diags.take(body) {
                            let name = At {
                                pos: name.pos,
                                value: name.name.clone(),
                            };
                            spec.upstreams.push((name, upstream));
                        }
                    }
                }
                Value::Null => {}
                other => diags.error(
                    value.pos,
                    format!(
                        "`upstreams` must be a mapping of names to upstreams, found {}",
                        other.kind()
                    ),
                ),
            },
            other => diags.error(
                key.pos,
                format!(
                    "unknown key `{other}`, expected one of: workers, drain_timeout, admin, \
                     access_log, listeners, routes, upstreams, plugins, consumers"
                ),
            ),
        }
    }
    diags.finish(spec)
}

/// Deserializes each item of a list on its own, so that one bad item does not hide the next.
fn take_list<T: DeserializeOwned>(diags: &mut Diagnostics, node: &Node) -> Vec<T> {
    match &node.value {
        Value::Seq(items) => items.iter().filter_map(|item| diags.take(item)).collect(),
        Value::Null => Vec::new(),
        other => {
            diags.error(node.pos, format!("expected a list, found {}", other.kind()));
            Vec::new()
        }
    }
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
}
