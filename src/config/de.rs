//! Typed specs out of a [`Node`] tree, with every error placed at the node it is about.
//!
//! A serde error raised while visiting a node takes that node's position; an unknown or
//! misplaced key takes the key's position; a missing field takes the mapping's.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::node::{Key, Node, Pos, Value};
use super::suggest::closest;

/// What is wrong with a value, as serde found it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum DeErrorKind {
    /// A key the type does not have.
    #[error("unknown key `{key}`{}", hint(key, expected))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The keys allowed here.
        expected: &'static [&'static str],
    },
    /// A word that names none of the choices.
    #[error("unknown value `{value}`{}", hint(value, expected))]
    UnknownValue {
        /// The word as written.
        value: String,
        /// The choices.
        expected: &'static [&'static str],
    },
    /// A required key is absent.
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    /// A value of the wrong kind.
    #[error("expected {expected}, found {found}")]
    InvalidType {
        /// What the type wanted.
        expected: String,
        /// What the file has.
        found: &'static str,
    },
    /// A value the type itself refused (an invalid duration, a zero worker count).
    #[error("{0}")]
    Invalid(String),
}

/// What serde says a type expects, in the file's words rather than Rust's.
fn plain(expected: String) -> String {
    if expected.starts_with("struct ") || expected.starts_with("map") {
        "a mapping".to_owned()
    } else if expected.starts_with("a sequence") || expected.starts_with("tuple") {
        "a list".to_owned()
    } else {
        expected
    }
}

/// `: did you mean `x`?` for a likely typo, else the list of what is allowed.
fn hint(word: &str, expected: &[&str]) -> String {
    if expected.is_empty() {
        return ": no keys are allowed here".to_owned();
    }
    match closest(word, expected.iter().copied()) {
        Some(near) => format!(": did you mean `{near}`?"),
        None => format!(", expected one of: {}", expected.join(", ")),
    }
}

/// One step from the node given to [`from_node`] towards the node an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// The value of this key of a mapping.
    Key(String),
    /// This item of a list.
    Index(usize),
}

/// A deserialization error at a position in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}")]
pub(crate) struct DeError {
    /// Where the problem is; `None` until the error bubbles up through a node.
    pub(crate) pos: Option<Pos>,
    /// The way from the node given to [`from_node`] to the entry at fault, outermost first;
    /// empty when the fault is that node itself (a missing key, a wrong kind).
    pub(crate) path: Vec<Step>,
    /// What is wrong.
    pub(crate) kind: DeErrorKind,
}

impl DeError {
    fn new(kind: DeErrorKind) -> Self {
        DeError {
            pos: None,
            path: Vec::new(),
            kind,
        }
    }

    fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }

    /// Records that the error came from inside `step` (called from the inside out).
    fn within(mut self, step: Step) -> Self {
        self.path.insert(0, step);
        self
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(DeErrorKind::Invalid(msg.to_string()))
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let found = match unexp {
            de::Unexpected::Bool(_) => "a boolean",
            de::Unexpected::Unsigned(_) | de::Unexpected::Signed(_) => "an integer",
            de::Unexpected::Float(_) => "a number",
            de::Unexpected::Str(_) | de::Unexpected::Char(_) => "a string",
            de::Unexpected::Unit | de::Unexpected::Option => "null",
            de::Unexpected::Seq => "a list",
            de::Unexpected::Map => "a mapping",
            _ => "another kind of value",
        };
        DeError::new(DeErrorKind::InvalidType {
            expected: plain(exp.to_string()),
            found,
        })
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownKey {
            key: field.to_owned(),
            expected,
        })
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(DeErrorKind::UnknownValue {
            value: variant.to_owned(),
            expected,
        })
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(DeErrorKind::MissingKey(field))
    }
}

/// Deserializes `T` from a node; the error carries a position.
pub(crate) fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(node).map_err(|e| e.at(node.pos))
}

fn invalid_type(node: &Node, exp: &dyn de::Expected) -> DeError {
    DeError::new(DeErrorKind::InvalidType {
        expected: plain(exp.to_string()),
        found: node.value.kind(),
    })
    .at(node.pos)
}

