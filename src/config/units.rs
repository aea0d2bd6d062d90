//! Units users write in the config: durations (`250ms`, `5s`, `1m`) and sizes (`64KiB`).
//!
//! Both parse from strings and print back to the same canonical text, so `GET /config` shows what
//! the user wrote (modulo canonical form).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `<number><unit>`; units: `ms`, `s`, `m`, `h`, `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Dur(pub Duration);

/// A byte size written as `<number><unit>`; units: `B`, `KB`, `MB`, `GB` (powers of 1000) and
/// `KiB`, `MiB`, `GiB` (powers of 1024). A bare integer is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Size(pub u64);

pub(super) const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

pub(super) const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

/// Why a duration or size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnitError {
    /// Not a number followed by a known unit.
    #[error("invalid duration `{0}`: expected a number and a unit (ms, s, m, h, d), like `5s`")]
    BadDuration(String),
    /// Not a number followed by a known unit.
    #[error(
        "invalid size `{0}`: expected a number and a unit (B, KB, MB, GB, KiB, MiB, GiB), like `64KiB`"
    )]
    BadSize(String),
    /// More milliseconds than fit in 64 bits.
    #[error("duration `{0}` is too large")]
    DurationTooLarge(String),
    /// More bytes than fit in 64 bits.
    #[error("size `{0}` is too large")]
    SizeTooLarge(String),
}

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

impl Dur {
    /// Parses `250ms`, `5s`, `1m`, `2h`, `1d`.
    pub(crate) fn parse(text: &str) -> Result<Self, UnitError> {
        let bad = || UnitError::BadDuration(text.to_owned());
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        let scale = DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        let millis = number
            .checked_mul(scale)
            .ok_or_else(|| UnitError::DurationTooLarge(text.to_owned()))?;
        Ok(Dur(Duration::from_millis(millis)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis() as u64;
        let (name, scale) = DURATION_UNITS
            .iter()
            .rev()
            .find(|(_, scale)| millis.is_multiple_of(*scale) && millis != 0)
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{name}", millis / scale)
    }
}

impl Size {
    /// Parses `512`, `64KiB`, `10MiB`, `1GB`.
    pub(crate) fn parse(text: &str) -> Result<Self, UnitError> {
        let bad = || UnitError::BadSize(text.to_owned());
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        let scale = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(bad)?
        };
        number
            .checked_mul(scale)
            .map(Size)
            .ok_or_else(|| UnitError::SizeTooLarge(text.to_owned()))
    }

    /// The size as a `usize`, saturating on 32-bit targets.
    pub(crate) fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, scale) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
            .into_iter()
            .find(|(_, scale)| self.0.is_multiple_of(*scale) && self.0 != 0)
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", self.0 / scale)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like `64KiB`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_examples() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("5s").unwrap().0, Duration::from_secs(5));
        assert_eq!(Dur::parse("1m").unwrap().0, Duration::from_secs(60));
        assert_eq!(Size::parse("64KiB").unwrap().0, 65536);
        assert_eq!(Size::parse("10MiB").unwrap().0, 10 << 20);
        assert_eq!(Size::parse("512").unwrap().0, 512);
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("s").is_err());
        assert!(Dur::parse("5 parsecs").is_err());
        assert!(Size::parse("1TiB").is_err());
        assert!(Dur::parse("99999999999999999999d").is_err());
    }

    proptest! {
        #[test]
        fn span_round_trips(millis in 0u64..10_000_000_000) {
            let span = Dur(Duration::from_millis(millis));
            prop_assert_eq!(Dur::parse(&span.to_string()).unwrap(), span);
        }

        #[test]
        fn size_round_trips(bytes in 0u64..(1 << 50)) {
            let size = Size(bytes);
            prop_assert_eq!(Size::parse(&size.to_string()).unwrap(), size);
        }

        #[test]
        fn canonical_text_is_stable(n in 1u64..100_000, unit in prop::sample::select(vec!["ms", "s", "m", "h", "d"])) {
            let text = format!("{n}{unit}");
            let once = Dur::parse(&text).unwrap().to_string();
            prop_assert_eq!(Dur::parse(&once).unwrap().to_string(), once);
        }
    }
}
