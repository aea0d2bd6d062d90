//! The `static` action compiled: a canonical root and the answer's settings.

use std::collections::HashMap;
use std::path::PathBuf;

use http::HeaderValue;

use crate::config::spec_static::StaticSpec;
use crate::config::{At, Diagnostics};

/// A precompressed sibling's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `FILE.br`.
    Br,
    /// `FILE.zst`.
    Zstd,
    /// `FILE.gz`.
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Encoding::Br => ".br",
            Encoding::Zstd => ".zst",
            Encoding::Gzip => ".gz",
        }
    }
}

/// Files served from a folder.
#[derive(Debug)]
pub(crate) struct StaticSite {
    /// The canonical root folder.
    pub(crate) root: PathBuf,
    /// Removed from the path before lookup, without a trailing `/`.
    pub(crate) strip_prefix: Option<String>,
    /// Index file names, in order.
    pub(crate) index: Vec<String>,
    /// Whether folders without an index are listed.
    pub(crate) listing: bool,
    /// The single-page-app fallback, relative to the root.
    pub(crate) fallback: Option<PathBuf>,
    /// `Cache-Control` of file answers.
    pub(crate) cache_control: Option<HeaderValue>,
    /// Whether dot-files are served.
    pub(crate) dotfiles: bool,
    /// Whether links out of the root are followed.
    pub(crate) follow_symlinks: bool,
    /// An index or fallback name holds a dot-segment the site hides (which only the slow
    /// lookup refuses).
    pub(crate) hidden_names: bool,
    /// Precompressed siblings, by preference.
    pub(crate) precompressed: Vec<Encoding>,
    /// Extra media types by lower-case extension.
    pub(crate) mime_types: HashMap<String, HeaderValue>,
}

/// A plain relative file name under the root: no `..`, no absolute part, no NUL.
fn relative(name: &At<String>, what: &str, diags: &mut Diagnostics) -> Option<PathBuf> {
    let path = std::path::Path::new(name.as_str());
    let plain = !name.is_empty()
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        diags.error(
            name.pos,
            format!("static.{what} must be a relative file name under root, without `..`"),
        );
        return None;
    }
    Some(path.to_path_buf())
}

/// Compiles `static:`; `base` is the config file's folder.
pub(crate) fn compile(
    spec: &StaticSpec,
    base: &std::path::Path,
    diags: &mut Diagnostics,
) -> Option<StaticSite> {
    let before = diags.list.len();
    let root = match std::fs::canonicalize(base.join(spec.root.as_str())) {
        Ok(root) if root.is_dir() => Some(root),
        Ok(_) => {
            diags.error(spec.root.pos, "static.root is not a folder");
            None
        }
        Err(err) => {
            diags.error(
                spec.root.pos,
                format!("static.root `{}` cannot be used: {err}", *spec.root),
            );
            None
        }
    };
    let strip_prefix = spec.strip_prefix.as_ref().and_then(|p| {
        if !p.starts_with('/') {
            diags.error(p.pos, "static.strip_prefix must start with `/`");
            return None;
        }
        Some(p.trim_end_matches('/').to_owned())
    });
    let mut index = Vec::new();
    for name in &spec.index {
        if name.contains('/') {
            diags.error(name.pos, "static.index entries are file names, without `/`");
        }
        if let Some(path) = relative(name, "index", diags) {
            index.push(path.to_string_lossy().into_owned());
        }
    }
    let fallback = spec
        .fallback
        .as_ref()
        .and_then(|f| relative(f, "fallback", diags));
    let cache_control = spec.cache_control.as_ref().and_then(|c| {
        HeaderValue::from_str(c)
            .map_err(|_| diags.error(c.pos, "static.cache_control is not a valid header value"))
            .ok()
    });
    let mut precompressed = Vec::new();
    for enc in &spec.precompressed {
        let e = match enc.as_str() {
            "br" => Encoding::Br,
            "zstd" => Encoding::Zstd,
            "gzip" => Encoding::Gzip,
            other => {
                diags.error(
                    enc.pos,
                    format!("static.precompressed: `{other}` is not br, zstd or gzip"),
                );
                continue;
            }
        };
        if !precompressed.contains(&e) {
            precompressed.push(e);
        }
    }
    let mut mime_types = HashMap::new();
    for (ext, value) in &spec.mime_types {
        match HeaderValue::from_str(value) {
            Ok(v) if value.contains('/') => {
                mime_types.insert(ext.trim_start_matches('.').to_ascii_lowercase(), v);
            }
            _ => diags.error(
                value.pos,
                format!("static.mime_types.{ext} is not a media type such as `text/plain`"),
            ),
        }
    }
    if diags.list.len() > before {
        return None;
    }
    let hidden = |name: &[u8]| name.split(|&b| b == b'/').any(|c| c.starts_with(b"."));
    let hidden_names = !spec.dotfiles
        && (index.iter().any(|i| hidden(i.as_bytes()))
            || fallback
                .as_ref()
                .is_some_and(|f: &PathBuf| hidden(f.as_os_str().as_encoded_bytes())));
    Some(StaticSite {
        hidden_names,
        root: root?,
        strip_prefix,
        index,
        listing: spec.listing,
        fallback,
        cache_control,
        dotfiles: spec.dotfiles,
        follow_symlinks: spec.follow_symlinks,
        precompressed,
        mime_types,
    })
}
