//! `GET /metrics`: the node's counters in the Prometheus (OpenMetrics) text format
//! (requests are counted by route, method and status class in [`super::envelope`]).
//!
//! The counts live in plain atomics ([`crate::metrics`]) and are rendered at scrape
//! time ([`crate::metrics::Scrape`]). With `admin.metrics_token` set, a scrape must
//! carry `Authorization: Bearer <metrics token>` (401 otherwise); without it
//! `/metrics` is open to whoever reaches the node's port (the public load balancer
//! does not pass it on: `deploy/nginx.conf`).

use actix_web::{web, HttpRequest, HttpResponse};

use super::{AdminAuth, ApiError};
use crate::Node;

/// The OpenMetrics text format, which Prometheus negotiates and accepts.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The realm named in `WWW-Authenticate` by `/metrics`.
const REALM: &str = "edgecache-metrics";

/// `GET /metrics`
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Counters in the OpenMetrics text format", content_type = "application/openmetrics-text"),
        (status = 401, description = "admin.metrics_token is set and the request does not carry it", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics(
    request: HttpRequest,
    node: web::Data<Node>,
    auth: web::Data<AdminAuth>,
) -> Result<HttpResponse, ApiError> {
    if let Some(token) = auth.metrics_token() {
        if let Err(refusal) = token.check(request.headers(), REALM, "metrics token") {
            return Ok(*refusal);
        }
    }
    let body = node
        .scrape()
        .render()
        .map_err(|e| ApiError::Internal(format!("encoding the metrics failed: {e}").into()))?;
    Ok(HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .insert_header(("cache-control", "no-store"))
        .body(body))
}
