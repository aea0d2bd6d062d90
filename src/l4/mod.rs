//! Layer 4: listeners that relay connections rather than serve HTTP. `tcp` relays the bytes
//! as they come, `tls` terminates TLS first (as https does) and `tls_passthrough` routes by
//! the server name in the ClientHello without terminating. All three pick a target with the
//! upstream's balancer and connect with a retry ([`pick`]), relay with an idle timeout and a
//! drain deadline ([`relay`]), and end with metrics and one access-log line.

pub(crate) mod pick;
pub(crate) mod relay;
pub(crate) mod sni;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::runtime::{Listener, Shared, Upstream};

/// Either side of a relay: TCP or TLS over it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed side of a relay.
pub(crate) type Io = Box<dyn Stream>;

/// The most a ClientHello may take before it is refused.
const MAX_HELLO: usize = 16 * 1024;

/// One relayed connection as far as it got, for its log line and metrics.
struct Record<'a> {
    listener: &'a Listener,
    protocol: &'static str,
    client: SocketAddr,
    sni: Option<String>,
    upstream: Option<&'a Upstream>,
    target: Option<usize>,
    attempts: u32,
    started: Instant,
}

impl Record<'_> {
    /// Writes the access-log line and counts the connection.
    fn finish(&self, shared: &Shared, result: &'static str, bytes: (u64, u64), end: Option<&str>) {
        let upstream = self.upstream.map_or("", |u| &*u.name);
        shared
            .metrics
            .l4
            .ended(&self.listener.name, upstream, result, bytes.0, bytes.1);
        if !shared.access_log.enabled() {
            return;
        }
        let target = self
            .upstream
            .zip(self.target)
            .and_then(|(u, i)| u.targets.get(i))
            .map(|t| &*t.address);
        let fields = serde_json::json!({
            "ts": now(),
            "client": self.client.to_string(),
            "listener": &*self.listener.name,
            "protocol": self.protocol,
            "sni": self.sni,
            "upstream": self.upstream.map(|u| &*u.name),
            "target": target,
            "attempts": self.attempts,
            "bytes_in": bytes.0,
            "bytes_out": bytes.1,
            "duration_ms": self.started.elapsed().as_millis() as u64,
            "result": result,
            "end": end,
        });
        let mut line = fields.to_string();
        line.push('\n');
        shared.access_log.write(line);
    }
}

/// Seconds since the Unix epoch with milliseconds, as the HTTP access log has them.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// Serves one connection of a `tcp`, `tls` or `tls_passthrough` listener. `client` is the
/// client's address and `local` the one it connected to, as the accept loop knows them (a
/// trusted PROXY header's, if any); `stop` resolves when the listener's drain deadline has
/// passed (the connection is closed then).
pub(crate) async fn serve(
    shared: &Shared,
    listener: &Listener,
    stream: TcpStream,
    (client, local): (SocketAddr, SocketAddr),
    stop: impl Future<Output = ()>,
) {
    let mut record = Record {
        listener,
        protocol: "tcp",
        client,
        sni: None,
        upstream: None,
        target: None,
        attempts: 0,
        started: Instant::now(),
    };
    let handshake = listener.limits.header_timeout;
    let mut prefix = Vec::new();
    let (io, upstream, tls): (Io, _, _) = if let Some(routes) = &listener.passthrough {
        record.protocol = "tls_passthrough";
        let mut stream = stream;
        let name = match read_hello(&mut stream, &mut prefix, handshake).await {
            Some(name) => name,
            None => {
                tracing::debug!(%client, "no usable TLS ClientHello");
                record.finish(shared, "handshake_failed", (0, 0), None);
                return;
            }
        };
        record.sni = name.clone();
        let Some(upstream) = routes.route(name.as_deref()) else {
            tracing::debug!(%client, sni = ?name, "no passthrough route");
            record.finish(shared, "no_route", (0, 0), None);
            return;
        };
        (Box::new(stream), upstream, None)
    } else if let Some(relayed) = &listener.stream {
        // A `tls` listener has its `tls`; a `tcp` one has none.
        let io: Io = match &listener.tls {
            Some(config) => {
                record.protocol = "tls";
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
                match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        shared.metrics.tls_handshake(&listener.name, "ok");
                        record.sni = tls.get_ref().1.server_name().map(str::to_owned);
                        Box::new(tls)
                    }
                    Ok(Err(err)) => {
                        shared.metrics.tls_handshake(&listener.name, "failed");
                        tracing::debug!(%client, error = %err, "TLS handshake failed");
                        record.finish(shared, "handshake_failed", (0, 0), None);
                        return;
                    }
                    Err(_) => {
                        shared.metrics.tls_handshake(&listener.name, "timeout");
                        tracing::debug!(%client, "TLS handshake timed out");
                        record.finish(shared, "handshake_failed", (0, 0), None);
                        return;
                    }
                }
            }
            None => Box::new(stream),
        };
        (io, &relayed.upstream, relayed.tls.as_ref())
    } else {
        return;
    };
    record.upstream = Some(upstream);
    let opened = match pick::open(upstream, tls, (client, local)).await {
        Ok(opened) => opened,
        Err(refused) => {
            tracing::warn!(
                listener = %listener.name,
                upstream = %upstream.name,
                %client,
                attempts = refused.attempts,
                reason = %refused.reason,
                "closing client connection: no target took it"
            );
            record.attempts = refused.attempts;
            record.target = refused.target;
            record.finish(shared, refused.result, (0, 0), None);
            return;
        }
    };
    record.target = Some(opened.target);
    record.attempts = opened.attempts;
    let relayed = relay::relay(io, opened.io, &prefix, listener.limits.idle_timeout, stop).await;
    // The target's count comes down before the line is logged: whoever reads the line may
    // count on the target being free.
    drop(opened._open);
    if relayed.end == relay::End::Drain {
        tracing::info!(listener = %listener.name, %client, "drain timeout: relayed connection closed");
    }
    record.finish(
        shared,
        "relayed",
        (relayed.bytes_in, relayed.bytes_out),
        Some(relayed.end.name()),
    );
}

/// Reads the ClientHello into `buf` (within `timeout`) and returns its server name, if any;
/// `None` when it does not come or is not TLS.
async fn read_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Option<Option<String>> {
    let read = async {
        loop {
            match sni::server_name(buf) {
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
    tokio::time::timeout(timeout, read).await.ok().flatten()
}
