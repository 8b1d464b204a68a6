//! Every error case answers problem+json with its stable type and status, and a
//! rejected write leaves the item as it was.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, Client, Reply, Store, TestApp};

async fn raw(app: &TestApp, method: Method, path: &str, content_type: &str, body: &str) -> Reply {
    let mut client = Client::new();
    let mut request = app
        .request(method, path)
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(id) = &client.session_id {
        request = request.header("x-session-id", id);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    client.token = None;
    Reply {
        status,
        headers,
        body,
    }
}

/// The item's version and fields as the origin has them, read by a new session.
async fn state(app: &TestApp, path: &str) -> (u64, serde_json::Value) {
    let reply = Client::new().get(app, path).await;
    (reply.version(), reply.body)
}

#[actix_web::test]
async fn bad_writes_are_rejected_with_their_problem_type_and_write_nothing() {
    let store = Store::new();
    let mut settings = crate::helpers::settings(&store.path, "");
    settings.server.max_body_bytes = 1024;
    let app = crate::helpers::spawn_with(&settings);
    let before = state(&app, "/v1/products/p1").await;
    let long_id = "x".repeat(129);
    let cases: Vec<(Method, String, &str, String, u16, &str)> = vec![
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            "{\"name\": ".into(),
            400,
            "malformed-json",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            "[1, 2]".into(),
            400,
            "not-an-object",
        ),
        (
            Method::PUT,
            "/v1/nothing/p1".into(),
            "application/json",
            "{}".into(),
            404,
            "unknown-collection",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            r#"{"colour": "red"}"#.into(),
            422,
            "unknown-field",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            r#"{"stock": "many"}"#.into(),
            422,
            "wrong-type",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            r#"{"stock": -3}"#.into(),
            422,
            "out-of-range",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            r#"{"id": "p2"}"#.into(),
            422,
            "id-mismatch",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "application/json",
            format!(r#"{{"description": "{}"}}"#, "d".repeat(2000)),
            413,
            "body-too-large",
        ),
        (
            Method::PUT,
            "/v1/products/p1".into(),
            "text/plain",
            r#"{"name": "x"}"#.into(),
            415,
            "unsupported-media-type",
        ),
        (
            Method::PUT,
            "/v1/products/bad%20id".into(),
            "application/json",
            "{}".into(),
            400,
            "invalid-id",
        ),
        (
            Method::PUT,
            format!("/v1/products/{long_id}"),
            "application/json",
            "{}".into(),
            400,
            "invalid-id",
        ),
        (
            Method::PATCH,
            "/v1/products/p1".into(),
            "application/merge-patch+json",
            r#"{"price": "free"}"#.into(),
            422,
            "wrong-type",
        ),
        (
            Method::PATCH,
            "/v1/products/p1".into(),
            "application/merge-patch+json",
            r#"{"stock": 9223372036854775808}"#.into(),
            422,
            "unrepresentable-value",
        ),
        (
            Method::PATCH,
            "/v1/products/p1".into(),
            "application/merge-patch+json",
            r#"{"tags": {"\u0000": 1}}"#.into(),
            422,
            "unrepresentable-value",
        ),
        (
            Method::POST,
            "/v1/products/p1/increment".into(),
            "application/json",
            r#"{"field": "stock"}"#.into(),
            400,
            "invalid-request",
        ),
        (
            Method::POST,
            "/v1/products/p1/increment".into(),
            "application/json",
            r#"{"field": "name", "by": 1}"#.into(),
            422,
            "wrong-type",
        ),
        (
            Method::POST,
            "/v1/products/p1/increment".into(),
            "application/json",
            r#"{"field": "stock", "by": -1000}"#.into(),
            409,
            "bound-crossed",
        ),
        (
            Method::POST,
            "/v1/products/p404/increment".into(),
            "application/json",
            r#"{"field": "stock", "by": 1}"#.into(),
            404,
            "not-found",
        ),
    ];
    for (method, path, content_type, body, status, problem) in cases {
        let reply = raw(&app, method.clone(), &path, content_type, &body).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{method} {path} {body:.60}: {}",
            reply.body
        );
        assert_eq!(reply.problem(), problem, "{method} {path}");
        assert_eq!(reply.body["status"], status);
        assert_eq!(
            reply.header("x-request-id").len(),
            36,
            "every answer names its request id"
        );
    }
    assert_eq!(
        state(&app, "/v1/products/p1").await,
        before,
        "no rejected request changed the item"
    );
    assert_eq!(Client::new().get(&app, "/v1/products/p404").await.status, 404);
}

