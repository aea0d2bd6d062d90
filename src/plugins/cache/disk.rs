//! The disk store: the answers of the memory store, written through to one file per key so
//! that they survive a restart.
//!
//! A file is named by the SHA-256 (hex) of its key and holds a versioned header (magic,
//! version, key, stored-at time in Unix seconds, timings, status, fields, the `Vary`
//! selection), the body, and the SHA-256 of all that: a truncated, corrupt, wrong-version
//! or key-mismatching file is deleted and read as a miss. Files are written to a temporary
//! name and renamed, so a crash never leaves a half file under an entry's name.
//!
//! All file work runs on one writer thread fed by a bounded queue (1024 writes, 64 MiB of
//! bodies: a full queue drops the write, a request never waits for the disk) or, for reads, on tokio's blocking pool. The
//! thread first scans the folder: it learns the entries (key → file, size, stored-at time)
//! from their headers and removes the oldest past `max_size`; writes keep the folder under
//! it by removing the oldest too. One process per folder.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::store::Stored;

/// The first bytes of every entry file.
const MAGIC: &[u8; 4] = b"PCDE";
/// The format's version; another one is read as a miss (and replaced).
const VERSION: u16 = 1;
/// Prefix of the temporary names files are written under.
const TMP: &str = ".tmp-";
/// Writes (and removals) waiting for the writer thread; past it writes are dropped.
const QUEUE: usize = 1024;
/// Body bytes of the writes waiting; past it writes are dropped.
const QUEUE_BYTES: u64 = 64 << 20;
/// Largest header read when scanning (a bigger one is not an entry of this format).
const MAX_HEADER: usize = 1 << 20;
const DIGEST: usize = 32;

/// One entry on disk, as the index knows it.
#[derive(Debug, Clone)]
struct Entry {
    /// Bytes of its file.
    size: u64,
    /// When it was stored (Unix seconds).
    stored_at: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<Arc<str>, Entry>,
    bytes: u64,
}

impl Index {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes = self.bytes.saturating_sub(entry.size);
        Some(entry)
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: AtomicU64,
    index: Mutex<Index>,
    /// Whether the start-up scan is done: before it, any key may be on disk.
    scanned: AtomicBool,
    tmp_seq: AtomicU64,
    /// Body bytes of the writes queued.
    queued: AtomicU64,
}

enum Job {
    Write(Arc<str>, Arc<Stored>),
    Remove(Vec<Arc<str>>),
}

/// The disk store of one `cache` plugin.
pub(crate) struct Disk {
    shared: Arc<Shared>,
    queue: SyncSender<Job>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Disk({})", self.shared.dir.display())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Creates the folder (mode 0700) if missing and checks that files can be written in it.
pub(crate) fn prepare(dir: &Path) -> Result<(), String> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| format!("cannot create the cache folder `{}`: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("`{}` is not a folder", dir.display()));
    }
    let probe = dir.join(format!("{TMP}probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in the cache folder `{}`: {e}", dir.display()))
}

