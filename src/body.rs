//! The one body type portico sends both ways: streamed from a peer, or made here.
//!
//! An enum rather than a boxed trait object: no allocation per message for the common kinds,
//! and the upstream connection goes back to its pool the moment its response body ends. A
//! leaf: it names nothing else of portico, so every stage can use it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a body may end with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The request body went past the route's `request_size_limit`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub(crate) struct TooLarge(pub u64);

/// What an upstream response body hands back when it ends: its connection, to the pool.
/// Dropped without [`Checkin::release`] (a broken body), the connection is closed.
pub(crate) trait Checkin: Send + Sync {
    /// The body ended cleanly: the connection may serve the next request.
    fn release(self: Box<Self>);
}

/// An upstream connection that reads a response body itself (portico's own HTTP/1.1 client):
/// the body is read from it as it is polled, and it is handed back when the body ends.
pub(crate) trait Source: Send + Sync {
    /// The next frame; `None` at the end.
    fn poll_frame(&mut self, cx: &mut Context<'_>)
    -> Poll<Option<Result<Frame<Bytes>, BodyError>>>;
    /// Whether the body has ended (after its last frame).
    fn ended(&self) -> bool;
    /// The bytes left, when known.
    fn size_hint(&self) -> SizeHint;
    /// The body ended: the connection goes back to its pool if the exchange ended cleanly.
    fn finish(self: Box<Self>);
}

/// Sees each data chunk of a body as it passes: the streaming body phase of a plugin.
///
/// A filter that changes the length of the body must remove `Content-Length` from the head
/// in its head phase; one that refuses the body returns an error, never an early end, so a
/// cut body cannot look complete to the next hop.
pub(crate) trait ChunkFilter: Send + Sync {
    /// One data chunk, in order; what comes back is passed on.
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError>;

    /// Whether the filter wants [`ChunkFilter::end`]: the body is then never taken as ended
    /// before its end has gone through the filter.
    fn wants_end(&self) -> bool {
        false
    }

    /// The body's end: its trailers (`None` when it has none). Returns data to send before
    /// the end, and the trailers to send (by default, those that came).
    fn end(
        &mut self,
        trailers: Option<http::HeaderMap>,
    ) -> Result<(Bytes, Option<http::HeaderMap>), BodyError> {
        Ok((Bytes::new(), trailers))
    }
}

/// What a filtered body still has to send once its inner body ended.
#[derive(Default)]
pub(crate) struct Ending {
    /// Whether the filters have seen the end.
    done: bool,
    /// Trailers to send after the data the filters added (boxed: rare, and a body is moved
    /// often).
    trailers: Option<Box<http::HeaderMap>>,
    /// Whether any filter wants to see the end.
    wanted: bool,
}

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
        /// A body whose data chunks pass through plugin filters, in order.
        Filtered { inner: Box<Body>, filters: Vec<Box<dyn ChunkFilter>>, ending: Ending },
        /// An upstream response body; its connection returns to the pool when it ends.
        Pooled { #[pin] inner: Incoming, checkin: Option<Box<dyn Checkin>> },
        /// An upstream response body read by portico's own HTTP/1.1 client; its connection
        /// returns to the pool when it ends.
        Upstream { source: Option<Box<dyn Source>> },
        /// A body whose end (with its trailers, if any) someone waits for.
        Watched { inner: Box<Body>, watch: Option<Box<dyn Watch>> },
        /// A body portico produces piece by piece (a file read in bounded chunks).
        Local { inner: Pin<Box<dyn http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync>> },
    }
}

/// Told once when a watched body ends, with its trailers if it has any. A body dropped
/// before its end (the client went away) or broken never calls it: the watcher's own
/// `Drop` sees to that case.
pub(crate) trait Watch: Send + Sync {
    /// A data chunk of `len` bytes passed.
    fn data(&mut self, _len: usize) {}
    /// The body ended.
    fn end(self: Box<Self>, trailers: Option<&http::HeaderMap>);
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
    pub(crate) fn stream(inner: Incoming) -> Self {
        Body::Stream { inner }
    }

    /// An upstream response body whose connection goes back with `checkin` when it ends.
    pub(crate) fn pooled(inner: Incoming, checkin: impl Checkin + 'static) -> Self {
        Body::Pooled {
            inner,
            checkin: Some(Box::new(checkin)),
        }
    }

    /// A body produced by `inner`, piece by piece.
    pub(crate) fn local(
        inner: impl http_body::Body<Data = Bytes, Error = BodyError> + Send + Sync + 'static,
    ) -> Self {
        Body::Local {
            inner: Box::pin(inner),
        }
    }

    /// This body, with `watch` told when it ends.
    pub(crate) fn watch(self, watch: Box<dyn Watch>) -> Self {
        Body::Watched {
            inner: Box::new(self),
            watch: Some(watch),
        }
    }

