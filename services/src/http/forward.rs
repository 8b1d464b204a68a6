//! Session affinity: a request of a session whose owner is another node is forwarded
//! there (one hop at most: a forwarded request carries `X-Edgecache-Forwarded` and is
//! never forwarded again) and its answer relayed. When the owner cannot be reached the
//! request is served here, from the session's token — except a write whose request
//! may have reached the owner and carries no `Idempotency-Key`: its outcome is
//! unknown, so it answers 503 `write-outcome-unknown` rather than risk applying it
//! twice. A keyed write is safe to serve here: if the owner applied it, the key's
//! record answers (after waiting for it if it is still running).

use std::sync::atomic::Ordering;

use actix_web::body::BoxBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, Error, HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::request::{SESSION_ID, USER_ID};
use super::ApiError;
use crate::cluster::{Cluster, Peer};
use crate::Node;

pub const FORWARDED: header::HeaderName = header::HeaderName::from_static("x-edgecache-forwarded");

/// Hop-by-hop headers, not relayed.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The peer that owns the request's session when the request is to be forwarded there:
/// a `/v1/` request of a session whose session-affinity arm is on, not forwarded
/// already, whose owner is another node in rotation. Solo nodes answer at once.
pub fn owner<'c>(request: &ServiceRequest, node: &Node, cluster: &'c Cluster) -> Option<&'c Peer> {
    if cluster.is_solo() || !request.path().starts_with("/v1/") || request.headers().contains_key(&FORWARDED)
    {
        return None;
    }
    let headers = request.headers();
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let session = header(SESSION_ID).filter(|s| crate::node::valid_session_id(s))?;
    let user = header(USER_ID).unwrap_or(session);
    if node.affinity_on(session, user) {
        cluster.owner(session)
    } else {
        None
    }
}

/// Forwards `request` to `owner` and relays its answer; when the owner cannot be
/// reached, serves it with `local` (except a write that may have reached the owner).
pub async fn forward<S>(
    mut request: ServiceRequest,
    owner: &Peer,
    node: &Node,
    cluster: &Cluster,
    local: &S,
) -> Result<ServiceResponse<BoxBody>, Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<BoxBody>, Error = Error>,
{
    // Read the body (bounded), to send it on — and to serve it here if we must.
    let limit = node.limits().max_body_bytes;
    let mut body = web::BytesMut::new();
    let mut payload = request.take_payload();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > limit {
            let response = ApiError::BodyTooLarge { limit }.error_response();
            return Ok(request.into_response(response));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();

    let method =
        reqwest::Method::from_bytes(request.method().as_str().as_bytes()).expect("a method is a method");
    let url = format!(
        "{}{}",
        owner.base,
        request
            .uri()
            .path_and_query()
            .map_or(request.path(), |p| p.as_str())
    );
    let mut forward = cluster
        .client()
        .request(method, url)
        .timeout(cluster.forward_timeout());
    for (name, value) in request.headers() {
        if !hop_by_hop(name.as_str()) {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    forward = forward
        .header(FORWARDED.as_str(), cluster.node_id())
        .body(body.clone());
    let epoch = owner.epoch();
    let sent = async {
        let response = forward.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, bytes))
    }
    .await;
    match sent {
        Ok((status, headers, bytes)) => {
            cluster.succeeded(owner, epoch);
            cluster.forwarded.fetch_add(1, Ordering::Relaxed);
            let mut relay =
                HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
            for (name, value) in &headers {
                if !hop_by_hop(name.as_str()) {
                    relay.append_header((name.as_str(), value.as_bytes()));
                }
            }
            Ok(request.into_response(relay.body(bytes)))
        }
        Err(e) => {
            cluster.failed(owner);
            cluster.forward_failures.fetch_add(1, Ordering::Relaxed);
            let reached = !e.is_connect();
            let read = matches!(*request.method(), Method::GET | Method::HEAD)
                || request.path().ends_with("/batch-get");
            let keyed = request
                .headers()
                .contains_key(super::idempotency::IDEMPOTENCY_KEY);
            tracing::warn!(peer = %owner.id, cause = %e, reached, "forward failed");
            if reached && !read && !keyed {
                return Ok(request.into_response(ApiError::OutcomeUnknown.error_response()));
            }
            request.set_payload(actix_web::dev::Payload::from(body));
            let response = local.call(request).await?;
            if reached && !read && !response.status().is_success() {
                // The owner's attempt may still commit: "not applied" here says
                // nothing about it. Only a success (or a replay of the owner's
                // record) settles the write.
                let (request, _) = response.into_parts();
                return Ok(ServiceResponse::new(
                    request,
                    ApiError::OutcomeUnknown.error_response(),
                ));
            }
            Ok(response)
        }
    }
}
