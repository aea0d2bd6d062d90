//! Aggregation's building blocks that need nothing of the proxy: reading backend answers as
//! JSON ([`convert`]), the field operations on them ([`shape`]), call templates
//! ([`template`]) and the order calls run in ([`plan`]). A leaf, so plugins may reuse it.

pub(crate) mod convert;
pub(crate) mod plan;
pub(crate) mod shape;
pub(crate) mod template;
