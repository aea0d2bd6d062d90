//! A file answer's body: bounded reads on the blocking pool, one chunk in flight at a time,
//! so a 1 GiB file costs one 64 KiB buffer and never blocks a worker thread.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::body::BodyError;

/// Bytes read at a time.
const CHUNK: u64 = 64 << 10;

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
                    let n = len.min(CHUNK);
                    if len > n {
                        this.pieces.push_front(Piece::Span {
                            offset: offset + n,
                            len: len - n,
                        });
                    }
                    let file = Arc::clone(&this.file);
                    this.reading = Some(tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; n as usize];
                        let mut filled = 0;
                        while filled < buf.len() {
                            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                                Ok(0) => break,
                                Ok(k) => filled += k,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(e),
                            }
                        }
                        buf.truncate(filled);
                        Ok(Bytes::from(buf))
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
