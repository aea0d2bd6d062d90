//! Stage `accept`, across processes: the zero-downtime binary upgrade.
//!
//! With `upgrade.socket` set, the running process listens on that Unix socket. A new process
//! started with `portico run --upgrade-from PATH` compiles its config, connects, and receives
//! every listening socket (each listener's per-worker `SO_REUSEPORT` sockets, UDP sockets,
//! the admin API's) as file descriptors (`SCM_RIGHTS`), each group described by listener
//! name, kind and address. Once it accepts on them it says so; the old process then stops
//! accepting and drains as on SIGTERM. Both accept from the same kernel queues until then, and
//! the queues outlive the old process because they are the same sockets, never re-bound
//! copies (a closed `SO_REUSEPORT` socket resets the connections waiting in its queue).
//!
//! The exchange is one JSON object a line, over a stream socket:
//! new `hello` → old `sockets`… (descriptors attached to each) `end` → new `serving` → old
//! `draining`. Anything else, or silence past a bound, aborts the upgrade; until `serving`
//! the old process has changed nothing.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

/// Names the exchange and its version; a peer that does not say it is not a portico.
const PROTOCOL: &str = "portico-upgrade/1";
/// Descriptors attached to one message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 64;
/// A line longer than this is not from a portico.
const MAX_LINE: usize = 64 * 1024;
/// How long the new process waits for the sockets, and the old one for `hello`.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to start accepting.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);

/// What a handed-over socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SocketKind {
    /// A TCP listener's socket (http, https, tcp, tls, tls_passthrough).
    Tcp,
    /// A `protocol: udp` listener's socket.
    Udp,
    /// The admin API's socket.
    Admin,
}

impl SocketKind {
    fn socket_type(self) -> SocketType {
        match self {
            SocketKind::Tcp | SocketKind::Admin => SocketType::STREAM,
            SocketKind::Udp => SocketType::DGRAM,
        }
    }
}

/// One line of the exchange.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    /// New → old: asks for the sockets.
    Hello { protocol: String, pid: u32 },
    /// Old → new: `fds` sockets of one listener are attached.
    Sockets {
        listener: String,
        kind: SocketKind,
        configured: SocketAddr,
        local: SocketAddr,
        fds: usize,
    },
    /// Old → new: every socket was sent.
    End { pid: u32 },
    /// Old → new: no upgrade now.
    Refused { reason: String },
    /// New → old: accepting on the sockets; stop and drain.
    Serving { pid: u32 },
    /// Old → new: stopped accepting; draining.
    Draining,
}

