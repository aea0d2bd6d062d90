//! Typed specs out of a [`Node`] tree, with every error placed at the node it is about.
//!
//! A serde error raised while visiting a node takes that node's position; an unknown or
//! misplaced key takes the key's position; a missing field takes the mapping's.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::node::{Key, Node, Pos, Value};

/// A deserialization error at a position in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    /// Where the problem is; `None` until the error bubbles up through a node.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let message = if expected.is_empty() {
            format!("unknown key `{field}`: no keys are allowed here")
        } else {
            format!(
                "unknown key `{field}`, expected one of: {}",
                expected.join(", ")
            )
        };
        DeError { pos: None, message }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            pos: None,
            message: format!(
                "unknown value `{variant}`, expected one of: {}",
                expected.join(", ")
            ),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            pos: None,
            message: format!("missing key `{field}`"),
        }
    }
}

impl DeError {
    fn at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }
}

/// Deserializes `T` from a node; the error carries a position.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(node).map_err(|e| e.at(node.pos))
}

fn invalid_type(node: &Node, exp: &dyn de::Expected) -> DeError {
    DeError {
        pos: Some(node.pos),
        message: format!("expected {exp}, found {}", node.value.kind()),
    }
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
                .visit_seq(PositionedAccess {
                    node: self,
                    step: 0,
                })
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
            Value::Map(_) => Err(DeError {
                pos: None,
                message: "expected a mapping with exactly one key naming the kind".into(),
            }),
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
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed.deserialize(node).map(Some).map_err(|e| e.at(node.pos)),
            None => Ok(None),
        }
    }
}

struct MapAccess<'de> {
    entries: std::slice::Iter<'de, (Key, Node)>,
    value: Option<&'de Node>,
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
        self.value = Some(value);
        // The derived visitor raises `unknown_field` while the key is being read, so an error
        // here is always about this key.
        seed.deserialize(key.name.as_str().into_deserializer())
            .map(Some)
            .map_err(|e: DeError| e.at(key.pos))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self.value.take().ok_or_else(|| DeError {
            pos: None,
            message: "value requested before its key".into(),
        })?;
        seed.deserialize(node).map_err(|e| e.at(node.pos))
    }
}

struct EnumAccess<'de> {
    key: &'de Key,
    value: &'de Node,
}

impl<'de> de::EnumAccess<'de> for EnumAccess<'de> {
    type Error = DeError;
    type Variant = &'de Node;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, &'de Node), DeError> {
        let variant = seed
            .deserialize(self.key.name.as_str().into_deserializer())
            .map_err(|e: DeError| e.at(self.key.pos))?;
        Ok((variant, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for &'de Node {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            Value::Null => Ok(()),
            _ => Err(DeError {
                pos: Some(self.pos),
                message: "this kind takes no settings".into(),
            }),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self).map_err(|e| e.at(self.pos))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// The newtype name that asks the node deserializer for `(line, col, value)`.
const POSITIONED: &str = "$portico::At";

/// A value together with the position of the node it came from, for errors found after
/// deserialization (a dangling reference, a duplicate name).
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    /// Where the value was written.
    pub pos: Pos,
    /// The value.
    pub value: T,
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

struct PositionedAccess<'de> {
    node: &'de Node,
    step: u8,
}

impl<'de> de::SeqAccess<'de> for PositionedAccess<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.step += 1;
        match self.step {
            1 => seed
                .deserialize(self.node.pos.line.into_deserializer())
                .map(Some),
            2 => seed
                .deserialize(self.node.pos.col.into_deserializer())
                .map(Some),
            3 => seed.deserialize(self.node).map(Some),
            _ => Ok(None),
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
    #[serde(rename_all = "snake_case")]
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
        assert!(
            err.message.contains("unknown key `bogus`"),
            "{}",
            err.message
        );

        let node = parse("port: 99999\nname: x\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 1, col: 7 }));

        let node = parse("name: x\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 1, col: 1 }));
        assert!(err.message.contains("missing key `port`"));

        let node = parse("port: 1\nname: x\nkind: weird\n").unwrap();
        let err = from_node::<Inner>(&node).unwrap_err();
        assert_eq!(err.pos, Some(Pos { line: 3, col: 7 }));
        assert!(err.message.contains("plain, fancy"), "{}", err.message);
    }
}