    /// This body, with `filter` applied to each data chunk after the filters already there.
    pub(crate) fn filter(self, filter: Box<dyn ChunkFilter>) -> Self {
        let wanted = filter.wants_end();
        match self {
            Body::Filtered {
                inner,
                mut filters,
                mut ending,
            } => {
                filters.push(filter);
                ending.wanted |= wanted;
                Body::Filtered {
                    inner,
                    filters,
                    ending,
                }
            }
            other => Body::Filtered {
                inner: Box::new(other),
                filters: vec![filter],
                ending: Ending {
                    wanted,
                    ..Ending::default()
                },
            },
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Body::Empty => "Empty",
            Body::Full { .. } => "Full",
            Body::Stream { .. } => "Stream",
            Body::Filtered { .. } => "Filtered",
            Body::Pooled { .. } => "Pooled",
            Body::Upstream { .. } => "Upstream",
            Body::Watched { .. } => "Watched",
            Body::Local { .. } => "Local",
        };
        f.write_str(kind)
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
            BodyProj::Filtered {
                inner,
                filters,
                ending,
            } => {
                if ending.done {
                    return Poll::Ready(ending.trailers.take().map(|t| Ok(Frame::trailers(*t))));
                }
                let trailers = match Pin::new(inner.as_mut()).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(mut data) => {
                            for filter in filters.iter_mut() {
                                data = match filter.chunk(data) {
                                    Ok(data) => data,
                                    Err(err) => return Poll::Ready(Some(Err(err))),
                                };
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => Some(trailers),
                            // No other kind of frame exists.
                            Err(frame) => return Poll::Ready(Some(Ok(frame))),
                        },
                    },
                    Poll::Ready(None) => None,
                    other => return other,
                };
                if !ending.wanted {
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                // The end goes through every filter, with what the ones before it added.
                ending.done = true;
                let mut data = Bytes::new();
                let mut trailers = trailers;
                for filter in filters.iter_mut() {
                    if !data.is_empty() {
                        data = match filter.chunk(data) {
                            Ok(data) => data,
                            Err(err) => return Poll::Ready(Some(Err(err))),
                        };
                    }
                    let (more, left) = match filter.end(trailers) {
                        Ok(end) => end,
                        Err(err) => return Poll::Ready(Some(Err(err))),
                    };
                    trailers = left;
                    if !more.is_empty() {
                        data = if data.is_empty() {
                            more
                        } else {
                            [data, more].concat().into()
                        };
                    }
                }
                if data.is_empty() {
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                ending.trailers = trailers.map(Box::new);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            BodyProj::Watched { inner, watch } => {
                let polled = Pin::new(inner.as_mut()).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(watch)) = (frame.data_ref(), watch.as_mut()) {
                            watch.data(data.len());
                        }
                        if let Some(trailers) = frame.trailers_ref() {
                            if let Some(watch) = watch.take() {
                                watch.end(Some(trailers));
                            }
                        } else if inner.is_end_stream()
                            && let Some(watch) = watch.take()
                        {
                            watch.end(None);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(watch) = watch.take() {
                            watch.end(None);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        watch.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
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
            BodyProj::Upstream { source } => {
                let Some(inner) = source.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = inner.poll_frame(cx);
                match &polled {
                    // Handed back the moment it ends, not when the body is dropped.
                    Poll::Ready(Some(Ok(_))) if inner.ended() => {
                        if let Some(inner) = source.take() {
                            inner.finish();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(inner) = source.take() {
                            inner.finish();
                        }
                    }
                    // A broken body leaves the connection in an unknown state: closed.
                    Poll::Ready(Some(Err(_))) => *source = None,
                    _ => {}
                }
                polled
            }
            BodyProj::Local { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full { data } => data.is_none(),
            Body::Stream { inner } | Body::Pooled { inner, .. } => inner.is_end_stream(),
            Body::Filtered { inner, ending, .. } => {
                if ending.done {
                    ending.trailers.is_none()
                } else {
                    !ending.wanted && inner.is_end_stream()
                }
            }
            Body::Watched { inner, .. } => inner.is_end_stream(),
            Body::Upstream { source } => source.is_none(),
            Body::Local { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Body::Stream { inner } | Body::Pooled { inner, .. } => inner.size_hint(),
            // A filter may change the length: only the upper bound of nothing is known.
            Body::Filtered { inner, ending, .. } if !ending.wanted && inner.is_end_stream() => {
                SizeHint::with_exact(0)
            }
            Body::Filtered { .. } => SizeHint::default(),
            Body::Watched { inner, .. } => inner.size_hint(),
            Body::Upstream { source: None } => SizeHint::with_exact(0),
            Body::Upstream {
                source: Some(inner),
            } => inner.size_hint(),
            Body::Local { inner } => inner.size_hint(),
        }
    }
}
