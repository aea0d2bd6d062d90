//! The config language as a JSON Schema (draft 2020-12), for `portico schema`, editors and
//! docs/reference.md.
//!
//! It is derived from the very types the loader deserializes ([`super::spec`]): doc comments
//! become descriptions, `#[serde(default)]` values become `default`s, `deny_unknown_fields`
//! becomes `additionalProperties: false`. The types with a hand-written `Deserialize` get a
//! hand-written schema here, next to each other, so the two are read together.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::de::At;
use super::spec::{RetryOnSpec, Spec, Workers};
use super::units::{DURATION_UNITS, Dur, SIZE_UNITS, Size};

/// The schema's identifier; nothing fetches it.
pub(crate) const ID: &str = "https://portico.dev/schema/config.json";

/// The JSON Schema of a whole config file.
pub(crate) fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut root = generator.into_root_schema_for::<Spec>();
    root.insert("$id".into(), ID.into());
    root.insert("title".into(), "portico config".into());
    root.insert(
        "description".into(),
        "A portico config file (YAML or JSON). `${NAME}` in a string is replaced by the \
         environment variable NAME before the file is checked, so a placeholder may stand \
         where a string is expected (and in a duration or a size); a number or a boolean must \
         be written as such. Where a string is expected, the loader also takes an unquoted \
         number or boolean as its text; this schema asks for a string there."
            .into(),
    );
    root.to_value()
}

/// [`schema`] as pretty-printed JSON with a final newline, as `portico schema` prints it.
pub(crate) fn text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// `(?:ms|s|...)` of a unit table.
fn alternatives(units: &[(&str, u64)]) -> String {
    let names: Vec<&str> = units.iter().map(|(name, _)| *name).collect();
    format!("(?:{})", names.join("|"))
}

/// What [`Dur::parse`] takes: digits, optional spaces, a unit.
pub(crate) fn duration_pattern() -> String {
    format!(r"^\s*[0-9]+\s*{}\s*$", alternatives(DURATION_UNITS))
}

/// What [`Size::parse`] takes as text: digits, optional spaces, an optional unit.
pub(crate) fn size_pattern() -> String {
    format!(r"^\s*[0-9]+\s*{}?\s*$", alternatives(SIZE_UNITS))
}

/// A positioned value is written as the value itself.
impl<T: JsonSchema> JsonSchema for At<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a whole number and a unit, `ms`, `s`, `m`, `h` or `d` \
                            (`250ms`, `5s`, `1m`, `2h`, `1d`).",
            "type": "string",
            "pattern": duration_pattern(),
        })
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: a whole number of bytes, or a number and a unit, \
                            `B`, `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` \
                            (powers of 1024), like `64KiB`.",
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": size_pattern(),
        })
    }
}

impl JsonSchema for Workers {
    fn schema_name() -> Cow<'static, str> {
        "Workers".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`auto` (one worker thread per CPU the process may use) or a number \
                            of worker threads, at least 1.",
            "anyOf": [
                { "const": "auto" },
                { "type": "integer", "minimum": 1 },
            ],
        })
    }
}

impl JsonSchema for RetryOnSpec {
    fn schema_name() -> Cow<'static, str> {
        "RetryOn".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`connect_failure` (the connection could not be made), `reset` (it \
                            broke before a response head arrived), `timeout` (the try timed \
                            out), or a response status, 100 to 599.",
            "anyOf": [
                { "enum": ["connect_failure", "reset", "timeout"] },
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": "^[1-5][0-9]{2}$" },
            ],
        })
    }
}

#[cfg(test)]
mod tests;
