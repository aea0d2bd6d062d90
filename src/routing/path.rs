//! Request path normalisation: the path the router matches is the path the upstream receives.
//!
//! Rules, applied in order to the path of an origin-form request target (RFC 9112 §3.2.1):
//! 1. The path must start with `/`; a `%` must be followed by two hex digits; an encoded NUL
//!    (`%00`) or a raw control byte is refused. Each of these is a 400.
//! 2. Percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded and the hex of
//!    every other escape is upper-cased (RFC 3986 §6.2.2.1–2). So `%2e%2e` becomes `..` before
//!    step 4 sees it, and `/a/%2e%2e/admin` can never reach `/admin` through a `/a/` route.
//! 3. Runs of `/` collapse to one (as nginx's `merge_slashes`).
//! 4. Dot-segments are removed (RFC 3986 §5.2.4); `..` never climbs above the root.
//!
//! Escaped `/` (`%2F`) and `\` (`%5C`) stay escaped: they are data, not separators, both for the
//! router and for the upstream. The query is never touched.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the request path must start with `/`")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the request path has an invalid percent-encoding")]
    BadEscape,
    /// An encoded NUL or a control character.
    #[error("the request path contains a control character")]
    Control,
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Normalises `path`; borrows it when it is already normal (the common case, no allocation).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    // Step 2: decode unreserved escapes, upper-case the rest.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let (hi, lo) = escape_at(bytes, i)?;
            let value = hi << 4 | lo;
            if is_unreserved(value) {
                decoded.push(value);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(byte);
            i += 1;
        }
    }
    // Steps 3 and 4 over segments.
    let mut out: Vec<&[u8]> = Vec::new();
    let trailing = decoded.ends_with(b"/")
        || decoded.ends_with(b"/.")
        || decoded.ends_with(b"/..")
        || decoded == b"/";
    for segment in decoded.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for segment in &out {
        result.push('/');
        // Only ASCII bytes were rewritten; the rest is the original UTF-8 (or rejected below).
        result.push_str(std::str::from_utf8(segment).map_err(|_| PathError::Control)?);
    }
    if trailing || result.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

fn escape_at(bytes: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex);
    let lo = bytes.get(i + 2).copied().and_then(hex);
    match (hi, lo) {
        (Some(0), Some(0)) => Err(PathError::Control),
        (Some(hi), Some(lo)) => Ok((hi, lo)),
        _ => Err(PathError::BadEscape),
    }
}

/// Whether the path needs no rewriting; validates escapes and control bytes on the way.
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let (hi, lo) = escape_at(bytes, i)?;
                if is_unreserved(hi << 4 | lo)
                    || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase)
                {
                    normal = false;
                }
                i += 3;
                continue;
            }
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'/' => {
                let next = &bytes[i + 1..];
                if next.starts_with(b"/")
                    || next == b"."
                    || next == b".."
                    || next.starts_with(b"./")
                    || next.starts_with(b"../")
                {
                    normal = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(path: &str) -> String {
        normalize(path).unwrap().into_owned()
    }

    #[test]
    fn examples() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("/a/b/"), "/a/b/");
        assert_eq!(n("/a/%2e%2e/admin"), "/admin");
        assert_eq!(n("/a/%2E%2e/admin"), "/admin");
        assert_eq!(n("/a/..%2fadmin"), "/a/..%2Fadmin");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("//a///b"), "/a/b");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/%7Euser"), "/~user");
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/.hidden"), "/.hidden");
        assert_eq!(n("/a..b/c"), "/a..b/c");
        assert!(matches!(normalize("/a/b").unwrap(), Cow::Borrowed(_)));
        assert_eq!(normalize("a"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%00"), Err(PathError::Control));
    }

    proptest! {
        #[test]
        fn normal_form_is_stable(path in "/[a-z./%0-9A-F~_-]{0,40}") {
            if let Ok(once) = normalize(&path) {
                let once = once.into_owned();
                let twice = normalize(&once).unwrap();
                prop_assert_eq!(&twice, &once);
                prop_assert!(matches!(twice, Cow::Borrowed(_)));
                prop_assert!(once.starts_with('/'));
                for segment in once.split('/') {
                    prop_assert!(segment != "." && segment != "..");
                }
            }
        }
    }
}
