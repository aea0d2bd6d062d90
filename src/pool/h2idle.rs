//! The idle timeout of a shared upstream HTTP/2 connection.
//!
//! A shared connection is handed out as a clone of its sender, so the pool never sees a
//! request end. Instead its I/O is wrapped in [`Tracked`], which follows frame headers both
//! ways (RFC 9113 §4.1) and counts the streams portico opened that are not closed yet: a
//! stream closes when both sides sent END_STREAM or either sent RST_STREAM (RFC 9113 §5.1).
//! The driver closes the connection once no stream has been open, and no request was handed
//! the connection, for the pool's `idle_timeout`. PINGs are not use.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h2frame::{Frames, Piece};
use crate::health::now_ms;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const LOCAL_DONE: u8 = 1;
const REMOTE_DONE: u8 = 2;

/// What the driver reads of a connection's use.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    open_streams: AtomicUsize,
    /// Last stream opened or closed, or request handed the connection ([`now_ms`]).
    last_use: AtomicU64,
    /// The idle timeout in force at the last hand-out, in milliseconds.
    timeout_ms: AtomicU64,
}

impl Activity {
    /// A request was given the connection; it stays open at least `timeout` from now.
    pub(crate) fn handed_out(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        self.last_use.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once the connection has had no open stream for its idle timeout.
    pub(crate) async fn expired(&self) {
        loop {
            let timeout = self.timeout_ms.load(Ordering::Relaxed);
            let due = self
                .last_use
                .load(Ordering::Relaxed)
                .saturating_add(timeout);
            let now = now_ms();
            if now >= due {
                if self.open_streams.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // Streams open: check again one idle timeout on.
                tokio::time::sleep(Duration::from_millis(timeout.max(1))).await;
            } else {
                tokio::time::sleep(Duration::from_millis(due - now)).await;
            }
        }
    }
}

/// The streams portico opened, by id, with which sides have finished.
#[derive(Debug, Default)]
struct Streams {
    open: HashMap<u32, u8>,
}

impl Streams {
    fn frame(&mut self, local: bool, kind: u8, flags: u8, stream: u32) -> bool {
        let before = self.open.len();
        match kind {
            HEADERS | DATA if stream != 0 => {
                if local && kind == HEADERS {
                    self.open.entry(stream).or_insert(0);
                }
                if flags & END_STREAM != 0
                    && let Some(done) = self.open.get_mut(&stream)
                {
                    *done |= if local { LOCAL_DONE } else { REMOTE_DONE };
                    if *done == LOCAL_DONE | REMOTE_DONE {
                        self.open.remove(&stream);
                    }
                }
            }
            RST_STREAM => {
                self.open.remove(&stream);
            }
            _ => {}
        }
        self.open.len() != before
    }
}

/// An upstream HTTP/2 connection's I/O, counting its open streams into an [`Activity`].
#[derive(Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    read: Frames,
    write: Frames,
    streams: Streams,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked {
            inner,
            read: Frames::default(),
            write: Frames::default(),
            streams: Streams::default(),
            activity,
        }
    }

    fn seen(&mut self, local: bool, bufs: &[&[u8]]) {
        let frames = if local {
            &mut self.write
        } else {
            &mut self.read
        };
        let streams = &mut self.streams;
        let mut changed = false;
        for buf in bufs {
            frames.feed(buf, |piece| {
                if let Piece::Header {
                    kind,
                    flags,
                    stream,
                } = piece
                {
                    changed |= streams.frame(local, kind, flags, stream);
                }
            });
        }
        if changed {
            self.activity
                .open_streams
                .store(self.streams.open.len(), Ordering::Relaxed);
            self.activity.last_use.store(now_ms(), Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.seen(false, &[&buf.filled()[before..]]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.seen(true, &[&buf[..n.min(buf.len())]]);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            let mut written: Vec<&[u8]> = Vec::with_capacity(bufs.len());
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let take = buf.len().min(n);
                written.push(&buf[..take]);
                n -= take;
            }
            this.seen(true, &written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn feed(streams: &mut Streams, frames: &mut Frames, local: bool, bytes: &[u8]) {
        frames.feed(bytes, |piece| {
            if let Piece::Header {
                kind,
                flags,
                stream,
            } = piece
            {
                streams.frame(local, kind, flags, stream);
            }
        });
    }

    #[test]
    fn a_stream_is_open_until_both_sides_end_it_or_one_resets_it() {
        let (mut streams, mut out, mut inc) =
            (Streams::default(), Frames::default(), Frames::default());
        // SETTINGS and PING do not open anything.
        feed(&mut streams, &mut out, true, &frame(0x4, 0, 0, &[]));
        feed(&mut streams, &mut out, true, &frame(0x6, 0, 0, b"12345678"));
        assert_eq!(streams.open.len(), 0);
        // GET: HEADERS with END_STREAM; the response's HEADERS, then DATA with END_STREAM.
        feed(
            &mut streams,
            &mut out,
            true,
            &frame(HEADERS, 0x5, 1, b"hpack"),
        );
        assert_eq!(streams.open.len(), 1);
        feed(
            &mut streams,
            &mut inc,
            false,
            &frame(HEADERS, 0x4, 1, b"hpack"),
        );
        assert_eq!(streams.open.len(), 1);
        let data = frame(DATA, END_STREAM, 1, b"body");
        // Split mid-header: still parsed.
        feed(&mut streams, &mut inc, false, &data[..4]);
        feed(&mut streams, &mut inc, false, &data[4..]);
        assert_eq!(streams.open.len(), 0);
        // A POST reset by the server.
        feed(
            &mut streams,
            &mut out,
            true,
            &frame(HEADERS, 0x4, 3, b"hpack"),
        );
        feed(&mut streams, &mut out, true, &frame(DATA, 0, 3, b"part"));
        assert_eq!(streams.open.len(), 1);
        feed(
            &mut streams,
            &mut inc,
            false,
            &frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]),
        );
        assert_eq!(streams.open.len(), 0);
    }

    #[tokio::test]
    async fn expires_only_without_open_streams() {
        let activity = Activity::default();
        activity.handed_out(Duration::from_millis(50));
        activity.open_streams.store(1, Ordering::Relaxed);
        let waited = tokio::time::timeout(Duration::from_millis(200), activity.expired()).await;
        assert!(waited.is_err(), "expired with a stream open");
        activity.open_streams.store(0, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(2), activity.expired())
            .await
            .expect("an idle connection did not expire");
    }
}
