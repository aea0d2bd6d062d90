//! Plugins' calls to upstreams (`forward_auth`), run through the same `select` and `forward`
//! stages as any forward, so balancing, health, retries, pools and upstream TLS apply.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Response, request};
use http_body_util::BodyExt;

use super::forward::{self, Hop};
use super::headers::{HopInfo, X_FORWARDED_HOST, client_value};
use super::pipeline::ConnInfo;
use crate::body::Body;
use crate::ctx::RequestCtx;
use crate::error::ProxyError;
use crate::plugins::{SubError, SubResult, SubTarget, Subrequests};
use crate::runtime::aggregate::PluginCall;

/// The calls of one connection's requests.
pub(crate) struct Calls<'a> {
    /// The connection the requests came on.
    pub(crate) conn: &'a ConnInfo,
    /// The request's route, once routed.
    pub(crate) route: Option<&'a Arc<crate::runtime::Route>>,
}

impl Subrequests for Calls<'_> {
    fn call(
        &self,
        ctx: &RequestCtx,
        target: &SubTarget,
        head: request::Parts,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = SubResult> + Send>> {
        let Ok(call) = Arc::clone(&target.inner).downcast::<PluginCall>() else {
            return Box::pin(std::future::ready(Err(SubError::Failed(
                "not an upstream of this config",
            ))));
        };
        let mut sub = RequestCtx::new(
            ctx.request_id.clone(),
            ctx.client,
            Arc::clone(&ctx.listener),
        );
        // The trusted client address alone: the auth service is told who the client is, not
        // the way it came.
        let client = client_value(ctx.client.ip());
        let scheme = self.conn.scheme;
        let local = self.conn.local;
        Box::pin(async move {
            let host = head.headers.get(&X_FORWARDED_HOST).cloned();
            let tried = async {
                let first = forward::select(&call.upstream, &sub, &head)?;
                let hop = Hop {
                    client_value: &client,
                    scheme,
                    local,
                    host,
                    info: HopInfo::default(),
                };
                let tries = forward::forward(
                    hop,
                    &sub,
                    &call.route,
                    &call.upstream,
                    first,
                    head,
                    Body::Empty,
                )?;
                tries.run(&mut sub).await
            };
            let response = Box::pin(tried).await.map_err(|err| failure(&err))?;
            let (parts, body) = response.into_parts();
            let body = match collect(body, max_body).await {
                Ok(body) => body,
                // An allow's body is not used.
                Err(SubError::TooLarge) if parts.status.is_success() => Bytes::new(),
                Err(err) => return Err(err),
            };
            Ok(Response::from_parts(parts, body))
        })
    }

    fn call_route(
        &self,
        ctx: &RequestCtx,
        head: request::Parts,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = SubResult> + Send>> {
        self.route_call(ctx, head, max_body)
    }
}

impl Calls<'_> {
    /// [`Subrequests::call_route`]: the route's upstream (its arm in turn, when split).
    fn route_call(
        &self,
        ctx: &RequestCtx,
        head: request::Parts,
        max_body: usize,
    ) -> Pin<Box<dyn Future<Output = SubResult> + Send>> {
        let Some(route) = self.route else {
            return Box::pin(std::future::ready(Err(SubError::Failed("no route"))));
        };
        let crate::runtime::Action::Forward { arms, .. } = &route.action else {
            return Box::pin(std::future::ready(Err(SubError::Failed(
                "the route does not forward",
            ))));
        };
        let upstream = Arc::clone(&arms[route.action.pick_arm()]);
        let route = Arc::clone(route);
        let mut sub = RequestCtx::new(
            ctx.request_id.clone(),
            ctx.client,
            Arc::clone(&ctx.listener),
        );
        let client = client_value(ctx.client.ip());
        let scheme = self.conn.scheme;
        let local = self.conn.local;
        Box::pin(async move {
            let host = head.headers.get(http::header::HOST).cloned();
            let tried = async {
                let first = forward::select(&upstream, &sub, &head)?;
                let hop = Hop {
                    client_value: &client,
                    scheme,
                    local,
                    host,
                    info: HopInfo::default(),
                };
                let tries =
                    forward::forward(hop, &sub, &route, &upstream, first, head, Body::Empty)?;
                tries.run(&mut sub).await
            };
            let response = Box::pin(tried)
                .await
                .map_err(|_| SubError::Failed("the upstream failed to answer"))?;
            let (parts, body) = response.into_parts();
            let body = collect(body, max_body).await?;
            Ok(Response::from_parts(parts, body))
        })
    }
}

/// A forwarding error in words that name no target.
fn failure(err: &ProxyError) -> SubError {
    SubError::Failed(match err.code() {
        "upstream_timeout" => "the auth service did not answer in time",
        "upstream_connect_failed" => "the auth service could not be reached",
        "no_healthy_target" => "the auth service has no healthy target",
        "circuit_open" => "the auth service's circuit breaker is open",
        _ => "the auth service failed to answer",
    })
}

/// The body, up to `max` bytes.
async fn collect(mut body: Body, max: usize) -> Result<Bytes, SubError> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| SubError::Failed("the auth service's answer broke off"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(SubError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
