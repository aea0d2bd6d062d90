//! docs/reference.md, written from the config schema: every key path with its type, default,
//! whether it is required, and what it means. A test keeps the committed file equal to what
//! the current schema gives, so the reference cannot drift from the loader.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One key of the reference.
struct Row {
    path: String,
    kind: String,
    default: String,
    required: bool,
    description: String,
}

/// Walks the schema from the root, one row per key path.
struct Walker<'a> {
    defs: &'a Map<String, Value>,
    rows: Vec<Row>,
    /// Definitions already listed, with the path they were listed under.
    listed: BTreeMap<String, String>,
}

impl<'a> Walker<'a> {
    /// The definition `$ref` points at, and its name.
    fn resolve(&self, schema: &'a Value) -> (Option<&'a str>, &'a Value) {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                (Some(name), self.defs.get(name).unwrap_or(schema))
            }
            None => (None, schema),
        }
    }

    /// `schema` without the `null` an optional key also takes.
    fn strip_null(schema: &'a Value) -> &'a Value {
        match schema.get("anyOf").and_then(Value::as_array) {
            Some(branches) if branches.len() == 2 => branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .unwrap_or(schema),
            _ => schema,
        }
    }

    fn object(&mut self, prefix: &str, schema: &'a Value) {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        // At the top, `plugins` first: its entries are listed there, and the other plugin
        // lists refer to it.
        let mut keys: Vec<&String> = properties.keys().collect();
        if prefix.is_empty() {
            keys.sort_by_key(|k| *k != "plugins");
        }
        for key in keys {
            let property = &properties[key];
            self.key(
                format!("{prefix}{key}"),
                property,
                required.contains(&key.as_str()),
            );
        }
    }

    fn key(&mut self, path: String, property: &'a Value, required: bool) {
        let (name, target) = self.resolve(Self::strip_null(property));
        let mut description = text(property.get("description"))
            .or_else(|| text(target.get("description")))
            .unwrap_or_default();
        if let Some(values) = values(target) {
            description.push_str(&values);
        }
        let default = match property.get("default") {
            None | Some(Value::Null) => String::new(),
            // A mapping whose keys all default: `{}` says so, and each key its own default.
            Some(Value::Object(given)) if all_defaults(given, target) => "`{}`".to_owned(),
            Some(Value::String(s)) if s.is_empty() => "`\"\"`".to_owned(),
            Some(Value::String(s)) => format!("`{s}`"),
            Some(other) => format!("`{other}`"),
        };
        self.rows.push(Row {
            kind: self.kind(property),
            path: path.clone(),
            default,
            required,
            description,
        });
        self.descend(&path, name, target);
    }

    /// The keys below `path`, whose schema is `target` (the definition `name`).
    fn descend(&mut self, path: &str, name: Option<&str>, target: &'a Value) {
        let nested = target.get("properties").is_some() || plugin_branches(target).is_some();
        if nested && let Some(name) = name {
            if let Some(first) = self.listed.get(name) {
                if let Some(row) = self.rows.last_mut() {
                    let _ = write!(row.description, " Same keys as `{first}`.");
                }
                return;
            }
            self.listed.insert(name.to_owned(), path.to_owned());
        }
        if let Some(branches) = plugin_branches(target) {
            for branch in branches {
                let Some((kind, settings)) = branch
                    .get("properties")
                    .and_then(Value::as_object)
                    .and_then(|p| p.iter().next())
                else {
                    continue;
                };
                let (name, settings_schema) = self.resolve(settings);
                let description = text(branch.get("description")).unwrap_or_default();
                let kind_path = format!("{path}.{kind}");
                self.rows.push(Row {
                    path: kind_path.clone(),
                    kind: "mapping".to_owned(),
                    default: String::new(),
                    required: false,
                    description,
                });
                self.descend(&kind_path, name, settings_schema);
            }
        } else if target.get("properties").is_some() {
            self.object(&format!("{path}."), target);
        } else if let Some(items) = target.get("items") {
            let (name, item) = self.resolve(items);
            self.descend(&format!("{path}[]"), name, item);
        } else if let Some(values) = target.get("additionalProperties").filter(|v| v.is_object()) {
            let (name, value) = self.resolve(values);
            self.descend(&format!("{path}.<name>"), name, value);
        }
    }

    /// The type of a key, in the reference's words.
    fn kind(&self, schema: &'a Value) -> String {
        let (name, schema) = self.resolve(Self::strip_null(schema));
        match name {
            Some("Duration") => return "duration".to_owned(),
            Some("Size") => return "size".to_owned(),
            Some("Workers") => return "`auto` or integer ≥ 1".to_owned(),
            Some("RetryOn") => return "condition or status".to_owned(),
            _ => {}
        }
        if let Some(words) = enum_words(schema) {
            return words.join(", ");
        }
        if plugin_branches(schema).is_some() {
            return "plugin (a mapping of one plugin name to its settings)".to_owned();
        }
        let kind = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("any"),
            _ => "any",
        };
        match kind {
            "integer" | "number" => {
                let min = schema.get("minimum").and_then(Value::as_f64);
                let max = schema.get("maximum").and_then(Value::as_f64);
                match (min, max) {
                    (Some(min), Some(max)) => format!("{kind} {min}–{max}"),
                    (Some(min), None) if min > 0.0 => format!("{kind} ≥ {min}"),
                    _ => kind.to_owned(),
                }
            }
            "array" => match schema.get("items") {
                Some(items) => format!("list of {}", self.kind(items)),
                None => "list".to_owned(),
            },
            "object" => match schema.get("additionalProperties") {
                Some(values) if values.is_object() => {
                    format!("mapping of string to {}", self.kind(values))
                }
                _ => "mapping".to_owned(),
            },
            other => other.to_owned(),
        }
    }
}

