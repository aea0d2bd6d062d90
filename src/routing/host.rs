//! Host names as routes match them: lower-case, without port, without a trailing dot.

use std::borrow::Cow;

/// A host condition that is not a name or a `*.` wildcard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    /// A `*` elsewhere than in a leading `*.`, or nothing after it.
    #[error("invalid wildcard host `{0}`")]
    Wildcard(String),
    /// Empty, or a character no host name has.
    #[error("invalid host `{0}`: expected a name like `api.example.com` or `*.example.com`")]
    Name(String),
}

/// A route's host condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// This exact name.
    Exact(String),
    /// Any name ending with this suffix, which starts with `.` (written `*.example.com`).
    /// The bare `example.com` does not match it.
    Suffix(String),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    pub(crate) fn parse(text: &str) -> Result<Self, HostError> {
        let normal = normalize_host(text).into_owned();
        if let Some(suffix) = normal.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(HostError::Wildcard(text.to_owned()));
            }
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        if normal.is_empty()
            || normal.contains('*')
            || !normal.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
            })
        {
            return Err(HostError::Name(text.to_owned()));
        }
        Ok(HostPattern::Exact(normal))
    }

    /// Whether a normalised host matches.
    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    /// Specificity: an exact name beats any wildcard, a longer wildcard beats a shorter one.
    pub(crate) fn rank(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Suffix(suffix) => suffix.len(),
        }
    }
}

/// Lower-cases, strips the port and one trailing dot: `API.Example.com.:8080` → `api.example.com`.
/// Borrows when nothing changes.
pub(crate) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep through `]`.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(colon) if raw[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..colon],
            _ => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_host("API.Example.com.:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("127.0.0.1:8080"), "127.0.0.1");
    }

    #[test]
    fn wildcards() {
        let w = HostPattern::parse("*.Example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("badexample.com"));
        assert_eq!(
            HostPattern::parse("a.*.com").unwrap_err().to_string(),
            "invalid host `a.*.com`: expected a name like `api.example.com` or `*.example.com`"
        );
        assert_eq!(
            HostPattern::parse("*.a*").unwrap_err().to_string(),
            "invalid wildcard host `*.a*`"
        );
        assert!(HostPattern::parse("").is_err());
    }
}
