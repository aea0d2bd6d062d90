//! `mtls_auth`: a verified client certificate (listener `client_auth`) names the consumer.

use std::sync::Arc;

use http::{HeaderValue, StatusCode, header, request};

use super::auth::Consumers;
use super::{Flow, Phase, Plugin};
use crate::config::spec::MtlsAuthSpec;
use crate::ctx::RequestCtx;
use crate::error::{ProxyError, error_response};

/// `mtls_auth`.
#[derive(Debug)]
pub(crate) struct MtlsAuth {
    consumers: Arc<Consumers>,
    allow_unknown: bool,
}

impl MtlsAuth {
    /// From its spec.
    pub(crate) fn new(spec: &MtlsAuthSpec, consumers: &Arc<Consumers>) -> Self {
        MtlsAuth {
            consumers: Arc::clone(consumers),
            allow_unknown: spec.allow_unknown,
        }
    }
}

impl Plugin for MtlsAuth {
    fn name(&self) -> &'static str {
        "mtls_auth"
    }

    fn explain(
        &self,
        _ctx: &mut RequestCtx,
        head: &request::Parts,
        _secrets: &crate::config::secret::Credentials,
    ) -> super::Explained {
        // No handshake here: a subject given as the header stands for the verified one.
        let note = match head.headers.get(&crate::consumer::X_CLIENT_CERT_SUBJECT) {
            Some(subject) => format!(
                "certificate subject {} (given as x-client-cert-subject: explain has no TLS \
                 handshake)",
                String::from_utf8_lossy(subject.as_bytes())
            ),
            None => "no client certificate (give its subject as -H 'x-client-cert-subject: \
                     CN=...' to explain a verified one)"
                .to_owned(),
        };
        super::Explained::Run(vec![note])
    }

    fn stops(&self) -> Option<&'static str> {
        Some("401 without a known client certificate")
    }

    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
    ) -> Result<Flow, ProxyError> {
        // The pipeline has already replaced any client-sent subject with the verified one.
        let subject = head
            .headers
            .get(&crate::consumer::X_CLIENT_CERT_SUBJECT)
            .and_then(|v| v.to_str().ok());
        match subject.and_then(|s| self.consumers.by_cert_subject(s)) {
            Some(consumer) => {
                ctx.consumer = Some(consumer);
                Ok(Flow::Continue)
            }
            None if self.allow_unknown && subject.is_some() => Ok(Flow::Continue),
            None => {
                let mut response = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a client certificate of a known consumer is required",
                    &ctx.request_id,
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Mutual"));
                Ok(Flow::Respond(response))
            }
        }
    }
}
