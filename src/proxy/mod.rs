//! Stages `forward` and `respond`: the request pipeline and everything it sends upstream.

pub(crate) mod access;
pub(crate) mod aggregate;
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod headers;
pub(crate) mod pipeline;
pub(crate) mod static_files;
pub(crate) mod subrequest;
pub(crate) mod tunnel;
