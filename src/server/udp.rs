//! Binding and starting `protocol: udp` listeners: one `SO_REUSEPORT` UDP socket per worker,
//! each served by [`crate::l4::udp::serve`]. Such a listener has no accept loop and nothing
//! to drain: removing it (by a reload or at stop) closes its sockets and ends its sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::Shared;
use super::listeners::{Bound, Kind, ListenerSet, probe, worker_socket};

/// Opens `count` UDP sockets on `addr` with `SO_REUSEPORT`; a port 0 is chosen once and
/// shared. Unless `ours`, a probe bind without `SO_REUSEPORT` goes first, so an address
/// another process holds is refused rather than shared (as for TCP listeners).
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    ours: bool,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    if !ours {
        probe(addr, Kind::Udp)?;
    }
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket: std::net::UdpSocket = worker_socket(addr, Kind::Udp)?.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

impl ListenerSet {
    /// Whether a udp listener of this process is bound to `addr`'s port (same family).
    pub(crate) fn holds_udp_port(&self, addr: SocketAddr) -> bool {
        self.bound
            .values()
            .any(|b| b.udp && b.local.port() == addr.port() && b.local.is_ipv4() == addr.is_ipv4())
    }

    /// Starts serving the already-bound sockets of udp listener `name`, one per worker.
    pub(crate) fn start_udp(
        &mut self,
        shared: &Arc<Shared>,
        workers: &[Handle],
        name: Arc<str>,
        configured: SocketAddr,
        sockets: Vec<std::net::UdpSocket>,
    ) -> std::io::Result<SocketAddr> {
        let local = sockets
            .first()
            .map(std::net::UdpSocket::local_addr)
            .transpose()?
            .unwrap_or(configured);
        let (stop, stopped) = watch::channel(false);
        // The listener's session count, over its sockets; kept while the listener is.
        let open = Arc::new(AtomicUsize::new(0));
        let fds = self.keep(&sockets, std::net::UdpSocket::try_clone)?;
        let tasks = workers
            .iter()
            .cycle()
            .zip(sockets)
            .map(|(handle, socket)| {
                handle.spawn(crate::l4::udp::serve(
                    Arc::clone(shared),
                    Arc::clone(&name),
                    socket,
                    stopped.clone(),
                    Arc::clone(&open),
                ))
            })
            .collect();
        tracing::info!(listener = %name, addr = %local, "listening");
        self.bound.insert(
            name,
            Bound {
                configured,
                local,
                max_connections: 0,
                udp: true,
                stop,
                tasks,
                fds,
            },
        );
        Ok(local)
    }
}
