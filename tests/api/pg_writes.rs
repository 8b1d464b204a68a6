//! The PostgreSQL write path folded into one statement per write (issue 18): every
//! answer it gave before — preconditions, absent items, tombstones, creation,
//! bounds, keyed replays — it still gives, and a merge patch of an object into a
//! `json` field still merges recursively (RFC 7396).

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_with, unique, Client, Reply, TestApp};
use crate::pg::cluster;

/// A collection with a string, a bounded integer and a `json` field.
fn catalogue(name: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
[collections.{name}.fields]
label = {{ type = "string" }}
stock = {{ type = "integer", min = 0 }}
attrs = {{ type = "json" }}
"#
    )
}

async fn write(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let content = if method == Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    Client::new()
        .send_with(app.request(method, path), body.map(|b| (content, b)), headers)
        .await
}

/// The item as PostgreSQL has it, read by a node with nothing cached.
async fn stored(settings: &edgecache_config::Settings, path: &str) -> Reply {
    let fresh = spawn_with(settings);
    let reply = Client::new().get(&fresh, path).await;
    fresh.stop().await;
    reply
}

#[actix_web::test]
async fn folded_writes_answer_preconditions_absent_items_and_tombstones_as_before() {
    let pg = cluster();
    let table = unique("fold").replace('-', "_");
    let settings = pg.settings(&catalogue(&table)).await;
    let node = spawn_with(&settings);
    let item = format!("/v1/{table}/cup");
    let put = |body| write(&node, Method::PUT, &item, Some(body), &[]);

    // PUT creates, then replaces; the version is computed by the statement.
    let created = put(json!({"label": "cup", "stock": 5})).await;
    assert_eq!((created.status.as_u16(), created.version()), (201, 1));
    let replaced = put(json!({"label": "mug", "stock": 4})).await;
    assert_eq!((replaced.status.as_u16(), replaced.version()), (200, 2));
    assert_eq!(replaced.body, json!({"id": "cup", "label": "mug", "stock": 4}));

    // Create-only on a live item, and a stale If-Match: 412 with the current version,
    // nothing written.
    let create_only = write(
        &node,
        Method::PUT,
        &item,
        Some(json!({"label": "x"})),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(create_only.status, 412, "{}", create_only.body);
    assert_eq!(create_only.body["current_version"], 2);
    let stale = write(
        &node,
        Method::PATCH,
        &item,
        Some(json!({"label": "x"})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(stale.status, 412, "{}", stale.body);
    assert_eq!(stale.body["current_version"], 2);
    let stale_put = write(
        &node,
        Method::PUT,
        &item,
        Some(json!({"label": "x"})),
        &[("if-match", "\"7\"")],
    )
    .await;
    assert_eq!(stale_put.status, 412, "{}", stale_put.body);

    // A merge patch at the right version: the named field changes, the others stay,
    // `null` clears.
    let patched = write(
        &node,
        Method::PATCH,
        &item,
        Some(json!({"label": "bowl", "attrs": [1, 2]})),
        &[("if-match", "\"2\"")],
    )
    .await;
    assert_eq!(
        (patched.status.as_u16(), patched.version()),
        (200, 3),
        "{}",
        patched.body
    );
    assert_eq!(
        patched.body,
        json!({"id": "cup", "label": "bowl", "stock": 4, "attrs": [1, 2]})
    );
    let cleared = write(&node, Method::PATCH, &item, Some(json!({"stock": null})), &[]).await;
    assert_eq!(
        cleared.body,
        json!({"id": "cup", "label": "bowl", "attrs": [1, 2]})
    );
    let put_at_version = write(
        &node,
        Method::PUT,
        &item,
        Some(json!({"label": "plate"})),
        &[("if-match", "\"4\"")],
    )
    .await;
    assert_eq!(
        (put_at_version.status.as_u16(), put_at_version.version()),
        (200, 5)
    );
    assert_eq!(
        stored(&settings, &item).await.body,
        json!({"id": "cup", "label": "plate"})
    );

    // Absent items: PATCH and DELETE 404; a PUT at a version 412.
    let absent = format!("/v1/{table}/nothing");
    assert_eq!(
        write(&node, Method::PATCH, &absent, Some(json!({"label": "x"})), &[])
            .await
            .status,
        404
    );
    assert_eq!(write(&node, Method::DELETE, &absent, None, &[]).await.status, 404);
    let versioned = write(
        &node,
        Method::PUT,
        &absent,
        Some(json!({"label": "x"})),
        &[("if-match", "\"3\"")],
    )
    .await;
    assert_eq!(versioned.status, 412);
    assert_eq!(versioned.body["current_version"], 0);

    // A tombstone: gone for PATCH, DELETE and increments; PUT (even create-only)
    // creates it again at the next version.
    assert_eq!(write(&node, Method::DELETE, &item, None, &[]).await.status, 204);
    assert_eq!(
        write(&node, Method::PATCH, &item, Some(json!({"label": "x"})), &[])
            .await
            .status,
        404
    );
    assert_eq!(write(&node, Method::DELETE, &item, None, &[]).await.status, 404);
    let increment = Client::new()
        .increment(&node, &item, json!({"field": "stock", "by": 1}))
        .await;
    assert_eq!(increment.status, 404);
    let again = write(
        &node,
        Method::PUT,
        &item,
        Some(json!({"label": "new", "stock": 1})),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(
        (again.status.as_u16(), again.version()),
        (201, 7),
        "{}",
        again.body
    );

    // Increments: one statement, bounds and versions as before.
    let mut c = Client::new();
    let up = c
        .increment(&node, &item, json!({"field": "stock", "by": 2}))
        .await;
    assert_eq!((up.status.as_u16(), up.body["stock"].as_i64()), (200, Some(3)));
    let crossed = c
        .increment(&node, &item, json!({"field": "stock", "by": -4}))
        .await;
    assert_eq!(crossed.status, 409);
    let not_integer = c
        .increment(&node, &item, json!({"field": "label", "by": 1}))
        .await;
    assert_eq!(not_integer.status, 422, "{}", not_integer.body);
    assert_eq!(stored(&settings, &item).await.version(), 8);
}

#[actix_web::test]
async fn a_merge_patch_of_an_object_into_a_json_field_merges_recursively_keyed_or_not() {
    let pg = cluster();
    let table = unique("merge").replace('-', "_");
    let settings = pg.settings(&catalogue(&table)).await;
    let node = spawn_with(&settings);
    let item = format!("/v1/{table}/box");
    let created = write(
        &node,
        Method::PUT,
        &item,
        Some(json!({"label": "box", "attrs": {"colour": "red", "size": {"w": 1, "h": 2}}})),
        &[],
    )
    .await;
    assert_eq!(created.status, 201);

    let patch = json!({"attrs": {"colour": null, "size": {"h": 3}, "new": true}});
    let merged = write(
        &node,
        Method::PATCH,
        &item,
        Some(patch.clone()),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    let want = json!({"id": "box", "label": "box", "attrs": {"size": {"w": 1, "h": 3}, "new": true}});
    assert_eq!(merged.body, want);
    assert_eq!(stored(&settings, &item).await.body, want);
    let stale = write(
        &node,
        Method::PATCH,
        &item,
        Some(patch.clone()),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(stale.status, 412);

    // Keyed: applied once, replayed after.
    let key_name = unique("merge-key");
    let key = [("idempotency-key", key_name.as_str())];
    let first = write(
        &node,
        Method::PATCH,
        &item,
        Some(json!({"attrs": {"n": 1}})),
        &key,
    )
    .await;
    assert_eq!(
        (first.status.as_u16(), first.version()),
        (200, 3),
        "{}",
        first.body
    );
    let second = write(
        &node,
        Method::PATCH,
        &item,
        Some(json!({"attrs": {"n": 1}})),
        &key,
    )
    .await;
    assert_eq!((second.status.as_u16(), second.version()), (200, 3));
    assert_eq!(second.header("idempotent-replayed"), "true");
    assert_eq!(second.body, first.body);
    assert_eq!(stored(&settings, &item).await.version(), 3);
    let absent = format!("/v1/{table}/none");
    let missing = write(
        &node,
        Method::PATCH,
        &absent,
        Some(json!({"attrs": {"n": 1}})),
        &[],
    )
    .await;
    assert_eq!(missing.status, 404);
}

#[actix_web::test]
async fn keyed_writes_replay_and_their_failures_leave_the_key_unused() {
    let pg = cluster();
    let table = unique("keyed").replace('-', "_");
    let settings = pg.settings(&catalogue(&table)).await;
    let node = spawn_with(&settings);
    let item = format!("/v1/{table}/jar");
    // Keys are global and outlive a run: each run uses its own.
    let run = unique("jar");
    let (put_key, patch_key, incr_key, delete_key) = (
        format!("{run}-put"),
        format!("{run}-patch"),
        format!("{run}-incr"),
        format!("{run}-delete"),
    );

    // A keyed PUT that creates, sent again: the record answers, 201 and version 1.
    let put = json!({"label": "jar", "stock": 1});
    let first = write(
        &node,
        Method::PUT,
        &item,
        Some(put.clone()),
        &[("idempotency-key", put_key.as_str())],
    )
    .await;
    let again = write(
        &node,
        Method::PUT,
        &item,
        Some(put.clone()),
        &[("idempotency-key", put_key.as_str())],
    )
    .await;
    assert_eq!((first.status.as_u16(), first.version()), (201, 1));
    assert_eq!((again.status.as_u16(), again.version()), (201, 1));
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.body, first.body);

    // A keyed write that fails its precondition changes nothing and records nothing:
    // the same request, once the precondition holds, applies.
    let stale = [("idempotency-key", patch_key.as_str()), ("if-match", "\"2\"")];
    let refused = write(&node, Method::PATCH, &item, Some(json!({"label": "pot"})), &stale).await;
    assert_eq!(refused.status, 412);
    let bumped = write(&node, Method::PUT, &item, Some(put.clone()), &[]).await;
    assert_eq!(bumped.version(), 2);
    let applied = write(&node, Method::PATCH, &item, Some(json!({"label": "pot"})), &stale).await;
    assert_eq!(
        (applied.status.as_u16(), applied.version()),
        (200, 3),
        "{}",
        applied.body
    );
    let replayed = write(&node, Method::PATCH, &item, Some(json!({"label": "pot"})), &stale).await;
    assert_eq!(
        (replayed.status.as_u16(), replayed.header("idempotent-replayed")),
        (200, "true")
    );

    // Keyed increments and deletes replay too; another request with a used key is 422.
    let incr = json!({"field": "stock", "by": 5});
    let path = format!("{item}/increment");
    let once = write(
        &node,
        Method::POST,
        &path,
        Some(incr.clone()),
        &[("idempotency-key", incr_key.as_str())],
    )
    .await;
    let twice = write(
        &node,
        Method::POST,
        &path,
        Some(incr.clone()),
        &[("idempotency-key", incr_key.as_str())],
    )
    .await;
    assert_eq!(
        (once.body["stock"].as_i64(), twice.body["stock"].as_i64()),
        (Some(6), Some(6))
    );
    let reused = write(
        &node,
        Method::POST,
        &path,
        Some(json!({"field": "stock", "by": 1})),
        &[("idempotency-key", incr_key.as_str())],
    )
    .await;
    assert_eq!(reused.status, 422);
    let deleted = write(
        &node,
        Method::DELETE,
        &item,
        None,
        &[("idempotency-key", delete_key.as_str())],
    )
    .await;
    let deleted_again = write(
        &node,
        Method::DELETE,
        &item,
        None,
        &[("idempotency-key", delete_key.as_str())],
    )
    .await;
    assert_eq!(
        (deleted.status.as_u16(), deleted_again.status.as_u16()),
        (204, 204)
    );
    assert_eq!(stored(&settings, &item).await.status, 404);
}
