//! Media types by file extension, with a charset for text.

use http::HeaderValue;

use crate::runtime::static_files::StaticSite;

/// The built-in table: extension → media type (text types carry `; charset=utf-8`).
const TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("json", "application/json; charset=utf-8"),
    ("map", "application/json; charset=utf-8"),
    ("webmanifest", "application/manifest+json; charset=utf-8"),
    ("txt", "text/plain; charset=utf-8"),
    ("md", "text/markdown; charset=utf-8"),
    ("csv", "text/csv; charset=utf-8"),
    ("xml", "application/xml; charset=utf-8"),
    ("svg", "image/svg+xml; charset=utf-8"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("avif", "image/avif"),
    ("ico", "image/x-icon"),
    ("woff", "font/woff"),
    ("woff2", "font/woff2"),
    ("ttf", "font/ttf"),
    ("otf", "font/otf"),
    ("wasm", "application/wasm"),
    ("pdf", "application/pdf"),
    ("zip", "application/zip"),
    ("mp4", "video/mp4"),
    ("webm", "video/webm"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("wav", "audio/wav"),
];

/// What a file of no known extension is sent as.
const DEFAULT: &str = "application/octet-stream";

/// The `Content-Type` of a file named `name`: the site's own map first, then the built-in
/// table, else `application/octet-stream`.
pub(super) fn content_type(site: &StaticSite, name: &[u8]) -> HeaderValue {
    let ext = match name.iter().rposition(|b| *b == b'.') {
        Some(dot) if dot > 0 => &name[dot + 1..],
        _ => return HeaderValue::from_static(DEFAULT),
    };
    let ext = String::from_utf8_lossy(ext).to_ascii_lowercase();
    if let Some(own) = site.mime_types.get(&ext) {
        return own.clone();
    }
    let found = TYPES
        .iter()
        .find(|(e, _)| *e == ext)
        .map_or(DEFAULT, |t| t.1);
    HeaderValue::from_static(found)
}
