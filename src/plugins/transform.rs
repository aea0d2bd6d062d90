//! `request_transformer` and `response_transformer`: header, query and JSON body edits.
//!
//! Header and query edits happen on the head. JSON body edits need the whole body, so it is
//! buffered — only for JSON content types, only up to `max_body` (a larger request body is
//! refused with 413; a larger or unsized response body passes unchanged).

use crate::aggregate::template::encode as encode_component;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header, request, response};
use serde_json::Value;

use super::{BodyFilter, BuildError, Flow, Plugin, WholeBody};
use crate::config::spec::{FieldOpsSpec, JsonOpsSpec, TransformSpec};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// Compiled header edits: remove, rename, set, add.
#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn name(text: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|e| BuildError::header_name(text, e))
}

fn pairs(map: &BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, BuildError> {
    map.iter()
        .map(|(k, v)| {
            Ok((
                name(k)?,
                HeaderValue::from_str(v).map_err(|source| BuildError::Value {
                    name: k.clone(),
                    source,
                })?,
            ))
        })
        .collect()
}

impl HeaderEdits {
    fn compile(spec: &FieldOpsSpec) -> Result<Self, BuildError> {
        Ok(HeaderEdits {
            remove: spec
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            rename: spec
                .rename
                .iter()
                .map(|(a, b)| Ok((name(a)?, name(b)?)))
                .collect::<Result<_, BuildError>>()?,
            set: pairs(&spec.set)?,
            add: pairs(&spec.add)?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (from, to) in &self.rename {
            let values: Vec<HeaderValue> = headers.get_all(from).iter().cloned().collect();
            if !values.is_empty() {
                headers.remove(from);
                headers.remove(to);
                for v in values {
                    headers.append(to.clone(), v);
                }
            }
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }
}

/// JSON body edits over dotted paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonEdit {
    remove: Vec<Vec<String>>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, String)>,
    /// Largest body edited.
    pub(crate) max: usize,
}

fn path(text: &str) -> Vec<String> {
    text.split('.').map(str::to_owned).collect()
}

fn take(value: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for key in parents {
        node = node.as_object_mut()?.get_mut(key)?;
    }
    node.as_object_mut()?.remove(last)
}

fn put(value: &mut Value, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for key in parents {
        let Some(object) = node.as_object_mut() else {
            return;
        };
        node = object
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    if let Some(object) = node.as_object_mut() {
        object.insert(last.clone(), new);
    }
}

impl JsonEdit {
    fn compile(spec: &JsonOpsSpec, max: usize) -> Option<Arc<Self>> {
        if spec.remove.is_empty() && spec.rename.is_empty() && spec.set.is_empty() {
            return None;
        }
        Some(Arc::new(JsonEdit {
            remove: spec.remove.iter().map(|p| path(p)).collect(),
            rename: spec
                .rename
                .iter()
                .map(|(a, b)| (path(a), path(b)))
                .collect(),
            set: spec.set.iter().map(|(p, v)| (path(p), v.clone())).collect(),
            max,
        }))
    }

    /// Edits a JSON document; anything that is not JSON is returned unchanged.
    pub(crate) fn apply(&self, body: &Bytes) -> Option<Bytes> {
        let mut value: Value = serde_json::from_slice(body).ok()?;
        for p in &self.remove {
            take(&mut value, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(&mut value, from) {
                put(&mut value, to, v);
            }
        }
        for (p, v) in &self.set {
            put(&mut value, p, Value::String(v.clone()));
        }
        serde_json::to_vec(&value).ok().map(Bytes::from)
    }
}

/// Whether a content type is JSON (`application/json`, `application/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
}

/// `request_transformer`.
#[derive(Debug)]
pub(crate) struct RequestTransformer {
    headers: HeaderEdits,
    query: FieldOpsSpec,
    json: Option<Arc<JsonEdit>>,
}

impl RequestTransformer {
    /// Checks names and values once.
    pub(crate) fn new(spec: &TransformSpec) -> Result<Self, BuildError> {
        Ok(RequestTransformer {
            headers: HeaderEdits::compile(&spec.headers)?,
            query: spec.query.clone(),
            json: JsonEdit::compile(&spec.json, spec.max_body.bytes()),
        })
    }

    fn edit_query(&self, head: &mut request::Parts) -> Result<(), ProxyError> {
        let q = &self.query;
        if q.remove.is_empty() && q.rename.is_empty() && q.set.is_empty() && q.add.is_empty() {
            return Ok(());
        }
        let mut pairs: Vec<(String, String)> = head
            .uri
            .query()
            .map(|q| crate::routing::query_pairs(q).collect())
            .unwrap_or_default();
        pairs.retain(|(k, _)| !q.remove.contains(k));
        for (k, _) in &mut pairs {
            if let Some(new) = q.rename.get(k) {
                *k = new.clone();
            }
        }
        for (k, v) in &q.set {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k.clone(), v.clone()));
        }
        for (k, v) in &q.add {
            pairs.push((k.clone(), v.clone()));
        }
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        let path = head.uri.path();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let mut parts = head.uri.clone().into_parts();
        parts.path_and_query = Some(
            target
                .parse()
                .map_err(|_| ProxyError::BadRequest("the edited query is invalid"))?,
        );
        head.uri = http::Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("the edited query is invalid"))?;
        Ok(())
    }
}

