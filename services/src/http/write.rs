//! The skeleton every write handler shares (PUT, PATCH, DELETE and increment): check
//! the id, the collection, the precondition and the `Idempotency-Key`, open the
//! session, read what the body asks for, bind the key to it, condition the write on
//! the precondition, apply it through the node and answer with the session's
//! headers. A handler says only what differs: how it reads its body and how it
//! answers the commit.

use std::future::Future;
use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use edgecache_actors::{Doc, Version};
use serde::Serialize;

use super::request::{check_id, etag, open_session, precondition, respond, ItemPath, Precondition};
use super::{idempotency, ApiError};
use crate::origin::{Committed, WriteOp, WriteOpKind};
use crate::plan::CollectionPlan;
use crate::Node;

/// The `Content-Type` of a JSON answer.
pub const JSON_TYPE: header::HeaderValue = header::HeaderValue::from_static("application/json");

/// Applies one write to the item at `path`. `method` names the write in the
/// `Idempotency-Key`'s fingerprint. `read` reads the request's body (the item's plan
/// at hand) into what the fingerprint covers and how that becomes the write;
/// `answer` turns the commit into the response (marked when it is a replay).
pub async fn write<B, K, Fut>(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
    method: &'static str,
    read: impl FnOnce(Arc<CollectionPlan>) -> Fut,
    answer: impl FnOnce(&Committed) -> HttpResponse,
) -> Result<HttpResponse, ApiError>
where
    B: Serialize,
    K: FnOnce(B) -> WriteOpKind,
    Fut: Future<Output = Result<(B, K), ApiError>>,
{
    check_id(&path.id, node.limits().max_id_bytes)?;
    let plan = node
        .collection(&path.collection)
        .ok_or_else(|| ApiError::UnknownCollection(path.collection.clone().into_owned()))?
        .clone();
    let pre = precondition(request)?;
    let idempotency_key = idempotency::key(request, node.max_idempotency_key_bytes())?;
    let session = open_session(node, request)?;
    let key = edgecache_actors::ItemKey::new(plan.name.clone(), &path.id);
    let result = async {
        let (body, kind) = read(plan).await?;
        let idempotency = idempotency::bind(node, idempotency_key, method, &key, pre, &body)?;
        let kind = kind(body);
        let if_match = if_match(node, &key, pre, &kind).await?;
        let op = WriteOp {
            key,
            if_match,
            kind,
            idempotency,
        };
        let committed = node.write(&session, op).await?;
        Ok(idempotency::mark(answer(&committed), committed.replayed))
    }
    .await;
    Ok(respond(node, request, &session, result))
}

/// The `If-Match` version a write is conditioned on. A PUT may create or replace:
/// `If-None-Match: *` means absent (version 0), `If-Match: *` the version the primary
/// holds now (412 if none). Every other write requires the item to exist anyway, so
/// `*` adds nothing and create-only makes no sense.
async fn if_match(
    node: &Node,
    key: &edgecache_actors::ItemKey,
    pre: Precondition,
    kind: &WriteOpKind,
) -> Result<Option<Version>, ApiError> {
    let put = matches!(kind, WriteOpKind::Put(_));
    match pre {
        Precondition::None => Ok(None),
        Precondition::Version(v) => Ok(Some(v)),
        Precondition::Absent if put => Ok(Some(Version(0))),
        Precondition::Exists if put => match node.current_version(key).await? {
            Version(0) => Err(ApiError::PreconditionFailed { current: 0 }),
            v => Ok(Some(v)),
        },
        Precondition::Exists => Ok(None),
        Precondition::Absent => Err(ApiError::InvalidRequest(
            "If-None-Match: * applies to PUT only".into(),
        )),
    }
}

/// A written document as the response body, with its ETag.
pub fn document_response(status: StatusCode, id: &str, doc: &Doc) -> HttpResponse {
    let body = match &doc.fields {
        Some(fields) => crate::cache::document_json(id, fields.iter()),
        None => Vec::new(),
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, JSON_TYPE))
        .insert_header((header::ETAG, etag(doc.version)))
        .body(body)
}
