//! Who calls: a consumer as the stages after authentication see it, and the identity
//! headers portico sets for the upstream from a verified client certificate. A leaf: the
//! authentication plugins make consumers, the request context carries one, the upstream
//! request and the access log name it.

use http::{HeaderName, HeaderValue};

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

/// `x-client-cert-subject`: the verified client certificate's subject (mTLS).
pub(crate) static X_CLIENT_CERT_SUBJECT: HeaderName =
    HeaderName::from_static("x-client-cert-subject");
/// `x-client-cert-san`: its subject alternative names.
pub(crate) static X_CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
