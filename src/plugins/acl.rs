//! `acl`: lets consumers through by group; without an authenticated consumer, nobody.

use http::{StatusCode, request};

use super::{Flow, Phase, Plugin};
use crate::config::spec::AclSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

/// `acl`.
#[derive(Debug)]
pub(crate) struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Acl {
    /// From its spec.
    pub(crate) fn new(spec: &AclSpec) -> Self {
        Acl {
            allow: spec.allow.clone(),
            deny: spec.deny.clone(),
        }
    }
}

impl Plugin for Acl {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn explain(
        &self,
        ctx: &mut RequestCtx,
        _head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        let rule = format!(
            "allow [{}] deny [{}]",
            self.allow.join(", "),
            self.deny.join(", ")
        );
        let note = match &ctx.consumer {
            Some(c) => format!(
                "consumer {} in groups [{}]; {rule}",
                c.name,
                c.groups.join(", ")
            ),
            None => format!("no consumer; {rule}"),
        };
        super::Explained::Run(vec![note])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("403 outside the allowed groups")
    }

    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        _head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let forbidden = |message: &str| {
            Flow::Respond(error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                message,
                &ctx.request_id,
            ))
        };
        // Without an authenticated consumer there is nothing to allow: fail closed.
        let Some(consumer) = &ctx.consumer else {
            return Ok(forbidden("this route needs an authenticated consumer"));
        };
        if consumer.groups.iter().any(|g| self.deny.contains(g)) {
            return Ok(forbidden("the consumer's group may not use this route"));
        }
        if !self.allow.is_empty() && !consumer.groups.iter().any(|g| self.allow.contains(g)) {
            return Ok(forbidden(
                "the consumer is in no group allowed on this route",
            ));
        }
        Ok(Flow::Continue)
    }
}
