//! portico: a load balancer, reverse proxy and API gateway in one binary.
//!
//! A request crosses these stages, each owned by one module:
//!
//! ```text
//! accept → decode → route → request plugins → select → forward → response plugins → respond → log
//! server   proxy    routing  plugins           balance  proxy     plugins            proxy     proxy
//! ```
//!
//! `proxy::pipeline::handle` is that list, one call per stage; every answer (the upstream's, a
//! plugin's, portico's own errors) leaves through its one exit. Plugins have head, body and log
//! steps (`plugins::Plugin`).
//!
//! The config is read by `config`, compiled by `runtime::compile` into an immutable
//! `runtime::Snapshot`, and swapped atomically on reload; a request keeps the snapshot it
//! started with.
//!
//! Modules depend one way, from the leaves up, and a test (`layers`) fails on an import
//! against that order; everything is `pub(crate)`, and only `cli` (for the binary), `bench`
//! and `fuzz` are public:
//!
//! ```text
//! leaves     body ctx error consumer view proxy_protocol random trace worker background config health
//! state      observe  admission  tls  pool                                      (pool: its own ConnectError, active checks)
//! choice     routing  balance  plugins
//! compiled   runtime (compile, Snapshot, Shared, explain)
//! request    proxy (pipeline, forward, headers)  l4
//! process    admin  server  cli
//! ```

pub(crate) mod admin;
pub(crate) mod admission;
pub(crate) mod aggregate;
pub(crate) mod background;
pub(crate) mod balance;
#[doc(hidden)]
pub mod bench;
pub(crate) mod body;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod consumer;
pub(crate) mod ctx;
pub(crate) mod error;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod h2frame;
pub(crate) mod health;
pub(crate) mod l4;
#[cfg(test)]
mod layers;
pub(crate) mod observe;
pub(crate) mod plugins;
pub(crate) mod pool;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod random;
pub(crate) mod route_tests;
pub(crate) mod routing;
pub(crate) mod runtime;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod trace;
pub(crate) mod view;
pub(crate) mod worker;
