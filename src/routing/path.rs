//! Request path normalisation: one view of the path for the router, the plugins and the upstream.
//!
//! A proxy that matches one reading of a path while the backend serves another can be walked
//! past its own routes: `/a/..%2fadmin` looks like `/a/…` to a proxy that keeps `%2F` opaque and
//! like `/admin` to a backend that decodes it; `/private;x` looks like `/private;x` to one that
//! ignores `;params` and like `/private` to a servlet container (the Envoy and Traefik path
//! confusion CVEs are of this class). So portico resolves the path the way the most liberal
//! common backend does, routes on that, and forwards exactly that, leaving the backend nothing
//! to reinterpret.
//!
//! The canonical form of an origin-form path (RFC 9112 §3.2.1), built in one pass:
//! 1. The path must start with `/`; a `%` must be followed by two hex digits; an encoded NUL
//!    (`%00`) or a raw control byte is refused. Each of these is a 400.
//! 2. Separators are `/`, `\`, and (by default) the escapes `%2F` and `%5C` in either case.
//! 3. In each segment, a raw `;` starts matrix parameters (Tomcat and Jetty style), which run to
//!    the next separator and are set aside: they are never matched, and by default not
//!    forwarded either. An escaped `%3B` is data, as it is to those servers.
//! 4. Escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded and the hex of every
//!    other escape is upper-cased (RFC 3986 §6.2.2.1–2), so `%2e%2e` is `..`.
//! 5. Empty segments vanish (runs of `/` collapse, as nginx's `merge_slashes`), then dot-segments
//!    are removed (RFC 3986 §5.2.4). A `..` that would climb above the root is refused with 400
//!    rather than clamped: no client that resolves its own URLs sends one, and a backend that
//!    does not clamp would leave its root.
//!
//! The canonical form contains no `\`, no `%2F`/`%5C`, no `;` and no dot-segment, and normalising
//! it again returns it unchanged. A route's [`PathPolicy`] may instead keep escaped separators
//! (APIs whose identifiers hold `/`) or `;params` (servlet session ids) in the forwarded path,
//! or refuse them. The query is never touched; `%25` is never decoded, so `%252F` stays data.

use std::borrow::Cow;

/// Why a path was refused; each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub(crate) enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// An encoded NUL or a control character.
    Control,
    /// A `..` segment that would climb above `/`.
    AboveRoot,
    /// `%2F` or `%5C` on a route whose policy refuses them.
    EncodedSlash,
    /// A raw `\` on a route whose policy refuses it.
    Backslash,
    /// `;params` on a route whose policy refuses them.
    MatrixParams,
    /// The path means different routes with `%2F` kept and with `%2F` decoded.
    Ambiguous,
}

impl PathError {
    /// The client-facing message (the JSON body's `message`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "the request target must be a path starting with `/`",
            PathError::BadEscape => "the request path has an invalid percent-encoding",
            PathError::Control => "the request path contains a control character",
            PathError::AboveRoot => "the request path climbs above the root",
            PathError::EncodedSlash => {
                "the request path contains an encoded `/` or `\\`, which this route refuses"
            }
            PathError::Backslash => "the request path contains `\\`, which this route refuses",
            PathError::MatrixParams => {
                "the request path contains `;` parameters, which this route refuses"
            }
            PathError::Ambiguous => {
                "the request path reaches another route when its encoded `/` is decoded"
            }
        }
    }
}

/// What a route does with `%2F` and `%5C`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum EncodedSlash {
    /// Separators, like `/` (the default): matched and forwarded as `/`.
    #[default]
    Decode,
    /// Data inside a segment: forwarded as `%2F`/`%5C`. The route is still chosen on the decoded
    /// path, and the path must reach the same route with them kept, else 400.
    Keep,
    /// 400.
    Reject,
}

/// What a route does with a raw `\`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Backslash {
    /// A separator, like `/` (the default), as browsers and Windows servers read it.
    #[default]
    Decode,
    /// 400.
    Reject,
}

/// What a route does with `;params` in path segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum MatrixParams {
    /// Dropped from the forwarded path (the default): the upstream sees what was matched.
    #[default]
    Strip,
    /// Forwarded on their segment, for upstreams that strip them themselves; never matched.
    Keep,
    /// 400.
    Reject,
}

/// A route's `path_policy`: what its upstream is told about separators and parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PathPolicy {
    /// `%2F` and `%5C`.
    pub(crate) encoded_slash: EncodedSlash,
    /// A raw `\`.
    pub(crate) backslash: Backslash,
    /// `;params`.
    pub(crate) matrix_params: MatrixParams,
}

/// What a raw path holds that the canonical form resolves away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Found {
    /// `%2F` or `%5C`, either case.
    encoded_slash: bool,
    /// A raw `\`.
    backslash: bool,
    /// A raw `;`.
    params: bool,
}

