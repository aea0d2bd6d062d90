//! Binding listeners on every worker and accepting connections, with per-listener connection
//! limits and a graceful drain when a listener is removed or portico stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::Shared;
use super::conn;
use crate::admission::Admission;
use crate::proxy::pipeline::{ClientCert, ConnInfo};
use crate::runtime::Limits;

/// A bound listener: its sockets' accept loops, one per worker.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The address as configured (port 0 allowed).
    pub(crate) configured: SocketAddr,
    /// The address actually bound.
    pub(crate) local: SocketAddr,
    /// The connection limit it was started with; a reload keeps it.
    pub(crate) max_connections: usize,
    /// A `protocol: udp` listener (UDP sockets; see [`super::udp`]).
    pub(crate) udp: bool,
    pub(super) stop: watch::Sender<bool>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// Duplicates of its sockets, kept to hand to a new process when `upgrade` is on (empty
    /// otherwise); closed with the listener, so a removed listener's sockets do close.
    pub(super) fds: Vec<OwnedFd>,
}

/// Every bound listener, by name; owned by the control thread.
#[derive(Debug, Default)]
pub(crate) struct ListenerSet {
    /// Bound listeners by name.
    pub(crate) bound: HashMap<Arc<str>, Bound>,
    /// Whether each listener keeps duplicates of its sockets for a handover
    /// ([`super::upgrade`]).
    pub(crate) keep_fds: bool,
}

/// Where a listener's connections are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving.
    Run,
    /// The listener stopped: finish what is in flight, then close (HTTP/2: GOAWAY).
    Drain,
    /// The drain timeout passed: close now.
    Stop,
}

/// A connection's view of its listener's phase; while it lives, the drain waits for it.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<std::convert::Infallible>,
}

impl Lifecycle {
    /// The phase now.
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Waits for the next change of phase; a listener gone without a word is `Stop`.
    pub(crate) async fn changed(&mut self) -> Phase {
        match self.phase.changed().await {
            Ok(()) => *self.phase.borrow_and_update(),
            Err(_) => Phase::Stop,
        }
    }
}

/// The listener side of [`Lifecycle`]: tells every connection the phase and waits for them.
struct Connections {
    phase: watch::Sender<Phase>,
    alive: mpsc::Sender<std::convert::Infallible>,
    gone: mpsc::Receiver<std::convert::Infallible>,
}

impl Connections {
    fn new() -> Self {
        let (alive, gone) = mpsc::channel(1);
        Connections {
            phase: watch::Sender::new(Phase::Run),
            alive,
            gone,
        }
    }

    fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            phase: self.phase.subscribe(),
            _alive: self.alive.clone(),
        }
    }

    /// Drains for up to `timeout`, then closes whatever is left.
    async fn drain(self, name: &str, timeout: Duration) {
        let Connections {
            phase,
            alive,
            mut gone,
        } = self;
        drop(alive);
        phase.send_replace(Phase::Drain);
        // `recv` returns `None` once every connection's `Lifecycle` is dropped.
        if tokio::time::timeout(timeout, gone.recv()).await.is_err() {
            tracing::warn!(listener = %name, "drain timeout reached; closing remaining connections");
            phase.send_replace(Phase::Stop);
            // Each connection returns at its next poll; bounded all the same.
            let _ = tokio::time::timeout(Duration::from_secs(1), gone.recv()).await;
        }
    }
}

/// Opens `count` sockets on `addr` with `SO_REUSEPORT`; a port 0 is chosen once and shared.
///
/// `SO_REUSEPORT` lets portico's workers share one address, but it would also let a second
/// portico (same user) bind it and silently take part of the traffic. So unless `ours` (the
/// address is already held by a listener of this process, as in a reload that renames it), a
/// probe bind without `SO_REUSEPORT` goes first: it fails while any other socket listens on
/// the address, as a second nginx would.
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    ours: bool,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if !ours {
        probe(addr, Kind::Tcp)?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = worker_socket(addr, Kind::Tcp)?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// Which sockets a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Tcp,
    Udp,
}

