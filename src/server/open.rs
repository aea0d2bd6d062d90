//! Start-up binding: every listener's sockets and the admin API's, bound fresh or taken over
//! from an old process ([`super::upgrade`]), all of them before any accepts, so a start that
//! fails leaves nothing half-open.

use std::io;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::Shared;
use super::listeners::{ListenerSet, bind};
use super::reload::{StartError, io_error};
use super::upgrade::{self, SocketKind};

/// A listener's sockets, bound or taken over, not yet accepted on.
pub(super) struct Opened {
    name: Arc<str>,
    configured: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
    sockets: Sockets,
    max_connections: usize,
}

enum Sockets {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Opened {
    /// Whether a socket of this set is on `addr`'s port (same family and protocol).
    fn holds_port(&self, addr: std::net::SocketAddr, udp: bool) -> bool {
        matches!(self.sockets, Sockets::Udp(_)) == udp
            && self
                .local
                .is_some_and(|l| l.port() == addr.port() && l.is_ipv4() == addr.is_ipv4())
    }
}

/// Binds (or takes from `handover`) the sockets of every listener of the config in force,
/// starting none: a failure leaves nothing accepting (in an upgrade, not one connection is
/// taken from the queues the old process keeps serving).
pub(super) fn open_listeners(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &ListenerSet,
    mut handover: Option<&mut upgrade::Handover>,
) -> Result<Vec<Opened>, StartError> {
    let snap = shared.snapshot.load_full();
    let mut opened: Vec<Opened> = Vec::new();
    for listener in &snap.listeners {
        let udp = listener.udp.is_some();
        let kind = if udp {
            SocketKind::Udp
        } else {
            SocketKind::Tcp
        };
        let handed = handover
            .as_deref_mut()
            .and_then(|h| h.claim(&listener.name, kind, listener.addr));
        let ours = opened.iter().any(|o| o.holds_port(listener.addr, udp))
            || if udp {
                listeners.holds_udp_port(listener.addr)
            } else {
                listeners.holds_port(listener.addr)
            };
        let what = if udp {
            format!(
                "cannot bind udp listener `{}` to {}",
                listener.name, listener.addr
            )
        } else {
            format!(
                "cannot bind listener `{}` to {}",
                listener.name, listener.addr
            )
        };
        let sockets = match (handed, udp) {
            (Some(handed), true) => {
                let local = handed.local;
                let mut sockets = handed.into_udp().map_err(StartError::Upgrade)?;
                // More workers than the old process had: the rest join the same port.
                let more = workers.len().saturating_sub(sockets.len());
                if more > 0 {
                    sockets.extend(super::udp::bind(local, more, true).map_err(io_error(what))?);
                }
                Sockets::Udp(sockets)
            }
            (Some(handed), false) => {
                let local = handed.local;
                let mut sockets = handed.into_tcp().map_err(StartError::Upgrade)?;
                let more = workers.len().saturating_sub(sockets.len());
                if more > 0 {
                    sockets.extend(bind(local, more, true).map_err(io_error(what))?);
                }
                Sockets::Tcp(sockets)
            }
            (None, true) => Sockets::Udp(
                super::udp::bind(listener.addr, workers.len(), ours).map_err(io_error(what))?,
            ),
            (None, false) => {
                Sockets::Tcp(bind(listener.addr, workers.len(), ours).map_err(io_error(what))?)
            }
        };
        let local = match &sockets {
            Sockets::Tcp(s) => s.first().and_then(|s| s.local_addr().ok()),
            Sockets::Udp(s) => s.first().and_then(|s| s.local_addr().ok()),
        };
        opened.push(Opened {
            name: Arc::clone(&listener.name),
            configured: listener.addr,
            local,
            sockets,
            max_connections: listener.limits.max_connections,
        });
    }
    Ok(opened)
}

/// The admin API's socket: taken from `handover`, or bound.
pub(super) fn admin_socket(
    addr: std::net::SocketAddr,
    handover: Option<&mut upgrade::Handover>,
) -> Result<std::net::TcpListener, StartError> {
    match handover.and_then(|h| h.claim("admin", SocketKind::Admin, addr)) {
        Some(handed) => {
            let mut sockets = handed.into_tcp().map_err(StartError::Upgrade)?;
            sockets.pop().ok_or_else(|| StartError::Io {
                what: "the admin API's handed-over socket".to_owned(),
                source: io::ErrorKind::NotFound.into(),
            })
        }
        None => std::net::TcpListener::bind(addr)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(io_error(format!("cannot bind the admin API to {addr}"))),
    }
}

/// Starts accepting on every opened listener.
pub(super) fn start_listeners(
    shared: &Arc<Shared>,
    workers: &[Handle],
    listeners: &mut ListenerSet,
    opened: Vec<Opened>,
) -> Result<(), StartError> {
    for o in opened {
        let what = format!("cannot start listener `{}`", o.name);
        match o.sockets {
            Sockets::Tcp(sockets) => listeners
                .start(
                    shared,
                    workers,
                    o.name,
                    o.configured,
                    sockets,
                    o.max_connections,
                )
                .map_err(io_error(what))?,
            Sockets::Udp(sockets) => listeners
                .start_udp(shared, workers, o.name, o.configured, sockets)
                .map_err(io_error(what))?,
        };
    }
    Ok(())
}
