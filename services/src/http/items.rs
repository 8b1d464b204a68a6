//! `/v1/{collection}/{id}`: read, create or replace, merge-patch and delete one item.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use edgecache_actors::Fields;

use super::conditional::{not_modified, IfNoneMatch};
use super::fields;
use super::request::{check_id, etag, open_session, parse_object, read_body, respond, ItemPath};
use super::write::{document_response, write, JSON_TYPE};
use super::ApiError;
use crate::node::{ReadOptions, ReadOutcome};
use crate::origin::WriteOpKind;
use crate::plan::{Body, CollectionPlan};
use crate::projection::Projection;
use crate::Node;

const JSON: &[&str] = &["application/json"];
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

/// `GET /v1/{collection}/{id}[?explain=true][&fields=a,b]`, with `If-None-Match`: 304
/// when the version it would serve is the one the client holds.
#[utoipa::path(
    get,
    path = "/v1/{collection}/{id}",
    tag = "items",
    params(
        crate::http::openapi::ItemPathParams,
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::ExplainQuery,
        crate::http::openapi::FieldsQuery,
        crate::http::openapi::ConditionalHeaders,
    ),
    responses(
        (status = 200, description = "The document, at least as new as the session's need", body = crate::http::openapi::Document, headers(
            ("ETag" = String, description = "The document's version, as a strong ETag"),
            ("Cache-Status" = String, description = "RFC 9211: the node's name, hit or fwd=miss|stale|bypass, and why"),
            ("Age" = u64, description = "Seconds since the node fetched the document from the origin"),
            ("X-Session-Token" = String, description = "The session's new token: send it with the next request"),
        )),
        (status = 304, description = "If-None-Match names the version the session would be served: no body, the 200's headers", headers(
            ("ETag" = String, description = "The document's version, as a strong ETag"),
            ("Cache-Status" = String, description = "RFC 9211, as on the 200"),
            ("X-Session-Token" = String, description = "The session's new token: send it with the next request"),
        )),
        (status = 400, description = "A malformed request or session header", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection or item", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`fields` names an unknown field", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The origin could not answer in time", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "get_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id, cache_status))]
pub async fn get_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    check_id(&path.id, node.limits().max_id_bytes)?;
    let explain = explain(request.query_string())?;
    let projection = fields::projection(node, &path.collection, request.query_string())?;
    let condition = IfNoneMatch::of(request.headers())?;
    let session = open_session(node, request)?;
    let options = ReadOptions {
        explain,
        projection: projection.as_ref(),
    };
    let result = node
        .read_with(&session, &path.collection, &path.id, options)
        .await;
    let result = result.map_err(ApiError::from).and_then(|outcome| {
        tracing::Span::current().record("cache_status", outcome.status.as_str());
        let current = outcome.doc.exists().then_some(outcome.doc.version);
        let response = read_response(node, &path.id, outcome, projection.as_ref())?;
        // Evaluated on what the read serves, which already meets the session's need.
        match (current, &condition) {
            (Some(version), Some(condition)) if condition.matches(version) => {
                node.metrics().not_modified.inc();
                Ok(not_modified(&response))
            }
            _ => Ok(response),
        }
    });
    Ok(respond(node, request, &session, result))
}

/// The response of a read: the document (or the fields of `projection`) with its
/// ETag, Cache-Status and Age, or 404.
pub fn read_response(
    node: &Node,
    id: &str,
    outcome: ReadOutcome,
    projection: Option<&Projection>,
) -> Result<HttpResponse, ApiError> {
    let mut response = if outcome.doc.exists() {
        let mut builder = HttpResponse::Ok();
        builder
            .insert_header((header::CONTENT_TYPE, JSON_TYPE))
            .insert_header((header::ETAG, etag(outcome.doc.version)));
        match &outcome.explain {
            Some(fields) => {
                let mut doc: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&outcome.body).map_err(|e| ApiError::Internal(Box::new(e)))?;
                let mut explained = serde_json::json!({
                    "cache_status": outcome.status.as_str(),
                    "version": outcome.doc.version.0,
                    "position": outcome.doc.position.0,
                    "fields": fields,
                });
                if let Some(projection) = projection {
                    explained["projection"] = serde_json::json!({
                        "fields": projection.fields(),
                        "reads_primary": projection.reads_strict(),
                    });
                }
                doc.insert("_explain".into(), explained);
                builder.json(doc)
            }
            None => builder.body(outcome.body),
        }
    } else {
        actix_web::ResponseError::error_response(&ApiError::NotFound(id.to_owned()))
    };
    let headers = response.headers_mut();
    let cache_status = match projection {
        Some(projection) => node.cache_status_header_with(
            outcome.status,
            outcome.strict_from_primary,
            &format!("fields={}", projection.describe()),
        ),
        None => node.cache_status_header(outcome.status, outcome.strict_from_primary),
    };
    headers.insert(header::HeaderName::from_static("cache-status"), cache_status);
    headers.insert(header::AGE, header::HeaderValue::from(outcome.age.as_secs()));
    // Responses are per session: shared caches in front must not store them.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

