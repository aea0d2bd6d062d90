//! A YAML (or JSON) document as a tree of nodes that remember where they stood in the file.
//!
//! The config is read in two steps: the text becomes a [`Node`] tree here, then
//! [`super::de`] deserializes typed specs from it. Going through a tree lets the loader report
//! every error in a file at once, each at its own line and column, instead of stopping at the
//! first one as a streaming deserializer does.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    /// 1-based line.
    pub(crate) line: u32,
    /// 1-based column.
    pub(crate) col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Pos {
    fn of(loc: &serde_saphyr::Location) -> Self {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            col: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        }
    }
}

/// One value of the document and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Where the value starts.
    pub(crate) pos: Pos,
    /// The value.
    pub(crate) value: Value,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping with string keys, in document order; each key keeps its own position.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    /// Where the key starts.
    pub(crate) pos: Pos,
    /// The key text.
    pub(crate) name: String,
}

impl Value {
    /// What the value is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::UInt(_) | Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The entries of a mapping node, if it is one.
    pub(crate) fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }
}

/// The raw value as the YAML reader gives it, before positions are attached.
struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Raw>::deserialize(d)?;
        Ok(Node {
            pos: Pos::of(&spanned.referenced),
            value: spanned.value.0,
        })
    }
}

struct KeyText(Key);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Raw>::deserialize(d)?;
        let name = match spanned.value.0 {
            Value::Str(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::UInt(n) => n.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(n) => n.to_string(),
            Value::Null => "null".to_owned(),
            Value::Seq(_) | Value::Map(_) => {
                return Err(de::Error::custom("mapping keys must be plain strings"));
            }
        };
        Ok(KeyText(Key {
            pos: Pos::of(&spanned.referenced),
            name,
        }))
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(Value::Bool(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(Value::UInt(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(match u64::try_from(v) {
            Ok(u) => Value::UInt(u),
            Err(_) => Value::Int(v),
        }))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(Value::Str(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(node) = seq.next_element::<Node>()? {
            items.push(node);
        }
        Ok(Raw(Value::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        while let Some(KeyText(key)) = map.next_key::<KeyText>()? {
            if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                return Err(de::Error::custom(format!(
                    "duplicate key `{}` (first at line {})",
                    key.name, first.pos.line
                )));
            }
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Raw(Value::Map(entries)))
    }
}

/// A document that is not YAML: where the parser stopped, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}", message(source))]
pub(crate) struct ParseError {
    /// Where the parser stopped (line 0 when it could not tell).
    pub(crate) pos: Pos,
    /// What the parser found.
    #[source]
    source: Box<serde_saphyr::Error>,
}

/// The parser's message without its position (the diagnostic prints `pos` in front), and with
/// a duplicate key said the way the config loader says it.
fn message(err: &serde_saphyr::Error) -> String {
    use serde_saphyr::MessageFormatter;
    match err.without_snippet() {
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key `{key}`")
        }
        other => serde_saphyr::DefaultMessageFormatter
            .format_message(other)
            .into_owned(),
    }
}

/// Parses YAML (or JSON, which is a subset of YAML 1.2) into a node tree.
pub(crate) fn parse(text: &str) -> Result<Node, ParseError> {
    // YAML 1.2 booleans only: `yes`, `on`, `no` stay strings (no "Norway problem").
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|source| ParseError {
        pos: source.location().map(|l| Pos::of(&l)).unwrap_or_default(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_leave_the_position_to_the_diagnostic() {
        let err = parse("a: {b: 1\n").unwrap_err();
        assert_eq!(err.to_string(), "unclosed bracket '{'");
        assert_eq!(err.pos.line, 1);
    }

    #[test]
    fn keeps_positions() {
        let node = parse("a: 1\nb:\n  - x\n  - { c: true }\n").unwrap();
        let map = node.as_map().unwrap();
        assert_eq!(map[0].0.name, "a");
        assert_eq!(map[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(map[0].1.pos, Pos { line: 1, col: 4 });
        let Value::Seq(items) = &map[1].1.value else {
            panic!("not a list")
        };
        assert_eq!(items[1].pos.line, 4);
        let inner = items[1].as_map().unwrap();
        assert_eq!(inner[0].0.pos, Pos { line: 4, col: 7 });
        assert_eq!(inner[0].1.value, Value::Bool(true));
    }

    #[test]
    fn json_is_accepted() {
        let node = parse("{\"a\": [1, -2, 1.5, null, \"s\"]}").unwrap();
        let map = node.as_map().unwrap();
        let Value::Seq(items) = &map[0].1.value else {
            panic!("not a list")
        };
        let values: Vec<Value> = items.iter().map(|n| n.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::UInt(1),
                Value::Int(-2),
                Value::Float(1.5),
                Value::Null,
                Value::Str("s".into())
            ]
        );
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let node = parse("a: yes\nb: on\nc: true\n").unwrap();
        let map = node.as_map().unwrap();
        assert_eq!(map[0].1.value, Value::Str("yes".into()));
        assert_eq!(map[1].1.value, Value::Str("on".into()));
        assert_eq!(map[2].1.value, Value::Bool(true));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.to_string(), "duplicate key `a`");
        assert_eq!(err.pos.line, 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1);
        assert!(!err.to_string().contains(" at line "), "{err}");
    }
}