/// Whether `given` holds nothing but the defaults of `schema`'s own keys.
fn all_defaults(given: &Map<String, Value>, schema: &Value) -> bool {
    let properties = schema.get("properties").and_then(Value::as_object);
    given.iter().all(|(key, value)| {
        properties
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("default"))
            == Some(value)
    })
}

/// The branches of a "one key naming the kind" choice, like a plugin entry.
fn plugin_branches(schema: &Value) -> Option<&Vec<Value>> {
    let branches = schema.get("oneOf")?.as_array()?;
    branches
        .iter()
        .all(|b| b.get("properties").is_some())
        .then_some(branches)
}

/// The words a string enum takes.
fn enum_words(schema: &Value) -> Option<Vec<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(|v| format!("`{}`", plain(v))).collect());
    }
    let branches = schema.get("oneOf")?.as_array()?;
    branches
        .iter()
        .map(|b| b.get("const").map(|v| format!("`{}`", plain(v))))
        .collect()
}

/// What each word of a documented enum means, as a sentence to append.
fn values(schema: &Value) -> Option<String> {
    let branches = schema.get("oneOf")?.as_array()?;
    let mut out = String::new();
    for branch in branches {
        let word = branch.get("const")?;
        let meaning = text(branch.get("description"))?;
        let _ = write!(out, " `{}`: {meaning}", plain(word));
    }
    Some(out)
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A description on one line, safe inside a table cell.
fn text(value: Option<&Value>) -> Option<String> {
    let text = value?.as_str()?;
    Some(
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace('|', "\\|"),
    )
}

/// The reference page for `schema`.
pub(crate) fn markdown(schema: &Value) -> String {
    let no_defs = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&no_defs);
    let mut walker = Walker {
        defs,
        rows: Vec::new(),
        listed: BTreeMap::new(),
    };
    walker.object("", schema);

    let mut out = String::from(
        "# Config key reference\n\n\
         <!-- Generated from `portico schema`; do not edit. Regenerate with\n     \
         PORTICO_WRITE_REFERENCE=1 cargo test reference -->\n\n\
         Every key of the config file, generated from the same types the loader reads (and\n\
         printed as a JSON Schema by `portico schema`). [config.md](config.md) explains what the\n\
         keys do together: routing precedence, path normalisation, retries, plugin phases.\n\n\
         - `a[]` is each item of the list `a`; `upstreams.<name>` is the upstream of each name;\n  \
         `plugins[].rate_limit` is a plugin entry of that kind, in any `plugins` list.\n\
         - `duration`: a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`, `5s`,\n  \
         `1m`). `size`: a number of bytes, or a number and `B`, `KB`, `MB`, `GB` (powers of\n  \
         1000), `KiB`, `MiB`, `GiB` (powers of 1024), like `64KiB`.\n\
         - `${NAME}` in a string is replaced by the environment variable `NAME`; write numbers\n  \
         and booleans as such.\n\
         - A key without a default and not required is off (or empty) when absent.\n",
    );
    let mut sections: Vec<(String, Vec<&Row>)> = vec![("Top level".to_owned(), Vec::new())];
    for row in &walker.rows {
        let top = row
            .path
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_owned();
        if top == row.path {
            sections[0].1.push(row);
        } else {
            match sections.iter_mut().find(|(name, _)| *name == top) {
                Some((_, rows)) => rows.push(row),
                None => sections.push((top, vec![row])),
            }
        }
    }
    // Sections in the order a config is usually read; others (none today) after them.
    let order = [
        "Top level",
        "listeners",
        "routes",
        "upstreams",
        "plugins",
        "consumers",
        "admin",
        "access_log",
    ];
    sections.sort_by_key(|(name, _)| order.iter().position(|o| o == name).unwrap_or(order.len()));
    for (_, rows) in &mut sections {
        rows.sort_by(|a, b| a.path.cmp(&b.path));
    }
    for (name, rows) in sections {
        let title = if name == "Top level" {
            name
        } else {
            format!("`{name}`")
        };
        let _ = write!(
            out,
            "\n## {title}\n\n| key | type | default | required | description |\n|---|---|---|---|---|\n"
        );
        for row in rows {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                row.path,
                row.kind,
                row.default,
                if row.required { "yes" } else { "" },
                row.description
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md");
        let want = markdown(&crate::config::schema::schema());
        if std::env::var_os("PORTICO_WRITE_REFERENCE").is_some() {
            std::fs::write(&path, &want).unwrap();
            return;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/reference.md is not what the config types give: regenerate it with \
             `PORTICO_WRITE_REFERENCE=1 cargo test reference` and commit it"
        );
    }

    #[test]
    fn every_key_is_listed() {
        let text = markdown(&crate::config::schema::schema());
        for path in [
            "`routes[].retry.attempts`",
            "`plugins[].rate_limit.by`",
            "`upstreams.<name>.targets[].address`",
            "`consumers[].api_keys`",
            "`plugins[].jwt.claims_to_headers`",
            "`listeners[].tls.acme.domains`",
        ] {
            assert!(text.contains(path), "{path} missing");
        }
    }

    /// docs/config.md's plugin table against the schema: a row per plugin, and every setting
    /// of the plugin named in its row, so the hand-written table cannot miss a key.
    #[test]
    fn the_plugin_table_of_config_md_names_every_setting() {
        let schema = crate::config::schema::schema();
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"),
        )
        .unwrap();
        let defs = schema["$defs"].as_object().unwrap();
        let branches = plugin_branches(&defs["PluginSpec"]).expect("plugin branches");
        assert_eq!(branches.len(), crate::plugins::NAMES.len());
        let mut missing = Vec::new();
        for branch in branches {
            let (name, settings) = branch["properties"]
                .as_object()
                .and_then(|p| p.iter().next())
                .unwrap();
            let settings = settings["$ref"]
                .as_str()
                .and_then(|r| defs.get(r.trim_start_matches("#/$defs/")))
                .unwrap();
            // Rows may group plugins: `| `request_headers`, `response_headers` | ...`.
            let Some(row) = docs.lines().find(|l| {
                l.starts_with("| `")
                    && l.split('|')
                        .nth(1)
                        .is_some_and(|c| c.contains(&format!("`{name}`")))
            }) else {
                missing.push(format!("no row for `{name}`"));
                continue;
            };
            let row = row.replace("\\|", "/");
            let cell = row.split('|').nth(2).unwrap_or_default();
            for key in settings["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if !cell.contains(&format!("`{key}`")) {
                    missing.push(format!("`{name}` row lacks `{key}`"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/config.md plugin table: {missing:#?}"
        );
    }
}
