//! The PROXY protocol (HAProxy's v1 text and v2 binary headers): parsing the header a load
//! balancer in front of portico sends at the start of a connection, and writing the header
//! portico sends to an upstream. A leaf: the listener (accepting) and the pool and layer 4
//! (sending) use it; the wire formats themselves come from the `ppp` crate.
//!
//! TLVs of a v2 header are read over and ignored.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

/// The v2 signature (12 bytes) that starts every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 text header starts with this.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest v1 header, `\r\n` included (the specification's bound).
pub(crate) const MAX_V1: usize = 107;
/// The longest v2 header portico reads: the 16-byte fixed part and up to 2 KiB of
/// addresses and TLVs. A longer one is refused.
pub(crate) const MAX_V2: usize = 16 + 2048;

/// Which header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// The text header, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conveyed {
    /// The client and the address it connected to, as the sender saw them.
    Proxied {
        /// The downstream client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// `LOCAL` (v2), `UNKNOWN` (v1) or an address family without IP addresses: the
    /// connection's own addresses stand.
    Local,
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete header of `len` bytes (the bytes after it are the connection's payload).
    Header {
        /// The header's length in bytes.
        len: usize,
        /// What it conveys.
        conveyed: Conveyed,
    },
    /// So far a header, but not complete yet.
    Incomplete,
    /// Not a PROXY header at all.
    NotProxy,
    /// A malformed or oversized header.
    Invalid,
}

/// Reads what `data` starts with. Never looks past the header's end.
pub(crate) fn parse(data: &[u8]) -> Parsed {
    if starts_like(data, V2_SIGNATURE) {
        parse_v2(data)
    } else if starts_like(data, V1_PREFIX) {
        parse_v1(data)
    } else {
        Parsed::NotProxy
    }
}

/// `data` and `prefix` agree on their common length (so `data` may still become `prefix`).
fn starts_like(data: &[u8], prefix: &[u8]) -> bool {
    let n = data.len().min(prefix.len());
    !data.is_empty() && data[..n] == prefix[..n]
}

fn parse_v1(data: &[u8]) -> Parsed {
    let window = &data[..data.len().min(MAX_V1)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if data.len() >= MAX_V1 {
            Parsed::Invalid
        } else {
            Parsed::Incomplete
        };
    };
    let len = lf + 1;
    let Ok(header) = ppp::v1::Header::try_from(&data[..len]) else {
        return Parsed::Invalid;
    };
    // The crate reads up to the first `\r`; the header must end exactly at our `\n`.
    if header.header.len() != len {
        return Parsed::Invalid;
    }
    let conveyed = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Conveyed::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        ppp::v1::Addresses::Tcp6(a) => Conveyed::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        ppp::v1::Addresses::Unknown => Conveyed::Local,
    };
    Parsed::Header { len, conveyed }
}

fn parse_v2(data: &[u8]) -> Parsed {
    if data.len() < 16 {
        return Parsed::Incomplete;
    }
    let len = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if len > MAX_V2 {
        return Parsed::Invalid;
    }
    if data.len() < len {
        return Parsed::Incomplete;
    }
    let Ok(header) = ppp::v2::Header::try_from(&data[..len]) else {
        return Parsed::Invalid;
    };
    let conveyed = match (header.command, header.addresses) {
        (ppp::v2::Command::Local, _) => Conveyed::Local,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Conveyed::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Conveyed::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (ppp::v2::Command::Proxy, _) => Conveyed::Local,
    };
    Parsed::Header { len, conveyed }
}

/// The header that tells an upstream a connection comes from `source` and was made to
/// `destination`. Addresses of different families are both sent as IPv6 (an IPv4 one
/// mapped), since a header carries one family.
pub(crate) fn header(version: Version, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        Version::V2 => v2(ppp::v2::Command::Proxy, (source, destination).into()),
    }
}

/// The header of a connection portico makes on its own behalf (an active health check):
/// v1 `PROXY UNKNOWN`, v2 `LOCAL`, as HAProxy's `check-send-proxy` sends.
pub(crate) fn local_header(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => v2(ppp::v2::Command::Local, ppp::v2::Addresses::Unspecified),
    }
}

fn v2(command: ppp::v2::Command, addresses: ppp::v2::Addresses) -> Vec<u8> {
    let protocol = match addresses {
        ppp::v2::Addresses::Unspecified => ppp::v2::Protocol::Unspecified,
        _ => ppp::v2::Protocol::Stream,
    };
    // Writing into a `Vec` cannot fail; the fallback is the bare signature and command,
    // which an upstream refuses rather than misreads.
    ppp::v2::Builder::with_addresses(ppp::v2::Version::Two | command, protocol, addresses)
        .build()
        .unwrap_or_else(|_| [&V2_SIGNATURE[..], &[0x20 | command as u8]].concat())
}

fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The bytes are a PROXY header, but malformed or too long.
    #[error("malformed PROXY protocol header")]
    Invalid,
    /// The header did not arrive within the timeout.
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The client closed or the socket failed before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed(#[source] Option<std::io::Error>),
}

/// Looks at the start of `stream` and, if it is a PROXY header, consumes exactly that header
/// (never a byte of what follows). `Ok(None)`: the connection does not start with a header,
/// and nothing was consumed. Waits for a split header up to `timeout`.
pub(crate) async fn read(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<Conveyed>, ReadError> {
    match tokio::time::timeout(timeout, read_unbounded(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ReadError::Timeout(timeout)),
    }
}

async fn read_unbounded(stream: &mut TcpStream) -> Result<Option<Conveyed>, ReadError> {
    // Most headers (v1, v2 with IP addresses and a few TLVs) fit the first buffer.
    let mut buf = vec![0u8; 256];
    loop {
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|e| ReadError::Closed(Some(e)))?;
        if n == 0 {
            return Err(ReadError::Closed(None));
        }
        match parse(&buf[..n]) {
            Parsed::NotProxy => return Ok(None),
            Parsed::Invalid => return Err(ReadError::Invalid),
            Parsed::Header { len, conveyed } => {
                // Exactly the header: the request after it stays in the socket.
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|e| ReadError::Closed(Some(e)))?;
                return Ok(Some(conveyed));
            }
            Parsed::Incomplete if n == buf.len() && buf.len() < MAX_V2 => {
                buf.resize(MAX_V2, 0);
            }
            Parsed::Incomplete => wait_for_more(stream).await,
        }
    }
}

/// Waits until more bytes than the ones already peeked may have arrived. A peek leaves the
/// socket readable, so readiness is cleared first and a new arrival sets it again; the
/// short bound covers bytes that arrived between the peek and the clearing.
async fn wait_for_more(stream: &TcpStream) {
    let _ = stream.try_io(Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
    let _ = tokio::time::timeout(Duration::from_millis(5), stream.readable()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn written_headers_parse_back() {
        for (src, dst) in [
            ("203.0.113.7:40000", "10.0.0.1:443"),
            ("[2001:db8::7]:1234", "[2001:db8::1]:80"),
        ] {
            for version in [Version::V1, Version::V2] {
                let mut bytes = header(version, addr(src), addr(dst));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                assert_eq!(
                    parse(&bytes),
                    Parsed::Header {
                        len,
                        conveyed: Conveyed::Proxied {
                            source: addr(src),
                            destination: addr(dst)
                        }
                    },
                    "{version:?} {src}"
                );
                // Every strict prefix is incomplete, never a verdict.
                for cut in 1..len {
                    assert_eq!(
                        parse(&bytes[..cut]),
                        Parsed::Incomplete,
                        "{version:?} {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn v1_text_is_exact() {
        let bytes = header(Version::V1, addr("192.0.2.1:5"), addr("192.0.2.2:80"));
        assert_eq!(bytes, b"PROXY TCP4 192.0.2.1 192.0.2.2 5 80\r\n");
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let bytes = header(Version::V1, addr("192.0.2.1:5"), addr("[::1]:80"));
        assert_eq!(bytes, b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5 80\r\n");
    }

    #[test]
    fn local_headers_keep_the_socket_address() {
        for version in [Version::V1, Version::V2] {
            let bytes = local_header(version);
            assert_eq!(
                parse(&bytes),
                Parsed::Header {
                    len: bytes.len(),
                    conveyed: Conveyed::Local
                }
            );
        }
    }

    #[test]
    fn other_bytes_are_not_headers() {
        for data in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROPFIND / HTTP/1.1\r\n",
            b"\x16\x03\x01",
            b"\r\n\r\nGET",
        ] {
            assert_eq!(parse(data), Parsed::NotProxy);
        }
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(b""), Parsed::NotProxy);
    }

    #[test]
    fn bounds_hold() {
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Parsed::Invalid);
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&v2), Parsed::Invalid);
        assert_eq!(parse(b"PROXY TCP4 nonsense\r\n"), Parsed::Invalid);
        // A `\r` inside the line is not where the header ends.
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n"),
            Parsed::Invalid
        );
    }
}
