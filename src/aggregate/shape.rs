//! Field operations on a JSON answer, in this order: `target` (select a nested value by a
//! dotted path), `deny` (remove fields), `allow` (keep only these fields), `rename` (move a
//! field), then `group` (put the result under a key). With `collection`, a top-level array's
//! items each get `deny`, `allow` and `rename`. Paths are dotted (`address.city`); a path
//! that is not there is skipped.

use serde_json::{Map, Value};

/// The compiled shaping of one answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    /// Dotted path of the value to keep instead of the whole answer.
    pub(crate) target: Option<Vec<String>>,
    /// Dotted paths to keep (all when empty).
    pub(crate) allow: Vec<Vec<String>>,
    /// Dotted paths to remove.
    pub(crate) deny: Vec<Vec<String>>,
    /// Dotted path pairs: old -> new.
    pub(crate) rename: Vec<(Vec<String>, Vec<String>)>,
    /// The key the result is put under.
    pub(crate) group: Option<String>,
    /// The answer is an array whose items are shaped one by one.
    pub(crate) collection: bool,
}

/// Splits a dotted path.
pub(crate) fn path(dotted: &str) -> Vec<String> {
    dotted.split('.').map(str::to_owned).collect()
}

/// The value at a path, if any.
pub(crate) fn get<'v>(value: &'v Value, path: &[impl AsRef<str>]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key.as_ref()),
        Value::Array(items) => key
            .as_ref()
            .parse::<usize>()
            .ok()
            .and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Removes and returns the value at a path.
fn take(value: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut at = value;
    for key in parents {
        at = at.as_object_mut()?.get_mut(key)?;
    }
    at.as_object_mut()?.remove(last)
}

/// Puts a value at a path, making the objects on the way.
fn put(value: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for key in parents {
        let Value::Object(map) = at else { return };
        at = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Value::Object(map) = at {
        map.insert(last.clone(), new);
    }
}

impl Shape {
    /// The answer after every operation but `group`.
    pub(crate) fn fields(&self, mut value: Value) -> Value {
        if let Some(target) = &self.target {
            value = get(&value, target).cloned().unwrap_or(Value::Null);
        }
        match value {
            Value::Array(items) if self.collection => {
                Value::Array(items.into_iter().map(|v| self.members(v)).collect())
            }
            value => self.members(value),
        }
    }

    fn members(&self, mut value: Value) -> Value {
        if !value.is_object() {
            return value;
        }
        for path in &self.deny {
            take(&mut value, path);
        }
        if !self.allow.is_empty() {
            let mut kept = Value::Object(Map::new());
            for path in &self.allow {
                if let Some(v) = get(&value, path) {
                    put(&mut kept, path, v.clone());
                }
            }
            value = kept;
        }
        for (old, new) in &self.rename {
            if let Some(v) = take(&mut value, old) {
                put(&mut value, new, v);
            }
        }
        value
    }
}

/// Merges one shaped answer into the aggregate, by the rule in docs/config.md: under its
/// `group` when it has one; an object's members at the top level (a later call's key replaces
/// an earlier one's); any other value (an array, a string) under `collection` when the shape
/// says so, else under `fallback` (the call's name).
pub(crate) fn merge(into: &mut Map<String, Value>, shape: &Shape, fallback: &str, value: Value) {
    if let Some(group) = &shape.group {
        into.insert(group.clone(), value);
        return;
    }
    match value {
        Value::Object(members) => into.extend(members),
        other if shape.collection => {
            into.insert("collection".into(), other);
        }
        other => {
            into.insert(fallback.to_owned(), other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape() -> Shape {
        Shape::default()
    }

    #[test]
    fn target_allow_deny_rename() {
        let answer = json!({"data": {"id": 1, "name": "Ada", "secret": "x",
            "address": {"city": "Paris", "zip": "75001"}}});
        let s = Shape {
            target: Some(path("data")),
            deny: vec![path("secret"), path("address.zip")],
            rename: vec![
                (path("name"), path("full_name")),
                (path("address.city"), path("city")),
            ],
            ..shape()
        };
        assert_eq!(
            s.fields(answer.clone()),
            json!({"id": 1, "full_name": "Ada", "address": {}, "city": "Paris"})
        );
        let s = Shape {
            target: Some(path("data")),
            allow: vec![path("id"), path("address.city"), path("missing")],
            ..shape()
        };
        assert_eq!(
            s.fields(answer),
            json!({"id": 1, "address": {"city": "Paris"}})
        );
    }

    #[test]
    fn collections_shape_each_item() {
        let s = Shape {
            collection: true,
            allow: vec![path("id")],
            ..shape()
        };
        assert_eq!(
            s.fields(json!([{"id": 1, "x": 2}, {"id": 3}, 4])),
            json!([{"id": 1}, {"id": 3}, 4])
        );
        let mut out = Map::new();
        merge(&mut out, &s, "orders", json!([1]));
        assert_eq!(Value::Object(out), json!({"collection": [1]}));
    }

    #[test]
    fn merge_rule() {
        let mut out = Map::new();
        merge(&mut out, &shape(), "a", json!({"k": 1, "a": 1}));
        merge(&mut out, &shape(), "b", json!({"k": 2}));
        let grouped = Shape {
            group: Some("g".into()),
            ..shape()
        };
        merge(&mut out, &grouped, "c", json!([1, 2]));
        merge(&mut out, &shape(), "d", json!("text"));
        assert_eq!(
            Value::Object(out),
            json!({"k": 2, "a": 1, "g": [1, 2], "d": "text"})
        );
    }

    #[test]
    fn missing_target_is_null() {
        let s = Shape {
            target: Some(path("nope.deeper")),
            ..shape()
        };
        assert_eq!(s.fields(json!({"a": 1})), Value::Null);
        assert_eq!(get(&json!({"a": [5, 6]}), &path("a.1")), Some(&json!(6)));
    }
}
