//! The PostgreSQL origin with a real streaming replica that applies WAL 300 ms late:
//! read-your-writes across nodes under real lag, per-field tiers, the change feed.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, sessions_in_arm, spawn_with, unique, Client};
use crate::pg::{cluster, collection, shop};
use crate::pg_feed::following;

#[actix_web::test]
async fn under_real_replica_lag_a_session_never_reads_older_than_its_own_write() {
    let pg = cluster();
    let extra = format!(
        "{}\n[flags.defaults]\nread-your-writes = \"50%\"\n",
        collection("pairs")
    );
    let mut settings = pg.settings(&extra).await;
    // Without the change feed, which would otherwise protect every session: this
    // test is about what the session's token alone guarantees.
    if let edgecache_config::OriginSettings::Postgres(pg) = &mut settings.origin {
        pg.change_feed = edgecache_config::ChangeFeed::Off;
    }
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);

    // 50 sessions, half in each arm, 20 write → immediate read pairs each: 1,000.
    let run = std::process::id();
    let flag = "edgecache.read-your-writes";
    let on = sessions_in_arm(flag, true, &format!("pairs{run}"), 25)
        .into_iter()
        .map(|id| (true, id));
    let off = sessions_in_arm(flag, false, &format!("pairs{run}"), 25)
        .into_iter()
        .map(|id| (false, id));
    let sessions = on.chain(off).map(|(on, id)| {
        let (a, b) = (&a, &b);
        async move {
            let mut user = Client::with_id(&id);
            let mut stale = 0;
            for i in 0..20 {
                // A new item each time: B has no copy, so only the replica's lag (and
                // the session's token) decide what B serves.
                let item = format!("/v1/pairs/{id}-{i}");
                let wrote = user.put(a, &item, json!({"title": "pair", "n": i})).await;
                assert!(wrote.status.is_success(), "{}", wrote.body);
                let read = user.get(b, &item).await;
                if read.status != 200 || read.body["n"] != i {
                    stale += 1;
                    if on {
                        eprintln!(
                            "stale in the on arm: {id} wrote {i} v{} read {} {} {}",
                            wrote.version(),
                            read.status,
                            read.cache_status(),
                            read.body
                        );
                    }
                }
            }
            (on, stale)
        }
    });
    let results = futures_util::future::join_all(sessions).await;
    let stale_on: u64 = results.iter().filter(|(on, _)| *on).map(|(_, s)| s).sum();
    let stale_off: u64 = results.iter().filter(|(on, _)| !*on).map(|(_, s)| s).sum();
    assert_eq!(
        stale_on, 0,
        "read-your-writes on: no read older than the session's write"
    );
    assert!(
        stale_off > 0,
        "read-your-writes off: the lagging replica shows stale reads"
    );
    let metrics = b.node.metrics();
    assert_eq!(metrics.stale_own(true), 0);
    assert_eq!(
        metrics.stale_own(false),
        stale_off,
        "every stale own read is counted"
    );
    assert!(
        metrics.replica_waits.get() > 0,
        "reads waited for the replica to replay the write"
    );
}

#[actix_web::test]
async fn strict_fields_come_from_the_primary_and_others_from_a_caught_up_replica() {
    let pg = cluster();
    let settings = pg.settings(&shop("shop_tiers")).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    let item = format!("/v1/shop_tiers/{}?explain=true", unique("x"));
    let put = Client::new()
        .put(
            &a,
            item.trim_end_matches("?explain=true"),
            json!({"label": "kettle", "price": 49.0, "stock": 7}),
        )
        .await;
    assert_eq!(put.status, 201);
    // A new session on B: the strict stock always comes from the primary; once the
    // replica has the item, the other fields do not.
    let off_primary = eventually(Duration::from_secs(5), || async {
        let read = Client::new().get(&b, &item).await;
        let fields = read.body["_explain"]["fields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let tier = |name: &str| {
            fields
                .iter()
                .find(|f| f["field"] == name)
                .map(|f| f["tier"].clone())
        };
        assert_eq!(tier("stock"), Some(json!("primary")), "{}", read.body);
        assert_eq!(read.body["stock"], 7);
        tier("label").is_some_and(|t| t != "primary")
    })
    .await;
    assert!(
        off_primary,
        "the label is served from the cache or a replica, the stock from the primary"
    );
}

