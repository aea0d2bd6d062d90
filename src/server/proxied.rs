//! Stage `accept`, first step on a listener with `proxy_protocol`: the PROXY header a trusted
//! load balancer sends before anything else tells the client's address, which then stands for
//! the socket's everywhere (X-Forwarded-For, logs, `ip_restriction`, `ip_hash`, rate limits).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::observe::Metrics;
use crate::proxy_protocol::{self, Conveyed, ReadError};
use crate::runtime::ProxyAccept;

/// Reads the header `stream` starts with, under `accept`'s rules. The client and local
/// addresses to serve the connection with, or `None` when it must be closed.
pub(crate) async fn accept(
    stream: &mut TcpStream,
    accept: &ProxyAccept,
    (client, local): (SocketAddr, SocketAddr),
    listener: &str,
    metrics: &Metrics,
) -> Option<(SocketAddr, SocketAddr)> {
    let trusted = accept.trusts(client.ip());
    let refuse = |reason: &'static str| {
        metrics.proxy_refused(listener, reason);
        None
    };
    match proxy_protocol::read(stream, accept.timeout).await {
        Ok(Some(_)) if !trusted => {
            // A header from anyone else would let them claim any address.
            tracing::warn!(listener, %client, "PROXY protocol header from an untrusted source; closed");
            refuse("untrusted")
        }
        Ok(Some(Conveyed::Proxied {
            source,
            destination,
        })) => Some((source, destination)),
        Ok(Some(Conveyed::Local)) => Some((client, local)),
        Ok(None) if trusted && !accept.optional => {
            tracing::debug!(listener, %client, "no PROXY protocol header from a trusted source; closed");
            refuse("missing")
        }
        Ok(None) => Some((client, local)),
        // Not a header so far: an untrusted client is served as it is.
        Err(ReadError::Timeout(_)) if !trusted => Some((client, local)),
        Err(err @ ReadError::Timeout(_)) => {
            tracing::debug!(listener, %client, error = %err, "closed");
            refuse("timeout")
        }
        Err(err @ ReadError::Invalid) => {
            tracing::debug!(listener, %client, error = %err, "closed");
            refuse("invalid")
        }
        Err(ReadError::Closed(_)) => None,
    }
}