#[actix_web::test]
async fn conditional_writes_follow_if_match() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let mut user = Client::new();
    let current = user.get(&app, "/v1/products/p2").await;
    let etag = current.header("etag").to_owned();

    let stale = app
        .request(Method::PATCH, "/v1/products/p2")
        .header("content-type", "application/merge-patch+json")
        .header("if-match", "\"999\"")
        .body(r#"{"price": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["type"], "urn:problem:edgecache:precondition-failed");
    assert_eq!(body["current_version"], current.version());

    let ok = app
        .request(Method::PATCH, "/v1/products/p2")
        .header("content-type", "application/merge-patch+json")
        .header("if-match", &etag)
        .body(r#"{"price": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let create_only = |id: &str| {
        app.request(Method::PUT, &format!("/v1/products/{id}"))
            .header("content-type", "application/json")
            .header("if-none-match", "*")
            .body(r#"{"name": "new"}"#)
            .send()
    };
    assert_eq!(create_only("p-new").await.unwrap().status(), 201);
    assert_eq!(
        create_only("p-new").await.unwrap().status(),
        412,
        "create-only on an existing item"
    );
    let garbage = app
        .request(Method::DELETE, "/v1/products/p2")
        .header("if-match", "W/\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    assert_eq!(state(&app, "/v1/products/p2").await.1["price"], 1.0);
}

#[actix_web::test]
async fn bad_session_headers_are_rejected() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let mut alice = Client::new();
    alice.patch(&app, "/v1/products/p1", json!({"price": 20})).await;
    let token = alice.token.clone().unwrap();
    let alice_id = alice.session_id.clone().unwrap();

    let mut tampered = token.clone().into_bytes();
    let at = token.find('.').unwrap() + 6;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let cases = [
        (Some(alice_id.as_str()), Some(tampered.as_str()), "token-tampered"),
        (Some("mallory"), Some(token.as_str()), "token-foreign"),
        (Some(alice_id.as_str()), Some("not-a-token"), "token-malformed"),
        (
            Some(alice_id.as_str()),
            Some(&*token.replacen("v2.dev.", "v2.other.", 1)),
            "token-unknown-key",
        ),
        (None, Some(token.as_str()), "token-without-session"),
        (Some("bad id!"), None, "invalid-session-id"),
    ];
    for (id, token, problem) in cases {
        let mut request = app.request(Method::GET, "/v1/products/p1");
        if let Some(id) = id {
            request = request.header("x-session-id", id);
        }
        if let Some(token) = token {
            request = request.header("x-session-token", token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "{problem}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["type"], format!("urn:problem:edgecache:{problem}"));
    }
    // The genuine token still works.
    assert_eq!(alice.get(&app, "/v1/products/p1").await.body["price"], 20.0);
}

#[actix_web::test]
async fn a_write_the_origin_cannot_take_is_503_and_nothing_is_written() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let before = state(&app, "/v1/products/p3").await;
    // Another process holds the store's write lock past the node's busy timeout.
    let locker = rusqlite::Connection::open(&store.path).unwrap();
    locker
        .execute_batch("BEGIN IMMEDIATE; UPDATE meta SET position = position;")
        .unwrap();
    let reply = Client::new()
        .patch(&app, "/v1/products/p3", json!({"name": "renamed"}))
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.problem(), "origin-unavailable");
    assert_eq!(reply.header("retry-after"), "1");
    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(state(&app, "/v1/products/p3").await, before);
}

#[actix_web::test]
async fn batch_get_is_bounded_and_reports_missing_items() {
    let store = Store::new();
    let app = spawn_app(&store, "[api]\nmax_batch = 3\n");
    let mut user = Client::new();
    let reply = user
        .send(
            &app,
            Method::POST,
            "/v1/products/batch-get",
            Some(("application/json", json!({"ids": ["p1", "p2", "zz"]}))),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(reply.body["items"][1]["id"], "p2");
    assert_eq!(reply.body["missing"], json!(["zz"]));
    let too_many = user
        .send(
            &app,
            Method::POST,
            "/v1/products/batch-get",
            Some(("application/json", json!({"ids": ["a", "b", "c", "d"]}))),
        )
        .await;
    assert_eq!(too_many.status, 413);
    assert_eq!(too_many.problem(), "batch-too-large");
}

#[actix_web::test]
async fn paths_and_methods_outside_the_api_are_named_as_such() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    for (method, path, status, problem, allow) in [
        (
            Method::POST,
            "/v1/products/p1",
            405,
            "method-not-allowed",
            Some("GET, PUT, PATCH, DELETE"),
        ),
        (
            Method::GET,
            "/v1/products/p1/increment",
            405,
            "method-not-allowed",
            Some("POST"),
        ),
        (
            Method::GET,
            "/v1/products/batch-get",
            405,
            "method-not-allowed",
            Some("POST"),
        ),
        (Method::GET, "/v1/products", 404, "no-route", None),
        (Method::GET, "/v1/products/p1/", 404, "no-route", None),
        (Method::GET, "/v1/products/p1/stock", 404, "no-route", None),
        (Method::GET, "/v1//p1", 404, "no-route", None),
        (Method::GET, "/v2/products/p1", 404, "no-route", None),
        (
            Method::GET,
            "/v1/products/p1?explain=yes",
            400,
            "invalid-request",
            None,
        ),
    ] {
        let reply = raw(&app, method.clone(), path, "application/json", "{}").await;
        assert_eq!(reply.status.as_u16(), status, "{method} {path}: {}", reply.body);
        assert_eq!(reply.problem(), problem, "{method} {path}");
        assert_eq!(
            reply.headers.get("allow").map(|v| v.to_str().unwrap()),
            allow,
            "{method} {path}"
        );
    }
    // A percent-encoded id is the id it encodes.
    let plain = Client::new().get(&app, "/v1/products/p1").await;
    let encoded = Client::new().get(&app, "/v1/products/%70%31").await;
    assert_eq!(encoded.status, 200);
    assert_eq!(encoded.body, plain.body);
    // `explain=false` and other parameters are fine.
    let reply = Client::new().get(&app, "/v1/products/p1?explain=false&x=1").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.get("_explain").is_none());
}
