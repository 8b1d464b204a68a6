//! `/v1/{collection}/{id}`: read, create or replace, merge-patch and delete one item.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use edgecache_actors::{Fields, ItemKey, Version};

use super::request::{
    check_id, etag, open_session, parse_object, precondition, read_body, respond, Precondition,
};
use super::v1::ItemPath;
use super::{idempotency, ApiError};
use crate::node::{ReadOutcome, SessionCtx};
use crate::origin::{WriteOp, WriteOpKind};
use crate::plan::{Body, CollectionPlan};
use crate::Node;

const JSON: &[&str] = &["application/json"];
const JSON_TYPE: header::HeaderValue = header::HeaderValue::from_static("application/json");
const MERGE_PATCH: &[&str] = &["application/merge-patch+json", "application/json"];

/// Whether the query asks for `explain=true` (`false` or absent: no; other parameters
/// are ignored).
fn explain(query: &str) -> Result<bool, ApiError> {
    let mut explain = false;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("explain=") {
            explain = match value {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::InvalidRequest(format!(
                        "explain must be true or false, not {other:?}"
                    )))
                }
            };
        }
    }
    Ok(explain)
}

/// `GET /v1/{collection}/{id}[?explain=true]`
#[tracing::instrument(name = "get_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id, cache_status))]
pub async fn get_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_id(&path.id, node.limits().max_id_bytes)?;
    let explain = explain(request.query_string())?;
    let session = open_session(node, request)?;
    let result = node.read(&session, &path.collection, &path.id, explain).await;
    let result = result.map_err(ApiError::from).and_then(|outcome| {
        tracing::Span::current().record("cache_status", outcome.status.as_str());
        read_response(&path.id, outcome)
    });
    Ok(respond(node, request, &session, result))
}

/// The response of a read: the document with its ETag, Cache-Status and Age, or 404.
pub fn read_response(id: &str, outcome: ReadOutcome) -> Result<HttpResponse, ApiError> {
    let mut response = if outcome.doc.exists() {
        let mut builder = HttpResponse::Ok();
        builder
            .insert_header((header::CONTENT_TYPE, JSON_TYPE))
            .insert_header((header::ETAG, etag(outcome.doc.version)));
        match &outcome.explain {
            Some(fields) => {
                let mut doc: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&outcome.body).map_err(|e| ApiError::Internal(Box::new(e)))?;
                doc.insert(
                    "_explain".into(),
                    serde_json::json!({
                        "cache_status": outcome.status.as_str(),
                        "version": outcome.doc.version.0,
                        "position": outcome.doc.position.0,
                        "fields": fields,
                    }),
                );
                builder.json(doc)
            }
            None => builder.body(outcome.body),
        }
    } else {
        actix_web::ResponseError::error_response(&ApiError::NotFound(id.to_owned()))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static("cache-status"),
        header::HeaderValue::from_static(outcome.status.header(outcome.strict_from_primary)),
    );
    headers.insert(header::AGE, header::HeaderValue::from(outcome.age.as_secs()));
    // Responses are per session: shared caches in front must not store them.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

/// `PUT /v1/{collection}/{id}`: creates (201) or replaces (200) the document.
#[tracing::instrument(name = "put_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn put_item(
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
        let fields = read_document(node, &plan, &path.id, request, payload, Body::Document).await?;
        let idempotency = idempotency::bind(node, idempotency_key, "PUT", &key, pre, &fields)?;
        let if_match = match pre {
            Precondition::None => None,
            Precondition::Version(v) => Some(v),
            Precondition::Absent => Some(Version(0)),
            // Replace only: condition the write on the version the primary has now.
            Precondition::Exists => match node.current_version(&key).await? {
                Version(0) => return Err(ApiError::PreconditionFailed { current: 0 }),
                v => Some(v),
            },
        };
        let op = WriteOp {
            key,
            if_match,
            kind: WriteOpKind::Put(Arc::new(fields)),
            idempotency,
        };
        let committed = node.write(&session, op).await?;
        let status = if committed.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(idempotency::mark(
            document_response(status, &path.id, &committed.doc),
            committed.replayed,
        ))
    }
    .await;
    Ok(respond(node, request, &session, result))
}

