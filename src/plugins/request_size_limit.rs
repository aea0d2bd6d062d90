//! `request_size_limit`: 413 for bodies over the limit, declared or streamed.

use http::{header, request};

use super::{Flow, Phase, Plugin};
use crate::proxy::ctx::RequestCtx;
use crate::proxy::error::ProxyError;

/// `request_size_limit`: a declared length over the limit is refused at once; a streamed body
/// is cut when it passes the limit.
#[derive(Debug)]
pub struct RequestSizeLimit(pub u64);

impl Plugin for RequestSizeLimit {
    fn name(&self) -> &'static str {
        "request_size_limit"
    }

    fn stops(&self) -> Option<&'static str> {
        Some("413 over the size")
    }

    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.0) {
            return Err(ProxyError::PayloadTooLarge { limit: self.0 });
        }
        ctx.body_limit = Some(ctx.body_limit.map_or(self.0, |l| l.min(self.0)));
        Ok(Flow::Continue)
    }
}
