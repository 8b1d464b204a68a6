//! `POST /admin/purge` (admin token): purge cached items on every node — by ids, a
//! whole collection, or a tag (surrogate keys) — hard, or `"soft": true` (marked
//! stale). And `POST /cluster/purge`, where a peer hands this node a purge.
//!
//! The node that takes the request applies it, publishes it on the origin's change
//! feed (PostgreSQL: every node following the feed gets it, in the cluster or not),
//! and sends it to every peer, waiting for their answers at most
//! `cluster.forward_timeout`. The answer says what each node did, which peers did not
//! confirm in time, and whether the feed carried it.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::request::{check_id, read_json};
use super::ApiError;
use crate::cluster::{Cluster, PeerPurge};
use crate::node::PurgeCount;
use crate::purge::{Purge, PurgeMessage, Target};
use crate::Node;

/// The answer of `POST /admin/purge`.
#[derive(Serialize, ToSchema)]
pub struct PurgeReport {
    /// The purge's id (in every node's log).
    id: String,
    soft: bool,
    /// Per node that confirmed, this one first: entries dropped or marked.
    nodes: BTreeMap<String, PurgeCount>,
    /// Peers that did not confirm within the bound, and why. They may still apply
    /// the purge (through the change feed, or late).
    unconfirmed: BTreeMap<String, String>,
    /// `published` (PostgreSQL: every node following the feed gets it), `none` (the
    /// origin has no feed), or `failed` (see the log; peers were still sent it).
    change_feed: &'static str,
}

/// Checks a purge request against this node's collections and bounds.
fn check(node: &Node, purge: &Purge) -> Result<(), ApiError> {
    let target = purge
        .target()
        .map_err(|shape| ApiError::InvalidRequest(shape.to_string()))?;
    let known = |collection: &str| {
        node.collection(collection)
            .map(|_| ())
            .ok_or_else(|| ApiError::UnknownCollection(collection.to_owned()))
    };
    match target {
        Target::Ids { collection, ids } => {
            known(collection)?;
            let max = node.limits().max_batch;
            if ids.len() > max {
                return Err(ApiError::BatchTooLarge { max });
            }
            for id in ids {
                check_id(id, node.limits().max_id_bytes)?;
            }
        }
        Target::Collection(collection) => known(collection)?,
        Target::Tag {
            collection: Some(collection),
            ..
        } => {
            known(collection)?;
            if !node.has_tags(collection) {
                return Err(ApiError::InvalidRequest(format!(
                    "collection `{collection}` has no surrogate_keys: nothing of it is tagged"
                )));
            }
        }
        Target::Tag { collection: None, .. } => {}
    }
    Ok(())
}

/// `POST /admin/purge`.
#[utoipa::path(
    post,
    path = "/admin/purge",
    tag = "operations",
    security(("admin_token" = [])),
    request_body = Purge,
    responses(
        (status = 200, description = "What each node did, the peers that did not confirm in time, and whether the change feed carried it", body = PurgeReport),
        (status = 400, description = "No scope, or scopes that do not go together, or a tag purge of a collection without surrogate keys", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong admin token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection, or the admin API is disabled", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "More ids than max_batch", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "purge", level = "debug", skip_all)]
pub async fn purge(
    node: web::Data<Node>,
    cluster: web::Data<Arc<Cluster>>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let purge: Purge = read_json(&node, &request, payload.into_inner()).await?;
    check(&node, &purge)?;
    let message = PurgeMessage::new(purge, node.node_id());
    let here = node.purge(&message);
    let (published, peers) = futures_util::future::join(
        node.publish_purge(&message),
        cluster.broadcast_purge(&message, cluster.purge_timeout()),
    )
    .await;
    let change_feed = match published {
        Ok(true) => "published",
        Ok(false) => "none",
        Err(err) => {
            tracing::warn!(cause = %err, id = %message.id, "purge not published on the change feed");
            "failed"
        }
    };
    let mut nodes = BTreeMap::from([(node.node_id().to_owned(), here)]);
    let mut unconfirmed = BTreeMap::new();
    for (peer, answer) in peers {
        match answer {
            PeerPurge::Confirmed(count) => {
                nodes.insert(peer, count);
            }
            PeerPurge::Unconfirmed(why) => {
                tracing::warn!(%peer, cause = %why, id = %message.id, "peer did not confirm a purge");
                unconfirmed.insert(peer, why);
            }
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(PurgeReport {
            id: message.id.clone(),
            soft: message.purge.soft,
            nodes,
            unconfirmed,
            change_feed,
        }))
}

/// `POST /cluster/purge`: a peer's purge, applied here (once per purge id).
#[utoipa::path(
    post,
    path = "/cluster/purge",
    tag = "cluster",
    security(("peer_proof" = [])),
    request_body = PurgeMessage,
    responses(
        (status = 200, description = "What this node did (`repeated`: it had the purge already)", body = PurgeCount),
        (status = 401, description = "No valid peer proof", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn from_peer(node: web::Data<Node>, message: web::Json<PurgeMessage>) -> HttpResponse {
    HttpResponse::Ok().json(node.purge(&message))
}
