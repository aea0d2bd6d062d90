//! A real `etcd` (3.4+) on loopback, for the cluster tests: started on free ports, stopped
//! and started again on the same data, and spoken to through its v3 JSON gateway.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{free_port, temp_dir};

pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl Etcd {
    /// Starts one and waits until it answers `/health`.
    pub fn start() -> Self {
        let mut etcd = Etcd {
            child: None,
            port: free_port(),
            peer_port: free_port(),
            dir: temp_dir("etcd"),
        };
        etcd.restart();
        etcd
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same data and ports) and waits until it answers.
    pub fn restart(&mut self) {
        let url = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn healthy(&self) -> bool {
        self.call("/health", "")
            .is_some_and(|v| v["health"] == "true")
    }

    /// Stops it (SIGKILL); its data stays for [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Posts `body` to the JSON gateway at `path` (a GET without a body); the answer, if
    /// any.
    pub fn call(&self, path: &str, body: &str) -> Option<serde_json::Value> {
        let mut curl = Command::new("curl");
        curl.args(["-s", "--max-time", "5"]);
        if !body.is_empty() {
            curl.args(["-X", "POST", "-d", body]);
        }
        let out = curl
            .arg(format!("{}{path}", self.url()))
            .stdin(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Writes `value` at `key`; the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let body = serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) });
        let answer = self
            .call("/v3/kv/put", &body.to_string())
            .expect("etcd answers");
        number(&answer["header"]["revision"])
    }

    /// The value at `key` and its revision.
    pub fn get(&self, key: &str) -> Option<(String, i64)> {
        let body = serde_json::json!({ "key": B64.encode(key) });
        let answer = self.call("/v3/kv/range", &body.to_string())?;
        let kv = answer["kvs"].get(0)?;
        let value = B64.decode(kv["value"].as_str()?).ok()?;
        Some((String::from_utf8(value).ok()?, number(&kv["mod_revision"])))
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        let body = serde_json::json!({ "revision": revision.to_string(), "physical": true });
        self.call("/v3/kv/compaction", &body.to_string())
            .expect("etcd answers");
    }
}

fn number(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
