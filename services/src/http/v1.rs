//! The `/v1` router. Three shapes of path, told apart by their segments:
//!
//! | path | methods |
//! |---|---|
//! | `/v1/{collection}/{id}` | GET, PUT, PATCH, DELETE |
//! | `/v1/{collection}/{id}/increment` | POST |
//! | `/v1/{collection}/batch-get` | POST |
//!
//! Split by hand rather than by actix-web's router, whose dynamic segments are
//! regular expressions tried one resource after another, with the segments then
//! deserialised into owned strings: together a tenth of a cache hit's user-space CPU
//! (`scripts/perf.sh`'s profile). Segments are percent-decoded when they hold a `%`
//! (ids are checked afterwards, as before).

use std::borrow::Cow;

use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, Error, HttpRequest, HttpResponse, ResponseError};

use super::{batch, increment, items, ApiError};
use crate::metrics::route;
use crate::Node;

/// An item's collection and id, as the path names them (decoded).
pub struct ItemPath<'a> {
    pub collection: Cow<'a, str>,
    pub id: Cow<'a, str>,
}

/// What a `/v1` path addresses.
enum Target<'a> {
    Item(ItemPath<'a>),
    Increment(ItemPath<'a>),
    BatchGet(Cow<'a, str>),
}

/// The segments after `/v1/`: two or three, none empty.
fn segments(path: &str) -> Option<(&str, &str, Option<&str>)> {
    let rest = path.strip_prefix("/v1/")?;
    let mut parts = rest.split('/');
    let first = parts.next().filter(|s| !s.is_empty())?;
    let second = parts.next().filter(|s| !s.is_empty())?;
    let third = parts.next();
    if parts.next().is_some() || third == Some("") {
        return None;
    }
    Some((first, second, third))
}

/// The metrics `route` label of a `/v1` path, without decoding anything.
pub fn label(path: &str) -> Option<&'static str> {
    match segments(path)? {
        (_, "batch-get", None) => Some(route::BATCH_GET),
        (_, _, None) => Some(route::ITEM),
        (_, _, Some("increment")) => Some(route::INCREMENT),
        _ => None,
    }
}

fn decode(segment: &str) -> Option<Cow<'_, str>> {
    if segment.contains('%') {
        percent_encoding::percent_decode_str(segment).decode_utf8().ok()
    } else {
        Some(Cow::Borrowed(segment))
    }
}

impl<'a> Target<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        let (collection, second, third) = segments(path)?;
        let collection = decode(collection)?;
        match (second, third) {
            ("batch-get", None) => Some(Target::BatchGet(collection)),
            (id, None) => Some(Target::Item(ItemPath {
                collection,
                id: decode(id)?,
            })),
            (id, Some("increment")) => Some(Target::Increment(ItemPath {
                collection,
                id: decode(id)?,
            })),
            _ => None,
        }
    }
}

/// The `/v1` scope's service (mounted as its default service).
pub async fn serve(request: ServiceRequest) -> Result<ServiceResponse, Error> {
    let node = request
        .app_data::<web::Data<Node>>()
        .cloned()
        .expect("the node is app data");
    let (request, payload) = request.into_parts();
    let response = answer(&node, &request, payload).await;
    Ok(ServiceResponse::new(request, response))
}

async fn answer(node: &Node, request: &HttpRequest, payload: Payload) -> HttpResponse {
    let Some(target) = Target::parse(request.path()) else {
        return super::no_route(request);
    };
    let method = request.method();
    let result = match target {
        Target::Item(path) => match *method {
            Method::GET => items::get_item(node, &path, request).await,
            Method::PUT => items::put_item(node, &path, request, payload).await,
            Method::PATCH => items::patch_item(node, &path, request, payload).await,
            Method::DELETE => items::delete_item(node, &path, request).await,
            _ => return method_not_allowed(method, "GET, PUT, PATCH, DELETE"),
        },
        Target::Increment(path) => match *method {
            Method::POST => increment::increment(node, &path, request, payload).await,
            _ => return method_not_allowed(method, "POST"),
        },
        Target::BatchGet(collection) => match *method {
            Method::POST => batch::batch_get(node, &collection, request, payload).await,
            _ => return method_not_allowed(method, "POST"),
        },
    };
    result.unwrap_or_else(|err| err.error_response())
}

/// 405 with the methods the path allows, in `Allow` and in the problem's detail.
fn method_not_allowed(method: &Method, allowed: &'static str) -> HttpResponse {
    let mut response = ApiError::InvalidRequest(format!("{method} is not allowed here ({allowed})"))
        .error_response_with(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str) -> Option<String> {
        Target::parse(path).map(|t| match t {
            Target::Item(p) => format!("item {} {}", p.collection, p.id),
            Target::Increment(p) => format!("increment {} {}", p.collection, p.id),
            Target::BatchGet(c) => format!("batch {c}"),
        })
    }

    #[test]
    fn paths_are_told_apart_by_their_segments() {
        assert_eq!(parsed("/v1/products/p1").as_deref(), Some("item products p1"));
        assert_eq!(
            parsed("/v1/products/p1/increment").as_deref(),
            Some("increment products p1")
        );
        assert_eq!(
            parsed("/v1/products/batch-get").as_deref(),
            Some("batch products")
        );
        assert_eq!(parsed("/v1/products/a%3Ab").as_deref(), Some("item products a:b"));
        for none in [
            "/v1/",
            "/v1/products",
            "/v1/products/",
            "/v1//p1",
            "/v1/products/p1/",
            "/v1/products/p1/other",
            "/v1/products/p1/increment/x",
            "/v2/products/p1",
            "/v1/products/%FF",
        ] {
            assert_eq!(parsed(none), None, "{none}");
        }
        // The label goes by the shape of the path alone.
        assert_eq!(label("/v1/products/p1/other"), None);
        assert_eq!(label("/v1/products/%FF"), Some(route::ITEM));
        assert_eq!(label("/v1/products/p1"), Some(route::ITEM));
        assert_eq!(label("/v1/products/p1/increment"), Some(route::INCREMENT));
        assert_eq!(label("/v1/products/batch-get"), Some(route::BATCH_GET));
    }
}
