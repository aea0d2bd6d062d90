//! The descriptor set and the `google.api.http` rules of its methods, compiled at load.

use std::sync::Arc;

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

use super::template::Template;

/// The field number of `google.api.http` on `google.protobuf.MethodOptions`.
const HTTP_RULE: u32 = 72_295_728;

/// What a binding's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyRule {
    /// No body; every field not in the path may come from the query.
    None,
    /// `body: "*"`: the JSON body is the whole request message.
    Whole,
    /// `body: "field"`: the JSON body is that field.
    Field(String),
}

/// One HTTP binding of a method.
#[derive(Debug)]
pub(crate) struct Binding {
    /// The HTTP method (`GET`, or a custom verb's).
    pub(crate) verb: http::Method,
    /// The path template.
    pub(crate) template: Template,
    /// Where the body goes.
    pub(crate) body: BodyRule,
    /// The answer's field sent as the body instead of the whole message.
    pub(crate) response_body: Option<String>,
    /// The gRPC method.
    pub(crate) method: Arc<Method>,
    /// Whether this is the default `POST /pkg.Service/Method` binding.
    pub(crate) default: bool,
}

/// A gRPC method as the transcoder calls it.
#[derive(Debug)]
pub(crate) struct Method {
    /// The descriptor.
    pub(crate) desc: MethodDescriptor,
    /// `/pkg.Service/Method`.
    pub(crate) path: http::uri::PathAndQuery,
}

/// Reads a descriptor set's bytes.
pub(crate) fn pool(bytes: &[u8]) -> Result<DescriptorPool, String> {
    DescriptorPool::decode(bytes).map_err(|e| format!("not a protobuf FileDescriptorSet: {e}"))
}

/// The bindings of `services` (every service when empty), in descriptor order: each method's
/// rule, then its additional bindings; a method without a rule gets `POST
/// /pkg.Service/Method`. Errors name the service or the method.
pub(crate) fn bindings(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Binding>, String> {
    let mut chosen = Vec::new();
    if services.is_empty() {
        chosen.extend(pool.services());
    } else {
        for name in services {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| unknown_service(pool, name))?;
            chosen.push(service);
        }
    }
    if chosen.is_empty() {
        return Err("the descriptor set has no service".to_owned());
    }
    let mut out = Vec::new();
    for service in chosen {
        for desc in service.methods() {
            if desc.is_client_streaming() {
                // JSON requests are one message; a client stream cannot be transcoded.
                continue;
            }
            let path = format!("/{}/{}", service.full_name(), desc.name());
            let method = Arc::new(Method {
                path: path
                    .parse()
                    .map_err(|_| format!("method `{path}` makes no request path"))?,
                desc: desc.clone(),
            });
            let options = desc.options();
            let rule = options
                .extensions()
                .find(|(ext, _)| ext.number() == HTTP_RULE)
                .and_then(|(_, v)| v.as_message().cloned());
            match rule {
                Some(rule) => {
                    let at = |e: String| format!("method `{}`: {e}", desc.full_name());
                    out.push(binding(&rule, &method).map_err(at)?);
                    if let Some(list) = rule
                        .get_field_by_name("additional_bindings")
                        .as_deref()
                        .and_then(Value::as_list)
                    {
                        for extra in list.iter().filter_map(Value::as_message) {
                            out.push(binding(extra, &method).map_err(at)?);
                        }
                    }
                }
                None => out.push(Binding {
                    verb: http::Method::POST,
                    template: Template::parse(&path)?,
                    body: BodyRule::Whole,
                    response_body: None,
                    default: true,
                    method,
                }),
            }
        }
    }
    Ok(out)
}

/// The message for a `services` entry the set does not have.
pub(crate) fn unknown_service(pool: &DescriptorPool, name: &str) -> String {
    let known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
    format!(
        "service `{name}` is not in the descriptor set (it has: {})",
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    )
}

fn text(rule: &DynamicMessage, name: &str) -> Option<String> {
    rule.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
}

fn binding(rule: &DynamicMessage, method: &Arc<Method>) -> Result<Binding, String> {
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb)
            && let Some(path) = text(rule, verb)
        {
            let verb = http::Method::from_bytes(verb.to_ascii_uppercase().as_bytes())
                .map_err(|e| e.to_string())?;
            pattern = Some((verb, path));
        }
    }
    if pattern.is_none()
        && rule.has_field_by_name("custom")
        && let Some(custom) = rule.get_field_by_name("custom")
        && let Some(custom) = custom.as_message()
    {
        let kind = text(custom, "kind").ok_or("a custom rule needs a `kind`")?;
        let path = text(custom, "path").ok_or("a custom rule needs a `path`")?;
        let verb = http::Method::from_bytes(kind.as_bytes())
            .map_err(|_| format!("custom kind `{kind}` is not an HTTP method"))?;
        pattern = Some((verb, path));
    }
    let (verb, path) =
        pattern.ok_or("the http rule has no get, put, post, delete, patch or custom pattern")?;
    let template = Template::parse(&path)?;
    let input = method.desc.input();
    for var in &template.vars {
        super::json::field_path(&input, &var.field)
            .map_err(|e| format!("path template `{path}`: {e}"))?;
    }
    let body = match text(rule, "body").as_deref() {
        None => BodyRule::None,
        Some("*") => BodyRule::Whole,
        Some(field) => {
            super::json::field_path(&input, field).map_err(|e| format!("body `{field}`: {e}"))?;
            BodyRule::Field(field.to_owned())
        }
    };
    let response_body = text(rule, "response_body");
    if let Some(field) = &response_body {
        super::json::field_path(&method.desc.output(), field)
            .map_err(|e| format!("response_body `{field}`: {e}"))?;
    }
    Ok(Binding {
        verb,
        template,
        body,
        response_body,
        method: Arc::clone(method),
        default: false,
    })
}
