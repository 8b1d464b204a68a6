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
        pg.change_feed = edgecache_config::ChangeFeed::Off;
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
    // primary's WAL, then waits for it (until the guard drops, whatever happens).
    let commits_wait = pg.commits_wait_for_nobody();
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
    drop(commits_wait);
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

/// The tier and age `?explain=true` gives the field `total`.
fn explained(read: &helpers::Reply) -> (String, u64) {
    let field = read.body["_explain"]["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f["field"] == "total"))
        .unwrap_or_else(|| panic!("explained: {}", read.body));
    (
        field["tier"].as_str().unwrap_or("").to_owned(),
        field["age_ms"].as_u64().unwrap_or(0),
    )
}

#[actix_web::test]
async fn a_replica_further_behind_than_a_bounded_class_is_passed_over_and_its_answers_are_aged_by_its_lag() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let mut settings = pg.settings(&pg::bounded("carts_lag", "2s")).await;
    if let edgecache_config::OriginSettings::Postgres(pg) = &mut settings.origin {
        // The default: a replica up to 5 s behind stays in rotation.
        pg.replica_max_lag = Duration::from_secs(5);
        // Nothing but the classes bound what the readers serve (a node whose LISTEN
        // connection is down is in this state).
        pg.change_feed = edgecache_config::ChangeFeed::Off;
    }
    let writer = spawn_with(&settings);
    // Two readers that never read the item before the test reads it once through each;
    // started now so they have sampled the replica before it falls behind.
    let early = spawn_with(&settings);
    let late = spawn_with(&settings);
    let id = unique("c");
    let item = format!("/v1/carts_lag/{id}");
    assert_eq!(
        Client::new()
            .put(&writer, &item, json!({"total": 1.0}))
            .await
            .status,
        201
    );
    let replayed = eventually(Duration::from_secs(10), || async {
        pg.replica_version("carts_lag", &id) == 1
    })
    .await;
    assert!(replayed, "the replica has version 1");

    let _delay = pg.delay_replica("3s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acknowledged = Client::new().put(&writer, &item, json!({"total": 2.0})).await;
    assert_eq!(acknowledged.status, 200);
    let acked = tokio::time::Instant::now();
    let explain = format!("{item}?explain=true");

    // 1.2 s later the replica (3 s behind for this write) still shows version 1, and is
    // within the 2 s bound: it may serve it, as old as it is.
    tokio::time::sleep_until(acked + Duration::from_millis(1200)).await;
    let sent = acked.elapsed();
    let read = Client::new().get(&early, &explain).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let (tier, age_ms) = explained(&read);
    eprintln!(
        "{:?} after the ack: version {} from the {tier}, age_ms {age_ms}, Age {}",
        sent,
        read.version(),
        read.header("age")
    );
    if read.version() == 1 {
        assert!(
            age_ms >= sent.as_millis() as u64,
            "the old version is at least {sent:?} old, not {age_ms} ms"
        );
        assert!(age_ms <= 2000, "within the bound: {age_ms} ms");
        let age: u64 = read.header("age").parse().unwrap();
        assert!(age >= sent.as_secs(), "Age {age} understates {sent:?}");
    }
    if sent < Duration::from_millis(1700) {
        assert_eq!(
            (read.version(), tier.as_str()),
            (1, "replica"),
            "a replica within the bound serves bounded fields"
        );
    }

    // 2.5 s later the replica is past the bound: the primary serves.
    tokio::time::sleep_until(acked + Duration::from_millis(2500)).await;
    let sent = acked.elapsed();
    let read = Client::new().get(&late, &explain).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let (tier, age_ms) = explained(&read);
    eprintln!(
        "{:?} after the ack: version {} from the {tier}, age_ms {age_ms}, Age {}",
        sent,
        read.version(),
        read.header("age")
    );
    assert_eq!(
        read.version(),
        2,
        "a bounded field is never served past its bound: {}",
        read.body
    );
    assert_eq!(tier, "primary");
}

#[actix_web::test]
async fn with_the_primary_down_past_replica_max_lag_a_replayed_replica_serves_each_class_while_it_allows() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let extra = format!(
        "{}{}\n[collections.outage_memos]\nfreshness = {{ class = \"relaxed\", ttl = \"200ms\", \
         stale_while_revalidate = \"0s\", stale_if_error = \"1h\" }}\n\
         [collections.outage_memos.fields]\ntext = {{ type = \"string\" }}\n",
        pg::collection("outage_relaxed"),
        pg::bounded("outage_bounded", "3s")
    );
    let mut settings = pg.settings(&extra).await;
    if let edgecache_config::OriginSettings::Postgres(pg) = &mut settings.origin {
        pg.replica_max_lag = Duration::from_secs(1);
    }
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);

    // Acknowledged before the outage, never read through B.
    let run = unique("o");
    let relaxed = |i: usize| format!("/v1/outage_relaxed/{run}-{i}");
    let bounded = |i: usize| format!("/v1/outage_bounded/{run}-{i}");
    for i in 0..2 {
        let put = Client::new()
            .put(&a, &relaxed(i), json!({"title": format!("r{i}")}))
            .await;
        assert_eq!(put.status, 201);
    }
    let memo = format!("/v1/outage_memos/{run}");
    assert_eq!(
        Client::new().put(&a, &memo, json!({"text": "kept"})).await.status,
        201
    );
    const BOUNDED: usize = 60;
    for i in 0..BOUNDED {
        let put = Client::new().put(&a, &bounded(i), json!({"total": i})).await;
        assert_eq!(put.status, 201);
    }
    let last = format!("{run}-{}", BOUNDED - 1);
    let replayed = eventually(Duration::from_secs(10), || async {
        pg.replica_version("outage_bounded", &last) == 1
    })
    .await;
    assert!(replayed, "the replica has replayed every write");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let down = pg.primary_down();
    // The primary was last seen before this instant: every answer is older than the
    // time since.
    let stopped = tokio::time::Instant::now();
    let read = |path: String| {
        let b = &b;
        async move {
            let sent = stopped.elapsed();
            let reply = Client::new().get(b, &format!("{path}?explain=true")).await;
            (sent, reply)
        }
    };
    let field_of = |reply: &helpers::Reply, name: &str| {
        reply.body["_explain"]["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["field"] == name).cloned())
            .unwrap_or_else(|| panic!("explained: {}", reply.body))
    };

    // Past replica_max_lag, the replica has everything the primary was last seen
    // with: it stays in rotation.
    tokio::time::sleep_until(stopped + Duration::from_millis(1500)).await;
    let (sent, reply) = read(relaxed(0)).await;
    assert_eq!(
        reply.status, 200,
        "relaxed fields from the replica: {}",
        reply.body
    );
    assert_eq!(reply.body["title"], "r0");
    let field = field_of(&reply, "title");
    assert_eq!(field["tier"], "replica", "{}", reply.body);
    assert!(field["age_ms"].as_u64().unwrap() >= sent.as_millis() as u64);
    // A relaxed field past its TTL (200 ms): the replica stands in for the primary
    // within stale-if-error, as old as it is.
    let (sent, reply) = read(memo).await;
    assert_eq!(reply.status, 200, "within stale-if-error: {}", reply.body);
    assert_eq!(reply.body["text"], "kept");
    let field = field_of(&reply, "text");
    assert_eq!(field["tier"], "replica");
    assert!(field["age_ms"].as_u64().unwrap() >= sent.as_millis() as u64);

    // Bounded fields: from the replica while its staleness (the outage, at least) is
    // within the bound, then 503 — never older than the bound.
    let mut last_served = None;
    let mut first_refused = None;
    for i in 0..BOUNDED {
        let (sent, reply) = read(bounded(i)).await;
        match reply.status.as_u16() {
            200 => {
                let field = field_of(&reply, "total");
                let age_ms = field["age_ms"].as_u64().unwrap();
                assert_eq!(field["tier"], "replica");
                assert_eq!(reply.body["total"].as_f64(), Some(i as f64));
                assert!(
                    age_ms >= sent.as_millis() as u64,
                    "{age_ms} ms understates the outage, {sent:?}"
                );
                assert!(age_ms <= 3000, "past the bound: {age_ms} ms");
                assert!(sent < Duration::from_secs(3), "served {sent:?} into the outage");
                assert!(first_refused.is_none(), "served again after a refusal");
                last_served = Some((sent, age_ms));
            }
            503 => {
                assert_eq!(reply.problem(), "origin-unavailable");
                first_refused.get_or_insert(sent);
            }
            other => panic!("{other}: {}", reply.body),
        }
        if sent > Duration::from_millis(3500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "primary down: bounded (3 s) last served at {last_served:?} (sent, age_ms), \
         first refused at {first_refused:?}"
    );
    let (served_at, _) = last_served.expect("the replica served bounded fields in the outage");
    assert!(
        served_at > Duration::from_secs(1),
        "served past replica_max_lag: {served_at:?}"
    );
    assert!(
        first_refused.is_some(),
        "refused once the outage alone passed the bound"
    );

    // Relaxed fields go on being served within their class.
    let (sent, reply) = read(relaxed(1)).await;
    assert_eq!(reply.status, 200, "{sent:?} into the outage: {}", reply.body);
    assert_eq!(field_of(&reply, "title")["tier"], "replica");
    eprintln!(
        "primary down: relaxed served from the replica at {sent:?}, age_ms {}",
        field_of(&reply, "title")["age_ms"]
    );

    drop(down);
    let writable = eventually(Duration::from_secs(15), || async {
        Client::new()
            .put(&a, &relaxed(2), json!({"title": "after"}))
            .await
            .status
            .is_success()
    })
    .await;
    assert!(writable, "writes work again once the primary is back");
}

/// Statements are prepared once per connection (issue 18). A restart of the primary
/// closes every pooled connection, and their prepared statements with them: the
/// connections opened after it prepare their own, and every kind of write works again.
#[actix_web::test]
async fn after_a_restart_of_the_primary_every_kind_of_write_prepares_its_statements_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let table = unique("restart").replace('-', "_");
    let settings = pg.settings(&pg::shop(&table)).await;
    let node = spawn_with(&settings);
    let item = format!("/v1/{table}/cup");
    // Keys unique to the run: idempotency records outlive a test on a shared cluster.
    let (first_key, second_key) = (format!("{table}-key-1"), format!("{table}-key-2"));
    let keyed = |key: &str| {
        let key = key.to_owned();
        let request = node.request(reqwest::Method::PUT, &item);
        async move {
            Client::new()
                .send_with(
                    request,
                    Some(("application/json", json!({"label": "keyed", "stock": 1}))),
                    &[("idempotency-key", &key)],
                )
                .await
        }
    };
    // Every statement prepared on the connections before the restart.
    let mut c = Client::new();
    assert_eq!(
        c.put(&node, &item, json!({"label": "cup", "stock": 1}))
            .await
            .status,
        201
    );
    assert_eq!(c.patch(&node, &item, json!({"label": "mug"})).await.status, 200);
    assert_eq!(
        c.increment(&node, &item, json!({"field": "stock", "by": 1}))
            .await
            .status,
        200
    );
    assert_eq!(keyed(&first_key).await.status, 200);

    pg.stop_primary();
    pg.start_primary();
    let back = eventually(Duration::from_secs(15), || async {
        Client::new()
            .put(&node, &item, json!({"label": "back", "stock": 1}))
            .await
            .status
            == 200
    })
    .await;
    assert!(back, "writes work again after the restart");
    let patched = c.patch(&node, &item, json!({"label": "bowl"})).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let incremented = c
        .increment(&node, &item, json!({"field": "stock", "by": 2}))
        .await;
    assert_eq!(incremented.status, 200, "{}", incremented.body);
    assert_eq!(incremented.body["stock"], 3);
    let replayed = keyed(&first_key).await;
    assert_eq!(replayed.header("idempotent-replayed"), "true");
    assert_eq!(keyed(&second_key).await.status, 200);
    let read = Client::new().get(&node, &item).await;
    assert_eq!(
        (read.body["label"].as_str(), read.body["stock"].as_i64()),
        (Some("keyed"), Some(1))
    );
}

