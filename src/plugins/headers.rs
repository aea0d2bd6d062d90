//! `request_headers` and `response_headers`: remove, set and add header fields.

use http::{HeaderMap, HeaderName, HeaderValue, request, response};

use super::{BuildError, Flow, Plugin};
use crate::config::spec::HeaderOpsSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// Compiled header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), BuildError> {
    let name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|e| BuildError::header_name(name, e))?;
    let value = HeaderValue::from_str(value).map_err(|source| BuildError::HeaderValue {
        name: name.to_string(),
        source,
    })?;
    Ok((name, value))
}

impl HeaderOps {
    /// Checks names and values once, at compile time.
    pub(crate) fn compile(spec: &HeaderOpsSpec) -> Result<Self, BuildError> {
        Ok(HeaderOps {
            remove: spec
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes()).map_err(|e| BuildError::header_name(n, e))
                })
                .collect::<Result<_, _>>()?,
            set: spec
                .set
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
            add: spec
                .add
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Applies the edits.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Edits the request headers sent upstream.
#[derive(Debug)]
pub(crate) struct RequestHeaders(pub HeaderOps);

impl Plugin for RequestHeaders {
    fn name(&self) -> &'static str {
        "request_headers"
    }

    fn on_request(
        &self,
        _ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        self.0.apply(&mut head.headers);
        Ok(Flow::Continue)
    }
}

/// Edits the response headers sent to the client.
#[derive(Debug)]
pub(crate) struct ResponseHeaders(pub HeaderOps);

impl Plugin for ResponseHeaders {
    fn name(&self) -> &'static str {
        "response_headers"
    }

    fn on_response(&self, _ctx: &RequestCtx, head: &mut response::Parts) {
        self.0.apply(&mut head.headers);
    }
}
