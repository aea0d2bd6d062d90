//! The HTTP/1.1 exchange with a plain-TCP upstream, driven inside the request's own task.
//!
//! A pooled connection is a [`RawConn`]: the socket, its read buffer and the state of the
//! exchange in progress, in one allocation made when the connection opens. The request's
//! task writes the head (and a small body in the same write), parses the response head with
//! `httparse` (see [`parse`]) and hands back a response whose body (`Body::Upstream`) reads
//! the rest from the socket as the client takes it. A streamed request body is sent while the
//! response is read, by whoever polls: the head's wait, then the response body. No task and no
//! channel stand between the request and the socket.
//!
//! The connection goes back to its pool only when the exchange ended cleanly: the response
//! body read to its end (a body delimited by the connection's close never is), the request
//! body sent whole, no `Connection: close`, and no byte read beyond the response. Anything
//! else drops it, which closes it.
//!
//! Which exchanges take this path: every HTTP/1.1 request to a target without TLS, except a
//! request that asks for a protocol upgrade, whose connection is handed to hyper's client for
//! that one exchange (it becomes the tunnel). TLS upstreams use hyper's client throughout.

pub(crate) mod differential;
pub(crate) mod parse;
#[cfg(test)]
mod tests;

use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::idle::Lease;
use super::{Checkin, ConnectError, Expiry, OpenConn, TargetState, UPSTREAM_READ_AHEAD, drive};
use crate::body::{Body, BodyError};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parse::{Decoder, Step};

/// What a connection's first read asks the socket for (hyper's client starts at 8 KiB too);
/// a read that fills it doubles the next, up to `UPSTREAM_READ_AHEAD`, so a connection that
/// carries large answers reads each in one go.
const READ_CHUNK: usize = 8 << 10;

/// A request body at most this large, complete already, goes out in the head's write.
const INLINE_BODY: usize = 16 << 10;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The response could not be read.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// The socket failed.
    #[error("the upstream connection failed")]
    Io(#[source] std::io::Error),
    /// The upstream closed the connection before any response.
    #[error("the upstream closed the connection before answering")]
    Closed,
    /// The request body failed (the client's doing).
    #[error("the request body failed")]
    Body(#[source] BodyError),
    /// The request body did not match its `Content-Length`.
    #[error("the request body does not match its Content-Length")]
    BodyLength,
}

/// Marks the connection's lease gone when the connection is dropped, so its idle timer
/// stops.
struct Gone(Option<Arc<Lease>>);

impl Drop for Gone {
    fn drop(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.gone();
        }
    }
}

/// An HTTP/1.1 connection: driven by hyper's client on a task of its own (TLS), or by the
/// request's task itself (plain TCP, see this module).
#[derive(Debug)]
pub(crate) enum H1 {
    /// hyper's client.
    Hyper(http1::SendRequest<Body>),
    /// portico's own client.
    Raw(Box<RawConn>),
}

impl H1 {
    /// The upstream closed it (as far as is known without waiting).
    pub(super) fn is_closed(&self) -> bool {
        match self {
            H1::Hyper(sender) => sender.is_closed(),
            H1::Raw(conn) => !conn.alive(),
        }
    }

    /// It can take a request now.
    pub(super) fn is_ready(&self) -> bool {
        match self {
            H1::Hyper(sender) => sender.is_ready(),
            H1::Raw(_) => true,
        }
    }
}

impl Checkin {
    /// A connection of portico's own client, back from a clean exchange.
    pub(super) fn put_back(mut self, conn: Box<RawConn>) {
        self.sender = Some(H1::Raw(conn));
        self.release();
    }

    /// The connection, when portico's own client drives it: taken for the exchange, which
    /// brings it back (see [`h1::exchange`]).
    pub(crate) fn take_raw(&mut self) -> Option<Box<RawConn>> {
        match self.sender.take()? {
            H1::Raw(conn) => Some(conn),
            other => {
                self.sender = Some(other);
                None
            }
        }
    }

    /// Hands a connection of portico's own client to hyper's client (for an exchange that
    /// may upgrade the connection); a hyper connection stays as it is.
    pub(crate) async fn hyper(&mut self) -> Result<(), ConnectError> {
        let Some(conn) = self.take_raw() else {
            return Ok(());
        };
        let (stream, open) = conn.into_parts();
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_AHEAD)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        drive(
            conn.with_upgrades(),
            Expiry::Lease(Arc::clone(&self.lease)),
            open,
        );
        self.sender = Some(H1::Hyper(sender));
        Ok(())
    }
}

