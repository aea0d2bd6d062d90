//! A file answer's body, read without blocking a worker thread: each chunk is first read
//! from the page cache with `preadv2(RWF_NOWAIT)`, which fails rather than wait for the disk;
//! only a chunk that is not cached goes to the blocking pool. One chunk is in flight at a
//! time, in a buffer from a small process-wide pool, so a 1 GiB file costs one 128 KiB buffer
//! and a busy site allocates none.

use std::collections::VecDeque;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use rustix::io::{Errno, ReadWriteFlags};
use tokio::task::JoinHandle;

use crate::body::BodyError;

/// Bytes read at a time.
const CHUNK: usize = 128 << 10;

/// Chunk buffers kept for reuse (8 MiB at most).
const POOLED: usize = 64;

/// Free chunk buffers, each `CHUNK` bytes long.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Cleared for good when the file system refuses `RWF_NOWAIT`.
static NOWAIT: AtomicBool = AtomicBool::new(true);

/// A chunk buffer, from the pool or new.
fn buffer() -> Vec<u8> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    pooled.unwrap_or_else(|| vec![0; CHUNK])
}

/// Bytes read into a pooled buffer; the buffer goes back to the pool when the last `Bytes`
/// made from it is dropped.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// Reads from the page cache only: `None` when the data is not cached (or the file system
/// cannot tell), so the caller reads on the blocking pool instead.
fn read_cached(file: &File, offset: u64, buf: &mut [u8]) -> Option<std::io::Result<usize>> {
    if !NOWAIT.load(Ordering::Relaxed) {
        return None;
    }
    loop {
        let read = rustix::io::preadv2(
            file,
            &mut [IoSliceMut::new(buf)],
            offset,
            ReadWriteFlags::NOWAIT,
        );
        return match read {
            Ok(n) => Some(Ok(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => None,
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                NOWAIT.store(false, Ordering::Relaxed);
                None
            }
            Err(e) => Some(Err(e.into())),
        };
    }
}

/// Reads `buf.len()` bytes from `offset`, waiting for the disk: on the blocking pool only.
/// Fewer bytes mean the file ended early.
fn read_blocking(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One piece of the body: bytes made here (a multipart head) or a span of the file.
#[derive(Debug)]
pub(super) enum Piece {
    /// Bytes sent as they are.
    Bytes(Bytes),
    /// `len` bytes of the file from `offset`.
    Span { offset: u64, len: u64 },
}

/// The pieces of a file answer, read in order.
pub(super) struct FileBody {
    file: Arc<File>,
    pieces: VecDeque<Piece>,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
    left: u64,
}

impl FileBody {
    /// A body of these pieces of `file`.
    pub(super) fn new(file: File, pieces: Vec<Piece>) -> Self {
        let left = pieces
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => b.len() as u64,
                Piece::Span { len, .. } => *len,
            })
            .sum();
        FileBody {
            file: Arc::new(file),
            pieces: pieces.into(),
            reading: None,
            left,
        }
    }

    /// Puts back what is left of the span `offset..offset + len` once `done` bytes of it are
    /// read (or being read).
    fn rest(&mut self, offset: u64, len: u64, done: usize) {
        let done = done as u64;
        if len > done {
            self.pieces.push_front(Piece::Span {
                offset: offset + done,
                len: len - done,
            });
        }
    }

    /// The whole body at once, when it is one span of at most a chunk and in the page cache:
    /// a small file's answer then needs no body task at all.
    pub(super) fn read_small(&self) -> Option<Bytes> {
        let [Piece::Span { offset, len }] = self.pieces.as_slices().0 else {
            return None;
        };
        let len = usize::try_from(*len).ok().filter(|&n| n <= CHUNK)?;
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match read_cached(&self.file, offset + filled as u64, &mut buf[filled..])? {
                Ok(0) | Err(_) => return None,
                Ok(k) => filled += k,
            }
        }
        Some(Bytes::from(buf))
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(reading) = &mut this.reading {
                let read = match Pin::new(reading).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(read) => read,
                };
                this.reading = None;
                return match read {
                    Ok(Ok(data)) if !data.is_empty() => {
                        this.left = this.left.saturating_sub(data.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    // The file shrank under the answer: cut it rather than send it short.
                    Ok(Ok(_)) => Poll::Ready(Some(Err("the file got shorter while sent".into()))),
                    Ok(Err(err)) => Poll::Ready(Some(Err(err.into()))),
                    Err(err) => Poll::Ready(Some(Err(err.into()))),
                };
            }
            let Some(piece) = this.pieces.pop_front() else {
                return Poll::Ready(None);
            };
            match piece {
                Piece::Bytes(data) => {
                    this.left = this.left.saturating_sub(data.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Piece::Span { len: 0, .. } => continue,
                Piece::Span { offset, len } => {
                    let n = usize::try_from(len).map_or(CHUNK, |len| len.min(CHUNK));
                    let mut buf = buffer();
                    match read_cached(&this.file, offset, &mut buf[..n]) {
                        Some(Ok(0)) => {
                            return Poll::Ready(Some(
                                Err("the file got shorter while sent".into()),
                            ));
                        }
                        Some(Ok(k)) => {
                            this.rest(offset, len, k);
                            this.left = this.left.saturating_sub(k as u64);
                            let data = Bytes::from_owner(Chunk { buf, len: k });
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                        None => {}
                    }
                    this.rest(offset, len, n);
                    let file = Arc::clone(&this.file);
                    this.reading = Some(tokio::task::spawn_blocking(move || {
                        let k = read_blocking(&file, offset, &mut buf[..n])?;
                        Ok(Bytes::from_owner(Chunk { buf, len: k }))
                    }));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
