//! JSON (with path and query fields) to a request message, and answer messages to JSON, by
//! the canonical proto3 JSON mapping.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

use super::rules::BodyRule;

/// The fields a dotted path goes through; every field before the last is a singular message.
pub(crate) fn field_path(
    desc: &MessageDescriptor,
    path: &str,
) -> Result<Vec<FieldDescriptor>, String> {
    let mut out = Vec::new();
    let mut current = desc.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| format!("`{}` has no field `{part}`", current.full_name()))?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                _ => return Err(format!("`{part}` is not a message field")),
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// The JSON of one path or query value for `field`: strings stay strings (the mapping reads
/// numbers, enums, bytes, timestamps and the like from strings), booleans become booleans.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let boolean = match field.kind() {
        Kind::Bool => true,
        Kind::Message(m) => m.full_name() == "google.protobuf.BoolValue",
        _ => false,
    };
    if boolean {
        return match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("`{}` must be true or false", field.name())),
        };
    }
    Ok(Value::String(text.to_owned()))
}

/// Sets `path` in the JSON object `root` (creating objects on the way) to `text`; a repeated
/// field collects every value.
fn set(
    root: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    path: &str,
    text: &str,
    replace: bool,
) -> Result<(), String> {
    let fields = field_path(desc, path)?;
    let mut object = root;
    for (i, field) in fields.iter().enumerate() {
        // The body may have written the field by either name; the path's name wins.
        let existing = object.remove(field.json_name());
        let key = field.name().to_owned();
        if i + 1 == fields.len() {
            let value = scalar(field, text)?;
            let entry = if field.is_list() {
                match (replace, existing.or_else(|| object.remove(&key))) {
                    (false, Some(Value::Array(mut items))) => {
                        items.push(value);
                        Value::Array(items)
                    }
                    _ => Value::Array(vec![value]),
                }
            } else {
                value
            };
            object.insert(key, entry);
            return Ok(());
        }
        let slot = object
            .entry(key)
            .or_insert_with(|| existing.unwrap_or_else(|| Value::Object(Map::new())));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        object = match slot {
            Value::Object(map) => map,
            _ => return Err(format!("`{}` is not an object", field.name())),
        };
    }
    Ok(())
}

/// What a request is made of, besides its binding.
pub(crate) struct Parts<'a> {
    /// The path variables, decoded.
    pub(crate) vars: &'a [(String, String)],
    /// The raw query string.
    pub(crate) query: Option<&'a str>,
    /// The request body.
    pub(crate) body: &'a [u8],
}

/// Builds the request message; the error is the 400's message.
pub(crate) fn request(
    desc: &MessageDescriptor,
    rule: &BodyRule,
    parts: &Parts<'_>,
) -> Result<DynamicMessage, String> {
    let parsed = |bytes: &[u8]| -> Result<Value, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))
    };
    let empty = parts.body.iter().all(u8::is_ascii_whitespace);
    let mut root = Map::new();
    match rule {
        BodyRule::None => {}
        BodyRule::Whole if empty => {}
        BodyRule::Whole => match parsed(parts.body)? {
            Value::Object(map) => root = map,
            _ => return Err("the body must be a JSON object".to_owned()),
        },
        BodyRule::Field(_) if empty => {}
        BodyRule::Field(path) => {
            let value = parsed(parts.body)?;
            // Placed as written; its field path was checked at load.
            let mut object = &mut root;
            let names: Vec<&str> = path.split('.').collect();
            for name in &names[..names.len() - 1] {
                object = match object
                    .entry((*name).to_owned())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(map) => map,
                    _ => return Err(format!("`{name}` is not an object")),
                };
            }
            object.insert(names[names.len() - 1].to_owned(), value);
        }
    }
    for (field, value) in parts.vars {
        set(&mut root, desc, field, value, true)?;
    }
    if *rule != BodyRule::Whole
        && let Some(query) = parts.query
    {
        let bound = |name: &str| {
            parts.vars.iter().any(|(f, _)| f == name)
                || matches!(rule, BodyRule::Field(f) if f == name || name.starts_with(&format!("{f}.")))
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = form_decode(name).ok_or("a query parameter is not UTF-8")?;
            let value = form_decode(value).ok_or("a query parameter is not UTF-8")?;
            if bound(&name) {
                continue;
            }
            set(&mut root, desc, &name, &value, false)
                .map_err(|e| format!("query parameter `{name}`: {e}"))?;
        }
    }
    DynamicMessage::deserialize_with_options(
        desc.clone(),
        Value::Object(root),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| format!("the request does not fit `{}`: {e}", desc.full_name()))
}

/// `application/x-www-form-urlencoded` decoding of one query name or value.
fn form_decode(text: &str) -> Option<String> {
    super::template::decode(&text.replace('+', " "), true)
}

/// How answers are written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    /// Fields at their default value are written too.
    pub(crate) emit_defaults: bool,
    /// `.proto` names instead of lowerCamelCase.
    pub(crate) original_names: bool,
}

/// An answer message as JSON, or its `response_body` field.
pub(crate) fn response(
    desc: &MessageDescriptor,
    bytes: &[u8],
    field: Option<&str>,
    out: Output,
) -> Result<Value, String> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| format!("the answer is not a `{}`: {e}", desc.full_name()))?;
    let json = |defaults: bool| {
        let options = SerializeOptions::new()
            .skip_default_fields(!defaults)
            .use_proto_field_name(out.original_names);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| format!("the answer cannot be written as JSON: {e}"))
    };
    let Some(path) = field else {
        return json(out.emit_defaults);
    };
    let pick = |mut value: Value| -> Option<Value> {
        for f in field_path(desc, path).ok()? {
            let name = if out.original_names {
                f.name()
            } else {
                f.json_name()
            };
            value = value.as_object_mut()?.remove(name)?;
        }
        Some(value)
    };
    match pick(json(out.emit_defaults)?) {
        Some(value) => Ok(value),
        // At its default, so left out: written with defaults instead.
        None => Ok(pick(json(true)?).unwrap_or(Value::Null)),
    }
}