impl TargetState {
    /// Closes a connection of portico's own client once it has been idle for its timeout:
    /// nothing drives it between exchanges, so this task only waits on its lease (waking
    /// once per timeout while it is in use) and takes it out of the idle list.
    pub(super) fn watch_idle(self: &Arc<Self>, worker: usize, lease: Arc<Lease>) {
        let target = Arc::clone(self);
        tokio::spawn(async move {
            lease.expired().await;
            let Some(slot) = target.idle.get(worker) else {
                return;
            };
            let expired = {
                let mut idle = match slot.lock() {
                    Ok(idle) => idle,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let at = idle.list.iter().position(|e| Arc::ptr_eq(&e.lease, &lease));
                at.map(|at| idle.list.remove(at))
            };
            if expired.is_some() {
                tracing::debug!("idle upstream connection closed");
            }
        });
    }
}

/// A plain-TCP HTTP/1.1 connection and its exchange in progress.
pub(crate) struct RawConn {
    stream: TcpStream,
    /// Bytes read and not yet taken.
    buf: BytesMut,
    /// Bytes to write (the head, then a chunk's framing), from `written` on.
    wbuf: Vec<u8>,
    written: usize,
    /// While a request holds the connection: how it goes back to its pool.
    home: Option<Checkin>,
    /// The response body's decoder.
    decoder: Decoder,
    /// The request body still being sent.
    upload: Option<Upload>,
    /// The connection may carry another exchange after this one.
    reusable: bool,
    /// How much the next read asks for.
    read_size: usize,
    _gone: Gone,
    _open: OpenConn,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("decoder", &self.decoder)
            .finish()
    }
}

/// A request body being sent.
struct Upload {
    body: Body,
    /// Chunked framing (else `Content-Length`, with `left` bytes to go).
    chunked: bool,
    left: u64,
    /// Data to write after `wbuf`.
    data: Bytes,
    /// A chunk's data was queued: its CRLF goes before the next framing.
    crlf: bool,
    /// Everything is queued; done once written.
    queued: bool,
}

impl RawConn {
    /// A new connection, counted by `open`; `lease` is its pool lease.
    pub(super) fn new(stream: TcpStream, lease: Arc<Lease>, open: OpenConn) -> Box<Self> {
        Box::new(RawConn {
            stream,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            written: 0,
            home: None,
            decoder: Decoder::Done,
            upload: None,
            reusable: true,
            read_size: READ_CHUNK,
            _gone: Gone(Some(lease)),
            _open: open,
        })
    }

