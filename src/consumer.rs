//! Who calls: a consumer as the stages after authentication see it. A leaf: the
//! authentication plugins make consumers, the request context carries one, the upstream
//! request and the access log name it.

use http::HeaderValue;

/// A known caller.
#[derive(Debug)]
pub struct Consumer {
    /// Name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// `x-consumer-name` value.
    pub name_value: HeaderValue,
    /// `x-consumer-groups` value, when there are groups.
    pub groups_value: Option<HeaderValue>,
}
