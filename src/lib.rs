//! portico: a load balancer, reverse proxy and API gateway in one binary.
//!
//! A request crosses these stages, each owned by one module:
//!
//! ```text
//! accept → decode → route → on_request plugins → select → forward → on_response plugins → respond → log
//! server     server   routing  plugins             balance  proxy      plugins              proxy     observe
//! ```
//!
//! The config is read by [`config`], compiled into an immutable [`runtime::Snapshot`] and
//! swapped atomically on reload; a request keeps the snapshot it started with.

pub mod admin;
pub mod balance;
#[doc(hidden)]
pub mod bench;
pub mod body;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod ctx;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod health;
pub mod l4;
pub mod observe;
pub mod plugins;
pub mod pool;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod view;