#[actix_web::test]
async fn with_the_primary_down_a_projection_without_strict_fields_is_served_and_the_whole_product_is_not() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let table = unique("projected").replace('-', "_");
    let settings = pg.settings(&pg::shop(&table)).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    let cached = format!("/v1/{table}/{}", unique("cached"));
    let uncached = format!("/v1/{table}/{}", unique("uncached"));
    for item in [&cached, &uncached] {
        let put = Client::new()
            .put(&a, item, json!({"label": "kettle", "price": 49.0, "stock": 3}))
            .await;
        assert_eq!(put.status, 201);
    }
    // B holds one of them; the replica has both before the primary goes away.
    assert_eq!(Client::new().get(&b, &cached).await.status, 200);
    let replicated = eventually(Duration::from_secs(10), || async {
        let id = uncached.rsplit('/').next().unwrap();
        pg.replica_version(&table, id) > 0
    })
    .await;
    assert!(replicated, "the replica replayed the writes");

    let _down = pg.primary_down();
    let strict_before = b.node.metrics().strict_reads.get();
    for item in [&cached, &uncached] {
        let page = Client::new().get(&b, &format!("{item}?fields=label")).await;
        assert_eq!(page.status, 200, "{item}: {}", page.body);
        assert_eq!(page.body["label"], "kettle");
        assert!(page.body.get("stock").is_none());
        let whole = Client::new().get(&b, item).await;
        assert_eq!(whole.status, 503, "{item}: the strict stock is never guessed");
        assert_eq!(whole.problem(), "origin-unavailable");
    }
    assert_eq!(
        b.node.metrics().strict_reads.get(),
        strict_before,
        "no strict read succeeded while the primary was down"
    );
}

