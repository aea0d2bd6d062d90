//! Stages `select` and `forward`: pick a target, rewrite the head for the hop, exchange it
//! over a pooled connection, and bring the response head back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::Body;
use super::ctx::RequestCtx;
use super::error::ProxyError;
use super::headers::{X_REQUEST_ID, append_via, set_forwarded, strip_hop_by_hop};
use crate::pool::{Checkin, Conn, TargetState};
use crate::runtime::Upstream;

/// Where the request goes on the upstream side.
#[derive(Debug)]
pub struct Target<'a> {
    /// The host the client asked for (kept for the upstream).
    pub host: Option<HeaderValue>,
    /// The normalised (and rewritten) path.
    pub path: &'a str,
    /// The query, untouched.
    pub query: Option<&'a str>,
    /// The client's target, reused (without copying) when `path` is unchanged.
    pub original: Option<&'a PathAndQuery>,
}

struct Inflight<'a>(&'a TargetState);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Forwards one request to `upstream` and returns the response to send back.
pub async fn forward(
    client_value: &HeaderValue,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    timeout: Option<Duration>,
    mut head: http::request::Parts,
    body: Incoming,
    target: Target<'_>,
) -> Result<Response<Body>, ProxyError> {
    // select
    let index =
        upstream
            .balancer
            .select(&upstream.targets)
            .ok_or_else(|| ProxyError::NoTarget {
                upstream: upstream.name.to_string(),
            })?;
    let state = &upstream.targets[index];
    ctx.target = Some(Arc::clone(state));

    // The head for this hop.
    let client_version = head.version;
    let wants_upgrade =
        client_version == Version::HTTP_11 && head.headers.contains_key(header::UPGRADE);
    let hop = strip_hop_by_hop(&mut head.headers, wants_upgrade);
    // Room for the fields added below, so the map grows once rather than field by field.
    head.headers.reserve(6);
    let upgrade = wants_upgrade && hop.connection_upgrade;
    if upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if wants_upgrade {
        // Upgrade without `Connection: upgrade` is not an upgrade (RFC 9110 §7.8).
        head.headers.remove(header::UPGRADE);
    }
    if hop.te_trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(
        &mut head.headers,
        client_value,
        "http",
        target.host.as_ref(),
    );
    append_via(&mut head.headers, client_version);
    head.headers.insert(&X_REQUEST_ID, ctx.request_id.clone());
    let path_and_query = match (target.original, target.query) {
        (Some(original), _) if original.path() == target.path => Ok(original.clone()),
        (_, Some(q)) => PathAndQuery::try_from(format!("{}?{q}", target.path)),
        (_, None) => PathAndQuery::try_from(target.path),
    }
    .map_err(|_| ProxyError::BadRequest("the request target is invalid"))?;
    if upstream.http2 {
        head.version = Version::HTTP_2;
        let authority = target
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&state.address);
        head.uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ProxyError::BadRequest("the Host header is not a valid authority"))?;
        head.headers.remove(header::HOST);
    } else {
        head.version = Version::HTTP_11;
        head.uri = Uri::from(path_and_query);
        if !head.headers.contains_key(header::HOST) {
            let host = match &target.host {
                Some(h) => h.clone(),
                None => HeaderValue::from_str(&state.address)
                    .map_err(|_| ProxyError::BadRequest("no Host to send upstream"))?,
            };
            head.headers.insert(header::HOST, host);
        }
    }
    let client_upgrade = if upgrade {
        head.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    head.extensions.clear();
    let request = Request::from_parts(head, Body::stream(body));

    // forward
    state.inflight.fetch_add(1, Ordering::Relaxed);
    let _inflight = Inflight(state);
    let exchange = exchange(state, upstream, request);
    let (mut response, checkin) = match timeout {
        Some(limit) => {
            tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| ProxyError::Timeout {
                    upstream: upstream.name.to_string(),
                    timeout: limit,
                })??
        }
        None => exchange.await?,
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 the client did not ask for cannot be relayed.
            return Err(ProxyError::BadRequest(
                "the upstream switched protocols unasked",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(bridge(client_upgrade, upstream_upgrade));
        strip_hop_by_hop(response.headers_mut(), true);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        append_via(response.headers_mut(), Version::HTTP_11);
        // The connection now belongs to the tunnel; never pool it.
        drop(checkin);
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::Empty));
    }

    let upstream_version = response.version();
    strip_hop_by_hop(response.headers_mut(), false);
    append_via(response.headers_mut(), upstream_version);
    let (mut parts, incoming) = response.into_parts();
    parts.version = Version::HTTP_11;
    let body = match checkin {
        Some(checkin) if incoming.is_end_stream() => {
            checkin.release();
            Body::stream(incoming)
        }
        Some(checkin) => Body::Pooled {
            inner: incoming,
            checkin: Some(checkin),
        },
        None => Body::stream(incoming),
    };
    Ok(Response::from_parts(parts, body))
}

/// Sends the request on a pooled connection; a pooled connection that turns out closed before
/// the request was written is replaced by a fresh one, once.
async fn exchange(
    state: &Arc<TargetState>,
    upstream: &Upstream,
    request: Request<Body>,
) -> Result<(Response<Incoming>, Option<Checkin>), ProxyError> {
    let name = &*upstream.name;
    let mut request = request;
    for attempt in 0..2 {
        match state.connect(name, upstream.http2, upstream.pool).await? {
            Conn::H1(mut checkin) => {
                let Some(sender) = checkin.sender() else {
                    return Err(ProxyError::NoTarget {
                        upstream: name.to_owned(),
                    });
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, Some(checkin))),
                    Err(mut err) => match err.take_message() {
                        Some(unsent) if attempt == 0 => request = unsent,
                        _ => return Err(upstream_error(name, err.into_error())),
                    },
                }
            }
            Conn::H2(mut sender) => {
                return sender
                    .send_request(request)
                    .await
                    .map(|response| (response, None))
                    .map_err(|err| upstream_error(name, err));
            }
        }
    }
    Err(ProxyError::NoTarget {
        upstream: name.to_owned(),
    })
}

fn upstream_error(upstream: &str, source: hyper::Error) -> ProxyError {
    // A failing request body is the client's doing, not the upstream's.
    if source.is_user() {
        return ProxyError::ClientBody;
    }
    ProxyError::Upstream {
        upstream: upstream.to_owned(),
        source,
    }
}

/// Copies bytes both ways between an upgraded client and upstream until either side closes.
async fn bridge(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    match (client, upstream) {
        (Ok(client), Ok(upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %err, "upgraded connection ended");
            }
        }
        (Err(err), _) | (_, Err(err)) => tracing::debug!(error = %err, "upgrade failed"),
    }
}
