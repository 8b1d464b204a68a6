//! Conditional GET: `If-None-Match` answers 304 only when the version the node would
//! serve to the session is the client's — never for a version older than the
//! session's need.

use serde_json::json;

use crate::helpers::{spawn_app, Client, Reply, Store, TestApp, LONG_TTL};

async fn get_if(user: &mut Client, app: &TestApp, path: &str, tags: &str) -> Reply {
    user.send_with(
        app.request(reqwest::Method::GET, path),
        None,
        &[("if-none-match", tags)],
    )
    .await
}

#[actix_web::test]
async fn a_matching_if_none_match_answers_304_with_the_headers_of_a_200() {
    let store = Store::new();
    let app = spawn_app(&store, LONG_TTL);
    let mut user = Client::new();
    assert_eq!(
        user.put(&app, "/v1/articles/a1", json!({"title": "one"}))
            .await
            .status,
        201
    );
    let ok = user.get(&app, "/v1/articles/a1").await;
    assert_eq!(ok.header("etag"), "\"1\"");

    for tags in ["\"1\"", "W/\"1\"", "\"9\", \"1\"", "*"] {
        let token_before = user.token.clone();
        let not = get_if(&mut user, &app, "/v1/articles/a1", tags).await;
        assert_eq!(not.status, 304, "{tags}");
        assert_eq!(not.body, serde_json::Value::Null, "no body");
        assert_eq!(not.header("etag"), "\"1\"");
        assert_eq!(not.cache_status(), "hit");
        assert!(!not.header("age").is_empty());
        assert_eq!(not.header("cache-control"), "private, no-cache");
        assert!(
            !not.header("x-session-token").is_empty(),
            "the session's token, as on a 200"
        );
        assert!(token_before.is_some());
    }
    let projected = get_if(&mut user, &app, "/v1/articles/a1?fields=title", "\"1\"").await;
    assert_eq!(projected.status, 304, "a projection has the document's ETag");
    assert_eq!(app.node.metrics().not_modified.get(), 5);

    let other = get_if(&mut user, &app, "/v1/articles/a1", "\"2\"").await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body["title"], "one");

    // After a write the client's version is old: 200 with the newer body.
    let patched = user.patch(&app, "/v1/articles/a1", json!({"title": "two"})).await;
    assert_eq!(patched.header("etag"), "\"2\"");
    let newer = get_if(&mut user, &app, "/v1/articles/a1", "\"1\"").await;
    assert_eq!(newer.status, 200);
    assert_eq!(newer.header("etag"), "\"2\"");
    assert_eq!(newer.body["title"], "two");

    // Absent: no current representation, so even `*` does not match.
    let absent = get_if(&mut Client::new(), &app, "/v1/articles/none", "*").await;
    assert_eq!(absent.status, 404);
    let malformed = get_if(&mut Client::new(), &app, "/v1/articles/a1", "1").await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.problem(), "invalid-request");
}

#[actix_web::test]
async fn never_304_for_a_version_older_than_the_session_needs() {
    // Two nodes on one store, no change feed between them: B keeps version 1 for
    // the whole test unless a session's need sends it to the store.
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    let b = spawn_app(&store, LONG_TTL);
    let mut user = Client::new();
    assert_eq!(
        user.put(&a, "/v1/articles/a2", json!({"title": "v1"}))
            .await
            .status,
        201
    );
    assert_eq!(user.get(&b, "/v1/articles/a2").await.header("etag"), "\"1\"");
    let wrote = user.patch(&a, "/v1/articles/a2", json!({"title": "v2"})).await;
    assert_eq!(wrote.header("etag"), "\"2\"");

    // Another session is served B's cached version 1: its 304 is right for it.
    let stranger = get_if(&mut Client::new(), &b, "/v1/articles/a2", "\"1\"").await;
    assert_eq!(stranger.status, 304, "B still holds version 1");

    // The writer holds version 1 too, but needs its write: B reads past its copy.
    let mine = get_if(&mut user, &b, "/v1/articles/a2", "\"1\"").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.header("etag"), "\"2\"");
    assert_eq!(mine.body["title"], "v2");
    assert_eq!(mine.cache_status(), "fwd=miss; detail=session-watermark; stored");
    // Now it holds version 2, and B serves it version 2: 304.
    let again = get_if(&mut user, &b, "/v1/articles/a2", "\"2\"").await;
    assert_eq!(again.status, 304);
}
