//! Stages `forward` and `respond`: the request pipeline and everything it sends upstream.

pub mod forward;
pub mod headers;
pub mod pipeline;
