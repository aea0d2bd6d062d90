//! `key_auth`: API keys of consumers, in a header or (when configured) a query parameter.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, request};

use super::auth::{Consumers, unauthorized};
use super::{Flow, Phase, Plugin};
use crate::config::spec::KeyAuthSpec;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::error::ProxyError;

/// `key_auth`.
#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    hide: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

impl KeyAuth {
    /// Checks the header name once.
    pub fn new(spec: &KeyAuthSpec, consumers: &Arc<Consumers>) -> Result<Self, String> {
        let header = HeaderName::from_bytes(spec.header.as_bytes())
            .map_err(|_| format!("invalid header name `{}`", spec.header))?;
        Ok(KeyAuth {
            header,
            query: spec.query.clone(),
            hide: spec.hide_credentials,
            consumers: Arc::clone(consumers),
            challenge: HeaderValue::from_static("Key realm=\"portico\""),
        })
    }

    fn unauthorized(&self, ctx: &RequestCtx, message: &str) -> Flow {
        Flow::Respond(unauthorized(&ctx.request_id, &self.challenge, message))
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key_auth"
    }

    fn stops(&self) -> Option<&'static str> {
        Some("401 without a valid API key")
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let mut values = head.headers.get_all(&self.header).iter();
        let from_header = values.next().map(|v| v.as_bytes().to_vec());
        if values.next().is_some() {
            return Ok(self.unauthorized(ctx, "more than one API key was sent"));
        }
        let from_query = self.query.as_ref().and_then(|name| {
            head.uri
                .query()
                .and_then(|q| crate::routing::query_pairs(q).find(|(k, _)| k == name))
                .map(|(_, v)| v.into_bytes())
        });
        let key = match (from_header, from_query) {
            (Some(_), Some(_)) => return Ok(self.unauthorized(ctx, "an API key was sent twice")),
            (Some(k), None) | (None, Some(k)) => k,
            (None, None) => return Ok(self.unauthorized(ctx, "an API key is required")),
        };
        let Some(consumer) = self.consumers.by_api_key(&key) else {
            return Ok(self.unauthorized(ctx, "the API key is not valid"));
        };
        if self.hide {
            head.headers.remove(&self.header);
        }
        ctx.consumer = Some(consumer);
        Ok(Flow::Continue)
    }
}
