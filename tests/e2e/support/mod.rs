//! Test support: real upstreams, the real binary, real clients. Everything on 127.0.0.1:0.

pub mod attack;
pub mod client;
pub mod oidc;
pub mod peer;
pub mod pki;
pub mod portico;
pub mod udp;
pub mod upstream;

pub use client::{H1, get, h2_get, raw, statuses};
pub use portico::{Portico, cli, temp_dir};
pub use upstream::TestUpstream;

/// Fills `@NAME@` placeholders in a config template.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("@{name}@"), value);
    }
    out
}
