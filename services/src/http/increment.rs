//! `POST /v1/{collection}/{id}/increment`: an atomic, bounded add to an integer field.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::request::{read_json, ItemPath};
use super::write::{document_response, write};
use super::ApiError;
use crate::origin::WriteOpKind;
use crate::plan::CollectionPlan;
use crate::Node;

/// `{"field": "stock", "by": -1, "min": 0}`. The field's own bounds from the data
/// model always apply; `min`/`max` can only narrow them.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Increment {
    field: String,
    by: i64,
    #[serde(default)]
    min: Option<i64>,
    #[serde(default)]
    max: Option<i64>,
}

/// `POST /v1/{collection}/{id}/increment`
#[utoipa::path(
    post,
    path = "/v1/{collection}/{id}/increment",
    tag = "items",
    params(
        crate::http::openapi::ItemPathParams,
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::WriteHeaders,
    ),
    request_body = Increment,
    responses(
        (status = 200, description = "The document after the add", body = crate::http::openapi::Document, headers(
            ("ETag" = String, description = "The new version"),
            ("X-Session-Token" = String, description = "The session's new token: send it with the next request"),
            ("Idempotent-Replayed" = bool, description = "true when this answers a recorded write"),
        )),
        (status = 409, description = "The add would cross the field's bound", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        crate::http::openapi::WriteProblems,
    )
)]
#[tracing::instrument(name = "increment", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn increment(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let read = |plan: Arc<CollectionPlan>| async move {
        let asked: Increment = read_json(node, request, payload).await?;
        let (min, max) = plan.increment_bounds(&asked.field, asked.min, asked.max)?;
        let kind = move |Increment { field, by, .. }| WriteOpKind::Increment { field, by, min, max };
        Ok((asked, kind))
    };
    write(node, path, request, "INCREMENT", read, |committed| {
        document_response(StatusCode::OK, &path.id, &committed.doc)
    })
    .await
}
