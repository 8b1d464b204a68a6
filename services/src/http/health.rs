//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the origin
//! answers).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::ApiError;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::Node;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(
    node: web::Data<Node>,
    cluster: web::Data<Arc<Cluster>>,
) -> Result<HttpResponse, ApiError> {
    let position = node.origin().ping().await?;
    let peers: serde_json::Map<String, serde_json::Value> = cluster
        .view()
        .into_iter()
        .map(|(id, up)| (id.to_owned(), up.into()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "node": node.node_id(),
        "origin": { "kind": node.origin().kind(), "position": position.0 },
        "live_sessions": node.sessions().len(),
        "peers": peers,
        "forwarded": cluster.forwarded.load(std::sync::atomic::Ordering::Relaxed),
        "forward_failures": cluster.forward_failures.load(std::sync::atomic::Ordering::Relaxed),
        "flags": node.flag_status().unwrap_or_else(|| "configuration".to_owned()),
    })))
}
