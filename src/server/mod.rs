//! Stage `accept`: worker threads, listeners, reload and drain.
//!
//! portico runs one single-threaded runtime per worker thread; every listener has one
//! `SO_REUSEPORT` socket per worker, so the kernel spreads connections and a connection, its
//! requests and its upstream connections stay on one thread. The main thread runs the control
//! runtime: signals, reload, DNS, the admin API, and handing the sockets to a new process
//! ([`upgrade`]).

mod cluster;
pub(crate) mod conn;
pub(crate) mod listeners;
mod memtrim;
mod open;
mod proxied;
pub(crate) mod reload;
pub(crate) mod scan;
pub(crate) mod udp;
pub(crate) mod upgrade;

pub(crate) use crate::runtime::Shared;
