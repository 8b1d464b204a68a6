//! The PostgreSQL origin losing a server mid-test: the replica, then the primary.
//! These tests stop and start the shared cluster's servers, so they live in a test
//! binary of their own (cargo runs test binaries one after another) and run one at a
//! time.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "../api/pg.rs"]
mod pg;

use std::time::Duration;

use edgecache_services::metrics::Tier;
use serde_json::json;

use helpers::{eventually, spawn_with, unique, Client};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[actix_web::test]
async fn reads_go_on_from_the_primary_while_the_replica_is_down_and_use_it_again_once_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let mut settings = pg.settings(&pg::collection("replica_down")).await;
    if let edgecache_config::OriginSettings::Postgres(pg) = &mut settings.origin {
        // Nothing but the replica's state decides where B reads.
        pg.change_feed = false;
    }
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    let from_replica = || b.node.metrics().reads_from(Tier::Replica);

    let write_then_read = |n: u32| {
        let (a, b) = (&a, &b);
        async move {
            let item = format!("/v1/replica_down/{}", unique(&format!("r{n}")));
            assert_eq!(Client::new().put(a, &item, json!({"n": n})).await.status, 201);
            // A session that wrote it reads it back through B.
            let mut user = Client::new();
            user.put(a, &item, json!({"n": n + 1})).await;
            let read = user.get(b, &item).await;
            assert_eq!(read.status, 200, "{}", read.body);
            assert_eq!(read.body["n"], n + 1);
        }
    };
    let used = eventually(Duration::from_secs(5), || async {
        write_then_read(0).await;
        from_replica() > 0
    })
    .await;
    assert!(used, "the replica serves reads once in rotation");

    pg.stop_replica();
    let primary_before = b.node.metrics().reads_from(Tier::Primary);
    let replica_before = from_replica();
    for n in 0..10 {
        write_then_read(n).await;
    }
    assert_eq!(
        from_replica(),
        replica_before,
        "no read reached the stopped replica"
    );
    assert!(b.node.metrics().reads_from(Tier::Primary) >= primary_before + 10);

    pg.start_replica();
    let back = eventually(Duration::from_secs(15), || async {
        write_then_read(100).await;
        from_replica() > replica_before
    })
    .await;
    assert!(back, "the replica is used again once it has caught up");
}

