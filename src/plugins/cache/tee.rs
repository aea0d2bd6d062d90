//! The answer on its way into the store: its head kept until its body has passed, the body
//! copied as it streams to the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use super::store::{Fill, Store, Stored, Timing};
use crate::body::{BodyError, ChunkFilter};

/// An answer on its way into the store, once its body has all passed.
pub(super) struct Pending {
    pub(super) key: Arc<str>,
    pub(super) url: Arc<str>,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) vary: Vec<(HeaderName, Option<HeaderValue>)>,
    pub(super) received: Instant,
    pub(super) initial_age: Duration,
    pub(super) timing: Timing,
}

impl Pending {
    /// The stored answer, with its whole body, and its key.
    pub(super) fn into_stored(self, body: Bytes) -> (Arc<str>, Stored) {
        let mut headers = self.headers;
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let stored = Stored {
            url: self.url,
            status: self.status,
            headers,
            body,
            vary: self.vary,
            received: self.received,
            initial_age: self.initial_age,
            lifetime: self.timing.lifetime,
            stale_while_revalidate: self.timing.stale_while_revalidate,
            stale_if_error: self.timing.stale_if_error,
            must_revalidate: self.timing.must_revalidate,
            validators,
        };
        (self.key, stored)
    }
}

/// Copies the body's chunks as they pass to the client (shared bytes, no copy), up to the
/// largest object; at the body's end the answer is stored. A body that breaks, or is
/// dropped before its end, is not.
pub(super) struct Tee {
    pub(super) store: Arc<Store>,
    pub(super) max: usize,
    pub(super) buf: Vec<Bytes>,
    pub(super) len: usize,
    /// The `Content-Length`, when the answer has one.
    pub(super) expected: Option<u64>,
    pub(super) entry: Option<Pending>,
    /// Held until the answer is stored (or given up): waiters then look again.
    pub(super) _fill: Option<Arc<Fill>>,
}

impl ChunkFilter for Tee {
    fn chunk(&mut self, data: Bytes) -> Result<Bytes, BodyError> {
        if self.entry.is_some() {
            self.len += data.len();
            if self.len > self.max {
                self.entry = None;
                self.buf = Vec::new();
                self._fill = None;
            } else {
                self.buf.push(data.clone());
                // A server stops reading a body once its `Content-Length` is sent: the
                // answer is stored as soon as all of it passed.
                if self.expected == Some(self.len as u64) {
                    self.finish();
                }
            }
        }
        Ok(data)
    }

    fn wants_end(&self) -> bool {
        true
    }

    fn end(
        &mut self,
        trailers: Option<HeaderMap>,
    ) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
        self.finish();
        Ok((Bytes::new(), trailers))
    }
}

impl Tee {
    /// Stores the answer, once.
    fn finish(&mut self) {
        if let Some(entry) = self.entry.take() {
            let mut body = BytesMut::with_capacity(self.len);
            for chunk in self.buf.drain(..) {
                body.extend_from_slice(&chunk);
            }
            let (key, stored) = entry.into_stored(body.freeze());
            self.store.put(key, Arc::new(stored));
        }
        self._fill = None;
    }
}
