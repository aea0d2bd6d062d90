//! End-to-end tests: the real `portico` binary between real clients and real upstreams.

#![allow(unreachable_pub, clippy::unwrap_used)]

#[allow(dead_code)]
mod support;

mod access_log;
mod acme;
mod acme_cluster;
mod admin_api;
mod admission;
mod aggregate;
mod cache;
mod cache_disk;
mod cli;
mod cluster;
mod compression;
mod dashboard;
mod defects;
mod discovery;
mod early;
mod edge;
mod etcd;
mod exit;
mod forward_auth;
mod gateway;
mod grafana;
mod grpc;
mod guides;
mod h2flood;
mod hardening;
mod introspection;
mod jwt;
mod l4;
mod levels;
mod memtrim;
mod oidc;
mod oidc_attacks;
mod oidc_op;
mod oidc_provider;
mod parking;
mod paths;
mod pooltrim;
mod proxy;
mod proxy_protocol;
mod reload;
mod resilience;
mod static_files;
mod streaming;
mod tls;
mod tracing;
mod transcode;
mod trusted;
mod udp;
mod upgrade;
mod upstream_h1;
mod websocket;
