//! `request_size_limit`: 413 for bodies over the limit, declared or streamed.

use bytes::Bytes;
use http::{header, request};

use super::{BodyFilter, Flow, Phase, Plugin};
use crate::body::{BodyError, ChunkFilter, TooLarge};
use crate::ctx::RequestCtx;
use crate::error::ProxyError;

/// `request_size_limit`: a declared length over the limit is refused at once; a streamed body
/// fails when it passes the limit.
#[derive(Debug)]
pub(crate) struct RequestSizeLimit(pub u64);

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
        _ctx: &mut RequestCtx,
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
        Ok(Flow::Continue)
    }

    fn request_body(&self, _ctx: &mut RequestCtx, head: &request::Parts) -> Option<BodyFilter> {
        // A declared length was checked with the head; the framing then holds the body to it.
        if head.headers.contains_key(header::CONTENT_LENGTH) {
            return None;
        }
        Some(BodyFilter::Chunks(Box::new(Counter {
            limit: self.0,
            seen: 0,
        })))
    }
}

/// Counts a streamed body's bytes and fails it once they pass the limit.
struct Counter {
    limit: u64,
    seen: u64,
}

impl ChunkFilter for Counter {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        self.seen += data.len() as u64;
        if self.seen > self.limit {
            // An error, never an early end: a cut body must not look complete.
            return Err(Box::new(TooLarge(self.limit)));
        }
        Ok(data)
    }
}
