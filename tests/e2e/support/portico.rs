//! Starts the real `portico` binary on a config and reads its bound addresses from its log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portico");

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portico-e2e-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running portico process.
pub struct Portico {
    child: Child,
    pub config: PathBuf,
    log: Arc<(Mutex<Log>, Condvar)>,
    pub listeners: HashMap<String, String>,
    pub admin: Option<String>,
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Portico {
    /// Writes `config` and starts portico on it; waits for `ready`.
    pub fn start(config: &str) -> Self {
        Self::try_start(config).unwrap_or_else(|log| panic!("portico did not become ready:\n{log}"))
    }

    /// Like `start`, but returns the log if portico exits instead of becoming ready.
    pub fn try_start(config: &str) -> Result<Self, String> {
        Self::try_start_in(&temp_dir("gw"), config)
    }

    /// Like `start`, with the config file written in `dir` (for relative paths in it).
    pub fn start_in(dir: &std::path::Path, config: &str) -> Self {
        Self::try_start_in(dir, config)
            .unwrap_or_else(|log| panic!("portico did not become ready:\n{log}"))
    }

    /// Like `start_in`, with environment variables set for the process (`${NAME}` in the file).
    pub fn start_in_env(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Self {
        Self::try_start_in_env(dir, config, env)
            .unwrap_or_else(|log| panic!("portico did not become ready:\n{log}"))
    }

    /// Like `try_start`, with the config file written in `dir`.
    pub fn try_start_in(dir: &std::path::Path, config: &str) -> Result<Self, String> {
        Self::try_start_in_env(dir, config, &[])
    }

    fn try_start_in_env(
        dir: &std::path::Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        Self::try_start_with(dir, "portico.yaml", config, env, &[])
    }

    /// Like `try_start_in`, with the config written as `file` in `dir` and extra `run`
    /// arguments (a second process next to a first, as in an upgrade).
    pub fn try_start_args(
        dir: &std::path::Path,
        file: &str,
        config: &str,
        args: &[&str],
    ) -> Result<Self, String> {
        Self::try_start_with(dir, file, config, &[], args)
    }

    fn try_start_with(
        dir: &std::path::Path,
        file: &str,
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Self, String> {
        let path = dir.join(file);
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portico");
        let log: Arc<(Mutex<Log>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*log2;
                lock.lock().unwrap().lines.push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*log2;
            lock.lock().unwrap().closed = true;
            cvar.notify_all();
        });
        // The access log goes to stdout; keep it drained.
        let stdout = child.stdout.take().unwrap();
        let access = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*access;
                lock.lock().unwrap().lines.push(format!("ACCESS {line}"));
                cvar.notify_all();
            }
        });
        let mut gw = Portico {
            child,
            config: path,
            log,
            listeners: HashMap::new(),
            admin: None,
        };
        if !gw.wait_log(" ready workers=", Duration::from_secs(20)) {
            return Err(gw.log_text());
        }
        for line in gw.lines() {
            if let Some(rest) = line.split("listening listener=").nth(1) {
                let mut parts = rest.split(" addr=");
                let name = parts.next().unwrap().to_owned();
                let addr = parts.next().unwrap().trim().to_owned();
                gw.listeners.insert(name, addr);
            } else if let Some(rest) = line.split("admin listening addr=").nth(1) {
                gw.admin = Some(rest.trim().to_owned());
            }
        }
        Ok(gw)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bound address of listener `name`.
    pub fn addr(&self, name: &str) -> String {
        self.listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}: {:?}", self.listeners))
            .clone()
    }

    /// The address listener `name` was last bound to, read from the log (so a listener a
    /// reload added counts), if it was.
    pub fn bound(&self, name: &str) -> Option<String> {
        let needle = format!("listening listener={name} addr=");
        self.lines()
            .iter()
            .rev()
            .find_map(|l| l.split(&needle).nth(1).map(|a| a.trim().to_owned()))
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// The access-log entry of the (first) request to `path`, once it is logged.
    pub fn access_entry(&self, path: &str) -> serde_json::Value {
        let needle = format!("\"path\":\"{path}\"");
        assert!(
            self.wait_log(&needle, Duration::from_secs(5)),
            "{}",
            self.log_text()
        );
        let line = self
            .lines()
            .into_iter()
            .find(|l| l.starts_with("ACCESS ") && l.contains(&needle))
            .unwrap();
        serde_json::from_str(line.trim_start_matches("ACCESS ")).unwrap()
    }

    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a log line contains `needle` (counting lines already seen).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until `count` log lines contain `needle`.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            if log.lines.iter().filter(|l| l.contains(needle)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || log.closed {
                return false;
            }
            log = cvar.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Rewrites the config file and sends SIGHUP; waits for the outcome line.
    pub fn reload(&self, config: &str) -> bool {
        let before_ok = self.count_lines("config reloaded");
        let before_err = self.count_lines("reload refused");
        std::fs::write(&self.config, config).unwrap();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.count_lines("config reloaded") > before_ok {
                return true;
            }
            if self.count_lines("reload refused") > before_err {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no reload outcome in the log:\n{}", self.log_text());
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the exit (bounded).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit on its own (bounded).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

/// Runs `portico ARGS` to completion: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
