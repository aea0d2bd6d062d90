//! End-to-end tests: the real `portico` binary between real clients and real upstreams.

#![allow(unreachable_pub)]

#[allow(dead_code)]
mod support;

mod cli;
mod proxy;
