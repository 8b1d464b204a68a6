//! `Idempotency-Key` (IETF httpapi draft "The Idempotency-Key HTTP Header Field"):
//! the key a client sends with a write so that sending it again — after a timeout, a
//! lost answer, a 503 `write-outcome-unknown` — applies it at most once.
//!
//! A key is bound to its request by a fingerprint: method, collection, id,
//! precondition and the body as the data model read it (so the same document with
//! other spacing or member order is the same request). The origin records the key
//! with the write's outcome in the write's transaction; see
//! [`Idempotency`](crate::origin::Idempotency).

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use edgecache_actors::ItemKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::request::Precondition;
use super::ApiError;
use crate::origin::Idempotency;
use crate::Node;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, if it sent one: 1 to `max` visible ASCII
/// characters (a UUID is the usual choice), else 400.
pub fn key(request: &HttpRequest, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    // A structured-field string may come quoted ("…"); the quotes are not the key.
    let bytes = bytes
        .strip_prefix(b"\"")
        .and_then(|b| b.strip_suffix(b"\""))
        .unwrap_or(bytes);
    let valid = (1..=max).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::InvalidIdempotencyKey { max });
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Binds `key` (if any) to the request: `method` on `item` under `pre`, with `body`
/// as the data model read it.
pub fn bind(
    node: &Node,
    key: Option<String>,
    method: &str,
    item: &ItemKey,
    pre: Precondition,
    body: &impl Serialize,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let mut digest = Sha256::new();
    for part in [method, item.collection(), item.id()] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let (tag, version) = match pre {
        Precondition::None => (0u8, 0),
        Precondition::Version(v) => (1, v.0),
        Precondition::Exists => (2, 0),
        Precondition::Absent => (3, 0),
    };
    digest.update([tag]);
    digest.update(version.to_be_bytes());
    let body = serde_json::to_vec(body).map_err(|e| ApiError::Internal(Box::new(e)))?;
    digest.update(body);
    Ok(Some(node.idempotency(key, digest.finalize().into())))
}

/// Marks the answer of a replayed write (`Idempotent-Replayed: true`).
pub fn mark(mut response: HttpResponse, replayed: bool) -> HttpResponse {
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}
