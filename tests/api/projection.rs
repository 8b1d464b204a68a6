//! Field projection (`?fields=`): only the named fields are answered, and only their
//! classes decide the tiers — a product read without its strict `stock` does not read
//! the primary. (With the primary stopped: `tests/failover`.)

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, Client, Store};

#[actix_web::test]
async fn a_projection_answers_only_its_fields_and_skips_the_strict_read() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let mut user = Client::new();
    let put = user
        .put(
            &app,
            "/v1/products/cup",
            json!({"name": "Cup", "description": "A cup.", "price": 3.5, "stock": 7, "tags": ["kitchen"]}),
        )
        .await;
    assert_eq!(put.status, 201);
    let strict = || app.node.metrics().strict_reads.get();

    let before = strict();
    let page = Client::new()
        .get(&app, "/v1/products/cup?fields=name,description")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.body,
        json!({"id": "cup", "name": "Cup", "description": "A cup."})
    );
    assert_eq!(page.header("etag"), "\"1\"", "the document's ETag");
    assert_eq!(
        page.cache_status(),
        "hit; detail=\"fields=description,name\"",
        "Cache-Status names the projection"
    );
    assert_eq!(strict(), before, "no strict field asked: the primary is not read");

    let whole = Client::new().get(&app, "/v1/products/cup").await;
    assert_eq!(whole.body["stock"], 7);
    assert_eq!(whole.cache_status(), "hit; detail=strict-from-primary");
    assert_eq!(strict(), before + 1, "a whole read reads stock from the primary");

    let stock = Client::new()
        .get(&app, "/v1/products/cup?fields=stock&explain=true")
        .await;
    assert_eq!(stock.body["stock"], 7);
    assert_eq!(strict(), before + 2, "a projection with a strict field reads it");
    let explained = &stock.body["_explain"];
    assert_eq!(
        explained["projection"],
        json!({"fields": ["stock"], "reads_primary": true})
    );
    let fields: Vec<&str> = explained["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["stock"], "explain covers the projected fields only");
    assert!(stock.body.get("name").is_none());
}

#[actix_web::test]
async fn unknown_empty_and_repeated_field_lists() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    Client::new()
        .put(&app, "/v1/products/cup", json!({"name": "Cup", "stock": 1}))
        .await;

    let unknown = Client::new()
        .get(&app, "/v1/products/cup?fields=name,colour")
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.problem(), "unknown-projection-field");
    assert!(unknown.body["detail"].as_str().unwrap().contains("colour"));

    for empty in ["?fields=", "?fields=,", "?fields=&fields="] {
        let reply = Client::new().get(&app, &format!("/v1/products/cup{empty}")).await;
        assert_eq!(reply.status, 400, "{empty}");
        assert_eq!(reply.problem(), "invalid-request");
    }

    // Repeated names count once; names may be spread over parameters and encoded;
    // `id` is always there and may be named.
    for query in [
        "?fields=name,name",
        "?fields=name&fields=name",
        "?fields=id,name",
        "?fields=name%2Cid",
    ] {
        let reply = Client::new().get(&app, &format!("/v1/products/cup{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        assert_eq!(reply.body, json!({"id": "cup", "name": "Cup"}), "{query}");
    }
    // A projected field the document lacks is left out, as in a whole read.
    let missing = Client::new()
        .get(&app, "/v1/products/cup?fields=description")
        .await;
    assert_eq!(missing.body, json!({"id": "cup"}));
    // Absent item: 404 as without a projection.
    let absent = Client::new().get(&app, "/v1/products/nope?fields=name").await;
    assert_eq!(absent.status, 404);
}

#[actix_web::test]
async fn a_batch_get_projects_every_item() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    for (id, name) in [("a", "A"), ("b", "B")] {
        Client::new()
            .put(
                &app,
                &format!("/v1/products/{id}"),
                json!({"name": name, "stock": 2, "price": 1.0}),
            )
            .await;
    }
    let before = app.node.metrics().strict_reads.get();
    let batch = Client::new()
        .send(
            &app,
            Method::POST,
            "/v1/products/batch-get?fields=name",
            Some(("application/json", json!({"ids": ["a", "zz", "b"]}))),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(
        batch.body,
        json!({"items": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}], "missing": ["zz"]})
    );
    assert_eq!(app.node.metrics().strict_reads.get(), before);
    let unknown = Client::new()
        .send(
            &app,
            Method::POST,
            "/v1/products/batch-get?fields=nope",
            Some(("application/json", json!({"ids": ["a"]}))),
        )
        .await;
    assert_eq!(unknown.status, 422);
    assert_eq!(unknown.problem(), "unknown-projection-field");
}
