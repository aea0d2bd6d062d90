//! `respond`: a fixed answer (a mock), after the checks of earlier phases.

use http::{HeaderMap, HeaderValue, StatusCode, request};

use super::{Flow, Plugin};
use crate::body::Body;
use crate::config::spec::MockSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// `respond`: a fixed answer (mock), after the plugins before it in the chain's phases.
#[derive(Debug)]
pub(crate) struct Mock {
    status: StatusCode,
    body: bytes::Bytes,
    headers: HeaderMap,
}

impl Mock {
    /// Checks status and headers.
    pub(crate) fn new(spec: &MockSpec) -> Result<Self, super::BuildError> {
        let status = StatusCode::from_u16(*spec.status)
            .ok()
            .filter(|s| s.as_u16() >= 200)
            .ok_or(super::BuildError::Status)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| super::BuildError::header_name(name, e))?;
            let value =
                HeaderValue::from_str(value).map_err(|source| super::BuildError::Value {
                    name: name.to_string(),
                    source,
                })?;
            headers.append(name, value);
        }
        if !spec.body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                default_content_type(spec.body.as_bytes()),
            );
        }
        Ok(Mock {
            status,
            body: bytes::Bytes::from(spec.body.clone()),
            headers,
        })
    }
}

impl Plugin for Mock {
    fn name(&self) -> &'static str {
        "respond"
    }

    fn stops(&self) -> Option<&'static str> {
        Some("always answers")
    }

    fn on_request(
        &self,
        _ctx: &mut RequestCtx,
        _head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let mut response = http::Response::new(Body::full(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        Ok(Flow::Respond(response))
    }
}

/// The content type of a fixed body that names none: JSON when it parses as JSON, else text.
pub(crate) fn default_content_type(body: &[u8]) -> http::HeaderValue {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        http::HeaderValue::from_static("application/json")
    } else {
        http::HeaderValue::from_static("text/plain; charset=utf-8")
    }
}