    /// Whether an idle connection still looks usable: the upstream has not closed it nor
    /// sent anything unasked. Costs a syscall only when the socket has become readable.
    pub(crate) fn alive(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(
                    self.stream.try_read(&mut byte),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                )
            }
        }
    }

    /// The socket back, for hyper's client to take over (an upgrade); with the open count
    /// that goes with it. Nothing is buffered on a pooled connection.
    pub(super) fn into_parts(self: Box<Self>) -> (TcpStream, OpenConn) {
        let RawConn {
            stream,
            mut _gone,
            _open,
            ..
        } = *self;
        // The lease goes on with the connection.
        _gone.0 = None;
        (stream, _open)
    }

    /// The exchange is over: back to the pool when it ended cleanly, else closed.
    fn hand_back(mut self: Box<Self>) {
        let clean =
            self.reusable && self.upload.is_none() && self.buf.is_empty() && self.decoder.done();
        let Some(home) = self.home.take() else {
            return;
        };
        if !clean {
            return;
        }
        if self.buf.capacity() > 2 * super::UPSTREAM_READ_AHEAD {
            // Never more than twice the read-ahead in an idle connection's buffer.
            self.buf = BytesMut::new();
        }
        home.put_back(self);
    }

    /// Writes `wbuf` from `written` on, then `data`.
    fn poll_flush_out(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<std::io::Result<()>> {
        while self.written < self.wbuf.len() || !data.is_empty() {
            let framing = &self.wbuf[self.written..];
            let slices = [IoSlice::new(framing), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut self.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            let in_framing = n.min(framing.len());
            self.written += in_framing;
            data.advance(n - in_framing);
        }
        self.wbuf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends the request body as far as it can without waiting. A write that fails stops
    /// the upload (the response may still come: the connection is not reused); a failing
    /// body is an error.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        loop {
            let Some(upload) = self.upload.as_mut() else {
                return Ok(());
            };
            let mut data = std::mem::take(&mut upload.data);
            let flushed = self.poll_flush_out(cx, &mut data);
            let Some(upload) = self.upload.as_mut() else {
                return Ok(());
            };
            upload.data = data;
            match flushed {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(_)) => {
                    self.upload = None;
                    self.reusable = false;
                    return Ok(());
                }
                Poll::Ready(Ok(())) if upload.queued => {
                    self.upload = None;
                    return Ok(());
                }
                Poll::Ready(Ok(())) => {}
            }
            let frame = match Pin::new(&mut upload.body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(Some(Err(err))) => return Err(Error::Body(err)),
                Poll::Ready(None) => None,
            };
            let wbuf = &mut self.wbuf;
            match frame.map(Frame::into_data) {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if upload.chunked {
                        if std::mem::replace(&mut upload.crlf, true) {
                            wbuf.extend_from_slice(b"\r\n");
                        }
                        let _ = write!(wbuf, "{:x}\r\n", chunk.len());
                    } else {
                        let len = chunk.len() as u64;
                        if len > upload.left {
                            return Err(Error::BodyLength);
                        }
                        upload.left -= len;
                    }
                    upload.data = chunk;
                }
                end => {
                    let trailers = match end {
                        Some(Err(frame)) => frame.into_trailers().ok(),
                        _ => None,
                    };
                    if upload.chunked {
                        if upload.crlf {
                            wbuf.extend_from_slice(b"\r\n");
                        }
                        wbuf.extend_from_slice(b"0\r\n");
                        for (name, value) in trailers.iter().flatten() {
                            put_field(wbuf, name.as_str(), value);
                        }
                        wbuf.extend_from_slice(b"\r\n");
                    } else if upload.left != 0 {
                        return Err(Error::BodyLength);
                    }
                    upload.queued = true;
                }
            }
        }
    }

    /// Reads more of the response into `buf`; `Ok(0)` at the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        // Room for a read of `read_size`, or for what the body still has when that is less.
        let want = match self.decoder.remaining() {
            Some(left) if left > 0 => self
                .read_size
                .min(usize::try_from(left).unwrap_or(usize::MAX)),
            _ => self.read_size,
        };
        let spare = self.buf.capacity() - self.buf.len();
        if spare < want.max(1024) {
            self.buf.reserve(want.max(1024));
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.buf
        ))?;
        if n == room && self.read_size < super::UPSTREAM_READ_AHEAD {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Waits for the final response head, sending the request body meanwhile; interim
    /// (1xx) answers other than 101 are skipped, as hyper's client does.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<parse::Head, Error>> {
        loop {
            self.poll_upload(cx)?;
            if !self.buf.is_empty()
                && let Some(head) = parse::parse_head(&mut self.buf, super::UPSTREAM_READ_AHEAD)?
            {
                let status = head.status.as_u16();
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if self.buf.is_empty() => return Poll::Ready(Err(Error::Closed)),
                Ok(0) => return Poll::Ready(Err(parse::ParseError::Incomplete.into())),
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(Error::Io(err))),
            }
        }
    }

    /// The next frame of the response body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<Step, Error>> {
        loop {
            if let Err(err) = self.poll_upload(cx) {
                return Poll::Ready(Err(err));
            }
            match self
                .decoder
                .decode(&mut self.buf, super::UPSTREAM_READ_AHEAD)?
            {
                Step::More => {}
                step => return Poll::Ready(Ok(step)),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Ok(self.decoder.eof()?)),
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(Error::Io(err))),
            }
        }
    }
}

/// Writes `name: value` CRLF.
fn put_field(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Methods whose request without a body gets no `Content-Length: 0` (as hyper's client).
fn bodyless(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::CONNECT
            | Method::TRACE
    )
}

/// How the request body is framed on the wire.
enum Sending {
    /// Nothing more after the head.
    Nothing,
    /// This data goes in the head's write.
    Inline(Bytes),
    /// Streamed: chunked, or with this `Content-Length`.
    Stream { chunked: bool, length: u64 },
}

/// Writes the request head into `out`; says how the body follows.
fn encode_head(out: &mut Vec<u8>, head: &http::request::Parts, body: &mut Body) -> Sending {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let stated = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    for (name, value) in &head.headers {
        // This hop frames the body itself.
        if name == header::TRANSFER_ENCODING || (name == header::CONTENT_LENGTH && stated.is_none())
        {
            continue;
        }
        put_field(out, name.as_str(), value);
    }
    let exact = body.size_hint().exact();
    let sending = if body.is_end_stream() {
        if stated.is_none() && !bodyless(&head.method) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Sending::Nothing
    } else {
        let length = stated.or(exact);
        if stated.is_none()
            && let Some(n) = length
        {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        let inline = matches!(
            &*body,
            Body::Full { data: Some(d) } if d.len() <= INLINE_BODY && length == Some(d.len() as u64)
        );
        match (body, length) {
            (Body::Full { data }, _) if inline => match data.take() {
                Some(data) => Sending::Inline(data),
                None => Sending::Nothing,
            },
            (_, Some(n)) => Sending::Stream {
                chunked: false,
                length: n,
            },
            (_, None) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Sending::Stream {
                    chunked: true,
                    length: 0,
                }
            }
        }
    };
    out.extend_from_slice(b"\r\n");
    sending
}

/// What a failed send leaves: the error, and the request when none of it was sent (it may
/// then go out on another connection). Boxed: rare, and large.
pub(crate) type Failed = Box<(Error, Option<Request<Body>>)>;

/// One exchange on `conn`, which goes back to the pool through `home` when it ends cleanly:
/// the request is sent by [`send`], which does not wait, and the [`Sent`] it returns waits
/// for the answer. Two steps, so the request is not part of the future that waits.
///
/// The head goes out in a write made at once (what the socket does not take is sent while
/// the answer is awaited). When that write fails nothing was sent: the request comes back.
pub(crate) fn send(
    mut conn: Box<RawConn>,
    home: Checkin,
    request: Request<Body>,
) -> Result<Sent, Failed> {
    let head_request = request.method() == Method::HEAD;
    conn.start(home, request)?;
    Ok(Sent {
        conn: Some(conn),
        head_request,
    })
}

/// A request on its way: a future of its response head (the body follows as the client
/// reads it). A plain future rather than an async block: it is the connection and a flag.
pub(crate) struct Sent {
    conn: Option<Box<RawConn>>,
    head_request: bool,
}

impl Future for Sent {
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let head = ready!(conn.poll_head(cx))?;
        match this.conn.take() {
            Some(conn) => Poll::Ready(conn.respond(head, this.head_request)),
            None => Poll::Ready(Err(Error::Closed)),
        }
    }
}