impl Kind {
    fn socket(self, addr: SocketAddr) -> std::io::Result<Socket> {
        let (ty, protocol) = match self {
            Kind::Tcp => (Type::STREAM, Protocol::TCP),
            Kind::Udp => (Type::DGRAM, Protocol::UDP),
        };
        let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
        if self == Kind::Tcp {
            // Never refused for connections an earlier run left in TIME_WAIT.
            socket.set_reuse_address(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        Ok(socket)
    }
}

/// One worker's socket on `addr`: `SO_REUSEPORT`, non-blocking, bound.
pub(super) fn worker_socket(addr: SocketAddr, kind: Kind) -> std::io::Result<Socket> {
    let socket = kind.socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Fails with `AddrInUse` when another socket holds `addr`: a bind without `SO_REUSEPORT`
/// conflicts with any listening TCP socket (`SO_REUSEADDR` keeps TIME_WAIT out of it) or any
/// bound UDP socket (UDP has no TIME_WAIT). A port 0 is always free.
pub(super) fn probe(addr: SocketAddr, kind: Kind) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = kind.socket(addr)?;
    // The probe socket closes on return, before the real ones bind.
    match socket.bind(&addr.into()) {
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            match kind {
                Kind::Tcp => format!("{addr} is already in use by another process"),
                Kind::Udp => format!("{addr} (udp) is already in use by another process"),
            },
        )),
        other => other,
    }
}

impl ListenerSet {
    /// Whether a listener of this process already listens on `addr`'s port (same family):
    /// binding next to it is sharing with ourselves, so no probe.
    pub(crate) fn holds_port(&self, addr: SocketAddr) -> bool {
        self.bound
            .values()
            .any(|b| !b.udp && b.local.port() == addr.port() && b.local.is_ipv4() == addr.is_ipv4())
    }

