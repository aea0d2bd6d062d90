//! A real OpenID Provider (the certified `oidc-provider` package under node,
//! `tests/e2e/oidc/provider.mjs`) and the real clients that log in through it: `login.mjs` (an
//! HTTP client following redirects by hand with a cookie jar) and `browser.mjs` (headless
//! Chromium). `scripts/test.sh` installs node, Chromium and the packages.
//! See `tests/e2e/oidc/README.md` for the provider's configuration and behaviour.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::temp_dir;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/oidc");

/// How long the provider may take to print its issuer line.
const READY: Duration = Duration::from_secs(20);

fn script(name: &str) -> String {
    let modules = Path::new(DIR).join("node_modules");
    for package in ["oidc-provider", "playwright-core"] {
        assert!(
            modules.join(package).is_dir(),
            "{package} is not installed in tests/e2e/oidc/node_modules: run scripts/test.sh \
             (it runs `npm ci` there)"
        );
    }
    format!("{DIR}/{name}")
}

fn node() -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(DIR)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    cmd
}

fn spawn_failed(e: std::io::Error) -> ! {
    panic!("cannot run node ({e}): run scripts/test.sh, which installs nodejs and npm")
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running provider, killed when dropped (and gone by itself when the test process dies, as
/// it exits when its stdin closes).
pub struct Provider {
    child: Child,
    stdin: Option<ChildStdin>,
    issuer: String,
    log: Arc<(Mutex<Log>, Condvar)>,
    sync: AtomicU64,
    _dir: PathBuf,
}

impl Provider {
    /// Starts the provider with this configuration (the JSON shape in README.md) and waits for
    /// its `issuer` line.
    pub fn start(config: Value) -> Self {
        let dir = temp_dir("oidc-provider");
        let path = dir.join("provider.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut child = node()
            .arg(script("provider.mjs"))
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| spawn_failed(e));
        let stdin = child.stdin.take();
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.0.lock().unwrap().lines.push(line);
                log2.1.notify_all();
            }
            log2.0.lock().unwrap().closed = true;
            log2.1.notify_all();
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let mut provider = Provider {
            child,
            stdin,
            issuer: String::new(),
            log,
            sync: AtomicU64::new(0),
            _dir: dir,
        };
        match rx.recv_timeout(READY) {
            Ok(line) => match line.strip_prefix("issuer ") {
                Some(issuer) => provider.issuer = issuer.trim().to_owned(),
                None => panic!("provider.mjs printed {line:?}; log:\n{}", provider.log()),
            },
            Err(_) => panic!(
                "provider.mjs printed no issuer line within {READY:?}; log:\n{}",
                provider.log()
            ),
        }
        provider
    }

    /// `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.issuer.trim_start_matches("http://")
    }

    pub fn port(&self) -> u16 {
        self.addr().rsplit(':').next().unwrap().parse().unwrap()
    }

    /// `ISSUER/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// Everything it wrote on stderr so far (request lines, warnings, errors).
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().lines.join("\n")
    }

    /// The requests it answered so far, one `METHOD PATH STATUS` each, in order. Waits (bounded)
    /// until the provider has confirmed that every line it wrote before this call was read.
    pub fn requests(&self) -> Vec<String> {
        self.settle();
        let log = self.log.0.lock().unwrap();
        log.lines
            .iter()
            .filter_map(|l| l.strip_prefix("request "))
            .map(str::to_owned)
            .collect()
    }

    /// How many requests had a path starting with `path_prefix` (e.g. `/token`).
    pub fn count(&self, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| {
                l.split(' ')
                    .nth(1)
                    .is_some_and(|path| path.starts_with(path_prefix))
            })
            .count()
    }

    /// Sends `sync N` and waits for the provider to echo it on stderr.
    fn settle(&self) {
        let n = self.sync.fetch_add(1, Ordering::Relaxed);
        let Some(mut stdin) = self.stdin.as_ref() else {
            return;
        };
        if stdin.write_all(format!("sync {n}\n").as_bytes()).is_err() || stdin.flush().is_err() {
            return; // stopped: everything it wrote has been or will be read by now
        }
        let want = format!("sync {n}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        while !log.closed && !log.lines.iter().rev().any(|l| *l == want) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "provider.mjs did not answer `{want}`");
            log = cond.wait_timeout(log, left).unwrap().0;
        }
    }

    /// Kills it (a provider that is down: connections are refused from now on).
    pub fn stop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Options of one `login.mjs` run.
