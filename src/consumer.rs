//! Who calls: a consumer as the stages after authentication see it. A leaf: the
//! authentication plugins make consumers, the request context carries one, the upstream
//! request and the access log name it.

use http::HeaderValue;

/// A known caller.
#[derive(Debug)]
pub(crate) struct Consumer {
    /// Name.
    pub(crate) name: String,
    /// Groups.
    pub(crate) groups: Vec<String>,
    /// `x-consumer-name` value.
    pub(crate) name_value: HeaderValue,
    /// `x-consumer-groups` value, when there are groups.
    pub(crate) groups_value: Option<HeaderValue>,
}
