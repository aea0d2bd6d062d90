//! Content negotiation for `compression`: `Accept-Encoding` with q-values (RFC 9110
//! §12.5.3), and the media ranges of `content_types`.

use http::{HeaderMap, header};

use crate::config::spec_compression::Encoding;

/// A q-value in thousandths (`q=0.5` is 500), as RFC 9110 §12.4.2 allows three decimals.
type Q = u16;

/// Parses a q-value: `0`, `1`, `0.5`, `1.000`; anything else is `None`.
fn qvalue(text: &str) -> Option<Q> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Q = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Q::from(b - b'0') * [100, 10, 1][i];
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The encoding to answer with: among `offered` (preferred first), the one the client
/// accepts with the highest q-value, ties going to the one offered first. `None` when the
/// request has no `Accept-Encoding`, accepts none of them, or prefers `identity` to all.
pub(crate) fn choose(headers: &HeaderMap, offered: &[Encoding]) -> Option<Encoding> {
    let mut q_of = [None::<Q>; 3];
    let mut star = None::<Q>;
    let mut identity = None::<Q>;
    let mut any = false;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(value.trim());
                }
            }
            // A q-value that does not parse makes the item unusable, not acceptable.
            let Some(q) = q else {
                continue;
            };
            any = true;
            let slot = match coding.to_ascii_lowercase().as_str() {
                "zstd" => &mut q_of[0],
                "br" => &mut q_of[1],
                "gzip" | "x-gzip" => &mut q_of[2],
                "identity" => &mut identity,
                "*" => &mut star,
                _ => continue,
            };
            // Listed twice: the higher counts.
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Encoding, Q)> = None;
    for &encoding in offered {
        let index = match encoding {
            Encoding::Zstd => 0,
            Encoding::Br => 1,
            Encoding::Gzip => 2,
        };
        let q = q_of[index].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((encoding, q));
        }
    }
    // `identity` named with a higher q than every coding offered: sent as it is.
    let (encoding, q) = best?;
    (identity.is_none_or(|i| q >= i)).then_some(encoding)
}

/// One entry of `content_types`: `type/subtype`, `type/*`, `*/*`, or a structured syntax
/// suffix (`*/*+json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MediaRange {
    /// Exactly this type (lower case).
    Exact(String),
    /// Every subtype of this type (`text/*`).
    Type(String),
    /// Every type whose subtype ends with this suffix (`+json`).
    Suffix(String),
    /// Every type.
    Any,
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

impl MediaRange {
    /// Parses an entry of `content_types`; `None` when it is none of the forms.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (kind, sub) = text.split_once('/')?;
        if kind == "*" {
            return match sub {
                "*" => Some(MediaRange::Any),
                _ => {
                    let suffix = sub.strip_prefix("*+")?;
                    is_token(suffix).then(|| MediaRange::Suffix(format!("+{suffix}")))
                }
            };
        }
        if !is_token(kind) {
            return None;
        }
        if sub == "*" {
            return Some(MediaRange::Type(kind.to_owned()));
        }
        is_token(sub).then(|| MediaRange::Exact(text.clone()))
    }

    /// Whether a media type's essence (`type/subtype`, any case) is in the range.
    pub(crate) fn matches(&self, essence: &str) -> bool {
        let Some((kind, sub)) = essence.split_once('/') else {
            return false;
        };
        match self {
            MediaRange::Exact(exact) => essence.eq_ignore_ascii_case(exact),
            MediaRange::Type(t) => kind.eq_ignore_ascii_case(t),
            MediaRange::Suffix(suffix) => {
                sub.len() > suffix.len()
                    && sub.as_bytes()[sub.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            MediaRange::Any => true,
        }
    }
}
