//! The `static` route action through the real binary: curl and the hyper client against a
//! folder of files, traversal attempts with a secret file next to the root, a 20 MiB file in
//! bounded memory, and headless Chromium on a single-page app with deep links.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::{H1, Portico, get, temp_dir};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// What the file next to the root holds; no answer may ever contain it.
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT";

/// A folder `site/` of files, with `secret.txt` beside it (and links out to it).
fn site() -> PathBuf {
    let dir = temp_dir("static");
    let root = dir.join("site");
    let w = |rel: &str, data: &[u8]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    w(
        "index.html",
        b"<!doctype html><title>home</title><p>home page</p>\n",
    );
    w(
        "app.js",
        "console.log('portico static files, ünïcode');\n"
            .repeat(40)
            .as_bytes(),
    );
    w("data.json", br#"{"ok": true}"#);
    w("style.css", b"body { margin: 0 }\n");
    w("logo.svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n");
    w(
        "img.png",
        &(0..=255u8).cycle().take(3000).collect::<Vec<u8>>(),
    );
    w("app.wasm", b"\0asm");
    w("sub/page.txt", b"a page in a folder\n");
    w("sub/deeper/note.txt", b"a note\n");
    w("docs/index.html", b"<p>docs index</p>\n");
    w("we<ird>&\"name\".txt", b"weird\n");
    w(".env", b"HIDDEN=1\n");
    w(".git/config", b"[core]\n");
    std::os::unix::fs::symlink("../secret.txt", root.join("link-out")).unwrap();
    std::os::unix::fs::symlink("..", root.join("dir-out")).unwrap();
    std::os::unix::fs::symlink("app.js", root.join("link-in.js")).unwrap();
    // Precompressed siblings, real ones: gzip and zstd by their tools, brotli by node's zlib.
    for (tool, args) in [("gzip", &["-k", "-9"][..]), ("zstd", &["-q", "-k"][..])] {
        let ok = Command::new(tool)
            .args(args)
            .arg(root.join("app.js"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{tool} failed");
    }
    let js = root.join("app.js");
    let brotli = "const z = require('zlib'), fs = require('fs'); \
        fs.writeFileSync(process.argv[1] + '.br', z.brotliCompressSync(fs.readFileSync(process.argv[1])))";
    let ok = Command::new("node")
        .args(["-e", brotli])
        .arg(&js)
        .status()
        .expect("node (run scripts/test.sh, which installs nodejs)")
        .success();
    assert!(ok, "node could not write app.js.br");
    dir
}

const CONFIG: &str = r#"
listeners:
  - { name: web, bind: 127.0.0.1:0, protocol: http }
admin: { listen: 127.0.0.1:0 }
routes:
  - name: files
    match: { path_prefix: /files/ }
    static: { root: ./site, strip_prefix: /files, index: [], listing: true, precompressed: [] }
  - name: dots
    match: { path_prefix: /dots/ }
    static: { root: ./site, strip_prefix: /dots, dotfiles: true, mime_types: { wasm: application/x-test-wasm } }
  - name: site
    match: { path_prefix: / }
    static:
      root: ./site
      fallback: index.html
      cache_control: "public, max-age=60"
"#;

fn start() -> (PathBuf, Portico) {
    let dir = site();
    let gw = Portico::start_in(&dir, CONFIG);
    (dir, gw)
}

/// An answer as curl got it.
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs curl on `url` with `args` (the path sent as it is); the last head's status and
/// fields, and the body as received (decoded only with `--compressed`).
fn curl(url: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-s", "-i", "--path-as-is", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let raw = out.stdout;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no head from curl for {url}: {}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curl {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn file(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join("site").join(rel)).unwrap()
}

#[tokio::test]
async fn index_mime_fallback_head_and_methods() {
    let (dir, gw) = start();
    let web = gw.addr("web");
    let base = format!("http://{web}");

    let r = get(&web, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_bytes(), file(&dir, "index.html"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(get(&web, "/docs/").await.body, "<p>docs index</p>\n");
    // A folder without its slash: 301 to the slash form, query kept.
    let r = get(&web, "/docs?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/docs/?x=1"));

    for (path, ty) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/img.png", "image/png"),
        ("/sub/page.txt", "text/plain; charset=utf-8"),
        ("/app.wasm", "application/wasm"),
        ("/dots/app.wasm", "application/x-test-wasm"),
    ] {
        let r = curl(&format!("{base}{path}"), &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        let rel = path.trim_start_matches("/dots").trim_start_matches('/');
        assert_eq!(r.body, file(&dir, rel), "{path}");
    }

    // The single-page-app fallback: deep links (no extension, or asking for HTML).
    for (path, accept) in [
        ("/users/42", "*/*"),
        ("/users/42/settings", "*/*"),
        ("/missing.html", "text/html,application/xhtml+xml"),
        ("/sub/deeper/", "*/*"),
    ] {
        let r = curl(
            &format!("{base}{path}"),
            &["-H", &format!("accept: {accept}")],
        );
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, file(&dir, "index.html"), "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    // A missing asset is a 404, not the app.
    let r = curl(&format!("{base}/missing.png"), &[]);
    assert_eq!(r.status, 404);
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["error"], "not_found");
    // Without a fallback, a folder without index (listing off) is 404 too.
    assert_eq!(curl(&format!("{base}/dots/sub/"), &[]).status, 404);

    // HEAD: the same head, no body.
    let full = curl(&format!("{base}/app.js"), &[]);
    let head = curl(&format!("{base}/app.js"), &["-I"]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
    ] {
        assert_eq!(head.header(name), full.header(name), "{name}");
    }
    assert_eq!(
        head.header("content-length"),
        Some(file(&dir, "app.js").len().to_string().as_str())
    );

    // Other methods: 405 with Allow.
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = curl(&format!("{base}/app.js"), &["-X", method]);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["error"], "method_not_allowed");
    }

    // The hyper client, over one keep-alive connection.
    let mut client = H1::connect(&web).await;
    for _ in 0..3 {
        let r = client.get("x", "/data.json").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r#"{"ok": true}"#);
    }
    // HTTP/2 (prior knowledge) gets the same file.
    let r = crate::support::h2_get(&web, "x", "/app.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body.as_bytes(), file(&dir, "app.js"));
    // The route's usual request metrics count these answers.
    let metrics = get(gw.admin.as_ref().unwrap(), "/metrics").await.body;
    let line = r#"portico_requests_total{listener="web",route="site",upstream="",status="200"}"#;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(count >= 15, "{count}");
    assert!(
        metrics.contains(
            r#"portico_requests_total{listener="web",route="site",upstream="",status="405"} 5"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn validators_and_every_precondition() {
    let (_dir, gw) = start();
    let url = format!("http://{}/app.js", gw.addr("web"));
    let first = curl(&url, &[]);
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong tag: {etag}"
    );
    assert!(modified.ends_with(" GMT"), "{modified}");
    let weak = format!("W/{etag}");
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";
    let cases: &[(&[(&str, &str)], u16)] = &[
        (&[("if-none-match", &etag)], 304),
        (&[("if-none-match", &weak)], 304),
        (&[("if-none-match", &format!("\"other\", {etag}"))], 304),
        (&[("if-none-match", "\"other\"")], 200),
        (&[("if-match", "\"other\"")], 412),
        (&[("if-match", &weak)], 412),
        (&[("if-match", &etag)], 200),
        (&[("if-match", "*")], 200),
        (&[("if-modified-since", &modified)], 304),
        (&[("if-modified-since", old)], 200),
        (&[("if-modified-since", "not a date")], 200),
        (&[("if-unmodified-since", old)], 412),
        (&[("if-unmodified-since", &modified)], 200),
        // If-None-Match is evaluated instead of If-Modified-Since.
        (
            &[
                ("if-none-match", "\"other\""),
                ("if-modified-since", &modified),
            ],
            200,
        ),
        // If-Match is evaluated instead of If-Unmodified-Since.
        (&[("if-match", &etag), ("if-unmodified-since", old)], 200),
        // If-Match fails first, whatever If-None-Match says.
        (&[("if-match", "\"other\""), ("if-none-match", &etag)], 412),
    ];
    for (fields, want) in cases {
        let mut args = Vec::new();
        for (k, v) in *fields {
            args.push("-H".to_owned());
            args.push(format!("{k}: {v}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&url, &args);
        assert_eq!(r.status, *want, "{fields:?}");
        match want {
            304 => {
                assert!(r.body.is_empty());
                assert_eq!(r.header("etag"), Some(etag.as_str()));
                assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
            }
            412 => {
                let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(json["error"], "precondition_failed", "{fields:?}");
            }
            _ => assert_eq!(r.header("etag"), Some(etag.as_str())),
        }
    }
    // A HEAD with a matching tag is a 304 too.
    assert_eq!(
        curl(&url, &["-I", "-H", &format!("if-none-match: {etag}")]).status,
        304
    );
    // Another file has another tag.
    let other = curl(&url.replace("app.js", "style.css"), &[]);
    assert_ne!(other.header("etag"), Some(etag.as_str()));
}

/// The parts of a `multipart/byteranges` body: (Content-Range, bytes).
fn multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap_or_else(|| panic!("{content_type}"));
    let delimiter = format!("\r\n--{boundary}");
    let d = delimiter.as_bytes();
    let mut cuts = Vec::new();
    let mut at = 0;
    while let Some(p) = body[at..].windows(d.len()).position(|w| w == d) {
        cuts.push(at + p);
        at += p + d.len();
    }
    assert!(body[at..].starts_with(b"--\r\n"), "no closing delimiter");
    let mut parts = Vec::new();
    for pair in cuts.windows(2) {
        let part = &body[pair[0] + d.len()..pair[1]];
        let head_end = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&part[..head_end]);
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .unwrap()
            .to_owned();
        assert!(
            head.contains("Content-Type: text/javascript; charset=utf-8"),
            "{head}"
        );
        parts.push((range, part[head_end + 4..].to_vec()));
    }
    parts
}

#[tokio::test]
async fn byte_ranges() {
    let (dir, gw) = start();
    let url = format!("http://{}/app.js", gw.addr("web"));
    let bytes = file(&dir, "app.js");
    let len = bytes.len();

    let r = curl(&url, &["-r", "10-19"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{len}").as_str())
    );
    assert_eq!(r.header("content-length"), Some("10"));
    let r = curl(&url, &["-r", "-5"]);
    assert_eq!(r.body, &bytes[len - 5..]);
    let r = curl(&url, &["-r", &format!("{}-", len - 3)]);
    assert_eq!(r.body, &bytes[len - 3..]);

    // Several ranges: multipart/byteranges, each part the file's bytes.
    let r = curl(&url, &["-r", "0-4,100-199,-7"]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").unwrap().to_owned();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let parts = multipart(&ct, &r.body);
    let want = [(0, 4), (100, 199), (len - 7, len - 1)];
    assert_eq!(parts.len(), want.len());
    for ((range, data), (a, b)) in parts.iter().zip(want) {
        assert_eq!(range, &format!("bytes {a}-{b}/{len}"));
        assert_eq!(data.as_slice(), &bytes[a..=b]);
    }
    // Each answer has its own boundary.
    let again = curl(&url, &["-r", "0-4,100-199,-7"]);
    assert_ne!(again.header("content-type"), Some(ct.as_str()));

    // Overlapping ranges asking for more bytes than the file holds: the whole file, once.
    let r = curl(&url, &["-r", "0-,0-,0-"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, bytes);

    // Unsatisfiable: 416 with the length.
    let r = curl(&url, &["-r", &format!("{len}-")]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["error"], "range_not_satisfiable");
    // A Range field that does not parse is ignored.
    assert_eq!(curl(&url, &["-H", "range: bytes=9-2"]).status, 200);

    // If-Range: the range when the validator matches, else the whole file.
    let head = curl(&url, &["-I"]);
    let etag = head.header("etag").unwrap().to_owned();
    let modified = head.header("last-modified").unwrap().to_owned();
    let r = curl(&url, &["-r", "0-9", "-H", &format!("if-range: {etag}")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &bytes[..10]));
    let r = curl(&url, &["-r", "0-9", "-H", &format!("if-range: {modified}")]);
    assert_eq!(r.status, 206);
    let r = curl(&url, &["-r", "0-9", "-H", "if-range: \"stale\""]);
    assert_eq!((r.status, r.body.len()), (200, len));
    let r = curl(
        &url,
        &["-r", "0-9", "-H", "if-range: Sun, 06 Nov 1994 08:49:37 GMT"],
    );
    assert_eq!(r.status, 200);
    // Ranges of a HEAD are ignored.
    assert_eq!(curl(&url, &["-I", "-r", "0-9"]).status, 200);
}

#[tokio::test]
async fn precompressed_siblings_by_accept_encoding() {
    let (dir, gw) = start();
    let url = format!("http://{}/app.js", gw.addr("web"));
    let bytes = file(&dir, "app.js");
    let plain = curl(&url, &[]);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    let mut tags = vec![plain.header("etag").unwrap().to_owned()];
    for (accept, encoding, sibling) in [
        ("gzip", "gzip", "app.js.gz"),
        ("zstd, gzip;q=0.5", "zstd", "app.js.zst"),
        ("gzip;q=0.9, zstd;q=0.1", "gzip", "app.js.gz"),
        ("br, zstd, gzip", "br", "app.js.br"),
        ("*", "br", "app.js.br"),
        ("br;q=0, *;q=0.5", "zstd", "app.js.zst"),
    ] {
        let r = curl(&url, &["-H", &format!("accept-encoding: {accept}")]);
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(encoding), "{accept}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert_eq!(
            r.header("content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(r.body, file(&dir, sibling), "{accept}");
        let tag = r.header("etag").unwrap().to_owned();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    // One tag per representation: identity, gzip, zstd, br.
    assert_eq!(tags.len(), 4, "{tags:?}");
    assert_eq!(
        curl(&url, &["-H", "accept-encoding: identity"]).header("content-encoding"),
        None
    );
    // curl decodes what it is sent to the file's exact bytes.
    for accept in ["gzip", "zstd", "br"] {
        let r = curl(
            &url,
            &["--compressed", "-H", &format!("accept-encoding: {accept}")],
        );
        assert_eq!(r.header("content-encoding"), Some(accept));
        assert_eq!(r.body, bytes, "{accept} decoded");
    }
    // A file without siblings goes as it is; a route with `precompressed: []` adds no Vary.
    let r = curl(&url.replace("app.js", "style.css"), &["--compressed"]);
    assert_eq!(r.header("content-encoding"), None);
    let r = curl(
        &url.replace("/app.js", "/files/app.js"),
        &["-H", "accept-encoding: gzip"],
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.body, bytes);
}

#[tokio::test]
async fn listing_and_dotfiles() {
    let (dir, gw) = start();
    let base = format!("http://{}", gw.addr("web"));
    let r = curl(&format!("{base}/files/"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(r.body).unwrap();
    for entry in [
        "<a href=\"./app.js\">app.js</a>",
        "<a href=\"./sub/\">sub/</a>",
        "<a href=\"./we%3Cird%3E%26%22name%22.txt\">we&lt;ird&gt;&amp;&quot;name&quot;.txt</a>",
        "<a href=\"./link-in.js\">link-in.js</a>",
    ] {
        assert!(html.contains(entry), "{entry} in {html}");
    }
    for hidden in [".env", ".git", "link-out", "dir-out", "<ird>"] {
        assert!(!html.contains(hidden), "{hidden} in {html}");
    }
    let r = curl(&format!("{base}/files/sub/deeper/"), &[]);
    assert!(String::from_utf8_lossy(&r.body).contains("note.txt"));
    assert_eq!(curl(&format!("{base}/files/sub"), &[]).status, 301);
    // Listing is off by default: the site route has the fallback instead.
    let r = curl(&format!("{base}/sub/"), &[]);
    assert_eq!(r.body, file(&dir, "index.html"));

    // Dot-files: 404 by default (never the fallback), served where allowed.
    for path in [
        "/.env",
        "/.git/config",
        "/files/.env",
        "/sub/../.env",
        "/%2eenv",
    ] {
        let r = curl(&format!("{base}{path}"), &["-H", "accept: text/html"]);
        assert_eq!(r.status, 404, "{path}");
    }
    let r = curl(&format!("{base}/dots/.env"), &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"HIDDEN=1\n"[..]));
    assert_eq!(curl(&format!("{base}/dots/.git/config"), &[]).status, 200);
}

#[tokio::test]
async fn traversal_is_refused_and_nothing_outside_the_root_is_sent() {
    let (_dir, gw) = start();
    let web = gw.addr("web");
    let base = format!("http://{web}");
    let attempts = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/sub/..%2F..%2Fsecret.txt",
        "/..%5csecret.txt",
        "/sub%5c..%5c..%5csecret.txt",
        "/link-out",
        "/dir-out/secret.txt",
        "/files/link-out",
        "/files/dir-out/secret.txt",
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/secret.txt%00.html",
        "/%00",
        "/app.js%00",
        "/sub%2fpage.txt",
        "/dots/%2e%2e/secret.txt",
        "/dots/link-out",
    ];
    for path in attempts {
        for accept in ["*/*", "text/html"] {
            let r = curl(
                &format!("{base}{path}"),
                &["-H", &format!("accept: {accept}")],
            );
            // `/files/../x` is `/x`, which the site route answers from its own root.
            let app = r.status == 200 && r.body.starts_with(b"<!doctype html><title>home");
            assert!(matches!(r.status, 400 | 404) || app, "{path}: {}", r.status);
            assert!(
                !String::from_utf8_lossy(&r.body).contains(SECRET),
                "{path} sent the secret"
            );
        }
    }
    // Backslashes, which curl would not send as they are.
    for raw in [
        "GET /..\\secret.txt HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /sub\\..\\..\\secret.txt HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /sub\\page.txt HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /files/..\\secret.txt HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let answer =
            crate::support::client::raw(&web, raw.as_bytes(), Duration::from_secs(2)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 404"),
            "{raw}: {answer}"
        );
        assert!(!answer.contains(SECRET), "{raw}: {answer}");
    }
    // A link inside the root is followed.
    let r = curl(&format!("{base}/link-in.js"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
}

#[tokio::test]
async fn a_large_file_streams_in_bounded_memory() {
    let dir = temp_dir("static-big");
    std::fs::create_dir_all(dir.join("site")).unwrap();
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("site/big.bin"), &big).unwrap();
    std::fs::write(dir.join("site/small.txt"), b"warm").unwrap();
    let gw = Portico::start_in(
        &dir,
        "listeners:\n  - { name: web, bind: 127.0.0.1:0, protocol: http }\nroutes:\n  - name: files\n    static: { root: ./site }\n",
    );
    let web = gw.addr("web");
    assert_eq!(get(&web, "/small.txt").await.body, "warm");
    let idle = gw.peak_rss_kib();
    // curl writes the body to a file; the hyper client reads it chunk by chunk.
    let out = dir.join("got.bin");
    let status = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o"])
        .arg(&out)
        .arg(format!("http://{web}/big.bin"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == big, "curl got other bytes");
    let mut client = H1::connect(&web).await;
    let req = Request::get("/big.bin")
        .header("host", "x")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = client.send_raw(req).await.unwrap();
    assert_eq!(
        resp.headers()["content-length"],
        (20u32 << 20).to_string().as_str()
    );
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut same = true;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            same &= big[got..got + data.len()] == data[..];
            got += data.len();
            // A slow reader: portico must not buffer ahead of it.
            if got % (4 << 20) < data.len() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(got, big.len());
    assert!(same, "the hyper client got other bytes");
    let peak = gw.peak_rss_kib();
    eprintln!("static 20 MiB file: idle peak RSS {idle} KiB, after {peak} KiB");
    assert!(
        peak < idle + 8 * 1024,
        "peak RSS {peak} KiB, idle {idle} KiB: more than 8 MiB over idle for a 20 MiB file"
    );
}

#[tokio::test]
async fn a_browser_loads_the_single_page_app_and_its_deep_links() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/test.sh, which installs chromium"
    );
    let dir = temp_dir("static-spa");
    let config = format!(
        "listeners:\n  - {{ name: web, bind: 127.0.0.1:0, protocol: http }}\nroutes:\n  - name: app\n    static: {{ root: {ROOT}/examples/site, fallback: index.html }}\n"
    );
    let gw = Portico::start_in(&dir, &config);
    let base = format!("http://{}", gw.addr("web"));
    let urls = [
        format!("{base}/"),
        format!("{base}/users/42"),
        format!("{base}/users/7"),
    ];
    let script = format!("{ROOT}/tests/e2e/static/spa.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(&urls)
            .current_dir(format!("{ROOT}/tests/e2e/static"))
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .output()
            .expect("node (run scripts/test.sh, which installs nodejs)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "spa.mjs failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    let texts: Vec<(u64, String)> = pages
        .iter()
        .map(|p| {
            (
                p["status"].as_u64().unwrap(),
                p["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(texts[0].1.contains("Home: Ada, Grace"), "{texts:?}");
    assert!(texts[1].1.contains("User 42: Ada"), "{texts:?}");
    assert!(texts[2].1.contains("User 7: Grace"), "{texts:?}");
    assert!(texts.iter().all(|(status, _)| *status == 200), "{texts:?}");
}

#[test]
fn bad_static_config_is_refused_with_its_position() {
    let dir = site();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - { name: web, bind: 127.0.0.1:0, protocol: http }\nroutes:\n  - name: a\n    match: { path_prefix: /a/ }\n    static: { root: ./nowhere }\n  - name: b\n    match: { path_prefix: /b/ }\n    static: { root: ./site, fallback: ../secret.txt, precompressed: [deflate], strip_prefix: b }\n  - name: c\n    rewrite: { strip_prefix: /c }\n    static: { root: ./site }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = crate::support::cli(&["validate", "-c", path.to_str().unwrap()]);
    let text = format!("{stdout}{stderr}");
    assert_ne!(code, 0, "{text}");
    for want in [
        "bad.yaml:6:21: static.root `./nowhere` cannot be used",
        "bad.yaml:9:39: static.fallback must be a relative file name under root",
        "bad.yaml:9:70: static.precompressed: `deflate` is not br, zstd or gzip",
        "bad.yaml:9:94: static.strip_prefix must start with `/`",
        "rewrite applies to routes that forward; a static route takes static.strip_prefix",
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
}

#[tokio::test]
async fn a_release_switched_by_symlink_is_served_after_a_reload() {
    let dir = temp_dir("static-release");
    for (release, text) in [("v1", "first release"), ("v2", "second release")] {
        std::fs::create_dir_all(dir.join(release)).unwrap();
        std::fs::write(dir.join(release).join("index.html"), text).unwrap();
    }
    std::os::unix::fs::symlink("v1", dir.join("current")).unwrap();
    let config = "listeners:\n  - { name: web, bind: 127.0.0.1:0, protocol: http }\nroutes:\n  - name: site\n    static: { root: ./current }\n";
    let gw = Portico::start_in(&dir, config);
    let web = gw.addr("web");
    assert_eq!(get(&web, "/").await.body, "first release");
    // The link is switched atomically (a new link renamed over the old one).
    std::os::unix::fs::symlink("v2", dir.join("next")).unwrap();
    std::fs::rename(dir.join("next"), dir.join("current")).unwrap();
    // The root was resolved when the config was loaded.
    assert_eq!(get(&web, "/").await.body, "first release");
    assert!(gw.reload(config));
    assert_eq!(get(&web, "/").await.body, "second release");
}