    /// Starts accept loops for already-bound sockets of listener `name`.
    pub(crate) fn start(
        &mut self,
        shared: &Arc<Shared>,
        workers: &[Handle],
        name: Arc<str>,
        configured: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
        max_connections: usize,
    ) -> std::io::Result<SocketAddr> {
        let local = sockets
            .first()
            .map(std::net::TcpListener::local_addr)
            .transpose()?
            .unwrap_or(configured);
        let (stop, stopped) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(max_connections));
        // Shared by every worker's loop and kept for the listener's life: counts and rates
        // per client address hold across workers and reloads.
        let admission = Arc::new(Admission::new(shared.metrics.admission(&name)));
        let fds = self.keep(&sockets, std::net::TcpListener::try_clone)?;
        // Sockets handed over by a process with more workers are all served: a socket left
        // unaccepted would hold the connections the kernel gives it.
        let tasks = workers
            .iter()
            .cycle()
            .zip(sockets)
            .map(|(handle, socket)| {
                handle.spawn(accept_loop(
                    Arc::clone(shared),
                    // Each worker's own copy: every connection and request clones it, and
                    // its count is then written by that worker alone.
                    Arc::from(&*name),
                    socket,
                    stopped.clone(),
                    (Arc::clone(&limit), Arc::clone(&admission)),
                ))
            })
            .collect();
        tracing::info!(listener = %name, addr = %local, "listening");
        self.bound.insert(
            name,
            Bound {
                configured,
                local,
                max_connections,
                udp: false,
                stop,
                tasks,
                fds,
            },
        );
        Ok(local)
    }

    /// Duplicates of `sockets` when they are kept for a handover; none otherwise.
    pub(super) fn keep<S: Into<OwnedFd>>(
        &self,
        sockets: &[S],
        dup: impl Fn(&S) -> std::io::Result<S>,
    ) -> std::io::Result<Vec<OwnedFd>> {
        if !self.keep_fds {
            return Ok(Vec::new());
        }
        sockets.iter().map(|s| dup(s).map(Into::into)).collect()
    }

    /// Stops accepting on `name` and drains its connections in the background.
    pub(crate) fn remove(&mut self, name: &str) -> Option<JoinHandle<()>> {
        let bound = self.bound.remove(name)?;
        let _ = bound.stop.send(true);
        tracing::info!(listener = %name, "listener removed; draining");
        Some(tokio::spawn(async move {
            for task in bound.tasks {
                let _ = task.await;
            }
        }))
    }

    /// Tells every listener to stop accepting; each returned task ends when its connections
    /// have drained.
    pub(crate) fn stop_all(&mut self) -> Vec<JoinHandle<()>> {
        let names: Vec<Arc<str>> = self.bound.keys().cloned().collect();
        names.iter().filter_map(|n| self.remove(n)).collect()
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: std::net::TcpListener,
    mut stopped: watch::Receiver<bool>,
    (limit, admission): (Arc<Semaphore>, Arc<Admission>),
) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(listener = %name, error = %err, "cannot register listener");
            return;
        }
    };
    let gauge = shared.metrics.connections(&name);
    let bound = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let connections = Connections::new();
    let mut cached: Option<(usize, Builder<TokioExecutor>, Limits)> = None;
    let mut stopping = false;
    loop {
        let (stream, client) = if stopping {
            // Told to stop: the connections already in the socket's queue are served (a
            // closed listening socket resets them), taken without waiting, then it closes.
            match queued(&listener) {
                Some(accepted) => accepted,
                None => break,
            }
        } else {
            tokio::select! {
                biased;
                _ = stopped.changed() => {
                    stopping = true;
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %name, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            }
        };
        // Over the limit, an accepted connection waits here, unserved, until another closes.
        // Under it, the connection is served even if the listener stops right now: its client
        // already sent its request, and the drain lets it finish.
        let permit = match Arc::clone(&limit).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                biased;
                _ = stopped.changed() => break,
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            },
        };
        let _ = stream.set_nodelay(true);
        // Settings follow the config in force when the connection arrives.
        let snap = shared.snapshot.load();
        // A listener renamed on its own address binds a new socket beside this one: what
        // this one still accepts is the new name's.
        let Some(config) = snap.listener_at(&name, bound) else {
            continue;
        };
        let name = Arc::clone(&config.name);
        let key = Arc::as_ptr(&*snap) as usize;
        if cached.as_ref().is_none_or(|(k, _, _)| *k != key) {
            cached = Some((key, conn::builder(&config.limits), config.limits));
        }
        let Some((_, builder, limits)) = cached.as_ref() else {
            continue;
        };
        // Per client address, before anything is spent on the connection (a PROXY header's
        // address is checked on the connection's task, once read).
        let slot = match &limits.per_ip {
            Some(per_ip) if config.proxy_protocol.is_none() => {
                match admission.connect(client.ip(), per_ip) {
                    Ok(slot) => slot,
                    Err(_) => continue,
                }
            }
            _ => None,
        };
        let gauge = gauge.clone();
        gauge.inc();
        if let Some(accept) = config.proxy_protocol.clone() {
            // The PROXY header is read on the connection's own task, never in this loop;
            // its addresses then stand for the socket's from the first byte served.
            let (shared, name) = (Arc::clone(&shared), Arc::clone(&name));
            let lifecycle = connections.lifecycle();
            let admission = Arc::clone(&admission);
            tokio::spawn(async move {
                let mut stream = stream;
                let addrs = (client, local_addr(&stream, bound));
                let conveyed =
                    super::proxied::accept(&mut stream, &accept, addrs, &name, &shared.metrics);
                if let Some((client, local)) = conveyed.await {
                    let snap = shared.snapshot.load_full();
                    if let Some(config) = snap.listener(&name) {
                        let slot = match &config.limits.per_ip {
                            Some(per_ip) => admission.connect(client.ip(), per_ip),
                            None => Ok(None),
                        };
                        if let Ok(slot) = slot {
                            let (builder, limits) = (conn::builder(&config.limits), config.limits);
                            let addrs = (client, local);
                            let served = serve_connection(
                                &shared, &name, config, stream, addrs, &builder, &limits,
                                lifecycle, admission,
                            );
                            served.await;
                            drop(slot);
                        }
                    }
                }
                gauge.dec();
                drop(permit);
            });
            continue;
        }
        let addrs = (client, local_addr(&stream, bound));
        let served = serve_connection(
            &shared,
            &name,
            config,
            stream,
            addrs,
            builder,
            limits,
            connections.lifecycle(),
            Arc::clone(&admission),
        );
        tokio::spawn(async move {
            served.await;
            gauge.dec();
            drop((permit, slot));
        });
    }
    drop(listener);
    let drain = shared.snapshot.load().spec.drain_timeout.0;
    connections.drain(&name, drain).await;
}

/// A connection already waiting in `listener`'s queue, taken with one non-blocking accept
/// (not through the runtime's readiness, which may not have seen it yet).
fn queued(listener: &tokio::net::TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let (socket, peer) = socket2::SockRef::from(listener).accept().ok()?;
    let peer = peer.as_socket()?;
    socket.set_nonblocking(true).ok()?;
    let stream = tokio::net::TcpStream::from_std(socket.into()).ok()?;
    Some((stream, peer))
}