#[actix_web::test]
async fn a_write_through_one_node_drops_the_item_from_the_other_nodes_cache() {
    let pg = cluster();
    let settings = pg.settings(&collection("feed")).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    following(&[&a, &b]).await;
    let f1 = format!("/v1/feed/{}", unique("f1"));
    Client::new().put(&a, &f1, json!({"title": "before"})).await;
    let cached = eventually(Duration::from_secs(5), || async {
        Client::new().get(&b, &f1).await.body["title"] == "before"
    })
    .await;
    assert!(cached, "B reads and caches the item");
    // Under load the next read was once not a hit (cause not found; the change
    // feed and the lagging replica race the first reads): wait for the copy to
    // settle, then check that B serves it from its cache.
    let hit = eventually(Duration::from_secs(5), || async {
        Client::new().get(&b, &f1).await.cache_status() == "hit"
    })
    .await;
    assert!(hit, "B serves the item from its cache");

    // Another user changes it through A; B's fresh-for-an-hour copy must go.
    Client::new().put(&a, &f1, json!({"title": "after"})).await;
    let followed = eventually(Duration::from_secs(2), || async {
        Client::new().get(&b, &f1).await.body["title"] == "after"
    })
    .await;
    assert!(
        followed,
        "the change feed dropped B's entry, and B read past the lagging replica"
    );
    assert!(b.node.metrics().invalidations.get() >= 1);
}

#[actix_web::test]
async fn increments_and_conditional_writes_are_single_atomic_statements_on_the_primary() {
    let pg = cluster();
    let settings = pg.settings(&shop("shop_stock")).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    let item = format!("/v1/shop_stock/{}", unique("s"));
    let created = Client::new()
        .put(&a, &item, json!({"label": "cup", "stock": 5}))
        .await;
    assert_eq!(created.status, 201);
    let buyers = (0..30).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let item = &item;
        async move {
            Client::new()
                .increment(node, item, json!({"field": "stock", "by": -1}))
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(buyers).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 25, "{statuses:?}");
    let mut reader = Client::new();
    let read = reader.get(&a, &item).await;
    assert_eq!(read.body["stock"], 0);

    let stale_etag = reqwest::Client::new()
        .patch(format!("{}{item}", a.address))
        .header("content-type", "application/merge-patch+json")
        .header("if-match", format!("\"{}\"", created.version()))
        .body(r#"{"label": "mug"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(stale_etag.status(), 412);
    assert_eq!(Client::new().get(&b, &item).await.body["label"], "cup");
}

#[actix_web::test]
async fn a_stopped_node_ends_its_background_tasks_and_closes_its_change_feed() {
    let pg = cluster();
    // The LISTEN feed: its connection, as the primary sees it.
    let channel = format!("edgecache_stop_{}", unique("c").replace('-', "_"));
    let listening = format!("SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"{channel}\"'");
    let extra = format!(
        "change_feed = \"notify\"\nnotify_channel = \"{channel}\"\n{}",
        collection("stops")
    );
    stops_and_closes(&pg, &extra, &listening).await;
    // The logical feed: its temporary slot.
    let node = unique("stop").replace('-', "_");
    let slots = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'edgecache_{node}_%' AND active"
    );
    let extra = format!("[node]\nid = \"{node}\"\n{}", collection("stops"));
    stops_and_closes(&pg, &extra, &slots).await;
}

/// A node over `extra` whose feed `feed_sql` counts (1) ends every background task
/// on stop, and its feed's connection with them (0).
async fn stops_and_closes(pg: &crate::pg::Cluster, extra: &str, feed_sql: &str) {
    let settings = pg.settings(extra).await;
    let app = spawn_with(&settings);
    let node = app.node.clone();
    let followed = eventually(Duration::from_secs(10), || async {
        pg.psql(&pg.primary, &[feed_sql]) == "1"
    })
    .await;
    assert!(followed, "the change feed follows: {feed_sql}");
    let mut running = node.shutdown().running();
    running.sort_unstable();
    assert_eq!(
        running,
        [
            "change feed",
            "consistency checks",
            "dashboard snapshots",
            "idempotency sweeper",
            "readiness sampler",
            "replica sampler"
        ]
    );

    app.stop().await;
    assert!(node.shutdown().is_fired());
    assert_eq!(
        node.shutdown().running(),
        Vec::<&str>::new(),
        "tasks still running after stop"
    );
    let closed = eventually(Duration::from_secs(5), || async {
        pg.psql(&pg.primary, &[feed_sql]) == "0"
    })
    .await;
    assert!(closed, "the primary still lists the change feed: {feed_sql}");
}
