//! Admin API writes: the document the running config was compiled from, the edits the admin
//! API makes to it, and how a refused write names what is wrong.
//!
//! The document is the config as written (`${NAME}` references kept, key order kept), from
//! the file or from the last admin write. An edit of one route, upstream or consumer is
//! applied to it, the whole is rendered as JSON, one value a line, and that text is read
//! and compiled exactly as a file is: so each diagnostic's line names the JSON path of the
//! value at fault. The control thread applies the result as it applies a reload.

use std::path::Path;
use std::sync::Arc;

use crate::config::node::{Key, Node, Pos, Value};
use crate::config::{Diagnostic, Severity};
use crate::runtime::Snapshot;
use crate::runtime::compile::Env;

/// Where the running config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The config file (at start, SIGHUP, or a certificate change).
    File,
    /// Admin API writes since the file was last read.
    Admin,
    /// The node's file merged with the shared config in etcd (`cluster.etcd`).
    Etcd,
}

impl Origin {
    /// `file` or `admin`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Admin => "admin",
            Origin::Etcd => "etcd",
        }
    }
}

/// The document of the running config and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The config as written.
    pub(crate) document: Arc<Node>,
    /// File or admin writes.
    pub(crate) origin: Origin,
    /// Admin writes applied since the file was last read.
    pub(crate) writes: u64,
    /// The node's config file as written (in cluster mode, its node-specific sections
    /// are merged with etcd's).
    pub(crate) file: Arc<Node>,
    /// With origin `etcd`: the config key's revision in force.
    pub(crate) revision: i64,
}

impl Default for Source {
    fn default() -> Self {
        let empty = Arc::new(Node {
            pos: Pos::default(),
            value: Value::Null,
        });
        Source {
            document: Arc::clone(&empty),
            origin: Origin::File,
            writes: 0,
            file: empty,
            revision: 0,
        }
    }
}

/// A section whose items the admin API writes one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// `routes`: a list of items with a `name`.
    Routes,
    /// `upstreams`: a mapping by name.
    Upstreams,
    /// `consumers`: a list of items with a `name`.
    Consumers,
}

impl Section {
    /// The section's key in the config.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Section::Routes => "routes",
            Section::Upstreams => "upstreams",
            Section::Consumers => "consumers",
        }
    }

    /// One item of it, in words.
    pub(crate) fn item(self) -> &'static str {
        match self {
            Section::Routes => "route",
            Section::Upstreams => "upstream",
            Section::Consumers => "consumer",
        }
    }

    /// The section named `key`.
    pub(crate) fn of(key: &str) -> Option<Self> {
        match key {
            "routes" => Some(Section::Routes),
            "upstreams" => Some(Section::Upstreams),
            "consumers" => Some(Section::Consumers),
            _ => None,
        }
    }
}

/// What an admin write changes.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    /// `PUT /config`: the whole config, as YAML or JSON text.
    Whole(String),
    /// `PUT /{section}/{name}`: creates or replaces one item (its body, parsed).
    Put {
        /// Which section.
        section: Section,
        /// The item's name.
        name: String,
        /// The item as it would be written in the file.
        value: Node,
    },
    /// `DELETE /{section}/{name}`.
    Delete {
        /// Which section.
        section: Section,
        /// The item's name.
        name: String,
    },
}

/// One admin write, for the control thread.
#[derive(Debug)]
pub(crate) struct Write {
    /// The change.
    pub(crate) edit: Edit,
    /// The config hashes the write may apply to (`If-Match`; `*` is any); none: any.
    pub(crate) if_match: Option<Vec<String>>,
    /// Where the outcome goes.
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<Written, Refusal>>,
}

/// A write that applied.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The new config hash.
    pub(crate) hash: Arc<str>,
    /// Whether the item did not exist before.
    pub(crate) created: bool,
    /// What the config changed that only a restart applies.
    pub(crate) restart_required: Vec<String>,
    /// What the new config does that is likely not meant.
    pub(crate) warnings: Vec<Problem>,
}

/// One problem with a written config: where (a JSON path, or a line and column in the
/// body) and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Problem {
    /// `error` or `warning`.
    pub(crate) severity: &'static str,
    /// The JSON path of the value at fault, like `routes[3].match.path_prefix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) path: Option<String>,
    /// 1-based line in the body, when the body is the whole config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) line: Option<u32>,
    /// 1-based column in the body, with `line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) col: Option<u32>,
    /// What is wrong.
    pub(crate) message: String,
}

