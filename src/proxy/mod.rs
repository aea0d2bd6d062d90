//! Stages `forward` and `respond`: the request pipeline and everything it sends upstream.

pub mod body;
pub mod ctx;
pub mod error;
pub mod forward;
pub mod headers;
pub mod pipeline;
