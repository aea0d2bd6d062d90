//! WebSocket frame boundaries (RFC 6455 §5.2), tracked as bytes pass: only the head of each
//! frame is read (FIN, opcode, mask, length), never its payload, so a close frame portico
//! writes itself always lands between two frames.

/// The close frame portico sends a client: close, code 1001 (going away), unmasked.
pub(crate) const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame for an upstream: a client's frames are masked (RFC 6455 §5.3).
pub(crate) fn masked_close_going_away(mask: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        0x03 ^ mask[0],
        0xE9 ^ mask[1],
    ]
}

/// Where one direction of a WebSocket connection is: in a frame head or in a payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frames {
    /// The head bytes seen so far of the frame being read (at most 14).
    head: [u8; 14],
    have: usize,
    /// Payload bytes still to pass before the next frame head.
    left: u64,
}

impl Frames {
    /// Whether the bytes so far end exactly at a frame boundary.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Passes `data`; with `stop`, stops at the first frame boundary. Returns how many bytes
    /// were taken: all of them, or (with `stop`) those up to the boundary.
    pub(crate) fn feed(&mut self, data: &[u8], stop: bool) -> usize {
        let mut at = 0;
        loop {
            if stop && self.at_boundary() {
                return at;
            }
            if at == data.len() {
                return at;
            }
            if self.left > 0 {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - at);
                self.left -= take as u64;
                at += take;
                continue;
            }
            // In a head: one byte at a time (a head is at most 14 bytes).
            self.head[self.have] = data[at];
            self.have += 1;
            at += 1;
            if let Some(length) = self.head_length() {
                self.have = 0;
                self.left = length;
            }
        }
    }

    /// The payload length once the head is complete.
    fn head_length(&self) -> Option<u64> {
        let head = &self.head[..self.have];
        if head.len() < 2 {
            return None;
        }
        let masked = head[1] & 0x80 != 0;
        let code = head[1] & 0x7F;
        let extended = match code {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + extended + if masked { 4 } else { 0 };
        if head.len() < need {
            return None;
        }
        Some(match code {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(bytes)
            }
            n => u64::from(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of `len` payload bytes, masked or not.
    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut out = vec![0x82];
        let bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(bit | len as u8),
            126..=65535 => {
                out.push(bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0xAB, len));
        out
    }

    #[test]
    fn boundaries_are_found_whatever_the_split() {
        for masked in [false, true] {
            let frames = [
                frame(0, masked),
                frame(5, masked),
                frame(300, masked),
                frame(70_000, masked),
            ];
            let stream: Vec<u8> = frames.concat();
            let ends: Vec<usize> = frames
                .iter()
                .scan(0, |at, f| {
                    *at += f.len();
                    Some(*at)
                })
                .collect();
            for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
                let mut frames = Frames::default();
                let mut seen = Vec::new();
                let mut at = 0;
                for piece in stream.chunks(chunk) {
                    // Stop at every boundary inside the piece, then go on.
                    let mut rest = piece;
                    while !rest.is_empty() {
                        let taken = frames.feed(rest, true);
                        if taken == 0 {
                            // At a boundary: take one byte past it.
                            let one = frames.feed(&rest[..1], false);
                            at += one;
                            rest = &rest[one..];
                            continue;
                        }
                        at += taken;
                        rest = &rest[taken..];
                        if frames.at_boundary() {
                            seen.push(at);
                        }
                    }
                }
                assert_eq!(seen, ends, "chunk {chunk}, masked {masked}");
            }
        }
    }

    #[test]
    fn feeding_without_stop_takes_everything() {
        let stream = [frame(10, true), frame(200, true)].concat();
        let mut frames = Frames::default();
        assert_eq!(frames.feed(&stream[..50], false), 50);
        assert!(!frames.at_boundary());
        assert_eq!(frames.feed(&stream[50..], false), stream.len() - 50);
        assert!(frames.at_boundary());
    }

    proptest::proptest! {
        /// Any bytes, split anywhere: the same state as fed whole, and a stop lands exactly on
        /// a boundary.
        #[test]
        fn any_bytes_split_anywhere_agree(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            cut in 0usize..400,
        ) {
            let cut = cut.min(data.len());
            let mut whole = Frames::default();
            assert_eq!(whole.feed(&data, false), data.len());
            let mut split = Frames::default();
            split.feed(&data[..cut], false);
            split.feed(&data[cut..], false);
            assert_eq!(whole, split);
            let mut stopping = Frames::default();
            stopping.feed(&data[..cut], false);
            let taken = stopping.feed(&data[cut..], true);
            assert!(taken <= data.len() - cut);
            if taken < data.len() - cut {
                assert!(stopping.at_boundary());
            }
        }
    }

    #[test]
    fn the_close_frames_say_1001() {
        assert_eq!(
            u16::from_be_bytes([CLOSE_GOING_AWAY[2], CLOSE_GOING_AWAY[3]]),
            1001
        );
        let masked = masked_close_going_away([9, 8, 7, 6]);
        assert_eq!(u16::from_be_bytes([masked[6] ^ 9, masked[7] ^ 8]), 1001);
    }
}