/// Why a write did not apply; the running config stays.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// `If-Match` named another config: someone else wrote meanwhile.
    Precondition {
        /// The hash of the config in force.
        current: Arc<str>,
    },
    /// No such item.
    NotFound(String),
    /// The item is used elsewhere: the JSON paths that use it.
    InUse {
        /// What is refused, in words.
        message: String,
        /// Where it is used.
        uses: Vec<String>,
    },
    /// The body does not fit the path (a `name` that differs, not a mapping).
    Bad(String),
    /// The new config is invalid.
    Invalid(Vec<Problem>),
    /// The new config compiled but could not be put in force (a listener did not bind).
    Apply(String),
    /// The control thread is gone (the process is stopping).
    Stopping,
    /// The cluster's etcd could not be reached or did not take the write.
    Unavailable(String),
}

/// A write ready to apply: the compiled snapshot and the document it came from.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The compiled config.
    pub(crate) snapshot: Snapshot,
    /// The config as written.
    pub(crate) document: Node,
    /// Whether the item did not exist before.
    pub(crate) created: bool,
    /// The new config's warnings.
    pub(crate) warnings: Vec<Problem>,
}

/// The queue from the admin API to the control thread.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Where the admin API sends writes.
    pub(crate) tx: tokio::sync::mpsc::Sender<Write>,
    /// Taken once by the control thread.
    pub(crate) rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Write>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        Queue {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the config file at `path` once and compiles it: the snapshot and the document.
pub(crate) fn load_file(path: &Path, env: Env<'_>) -> Result<(Snapshot, Node), Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Err(vec![Diagnostic {
                file,
                pos: Pos { line: 0, col: 0 },
                severity: Severity::Error,
                message: format!("cannot read the config file: {err}"),
            }]);
        }
    };
    let (spec, errors) = crate::config::read_str(&file, &text, &env_var);
    let snap = crate::runtime::compile::compile_read(spec, errors, &file, env)?;
    let document = crate::config::node::parse(&text).map_err(|err| {
        vec![Diagnostic {
            file: file.clone(),
            pos: err.pos,
            severity: Severity::Error,
            message: err.to_string(),
        }]
    })?;
    Ok((snap, document))
}

/// Compiles a document (the admin API's, after a certificate changed, say) against `path`'s
/// folder; problems carry their JSON path.
pub(crate) fn compile_document(
    document: &Node,
    path: &Path,
    env: Env<'_>,
) -> Result<(Snapshot, Vec<Problem>), Vec<Problem>> {
    let (text, paths) = render(document);
    let file = path.display().to_string();
    let (spec, errors) = crate::config::read_str(&file, &text, &env_var);
    let located = |list: &[Diagnostic]| -> Vec<Problem> {
        list.iter()
            .map(|d| Problem {
                severity: severity(d.severity),
                path: usize::try_from(d.pos.line)
                    .ok()
                    .and_then(|line| line.checked_sub(1))
                    .and_then(|i| paths.get(i))
                    .map(|p| {
                        if p.is_empty() {
                            "$".to_owned()
                        } else {
                            p.clone()
                        }
                    }),
                line: None,
                col: None,
                message: d.message.clone(),
            })
            .collect()
    };
    match crate::runtime::compile::compile_read(spec, errors, &file, env) {
        Ok(snap) => {
            let warnings = located(&snap.warnings);
            Ok((snap, warnings))
        }
        Err(list) => Err(located(&list)),
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// Problems of a whole config written as `PUT /config`'s body, at their line and column,
/// with the JSON path of the value there when the body parsed.
fn body_problems(list: &[Diagnostic], body: Option<&Node>) -> Vec<Problem> {
    let mut spots = Vec::new();
    if let Some(body) = body {
        spots_of(body, "", &mut spots);
        spots.sort_by_key(|(pos, _)| *pos);
    }
    list.iter()
        .map(|d| {
            let path = spots
                .iter()
                .rev()
                .find(|(pos, _)| *pos <= d.pos)
                .map(|(_, p)| {
                    if p.is_empty() {
                        "$".to_owned()
                    } else {
                        p.clone()
                    }
                });
            let known = d.pos.line > 0;
            Problem {
                severity: severity(d.severity),
                path: path.filter(|_| known),
                line: known.then_some(d.pos.line),
                col: known.then_some(d.pos.col),
                message: d.message.clone(),
            }
        })
        .collect()
}

/// Every key and value of `node` with its position and JSON path.
fn spots_of(node: &Node, path: &str, out: &mut Vec<(Pos, String)>) {
    out.push((node.pos, path.to_owned()));
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                spots_of(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                let inner = join(path, &key.name);
                out.push((key.pos, inner.clone()));
                spots_of(value, &inner, out);
            }
        }
        _ => {}
    }
}

