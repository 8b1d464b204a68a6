//! Negative caching: a 404 is kept under the collection's class with the position its
//! absence was read at; a create by the session itself (its token) or through any node
//! (the PostgreSQL change feed) is never hidden by it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::{ItemKey, Position};
use edgecache_services::metrics::Tier;
use edgecache_services::origin::{
    Committed, EmbeddedOrigin, IdempotencySweep, Origin, OriginError, OriginRead, ReadRequest, WriteError,
    WriteOp,
};
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::helpers::{
    eventually, settings, spawn_app, spawn_over, spawn_with, unique, Client, Store, TestApp,
};
use crate::pg::{cluster, shop};

/// Reads of the origin a node made: whole items (primary or replica) and strict
/// fields from the primary.
fn origin_reads(app: &TestApp) -> u64 {
    let m = app.node.metrics();
    m.reads_from(Tier::Primary) + m.reads_from(Tier::Replica) + m.strict_reads.get()
}

/// The embedded store behind a counter of the reads that reach it.
struct Counted {
    inner: EmbeddedOrigin,
    reads: AtomicU64,
}

impl Origin for Counted {
    fn read(
        &self,
        key: ItemKey,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(key, request)
    }

    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
        self.reads.fetch_add(keys.len() as u64, Ordering::SeqCst);
        self.inner.read_many(keys, request)
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
        self.inner.write(op)
    }

    fn sweep_idempotency(
        &self,
        retention: Duration,
    ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>> {
        self.inner.sweep_idempotency(retention)
    }

    fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
        self.inner.ping()
    }

    fn kind(&self) -> &'static str {
        "counted"
    }
}

#[actix_web::test]
async fn a_thousand_gets_of_an_absent_id_read_the_origin_a_handful_of_times() {
    let store = Store::new();
    let origin = Arc::new(Counted {
        inner: EmbeddedOrigin::open(&store.path, 2, Duration::from_millis(200)).unwrap(),
        reads: AtomicU64::new(0),
    });
    // The online consistency checks read the primary for a sample of the reads served
    // from the cache; off here, where every read that reaches the origin is counted.
    let no_checks = "[flags.consistency_checks]\nsample = 0\n";
    let app = spawn_over(&settings(&store.path, no_checks), origin.clone());
    // Products have a strict field: a cached absence does not read it either. Fifty
    // at a time: the first fifty share one origin read (coalesced), then the 404 is
    // in the cache.
    for round in 0..20 {
        let gets = (0..50).map(|_| {
            let app = &app;
            async move { Client::new().get(app, "/v1/products/no-such-product").await }
        });
        for reply in futures_util::future::join_all(gets).await {
            assert_eq!(reply.status, 404, "round {round}");
            assert_eq!(reply.problem(), "not-found");
        }
    }
    let reads = origin.reads.load(Ordering::SeqCst);
    eprintln!("1,000 GETs of an absent id: {reads} origin read(s)");
    assert!(reads <= 3, "1,000 GETs read the origin {reads} times");
    let m = app.node.metrics();
    assert_eq!(m.negative_hits.get() + m.negative_misses.get(), 1_000);
    assert!(m.negative_hits.get() >= 950, "{}", m.negative_hits.get());
    assert_eq!(
        Client::new()
            .get(&app, "/v1/products/no-such-product")
            .await
            .cache_status(),
        "hit"
    );
    let scrape = app.scrape().await;
    assert!(scrape.contains("edgecache_negative_hits_total"), "{scrape}");
}

#[actix_web::test]
async fn a_session_that_creates_an_item_reads_it_on_another_node_past_that_node_s_cached_404() {
    // Two nodes on one store with no change feed between them: B keeps its 404 for
    // everyone else, for the collection's TTL.
    let store = Store::new();
    let a = spawn_app(&store, "");
    let b = spawn_app(&store, "");
    let mut user = Client::new();
    let item = "/v1/products/created-later";
    assert_eq!(user.get(&b, item).await.status, 404);
    assert_eq!(
        Client::new().get(&b, item).await.cache_status(),
        "hit",
        "B keeps the 404"
    );

    let created = user.put(&a, item, json!({"name": "new", "stock": 1})).await;
    assert_eq!(created.status, 201);
    let mine = user.get(&b, item).await;
    assert_eq!(
        mine.status, 200,
        "read-your-writes past the cached 404: {}",
        mine.body
    );
    assert_eq!(mine.body["name"], "new");
    // B stored what it read for the session: the absence is gone for everyone.
    assert_eq!(Client::new().get(&b, item).await.status, 200);
}

#[actix_web::test]
async fn a_create_through_another_node_replaces_a_cached_404_through_the_change_feed() {
    let pg = cluster();
    let table = unique("negative").replace('-', "_");
    // No consistency checks: their primary reads would count as origin reads here.
    let settings = pg
        .settings(&format!(
            "{}
[flags.consistency_checks]
sample = 0
",
            shop(&table)
        ))
        .await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    // A node clears its cache when its feed connects: only then is B's 404 kept.
    crate::pg_feed::following(&[&a, &b]).await;
    let item = format!("/v1/{table}/{}", unique("later"));
    assert_eq!(Client::new().get(&b, &item).await.status, 404);
    let before = origin_reads(&b);
    for _ in 0..20 {
        assert_eq!(Client::new().get(&b, &item).await.status, 404);
    }
    assert_eq!(origin_reads(&b), before, "B serves the absence from its cache");

    let created = Client::new()
        .put(&a, &item, json!({"label": "now here", "stock": 2}))
        .await;
    assert_eq!(created.status, 201);
    let seen = eventually(Duration::from_secs(2), || async {
        Client::new().get(&b, &item).await.status == 200
    })
    .await;
    assert!(
        seen,
        "a fresh session on B sees the create within the feed's bound"
    );
    let read = Client::new().get(&b, &item).await;
    assert_eq!(read.body["label"], "now here");
}