impl Plugin for RequestTransformer {
    fn name(&self) -> &'static str {
        "request_transformer"
    }

    fn on_request(
        &self,
        _ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        if !self.headers.is_empty() {
            self.headers.apply(&mut head.headers);
        }
        self.edit_query(head)?;
        Ok(Flow::Continue)
    }

    fn request_body(&self, _ctx: &mut RequestCtx, head: &request::Parts) -> Option<BodyFilter> {
        let edit = self.json.as_ref().filter(|_| is_json(&head.headers))?;
        Some(BodyFilter::Whole {
            max: edit.max,
            edit: Box::new(Edit(Arc::clone(edit))),
        })
    }
}

/// JSON edits applied to one buffered body; a body that is not JSON passes unchanged.
struct Edit(Arc<JsonEdit>);

impl WholeBody for Edit {
    fn apply(
        self: Box<Self>,
        _ctx: &RequestCtx,
        _headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<crate::body::Body>>> {
        Ok(self.0.apply(&body).unwrap_or(body))
    }
}

/// `response_transformer`.
#[derive(Debug)]
pub(crate) struct ResponseTransformer {
    headers: HeaderEdits,
    json: Option<Arc<JsonEdit>>,
}

impl ResponseTransformer {
    /// Checks names and values once.
    pub(crate) fn new(spec: &TransformSpec) -> Result<Self, BuildError> {
        if !spec.query.remove.is_empty()
            || !spec.query.set.is_empty()
            || !spec.query.add.is_empty()
            || !spec.query.rename.is_empty()
        {
            return Err(BuildError::ResponseQuery);
        }
        Ok(ResponseTransformer {
            headers: HeaderEdits::compile(&spec.headers)?,
            json: JsonEdit::compile(&spec.json, spec.max_body.bytes()),
        })
    }
}

impl Plugin for ResponseTransformer {
    fn name(&self) -> &'static str {
        "response_transformer"
    }

    fn on_response(&self, _ctx: &RequestCtx, head: &mut response::Parts) {
        self.headers.apply(&mut head.headers);
    }

    fn response_body(&self, _ctx: &RequestCtx, head: &response::Parts) -> Option<BodyFilter> {
        // Only a JSON body of known size within the bound is edited; any other passes as it
        // streams, unbuffered.
        let edit = self.json.as_ref().filter(|_| is_json(&head.headers))?;
        let length = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())?;
        (length <= edit.max).then(|| BodyFilter::Whole {
            max: edit.max,
            edit: Box::new(Edit(Arc::clone(edit))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_edits() {
        let edit = JsonEdit::compile(
            &JsonOpsSpec {
                remove: vec!["secret".into(), "user.password".into()],
                rename: [("user.mail".to_owned(), "user.email".to_owned())]
                    .into_iter()
                    .collect(),
                set: [("meta.via".to_owned(), "portico".to_owned())]
                    .into_iter()
                    .collect(),
            },
            1024,
        )
        .unwrap();
        let out = edit
            .apply(&Bytes::from_static(
                br#"{"secret":1,"user":{"password":"x","mail":"a@b"},"keep":true}"#,
            ))
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user": {"email": "a@b"}, "keep": true, "meta": {"via": "portico"}})
        );
        assert!(edit.apply(&Bytes::from_static(b"not json")).is_none());
    }
}