impl<'de> de::Deserializer<'de> for &'de Node {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::UInt(n) => visitor.visit_u64(*n),
            Value::Int(n) => visitor.visit_i64(*n),
            Value::Float(n) => visitor.visit_f64(*n),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
                index: 0,
            }),
            Value::Map(entries) => visitor.visit_map(MapAccess::new(entries)),
        };
        result.map_err(|e| e.at(self.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.at(self.pos))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == POSITIONED {
            return visitor
                .visit_seq(PositionedAccess::new(self.pos, self))
                .map_err(|e| e.at(self.pos));
        }
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.at(self.pos))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Scalars written without quotes stay strings where a string is expected: `port: 80` is
        // fine for a string field, as users of other YAML tools expect.
        match &self.value {
            Value::Str(s) => visitor.visit_str(s),
            Value::UInt(n) => visitor.visit_string(n.to_string()),
            Value::Int(n) => visitor.visit_string(n.to_string()),
            Value::Float(n) => visitor.visit_string(n.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            _ => Err(invalid_type(self, &visitor)),
        }
        .map_err(|e| e.at(self.pos))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.value {
            Value::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(EnumAccess {
                key: &entries[0].0,
                value: &entries[0].1,
            }),
            Value::Map(_) => Err(DeError::new(DeErrorKind::Invalid(
                "expected a mapping with exactly one key naming the kind".into(),
            ))),
            _ => Err(invalid_type(self, &visitor)),
        }
        .map_err(|e| e.at(self.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

struct SeqAccess<'de> {
    items: std::slice::Iter<'de, Node>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let index = self.index;
        self.index += 1;
        match self.items.next() {
            Some(node) => seed
                .deserialize(node)
                .map(Some)
                .map_err(|e| e.at(node.pos).within(Step::Index(index))),
            None => Ok(None),
        }
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Key, Node)>,
    value: Option<(&'de Key, &'de Node)>,
}

impl<'de> MapAccess<'de> {
    fn new(entries: &'de [(Key, Node)]) -> Self {
        MapAccess {
            entries: entries.iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        // The derived visitor raises `unknown_field` while the key is being read, so an error
        // here is always about this key.
        seed.deserialize(KeyDeserializer(key))
            .map(Some)
            .map_err(|e: DeError| e.at(key.pos).within(Step::Key(key.name.clone())))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, node) = self.value.take().ok_or_else(|| {
            DeError::new(DeErrorKind::Invalid(
                "value requested before its key".into(),
            ))
        })?;
        seed.deserialize(node)
            .map_err(|e| e.at(node.pos).within(Step::Key(key.name.clone())))
    }
}

/// A mapping key: its text, or, asked for an [`At`], its text and position (so a map keyed
/// by names can say where a wrong name stands).
struct KeyDeserializer<'de>(&'de Key);

impl<'de> de::Deserializer<'de> for KeyDeserializer<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_str(&self.0.name)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == POSITIONED {
            visitor.visit_seq(PositionedAccess::new(self.0.pos, KeyDeserializer(self.0)))
        } else {
            visitor.visit_newtype_struct(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_enum(
            self.0.name.as_str().into_deserializer(),
            name,
            variants,
            visitor,
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

struct EnumAccess<'de> {
    key: &'de Key,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = Variant<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Variant<'de>), DeError> {
        // Written `{ kind: settings }`, the kind is a key to the user.
        let variant = seed
            .deserialize(self.key.name.as_str().into_deserializer())
            .map_err(|e: DeError| match e.kind {
                DeErrorKind::UnknownValue { value, expected } => {
                    DeError::new(DeErrorKind::UnknownKey {
                        key: value,
                        expected,
                    })
                }
                _ => e,
            })
            .map_err(|e| e.at(self.key.pos))?;
        Ok((
            variant,
            Variant {
                key: self.key,
                node: self.value,
            },
        ))
    }
}

/// The settings of a kind written `{ kind: settings }`; errors inside are under the kind's key.
struct Variant<'de> {
    key: &'de Key,
    node: &'de Node,
}

