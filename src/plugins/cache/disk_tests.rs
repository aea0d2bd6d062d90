//! The disk store's file format and folder upkeep.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::disk::{self, Disk};
use super::store::Stored;

fn entry(body: &[u8]) -> Stored {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    headers.insert("etag", HeaderValue::from_static("\"v1\""));
    Stored {
        url: Arc::from("example.com/a?b=1"),
        status: StatusCode::NOT_FOUND,
        headers,
        body: Bytes::copy_from_slice(body),
        vary: vec![
            (
                HeaderName::from_static("accept-language"),
                Some(HeaderValue::from_static("fr")),
            ),
            (HeaderName::from_static("accept-encoding"), None),
        ],
        received: Instant::now(),
        initial_age: Duration::from_secs(3),
        lifetime: Duration::from_secs(60),
        stale_while_revalidate: Duration::from_secs(5),
        stale_if_error: Duration::from_secs(7),
        must_revalidate: true,
        validators: true,
    }
}

const KEY: &str = "example.com/a?b=1\naccept-language:fr";

#[test]
fn a_file_reads_back_as_it_was_written_with_its_age_grown() {
    let stored = entry(b"hello body");
    let bytes = disk::encode(KEY, &stored, 1_000);
    let back = disk::decode(&bytes, KEY, 1_010).unwrap();
    assert_eq!(back.status, StatusCode::NOT_FOUND);
    assert_eq!(back.headers, stored.headers);
    assert_eq!(back.body, stored.body);
    assert_eq!(back.vary, stored.vary);
    assert_eq!(&*back.url, "example.com/a?b=1");
    // 3 s old when stored, stored 10 s ago.
    assert_eq!(back.initial_age, Duration::from_secs(13));
    assert_eq!(back.lifetime, Duration::from_secs(60));
    assert_eq!(back.stale_while_revalidate, Duration::from_secs(5));
    assert_eq!(back.stale_if_error, Duration::from_secs(7));
    assert!(back.must_revalidate && back.validators);
    // A clock gone backwards never makes an answer younger than it was.
    assert_eq!(
        disk::decode(&bytes, KEY, 10).unwrap().initial_age,
        Duration::from_secs(3)
    );
}

#[test]
fn truncated_corrupt_foreign_and_other_version_files_are_refused() {
    let bytes = disk::encode(KEY, &entry(b"hello body"), 1_000);
    for cut in [0, 3, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            disk::decode(&bytes[..cut], KEY, 1_000).is_err(),
            "cut at {cut}"
        );
    }
    for at in [0, 5, 12, bytes.len() - 40, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x55;
        assert!(disk::decode(&bad, KEY, 1_000).is_err(), "flipped at {at}");
    }
    assert_eq!(
        disk::decode(&bytes, "example.com/other", 1_000).err(),
        Some("another key")
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(disk::decode(&longer, KEY, 1_000).is_err());
    assert!(
        disk::decode(
            b"GET / HTTP/1.1\r\n\r\n garbage garbage garbage garbage",
            KEY,
            0
        )
        .is_err()
    );
    // Another version, its digest right: refused for its version.
    let mut other = bytes[..bytes.len() - 32].to_vec();
    other[5] = 9;
    let digest = ring::digest::digest(&ring::digest::SHA256, &other);
    other.extend_from_slice(digest.as_ref());
    assert_eq!(
        disk::decode(&other, KEY, 1_000).err(),
        Some("another version")
    );
}

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portico-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    disk::prepare(&dir).unwrap();
    dir
}

/// Waits (bounded) until `done` holds.
fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn files(dir: &PathBuf) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn entries_survive_a_new_store_bad_files_go_and_the_folder_stays_under_its_size() {
    let dir = folder("upkeep");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let one = disk::encode("h/0", &entry(&[b'x'; 1000]), 0).len() as u64;
    let d = Disk::open(dir.clone(), 4 * one + one / 2).unwrap();
    until("scan", || d.scanned());
    for i in 0..10 {
        d.write(Arc::from(format!("h/{i}")), Arc::new(entry(&[b'x'; 1000])));
        until("write", || {
            dir.join(disk::file_name(&format!("h/{i}"))).exists()
        });
    }
    until("eviction", || files(&dir).len() == 4);
    assert!(d.bytes() <= 4 * one + one / 2);
    let total: u64 = files(&dir)
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
        .sum();
    assert!(total <= 4 * one + one / 2, "{total}");
    assert!(d.load("h/9").is_some());
    drop(d);

    // A garbage file, a leftover temporary file and a file under another key's name.
    std::fs::write(dir.join(disk::file_name("h/garbage")), b"garbage").unwrap();
    std::fs::write(dir.join(".tmp-leftover"), b"half").unwrap();
    std::fs::copy(
        dir.join(disk::file_name("h/9")),
        dir.join(disk::file_name("h/other")),
    )
    .unwrap();
    let d = Disk::open(dir.clone(), 1 << 20).unwrap();
    until("scan", || d.scanned());
    assert_eq!(files(&dir).len(), 4);
    assert!(d.may_have("h/9") && !d.may_have("h/0") && !d.may_have("h/garbage"));
    let back = d.load("h/9").unwrap();
    assert_eq!(back.body.len(), 1000);

    // A file truncated under the store: removed, read as a miss.
    let path = dir.join(disk::file_name("h/8"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    assert!(d.load("h/8").is_none());
    assert!(!path.exists() && !d.may_have("h/8"));

    // Purge by prefix.
    assert_eq!(d.purge(&|url| url.starts_with("h/")), 3);
    until("purge", || files(&dir).is_empty());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_folder_is_refused() {
    let dir = folder("unusable");
    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    assert!(disk::prepare(&file).is_err());
    assert!(disk::prepare(&file.join("below")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_with_an_age_past_any_clock_reads_without_overflow() {
    // Found by fuzzing (corpus/cache_entry/overflow-initial-age): a file with a valid digest
    // and an initial age of 2^64 - 1 seconds panicked adding the time since it was stored.
    let mut stored = entry(b"x");
    stored.initial_age = Duration::from_secs(u64::MAX);
    let bytes = disk::encode(KEY, &stored, 1_000);
    let back = disk::decode(&bytes, KEY, 2_000).unwrap();
    assert_eq!(back.initial_age, Duration::from_secs(u64::MAX));
    let now = Instant::now();
    assert!(back.age(now) >= Duration::from_secs(u64::MAX));
    assert!(!back.fresh(now, 1 << 31));
    assert!(!back.serves_on_error(now));
}
