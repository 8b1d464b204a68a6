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
        pg.change_feed = false;
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