/// Why an upgrade could not take the sockets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// The socket file is missing or nobody listens on it.
    #[error("cannot connect to the upgrade socket {path}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The peer does not speak the upgrade exchange.
    #[error("{path} is not a portico upgrade socket: {detail}")]
    NotPortico {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The running process said no.
    #[error("the running portico refused the upgrade: {0}")]
    Refused(String),
    /// The running process did not answer in time.
    #[error("the running portico did not hand over its sockets within {0:?}")]
    Timeout(Duration),
    /// Reading or writing the upgrade connection failed.
    #[error("the upgrade connection failed")]
    Io(#[source] io::Error),
    /// A received descriptor is not the socket it was described as.
    #[error("the socket handed over for listener `{listener}` is not a {kind:?} socket on {local}")]
    Mismatch {
        /// The listener.
        listener: String,
        /// What it was said to be.
        kind: SocketKind,
        /// Its address, as described.
        local: SocketAddr,
    },
}

/// What went wrong reading one line.
#[derive(Debug)]
enum RecvError {
    Io(io::Error),
    Closed,
    Garbled(String),
}

/// An upgrade connection: lines out, lines and descriptors in.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Sends `message` with `fds` attached to its first byte.
    async fn send(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let stream = &self.stream;
        let sent = stream
            .async_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("ancillary buffer too small"));
                }
                let iov = [IoSlice::new(&line)];
                rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await?;
        // The descriptors went with the first byte; the rest of a short write is plain.
        self.stream.write_all(&line[sent..]).await
    }

    /// Receives the next line, and any descriptors sent with it into the queue.
    async fn recv(&mut self) -> Result<Message, RecvError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line[..end])
                    .map_err(|err| RecvError::Garbled(err.to_string()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(RecvError::Garbled("line too long".to_owned()));
            }
            let mut chunk = [0u8; 4096];
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
            let stream = &self.stream;
            let (read, fds, truncated) = stream
                .async_io(Interest::READABLE, || {
                    let mut control = RecvAncillaryBuffer::new(&mut space);
                    let mut iov = [IoSliceMut::new(&mut chunk)];
                    let got = rustix::net::recvmsg(
                        stream,
                        &mut iov,
                        &mut control,
                        RecvFlags::CMSG_CLOEXEC,
                    )
                    .map_err(io::Error::from)?;
                    let mut fds = Vec::new();
                    for message in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(received) = message {
                            fds.extend(received);
                        }
                    }
                    Ok((got.bytes, fds, got.flags.contains(ReturnFlags::CTRUNC)))
                })
                .await
                .map_err(RecvError::Io)?;
            self.fds.extend(fds);
            if truncated {
                return Err(RecvError::Garbled("descriptors were truncated".to_owned()));
            }
            if read == 0 {
                return Err(RecvError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// The old process's side: the upgrade socket it listens on.
#[derive(Debug)]
pub(crate) struct Offer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, so only our own file is removed at exit.
    file: (u64, u64),
}

impl Offer {
    /// Listens on `path` (mode 0600). A file there is replaced when `replacing` (this process
    /// upgrades from it) or when it is a socket nobody listens on; a live one is refused.
    pub(crate) fn bind(path: &Path, replacing: bool) -> io::Result<Offer> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if !replacing && std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process listens on {}", path.display()),
                ));
            }
        }
        // Bound under a temporary name, made private, then renamed over the path: no moment
        // with a wider mode, and a new process replaces the old one's file in one step.
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!(".{}.tmp", std::process::id()));
        let staging = PathBuf::from(staging);
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging)?;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&staging, path));
        if let Err(err) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(err);
        }
        let meta = std::fs::metadata(path)?;
        Ok(Offer {
            listener,
            path: path.to_owned(),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The next process that connects.
    pub(crate) async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }

    /// The path it listens on.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // After a handover the path is the new process's socket: leave it.
        if let Ok(meta) = std::fs::metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sockets the old process offers: duplicates of one listener's descriptors.
#[derive(Debug)]
pub(crate) struct Offered {
    /// The listener's name (`admin` for the admin API).
    pub(crate) name: Arc<str>,
    /// What the sockets are.
    pub(crate) kind: SocketKind,
    /// The address as configured.
    pub(crate) configured: SocketAddr,
    /// The address bound.
    pub(crate) local: SocketAddr,
    /// Duplicates of the sockets.
    pub(crate) fds: Vec<OwnedFd>,
}

/// The new process serves: the control loop stops accepting, then says so on `stopped`.
#[derive(Debug)]
pub(crate) struct Serving {
    /// The new process.
    pub(crate) pid: u32,
    /// Told once every listener was told to stop accepting.
    pub(crate) stopped: tokio::sync::oneshot::Sender<()>,
}

/// Tells a process that connects while a handover is under way that it must wait.
pub(crate) async fn refuse(stream: UnixStream, reason: &str) {
    let mut conn = Conn::new(stream);
    let reply = Message::Refused {
        reason: reason.to_owned(),
    };
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn.send(&reply, &[])).await;
}

