//! Test support: real upstreams, the real binary, real clients. Everything on 127.0.0.1:0.

pub mod attack;
pub mod client;
pub mod etcd;
pub mod oidc;
pub mod peer;
pub mod pki;
pub mod portico;
pub mod udp;
pub mod upstream;

pub use client::{H1, get, h2_get, raw, statuses};
pub use portico::{Portico, cli, temp_dir};
pub use upstream::TestUpstream;

/// A port that was free a moment ago (bound on port 0, then released), for peers that
/// cannot be told to bind port 0.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Fills `@NAME@` placeholders in a config template.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    out
}
