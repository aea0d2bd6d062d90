//! HTTP/2 frame boundaries in one direction of a byte stream (RFC 9113 §4.1), found without
//! parsing payloads: a few comparisons per frame, payloads skipped by length. The client
//! connection's PINGs (`server::scan`) and the shared upstream connection's open streams
//! (`pool::h2idle`) are both read this way. A leaf.

/// Frame header length (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;

/// What a run of bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A whole frame header: type, flags, stream id.
    Header { kind: u8, flags: u8, stream: u32 },
    /// Bytes of the payload of the last header (or of what was skipped first).
    Payload,
}

/// Splits a stream into frame headers and payloads, across any split of the bytes.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Bytes of the current payload still to skip.
    skip: usize,
}

impl Frames {
    /// A splitter that first skips `first` bytes (a client's 24-byte preface, RFC 9113 §3.4),
    /// reported as payload.
    pub(crate) fn skipping(first: usize) -> Self {
        Frames {
            skip: first,
            ..Frames::default()
        }
    }

    /// Feeds the next bytes; `piece` hears of each header and each run of payload bytes.
    pub(crate) fn feed(&mut self, mut data: &[u8], mut piece: impl FnMut(Piece)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                piece(Piece::Payload);
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == FRAME_HEADER {
                let [a, b, c, kind, flags, s0, s1, s2, s3] = self.header;
                self.skip = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
                self.have = 0;
                piece(Piece::Header {
                    kind,
                    flags,
                    stream: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_payloads_across_any_split() {
        // A PING (8-byte payload) then a HEADERS frame on stream 3 with END_STREAM.
        let mut bytes = vec![0, 0, 8, 0x6, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"12345678");
        bytes.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 3, b'x']);
        for split in 0..bytes.len() {
            let mut frames = Frames::default();
            let mut headers = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                frames.feed(part, |p| {
                    if let Piece::Header {
                        kind,
                        flags,
                        stream,
                    } = p
                    {
                        headers.push((kind, flags, stream));
                    }
                });
            }
            assert_eq!(headers, [(0x6, 0, 0), (0x1, 0x1, 3)], "split at {split}");
        }
    }
}
