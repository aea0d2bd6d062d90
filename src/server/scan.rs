//! A cheap watch over the bytes a client sends, for what hyper hides from the proxy.
//!
//! hyper resolves a request head with both `Content-Length` and `Transfer-Encoding` by
//! dropping `Content-Length` (RFC 9112 §6.3), so the pipeline cannot see the conflict. This
//! scanner notes, for each header block (bytes up to an empty line), whether it held both
//! fields; a request that arrives with `Transfer-Encoding` then consumes one such note and is
//! refused with 400. It looks only at the first bytes of each line and skips the rest with
//! `memchr`, so bodies cost one vectorised search per line.

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
const LONGEST: usize = 18;
/// How an HTTP/2 connection starts (the preface, RFC 9113 §3.4, up to its version).
const H2_START: &[u8] = b"PRI * HTTP/2";

/// Scanner state for one connection.
///
/// It also follows message boundaries far enough to tell when every byte read so far belongs
/// to a request hyper has taken in whole (see [`HeadScan::settled`]): heads are counted, and a
/// `Content-Length` body is skipped by its length. A chunked body is not followed: the
/// connection is then never [`settled`](HeadScan::settled) again.
#[derive(Debug, Default)]
pub(crate) struct HeadScan {
    prefix: [u8; LONGEST],
    len: usize,
    in_prefix: bool,
    saw_cl: bool,
    saw_te: bool,
    /// Header blocks seen with both fields, not yet claimed by a request.
    pub(crate) ambiguous: u32,
    /// Leading bytes that matched the start of the HTTP/2 preface so far; `u8::MAX` once one
    /// did not (the preface is recognised across reads, however they are cut).
    preface: u8,
    /// The connection speaks HTTP/2: nothing to scan.
    pub(crate) http2: bool,
    /// The rest of the current line is a `Content-Length` value.
    in_length: bool,
    /// The `Content-Length` value of the current head, as far as read.
    length: u64,
    /// Digits of it seen; and whether spaces followed them.
    length_digits: bool,
    length_done: bool,
    /// The current head's `Content-Length` could not be read (or came twice).
    length_bad: bool,
    /// A CR ended the current header block; its LF ends the head.
    ending: bool,
    /// The body length of the head being ended.
    next_body: u64,
    /// Body bytes of the last head still to come (skipped, not scanned).
    body_left: u64,
    /// Header blocks ended so far.
    heads: usize,
    /// The last byte fed ended a message: a head without a body, or a body.
    at_rest: bool,
    /// Message boundaries are lost (a chunked body, a length not understood).
    lost: bool,
}

impl HeadScan {
    /// Feeds the next bytes read from the client.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        // The bytes before the first line feed are never scanned (the request line), and the
        // preface start holds none, so matching it needs no buffering.
        let have = usize::from(self.preface);
        if have < H2_START.len() {
            let n = (H2_START.len() - have).min(data.len());
            self.preface = if data[..n] == H2_START[have..have + n] {
                (have + n) as u8
            } else {
                u8::MAX
            };
            if usize::from(self.preface) == H2_START.len() {
                self.http2 = true;
            }
        }
        if self.http2 {
            return;
        }
        'bytes: loop {
            if self.body_left > 0 {
                if data.is_empty() {
                    return;
                }
                let take =
                    usize::try_from(self.body_left).map_or(data.len(), |l| l.min(data.len()));
                data = &data[take..];
                self.body_left -= take as u64;
                self.at_rest = self.body_left == 0;
                continue;
            }
            if data.is_empty() {
                return;
            }
            self.at_rest = false;
            if self.in_prefix {
                while let Some((&byte, rest)) = data.split_first() {
                    data = rest;
                    if self.len == 0 && (byte == b'\r' || byte == b'\n') {
                        // An empty line ends a header block.
                        self.end_block();
                        if byte == b'\n' {
                            self.end_head();
                            continue 'bytes;
                        }
                        self.ending = true;
                        self.in_prefix = false;
                        break;
                    }
                    self.prefix[self.len] = byte.to_ascii_lowercase();
                    self.len += 1;
                    let seen = &self.prefix[..self.len];
                    if seen == CONTENT_LENGTH {
                        self.length_bad |= self.saw_cl;
                        self.saw_cl = true;
                        self.in_length = true;
                    } else if seen == TRANSFER_ENCODING {
                        self.saw_te = true;
                    } else if CONTENT_LENGTH.starts_with(seen)
                        || TRANSFER_ENCODING.starts_with(seen)
                    {
                        continue;
                    }
                    self.in_prefix = false;
                    break;
                }
                if data.is_empty() {
                    return;
                }
            }
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    self.line_rest(&data[..i]);
                    data = &data[i + 1..];
                    self.in_length = false;
                    self.in_prefix = true;
                    self.len = 0;
                    if self.ending {
                        self.ending = false;
                        self.end_head();
                    }
                }
                None => {
                    self.line_rest(data);
                    return;
                }
            }
        }
    }

    /// The rest of a line after its first bytes: read when it is a `Content-Length` value.
    fn line_rest(&mut self, rest: &[u8]) {
        if !self.in_length {
            return;
        }
        for &byte in rest {
            match byte {
                b'0'..=b'9' if !self.length_done => {
                    self.length_digits = true;
                    match self
                        .length
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(u64::from(byte - b'0')))
                    {
                        Some(l) => self.length = l,
                        None => self.length_bad = true,
                    }
                }
                b' ' | b'\t' | b'\r' => self.length_done |= self.length_digits,
                _ => self.length_bad = true,
            }
        }
    }

    /// An empty line: the header block ends.
    fn end_block(&mut self) {
        if self.saw_cl && self.saw_te {
            self.ambiguous = self.ambiguous.saturating_add(1);
        }
        self.next_body = 0;
        if self.saw_te || (self.saw_cl && (self.length_bad || !self.length_digits)) {
            self.lost = true;
        } else if self.saw_cl {
            self.next_body = self.length;
        }
        self.saw_cl = false;
        self.saw_te = false;
        self.length = 0;
        self.length_digits = false;
        self.length_done = false;
        self.length_bad = false;
    }

    /// The last byte of a header block (its final LF) was read.
    fn end_head(&mut self) {
        self.heads = self.heads.wrapping_add(1);
        self.body_left = self.next_body;
        self.at_rest = self.body_left == 0;
    }

    /// Whether every byte fed so far belongs to the first `requests` requests, wholly: it ended
    /// a message, that many heads were seen, and no boundary was lost on the way. A server
    /// that has taken in that many requests then holds none of the client's bytes unread.
    pub(crate) fn settled(&self, requests: usize) -> bool {
        !self.http2 && !self.lost && self.at_rest && self.heads == requests
    }

    /// Claims one ambiguous head, if any was seen.
    pub(crate) fn take_ambiguous(&mut self) -> bool {
        if self.ambiguous > 0 {
            self.ambiguous -= 1;
            true
        } else {
            false
        }
    }
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// PING frame type (RFC 9113 §6.7).
const PING: u8 = 0x6;