/// The old process's side of one exchange: sends `sockets` and, once the new process says it
/// is serving, reports it on `serving`; confirms to the new process once told on
/// [`Serving::stopped`]. Any failure leaves this process serving as before.
pub(crate) async fn hand_over(
    stream: UnixStream,
    sockets: Vec<Offered>,
    serving: tokio::sync::oneshot::Sender<Serving>,
) {
    let peer = stream
        .peer_cred()
        .ok()
        .and_then(|cred| cred.pid())
        .unwrap_or(0);
    let mut conn = Conn::new(stream);
    match offer(&mut conn, &sockets).await {
        Ok(pid) => {
            tracing::info!(
                pid,
                "upgrade: the new process is serving; this one stops accepting and drains"
            );
            let (stopped, accepting_stopped) = tokio::sync::oneshot::channel();
            if serving.send(Serving { pid, stopped }).is_err() {
                return;
            }
            // Confirmed once every listener was told to stop accepting.
            if tokio::time::timeout(EXCHANGE_TIMEOUT, accepting_stopped)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                let draining = conn.send(&Message::Draining, &[]);
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, draining).await;
            }
        }
        Err(reason) => {
            tracing::warn!(
                peer_pid = peer,
                "upgrade abandoned, still serving: {reason}"
            );
        }
    }
}

async fn offer(conn: &mut Conn, sockets: &[Offered]) -> Result<u32, String> {
    let hello = tokio::time::timeout(EXCHANGE_TIMEOUT, conn.recv())
        .await
        .map_err(|_| "no hello in time".to_owned())?;
    match hello {
        Ok(Message::Hello { protocol, .. }) if protocol == PROTOCOL => {}
        Ok(Message::Hello { protocol, .. }) => {
            let reason = format!("unsupported protocol {protocol}, this process speaks {PROTOCOL}");
            let reply = Message::Refused {
                reason: reason.clone(),
            };
            let _ = conn.send(&reply, &[]).await;
            return Err(reason);
        }
        Ok(other) => return Err(format!("unexpected {other:?}")),
        Err(err) => return Err(format!("not an upgrade request: {err:?}")),
    }
    let mut count = 0;
    let mut names = Vec::new();
    for group in sockets {
        for chunk in group.fds.chunks(FDS_PER_MESSAGE) {
            let message = Message::Sockets {
                listener: group.name.to_string(),
                kind: group.kind,
                configured: group.configured,
                local: group.local,
                fds: chunk.len(),
            };
            let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            conn.send(&message, &fds)
                .await
                .map_err(|err| format!("sending sockets: {err}"))?;
            count += chunk.len();
        }
        names.push(format!("{}({})", group.name, group.fds.len()));
    }
    let end = Message::End {
        pid: std::process::id(),
    };
    conn.send(&end, &[])
        .await
        .map_err(|err| format!("sending sockets: {err}"))?;
    tracing::info!(
        listeners = %names.join(" "),
        fds = count,
        "upgrade: sockets handed over; waiting for the new process to serve"
    );
    match tokio::time::timeout(SERVING_TIMEOUT, conn.recv()).await {
        Err(_) => Err(format!(
            "the new process did not serve within {SERVING_TIMEOUT:?}"
        )),
        Ok(Ok(Message::Serving { pid })) => Ok(pid),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(RecvError::Closed)) => {
            Err("the new process went away before serving (its log says why)".to_owned())
        }
        Ok(Err(err)) => Err(format!("{err:?}")),
    }
}

/// One listener's sockets, received by the new process.
#[derive(Debug)]
pub(crate) struct Handed {
    /// The listener's name in the old process.
    pub(crate) name: String,
    /// What the sockets are.
    pub(crate) kind: SocketKind,
    /// The address as the old process's config had it.
    pub(crate) configured: SocketAddr,
    /// The address bound.
    pub(crate) local: SocketAddr,
    /// The sockets.
    pub(crate) fds: Vec<OwnedFd>,
}

impl Handed {
    /// The sockets as TCP listeners, checked to be what they were said to be.
    pub(crate) fn into_tcp(self) -> Result<Vec<std::net::TcpListener>, UpgradeError> {
        let (name, kind, local) = (self.name, self.kind, self.local);
        self.fds
            .into_iter()
            .map(|fd| {
                let listener = std::net::TcpListener::from(fd);
                let fits = rustix::net::sockopt::socket_type(&listener)
                    .is_ok_and(|t| t == kind.socket_type())
                    && listener.local_addr().is_ok_and(|a| a == local)
                    && listener.set_nonblocking(true).is_ok();
                fits.then_some(listener).ok_or(UpgradeError::Mismatch {
                    listener: name.clone(),
                    kind,
                    local,
                })
            })
            .collect()
    }

