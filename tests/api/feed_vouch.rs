//! The read plan and the logical feed's applied position (issue 17, part 5): a cache
//! entry fetched at position P and not invalidated is current through the feed's
//! applied position L, so a session whose floors lie in (P, L] is served from it
//! instead of reading the origin — and never when the feed lags behind what the
//! session needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecache_actors::{ItemKey, Position, Version};
use edgecache_services::origin::{
    Change, ChangeSink, Committed, EmbeddedOrigin, FeedStatus, IdempotencySweep, Origin, OriginError,
    OriginRead, ReadRequest, WriteError, WriteOp,
};
use edgecache_services::Shutdown;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::helpers::{settings, spawn_over, Client, Store, TestApp, LONG_TTL};

/// The embedded store with a logical change feed the test drives: it delivers the
/// changes the test gives it and reports the applied position the test sets.
struct Fed {
    inner: EmbeddedOrigin,
    applied: AtomicU64,
    sink: Mutex<Option<ChangeSink>>,
}

impl Fed {
    fn open(store: &Store) -> Arc<Self> {
        Arc::new(Fed {
            inner: EmbeddedOrigin::open(&store.path, 2, Duration::from_millis(200)).unwrap(),
            applied: AtomicU64::new(0),
            sink: Mutex::new(None),
        })
    }

    /// The feed has applied every change up to `position`.
    fn applied_through(&self, position: u64) {
        self.applied.store(position, Ordering::SeqCst);
    }

    fn deliver(&self, change: Change) {
        let sink = self
            .sink
            .lock()
            .unwrap()
            .clone()
            .expect("the node started the feed");
        sink(change);
    }
}

impl Origin for Fed {
    fn read(
        &self,
        key: ItemKey,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
        self.inner.read(key, request)
    }

    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
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
        "embedded"
    }

    fn start(&self, sink: ChangeSink, _shutdown: &Shutdown) {
        *self.sink.lock().unwrap() = Some(sink);
    }

    fn change_feed(&self) -> Option<FeedStatus> {
        Some(FeedStatus {
            kind: "logical",
            following: true,
            applied: Some(Position(self.applied.load(Ordering::SeqCst))),
        })
    }
}

/// Nodes whose sessions keep two marks: a third item compacts the oldest into a floor.
fn compacting(store: &Store) -> edgecache_config::Settings {
    settings(
        &store.path,
        &format!("[session]\nmax_token_items = 2\n{LONG_TTL}"),
    )
}

/// A session that wrote three other items through `app`: its write floor is past
/// everything before them.
async fn with_a_floor(app: &TestApp, tag: &str) -> Client {
    let mut user = Client::new();
    for other in ["a", "b", "c"] {
        let put = user
            .put(
                app,
                &format!("/v1/articles/{tag}-{other}"),
                json!({"title": other}),
            )
            .await;
        assert_eq!(put.status, 201, "{}", put.body);
    }
    user
}

#[actix_web::test]
async fn an_entry_the_feed_vouches_for_past_a_sessions_floor_is_served_from_the_cache() {
    let store = Store::new();
    let fed = Fed::open(&store);
    let app = spawn_over(&compacting(&store), fed.clone());
    for item in ["x1", "x2"] {
        Client::new()
            .put(&app, &format!("/v1/articles/{item}"), json!({"title": item}))
            .await;
    }
    // The cache holds the items as read from the origin (a write's own entry is not
    // vouched for), with the feed at 0.
    fed.deliver(Change::Reset);
    for item in ["x1", "x2"] {
        let read = Client::new().get(&app, &format!("/v1/articles/{item}")).await;
        assert_eq!(read.status, 200);
    }
    let mut user = with_a_floor(&app, "v").await;

    // The feed has applied nothing past the entries: the floor sends the read to the
    // origin, as before.
    let read = user.get(&app, "/v1/articles/x1").await;
    assert_eq!(read.body["title"], "x1");
    assert_ne!(read.cache_status(), "hit", "{}", read.cache_status());
    assert_eq!(app.node.metrics().feed_vouched.get(), 0);

    // The feed has applied everything committed so far, and none of it was x2: its
    // entry is current past the floor.
    let now = fed.ping().await.unwrap();
    fed.applied_through(now.0);
    let read = user.get(&app, "/v1/articles/x2").await;
    assert_eq!(read.body["title"], "x2");
    assert_eq!(read.cache_status(), "hit", "{}", read.cache_status());
    assert_eq!(app.node.metrics().feed_vouched.get(), 1);
    app.stop().await;
}

