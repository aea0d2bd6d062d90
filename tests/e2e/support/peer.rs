//! A test peer written in Python (grpcio servers): started on a free port it prints on its
//! first line of output, stopped when dropped.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running Python peer and the address it listens on.
pub struct Peer {
    child: Child,
    pub addr: String,
}

impl Peer {
    /// Runs `python3 ARGS...` and waits for the port it prints.
    pub fn python<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new("python3")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with grpcio and grpcio-tools (scripts/test.sh installs them)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the peer prints its port");
        Peer {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
