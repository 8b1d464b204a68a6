//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the origin
//! answered its last readiness ping, see [`crate::readiness`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::ApiError;
use crate::cluster::Cluster;
use crate::origin::OriginError;
use crate::readiness::{Readiness, Ready};
use crate::Node;

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process answers", body = Object)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: from the last readiness sample, never a query of its own. 503
/// `origin-unavailable` when the origin did not answer it (or it is too old).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the origin's position, live sessions, peers, flag source", body = Object),
        (status = 503, description = "The origin did not answer the last readiness check", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(
    node: web::Data<Node>,
    cluster: web::Data<Arc<Cluster>>,
    readiness: web::Data<Readiness>,
) -> Result<HttpResponse, ApiError> {
    let (position, age) = match readiness.check().await {
        Ready::Yes { position, age } => (position, age),
        Ready::No(reason) => {
            return Err(ApiError::OriginUnavailable(OriginError::Unavailable {
                reason,
                source: None,
            }))
        }
    };
    let peers: serde_json::Map<String, serde_json::Value> = cluster
        .view()
        .into_iter()
        .map(|(id, up)| (id.to_owned(), up.into()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "node": node.node_id(),
        "origin": {
            "kind": node.origin_kind(),
            "position": position.0,
            "checked_ms_ago": age.as_millis() as u64,
        },
        "live_sessions": node.live_sessions(),
        "peers": peers,
        "forwarded": cluster.forwarded.load(Ordering::Relaxed),
        "forward_failures": cluster.forward_failures.load(Ordering::Relaxed),
        "flags": node.flag_status().unwrap_or_else(|| "configuration".to_owned()),
    })))
}
