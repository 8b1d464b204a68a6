//! Each freshness class, with windows of a few hundred milliseconds. Node A writes,
//! node B holds the item in its cache; a fresh session (no watermarks) reads through
//! B, so only the freshness class decides what it gets.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, spawn_app, Client, Store, SHORT_WINDOWS};

#[actix_web::test]
async fn relaxed_fields_are_served_within_ttl_then_stale_while_one_refresh_runs() {
    let store = Store::new();
    let a = spawn_app(&store, SHORT_WINDOWS);
    let b = spawn_app(&store, SHORT_WINDOWS);
    let mut writer = Client::new();
    writer.put(&a, "/v1/notes/n1", json!({"text": "v1"})).await;
    assert_eq!(
        Client::new().get(&b, "/v1/notes/n1").await.cache_status(),
        "fwd=uri-miss; stored"
    );
    writer.put(&a, "/v1/notes/n1", json!({"text": "v2"})).await;

    let within_ttl = Client::new().get(&b, "/v1/notes/n1").await;
    assert_eq!(
        within_ttl.body["text"], "v1",
        "another session gets the cached value within the TTL"
    );
    assert_eq!(within_ttl.cache_status(), "hit");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let stale = Client::new().get(&b, "/v1/notes/n1").await;
    assert_eq!(stale.body["text"], "v1");
    assert_eq!(stale.cache_status(), "hit; detail=stale-while-revalidate");
    assert!(stale.header("age").parse::<u64>().is_ok());

    let refreshed = eventually(Duration::from_secs(2), || async {
        let reply = Client::new().get(&b, "/v1/notes/n1").await;
        reply.body["text"] == "v2" && reply.cache_status() == "hit"
    })
    .await;
    assert!(refreshed, "the background refresh stored v2");
    assert_eq!(
        b.node.metrics().refreshes.get(),
        1,
        "one refresh for the key, not one per stale read"
    );
}

#[actix_web::test]
async fn relaxed_fields_past_every_window_are_read_from_the_origin() {
    let store = Store::new();
    let extra = format!("{SHORT_WINDOWS}\n[flags.defaults]\nstale-while-revalidate = \"off\"\n");
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);
    let mut writer = Client::new();
    writer.put(&a, "/v1/notes/n2", json!({"text": "v1"})).await;
    Client::new().get(&b, "/v1/notes/n2").await;
    writer.put(&a, "/v1/notes/n2", json!({"text": "v2"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // With stale-while-revalidate off, past the TTL is expired.
    let reply = Client::new().get(&b, "/v1/notes/n2").await;
    assert_eq!(reply.body["text"], "v2");
    assert_eq!(reply.cache_status(), "fwd=stale; fwd-status=200; stored");
    assert_eq!(reply.header("age"), "0");
}

#[actix_web::test]
async fn bounded_fields_are_never_older_than_their_bound() {
    let store = Store::new();
    let a = spawn_app(&store, SHORT_WINDOWS);
    let b = spawn_app(&store, SHORT_WINDOWS);
    let mut writer = Client::new();
    writer.put(&a, "/v1/prices/x", json!({"amount": 1.0})).await;
    Client::new().get(&b, "/v1/prices/x").await;
    writer.put(&a, "/v1/prices/x", json!({"amount": 2.0})).await;
    assert_eq!(Client::new().get(&b, "/v1/prices/x").await.body["amount"], 1.0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = Client::new().get(&b, "/v1/prices/x").await;
    assert_eq!(
        reply.body["amount"], 2.0,
        "past max_staleness the node reads the origin"
    );
}

#[actix_web::test]
async fn strict_fields_come_from_the_primary_on_every_read_and_relaxed_ones_from_the_cache() {
    let store = Store::new();
    let a = spawn_app(&store, SHORT_WINDOWS);
    let b = spawn_app(&store, SHORT_WINDOWS);
    let mut writer = Client::new();
    writer
        .put(&a, "/v1/counters/c1", json!({"label": "stock", "count": 5}))
        .await;
    Client::new().get(&b, "/v1/counters/c1").await;

    let hit = Client::new().get(&b, "/v1/counters/c1?explain=true").await;
    assert_eq!(hit.cache_status(), "hit; detail=strict-from-primary");
    let fields = hit.body["_explain"]["fields"].as_array().unwrap().clone();
    let tier = |name: &str| {
        fields
            .iter()
            .find(|f| f["field"] == name)
            .map(|f| f["tier"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(tier("count"), "primary");
    assert_eq!(tier("label"), "cache");

    // Another node changes the count: B's very next read shows it, cache or not.
    assert_eq!(
        writer
            .increment(&a, "/v1/counters/c1", json!({"field": "count", "by": -1}))
            .await
            .status,
        200
    );
    let reply = Client::new().get(&b, "/v1/counters/c1").await;
    assert_eq!(reply.body["count"], 4);
    assert_eq!(reply.cache_status(), "fwd=stale; fwd-status=200; stored");
}

#[actix_web::test]
async fn with_strict_fields_off_a_session_gets_a_plain_ttl_cache() {
    let store = Store::new();
    let extra = format!("{SHORT_WINDOWS}\n[flags.defaults]\nstrict-fields = \"off\"\n");
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);
    let mut writer = Client::new();
    writer
        .put(&a, "/v1/counters/c2", json!({"label": "stock", "count": 5}))
        .await;
    Client::new().get(&b, "/v1/counters/c2").await;
    writer
        .increment(&a, "/v1/counters/c2", json!({"field": "count", "by": -1}))
        .await;
    let reply = Client::new().get(&b, "/v1/counters/c2").await;
    assert_eq!(
        reply.body["count"], 5,
        "the stale count within the plain TTL: what the strategy prevents"
    );
    assert_eq!(reply.cache_status(), "hit");
}
