//! `response_shape`: a route's 2xx answer read whole, converted to JSON (from JSON, XML, a
//! form or text) and shaped with the field operations of aggregate calls
//! (aggregate/convert.rs, aggregate/shape.rs).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header, response};
use serde_json::{Map, Value};

use super::{BodyFilter, Plugin, WholeBody};
use crate::aggregate::convert::{self, Format};
use crate::aggregate::shape::{Shape, path};
use crate::body::Body;
use crate::config::aggregate::{FormatSpec, ResponseShapeSpec};
use crate::ctx::RequestCtx;
use crate::error::error_response;

/// The plugin.
#[derive(Debug)]
pub(crate) struct ResponseShape(Arc<Settings>);

#[derive(Debug)]
struct Settings {
    format: Format,
    shape: Shape,
    max: usize,
}

impl ResponseShape {
    /// Compiles the paths once.
    pub(crate) fn new(spec: &ResponseShapeSpec) -> Self {
        ResponseShape(Arc::new(Settings {
            format: match spec.format {
                FormatSpec::Auto => Format::Auto,
                FormatSpec::Json => Format::Json,
                FormatSpec::Xml => Format::Xml,
                FormatSpec::Form => Format::Form,
                FormatSpec::Text => Format::Text,
            },
            shape: Shape {
                target: spec.target.as_deref().map(path),
                allow: spec.allow.iter().map(|p| path(p)).collect(),
                deny: spec.deny.iter().map(|p| path(p)).collect(),
                rename: spec
                    .rename
                    .iter()
                    .map(|(a, b)| (path(a), path(b)))
                    .collect(),
                group: spec.group.clone(),
                collection: spec.collection,
            },
            max: spec.max_body.bytes(),
        }))
    }
}

/// The format `auto` reads a content type as; `None` for one it leaves alone.
fn auto(headers: &HeaderMap) -> Option<Format> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    // An event stream never ends: it passes untouched.
    let known = essence != "text/event-stream"
        && (essence.ends_with("json")
            || essence.ends_with("xml")
            || essence == "application/x-www-form-urlencoded"
            || essence.starts_with("text/"));
    known.then(|| Format::of(Some(content_type)))
}

impl Plugin for ResponseShape {
    fn name(&self) -> &'static str {
        "response_shape"
    }

    fn response_body(&self, _ctx: &RequestCtx, head: &response::Parts) -> Option<BodyFilter> {
        // portico's own answers (errors) and non-2xx answers pass as they are.
        if !head.status.is_success() || head.extensions.get::<crate::error::OwnError>().is_some() {
            return None;
        }
        let format = match self.0.format {
            Format::Auto => auto(&head.headers)?,
            other => other,
        };
        Some(BodyFilter::Whole {
            max: self.0.max,
            edit: Box::new(Edit(Arc::clone(&self.0), format)),
        })
    }
}

struct Edit(Arc<Settings>, Format);

impl WholeBody for Edit {
    fn apply(
        self: Box<Self>,
        ctx: &RequestCtx,
        headers: &mut HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, Box<http::Response<Body>>> {
        let value = convert::convert(&body, self.1).map_err(|err| {
            let message = format!("response_shape: {err}");
            Box::new(error_response(
                StatusCode::BAD_GATEWAY,
                "upstream_response_invalid",
                &message,
                &ctx.request_id,
            ))
        })?;
        let shaped = self.0.shape.fields(value);
        let out = match &self.0.shape.group {
            Some(group) => {
                let mut map = Map::new();
                map.insert(group.clone(), shaped);
                Value::Object(map)
            }
            None => shaped,
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The body changed: a validator of the old one no longer holds.
        headers.remove(header::ETAG);
        Ok(Bytes::from(serde_json::to_vec(&out).unwrap_or_default()))
    }
}