#[derive(Debug, Clone)]
pub struct LoginOpts {
    /// The login name typed into the provider's form (`alice` by default).
    pub user: String,
    /// A cookie jar file read before and written after the run (session reuse, logout).
    pub jar: Option<PathBuf>,
    /// Stop, without requesting it, at the first redirect to a URL starting with this.
    pub stop_at: Option<String>,
    /// Follow the consent page's Cancel link instead of accepting.
    pub deny: bool,
    /// Extra request headers, `Name: value`, on every request.
    pub headers: Vec<String>,
    /// The `Accept` header (`text/html` by default).
    pub accept: String,
}

impl Default for LoginOpts {
    fn default() -> Self {
        LoginOpts {
            user: "alice".into(),
            jar: None,
            stop_at: None,
            deny: false,
            headers: Vec::new(),
            accept: "text/html".into(),
        }
    }
}

impl LoginOpts {
    pub fn user(user: &str) -> Self {
        LoginOpts {
            user: user.into(),
            ..Self::default()
        }
    }

    pub fn jar(mut self, jar: impl Into<PathBuf>) -> Self {
        self.jar = Some(jar.into());
        self
    }

    pub fn stop_at(mut self, prefix: impl Into<String>) -> Self {
        self.stop_at = Some(prefix.into());
        self
    }
}

/// One cookie in the client's jar after the run.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub http_only: bool,
    #[serde(default)]
    pub same_site: Option<String>,
    /// Milliseconds since the epoch; `None` for a session cookie.
    #[serde(default)]
    pub expires: Option<f64>,
}

/// One request of the walk.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Hop {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
}

/// What a login run ended on.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LoginResult {
    pub status: u16,
    /// The last URL requested, or with `stop_at` the URL it stopped at.
    pub url: String,
    pub body: String,
    #[serde(default)]
    pub cookies: Vec<Cookie>,
    /// Every request in order (empty for `browser`).
    #[serde(default)]
    pub hops: Vec<Hop>,
    /// With `stop_at` on a form submission (`response_mode=form_post`): its fields.
    #[serde(default)]
    pub form: Option<serde_json::Map<String, Value>>,
}

impl LoginResult {
    /// A query parameter of `url`, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.url.split_once('?')?.1;
        let query = query.split('#').next().unwrap_or(query);
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn cookie(&self, name: &str) -> Option<&Cookie> {
        self.cookies.iter().find(|c| c.name == name)
    }
}

fn run(mut cmd: Command, what: &str) -> LoginResult {
    let out = cmd.output().unwrap_or_else(|e| spawn_failed(e));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what} printed no result ({e}):\n{stdout}\n{stderr}"))
}

/// Logs in through `start_url` with `login.mjs` (see its header for what it does). Blocking
/// work runs off the async runtime, so a server in the same test keeps answering.
pub async fn login(start_url: &str, opts: &LoginOpts) -> LoginResult {
    let mut cmd = node();
    cmd.arg(script("login.mjs")).arg(start_url).args([
        "--user",
        &opts.user,
        "--accept",
        &opts.accept,
    ]);
    if let Some(jar) = &opts.jar {
        cmd.arg("--cookie-jar").arg(jar);
    }
    if let Some(prefix) = &opts.stop_at {
        cmd.args(["--stop-at", prefix]);
    }
    if opts.deny {
        cmd.arg("--deny");
    }
    for h in &opts.headers {
        cmd.args(["--header", h]);
    }
    tokio::task::spawn_blocking(move || run(cmd, "login.mjs"))
        .await
        .unwrap()
}

/// Logs in through `start_url` in headless Chromium with `browser.mjs` (user `alice`), then
/// visits `then` in the same browser context when given. `hops` is empty.
pub async fn browser(start_url: &str, then: Option<&str>) -> LoginResult {
    browser_as(start_url, then, "alice").await
}

/// `browser` with another login name.
pub async fn browser_as(start_url: &str, then: Option<&str>, user: &str) -> LoginResult {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/test.sh, which installs chromium"
    );
    let mut cmd = node();
    cmd.arg(script("browser.mjs"))
        .arg(start_url)
        .args(["--user", user]);
    if let Some(then) = then {
        cmd.arg(then);
    }
    tokio::task::spawn_blocking(move || run(cmd, "browser.mjs"))
        .await
        .unwrap()
}
