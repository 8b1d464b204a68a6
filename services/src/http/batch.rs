//! `POST /v1/{collection}/batch-get[?fields=a,b]`: several items in one request (only
//! the projected fields of each, when `fields` is given).

use actix_web::dev::Payload;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields;
use super::request::{check_id, open_session, read_json, respond};
use super::ApiError;
use crate::Node;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchGet {
    ids: Vec<String>,
}

/// Answers `{"items": [documents found, in request order], "missing": [ids]}`.
#[utoipa::path(
    post,
    path = "/v1/{collection}/batch-get",
    tag = "items",
    params(
        ("collection" = String, Path, description = "A configured collection"),
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::FieldsQuery,
    ),
    request_body = BatchGet,
    responses(
        (status = 200, description = "The documents found and the ids missing", body = crate::http::openapi::BatchGetAnswer, headers(
            ("X-Session-Token" = String, description = "The session's new token"),
        )),
        (status = 400, description = "A malformed request or session header", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "More ids than max_batch", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`fields` names an unknown field", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The origin could not answer in time", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
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
    let projection = fields::projection(node, collection, request.query_string())?;
    let session = open_session(node, request)?;
    let result = async {
        let outcomes = node
            .read_batch(&session, collection, &ids, projection.as_ref())
            .await?;
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
