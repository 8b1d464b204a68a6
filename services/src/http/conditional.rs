//! Conditional GET (RFC 9110 §13.1.2): `If-None-Match` with the ETag of the version
//! the node would serve answers 304 Not Modified, without a body.
//!
//! The condition is evaluated after the read, on what the read would answer: that
//! already satisfies the session's need (its own writes, the versions it read), so a
//! client holding a version older than the session needs is never told it is current.
//! The 304 keeps every header the 200 would carry (ETag, Cache-Status, Age,
//! Cache-Control, and the session's token, added by the caller).

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use edgecache_actors::Version;

use super::ApiError;

/// What an `If-None-Match` header asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfNoneMatch {
    /// `*`: any current representation.
    Any,
    /// The opaque tags of the listed entity tags (weak or strong alike: the
    /// comparison is weak).
    Tags(Vec<String>),
}

impl IfNoneMatch {
    /// The request's condition; `None` without the header. Several header lines form
    /// one list.
    pub fn of(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut tags = Vec::new();
        let mut any = false;
        let mut present = false;
        for value in headers.get_all(header::IF_NONE_MATCH) {
            present = true;
            let text = value.to_str().map_err(|_| invalid("is not visible ASCII"))?;
            if text.trim() == "*" {
                any = true;
            } else {
                parse_tags(text, &mut tags)?;
            }
        }
        Ok(match (present, any) {
            (false, _) => None,
            (true, true) if tags.is_empty() => Some(IfNoneMatch::Any),
            (true, true) => return Err(invalid("mixes * with entity tags")),
            (true, false) => Some(IfNoneMatch::Tags(tags)),
        })
    }

    /// Whether the condition fails for a current representation at `version`: `*`,
    /// or one of the tags weakly equal to its ETag `"<version>"`.
    pub fn matches(&self, version: Version) -> bool {
        match self {
            IfNoneMatch::Any => true,
            IfNoneMatch::Tags(tags) => {
                let mut digits = itoa::Buffer::new();
                let current = digits.format(version.0);
                tags.iter().any(|tag| tag == current)
            }
        }
    }
}

fn invalid(why: &str) -> ApiError {
    ApiError::InvalidRequest(format!(
        "If-None-Match {why}: it must be \"*\" or a list of entity tags (\"3\", W/\"3\")"
    ))
}

/// Appends the opaque tags of a `#entity-tag` list to `tags`. An opaque tag may hold
/// commas, so the list is scanned quote by quote rather than split.
fn parse_tags(text: &str, tags: &mut Vec<String>) -> Result<(), ApiError> {
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(());
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        let quoted = rest
            .strip_prefix('"')
            .ok_or_else(|| invalid("holds something that is not an entity tag"))?;
        let end = quoted
            .find('"')
            .ok_or_else(|| invalid("holds an unterminated entity tag"))?;
        let opaque = &quoted[..end];
        if !opaque.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
            return Err(invalid("holds a character not allowed in an entity tag"));
        }
        tags.push(opaque.to_owned());
        rest = &quoted[end + 1..];
        let next = rest.trim_start_matches([' ', '\t']);
        if !next.is_empty() && !next.starts_with(',') {
            return Err(invalid("lists entity tags without commas between them"));
        }
        rest = next;
    }
}

/// The 304 of a 200 read response: its headers but for the body's, no body.
pub fn not_modified(ok: &HttpResponse) -> HttpResponse {
    let mut response = HttpResponse::new(StatusCode::NOT_MODIFIED);
    let headers = response.headers_mut();
    for (name, value) in ok.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn parsed(values: &[&str]) -> Result<Option<IfNoneMatch>, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        IfNoneMatch::of(&headers)
    }

    fn tags(list: &[&str]) -> Option<IfNoneMatch> {
        Some(IfNoneMatch::Tags(list.iter().map(|t| t.to_string()).collect()))
    }

    #[test]
    fn lists_weak_tags_and_star() {
        assert_eq!(parsed(&[]).unwrap(), None);
        assert_eq!(parsed(&["*"]).unwrap(), Some(IfNoneMatch::Any));
        assert_eq!(parsed(&["\"3\""]).unwrap(), tags(&["3"]));
        assert_eq!(parsed(&["W/\"3\", \"4\""]).unwrap(), tags(&["3", "4"]));
        assert_eq!(parsed(&["\"a,b\",W/\"\""]).unwrap(), tags(&["a,b", ""]));
        assert_eq!(parsed(&["\"1\"", " \"2\" ,"]).unwrap(), tags(&["1", "2"]));
        for bad in ["3", "\"3", "\"3\" \"4\"", "w/\"3\"", "*, \"3\"", "\"a b\""] {
            assert!(parsed(&[bad]).is_err(), "{bad}");
        }
        assert!(parsed(&["*", "\"3\""]).is_err());
    }

    #[test]
    fn the_comparison_is_weak_and_by_version() {
        let condition = parsed(&["W/\"7\", \"9\""]).unwrap().unwrap();
        assert!(condition.matches(Version(7)));
        assert!(condition.matches(Version(9)));
        assert!(!condition.matches(Version(8)));
        assert!(IfNoneMatch::Any.matches(Version(1)));
        assert!(!parsed(&["\"07\""]).unwrap().unwrap().matches(Version(7)));
    }

    #[test]
    fn a_304_keeps_the_headers_but_the_body_s() {
        let ok = HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::ETAG, "\"3\""))
            .insert_header(("cache-status", "edge-1; hit"))
            .body("{}");
        let not = not_modified(&ok);
        assert_eq!(not.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not.headers().get(header::ETAG).unwrap(), "\"3\"");
        assert_eq!(not.headers().get("cache-status").unwrap(), "edge-1; hit");
        assert!(not.headers().get(header::CONTENT_TYPE).is_none());
    }
}
