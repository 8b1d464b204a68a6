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
use actix_web::http::Method;
use actix_web::{web, Error, HttpRequest, HttpResponse, ResponseError};

use super::error::{method_not_allowed, no_route};
use super::request::ItemPath;
use super::{batch, increment, items, route};
use crate::Node;

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
        return no_route(request);
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

#[cfg(test)]
mod tests {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use proptest::prelude::*;

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

    /// What a client encodes in a path segment: everything but the unreserved
    /// characters of RFC 3986.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');

    /// Strings with the characters that matter to the parser well represented.
    fn pathish() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "(/|%|%2F|%25|%FF|%C3|v1|batch-get|increment|[a-z0-9]){0,16}",
            "/v1/(/|%|%2F|%FF|%C3%A9|batch-get|increment|[a-z0-9.:_-]){0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any path parses or does not; nothing panics, and the route label (taken
        /// without decoding) names the shape the parser found.
        #[test]
        fn any_path_parses_or_not_and_the_label_agrees(path in pathish()) {
            let label = label(&path);
            match Target::parse(&path) {
                Some(Target::Item(_)) => prop_assert_eq!(label, Some(route::ITEM)),
                Some(Target::Increment(_)) => prop_assert_eq!(label, Some(route::INCREMENT)),
                Some(Target::BatchGet(_)) => prop_assert_eq!(label, Some(route::BATCH_GET)),
                None => prop_assert!(label.is_none() || path.contains('%'), "{:?}", label),
            }
        }

        /// A collection and an id, whatever their characters, percent-encoded into a
        /// path as a client would, come back out unchanged: as an item, as its
        /// increment, and as a collection's batch-get.
        #[test]
        fn encoded_segments_come_back_as_they_went_in(
            collection in "\\PC{1,24}",
            id in "\\PC{1,24}",
        ) {
            let (c, i) = (
                utf8_percent_encode(&collection, SEGMENT).to_string(),
                utf8_percent_encode(&id, SEGMENT).to_string(),
            );
            let item = format!("/v1/{c}/{i}");
            match Target::parse(&item) {
                Some(Target::Item(p)) => {
                    prop_assert_eq!(&p.collection, &collection);
                    prop_assert_eq!(&p.id, &id);
                }
                Some(Target::BatchGet(name)) => {
                    prop_assert_eq!(id.as_str(), "batch-get");
                    prop_assert_eq!(&name, &collection);
                }
                _ => prop_assert!(false, "{item} did not parse"),
            }
            match Target::parse(&format!("{item}/increment")) {
                Some(Target::Increment(p)) => {
                    prop_assert_eq!(&p.collection, &collection);
                    prop_assert_eq!(&p.id, &id);
                }
                _ => prop_assert!(false, "{item}/increment did not parse"),
            }
            for longer in [format!("{item}/other"), format!("{item}/increment/x"), format!("{item}/")] {
                let parsed = Target::parse(&longer);
                prop_assert!(parsed.is_none(), "{} parsed", longer);
            }
        }
    }
}
