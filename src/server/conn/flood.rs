//! The HTTP/2 flood guard: closes a client connection whose frames make the server work for
//! nothing, from the frame counts the connection's scanners keep (`server::scan`).
//!
//! - Streams reset, by the client (rapid reset, CVE-2023-44487) or by the server because of
//!   the client's errors (MadeYouReset, CVE-2025-8671): once [`RESET_FLOOR`] streams were
//!   reset, the connection is closed when the resets are more than half the streams it
//!   opened. A browser cancels a few of its streams; an attacker cancels all of them.
//! - Control frames (PING and SETTINGS other than ACKs, PRIORITY): a leaky bucket of
//!   [`CONTROL_BURST`] frames draining at [`CONTROL_RATE`] a second. Keep-alive PINGs and a
//!   burst of PRIORITY frames fit; a flood overflows it within milliseconds.
//!
//! The h2 crate bounds the rest: CONTINUATION frames past the header list size, an HPACK
//! block decoding past `max_header_list_size`, DATA frames too small to be worth their
//! header, and streams reset before they were accepted (see `conn::builder`).

use tokio::time::Instant;

use crate::server::scan::FrameCounts;

/// Streams reset on a connection before the reset share is weighed.
pub(crate) const RESET_FLOOR: u64 = 100;
/// Control frames a connection may send at once.
pub(crate) const CONTROL_BURST: u64 = 1000;
/// Control frames a second a connection may keep sending.
pub(crate) const CONTROL_RATE: u64 = 100;

/// One connection's flood state.
#[derive(Debug)]
pub(crate) struct Flood {
    /// Control frames in the bucket.
    level: u64,
    /// Control frames counted so far.
    control: u64,
    /// When the bucket last drained.
    drained: Instant,
}

impl Flood {
    pub(crate) fn new(now: Instant) -> Self {
        Flood {
            level: 0,
            control: 0,
            drained: now,
        }
    }

    /// Weighs the counts of the client's frames (`read`) and the server's (`write`): the
    /// reason to close the connection, if any.
    pub(crate) fn check(
        &mut self,
        read: &FrameCounts,
        write: &FrameCounts,
        now: Instant,
    ) -> Option<&'static str> {
        let resets = read.resets + write.resets;
        if resets >= RESET_FLOOR && resets * 2 > read.headers {
            return Some("too many streams reset");
        }
        if read.control > self.control {
            let elapsed = now.saturating_duration_since(self.drained);
            let drained = u64::try_from(elapsed.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_mul(CONTROL_RATE)
                / 1000;
            if drained > 0 {
                self.drained = now;
            }
            self.level = self.level.saturating_sub(drained) + (read.control - self.control);
            self.control = read.control;
            if self.level > CONTROL_BURST {
                return Some("too many control frames");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn counts(headers: u64, resets: u64, control: u64) -> FrameCounts {
        FrameCounts {
            headers,
            resets,
            control,
        }
    }

    #[test]
    fn resets_close_once_past_the_floor_and_half_the_streams() {
        let now = Instant::now();
        let mut flood = Flood::new(now);
        let none = FrameCounts::default();
        // A client that cancels most of a few streams is fine.
        assert_eq!(flood.check(&counts(50, 40, 0), &none, now), None);
        // One that cancels a few of many is fine.
        assert_eq!(flood.check(&counts(10_000, 4_000, 0), &none, now), None);
        // Every stream reset, by the client or by the server.
        assert!(flood.check(&counts(100, 100, 0), &none, now).is_some());
        assert!(
            flood
                .check(&counts(150, 0, 0), &counts(0, 150, 0), now)
                .is_some()
        );
    }

    #[test]
    fn control_frames_drain_over_time() {
        let start = Instant::now();
        let mut flood = Flood::new(start);
        let none = FrameCounts::default();
        assert_eq!(flood.check(&counts(0, 0, 900), &none, start), None);
        // Ten seconds later the bucket is empty again: 900 more fit.
        let later = start + Duration::from_secs(10);
        assert_eq!(flood.check(&counts(0, 0, 1800), &none, later), None);
        // A burst past the bucket does not.
        assert!(flood.check(&counts(0, 0, 2900), &none, later).is_some());
    }
}