/// `PUT /v1/{collection}/{id}`: creates (201) or replaces (200) the document.
#[utoipa::path(
    put,
    path = "/v1/{collection}/{id}",
    tag = "items",
    params(
        crate::http::openapi::ItemPathParams,
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::WriteHeaders,
    ),
    request_body(content = crate::http::openapi::Document, content_type = "application/json"),
    responses(
        (status = 200, description = "The document was replaced", body = crate::http::openapi::Document, headers(
            ("ETag" = String, description = "The new version"),
            ("X-Session-Token" = String, description = "The session's new token: send it with the next request"),
            ("Idempotent-Replayed" = bool, description = "true when this answers a recorded write"),
        )),
        (status = 201, description = "The document was created", body = crate::http::openapi::Document),
        crate::http::openapi::WriteProblems,
    )
)]
#[tracing::instrument(name = "put_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn put_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let read = |plan: Arc<CollectionPlan>| async move {
        let fields = read_document(node, &plan, &path.id, request, payload, Body::Document).await?;
        Ok((fields, |fields| WriteOpKind::Put(Arc::new(fields))))
    };
    write(node, path, request, "PUT", read, |committed| {
        let status = if committed.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        document_response(status, &path.id, &committed.doc)
    })
    .await
}

/// `PATCH /v1/{collection}/{id}`: applies a JSON merge patch (RFC 7396).
#[utoipa::path(
    patch,
    path = "/v1/{collection}/{id}",
    tag = "items",
    params(
        crate::http::openapi::ItemPathParams,
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::WriteHeaders,
    ),
    request_body(content = crate::http::openapi::Document, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The patched document", body = crate::http::openapi::Document, headers(
            ("ETag" = String, description = "The new version"),
            ("X-Session-Token" = String, description = "The session's new token: send it with the next request"),
            ("Idempotent-Replayed" = bool, description = "true when this answers a recorded write"),
        )),
        crate::http::openapi::WriteProblems,
    )
)]
#[tracing::instrument(name = "patch_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn patch_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
    payload: Payload,
) -> Result<HttpResponse, ApiError> {
    let read = |plan: Arc<CollectionPlan>| async move {
        let patch = read_document(node, &plan, &path.id, request, payload, Body::MergePatch).await?;
        Ok((patch, |patch| WriteOpKind::Patch(Arc::new(patch))))
    };
    write(node, path, request, "PATCH", read, |committed| {
        document_response(StatusCode::OK, &path.id, &committed.doc)
    })
    .await
}

/// `DELETE /v1/{collection}/{id}`: 204, or 404 if there is no such item.
#[utoipa::path(
    delete,
    path = "/v1/{collection}/{id}",
    tag = "items",
    params(
        crate::http::openapi::ItemPathParams,
        crate::http::openapi::SessionHeaders,
        crate::http::openapi::WriteHeaders,
    ),
    responses(
        (status = 204, description = "Deleted", headers(
            ("X-Session-Token" = String, description = "The session's new token"),
        )),
        (status = 400, description = "A malformed request or session header", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such collection (or item, for PATCH/DELETE/increment)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body breaks the data model, or the Idempotency-Key was used for another request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not applied (origin-unavailable, session-busy, idempotency-store-full) or outcome unknown (write-outcome-unknown): see the problem type", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "delete_item", level = "debug", skip_all, fields(collection = %path.collection, id = %path.id))]
pub async fn delete_item(
    node: &Node,
    path: &ItemPath<'_>,
    request: &HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let read = |_| async { Ok(((), |()| WriteOpKind::Delete)) };
    write(node, path, request, "DELETE", read, |committed| {
        HttpResponse::NoContent()
            .insert_header((header::ETAG, etag(committed.doc.version)))
            .finish()
    })
    .await
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
