//! Reading what a request carries: its item path, session headers, ids,
//! preconditions and JSON body, each with a bound and a clear error.

use std::borrow::Cow;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use edgecache_actors::{Fields, Version};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::node::SessionCtx;
use crate::Node;

/// An item's collection and id, as the path names them (decoded).
pub struct ItemPath<'a> {
    pub collection: Cow<'a, str>,
    pub id: Cow<'a, str>,
}

pub const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");
pub const SESSION_TOKEN: HeaderName = HeaderName::from_static("x-session-token");
pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::InvalidRequest(format!("the {name} header is not visible ASCII"))),
    }
}

/// Opens the request's session from `X-Session-Id`, `X-Session-Token` and
/// `X-User-Id`.
pub fn open_session(node: &Node, request: &HttpRequest) -> Result<SessionCtx, ApiError> {
    let headers = request.headers();
    let session_id = header(headers, &SESSION_ID)?;
    let token = header(headers, &SESSION_TOKEN)?;
    let user_id = header(headers, &USER_ID)?;
    let session = node.open_session(session_id, user_id, token)?;
    tracing::Span::current().record("session_id", session.id());
    Ok(session)
}

/// Adds a fresh `X-Session-Token` to a response, and `X-Session-Id` when the node
/// minted the id (a request that named its session learns nothing from it). The token
/// header is the session's issued bytes, not a copy.
pub fn with_session(
    node: &Node,
    request: &HttpRequest,
    session: &SessionCtx,
    mut response: HttpResponse,
) -> HttpResponse {
    let token = node.token(session);
    let headers = response.headers_mut();
    let named = request
        .headers()
        .get(SESSION_ID)
        .is_some_and(|sent| sent.as_bytes() == session.id().as_bytes());
    if !named {
        if let Ok(id) = HeaderValue::from_str(session.id()) {
            headers.insert(SESSION_ID, id);
        }
    }
    if let Ok(token) = HeaderValue::from_maybe_shared(token) {
        headers.insert(SESSION_TOKEN, token);
    }
    response
}

/// The response of a handler that opened a session: success or problem, either way
/// with the session's headers.
pub fn respond(
    node: &Node,
    request: &HttpRequest,
    session: &SessionCtx,
    result: Result<HttpResponse, ApiError>,
) -> HttpResponse {
    let response = result.unwrap_or_else(|err| err.error_response());
    with_session(node, request, session, response)
}

/// Checks an item id: 1 to `max` bytes of `[A-Za-z0-9_.:-]`.
pub fn check_id(id: &str, max: usize) -> Result<(), ApiError> {
    let ok = (1..=max).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidId { max })
    }
}

/// A write's precondition from `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// `If-Match: "<version>"`.
    Version(Version),
    /// `If-Match: *`: the item must exist.
    Exists,
    /// `If-None-Match: *`: the item must not exist.
    Absent,
}

pub fn precondition(request: &HttpRequest) -> Result<Precondition, ApiError> {
    let headers = request.headers();
    if let Some(value) = header(headers, &header::IF_MATCH)? {
        let value = value.trim();
        if value == "*" {
            return Ok(Precondition::Exists);
        }
        let version = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .ok_or(ApiError::InvalidIfMatch)?;
        return Ok(Precondition::Version(Version(version)));
    }
    match header(headers, &header::IF_NONE_MATCH)? {
        Some(v) if v.trim() == "*" => Ok(Precondition::Absent),
        Some(_) => Err(ApiError::InvalidRequest(
            "If-None-Match on a write must be \"*\" (create only)".into(),
        )),
        None => Ok(Precondition::None),
    }
}

/// The strong ETag of a version, `"<version>"`, formatted without a temporary string.
pub fn etag(version: Version) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version.0).as_bytes();
    let mut text = [b'"'; 22];
    text[1..=digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&text[..digits.len() + 2]).expect("digits and quotes")
}

/// Reads the body (at most `limit` bytes; 413 past it) of a JSON request.
pub async fn read_body(
    request: &HttpRequest,
    mut payload: Payload,
    limit: usize,
    accept: &[&'static str],
) -> Result<web::Bytes, ApiError> {
    let content_type = header(request.headers(), &header::CONTENT_TYPE)?.unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !accept.contains(&essence.as_str()) {
        return Err(ApiError::UnsupportedMediaType(accept[0]));
    }
    if let Some(length) = header(request.headers(), &header::CONTENT_LENGTH)? {
        if length.parse::<usize>().map_or(true, |n| n > limit) {
            return Err(ApiError::BodyTooLarge { limit });
        }
    }
    read_bounded(&mut payload, limit).await.map_err(|err| match err {
        BodyError::TooLarge => ApiError::BodyTooLarge { limit },
        BodyError::Read(e) => ApiError::InvalidRequest(format!("the request body could not be read: {e}")),
    })
}

/// Why a bounded body read stopped short.
pub enum BodyError {
    /// The body is longer than the limit.
    TooLarge,
    /// The body could not be read.
    Read(PayloadError),
}

/// Reads a request body of at most `limit` bytes, stopping at the first chunk past it.
pub async fn read_bounded(payload: &mut Payload, limit: usize) -> Result<web::Bytes, BodyError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads a JSON body (`application/json`, at most `server.max_body_bytes`) into `T`.
pub async fn read_json<T: DeserializeOwned>(
    node: &Node,
    request: &HttpRequest,
    payload: Payload,
) -> Result<T, ApiError> {
    let body = read_body(
        request,
        payload,
        node.limits().max_body_bytes,
        &["application/json"],
    )
    .await?;
    parse(&body)
}

/// Parses a JSON object body.
pub fn parse_object(body: &[u8]) -> Result<Fields, ApiError> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::NotAnObject),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// Parses a JSON body into `T`: syntax errors are `malformed-json`, shape errors
/// `invalid-request`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::MalformedJson(e.to_string())
        }
        _ => ApiError::InvalidRequest(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn etags_quote_the_version() {
        for v in [0, 7, 10, 4_096, u64::MAX] {
            assert_eq!(etag(Version(v)), format!("\"{v}\"").as_str());
        }
    }

    /// Characters that stand for themselves in a path segment (unreserved, and `:`).
    const PLAIN: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b':');

    const ID_BYTES: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// An id is accepted exactly when it is 1 to `max` bytes of the id alphabet;
        /// anything else is refused with the bound named, never a panic.
        #[test]
        fn ids_are_accepted_exactly_within_their_alphabet_and_bound(
            id in prop_oneof!["\\PC{0,80}", "[A-Za-z0-9_.:/%-]{0,80}", "[A-Za-z0-9_.:-]{0,80}"],
            max in 0usize..72,
        ) {
            let expected = (1..=max).contains(&id.len()) && id.bytes().all(|b| ID_BYTES.contains(&b));
            match check_id(&id, max) {
                Ok(()) => prop_assert!(expected, "{:?} accepted", id),
                Err(ApiError::InvalidId { max: named }) => {
                    prop_assert!(!expected, "{:?} refused", id);
                    prop_assert_eq!(named, max);
                }
                Err(other) => prop_assert!(false, "{:?}: {}", id, other),
            }
        }

        /// Every accepted id is a path segment as it stands: nothing to encode or
        /// decode, nothing that splits a path, a query or a fragment.
        #[test]
        fn an_accepted_id_needs_no_encoding(id in "[A-Za-z0-9_.:-]{1,64}") {
            prop_assert!(check_id(&id, 64).is_ok());
            let encoded = percent_encoding::utf8_percent_encode(&id, PLAIN).to_string();
            prop_assert_eq!(encoded, id);
        }
    }
}