/// The address a connection was made to: the listener's, unless it is bound to every address.
fn local_addr(stream: &tokio::net::TcpStream, bound: SocketAddr) -> SocketAddr {
    if bound.ip().is_unspecified() {
        stream.local_addr().unwrap_or(bound)
    } else {
        bound
    }
}

/// The serving of one accepted connection, by the listener's protocol; `client` and `local`
/// are the socket's addresses or those a trusted PROXY header conveyed.
#[allow(clippy::too_many_arguments)]
fn serve_connection(
    shared: &Arc<Shared>,
    name: &Arc<str>,
    config: &crate::runtime::Listener,
    stream: tokio::net::TcpStream,
    (client, local): (SocketAddr, SocketAddr),
    builder: &Builder<TokioExecutor>,
    limits: &Limits,
    lifecycle: Lifecycle,
    admission: Arc<Admission>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    if config.passthrough.is_some() || config.stream.is_some() {
        // Layer 4: the snapshot travels with the connection, like a request's does; the
        // connection holds its listener's lifecycle, so a drain waits for it.
        let (shared, snap, name) = (
            Arc::clone(shared),
            shared.snapshot.load_full(),
            Arc::clone(name),
        );
        let mut lifecycle = lifecycle;
        return Box::pin(async move {
            let stop = async move { while lifecycle.changed().await != Phase::Stop {} };
            if let Some(listener) = snap.listener(&name) {
                crate::l4::serve(&shared, listener, stream, (client, local), stop).await;
            }
        });
    }
    let mut info = ConnInfo {
        client,
        local,
        listener: Arc::clone(name),
        framing: None,
        client_value: crate::proxy::headers::client_value(client.ip()),
        scheme: "http",
        client_cert: None,
        tls: None,
        tunnels: None,
        admission: Some(admission),
    };
    match &config.tls {
        None => Box::pin(conn::serve(
            Arc::clone(shared),
            info,
            stream,
            builder,
            limits,
            lifecycle,
        )),
        Some(tls) => {
            // The handshake runs on the connection's own task, bounded by the head timeout.
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(tls));
            let (shared, builder, limits) = (Arc::clone(shared), builder.clone(), *limits);
            Box::pin(async move {
                let deadline = tokio::time::Instant::now() + limits.header_timeout;
                // A plain HTTP request on this port gets a hint instead of a closed
                // connection (as nginx's 497 does): a TLS record starts with 0x16, an
                // HTTP request with a method's capital letter.
                let mut first = [0u8; 1];
                if let Ok(Ok(1)) = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await
                    && first[0].is_ascii_uppercase()
                {
                    plain_http_hint(stream).await;
                    return;
                }
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        shared.metrics.tls_handshake(&info.listener, "failed");
                        tracing::debug!(client = %client, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        shared.metrics.tls_handshake(&info.listener, "timeout");
                        tracing::debug!(client = %client, "TLS handshake timed out");
                        return;
                    }
                };
                shared.metrics.tls_handshake(&info.listener, "ok");
                info.scheme = "https";
                let session = stream.get_ref().1;
                info.tls = Some(Arc::new(crate::proxy::pipeline::TlsInfo {
                    version: crate::tls::version_name(session.protocol_version()),
                    sni: session.server_name().map(Box::from),
                }));
                info.client_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| crate::tls::identity(leaf))
                    .and_then(|id| {
                        Some(Arc::new(ClientCert {
                            subject: http::HeaderValue::from_str(&id.subject).ok()?,
                            sans: (!id.sans.is_empty())
                                .then(|| http::HeaderValue::from_str(&id.sans.join(", ")).ok())
                                .flatten(),
                        }))
                    });
                conn::serve(shared, info, stream, &builder, &limits, lifecycle).await;
            })
        }
    }
}

/// Answers a plain HTTP request sent to an HTTPS port with a JSON 400 that says so, then
/// closes. The request itself is read (up to a bound) and discarded first, so the client sees
/// the answer rather than a reset.
async fn plain_http_hint(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ =
        tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf)).await;
    let answer = super::conn::early::json_answer(
        b"400 Bad Request",
        "plain_http_on_https",
        "this port speaks HTTPS: send the request with https://",
        None,
    );
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}