/// `PATCH /v1/{collection}/{id}`: applies a JSON merge patch (RFC 7396).
#[tracing::instrument(name = "patch_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn patch_item(
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
        let patch = read_document(node, &plan, &path.id, request, payload, Body::MergePatch).await?;
        let idempotency = idempotency::bind(node, idempotency_key, "PATCH", &key, pre, &patch)?;
        let op = WriteOp {
            key,
            if_match: version_condition(pre)?,
            kind: WriteOpKind::Patch(Arc::new(patch)),
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

/// `DELETE /v1/{collection}/{id}`: 204, or 404 if there is no such item.
#[tracing::instrument(name = "delete_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn delete_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Prepared {
        key,
        pre,
        session,
        idempotency_key,
        ..
    } = prepare_write(node, path, request)?;
    let result = async {
        let idempotency = idempotency::bind(node, idempotency_key, "DELETE", &key, pre, &())?;
        let op = WriteOp {
            key,
            if_match: version_condition(pre)?,
            kind: WriteOpKind::Delete,
            idempotency,
        };
        let committed = node.write(&session, op).await?;
        let response = HttpResponse::NoContent()
            .insert_header((header::ETAG, etag(committed.doc.version)))
            .finish();
        Ok(idempotency::mark(response, committed.replayed))
    }
    .await;
    Ok(respond(node, request, &session, result))
}

/// What every write checks before it reads its body: the id, the collection, the
/// precondition, the `Idempotency-Key` and the session.
pub struct Prepared {
    pub key: ItemKey,
    pub pre: Precondition,
    pub session: SessionCtx,
    pub plan: Arc<CollectionPlan>,
    /// Bound to the request with [`idempotency::bind`] once the body is read.
    pub idempotency_key: Option<String>,
}

pub fn prepare_write(node: &Node, path: &ItemPath<'_>, request: &HttpRequest) -> Result<Prepared, ApiError> {
    check_id(&path.id, node.limits().max_id_bytes)?;
    let plan = node
        .collection(&path.collection)
        .ok_or_else(|| ApiError::UnknownCollection(path.collection.clone().into_owned()))?
        .clone();
    let pre = precondition(request)?;
    let idempotency_key = idempotency::key(request, node.max_idempotency_key_bytes())?;
    let session = open_session(node, request)?;
    let key = ItemKey::new(plan.name.clone(), &path.id);
    Ok(Prepared {
        key,
        pre,
        session,
        plan,
        idempotency_key,
    })
}

/// Reads a document or merge patch body, checks it against the data model and
/// returns it in canonical form.
async fn read_document(
    node: &Node,
    plan: &CollectionPlan,
    id: &str,
    request: &HttpRequest,
    payload: Payload,
    kind: Body,
) -> Result<Fields, ApiError> {
    let accept = match kind {
        Body::Document => JSON,
        Body::MergePatch => MERGE_PATCH,
    };
    let body = read_body(request, payload, node.limits().max_body_bytes, accept).await?;
    Ok(plan.check_document(id, parse_object(&body)?, kind)?)
}

/// The If-Match version of a write that requires the item to exist anyway
/// (patch, delete, increment): `*` adds nothing, create-only makes no sense.
pub fn version_condition(pre: Precondition) -> Result<Option<Version>, ApiError> {
    match pre {
        Precondition::None | Precondition::Exists => Ok(None),
        Precondition::Version(v) => Ok(Some(v)),
        Precondition::Absent => Err(ApiError::InvalidRequest(
            "If-None-Match: * applies to PUT only".into(),
        )),
    }
}

/// A written document as the response body, with its ETag.
pub fn document_response(status: StatusCode, id: &str, doc: &edgecache_actors::Doc) -> HttpResponse {
    let body = match &doc.fields {
        Some(fields) => crate::cache::document_json(id, fields.iter()),
        None => Vec::new(),
    };
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, JSON_TYPE))
        .insert_header((header::ETAG, etag(doc.version)))
        .body(body)
}
