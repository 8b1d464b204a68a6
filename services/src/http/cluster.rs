//! The peer API under `/cluster`: `GET /cluster/health` (a peer's health check) and
//! `POST /cluster/leave {"node": id}` (a peer says it is stopping).
//!
//! Only peers may call it: every request must carry the `X-Edgecache-Proof` of a node
//! listed in `cluster.peers`, made with an accepted cluster secret
//! ([`crate::cluster`]) — for a `POST`, over its body too; without one the answer is
//! 401 problem+json and nothing changes. The public load balancer does not pass `/cluster/` on at all
//! (`deploy/nginx.conf`).

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceRequest;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage, HttpResponse, ResponseError};
use serde_json::json;

use super::error::{problem, ProblemType};
use super::forward::target;
use super::request::{read_bounded, BodyError};
use super::ApiError;
use crate::cluster::{Cluster, PROOF_HEADER};

/// The largest body a peer may post (a purge of many ids).
const MAX_PEER_BODY: usize = 1 << 20;

/// The peer whose proof a `/cluster` request carried (request extension).
#[derive(Clone)]
struct ProvenPeer(String);

/// The middleware of the `/cluster` scope (mounted with `middleware::from_fn`).
pub async fn require_peer(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let cluster = request
        .app_data::<web::Data<Arc<Cluster>>>()
        .cloned()
        .expect("the cluster is app data");
    // A POST's proof covers its body (a purge, a leave announcement): read it here,
    // bounded, and hand it on to the handler.
    let body = if request.method() == actix_web::http::Method::POST {
        match read_bounded(&mut request.take_payload(), MAX_PEER_BODY).await {
            Ok(body) => Some(body),
            Err(BodyError::TooLarge) => {
                let response = ApiError::BodyTooLarge { limit: MAX_PEER_BODY }.error_response();
                return Ok(request.into_response(response));
            }
            Err(BodyError::Read(e)) => return Err(e.into()),
        }
    } else {
        None
    };
    let proof = request.headers().get(PROOF_HEADER).and_then(|v| v.to_str().ok());
    let verified = cluster.verify_body(
        proof,
        request.method().as_str(),
        target(&request),
        body.as_deref(),
    );
    if let Some(body) = body {
        request.set_payload(actix_web::dev::Payload::from(body));
    }
    match verified {
        Ok(peer) => {
            request.extensions_mut().insert(ProvenPeer(peer.id.clone()));
            next.call(request).await.map(ServiceResponse::map_into_boxed_body)
        }
        Err(refusal) => {
            tracing::warn!(path = request.path(), cause = %refusal, "peer request refused");
            let response = problem(
                StatusCode::UNAUTHORIZED,
                ProblemType::Unauthorized,
                "Unauthorized",
                format!("cluster routes are for peer nodes only: {refusal}"),
            )
            .to_actix_response();
            Ok(request.into_response(response))
        }
    }
}

/// `GET /cluster/health`: this node answers, and accepts the caller's proof.
#[utoipa::path(
    get,
    path = "/cluster/health",
    tag = "cluster",
    security(("peer_proof" = [])),
    responses(
        (status = 200, description = "This node answers and accepts the caller's proof", body = Object),
        (status = 401, description = "No valid peer proof", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn health(cluster: web::Data<Arc<Cluster>>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "node": cluster.node_id() }))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct Leaving {
    node: String,
}

/// `POST /cluster/leave {"node": id}`: the peer that signed the request is stopping.
/// A peer announces only its own leaving (403 for another node's).
#[utoipa::path(
    post,
    path = "/cluster/leave",
    tag = "cluster",
    security(("peer_proof" = [])),
    request_body = Leaving,
    responses(
        (status = 204, description = "The peer is out of rotation"),
        (status = 401, description = "No valid peer proof", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The body names another node than the signer", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn peer_left(
    request: actix_web::HttpRequest,
    cluster: web::Data<Arc<Cluster>>,
    body: web::Json<Leaving>,
) -> HttpResponse {
    let proven = request.extensions().get::<ProvenPeer>().cloned();
    match proven {
        Some(ProvenPeer(peer)) if peer == body.node => {
            cluster.left(&peer);
            HttpResponse::NoContent().finish()
        }
        _ => problem(
            StatusCode::FORBIDDEN,
            ProblemType::Forbidden,
            "Forbidden",
            format!("a node announces only its own leaving, not `{}`'s", body.node),
        )
        .to_actix_response(),
    }
}