/// HEADERS frame type (RFC 9113 §6.2).
const HEADERS: u8 = 0x1;
/// PRIORITY frame type (RFC 9113 §6.3).
const PRIORITY: u8 = 0x2;
/// RST_STREAM frame type (RFC 9113 §6.4).
const RST_STREAM: u8 = 0x3;
/// SETTINGS frame type (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// The ACK flag of SETTINGS and PING.
const ACK: u8 = 0x1;

/// Follows HTTP/2 frame boundaries in one direction of a connection and tells whether the
/// bytes carried anything but PINGs. Keep-alive PINGs (portico's own and the client's) must
/// not keep an idle connection open; every other frame is use. It also counts the frames the
/// flood guard weighs (see `conn::flood`).
#[derive(Debug)]
pub(crate) struct FrameScan {
    frames: crate::h2frame::Frames,
    /// The payload being read belongs to a frame that counts as use.
    in_use: bool,
    /// Counts of frames seen so far.
    pub(crate) counts: FrameCounts,
}

/// Frames seen in one direction, by what they cost the server.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameCounts {
    /// HEADERS frames: streams opened (and trailers).
    pub(crate) headers: u64,
    /// RST_STREAM frames.
    pub(crate) resets: u64,
    /// Frames that ask for work and carry none: PING and SETTINGS (not their ACKs), PRIORITY.
    pub(crate) control: u64,
}

impl FrameScan {
    /// For what a client sends: its preface comes first.
    pub(crate) fn client() -> Self {
        FrameScan {
            frames: crate::h2frame::Frames::skipping(PREFACE_LEN),
            in_use: true,
            counts: FrameCounts::default(),
        }
    }

    /// For what the server sends: frames from the first byte.
    pub(crate) fn server() -> Self {
        FrameScan {
            frames: crate::h2frame::Frames::default(),
            in_use: true,
            counts: FrameCounts::default(),
        }
    }

    /// Feeds the next bytes; `true` when they carried (part of) a frame other than PING.
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        let mut used = false;
        let in_use = &mut self.in_use;
        let counts = &mut self.counts;
        self.frames.feed(data, |piece| match piece {
            crate::h2frame::Piece::Header { kind, flags, .. } => {
                *in_use = kind != PING;
                used |= *in_use;
                match kind {
                    HEADERS => counts.headers += 1,
                    RST_STREAM => counts.resets += 1,
                    PING | SETTINGS if flags & ACK == 0 => counts.control += 1,
                    PRIORITY => counts.control += 1,
                    _ => {}
                }
            }
            crate::h2frame::Piece::Payload => used |= *in_use,
        });
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(chunks: &[&[u8]]) -> u32 {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s.ambiguous
    }

