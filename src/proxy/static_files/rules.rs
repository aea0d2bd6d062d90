//! The HTTP rules a file answer follows: dates (RFC 9110 §5.6.7), entity tags and
//! preconditions (§8.8.3, §13), ranges (§14) and content coding negotiation (§12.5.3).

use crate::runtime::static_files::Encoding;

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (H. Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `secs` as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (year, month, day) = civil(days);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A date in any of RFC 9110 §5.6.7's three forms (IMF-fixdate, the obsolete RFC 850 form
/// with a two-digit year, and asctime) as seconds since the epoch; `None` for anything
/// else, which a precondition then ignores.
pub(crate) fn parse_http_date(text: &str) -> Option<u64> {
    let words: Vec<&str> = text.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let (day, month, year, time) = match words.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [_, day, month, year, time, "GMT"] => (*day, *month, *year, *time),
        // Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (d, m, y) = (parts.next()?, parts.next()?, parts.next()?);
            (d, m, y, *time)
        }
        // Sun Nov  6 08:49:37 1994
        [_, month, day, time, year] => (*day, *month, *year, *time),
        _ => return None,
    };
    let digits = |s: &str, n: std::ops::RangeInclusive<usize>| {
        (n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let day = digits(day, 1..=2)?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let mut year = i64::from(digits(year, 2..=4)?);
    if year < 100 {
        // A two-digit year more than 50 years ahead is in the past (RFC 9110 §5.6.7).
        year += if year < 70 { 2000 } else { 1900 };
    }
    let mut hms = time.split(':');
    let (h, m, sec) = (
        digits(hms.next()?, 2..=2)?,
        digits(hms.next()?, 2..=2)?,
        digits(hms.next()?, 2..=2)?,
    );
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + i64::from(h * 3600 + m * 60 + sec)).ok()
}

/// The entity tags of an `If-Match`/`If-None-Match` value; `None` for `*`.
fn tags(value: &str) -> Option<Vec<(bool, &str)>> {
    if value.trim() == "*" {
        return None;
    }
    Some(
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, t),
            })
            .collect(),
    )
}

/// `If-Match`: strong comparison; `*` matches any current file.
pub(crate) fn if_match(value: &str, etag: &str) -> bool {
    tags(value).is_none_or(|list| list.iter().any(|(weak, t)| !weak && *t == etag))
}

/// `If-None-Match`: whether the file matches (weak comparison), so the condition fails.
pub(crate) fn none_match_hits(value: &str, etag: &str) -> bool {
    tags(value).is_none_or(|list| list.iter().any(|(_, t)| *t == etag))
}

/// What the preconditions decide (RFC 9110 §13.2.2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Answer normally.
    Pass,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// The request's precondition fields, as strings.
#[derive(Debug, Default)]
pub(crate) struct Conditions<'a> {
    pub(crate) if_match: Option<&'a str>,
    pub(crate) if_unmodified_since: Option<&'a str>,
    pub(crate) if_none_match: Option<&'a str>,
    pub(crate) if_modified_since: Option<&'a str>,
}

/// Evaluates the preconditions of a GET or HEAD in RFC 9110 §13.2.2's order.
pub(crate) fn evaluate(c: &Conditions<'_>, etag: &str, modified: u64) -> Precondition {
    if let Some(value) = c.if_match {
        if !if_match(value, etag) {
            return Precondition::Failed;
        }
    } else if let Some(date) = c.if_unmodified_since.and_then(parse_http_date)
        && modified > date
    {
        return Precondition::Failed;
    }
    if let Some(value) = c.if_none_match {
        if none_match_hits(value, etag) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = c.if_modified_since.and_then(parse_http_date)
        && modified <= date
    {
        return Precondition::NotModified;
    }
    Precondition::Pass
}

/// `If-Range`: whether the range may be served (a strong tag equal to the file's, or a date
/// equal to its `Last-Modified`).
pub(crate) fn if_range(value: &str, etag: &str, modified: u64) -> bool {
    let value = value.trim();
    if value.starts_with('"') {
        return value == etag;
    }
    parse_http_date(value) == Some(modified)
}

/// Most ranges one request may ask for; more and the whole file is sent.
pub(crate) const MAX_RANGES: usize = 32;

/// What a `Range` field asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// No usable `Range`: send the whole file.
    Whole,
    /// These inclusive byte ranges, each within the file.
    Parts(Vec<(u64, u64)>),
    /// None of the ranges overlaps the file: 416.
    Unsatisfiable,
}

