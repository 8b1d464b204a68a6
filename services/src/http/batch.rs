//! `POST /v1/{collection}/batch-get`: several items in one request.

use actix_web::dev::Payload;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::request::{check_id, open_session, read_json, respond};
use super::ApiError;
use crate::Node;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGet {
    ids: Vec<String>,
}

/// Answers `{"items": [documents found, in request order], "missing": [ids]}`.
#[tracing::instrument(name = "batch_get", level = "debug", skip_all, fields(collection = %collection))]
pub async fn batch_get(
    node: &Node,
    collection: &str,
    request: &HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let BatchGet { ids } = read_json(node, request, payload).await?;
    let max = node.limits().max_batch;
    if ids.len() > max {
        return Err(ApiError::BatchTooLarge { max });
    }
    for id in &ids {
        check_id(id, node.limits().max_id_bytes)?;
    }
    if node.collection(collection).is_none() {
        return Err(ApiError::UnknownCollection(collection.to_owned()));
    }
    let session = open_session(node, request)?;
    let result = async {
        let outcomes = node.read_batch(&session, collection, &ids).await?;
        let mut items: Vec<&RawValue> = Vec::with_capacity(outcomes.len());
        let mut missing = Vec::new();
        let bodies: Vec<_> = outcomes.iter().map(|o| (o.doc.exists(), &o.body)).collect();
        for ((exists, body), id) in bodies.into_iter().zip(&ids) {
            if exists {
                let raw = serde_json::from_slice(body).map_err(|e| ApiError::Internal(Box::new(e)))?;
                items.push(raw);
            } else {
                missing.push(id);
            }
        }
        Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "missing": missing })))
    }
    .await;
    Ok(respond(node, request, &session, result))
}
