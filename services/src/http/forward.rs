//! Session affinity: a request of a session whose owner is another node is forwarded
//! there (one hop at most: a forwarded request carries `X-Edgecache-Forwarded` and is
//! never forwarded again) and its answer relayed. When the owner cannot be reached the
//! request is served here, from the session's token — except a write whose request
//! may have reached the owner: its outcome is unknown, so it answers 503 rather than
//! risk applying it twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::request::{SESSION_ID, USER_ID};
use super::ApiError;
use crate::cluster::Cluster;
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

/// The middleware (mounted with `middleware::from_fn`).
pub async fn affinity(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let (Some(node), Some(cluster)) = (
        request.app_data::<web::Data<Node>>().cloned(),
        request.app_data::<web::Data<Arc<Cluster>>>().cloned(),
    ) else {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    };
    let local = cluster.is_solo()
        || !request.path().starts_with("/v1/")
        || request.headers().contains_key(&FORWARDED);
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let owner = match header(&SESSION_ID) {
        Some(session) if !local && crate::node::valid_session_id(session) => {
            let user = header(&USER_ID).unwrap_or(session);
            if node.affinity_on(session, user) {
                cluster.owner(session)
            } else {
                None
            }
        }
        _ => None,
    };
    let Some(owner) = owner else {
        return next.call(request).await.map(ServiceResponse::map_into_boxed_body);
    };

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
            cluster.succeeded(owner);
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
            let idempotent = matches!(*request.method(), Method::GET | Method::HEAD)
                || request.path().ends_with("/batch-get");
            tracing::warn!(peer = %owner.id, cause = %e, reached, "forward failed");
            if reached && !idempotent {
                return Ok(request.into_response(ApiError::OutcomeUnknown.error_response()));
            }
            request.set_payload(actix_web::dev::Payload::from(body));
            next.call(request).await.map(ServiceResponse::map_into_boxed_body)
        }
    }
}
