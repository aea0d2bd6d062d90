//! `key_auth`: API keys of consumers, in a header or (when configured) a query parameter.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, request};

use super::auth::{Consumers, unauthorized};
use super::{Flow, Phase, Plugin};
use crate::config::spec::KeyAuthSpec;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// `key_auth`.
#[derive(Debug)]
pub(crate) struct KeyAuth {
    header: HeaderName,
    query: Option<String>,
    hide: bool,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

impl KeyAuth {
    /// Checks the header name once.
    pub(crate) fn new(
        spec: &KeyAuthSpec,
        consumers: &Arc<Consumers>,
    ) -> Result<Self, super::BuildError> {
        let header = HeaderName::from_bytes(spec.header.as_bytes())
            .map_err(|e| super::BuildError::header_name(&spec.header, e))?;
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

/// Removes every `name=…` pair (compared decoded) from the query, keeping the other pairs as
/// written and in their order; a query left empty goes away with its `?`.
pub(crate) fn hide_query_parameter(uri: &mut http::Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let pairs: Vec<&str> = query.split('&').collect();
    let kept: Vec<&str> = pairs
        .iter()
        .copied()
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            pair.is_empty()
                || crate::routing::query_pairs(key)
                    .next()
                    .is_none_or(|(k, _)| k != name)
        })
        .collect();
    if kept.len() == pairs.len() {
        return;
    }
    let kept = kept.join("&");
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{kept}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    // Built from a valid path and a subset of a valid query, so it parses again; should it
    // not, the URI stays as it was rather than failing the request.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(next) = http::Uri::from_parts(parts) {
            *uri = next;
        }
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key_auth"
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let mut found = Vec::new();
        if head.headers.contains_key(&self.header) {
            found.push(format!("header {}", self.header));
        }
        if let Some(name) = &self.query
            && head
                .uri
                .query()
                .is_some_and(|q| crate::routing::query_pairs(q).any(|(k, _)| k == *name))
        {
            found.push(format!("query parameter {name}"));
        }
        let read = match &self.query {
            Some(q) => format!("header {} or query parameter {q}", self.header),
            None => format!("header {}", self.header),
        };
        let note = if found.is_empty() {
            format!("reads the key from {read}: none sent")
        } else {
            format!("key sent in {} (value not shown)", found.join(" and "))
        };
        super::Explained::Run(vec![note])
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
            if let Some(name) = &self.query {
                hide_query_parameter(&mut head.uri, name);
            }
        }
        ctx.consumer = Some(consumer);
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::hide_query_parameter;

    fn hidden(uri: &str) -> String {
        let mut uri: http::Uri = uri.parse().unwrap();
        hide_query_parameter(&mut uri, "api_key");
        uri.to_string()
    }

    #[test]
    fn only_the_key_parameter_goes() {
        assert_eq!(hidden("/a?x=1&api_key=k&y=2&x=3"), "/a?x=1&y=2&x=3");
        assert_eq!(hidden("/a?api%5Fkey=k&api_key=j"), "/a");
        assert_eq!(hidden("/a?api_key"), "/a");
        assert_eq!(hidden("/a?api_keys=k"), "/a?api_keys=k");
        assert_eq!(hidden("/a?x=1&&api_key=k"), "/a?x=1&");
        assert_eq!(hidden("/a"), "/a");
    }
}