/// A commit made with `synchronous_commit = off` returns before its WAL is written;
/// the position a write is answered with must still lie past its commit record, or a
/// replica that reached it would show the item without the write. The session's
/// token holds one item mark, so the write's mark is compacted into a floor at its
/// position and only that position stands between the session and the replica's
/// older copy on another node. Both write paths: a write committed on its own, and
/// a keyed one (its transaction records the key).
#[actix_web::test]
async fn a_write_committed_without_waiting_for_its_wal_is_answered_with_a_position_past_its_commit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg::cluster();
    let mut settings = pg
        .settings(&format!(
            "{}\n[session]\nmax_token_items = 1\n",
            pg::collection("async_commit")
        ))
        .await;
    let items = [false, true].map(|keyed| (keyed, format!("/v1/async_commit/{}", unique("a"))));
    // Version 1 is committed synchronously and replayed everywhere first.
    let sync_node = spawn_with(&settings);
    for (_, item) in &items {
        assert_eq!(
            Client::new().put(&sync_node, item, json!({"n": 1})).await.status,
            201
        );
    }
    sync_node.stop().await;
    let id = |path: &str| path.rsplit('/').next().unwrap().to_owned();
    let replayed = eventually(Duration::from_secs(10), || async {
        items
            .iter()
            .all(|(_, item)| pg.replica_version("async_commit", &id(item)) == 1)
    })
    .await;
    assert!(replayed, "the replica shows version 1");

    if let edgecache_config::OriginSettings::Postgres(origin) = &mut settings.origin {
        origin.primary = pg
            .primary_as("edgecache_async", "synchronous_commit = off")
            .into();
        // Only the token decides what B may serve.
        origin.change_feed = edgecache_config::ChangeFeed::Off;
    }
    let _writer_waits = pg.wal_writer_waits();
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    let in_rotation = eventually(Duration::from_secs(5), || async {
        // Items B has not read yet (absent ones): each read goes to the origin.
        let absent = format!("/v1/async_commit/{}", unique("absent"));
        Client::new().get(&b, &absent).await;
        b.node.metrics().reads_from(Tier::Replica) > 0
    })
    .await;
    assert!(in_rotation, "B reads from the replica");
    for (keyed, item) in &items {
        let mut user = Client::new();
        let key = unique("key");
        let headers: &[(&str, &str)] = if *keyed { &[("idempotency-key", &key)] } else { &[] };
        let body = Some(("application/json", json!({"n": 2})));
        let wrote = user
            .send_with(a.request(reqwest::Method::PUT, item), body, headers)
            .await;
        assert_eq!(wrote.status, 200, "{}", wrote.body);
        assert_eq!(wrote.version(), 2);
        // A second item: the first one's mark gives way to a floor at its position.
        let other = format!("/v1/async_commit/{}", unique("b"));
        assert_eq!(user.put(&a, &other, json!({"n": 1})).await.status, 201);
        // A synchronous commit now flushes what the asynchronous ones left in the WAL
        // buffers: the replica receives all of it, commit records included, and
        // applies each commit 300 ms late — so it soon stands past an understated
        // position while the write is not yet visible there.
        pg.psql(&pg.primary, &["SELECT txid_current()"]);

        // B has no copy: it reads from the replica once that reached the floor
        // (within replica_wait, 1 s), else from the primary.
        let read = user.get(&b, item).await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(
            read.body["n"],
            2,
            "keyed {keyed}: the session reads its own write ({}; the replica has version {})",
            read.cache_status(),
            pg.replica_version("async_commit", &id(item))
        );
    }
    a.stop().await;
    b.stop().await;
}