    const BOTH: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn finds_both_fields_in_one_head() {
        assert_eq!(scan(&[BOTH]), 1);
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-LENGTH: 4\r\n\r\n"]),
            1
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"]),
            0
        );
        assert_eq!(scan(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]), 0);
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", BOTH]), 0);
    }

    #[test]
    fn the_http2_preface_is_recognised_across_reads() {
        // Found by fuzzing (corpus/request_head/preface-split): the preface start in the first
        // read switched the scanner off, and the same bytes cut into smaller reads did not.
        for cut in 0..=12 {
            let mut s = HeadScan::default();
            s.feed(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..cut]);
            s.feed(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[cut..]);
            assert!(s.http2, "cut at {cut}");
        }
        let input =
            b"PRI * HTTP/2POST / HTTP/1.1\r\nContent-Length: 8\r\nTransfer-Encoding: x\r\n\r\n";
        let mut whole = HeadScan::default();
        whole.feed(input);
        let mut pieces = HeadScan::default();
        for chunk in input.chunks(7) {
            pieces.feed(chunk);
        }
        assert_eq!(
            (whole.http2, whole.ambiguous),
            (pieces.http2, pieces.ambiguous)
        );
        // Not the preface: scanned as HTTP/1.
        let mut other = HeadScan::default();
        other.feed(b"PRI * HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((other.http2, other.ambiguous), (false, 1));
    }

    proptest! {
        /// However the bytes are split across reads, the answer is the same.
        #[test]
        fn splitting_does_not_matter(cut1 in 0usize..BOTH.len(), cut2 in 0usize..BOTH.len()) {
            let (a, b) = (cut1.min(cut2), cut1.max(cut2));
            prop_assert_eq!(scan(&[&BOTH[..a], &BOTH[a..b], &BOTH[b..]]), 1);
        }
    }

    fn settled_after(chunks: &[&[u8]], requests: usize) -> bool {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s.settled(requests)
    }

    #[test]
    fn settles_only_on_a_message_end() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(
            !settled_after(&[], 0),
            "nothing read yet: not known to be HTTP/1.1"
        );
        assert!(settled_after(&[get], 1));
        assert!(!settled_after(&[get], 0), "a head hyper has not taken yet");
        assert!(!settled_after(&[&get[..get.len() - 1]], 0));
        assert!(
            !settled_after(&[get, b"GET / HT"], 1),
            "a partial pipelined head"
        );
        assert!(settled_after(&[get, get], 2));
        let post = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        assert!(settled_after(&[post], 1));
        assert!(!settled_after(&[&post[..post.len() - 1]], 1));
        assert!(settled_after(&[post, get], 2));
        // A body that looks like heads is skipped, not scanned.
        let tricky = b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n\r\n\r\n";
        assert!(settled_after(&[tricky], 1));
        assert!(settled_after(
            &[b"POST / HTTP/1.1\r\ncontent-length:  0 \r\n\r\n"],
            1
        ));
        // Boundaries not followed: never settled again.
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(!settled_after(&[chunked], 1));
        assert!(!settled_after(&[chunked, get], 2));
        assert!(!settled_after(
            &[b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"],
            1
        ));
        assert!(!settled_after(
            &[b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"],
            1
        ));
        assert!(!settled_after(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], 0));
    }

    proptest! {
        /// However the bytes of a head and a body are split across reads, the scanner ends
        /// settled, and never before the last byte.
        #[test]
        fn settling_survives_any_split(cut1 in 0usize..80, cut2 in 0usize..80) {
            let bytes: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nhello\r\n\r\nabc";
            let (a, b) = (cut1.min(cut2).min(bytes.len()), cut1.max(cut2).min(bytes.len()));
            let mut s = HeadScan::default();
            for piece in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                s.feed(piece);
            }
            prop_assert!(s.settled(1));
            let mut s = HeadScan::default();
            s.feed(&bytes[..bytes.len() - 1]);
            prop_assert!(!s.settled(1));
        }
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn pings_are_not_use_other_frames_are() {
        let mut client = FrameScan::client();
        assert!(
            client.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            "the preface is use"
        );
        assert!(!client.feed(&frame(PING, b"12345678")));
        assert!(client.feed(&frame(0x0, b"data")));
        let mut server = FrameScan::server();
        assert!(!server.feed(&frame(PING, b"12345678")));
        assert!(server.feed(&frame(0x4, &[])), "SETTINGS is use");
        let mut pings = frame(PING, b"12345678");
        pings.extend(frame(PING, b"abcdefgh"));
        assert!(!server.feed(&pings));
    }

    proptest! {
        /// Split anywhere, a PING then a DATA frame: no use until the DATA frame's header.
        #[test]
        fn frames_survive_any_split(cut in 0usize..40) {
            let mut bytes = frame(PING, b"12345678");
            let ping_len = bytes.len();
            bytes.extend(frame(0x0, b"0123456789abcdef"));
            let cut = cut.min(bytes.len());
            let mut scan = FrameScan::server();
            let first = scan.feed(&bytes[..cut]);
            let second = scan.feed(&bytes[cut..]);
            // Use is seen once the DATA frame's header is complete.
            prop_assert_eq!(first, cut >= ping_len + 9);
            prop_assert!(second);
        }
    }
}