impl<'de> de::VariantAccess<'de> for Variant<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.node.value {
            Value::Null => Ok(()),
            _ => Err(
                DeError::new(DeErrorKind::Invalid("this kind takes no settings".into()))
                    .at(self.node.pos)
                    .within(Step::Key(self.key.name.clone())),
            ),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self.node)
            .map_err(|e| e.at(self.node.pos).within(Step::Key(self.key.name.clone())))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self.node, visitor)
            .map_err(|e| e.within(Step::Key(self.key.name.clone())))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self.node, visitor)
            .map_err(|e| e.within(Step::Key(self.key.name.clone())))
    }
}

/// The newtype name that asks the node deserializer for `(line, col, value)`.
const POSITIONED: &str = "$portico::At";

/// A value together with the position of the node it came from, for errors found after
/// deserialization (a dangling reference, a duplicate name). Ordered by position, then value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct At<T> {
    /// Where the value was written.
    pub(crate) pos: Pos,
    /// The value.
    pub(crate) value: T,
}

impl<T> std::ops::Deref for At<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: serde::Serialize> serde::Serialize for At<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// `(line, col, value)` of a node or a key, for [`At`]: the value deserializer `V` is used
/// once, after the position.
struct PositionedAccess<V> {
    pos: Pos,
    value: Option<V>,
    step: u8,
}

impl<V> PositionedAccess<V> {
    fn new(pos: Pos, value: V) -> Self {
        PositionedAccess {
            pos,
            value: Some(value),
            step: 0,
        }
    }
}

impl<'de, V: de::Deserializer<'de, Error = DeError>> de::SeqAccess<'de> for PositionedAccess<V> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.step += 1;
        match self.step {
            1 => seed
                .deserialize(self.pos.line.into_deserializer())
                .map(Some),
            2 => seed.deserialize(self.pos.col.into_deserializer()).map(Some),
            _ => match self.value.take() {
                Some(value) => seed.deserialize(value).map(Some),
                None => Ok(None),
            },
        }
    }
}

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for At<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AtVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for AtVisitor<T> {
            type Value = At<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positioned value")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<At<T>, A::Error> {
                let missing = || de::Error::custom("position missing");
                let line: u32 = seq.next_element()?.ok_or_else(missing)?;
                let col: u32 = seq.next_element()?.ok_or_else(missing)?;
                let value: T = seq.next_element()?.ok_or_else(missing)?;
                Ok(At {
                    pos: Pos { line, col },
                    value,
                })
            }
        }

        d.deserialize_newtype_struct(POSITIONED, AtVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::node::parse;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
        name: At<String>,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    enum Kind {
        Plain,
        Fancy { level: u8 },
    }

    #[test]
    fn positions_on_values_and_keys() {
        let node = parse("port: 80\nname: x\nkind: { fancy: { level: 3 } }\n").unwrap();
        let inner: Inner = from_node(&node).unwrap();
        assert_eq!(inner.name.pos, Pos { line: 2, col: 7 });
        assert_eq!(inner.kind, Some(Kind::Fancy { level: 3 }));

        let node = parse("port: 80\nname: x\nbogus: 1\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 3, col: 1 }));
        assert!(err.to_string().contains("unknown key `bogus`"), "{err}");
        assert_eq!(err.path, vec![Step::Key("bogus".into())]);

        let node = parse("port: 99999\nname: x\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 1, col: 7 }));

        let node = parse("name: x\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 1, col: 1 }));
        assert!(err.to_string().contains("missing key `port`"));
        assert!(err.path.is_empty());

        let node = parse("port: 1\nname: x\nkind: weird\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 3, col: 7 }));
        assert!(err.to_string().contains("plain, fancy"), "{err}");
        assert_eq!(err.path, vec![Step::Key("kind".into())]);

        let node = parse("port: 1\nname: x\nkind: { fanci: { level: 3 } }\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown key `fanci`: did you mean `fancy`?"
        );
        assert_eq!(err.pos, Some(Pos { line: 3, col: 9 }));

        let node = parse("port: 1\nname: x\nkind: { fancy: { levl: 3 } }\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.to_string(), "unknown key `levl`: did you mean `level`?");
        let path = vec![
            Step::Key("kind".into()),
            Step::Key("fancy".into()),
            Step::Key("levl".into()),
        ];
        assert_eq!(err.path, path);
    }
}
