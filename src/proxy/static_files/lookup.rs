//! Finding the file a request names, on the blocking pool, when the fast lookup
//! (`beneath.rs`) could not: a path with a link on the way, or a folder listing. Every candidate is resolved to its canonical path, which must stay under the
//! canonical root (unless `follow_symlinks`), and opened without following a last link, so no
//! request reaches outside the root.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::runtime::static_files::{Encoding, StaticSite};

/// Most entries a listing shows.
const MAX_LISTED: usize = 10_000;

/// A file found and opened.
pub(super) struct Found {
    /// The open file (a sibling's, when `encoding` is set).
    pub(super) file: File,
    /// Its metadata, taken from the open file.
    pub(super) meta: Metadata,
    /// The name the media type comes from (the uncompressed file's).
    pub(super) name: Vec<u8>,
    /// The precompressed sibling's encoding, if one is sent.
    pub(super) encoding: Option<Encoding>,
}

/// What a path names.
pub(super) enum Lookup {
    /// A file to send.
    File(Found),
    /// A folder named without its trailing `/`: 301 to the slash form.
    Slash,
    /// A folder's listing (HTML).
    Listing(String),
    /// Nothing: 404 (after the fallback, when it applies).
    Missing,
    /// Something refused (a link out of the root, a dot-file behind a link, a device): 404,
    /// never the fallback.
    Refused,
}

/// Why a candidate is not there.
enum Miss {
    Absent,
    Refused,
}

/// The canonical form of `full` and its metadata, when it may be served.
fn resolve(site: &StaticSite, full: &Path) -> Result<(PathBuf, Metadata), Miss> {
    let canon = std::fs::canonicalize(full).map_err(|_| Miss::Absent)?;
    match canon.strip_prefix(&site.root) {
        Ok(inside) => {
            let hidden = inside
                .components()
                .any(|c| c.as_os_str().as_bytes().starts_with(b"."));
            if hidden && !site.dotfiles {
                return Err(Miss::Refused);
            }
        }
        Err(_) if !site.follow_symlinks => return Err(Miss::Refused),
        Err(_) => {}
    }
    let meta = std::fs::metadata(&canon).map_err(|_| Miss::Absent)?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(Miss::Refused);
    }
    Ok((canon, meta))
}

/// Opens a canonical regular file: a link swapped in since is not followed, a FIFO does not
/// block, and what was opened must still be a regular file.
fn open(canon: &Path) -> Option<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(canon)
        .ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}

/// The regular file at `canon`, or its best precompressed sibling the client accepts.
fn file(site: &StaticSite, canon: &Path, accepted: &[Encoding]) -> Option<Found> {
    let name = canon
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    for enc in accepted {
        let mut sibling = canon.as_os_str().to_owned();
        sibling.push(enc.suffix());
        if let Ok((c, meta)) = resolve(site, Path::new(&sibling))
            && meta.is_file()
            && let Some((file, meta)) = open(&c)
        {
            return Some(Found {
                file,
                meta,
                name,
                encoding: Some(*enc),
            });
        }
    }
    let (file, meta) = open(canon)?;
    Some(Found {
        file,
        meta,
        name,
        encoding: None,
    })
}

/// Looks up the decoded segments of a path under the root. `slash`: the path ended in `/`;
/// `shown`: the path as the listing names it; `fallback`: the fallback may answer.
pub(super) fn lookup(
    site: &StaticSite,
    segments: &[Vec<u8>],
    slash: bool,
    shown: &str,
    accepted: &[Encoding],
    fallback: bool,
) -> Lookup {
    let mut full = site.root.clone();
    for s in segments {
        full.push(OsStr::from_bytes(s));
    }
    let found = match resolve(site, &full) {
        Ok((canon, meta)) if meta.is_dir() => {
            if !slash {
                return Lookup::Slash;
            }
            let mut found = Lookup::Missing;
            for index in &site.index {
                if let Ok((c, meta)) = resolve(site, &canon.join(index))
                    && meta.is_file()
                    && let Some(f) = file(site, &c, accepted)
                {
                    found = Lookup::File(f);
                    break;
                }
            }
            match found {
                Lookup::Missing if site.listing => {
                    listing(site, &canon, shown, segments.is_empty())
                }
                other => other,
            }
        }
        Ok((canon, _)) => file(site, &canon, accepted).map_or(Lookup::Missing, Lookup::File),
        Err(Miss::Absent) => Lookup::Missing,
        Err(Miss::Refused) => return Lookup::Refused,
    };
    match (found, &site.fallback) {
        (Lookup::Missing, Some(name)) if fallback => match resolve(site, &site.root.join(name)) {
            Ok((c, meta)) if meta.is_file() => {
                file(site, &c, accepted).map_or(Lookup::Missing, Lookup::File)
            }
            _ => Lookup::Missing,
        },
        (found, _) => found,
    }
}

/// `text` with the five HTML-special characters escaped.
pub(super) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A name percent-encoded for a relative link (every byte but unreserved ones).
fn href(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The HTML listing of a folder: names sorted, folders with a trailing `/`, dot-files left
/// out unless served, links that stay under the root only.
fn listing(site: &StaticSite, dir: &Path, shown: &str, top: bool) -> Lookup {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Lookup::Missing;
    };
    let mut names: Vec<(Vec<u8>, bool)> = Vec::new();
    for entry in entries.flatten().take(MAX_LISTED) {
        let name = entry.file_name().as_bytes().to_vec();
        if name.starts_with(b".") && !site.dotfiles {
            continue;
        }
        let Ok((_, meta)) = resolve(site, &entry.path()) else {
            continue;
        };
        names.push((name, meta.is_dir()));
    }
    names.sort();
    let title = escape_html(shown);
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if !top {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, dir) in &names {
        let slash = if *dir { "/" } else { "" };
        html.push_str(&format!(
            "<li><a href=\"./{}{slash}\">{}{slash}</a></li>\n",
            href(name),
            escape_html(&String::from_utf8_lossy(name))
        ));
    }
    html.push_str("</ul>\n</body></html>\n");
    Lookup::Listing(html)
}