#[actix_web::test]
async fn a_lagging_feed_never_lets_a_session_read_an_entry_older_than_its_own_write() {
    let store = Store::new();
    let settings = compacting(&store);
    let (fed_a, fed_b) = (Fed::open(&store), Fed::open(&store));
    let a = spawn_over(&settings, fed_a.clone());
    let b = spawn_over(&settings, fed_b.clone());
    Client::new()
        .put(&a, "/v1/articles/x", json!({"title": "old"}))
        .await;
    // B caches the item from the origin; its feed is at 0, before the entry.
    let cached = Client::new().get(&b, "/v1/articles/x").await;
    assert_eq!(
        (cached.version(), cached.body["title"].as_str()),
        (1, Some("old"))
    );

    for (round, lag) in [(0, None), (1, Some(1))] {
        // A session changes the item through A, then three others: the mark of its
        // write to x becomes a floor at the write's position.
        let mut user = Client::new();
        let wrote = user
            .patch(&a, "/v1/articles/x", json!({"title": format!("new-{round}")}))
            .await;
        assert_eq!(wrote.status, 200);
        let written_at = fed_a.ping().await.unwrap().0;
        for other in ["a", "b", "c"] {
            user.put(
                &a,
                &format!("/v1/articles/lag{round}-{other}"),
                json!({"title": other}),
            )
            .await;
        }
        // B's feed lags: it has not delivered the change, and has applied up to just
        // before the write at most.
        if let Some(behind) = lag {
            fed_b.applied_through(written_at - behind);
        }
        let read = user.get(&b, "/v1/articles/x").await;
        assert_eq!(read.status, 200);
        assert_eq!(
            read.body["title"],
            format!("new-{round}"),
            "round {round}: the session read an entry older than its own write ({})",
            read.cache_status()
        );
        assert_eq!(read.version(), wrote.version());
        // Put the old version back into B's cache for the next round, as a node that
        // never heard of the change would hold it.
        fed_b.deliver(Change::Reset);
        fed_b.applied_through(0);
        if round == 0 {
            Client::new()
                .put(&a, "/v1/articles/x", json!({"title": "old"}))
                .await;
            fed_b.deliver(Change::Reset);
            let again = Client::new().get(&b, "/v1/articles/x").await;
            assert_eq!(again.body["title"], "old");
        }
    }
    assert_eq!(
        b.node.metrics().feed_vouched.get(),
        0,
        "nothing was vouched past the feed"
    );

    // Once the feed delivers the change and applies past the write, the entry is
    // gone: a session with the same floor reads the new version.
    let mut user = Client::new();
    let wrote = user.patch(&a, "/v1/articles/x", json!({"title": "final"})).await;
    for other in ["a", "b", "c"] {
        user.put(&a, &format!("/v1/articles/fin-{other}"), json!({"title": other}))
            .await;
    }
    fed_b.deliver(Change::Item {
        collection: "articles".into(),
        id: "x".into(),
        version: Version(wrote.version()),
    });
    fed_b.applied_through(fed_a.ping().await.unwrap().0);
    let read = user.get(&b, "/v1/articles/x").await;
    assert_eq!(read.body["title"], "final", "{}", read.cache_status());
    a.stop().await;
    b.stop().await;
}