    /// The sockets as UDP sockets, checked to be what they were said to be.
    pub(crate) fn into_udp(self) -> Result<Vec<std::net::UdpSocket>, UpgradeError> {
        let (name, kind, local) = (self.name, self.kind, self.local);
        self.fds
            .into_iter()
            .map(|fd| {
                let socket = std::net::UdpSocket::from(fd);
                let fits = rustix::net::sockopt::socket_type(&socket)
                    .is_ok_and(|t| t == SocketType::DGRAM)
                    && socket.local_addr().is_ok_and(|a| a == local)
                    && socket.set_nonblocking(true).is_ok();
                fits.then_some(socket).ok_or(UpgradeError::Mismatch {
                    listener: name.clone(),
                    kind,
                    local,
                })
            })
            .collect()
    }
}

/// The new process's side: the sockets it took and the connection to tell the old one on.
pub(crate) struct Handover {
    conn: Conn,
    /// The old process.
    pub(crate) old_pid: u32,
    sockets: Vec<Handed>,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("old_pid", &self.old_pid)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}

/// Connects to the upgrade socket at `path` and takes every socket the running process has.
pub(crate) async fn take(path: &Path) -> Result<Handover, UpgradeError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| UpgradeError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut conn = Conn::new(stream);
    let exchange = async {
        let hello = Message::Hello {
            protocol: PROTOCOL.to_owned(),
            pid: std::process::id(),
        };
        conn.send(&hello, &[]).await.map_err(UpgradeError::Io)?;
        let mut sockets: Vec<Handed> = Vec::new();
        loop {
            let message = match conn.recv().await {
                Ok(m) => m,
                Err(RecvError::Io(err)) => return Err(UpgradeError::Io(err)),
                Err(RecvError::Closed) => {
                    return Err(UpgradeError::NotPortico {
                        path: path.to_owned(),
                        detail: "it closed the connection without an answer".to_owned(),
                    });
                }
                Err(RecvError::Garbled(detail)) => {
                    return Err(UpgradeError::NotPortico {
                        path: path.to_owned(),
                        detail,
                    });
                }
            };
            match message {
                Message::Sockets {
                    listener,
                    kind,
                    configured,
                    local,
                    fds,
                } => {
                    if fds > conn.fds.len() {
                        return Err(UpgradeError::NotPortico {
                            path: path.to_owned(),
                            detail: format!("{fds} sockets announced, {} came", conn.fds.len()),
                        });
                    }
                    let received: Vec<OwnedFd> = conn.fds.drain(..fds).collect();
                    match sockets.last_mut() {
                        Some(last)
                            if last.name == listener
                                && last.kind == kind
                                && last.configured == configured =>
                        {
                            last.fds.extend(received);
                        }
                        _ => sockets.push(Handed {
                            name: listener,
                            kind,
                            configured,
                            local,
                            fds: received,
                        }),
                    }
                }
                Message::End { pid } => return Ok((pid, sockets)),
                Message::Refused { reason } => return Err(UpgradeError::Refused(reason)),
                other => {
                    return Err(UpgradeError::NotPortico {
                        path: path.to_owned(),
                        detail: format!("unexpected {other:?}"),
                    });
                }
            }
        }
    };
    let (old_pid, sockets) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| UpgradeError::Timeout(EXCHANGE_TIMEOUT))??;
    let count: usize = sockets.iter().map(|s| s.fds.len()).sum();
    let names: Vec<String> = sockets
        .iter()
        .map(|s| format!("{}({})", s.name, s.fds.len()))
        .collect();
    tracing::info!(
        old_pid,
        listeners = %names.join(" "),
        fds = count,
        "upgrade: sockets taken over"
    );
    Ok(Handover {
        conn,
        old_pid,
        sockets,
    })
}

