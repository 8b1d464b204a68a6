//! The browser's way into the admin routes: a small form that takes the admin token
//! once and answers with a cookie (`HttpOnly`, `SameSite=Strict`, path `/admin`,
//! `Secure` over HTTPS). The cookie holds its expiry and an HMAC-SHA256 of it under a
//! key derived from the token — not the token — checked in constant time, so the
//! node refuses it after 8 hours whatever the browser keeps (a copied cookie does not
//! outlive its expiry; rotating the token ends every cookie at once).
//! `Authorization: Bearer` keeps working beside it. `SameSite=Strict` keeps other sites' pages from riding on it, and it
//! opens only `GET`s: a change (`POST /admin/purge`) wants the bearer token.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::bearer::BearerToken;

/// The cookie's name.
pub const COOKIE: &str = "edgecache_admin";

/// How long the cookie lasts.
const COOKIE_MAX_AGE_SECS: u64 = 8 * 3600;

/// What the cookie's key is derived for.
const PURPOSE: &[u8] = b"edgecache admin cookie v2\0";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch, now.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The tag of a cookie that expires at `expires` (Unix seconds).
fn tag(token: &BearerToken, expires: u64) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&token.derive(PURPOSE)).expect("HMAC takes any key length");
    mac.update(&expires.to_be_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The cookie value that admits to the admin routes of a node with `token` until
/// `expires` (Unix seconds): `<expires>.<tag>`.
pub fn cookie_value(token: &BearerToken, expires: u64) -> String {
    format!("{expires}.{}", tag(token, expires))
}

/// Whether `headers` carry an admin cookie of `token` that has not expired.
pub fn has_cookie(headers: &HeaderMap, token: &BearerToken) -> bool {
    let now = now_secs();
    headers
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .filter_map(|(_, value)| value.split_once('.'))
        .filter_map(|(expires, presented)| Some((expires.parse::<u64>().ok()?, presented)))
        // An expiry further out than a fresh cookie's is not one the node issued.
        .filter(|(expires, _)| *expires > now && *expires <= now + COOKIE_MAX_AGE_SECS)
        .any(|(expires, presented)| bool::from(presented.as_bytes().ct_eq(tag(token, expires).as_bytes())))
}

/// The `Set-Cookie` that logs a browser in (`secure`: the request came over HTTPS).
pub fn set_cookie(token: &BearerToken, secure: bool) -> String {
    format!(
        "{COOKIE}={}; Path=/admin; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Strict{}",
        cookie_value(token, now_secs() + COOKIE_MAX_AGE_SECS),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` that logs it out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict")
}

/// Whether the request was made by a browser navigating (it accepts HTML): it gets
/// the form instead of problem+json when refused.
pub fn wants_html(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// A fresh nonce for a page's `<style>`.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// An HTML answer with the headers every admin page carries: a Content-Security-Policy
/// that allows nothing but the page's own `<style>` (by `nonce`) and forms posted to
/// the node itself, no caching, no sniffing, no referrer.
pub fn html(status: StatusCode, nonce: &str, body: String) -> HttpResponse {
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body);
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// The log-in form, answered with `status`; `failed` says the last token was wrong.
pub fn form(status: StatusCode, failed: bool) -> HttpResponse {
    let nonce = nonce();
    let message = if failed {
        r#"<p class="error" role="alert">That is not this node's admin token.</p>"#
    } else {
        ""
    };
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>edgecache · log in</title><style nonce="{nonce}">:root{{color-scheme:light dark}}body{{font:16px/1.4 system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}}input,button{{font:inherit;width:100%;box-sizing:border-box;margin:.25rem 0;padding:.4rem}}.error{{color:#d62728}}</style></head><body><h1>edgecache dashboard</h1>{message}<form id="login" method="post" action="/admin/login"><label for="token">Admin token</label><input id="token" name="token" type="password" autocomplete="current-password" required><button type="submit">Log in</button></form></body></html>"#
    );
    let mut response = html(status, &nonce, body);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"edgecache-admin\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue, COOKIE as COOKIE_HEADER};
    use secrecy::SecretString;

    use super::*;

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE_HEADER,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={value}; c=d")).unwrap(),
        );
        headers
    }

    #[test]
    fn only_an_unexpired_cookie_signed_for_the_token_admits() {
        let token = BearerToken::new(&SecretString::from("the-admin-token-of-at-least-32-bytes"));
        let other = BearerToken::new(&SecretString::from("another-admin-token-of-32-bytes-or-more"));
        let fresh = now_secs() + 3600;
        let value = cookie_value(&token, fresh);
        assert!(!value.contains("admin-token"), "the cookie is not the token");
        let headers = with_cookie(&value);
        assert!(has_cookie(&headers, &token));
        assert!(!has_cookie(&headers, &other), "signed for another token");
        assert!(!has_cookie(&HeaderMap::new(), &token));
        // Expired, or its expiry changed (the tag no longer matches), or further out
        // than the node ever issues.
        assert!(!has_cookie(
            &with_cookie(&cookie_value(&token, now_secs() - 1)),
            &token
        ));
        let (_, tag) = value.split_once('.').unwrap();
        assert!(!has_cookie(
            &with_cookie(&format!("{}.{tag}", fresh + 60)),
            &token
        ));
        let far = now_secs() + COOKIE_MAX_AGE_SECS + 3600;
        assert!(!has_cookie(&with_cookie(&cookie_value(&token, far)), &token));
        assert!(!has_cookie(&with_cookie("garbage"), &token));
        let set = set_cookie(&token, false);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"));
        assert!(set_cookie(&token, true).ends_with("; Secure"));
        let issued = set.split_once('=').unwrap().1.split_once(';').unwrap().0;
        assert!(
            has_cookie(&with_cookie(issued), &token),
            "what the log-in sets admits"
        );
    }
}
