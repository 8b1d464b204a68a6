//! `GET /healthz` (the process answers) and `GET /readyz` (it can serve: the origin
//! answers).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::ApiError;
use crate::Node;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let position = node.origin().ping().await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "node": node.node_id(),
        "origin": { "kind": node.origin().kind(), "position": position.0 },
        "live_sessions": node.sessions().len(),
        "flags": node.flag_status().unwrap_or_else(|| "configuration".to_owned()),
    })))
}
