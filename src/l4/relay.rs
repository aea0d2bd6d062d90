//! The relay of one layer 4 connection: bytes copied both ways at once, half-closes passed
//! on, bytes counted, and the connection closed when it is idle for too long or its
//! listener's drain deadline passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::Io;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed their half.
    Closed,
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The listener's drain deadline passed.
    Drain,
    /// A read or write failed (a reset, mostly).
    Error,
}

impl End {
    /// The access log's and metrics' name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Drain => "drain_timeout",
            End::Error => "error",
        }
    }
}

/// What a relay moved and how it ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Relayed {
    /// Bytes from the client to the upstream.
    pub(crate) bytes_in: u64,
    /// Bytes from the upstream to the client.
    pub(crate) bytes_out: u64,
    /// Why it ended.
    pub(crate) end: End,
}

/// Size of each direction's buffer.
const BUFFER: usize = 16 * 1024;

/// Relays `client` and `server` until both are done, one fails, nothing moves for `idle`,
/// or `stop` resolves. `prefix` (bytes already read from the client) goes first.
pub(crate) async fn relay(
    client: Io,
    server: Io,
    prefix: &[u8],
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> Relayed {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let start = Instant::now();
    let (bytes_in, bytes_out, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let upward = async {
        if !prefix.is_empty() {
            server_write.write_all(prefix).await?;
            bytes_in.fetch_add(prefix.len() as u64, Ordering::Relaxed);
        }
        pump(&mut client_read, &mut server_write, &bytes_in, &last, start).await
    };
    let downward = pump(
        &mut server_read,
        &mut client_write,
        &bytes_out,
        &last,
        start,
    );
    let idle_watch = async {
        loop {
            let seen = last.load(Ordering::Relaxed);
            tokio::time::sleep_until(start + Duration::from_millis(seen) + idle).await;
            if last.load(Ordering::Relaxed) == seen {
                return;
            }
        }
    };
    let end = tokio::select! {
        done = async { tokio::try_join!(upward, downward) } => match done {
            Ok(_) => End::Closed,
            Err(_) => End::Error,
        },
        () = idle_watch => End::IdleTimeout,
        () = stop => End::Drain,
    };
    Relayed {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        end,
    }
}

/// Copies `from` to `to` until `from` ends, then closes `to`'s write half (a half-close).
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: a close all the same.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(err) => return Err(err),
        };
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            // The peer may have gone already; its half is closed either way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_counts() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (server, mut server_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            relay(
                Box::new(client),
                Box::new(server),
                b"hi ",
                Duration::from_secs(5),
                std::future::pending(),
            )
            .await
        });
        client_peer.write_all(b"there").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi there");
        server_peer.write_all(b"back").await.unwrap();
        server_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        let done = relay.await.unwrap();
        assert_eq!(
            (done.bytes_in, done.bytes_out, done.end),
            (8, 4, End::Closed)
        );
    }

    #[tokio::test]
    async fn a_quiet_relay_ends_at_the_idle_timeout() {
        let (client, _client_peer) = tokio::io::duplex(1024);
        let (server, _server_peer) = tokio::io::duplex(1024);
        let done = relay(
            Box::new(client),
            Box::new(server),
            b"",
            Duration::from_millis(100),
            std::future::pending(),
        )
        .await;
        assert_eq!(done.end, End::IdleTimeout);
    }

    #[tokio::test]
    async fn stop_ends_it() {
        let (client, _client_peer) = tokio::io::duplex(1024);
        let (server, _server_peer) = tokio::io::duplex(1024);
        let done = relay(
            Box::new(client),
            Box::new(server),
            b"",
            Duration::from_secs(60),
            async {},
        )
        .await;
        assert_eq!(done.end, End::Drain);
    }
}