/// Compiles what `edit` makes of `base`, checking `If-Match` against `current` first. Never
/// changes live state.
pub(crate) fn prepare(
    current: &Snapshot,
    base: &Node,
    edit: &Edit,
    if_match: Option<&[String]>,
    path: &Path,
    env: Env<'_>,
) -> Result<Prepared, Refusal> {
    if let Some(tags) = if_match
        && !tags.iter().any(|t| t == "*" || **t == *current.hash)
    {
        return Err(Refusal::Precondition {
            current: Arc::clone(&current.hash),
        });
    }
    let (snapshot, document, created, warnings) = match edit {
        Edit::Whole(text) => {
            let file = path.display().to_string();
            let parsed = crate::config::node::parse(text);
            let (spec, errors) = crate::config::read_str(&file, text, &env_var);
            let body = parsed.as_ref().ok();
            match crate::runtime::compile::compile_read(spec, errors, &file, env) {
                Ok(snap) => {
                    let warnings = body_problems(&snap.warnings, body);
                    let Ok(document) = parsed else {
                        return Err(Refusal::Bad("the body does not parse".into()));
                    };
                    (snap, document, false, warnings)
                }
                Err(list) => return Err(Refusal::Invalid(body_problems(&list, body))),
            }
        }
        Edit::Put { .. } | Edit::Delete { .. } => {
            let (document, created) = apply_edit(base, edit)?;
            let (snap, warnings) =
                compile_document(&document, path, env).map_err(Refusal::Invalid)?;
            (snap, document, created, warnings)
        }
    };
    if snapshot.admin.is_none() {
        return Err(Refusal::Invalid(vec![Problem {
            severity: "error",
            path: Some("admin".into()),
            line: None,
            col: None,
            message: "an admin write must keep the `admin` section: without it the admin API \
                      would go on listening with no token"
                .into(),
        }]));
    }
    Ok(Prepared {
        snapshot,
        document,
        created,
        warnings,
    })
}

fn node(value: Value) -> Node {
    Node {
        pos: Pos::default(),
        value,
    }
}

fn key(name: &str) -> Key {
    Key {
        pos: Pos::default(),
        name: name.to_owned(),
    }
}