impl Handover {
    /// The sockets of listener `name` on `configured`, or, for a renamed listener, those on
    /// the same (non-zero) address and kind; `None` when it must be bound fresh.
    pub(crate) fn claim(
        &mut self,
        name: &str,
        kind: SocketKind,
        configured: SocketAddr,
    ) -> Option<Handed> {
        let exact = self
            .sockets
            .iter()
            .position(|s| s.name == name && s.kind == kind && s.configured == configured);
        let index = exact.or_else(|| {
            (configured.port() != 0)
                .then(|| {
                    self.sockets
                        .iter()
                        .position(|s| s.kind == kind && s.configured == configured)
                })
                .flatten()
        })?;
        Some(self.sockets.swap_remove(index))
    }

    /// Tells the old process this one is serving, closes the sockets no listener claimed,
    /// and waits (bounded) for the old one to confirm that it drains.
    pub(crate) async fn serving(mut self) {
        for unused in self.sockets.drain(..) {
            tracing::info!(
                listener = %unused.name,
                addr = %unused.local,
                "upgrade: handed-over listener is not in this config; closing it"
            );
        }
        let serving = Message::Serving {
            pid: std::process::id(),
        };
        let old_pid = self.old_pid;
        let told = async {
            self.conn.send(&serving, &[]).await.ok()?;
            match self.conn.recv().await {
                Ok(Message::Draining) => Some(()),
                _ => None,
            }
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, told).await {
            Ok(Some(())) => {
                tracing::info!(
                    old_pid,
                    "upgrade: the old process stopped accepting and drains"
                )
            }
            _ => tracing::warn!(
                old_pid,
                "upgrade: the old process did not confirm that it drains; it may still accept"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn descriptors_cross_with_their_lines() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Conn::new(a), Conn::new(b));
        let sockets: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let local = sockets[0].local_addr().unwrap();
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
        let message = Message::Sockets {
            listener: "web".to_owned(),
            kind: SocketKind::Tcp,
            configured: local,
            local,
            fds: 3,
        };
        a.send(&message, &fds).await.unwrap();
        a.send(&Message::End { pid: 1 }, &[]).await.unwrap();
        assert!(matches!(
            b.recv().await.unwrap(),
            Message::Sockets { fds: 3, .. }
        ));
        assert!(matches!(b.recv().await.unwrap(), Message::End { pid: 1 }));
        assert_eq!(b.fds.len(), 3);
        let received = std::net::TcpListener::from(b.fds.pop_front().unwrap());
        assert_eq!(received.local_addr().unwrap(), local);
    }

    #[tokio::test]
    async fn the_socket_file_is_private_replaces_a_stale_one_and_refuses_a_live_one() {
        let dir = std::env::temp_dir().join(format!("portico-offer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&path);
        // A stale socket file (nobody listens) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let offer = Offer::bind(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live one is refused, unless this process upgrades from it.
        let err = Offer::bind(&path, false).unwrap_err();
        assert!(err.to_string().contains("another process listens"), "{err}");
        let next = Offer::bind(&path, true).unwrap();
        // The first one's exit leaves the file, now the second one's, alone.
        drop(offer);
        assert!(path.exists());
        drop(next);
        assert!(!path.exists());
        // A file that is not a socket is never replaced.
        std::fs::write(&path, "data").unwrap();
        let err = Offer::bind(&path, true).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_peer_that_is_not_portico_is_an_error() {
        let dir = std::env::temp_dir().join(format!("portico-upgrade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("other.sock");
        let _ = std::fs::remove_file(&path);
        let other = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = other.accept().await.unwrap();
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
        });
        let err = take(&path).await.unwrap_err();
        assert!(matches!(err, UpgradeError::NotPortico { .. }), "{err}");
        server.await.unwrap();
        let missing = take(&dir.join("missing.sock")).await.unwrap_err();
        assert!(matches!(missing, UpgradeError::Connect { .. }), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
