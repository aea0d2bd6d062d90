//! Layer 4: `tls_passthrough` listeners, which route TLS connections by the SNI in the
//! ClientHello without terminating them, and copy bytes both ways.

pub(crate) mod sni;
pub(crate) mod udp;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::Passthrough;
use crate::view::RequestView;

/// The most a ClientHello may take before it is refused.
const MAX_HELLO: usize = 16 * 1024;

/// Serves one passthrough connection: reads the ClientHello (within `hello_timeout`), picks
/// the upstream and target, and splices the two connections.
pub(crate) async fn serve(mut client: TcpStream, routes: &Passthrough, hello_timeout: Duration) {
    let peer = client.peer_addr().ok();
    let mut buf = Vec::with_capacity(1024);
    let read_hello = async {
        loop {
            match sni::server_name(&buf) {
                sni::Parsed::Done(name) => return Some(name),
                sni::Parsed::Invalid => return None,
                sni::Parsed::NeedMore if buf.len() >= MAX_HELLO => return None,
                sni::Parsed::NeedMore => {}
            }
            let mut chunk = [0u8; 2048];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let name = match tokio::time::timeout(hello_timeout, read_hello).await {
        Ok(Some(name)) => name,
        _ => {
            tracing::debug!(?peer, "no usable TLS ClientHello");
            return;
        }
    };
    let Some(upstream) = routes.route(name.as_deref()) else {
        tracing::debug!(?peer, sni = ?name, "no passthrough route");
        return;
    };
    let headers = http::HeaderMap::new();
    let pick = RequestView {
        client: peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip()),
        host: "",
        method: &http::Method::GET,
        headers: &headers,
        path: "/",
        query: None,
    };
    let Some(index) = upstream.balancer.select(&upstream.targets, &pick, &[]) else {
        tracing::warn!(upstream = %upstream.name, "no available target for passthrough");
        return;
    };
    let target = &upstream.targets[index];
    let Some(addr) = target.addrs.load().first().copied() else {
        return;
    };
    let connect = TcpStream::connect(addr);
    let mut server = match tokio::time::timeout(upstream.pool.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        _ => {
            tracing::warn!(upstream = %upstream.name, target = %target.address, "passthrough connect failed");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    if server.write_all(&buf).await.is_err() {
        return;
    }
    target
        .inflight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    target
        .inflight
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}
