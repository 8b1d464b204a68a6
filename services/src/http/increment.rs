//! `POST /v1/{collection}/{id}/increment`: an atomic, bounded add to an integer field.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::items::{document_response, prepare_write, version_condition, Prepared};
use super::request::{read_json, respond};
use super::v1::ItemPath;
use super::{idempotency, ApiError};
use crate::origin::{WriteOp, WriteOpKind};
use crate::Node;

/// `{"field": "stock", "by": -1, "min": 0}`. The field's own bounds from the data
/// model always apply; `min`/`max` can only narrow them.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Increment {
    field: String,
    by: i64,
    #[serde(default)]
    min: Option<i64>,
    #[serde(default)]
    max: Option<i64>,
}

#[tracing::instrument(name = "increment", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn increment(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let Prepared {
        key,
        pre,
        session,
        plan,
        idempotency_key,
    } = prepare_write(node, path, request)?;
    let result = async {
        let asked: Increment = read_json(node, request, payload).await?;
        let idempotency = idempotency::bind(node, idempotency_key, "INCREMENT", &key, pre, &asked)?;
        let Increment { field, by, min, max } = asked;
        let (min, max) = plan.increment_bounds(&field, min, max)?;
        let op = WriteOp {
            key,
            if_match: version_condition(pre)?,
            kind: WriteOpKind::Increment { field, by, min, max },
            idempotency,
        };
        let committed = node.write(&session, op).await?;
        Ok(idempotency::mark(
            document_response(StatusCode::OK, &path.id, &committed.doc),
            committed.replayed,
        ))
    }
    .await;
    Ok(respond(node, request, &session, result))
}