impl PathPolicy {
    /// Applies the route's policy to the raw path of a request that the router matched on its
    /// canonical form. `None`: forward the canonical form. `Some(path)`: forward this form,
    /// which keeps what the policy keeps. `same_route` says whether a path (with `%2F` kept as
    /// data) still reaches this route.
    pub(crate) fn apply(
        &self,
        raw: &str,
        same_route: impl FnOnce(&str) -> bool,
    ) -> Result<Option<String>, PathError> {
        if *self == PathPolicy::default() {
            return Ok(None);
        }
        let found = scan(raw.as_bytes());
        if found.encoded_slash && self.encoded_slash == EncodedSlash::Reject {
            return Err(PathError::EncodedSlash);
        }
        if found.backslash && self.backslash == Backslash::Reject {
            return Err(PathError::Backslash);
        }
        if found.params && self.matrix_params == MatrixParams::Reject {
            return Err(PathError::MatrixParams);
        }
        let keep_slash = found.encoded_slash && self.encoded_slash == EncodedSlash::Keep;
        let keep_params = found.params && self.matrix_params == MatrixParams::Keep;
        if !keep_slash && !keep_params {
            return Ok(None);
        }
        let mode = Mode {
            keep_slash,
            keep_params,
        };
        if keep_slash {
            // The upstream reads `%2F` as data: the path it sees must be this route's too.
            let view = canonical(
                raw,
                Mode {
                    keep_params: false,
                    ..mode
                },
            )?;
            if !same_route(&view) {
                return Err(PathError::Ambiguous);
            }
        }
        canonical(raw, mode).map(Some)
    }
}

/// The canonical form of `path`; borrows it when it is canonical already (the common case, no
/// allocation).
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    canonical(path, Mode::default()).map(Cow::Owned)
}

/// What the canonical form keeps that the default drops.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// `%2F`/`%5C` stay escaped, as data inside their segment.
    keep_slash: bool,
    /// `;params` stay on their segment.
    keep_params: bool,
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

/// The byte an escape at `i` stands for; refuses bad escapes and `%00`.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let hi = bytes.get(i + 1).copied().and_then(hex);
    let lo = bytes.get(i + 2).copied().and_then(hex);
    match (hi, lo) {
        (Some(0), Some(0)) => Err(PathError::Control),
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadEscape),
    }
}

/// One segment being built: its name and its `;params`.
#[derive(Default)]
struct Segment {
    name: Vec<u8>,
    params: Option<Vec<u8>>,
}

impl Segment {
    fn push(&mut self, bytes: &[u8]) {
        match &mut self.params {
            Some(params) => params.extend_from_slice(bytes),
            None => self.name.extend_from_slice(bytes),
        }
    }
}

/// Builds the canonical form (module doc, steps 1–5) under `mode`.
fn canonical(path: &str, mode: Mode) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Finished segments, each `/name` or `/name;params`; `..` pops one.
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut starts: Vec<usize> = Vec::new();
    let mut current = Segment::default();
    // Whether the last segment was empty or a dot-segment: the path then ends with `/`.
    let mut trailing = true;
    let mut i = 1;
    loop {
        let byte = bytes.get(i).copied();
        let (separator, width) = match byte {
            None => (true, 0),
            Some(b'/' | b'\\') => (true, 1),
            Some(b'%') => {
                let value = escape_at(bytes, i)?;
                if matches!(value, b'/' | b'\\') && !mode.keep_slash {
                    (true, 3)
                } else {
                    if is_unreserved(value) {
                        current.push(&[value]);
                    } else {
                        current.push(&[
                            b'%',
                            bytes[i + 1].to_ascii_uppercase(),
                            bytes[i + 2].to_ascii_uppercase(),
                        ]);
                    }
                    (false, 3)
                }
            }
            Some(0..=0x1f | 0x7f) => return Err(PathError::Control),
            Some(b';') if current.params.is_none() => {
                current.params = Some(Vec::new());
                (false, 1)
            }
            Some(other) => {
                current.push(&[other]);
                (false, 1)
            }
        };
        if separator {
            let segment = std::mem::take(&mut current);
            trailing = true;
            match segment.name.as_slice() {
                b"" | b"." => {}
                b".." => {
                    let start = starts.pop().ok_or(PathError::AboveRoot)?;
                    out.truncate(start);
                }
                name => {
                    trailing = false;
                    starts.push(out.len());
                    out.push(b'/');
                    out.extend_from_slice(name);
                    if let Some(params) =
                        segment.params.filter(|p| mode.keep_params && !p.is_empty())
                    {
                        out.push(b';');
                        out.extend_from_slice(&params);
                    }
                }
            }
        }
        if byte.is_none() {
            break;
        }
        i += width;
    }
    if trailing || out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was removed or rewritten, at character boundaries: the rest is the input's UTF-8.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// What `raw` holds that a policy may care about (escapes are not validated here).
fn scan(raw: &[u8]) -> Found {
    let mut found = Found::default();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\\' => found.backslash = true,
            b';' => found.params = true,
            b'%' if i + 2 < raw.len() => {
                let pair = [
                    raw[i + 1].to_ascii_uppercase(),
                    raw[i + 2].to_ascii_uppercase(),
                ];
                if pair == *b"2F" || pair == *b"5C" {
                    found.encoded_slash = true;
                }
                i += 2;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Whether the path is canonical already; validates escapes and control bytes on the way.
fn is_normal(bytes: &[u8]) -> Result<bool, PathError> {
    let mut normal = true;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let value = escape_at(bytes, i)?;
                if is_unreserved(value)
                    || matches!(value, b'/' | b'\\')
                    || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase)
                {
                    normal = false;
                }
                i += 3;
                continue;
            }
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'\\' | b';' => normal = false,
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
mod tests;