/// Parses `bytes=a-b, c-, -n` against a file of `len` bytes. A field that does not parse,
/// another unit, or more than [`MAX_RANGES`] ranges is ignored (RFC 9110 §14.2).
pub(crate) fn ranges(value: &str, len: u64) -> Ranges {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranges::Whole;
    };
    let mut out = Vec::new();
    let mut count = 0;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = part.split_once('-') else {
            return Ranges::Whole;
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let range = if first.is_empty() {
            // A suffix: the last n bytes.
            if !digits(last) {
                return Ranges::Whole;
            }
            let Ok(n) = last.parse::<u64>() else {
                return Ranges::Whole;
            };
            (n > 0 && len > 0).then(|| (len.saturating_sub(n), len - 1))
        } else {
            if !digits(first) || !(last.is_empty() || digits(last)) {
                return Ranges::Whole;
            }
            let (Ok(start), end) = (first.parse::<u64>(), last.parse::<u64>()) else {
                return Ranges::Whole;
            };
            let end = match end {
                Ok(end) if end < start => return Ranges::Whole,
                Ok(end) => end.min(len.saturating_sub(1)),
                Err(_) if last.is_empty() => len.saturating_sub(1),
                Err(_) => return Ranges::Whole,
            };
            (start < len).then_some((start, end))
        };
        out.extend(range);
    }
    if count == 0 {
        return Ranges::Whole;
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    // Overlapping ranges that add up to more than the file are an amplification attempt
    // (RFC 9110 §14.2 lets a server ignore them): the whole file is cheaper, as nginx does.
    // Checked: with a file of (nearly) 2^64 bytes the sum must not wrap back under its length.
    let total = out
        .iter()
        .try_fold(0u64, |sum, (first, last)| sum.checked_add(last - first + 1));
    if out.len() > 1 && total.is_none_or(|total| total > len) {
        return Ranges::Whole;
    }
    Ranges::Parts(out)
}

