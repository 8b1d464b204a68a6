//! `Authorization: Bearer <token>` for the operator routes (`/admin/...`, and
//! `/metrics` when it has a token): the token is kept as its SHA-256 digest and
//! compared in constant time (digests of both sides, so neither its bytes nor its
//! length leak through timing); a refusal is 401 problem+json with `WWW-Authenticate`.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{problem, ProblemType};

/// A configured bearer token, as its digest.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl BearerToken {
    pub fn new(token: &SecretString) -> Self {
        Self(Sha256::digest(token.expose_secret().as_bytes()).into())
    }

    /// Whether `headers` carry this token. `Err` is the 401 answer (boxed: the
    /// refusal is the rare path), its challenge naming `realm`; `what` says which
    /// token is wanted.
    pub fn check(&self, headers: &HeaderMap, realm: &str, what: &str) -> Result<(), Box<HttpResponse>> {
        let presented = bearer(headers);
        if presented.is_some_and(|token| self.admits(token)) {
            return Ok(());
        }
        let (detail, challenge) = match presented {
            None => (
                format!("this route needs an `Authorization: Bearer <{what}>` header"),
                format!("Bearer realm=\"{realm}\""),
            ),
            Some(_) => (
                format!("the bearer token is not this node's {what}"),
                format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
            ),
        };
        tracing::warn!(realm, "request refused: {detail}");
        let mut response = problem(
            StatusCode::UNAUTHORIZED,
            ProblemType::Unauthorized,
            "Unauthorized",
            detail,
        )
        .to_actix_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        Err(Box::new(response))
    }

    /// Whether `presented` is this token, in constant time.
    pub(super) fn admits(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }

    /// A value derived from the token for `purpose` (SHA-256 of the purpose and the
    /// token's digest): it proves knowledge of the token without being it.
    pub(super) fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(purpose);
        hasher.update(self.0);
        hasher.finalize().into()
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive); `None` when absent or of another scheme.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_configured_token_is_admitted() {
        let token = BearerToken::new(&SecretString::from("the-admin-token-of-at-least-32-bytes"));
        assert!(token.admits("the-admin-token-of-at-least-32-bytes"));
        assert!(!token.admits("the-admin-token-of-at-least-32-byte"));
        assert!(!token.admits(""));
        let ok = headers("Bearer the-admin-token-of-at-least-32-bytes");
        assert!(token.check(&ok, "r", "admin token").is_ok());
        let refused = token
            .check(&headers("Bearer nope"), "r", "admin token")
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let challenge = refused.headers().get(header::WWW_AUTHENTICATE).unwrap();
        assert!(challenge.to_str().unwrap().contains("invalid_token"));
    }
}