#[actix_web::test]
async fn with_the_primary_down_writes_and_strict_reads_fail_relaxed_fields_are_served_and_nothing_is_lost() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let extra = format!(
        "{}\n[collections.memos]\nfreshness = {{ class = \"relaxed\", ttl = \"100ms\", \
         stale_while_revalidate = \"0s\", stale_if_error = \"1h\" }}\n[collections.memos.fields]\ntext = {{ type = \"string\" }}\n",
        pg::shop("primary_down"),
    );
    let settings = pg.settings(&extra).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);

    // Acknowledged writes before the outage.
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let memo = format!("/v1/memos/{}", unique(&format!("m{i}")));
        let reply = Client::new()
            .put(&a, &memo, json!({"text": format!("memo {i}")}))
            .await;
        assert_eq!(reply.status, 201);
        acknowledged.push((memo, format!("memo {i}")));
    }
    let stock = format!("/v1/primary_down/{}", unique("s"));
    Client::new()
        .put(&a, &stock, json!({"label": "cup", "stock": 3}))
        .await;
    // B caches them, then their TTL passes.
    for (memo, _) in &acknowledged {
        assert_eq!(Client::new().get(&b, memo).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    pg.stop_primary();
    let write = Client::new()
        .put(&a, "/v1/memos/during-outage", json!({"text": "lost?"}))
        .await;
    assert_eq!(write.status, 503, "{}", write.body);
    assert_eq!(write.problem(), "origin-unavailable");
    let strict = Client::new().get(&b, &stock).await;
    assert_eq!(
        strict.status, 503,
        "a strict field is never guessed: {}",
        strict.body
    );
    for (memo, text) in &acknowledged {
        let read = Client::new().get(&b, memo).await;
        assert_eq!(
            read.status, 200,
            "relaxed fields are served (replica or stale): {}",
            read.body
        );
        assert_eq!(read.body["text"], text.as_str());
    }

    pg.start_primary();
    let recovered = eventually(Duration::from_secs(15), || async {
        Client::new().get(&a, &stock).await.status == 200
    })
    .await;
    assert!(recovered, "strict reads work again once the primary is back");
    // Every acknowledged write is there: a node started now has nothing cached and
    // reads each from the origin.
    let fresh = spawn_with(&settings);
    for (memo, text) in &acknowledged {
        let read = Client::new().get(&fresh, memo).await;
        assert_eq!(read.body["text"], text.as_str(), "{memo} survived the restart");
    }
    assert_eq!(
        Client::new().get(&a, "/v1/memos/during-outage").await.status,
        404,
        "the refused write left nothing"
    );
    let after = Client::new()
        .put(&a, "/v1/memos/after", json!({"text": "ok"}))
        .await;
    assert!(after.status.is_success(), "writes work again: {}", after.body);
}

/// Runs each of `statements` on the primary, one at a time.
async fn on_primary(pg: &pg::Cluster, statements: &[&str]) {
    let (db, connection) = tokio_postgres::connect(&pg.primary, tokio_postgres::NoTls)
        .await
        .expect("the primary answers");
    actix_web::rt::spawn(connection);
    for sql in statements {
        db.batch_execute(sql).await.expect("the statement runs");
    }
}

#[actix_web::test]
async fn the_primary_killed_while_writes_wait_in_commit_no_write_answered_not_applied_is_there_after() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let table = unique("commit").replace('-', "_");
    let extra = format!("{}\n[session]\nwrite_timeout = \"20s\"\n", pg::shop(&table));
    let mut settings = pg.settings(&extra).await;
    if let edgecache_config::OriginSettings::Postgres(p) = &mut settings.origin {
        // Nothing but the kill ends the writes' wait.
        p.statement_timeout = Duration::from_secs(20);
    }
    let node = spawn_with(&settings);
    let counter = format!("/v1/{table}/counter");
    let created = Client::new()
        .put(&node, &counter, json!({"label": "c", "stock": 100}))
        .await;
    assert_eq!(created.status, 201);

    // A synchronous standby that never answers: every commit is written to the
    // primary's WAL, then waits for it.
    on_primary(
        &pg,
        &[
            "ALTER SYSTEM SET synchronous_standby_names = 'edgecache_nobody'",
            "SELECT pg_reload_conf()",
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let items: Vec<String> = (0..8).map(|i| format!("/v1/{table}/item-{i}")).collect();
    let puts = futures_util::future::join_all(items.iter().map(|item| {
        let node = &node;
        async move { Client::new().put(node, item, json!({"label": "new"})).await }
    }));
    let increments = futures_util::future::join_all((0..4).map(|_| {
        let (node, counter) = (&node, &counter);
        async move {
            Client::new()
                .increment(node, counter, json!({"field": "stock", "by": -1}))
                .await
        }
    }));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        pg.kill_primary();
    };
    let (puts, increments, ()) = futures_util::join!(puts, increments, kill);

    pg.start_primary();
    on_primary(
        &pg,
        &[
            "ALTER SYSTEM RESET synchronous_standby_names",
            "SELECT pg_reload_conf()",
        ],
    )
    .await;
    let fresh = spawn_with(&settings);
    let back = eventually(Duration::from_secs(15), || async {
        Client::new().get(&fresh, &counter).await.status == 200
    })
    .await;
    assert!(back, "the primary is back");

    let not_applied =
        |reply: &helpers::Reply| !reply.status.is_success() && reply.problem() != "write-outcome-unknown";
    let mut unknown = 0;
    for (item, reply) in items.iter().zip(&puts) {
        let now = Client::new().get(&fresh, item).await;
        if reply.status.is_success() {
            assert_eq!(now.status, 200, "{item} was acknowledged");
        } else if not_applied(reply) {
            assert_eq!(
                now.status, 404,
                "{item} was answered {} ({}) and is there after the restart",
                reply.status, reply.body
            );
        } else {
            unknown += 1;
        }
    }
    let stock = Client::new().get(&fresh, &counter).await.body["stock"]
        .as_i64()
        .unwrap();
    let applied = 100 - stock;
    let acknowledged = increments.iter().filter(|r| r.status.is_success()).count() as i64;
    let maybe = increments
        .iter()
        .filter(|r| !r.status.is_success() && !not_applied(r))
        .count() as i64;
    unknown += maybe;
    assert!(
        (acknowledged..=acknowledged + maybe).contains(&applied),
        "{applied} increments applied; {acknowledged} acknowledged, {maybe} unknown, the rest answered not applied"
    );
    assert!(unknown > 0, "the kill caught writes in their commit");
}