/// The site's encodings the client accepts, best first (higher `q`, then the site's order).
pub(crate) fn accepted(value: Option<&str>, offered: &[Encoding]) -> Vec<Encoding> {
    let Some(value) = value else {
        return Vec::new();
    };
    let mut star = None;
    let mut named: Vec<(String, f32)> = Vec::new();
    for item in value.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if token.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for param in parts {
            if let Some((k, v)) = param.split_once('=')
                && k.trim().eq_ignore_ascii_case("q")
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if token == "*" {
            star = Some(q);
        } else {
            named.push((token, q));
        }
    }
    let q_of = |e: Encoding| {
        named
            .iter()
            .find(|(t, _)| t == e.token() || (e == Encoding::Gzip && t == "x-gzip"))
            .map(|(_, q)| *q)
            .or(star)
            .unwrap_or(0.0)
    };
    let mut list: Vec<(Encoding, f32, usize)> = offered
        .iter()
        .enumerate()
        .map(|(at, e)| (*e, q_of(*e), at))
        .filter(|(_, q, _)| *q > 0.0)
        .collect();
    list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    list.into_iter().map(|(e, _, _)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        for secs in [0, 951_782_400, 1_767_225_599, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(secs)), Some(secs));
        }
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("garbage"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn preconditions_follow_the_order() {
        let tag = "\"a\"";
        let c = |im, ius, inm, ims| Conditions {
            if_match: im,
            if_unmodified_since: ius,
            if_none_match: inm,
            if_modified_since: ims,
        };
        let old = "Sun, 06 Nov 1994 08:49:37 GMT";
        let m = 784_111_777 + 10;
        assert_eq!(
            evaluate(&c(Some("\"b\""), None, None, None), tag, m),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&c(Some("W/\"a\""), None, None, None), tag, m),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&c(Some("*"), None, None, None), tag, m),
            Precondition::Pass
        );
        assert_eq!(
            evaluate(&c(None, Some(old), None, None), tag, m),
            Precondition::Failed
        );
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(
            evaluate(&c(Some(tag), Some(old), None, None), tag, m),
            Precondition::Pass
        );
        assert_eq!(
            evaluate(&c(None, None, Some("W/\"a\""), None), tag, m),
            Precondition::NotModified
        );
        // If-None-Match wins over If-Modified-Since.
        let new = "Sun, 06 Nov 2044 08:49:37 GMT";
        assert_eq!(
            evaluate(&c(None, None, Some("\"x\""), Some(new)), tag, m),
            Precondition::Pass
        );
        assert_eq!(
            evaluate(&c(None, None, None, Some(new)), tag, m),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&c(None, None, None, Some(old)), tag, m),
            Precondition::Pass
        );
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(ranges("bytes=0-9", 100), Ranges::Parts(vec![(0, 9)]));
        assert_eq!(ranges("bytes=90-", 100), Ranges::Parts(vec![(90, 99)]));
        assert_eq!(ranges("bytes=-10", 100), Ranges::Parts(vec![(90, 99)]));
        assert_eq!(ranges("bytes=-1000", 100), Ranges::Parts(vec![(0, 99)]));
        assert_eq!(ranges("bytes=95-200", 100), Ranges::Parts(vec![(95, 99)]));
        assert_eq!(
            ranges("bytes=0-1, 5-6", 100),
            Ranges::Parts(vec![(0, 1), (5, 6)])
        );
        assert_eq!(ranges("bytes=100-", 100), Ranges::Unsatisfiable);
        assert_eq!(ranges("bytes=-0", 100), Ranges::Unsatisfiable);
        assert_eq!(ranges("bytes=5-1", 100), Ranges::Whole);
        assert_eq!(ranges("items=0-1", 100), Ranges::Whole);
        assert_eq!(ranges("bytes=x-1", 100), Ranges::Whole);
        assert_eq!(
            ranges("bytes=0-99,0-99", 100),
            Ranges::Whole,
            "amplification"
        );
        assert_eq!(
            ranges("bytes=0-9,5-14", 100),
            Ranges::Parts(vec![(0, 9), (5, 14)])
        );
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(ranges(&many, 100), Ranges::Whole);
    }

    #[test]
    fn overlapping_ranges_of_a_huge_file_do_not_wrap_the_sum() {
        // Found by fuzzing (corpus/range/overflow-huge-file): 2^64 - 1 bytes twice overflowed.
        assert_eq!(ranges("bytes=0-10,0-", u64::MAX), Ranges::Whole);
        assert_eq!(
            ranges("bytes=0-", u64::MAX),
            Ranges::Parts(vec![(0, u64::MAX - 1)])
        );
    }

    #[test]
    fn encodings_by_q() {
        use Encoding::*;
        let all = [Br, Zstd, Gzip];
        assert_eq!(accepted(Some("gzip, br"), &all), vec![Br, Gzip]);
        assert_eq!(accepted(Some("gzip;q=1, br;q=0.5"), &all), vec![Gzip, Br]);
        assert_eq!(accepted(Some("*;q=0.1, br;q=0"), &all), vec![Zstd, Gzip]);
        assert_eq!(accepted(Some("identity"), &all), vec![]);
        assert_eq!(accepted(None, &all), vec![]);
    }
}
