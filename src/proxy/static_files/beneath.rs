//! The fast lookup: each candidate opened with one `openat2` from the root, resolved beneath
//! it (`RESOLVE_BENEATH`) and through no link at all (`RESOLVE_NO_SYMLINKS`), so the kernel
//! itself keeps the lookup inside the root, with no `canonicalize` walk. A path with a link on
//! the way, or a kernel without `openat2` (before 5.6, or a seccomp filter refusing it), is
//! left to the slow lookup in `lookup.rs`, which resolves links and checks where they lead.
//!
//! These are metadata calls on the worker thread, as nginx makes them: on a local file system
//! they are answered from the dentry and inode caches. File contents are never read here.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::lookup::{Found, Lookup};
use crate::runtime::static_files::{Encoding, StaticSite};

/// Cleared for good when the kernel refuses `openat2` itself.
static AVAILABLE: AtomicBool = AtomicBool::new(true);

/// What opening one candidate gave.
enum Open {
    /// The file or folder, opened.
    Opened(File, std::fs::Metadata),
    /// Nothing there (or not readable).
    Absent,
    /// Something that is neither a regular file nor a folder (a FIFO, a device, a socket).
    Special,
    /// A link on the way, or no `openat2`: the slow lookup decides.
    Slow,
}

/// Opens `rel` beneath `root` without following any link.
fn open(root: &File, rel: &[u8]) -> Open {
    let rel = if rel.is_empty() { b"." } else { rel };
    let opened = rustix::fs::openat2(
        root,
        OsStr::from_bytes(rel),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            AVAILABLE.store(false, Ordering::Relaxed);
            return Open::Slow;
        }
        // A link on the way (ELOOP), or `..` leading out (EXDEV, which decoded segments never
        // hold): the slow lookup resolves and judges it. EAGAIN: a concurrent rename raced the
        // walk; the slow lookup retries it.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::AGAIN) => {
            return Open::Slow;
        }
        Err(_) => return Open::Absent,
    };
    let file = File::from(fd);
    match file.metadata() {
        Ok(meta) if meta.is_file() || meta.is_dir() => Open::Opened(file, meta),
        Ok(_) => Open::Special,
        Err(_) => Open::Absent,
    }
}

/// The regular file `rel` (already opened as `file`), or its best precompressed sibling.
fn with_sibling(
    root: &File,
    rel: &[u8],
    file: File,
    meta: std::fs::Metadata,
    accepted: &[Encoding],
) -> Option<Found> {
    let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel).to_vec();
    let mut sibling = Vec::with_capacity(rel.len() + 4);
    for enc in accepted {
        sibling.clear();
        sibling.extend_from_slice(rel);
        sibling.extend_from_slice(enc.suffix().as_bytes());
        match open(root, &sibling) {
            Open::Opened(file, meta) if meta.is_file() => {
                return Some(Found {
                    file,
                    meta,
                    name,
                    encoding: Some(*enc),
                });
            }
            Open::Slow => return None,
            _ => {}
        }
    }
    Some(Found {
        file,
        meta,
        name,
        encoding: None,
    })
}

/// A regular file named by the config (an index or the fallback) at `rel`: `Some(None)` when
/// it is not there, `None` when the slow lookup must decide.
fn named(root: &File, rel: &[u8], accepted: &[Encoding]) -> Option<Option<Found>> {
    match open(root, rel) {
        Open::Opened(file, meta) if meta.is_file() => {
            with_sibling(root, rel, file, meta, accepted).map(Some)
        }
        Open::Slow => None,
        _ => Some(None),
    }
}

/// Looks up the decoded segments as `lookup::lookup` does; `None` hands the whole lookup to
/// the slow path on the blocking pool (a link on the way, a listing, or no `openat2`).
pub(super) fn lookup(
    site: &StaticSite,
    segments: &[Vec<u8>],
    slash: bool,
    accepted: &[Encoding],
    fallback: bool,
) -> Option<Lookup> {
    // A hidden index or fallback name: only the slow lookup refuses it.
    if site.hidden_names || !AVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let root = rustix::fs::open(
        &site.root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
    .map(File::from)?;
    let mut rel = Vec::with_capacity(segments.iter().map(|s| s.len() + 1).sum());
    for s in segments {
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(s);
    }
    let found = match open(&root, &rel) {
        Open::Opened(_, meta) if meta.is_dir() => {
            if !slash {
                return Some(Lookup::Slash);
            }
            let mut found = Lookup::Missing;
            for index in &site.index {
                let mut path = rel.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(index.as_bytes());
                if let Some(f) = named(&root, &path, accepted)? {
                    found = Lookup::File(f);
                    break;
                }
            }
            match found {
                // A listing reads the whole folder: the blocking pool makes it.
                Lookup::Missing if site.listing => return None,
                other => other,
            }
        }
        Open::Opened(file, meta) => Lookup::File(with_sibling(&root, &rel, file, meta, accepted)?),
        Open::Absent => Lookup::Missing,
        Open::Special => return Some(Lookup::Refused),
        Open::Slow => return None,
    };
    Some(match (found, &site.fallback) {
        (Lookup::Missing, Some(name)) if fallback => {
            named(&root, name.as_os_str().as_bytes(), accepted)?
                .map_or(Lookup::Missing, Lookup::File)
        }
        (found, _) => found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_escapes_go_to_the_slow_path() {
        let dir = std::env::temp_dir().join(format!("portico-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.txt"), b"a").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", dir.join("link.txt")).unwrap();
        let root = File::open(&dir).unwrap();
        assert!(matches!(open(&root, b"sub/a.txt"), Open::Opened(..)));
        assert!(matches!(open(&root, b""), Open::Opened(..)));
        assert!(matches!(open(&root, b"nope"), Open::Absent));
        if AVAILABLE.load(Ordering::Relaxed) {
            assert!(matches!(open(&root, b"link.txt"), Open::Slow), "a link");
            assert!(matches!(open(&root, b"../x"), Open::Slow), "an escape");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