impl Disk {
    /// The disk store in `dir` (already [`prepare`]d), of at most `max_bytes`; its writer
    /// thread starts by scanning the folder.
    pub(crate) fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            dir,
            max_bytes: AtomicU64::new(max_bytes),
            index: Mutex::new(Index::default()),
            scanned: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("portico-cache-disk".into())
            .spawn(move || writer(&thread_shared, &jobs))?;
        Ok(Disk { shared, queue })
    }

    /// Its folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Makes `max_bytes` its size from now on (a changed spec on the same folder keeps the
    /// store); past it, the oldest entries are removed soon.
    pub(crate) fn resize(&self, max_bytes: u64) {
        if self.shared.max_bytes.swap(max_bytes, Ordering::Relaxed) > max_bytes {
            let _ = self.queue.try_send(Job::Remove(Vec::new()));
        }
    }

    /// Whether `key` may have a file (always, until the scan is done).
    pub(crate) fn may_have(&self, key: &str) -> bool {
        !self.shared.scanned.load(Ordering::Acquire)
            || lock(&self.shared.index).entries.contains_key(key)
    }

    /// Queues the write of `stored` under `key`; dropped when the queue is full (in
    /// writes or in bytes).
    pub(crate) fn write(&self, key: Arc<str>, stored: Arc<Stored>) {
        let size = stored.body.len() as u64;
        let queued = &self.shared.queued;
        if queued.fetch_add(size, Ordering::AcqRel) + size > QUEUE_BYTES
            || self.queue.try_send(Job::Write(key, stored)).is_err()
        {
            queued.fetch_sub(size, Ordering::AcqRel);
            tracing::debug!(target: "portico::cache", "disk write queue full: write dropped");
        }
    }

    /// Drops the entries whose URL (the key up to its key headers) `matches`; returns how
    /// many. Their files are removed by the writer thread, after the writes queued before.
    pub(crate) fn purge(&self, matches: &dyn Fn(&str) -> bool) -> usize {
        let keys: Vec<Arc<str>> = {
            let mut index = lock(&self.shared.index);
            let keys: Vec<Arc<str>> = index
                .entries
                .keys()
                .filter(|k| matches(url_of_key(k)))
                .cloned()
                .collect();
            for key in &keys {
                index.remove(key);
            }
            keys
        };
        let n = keys.len();
        if let Err(TrySendError::Full(Job::Remove(keys))) = self.queue.try_send(Job::Remove(keys)) {
            // Removals are never dropped: done on the blocking pool instead.
            let shared = Arc::clone(&self.shared);
            let work = move || {
                for key in &keys {
                    let _ = std::fs::remove_file(shared.dir.join(file_name(key)));
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(work)),
                Err(_) => work(),
            }
        }
        n
    }

    /// The entry of `key` read from its file (blocking: call it off the worker); a bad
    /// file is removed and read as `None`.
    pub(crate) fn load(&self, key: &str) -> Option<Stored> {
        let path = self.shared.dir.join(file_name(key));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return None,
        };
        match decode(&bytes, key, unix_now()) {
            Ok(stored) => Some(stored),
            Err(why) => {
                tracing::debug!(target: "portico::cache", file = %path.display(), why, "bad cache file removed");
                let _ = std::fs::remove_file(&path);
                lock(&self.shared.index).remove(key);
                None
            }
        }
    }

    /// Bytes of the entries on disk (as far as the index knows).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        lock(&self.shared.index).bytes
    }

    /// Whether the scan is done (for tests).
    #[cfg(test)]
    pub(crate) fn scanned(&self) -> bool {
        self.shared.scanned.load(Ordering::Acquire)
    }
}

/// The URL part of a key (keys are the URL, then `\n` and each key header).
fn url_of_key(key: &str) -> &str {
    key.split('\n').next().unwrap_or(key)
}

/// The file name of a key: the SHA-256 of it, in hex.
pub(crate) fn file_name(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The writer thread: the scan, then each job until the store is dropped.
fn writer(shared: &Shared, jobs: &Receiver<Job>) {
    scan(shared);
    shared.scanned.store(true, Ordering::Release);
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Write(key, stored) => {
                if let Err(e) = write_entry(shared, &key, &stored) {
                    tracing::warn!(target: "portico::cache", dir = %shared.dir.display(), error = %e, "cache file not written");
                }
                shared
                    .queued
                    .fetch_sub(stored.body.len() as u64, Ordering::AcqRel);
            }
            Job::Remove(keys) => {
                for key in &keys {
                    lock(&shared.index).remove(key);
                    let _ = std::fs::remove_file(shared.dir.join(file_name(key)));
                }
                evict(shared, &mut lock(&shared.index));
            }
        }
    }
}