impl RawConn {
    /// Writes the request head (with a small complete body) as far as the socket takes it
    /// now, and queues the rest. When that write fails nothing was sent: the request comes
    /// back whole.
    fn start(&mut self, home: Checkin, request: Request<Body>) -> Result<(), Failed> {
        let (head, mut body) = request.into_parts();
        self.home = Some(home);
        self.reusable = true;
        let sending = encode_head(&mut self.wbuf, &head, &mut body);
        let mut data = match &sending {
            Sending::Inline(data) => data.clone(),
            _ => Bytes::new(),
        };
        let slices = [IoSlice::new(&self.wbuf), IoSlice::new(&data)];
        match self.stream.try_write_vectored(&slices) {
            Ok(n) if n > 0 => {
                let in_framing = n.min(self.wbuf.len());
                self.written = in_framing;
                data.advance(n - in_framing);
            }
            // The socket is full (not a pooled connection's state): all of it is queued.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            failed => {
                let err = failed
                    .err()
                    .unwrap_or_else(|| std::io::ErrorKind::WriteZero.into());
                if let Sending::Inline(data) = sending {
                    body = Body::full(data);
                }
                let unsent = Request::from_parts(head, body);
                return Err(Box::new((Error::Io(err), Some(unsent))));
            }
        }
        self.upload = match sending {
            Sending::Stream { chunked, length } => Some(Upload {
                body,
                chunked,
                left: length,
                data,
                crlf: false,
                queued: false,
            }),
            Sending::Nothing | Sending::Inline(_) => {
                let pending = self.written < self.wbuf.len() || !data.is_empty();
                pending.then(|| Upload {
                    body: Body::Empty,
                    chunked: false,
                    left: 0,
                    data,
                    crlf: false,
                    queued: true,
                })
            }
        };
        if self.upload.is_none() {
            self.wbuf.clear();
            self.written = 0;
        }
        Ok(())
    }

    /// The response for `head`: its body reads the rest from this connection, or, when it
    /// has none, the connection goes back at once.
    fn respond(
        mut self: Box<Self>,
        head: parse::Head,
        head_request: bool,
    ) -> Result<Response<Body>, Error> {
        let framing = parse::framing(&head, head_request)?;
        self.reusable &= parse::keep_alive(&head)
            && framing != parse::Framing::Close
            && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
        self.decoder = Decoder::new(framing);
        let mut response = Response::new(Body::Empty);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        if self.decoder.done() {
            self.hand_back();
        } else {
            *response.body_mut() = Body::Upstream { source: Some(self) };
        }
        Ok(response)
    }
}

impl crate::body::Source for RawConn {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = match ready!(self.poll_body(cx)) {
            Ok(Step::Data(data)) => Frame::data(data),
            Ok(Step::Trailers(trailers)) => Frame::trailers(trailers),
            Ok(Step::End | Step::More) => return Poll::Ready(None),
            Err(err) => return Poll::Ready(Some(Err(Box::new(err)))),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn ended(&self) -> bool {
        self.decoder.done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    fn finish(self: Box<Self>) {
        self.hand_back();
    }
}