/// The `name` of a list item, if it has one.
fn name_of(item: &Node) -> Option<&str> {
    item.as_map()?
        .iter()
        .find(|(k, _)| k.name == "name")
        .and_then(|(_, v)| match &v.value {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The document after `edit` (a `Put` or `Delete`), and whether a `Put` created its item.
pub(crate) fn apply_edit(base: &Node, edit: &Edit) -> Result<(Node, bool), Refusal> {
    let (section, name) = match edit {
        Edit::Put { section, name, .. } | Edit::Delete { section, name } => (*section, name),
        Edit::Whole(_) => return Err(Refusal::Bad("not an item edit".into())),
    };
    let mut doc = base.clone();
    if matches!(doc.value, Value::Null) {
        doc.value = Value::Map(Vec::new());
    }
    let Value::Map(root) = &mut doc.value else {
        return Err(Refusal::Bad("the running config is not a mapping".into()));
    };
    if let Edit::Delete { .. } = edit
        && section == Section::Upstreams
    {
        let mut uses = Vec::new();
        for (k, v) in root.iter() {
            if k.name != "upstreams" {
                uses_of(v, &k.name, name, &mut uses);
            }
        }
        if !uses.is_empty() {
            return Err(Refusal::InUse {
                message: format!(
                    "upstream `{name}` is in use at {}; change those first",
                    uses.join(", ")
                ),
                uses,
            });
        }
    }
    let at = match root.iter().position(|(k, _)| k.name == section.key()) {
        Some(at) => at,
        None => {
            let empty = match section {
                Section::Upstreams => Value::Map(Vec::new()),
                _ => Value::Seq(Vec::new()),
            };
            root.push((key(section.key()), node(empty)));
            root.len() - 1
        }
    };
    let entry = &mut root[at].1;
    if matches!(entry.value, Value::Null) {
        entry.value = match section {
            Section::Upstreams => Value::Map(Vec::new()),
            _ => Value::Seq(Vec::new()),
        };
    }
    let missing = || Refusal::NotFound(format!("no {} named `{name}`", section.item()));
    match (&mut entry.value, edit) {
        (Value::Map(items), Edit::Put { value, .. }) => {
            match items.iter_mut().find(|(k, _)| k.name == *name) {
                Some((_, old)) => {
                    *old = value.clone();
                    Ok((doc, false))
                }
                None => {
                    items.push((key(name), value.clone()));
                    Ok((doc, true))
                }
            }
        }
        (Value::Map(items), Edit::Delete { .. }) => {
            let before = items.len();
            items.retain(|(k, _)| k.name != *name);
            if items.len() == before {
                return Err(missing());
            }
            Ok((doc, false))
        }
        (Value::Seq(items), Edit::Put { value, .. }) => {
            let mut value = value.clone();
            let Value::Map(fields) = &mut value.value else {
                return Err(Refusal::Bad(format!(
                    "a {} is a mapping, found {}",
                    section.item(),
                    value.value.kind()
                )));
            };
            match fields.iter().find(|(k, _)| k.name == "name") {
                Some((_, given)) => match &given.value {
                    Value::Str(given) if given == name => {}
                    other => {
                        let shown = match other {
                            Value::Str(s) => format!("`{s}`"),
                            other => other.kind().to_owned(),
                        };
                        return Err(Refusal::Bad(format!(
                            "the body's `name` is {shown}, but the path names `{name}`"
                        )));
                    }
                },
                None => fields.insert(0, (key("name"), node(Value::Str(name.clone())))),
            }
            match items.iter_mut().find(|item| name_of(item) == Some(name)) {
                Some(old) => {
                    *old = value;
                    Ok((doc, false))
                }
                None => {
                    items.push(value);
                    Ok((doc, true))
                }
            }
        }
        (Value::Seq(items), Edit::Delete { .. }) => {
            let before = items.len();
            items.retain(|item| name_of(item) != Some(name));
            if items.len() == before {
                return Err(missing());
            }
            Ok((doc, false))
        }
        (other, _) => Err(Refusal::Bad(format!(
            "`{}` in the running config is {}",
            section.key(),
            other.kind()
        ))),
    }
}

/// The JSON paths below `node` (at `path`) where a key `upstream` names `name`.
fn uses_of(node: &Node, path: &str, name: &str, out: &mut Vec<String>) {
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                uses_of(item, &format!("{path}[{i}]"), name, out);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let inner = join(path, &k.name);
                if k.name == "upstream" && matches!(&v.value, Value::Str(s) if s == name) {
                    out.push(inner);
                } else {
                    uses_of(v, &inner, name, out);
                }
            }
        }
        _ => {}
    }
}

/// `path.key`, or `path["key"]` for a key that is not a plain word.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plain, path.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[{}]", serde_json::to_string(key).unwrap_or_default()),
    }
}

/// `document` as JSON text, one value a line, and the JSON path of each line's value.
pub(crate) fn render(document: &Node) -> (String, Vec<String>) {
    let mut out = Render {
        text: String::new(),
        paths: vec![String::new()],
    };
    out.value(document, "", 0);
    out.text.push('\n');
    (out.text, out.paths)
}

struct Render {
    text: String,
    paths: Vec<String>,
}

impl Render {
    fn line(&mut self, path: &str, indent: usize) {
        self.text.push('\n');
        self.paths.push(path.to_owned());
        for _ in 0..indent {
            self.text.push_str("  ");
        }
    }