fn write_entry(shared: &Shared, key: &Arc<str>, stored: &Stored) -> std::io::Result<()> {
    // In milliseconds first: the whole seconds of the age read back are never fewer than
    // the time that really passed.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let elapsed = Instant::now().saturating_duration_since(stored.received);
    let stored_at = u64::try_from(now_ms.saturating_sub(elapsed.as_millis()) / 1000).unwrap_or(0);
    let bytes = encode(key, stored, stored_at);
    let size = bytes.len() as u64;
    if size > shared.max_bytes.load(Ordering::Relaxed) {
        return Ok(());
    }
    let name = file_name(key);
    let seq = shared.tmp_seq.fetch_add(1, Ordering::Relaxed);
    let tmp = shared.dir.join(format!("{TMP}{name}-{seq}"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        // No fsync: a file cut short by a power loss fails its digest and is read as a miss.
        file.write_all(&bytes)?;
        std::fs::rename(&tmp, shared.dir.join(&name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    let mut index = lock(&shared.index);
    index.remove(key);
    index
        .entries
        .insert(Arc::clone(key), Entry { size, stored_at });
    index.bytes += size;
    evict(shared, &mut index);
    Ok(())
}

/// Removes the oldest entries until the folder is under its size.
fn evict(shared: &Shared, index: &mut Index) {
    let max = shared.max_bytes.load(Ordering::Relaxed);
    if index.bytes <= max {
        return;
    }
    let mut by_age: Vec<(u64, Arc<str>)> = index
        .entries
        .iter()
        .map(|(k, e)| (e.stored_at, Arc::clone(k)))
        .collect();
    by_age.sort_unstable();
    for (_, key) in by_age {
        if index.bytes <= max {
            break;
        }
        index.remove(&key);
        let _ = std::fs::remove_file(shared.dir.join(file_name(&key)));
    }
}

/// Learns the entries of the folder from their headers; removes leftovers of interrupted
/// writes, files that are not entries, and the oldest entries past the size.
fn scan(shared: &Shared) {
    let Ok(dir) = std::fs::read_dir(&shared.dir) else {
        return;
    };
    let mut found = Vec::new();
    for item in dir.flatten() {
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        if !item.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if name.starts_with(TMP) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match read_head(&path) {
            Some((key, stored_at, size)) if file_name(&key) == name => {
                found.push((Arc::<str>::from(key), Entry { size, stored_at }));
            }
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let mut index = lock(&shared.index);
    for (key, entry) in found {
        // Entries written since the scan began are newer.
        if !index.entries.contains_key(&key) {
            index.bytes += entry.size;
            index.entries.insert(key, entry);
        }
    }
    evict(shared, &mut index);
}

/// The key, the stored-at time and the file's size, from the head of an entry file.
fn read_head(path: &Path) -> Option<(String, u64, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut fixed = [0u8; 10];
    file.read_exact(&mut fixed).ok()?;
    if &fixed[..4] != MAGIC || u16::from_be_bytes([fixed[4], fixed[5]]) != VERSION {
        return None;
    }
    let head_len = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]) as usize;
    if head_len > MAX_HEADER {
        return None;
    }
    let mut head = vec![0u8; head_len];
    file.read_exact(&mut head).ok()?;
    let mut r = Reader(&head);
    let key = String::from_utf8(r.bytes32()?.to_vec()).ok()?;
    let stored_at = r.u64()?;
    Some((key, stored_at, size))
}

/// The file of an entry: magic, version, header length, header, body, SHA-256 of all that.
pub(crate) fn encode(key: &str, stored: &Stored, stored_at: u64) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + key.len());
    put_bytes32(&mut head, key.as_bytes());
    head.extend_from_slice(&stored_at.to_be_bytes());
    for d in [
        stored.initial_age,
        stored.lifetime,
        stored.stale_while_revalidate,
        stored.stale_if_error,
    ] {
        head.extend_from_slice(&d.as_secs().to_be_bytes());
    }
    head.push(u8::from(stored.must_revalidate) | (u8::from(stored.validators) << 1));
    head.extend_from_slice(&stored.status.as_u16().to_be_bytes());
    head.extend_from_slice(&(stored.headers.len() as u32).to_be_bytes());
    for (name, value) in &stored.headers {
        put_bytes32(&mut head, name.as_str().as_bytes());
        put_bytes32(&mut head, value.as_bytes());
    }
    head.extend_from_slice(&(stored.vary.len() as u32).to_be_bytes());
    for (name, value) in &stored.vary {
        put_bytes32(&mut head, name.as_str().as_bytes());
        match value {
            Some(v) => {
                head.push(1);
                put_bytes32(&mut head, v.as_bytes());
            }
            None => head.push(0),
        }
    }
    let mut out = Vec::with_capacity(10 + head.len() + 8 + stored.body.len() + DIGEST);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&(stored.body.len() as u64).to_be_bytes());
    out.extend_from_slice(&stored.body);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }

    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The entry of `key` from its file's bytes, its age brought up to `now` (Unix seconds).
pub(crate) fn decode(bytes: &[u8], key: &str, now: u64) -> Result<Stored, &'static str> {
    if bytes.len() < 10 + 8 + DIGEST {
        return Err("truncated");
    }
    if &bytes[..4] != MAGIC {
        return Err("not a cache file");
    }
    if u16::from_be_bytes([bytes[4], bytes[5]]) != VERSION {
        return Err("another version");
    }
    let (content, digest) = bytes.split_at(bytes.len() - DIGEST);
    if ring::digest::digest(&ring::digest::SHA256, content).as_ref() != digest {
        return Err("corrupt or truncated");
    }
    let mut r = Reader(&content[6..]);
    let bad = "bad header";
    let head_len = r.u32().ok_or(bad)? as usize;
    let mut h = Reader(r.take(head_len).ok_or(bad)?);
    if h.bytes32().ok_or(bad)? != key.as_bytes() {
        return Err("another key");
    }
    let stored_at = h.u64().ok_or(bad)?;
    let initial_age = h.u64().ok_or(bad)?;
    let mut secs = || h.u64().map(Duration::from_secs).ok_or(bad);
    let lifetime = secs()?;
    let stale_while_revalidate = secs()?;
    let stale_if_error = secs()?;
    let flags = h.u8().ok_or(bad)?;
    let status = StatusCode::from_u16(h.u16().ok_or(bad)?).map_err(|_| bad)?;
    let n = h.u32().ok_or(bad)?;
    let mut headers = HeaderMap::new();
    for _ in 0..n {
        let name = HeaderName::from_bytes(h.bytes32().ok_or(bad)?).map_err(|_| bad)?;
        let value = HeaderValue::from_bytes(h.bytes32().ok_or(bad)?).map_err(|_| bad)?;
        headers.append(name, value);
    }
    let n = h.u32().ok_or(bad)?;
    let mut vary = Vec::new();
    for _ in 0..n {
        let name = HeaderName::from_bytes(h.bytes32().ok_or(bad)?).map_err(|_| bad)?;
        let value = match h.u8().ok_or(bad)? {
            0 => None,
            _ => Some(HeaderValue::from_bytes(h.bytes32().ok_or(bad)?).map_err(|_| bad)?),
        };
        vary.push((name, value));
    }
    let body_len = usize::try_from(r.u64().ok_or(bad)?).map_err(|_| bad)?;
    let body = r.take(body_len).ok_or("truncated")?;
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Stored {
        url: Arc::from(url_of_key(key)),
        status,
        headers,
        body: Bytes::copy_from_slice(body),
        vary,
        received: Instant::now(),
        // In whole seconds, saturating: a file is read as it is, durations of any size included.
        initial_age: Duration::from_secs(initial_age.saturating_add(now.saturating_sub(stored_at))),
        lifetime,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate: flags & 1 != 0,
        validators: flags & 2 != 0,
    })
}
