//! The one body type portico sends both ways: streamed from a peer, or made here.
//!
//! An enum rather than a boxed trait object: no allocation per message, and the upstream
//! connection goes back to its pool the moment its response body ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::Checkin;

/// Errors a body may end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went past the route's `request_size_limit`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct TooLarge(pub u64);

pin_project_lite::pin_project! {
    /// A request or response body.
    #[project = BodyProj]
    pub enum Body {
        /// No body.
        Empty,
        /// A body made by portico, sent in one frame.
        Full { data: Option<Bytes> },
        /// A body streamed from a peer.
        Stream { #[pin] inner: Incoming },
        /// A request body that fails once it passes `limit` bytes.
        Capped { #[pin] inner: Incoming, limit: u64, seen: u64 },
        /// An upstream response body; its connection returns to the pool when it ends.
        Pooled { #[pin] inner: Incoming, checkin: Option<Checkin> },
    }
}

impl Body {
    /// A body of these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        if data.is_empty() {
            Body::Empty
        } else {
            Body::Full { data: Some(data) }
        }
    }

    /// A body streamed from a peer.
    pub fn stream(inner: Incoming) -> Self {
        Body::Stream { inner }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.project() {
            BodyProj::Empty => Poll::Ready(None),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Stream { inner } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Capped { inner, limit, seen } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if *seen > *limit {
                        // An error, never an early end: a cut body must not look complete.
                        Poll::Ready(Some(Err(Box::new(TooLarge(*limit)))))
                    } else {
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
                other => other.map_err(Into::into),
            },
            BodyProj::Pooled { mut inner, checkin } => {
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        // hyper may not poll again once the body says it is complete.
                        if let Some(checkin) = checkin.take() {
                            checkin.release();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(checkin) = checkin.take() {
                            checkin.release();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // A broken body leaves the connection in an unknown state: drop it.
                        checkin.take();
                    }
                    _ => {}
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full { data } => data.is_none(),
            Body::Stream { inner } | Body::Pooled { inner, .. } | Body::Capped { inner, .. } => {
                inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Stream { inner } | Body::Pooled { inner, .. } | Body::Capped { inner, .. } => {
                inner.size_hint()
            }
        }
    }
}
