//! The server name in a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), read from the raw
//! bytes without terminating TLS. Bounds are checked at every step: a malformed hello is
//! `Invalid`, never a panic.

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not a whole ClientHello yet.
    NeedMore,
    /// Not a TLS ClientHello.
    Invalid,
    /// A ClientHello, with its `host_name` if it had one.
    Done(Option<String>),
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Reads the SNI from the start of a TLS connection. Handshake messages split over several
/// records are joined first.
pub(crate) fn server_name(bytes: &[u8]) -> Parsed {
    // Join handshake records until the ClientHello is complete.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return Parsed::NeedMore;
        }
        // ContentType handshake (22), legacy version 3.x.
        if rest[0] != 22 || rest[1] != 3 {
            return Parsed::Invalid;
        }
        let len = usize::from(rest[3]) << 8 | usize::from(rest[4]);
        if len == 0 || len > 16_384 + 2048 {
            return Parsed::Invalid;
        }
        if rest.len() < 5 + len {
            return Parsed::NeedMore;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            let body = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if handshake[0] != 1 {
                return Parsed::Invalid;
            }
            if handshake.len() >= 4 + body {
                return match client_hello(&handshake[4..4 + body]) {
                    Some(name) => Parsed::Done(name),
                    None => Parsed::Invalid,
                };
            }
        }
    }
}

fn client_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { data: body };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.data.is_empty() {
        return Some(None);
    }
    let mut extensions = Reader { data: r.vec16()? };
    while !extensions.data.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        // server_name: a list of (type, name); type 0 is host_name.
        let mut list = Reader { data };
        let mut names = Reader {
            data: list.vec16()?,
        };
        while !names.data.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return None;
                }
                return Some(Some(name.to_owned()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello made by rustls for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_from_a_real_hello() {
        let bytes = hello("db.example.com");
        assert_eq!(
            server_name(&bytes),
            Parsed::Done(Some("db.example.com".into()))
        );
        for cut in [0, 3, 5, 40, bytes.len() - 1] {
            assert_eq!(server_name(&bytes[..cut]), Parsed::NeedMore, "cut {cut}");
        }
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Invalid);
        // An IP address is never sent as SNI.
        assert_eq!(server_name(&hello("127.0.0.1")), Parsed::Done(None));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = server_name(&data);
        }

        #[test]
        fn corrupted_hellos_never_panic(flip in 0usize..400, value in any::<u8>()) {
            let mut bytes = hello("x.example");
            let i = flip % bytes.len();
            bytes[i] = value;
            let _ = server_name(&bytes);
        }
    }
}
