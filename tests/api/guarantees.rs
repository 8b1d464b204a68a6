//! The four session guarantees, across two nodes over one store, each with the
//! strategy switched off for a session to show the test can fail.

use serde_json::json;

use crate::helpers::{session_in_arm, spawn_app, Client, Store, LONG_TTL};

const RYW: &str = "edgecache.read-your-writes";
const MONOTONIC: &str = "edgecache.monotonic-reads";

#[actix_web::test]
async fn a_session_reads_its_write_through_a_node_that_had_the_item_cached() {
    let store = Store::new();
    let half = format!("{LONG_TTL}\n[flags.defaults]\nread-your-writes = \"50%\"\n");
    let a = spawn_app(&store, &half);
    let b = spawn_app(&store, &half);

    for (on, expect_stale) in [(true, false), (false, true)] {
        let item = format!("/v1/articles/a-{on}");
        let mut author = Client::new();
        assert_eq!(author.put(&a, &item, json!({"title": "v1"})).await.status, 201);
        // Another user reads it through B: B now caches v1, fresh for an hour.
        let mut reader = Client::new();
        assert_eq!(reader.get(&b, &item).await.body["title"], "v1");
        assert_eq!(reader.get(&b, &item).await.cache_status(), "hit");

        let mut user = Client::with_id(&session_in_arm(RYW, on));
        let written = user.put(&a, &item, json!({"title": "v2"})).await;
        assert_eq!(written.status, 200);
        let read = user.get(&b, &item).await;
        if expect_stale {
            assert_eq!(
                read.body["title"], "v1",
                "with read-your-writes off, B serves its cached v1"
            );
            assert_eq!(read.cache_status(), "hit");
        } else {
            assert_eq!(read.body["title"], "v2", "the token makes B read past its cache");
            assert_eq!(read.version(), written.version());
            assert!(read.cache_status().contains("session-watermark"));
        }
    }
    assert_eq!(
        b.node.metrics().stale_own(true),
        0,
        "no stale own read with the strategy on"
    );
    assert_eq!(
        b.node.metrics().stale_own(false),
        1,
        "the stale read with the strategy off is counted"
    );
    assert!(
        b.node.metrics().sessions_rebuilt.get() >= 1,
        "B rebuilt the sessions from their tokens"
    );
}

#[actix_web::test]
async fn after_reading_a_version_a_session_never_sees_an_older_one_on_any_node() {
    let store = Store::new();
    let half =
        format!("{LONG_TTL}\n[flags.defaults]\nmonotonic-reads = \"50%\"\nread-your-writes = \"50%\"\n");
    let a = spawn_app(&store, &half);
    let b = spawn_app(&store, &half);

    for on in [true, false] {
        let item = format!("/v1/articles/m-{on}");
        let mut writer = Client::new();
        writer.put(&a, &item, json!({"title": "old"})).await;
        // B caches the old version.
        assert_eq!(Client::new().get(&b, &item).await.body["title"], "old");
        writer.put(&a, &item, json!({"title": "new"})).await;

        // The session (same arm for both strategies) reads the new version through A ...
        let id = (0..)
            .map(|i| format!("reader-{i}"))
            .find(|id| {
                let r = edgecache_flags::Rollout::Percent(50);
                r.is_enabled(MONOTONIC, id) == on && r.is_enabled(RYW, id) == on
            })
            .unwrap();
        let mut user = Client::with_id(&id);
        let first = user.get(&a, &item).await;
        assert_eq!(first.body["title"], "new");
        // ... then goes back and forth between the nodes.
        for _ in 0..3 {
            for node in [&b, &a] {
                let read = user.get(node, &item).await;
                if on {
                    assert!(read.version() >= first.version(), "a read went back in time");
                    assert_eq!(read.body["title"], "new");
                } else if std::ptr::eq(node, &b) {
                    assert_eq!(
                        read.body["title"], "old",
                        "with monotonic reads off, B serves its cache"
                    );
                }
            }
        }
    }
    let metrics = b.node.metrics();
    assert_eq!(metrics.regressions(true), 0);
    assert_eq!(
        metrics.regressions(false),
        3,
        "each regression served with the strategy off is counted"
    );
    assert!(metrics.regressions_prevented.get() >= 1);
}

#[actix_web::test]
async fn a_sessions_writes_apply_in_the_order_it_issued_them_on_any_node() {
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    let b = spawn_app(&store, LONG_TTL);
    let mut user = Client::new();
    let mut versions = Vec::new();
    for (i, node) in [&a, &b, &a, &b, &b, &a].into_iter().enumerate() {
        let reply = user
            .put(node, "/v1/articles/w1", json!({"title": format!("t{i}")}))
            .await;
        assert!(reply.status.is_success());
        versions.push(reply.version());
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions follow issue order: {versions:?}"
    );
    for node in [&a, &b] {
        assert_eq!(user.get(node, "/v1/articles/w1").await.body["title"], "t5");
    }
}

#[actix_web::test]
async fn a_write_is_ordered_after_what_the_session_read() {
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    let b = spawn_app(&store, LONG_TTL);
    Client::new()
        .put(&a, "/v1/articles/r1", json!({"title": "read me"}))
        .await;

    let mut user = Client::new();
    let read = user.get(&b, "/v1/articles/r1?explain=true").await;
    let read_at = read.body["_explain"]["position"].as_u64().unwrap();
    let reply = user
        .put(&a, "/v1/articles/r2", json!({"title": "because I read r1"}))
        .await;
    assert_eq!(reply.status, 201);
    let written = user.get(&a, "/v1/articles/r2?explain=true").await;
    let committed_at = written.body["_explain"]["position"].as_u64().unwrap();
    assert!(
        committed_at > read_at,
        "the write ({committed_at}) commits after the read ({read_at})"
    );
}
