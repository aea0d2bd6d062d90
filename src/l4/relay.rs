//! The relay of one layer 4 connection: bytes copied both ways at once, half-closes passed
//! on, bytes counted, and the connection closed when it is idle for too long or its
//! listener's drain deadline passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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
///
/// One future copies both ways (tokio's `copy_bidirectional`: no split halves, no lock per
/// poll); each side is wrapped to count what is read from it and note when.
pub(crate) async fn relay(
    client: Io,
    server: Io,
    prefix: &[u8],
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> Relayed {
    let start = Instant::now();
    let (bytes_in, bytes_out, last) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let mut client = Counted {
        io: client,
        count: &bytes_in,
        last: &last,
        start,
    };
    let mut server = Counted {
        io: server,
        count: &bytes_out,
        last: &last,
        start,
    };
    let copy = async {
        if !prefix.is_empty() {
            server.io.write_all(prefix).await?;
            bytes_in.fetch_add(prefix.len() as u64, Ordering::Relaxed);
        }
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER).await
    };
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
        done = copy => match done {
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

/// One side of a relay: counts the bytes read from it and notes when anything moved.
struct Counted<'a> {
    io: Io,
    count: &'a AtomicU64,
    last: &'a AtomicU64,
    start: Instant,
}

impl Counted<'_> {
    fn moved(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.count.fetch_add(n as u64, Ordering::Relaxed);
                this.moved();
                Poll::Ready(Ok(()))
            }
            // A TLS peer that closes without close_notify: a close all the same.
            Poll::Ready(Err(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                this.moved();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The peer may have gone already; its half is closed either way.
        match Pin::new(&mut self.get_mut().io).poll_shutdown(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

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