    fn value(&mut self, node: &Node, path: &str, indent: usize) {
        match &node.value {
            Value::Null => self.text.push_str("null"),
            Value::Bool(b) => self.text.push_str(if *b { "true" } else { "false" }),
            Value::UInt(n) => self.text.push_str(&n.to_string()),
            Value::Int(n) => self.text.push_str(&n.to_string()),
            Value::Float(f) if f.is_finite() => {
                self.text
                    .push_str(&serde_json::to_string(f).unwrap_or_else(|_| "0".into()));
            }
            // YAML, which the reader takes: JSON has no word for these.
            Value::Float(f) if f.is_nan() => self.text.push_str(".nan"),
            Value::Float(f) if *f > 0.0 => self.text.push_str(".inf"),
            Value::Float(_) => self.text.push_str("-.inf"),
            Value::Str(s) => self
                .text
                .push_str(&serde_json::to_string(s).unwrap_or_default()),
            Value::Seq(items) if items.is_empty() => self.text.push_str("[]"),
            Value::Map(entries) if entries.is_empty() => self.text.push_str("{}"),
            Value::Seq(items) => {
                self.text.push('[');
                for (i, item) in items.iter().enumerate() {
                    let inner = format!("{path}[{i}]");
                    self.line(&inner, indent + 1);
                    self.value(item, &inner, indent + 1);
                    if i + 1 < items.len() {
                        self.text.push(',');
                    }
                }
                self.line(path, indent);
                self.text.push(']');
            }
            Value::Map(entries) => {
                self.text.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    let inner = join(path, &k.name);
                    self.line(&inner, indent + 1);
                    self.text
                        .push_str(&serde_json::to_string(&k.name).unwrap_or_default());
                    self.text.push_str(": ");
                    self.value(v, &inner, indent + 1);
                    if i + 1 < entries.len() {
                        self.text.push(',');
                    }
                }
                self.line(path, indent);
                self.text.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse;

    const BASE: &str = "admin: { listen: 127.0.0.1:0 }\nlisteners: [ { name: web, bind: 127.0.0.1:0 } ]\nroutes:\n  - name: a\n    match: { path_prefix: /a }\n    upstream: api\nupstreams:\n  api: { targets: [ { address: 127.0.0.1:1 } ] }\n";

    #[test]
    fn rendering_keeps_the_document_and_names_each_line() {
        let doc = parse(BASE).unwrap();
        let (text, paths) = render(&doc);
        let again = parse(&text).unwrap();
        assert_eq!(render(&again).0, text);
        let line = text
            .lines()
            .position(|l| l.contains("\"path_prefix\""))
            .unwrap();
        assert_eq!(paths[line], "routes[0].match.path_prefix");
        let line = text
            .lines()
            .position(|l| l.contains("\"address\""))
            .unwrap();
        assert_eq!(paths[line], "upstreams.api.targets[0].address");
    }

    #[test]
    fn put_creates_or_replaces_and_checks_the_name() {
        let doc = parse(BASE).unwrap();
        let put = |name: &str, body: &str| Edit::Put {
            section: Section::Routes,
            name: name.into(),
            value: parse(body).unwrap(),
        };
        let (next, created) = apply_edit(&doc, &put("b", "respond: { status: 204 }")).unwrap();
        assert!(created);
        let (text, _) = render(&next);
        assert!(text.contains("\"name\": \"b\""), "{text}");
        let (_, created) = apply_edit(&next, &put("a", "respond: { status: 204 }")).unwrap();
        assert!(!created);
        assert!(matches!(
            apply_edit(&doc, &put("a", "{ name: z, respond: { status: 204 } }")),
            Err(Refusal::Bad(_))
        ));
    }

    #[test]
    fn a_used_upstream_is_not_deleted() {
        let doc = parse(BASE).unwrap();
        let delete = Edit::Delete {
            section: Section::Upstreams,
            name: "api".into(),
        };
        match apply_edit(&doc, &delete) {
            Err(Refusal::InUse { uses, .. }) => assert_eq!(uses, vec!["routes[0].upstream"]),
            other => panic!("{other:?}"),
        }
        let missing = Edit::Delete {
            section: Section::Consumers,
            name: "bob".into(),
        };
        assert!(matches!(
            apply_edit(&doc, &missing),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn errors_carry_their_json_path() {
        let doc = parse(BASE).unwrap();
        let edit = Edit::Put {
            section: Section::Routes,
            name: "b".into(),
            value: parse("{ match: { path_prefix: nope }, upstream: api }").unwrap(),
        };
        let (next, _) = apply_edit(&doc, &edit).unwrap();
        let problems = crate::runtime::compile::with_test_env(|env| {
            compile_document(&next, Path::new("portico.yaml"), env).unwrap_err()
        });
        assert!(
            problems
                .iter()
                .any(|p| p.path.as_deref() == Some("routes[1].match.path_prefix")),
            "{problems:?}"
        );
    }
}
