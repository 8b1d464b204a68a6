//! Writes happen exactly once: `Idempotency-Key` replays, and honest outcomes — a
//! write answered "not applied" never shows up in the origin, whatever timed out.
//! The same scenarios run over the embedded store and over PostgreSQL.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    settings, spawn_app, spawn_with, unique, Client, Reply, Store, TestApp, CLUSTER_SECRETS,
};
use crate::pg;

const SHOP: &str = r#"
[collections.shop]
freshness = { class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }
[collections.shop.fields]
label = { type = "string" }
stock = { type = "integer", min = 0, freshness = { class = "strict" } }
"#;

/// Sends a write with `Idempotency-Key: key` (none if empty).
async fn keyed(
    client: &mut Client,
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    key: &str,
) -> Reply {
    let content = if method == Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let headers: &[(&str, &str)] = if key.is_empty() {
        &[]
    } else {
        &[("idempotency-key", key)]
    };
    client
        .send_with(app.request(method, path), body.map(|b| (content, b)), headers)
        .await
}

/// The item as the origin has it now, read by a node with nothing cached.
async fn stored(settings: &edgecache_config::Settings, path: &str) -> Reply {
    let fresh = spawn_with(settings);
    let reply = Client::new().get(&fresh, path).await;
    fresh.stop().await;
    reply
}

#[actix_web::test]
async fn a_keyed_write_sent_again_is_answered_from_its_record_on_any_node_and_applies_once() {
    let store = Store::new();
    let (a, b) = (spawn_app(&store, SHOP), spawn_app(&store, SHOP));
    let item = "/v1/shop/cup";
    let body = json!({"label": "cup", "stock": 10});
    let mut user = Client::new();
    let first = keyed(&mut user, &a, Method::PUT, item, Some(body.clone()), "k-put-1").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.header("idempotent-replayed"), "");

    // The client never saw the answer and sends it again, through another node.
    let mut retry = Client::new();
    let again = keyed(&mut retry, &b, Method::PUT, item, Some(body.clone()), "k-put-1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(again.version(), first.version());
    assert_eq!(again.body, first.body);

    // An increment, sent three times with one key: applied once.
    for app in [&a, &b, &a] {
        let reply = keyed(
            &mut user,
            app,
            Method::POST,
            &format!("{item}/increment"),
            Some(json!({"field": "stock", "by": -3})),
            "k-inc-1",
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["stock"], 7);
        assert_eq!(reply.version(), 2);
    }
    let now = stored(&settings(&store.path, SHOP), item).await;
    assert_eq!(now.body["stock"], 7, "the increment applied exactly once");
    assert_eq!(now.version(), 2);
    let replayed = a.node.metrics().writes_replayed.get() + b.node.metrics().writes_replayed.get();
    assert_eq!(
        replayed, 3,
        "one PUT and two increments answered from their records"
    );
    let metrics = b.scrape().await;
    assert!(
        metrics.contains("edgecache_write_answers_total{answer=\"replayed\"} 2"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn the_same_key_with_another_request_is_refused_and_changes_nothing() {
    let store = Store::new();
    let app = spawn_app(&store, SHOP);
    let mut user = Client::new();
    let body = json!({"label": "mug", "stock": 5});
    let first = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/mug",
        Some(body.clone()),
        "k-1",
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);

    let other_body = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/mug",
        Some(json!({"label": "bowl", "stock": 5})),
        "k-1",
    )
    .await;
    assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other_body.problem(), "idempotency-key-reused");
    let other_item = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/bowl",
        Some(body.clone()),
        "k-1",
    )
    .await;
    assert_eq!(other_item.problem(), "idempotency-key-reused");
    let other_method = keyed(
        &mut user,
        &app,
        Method::PATCH,
        "/v1/shop/mug",
        Some(body.clone()),
        "k-1",
    )
    .await;
    assert_eq!(other_method.problem(), "idempotency-key-reused");
    // The same document with members in another order is the same request.
    let reordered = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/mug",
        Some(serde_json::from_str(r#"{"stock": 5, "label": "mug"}"#).unwrap()),
        "k-1",
    )
    .await;
    assert_eq!(reordered.status, StatusCode::CREATED);
    assert_eq!(reordered.header("idempotent-replayed"), "true");

    let now = stored(&settings(&store.path, SHOP), "/v1/shop/mug").await;
    assert_eq!(now.body["label"], "mug");
    assert_eq!(now.version(), 1);
    assert_eq!(
        stored(&settings(&store.path, SHOP), "/v1/shop/bowl").await.status,
        StatusCode::NOT_FOUND
    );
}

#[actix_web::test]
async fn invalid_idempotency_keys_are_refused_before_anything_is_written() {
    let store = Store::new();
    let app = spawn_app(&store, SHOP);
    let long = "k".repeat(256);
    for key in [long.as_str(), "with space", "\"\""] {
        let reply = keyed(
            &mut Client::new(),
            &app,
            Method::PUT,
            "/v1/shop/x",
            Some(json!({"label": "x"})),
            key,
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(reply.problem(), "invalid-idempotency-key");
    }
    assert_eq!(
        Client::new().get(&app, "/v1/shop/x").await.status,
        StatusCode::NOT_FOUND
    );
}

#[actix_web::test]
async fn parallel_requests_with_one_key_apply_once() {
    let store = Store::new();
    let app = spawn_app(&store, SHOP);
    Client::new()
        .put(&app, "/v1/shop/pan", json!({"label": "pan", "stock": 100}))
        .await;
    let replies = join_all((0..12).map(|_| {
        let app = &app;
        async move {
            keyed(
                &mut Client::new(),
                app,
                Method::POST,
                "/v1/shop/pan/increment",
                Some(json!({"field": "stock", "by": -1})),
                "k-parallel",
            )
            .await
        }
    }))
    .await;
    for reply in &replies {
        assert!(
            reply.status == StatusCode::OK || reply.problem() == "idempotency-key-in-flight",
            "{} {}",
            reply.status,
            reply.body
        );
    }
    let now = stored(&settings(&store.path, SHOP), "/v1/shop/pan").await;
    assert_eq!(now.body["stock"], 99, "applied once");
}

#[actix_web::test]
async fn a_replay_survives_a_node_restart_and_records_expire_after_their_retention() {
    let store = Store::new();
    let config = format!("{SHOP}\n[idempotency]\nretention = \"1s\"\nsweep_interval = \"100ms\"\n");
    let first = spawn_app(&store, &config);
    let body = json!({"label": "jar", "stock": 1});
    let put = keyed(
        &mut Client::new(),
        &first,
        Method::PUT,
        "/v1/shop/jar",
        Some(body.clone()),
        "k-r",
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED);
    first.stop().await;

    let second = spawn_app(&store, &config);
    let replay = keyed(
        &mut Client::new(),
        &second,
        Method::PUT,
        "/v1/shop/jar",
        Some(body),
        "k-r",
    )
    .await;
    assert_eq!(replay.header("idempotent-replayed"), "true", "{}", replay.body);
    assert_eq!(replay.version(), 1);

    // Past the retention the key is free again: another request with it applies.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let reused = keyed(
        &mut Client::new(),
        &second,
        Method::PUT,
        "/v1/shop/jar",
        Some(json!({"label": "jar 2", "stock": 1})),
        "k-r",
    )
    .await;
    assert_eq!(reused.status, StatusCode::OK, "{}", reused.body);
    assert_eq!(reused.header("idempotent-replayed"), "");
    assert_eq!(reused.version(), 2);
    // And the sweep deleted the expired record (the store holds only the new one).
    let db = rusqlite::Connection::open(&store.path).unwrap();
    let kept: i64 = db
        .query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
}

/// What one write of a batch was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Applied,
    NotApplied,
    Unknown,
}

fn answer(reply: &Reply) -> Answer {
    if reply.status.is_success() {
        return Answer::Applied;
    }
    match reply.problem() {
        "write-outcome-unknown" => Answer::Unknown,
        "session-busy" | "origin-unavailable" | "idempotency-key-in-flight" => Answer::NotApplied,
        other => panic!("unexpected answer {} {other}: {}", reply.status, reply.body),
    }
}

/// One session sends `n` increments of `counter` (by -1) and `n` PUTs of `label`
/// (label `put-<i>`) at once, each with its own key, while the items are held busy
/// elsewhere for longer than the write timeout. Returns each write's answer, after
/// checking the origin against them: an acknowledged write is applied, a write
/// answered "not applied" is not, an unknown one may be. Then every write that was
/// not acknowledged is sent again with its key, until each is; each must be applied
/// exactly once.
async fn busy_items_then_retries(
    app: &TestApp,
    settings: &edgecache_config::Settings,
    counter: &str,
    label: &str,
    hold: impl std::future::Future<Output = ()>,
    n: usize,
) -> Vec<Answer> {
    let mut session = Client::new();
    session.get(app, counter).await;
    let writes: Vec<(Method, String, Value, String)> = (0..n)
        .flat_map(|i| {
            [
                (
                    Method::POST,
                    format!("{counter}/increment"),
                    json!({"field": "stock", "by": -1}),
                    unique(&format!("inc{i}")),
                ),
                (
                    Method::PUT,
                    label.to_owned(),
                    json!({"label": format!("put-{i}")}),
                    unique(&format!("put{i}")),
                ),
            ]
        })
        .collect();
    let send = |(method, path, body, key): &(Method, String, Value, String)| {
        let mut client = session.clone();
        let (method, path, body, key) = (method.clone(), path.clone(), body.clone(), key.clone());
        async move { keyed(&mut client, app, method, &path, Some(body), &key).await }
    };
    let (replies, ()) = futures_util::join!(join_all(writes.iter().map(send)), hold);
    let answers: Vec<Answer> = replies.iter().map(answer).collect();
    // Let anything still running finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let count = |a: Answer, kind: &Method| {
        answers
            .iter()
            .zip(&writes)
            .filter(|(x, w)| **x == a && w.0 == *kind)
            .count() as i64
    };
    let (applied, unknown) = (
        count(Answer::Applied, &Method::POST),
        count(Answer::Unknown, &Method::POST),
    );
    let stock = stored(settings, counter).await.body["stock"].as_i64().unwrap();
    let decremented = 1000 - stock;
    assert!(
        (applied..=applied + unknown).contains(&decremented),
        "{decremented} increments applied; answered: {applied} applied, {unknown} unknown, the rest not applied: {answers:?}"
    );
    let put = stored(settings, label).await;
    let (applied, unknown) = (
        count(Answer::Applied, &Method::PUT),
        count(Answer::Unknown, &Method::PUT),
    );
    assert!(
        (applied..=applied + unknown).contains(&(put.version() as i64 - 1)),
        "{} PUTs applied; answered: {applied} applied, {unknown} unknown: {answers:?}",
        put.version() - 1
    );
    if put.version() > 1 {
        let i: usize = put.body["label"].as_str().unwrap()["put-".len()..]
            .parse()
            .unwrap();
        assert_ne!(
            answers[2 * i + 1],
            Answer::NotApplied,
            "the stored label is that of a PUT answered \"not applied\""
        );
    }

    // Every write not acknowledged is retried with its key until it is.
    for (write, first) in writes.iter().zip(&answers) {
        if *first == Answer::Applied {
            continue;
        }
        let mut done = false;
        for _ in 0..20 {
            let reply = send(write).await;
            if reply.status.is_success() {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "{write:?} was acknowledged on retry");
    }
    let stock = stored(settings, counter).await.body["stock"].as_i64().unwrap();
    assert_eq!(stock, 1000 - n as i64, "every increment applied exactly once");
    assert_eq!(
        stored(settings, label).await.version(),
        1 + n as u64,
        "every PUT applied exactly once"
    );
    answers
}

#[actix_web::test]
async fn embedded_store_busy_past_the_write_timeout_nothing_answered_not_applied_is_applied() {
    let store = Store::new();
    let config = format!("{SHOP}\n[session]\nwrite_timeout = \"400ms\"\n");
    let mut settings = settings(&store.path, &config);
    if let edgecache_config::OriginSettings::Embedded { busy_timeout, .. } = &mut settings.origin {
        *busy_timeout = Duration::from_secs(5);
    }
    let app = spawn_with(&settings);
    Client::new()
        .put(&app, "/v1/shop/c", json!({"label": "c", "stock": 1000}))
        .await;
    Client::new().put(&app, "/v1/shop/l", json!({"label": "l"})).await;

    // Another process holds the store's write lock for 1 s.
    let path = store.path.clone();
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let holder = std::thread::spawn(move || {
        let mut db = rusqlite::Connection::open(path).unwrap();
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        tx.commit().unwrap();
    });
    locked.await.unwrap();
    let answers = busy_items_then_retries(&app, &settings, "/v1/shop/c", "/v1/shop/l", async {}, 4).await;
    holder.join().unwrap();
    assert!(
        answers.contains(&Answer::Unknown) && answers.contains(&Answer::NotApplied),
        "the scenario ran a write past its timeout and gave up queued ones: {answers:?}"
    );
}

#[actix_web::test]
async fn postgres_rows_locked_past_the_write_timeout_nothing_answered_not_applied_is_applied() {
    let pg = pg::cluster();
    let table = unique("busy").replace('-', "_");
    let config = format!(
        "{}\n[session]\nwrite_timeout = \"1s\"\n[idempotency]\nin_flight_wait = \"3s\"\n",
        pg::shop(&table)
    );
    let mut settings = pg.settings(&config).await;
    if let edgecache_config::OriginSettings::Postgres(p) = &mut settings.origin {
        p.statement_timeout = Duration::from_secs(5);
    }
    let app = spawn_with(&settings);
    let (counter, label) = (format!("/v1/{table}/c"), format!("/v1/{table}/l"));
    Client::new()
        .put(&app, &counter, json!({"label": "c", "stock": 1000}))
        .await;
    Client::new().put(&app, &label, json!({"label": "l"})).await;

    // Another transaction holds both rows for 1.5 s.
    let (db, connection) = tokio_postgres::connect(&pg.primary, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    db.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM \"{table}\" WHERE id IN ('c', 'l') FOR UPDATE"
    ))
    .await
    .unwrap();
    let hold = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        db.batch_execute("COMMIT").await.unwrap();
    };
    let answers = busy_items_then_retries(&app, &settings, &counter, &label, hold, 4).await;
    assert!(
        answers.contains(&Answer::Unknown) && answers.contains(&Answer::NotApplied),
        "the scenario ran a write past its timeout and gave up queued ones: {answers:?}"
    );
}

#[actix_web::test]
async fn the_shipped_nginx_sends_a_write_once_and_the_clients_keyed_retry_answers_the_recorded_result() {
    let pg = pg::cluster();
    let table = unique("lb").replace('-', "_");
    let config = format!(
        "{}\n[session]\nwrite_timeout = \"1s\"\n[idempotency]\nin_flight_wait = \"3s\"\n",
        pg::collection(&table)
    );
    let mut settings = pg.settings(&config).await;
    if let edgecache_config::OriginSettings::Postgres(p) = &mut settings.origin {
        p.statement_timeout = Duration::from_secs(5);
    }
    let (a, b) = (spawn_with(&settings), spawn_with(&settings));
    let nginx = crate::nginx::start(&[&a, &b]);
    let http = reqwest::Client::new();
    let item = format!("/v1/{table}/i");
    let url = format!("{}{item}", nginx.address);
    let mut user = Client::new();
    let created = user
        .send_with(
            http.put(&url),
            Some(("application/json", json!({"title": "v1"}))),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    let (db, connection) = tokio_postgres::connect(&pg.primary, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    // The item's row is held for 1.5 s: the first node's write starts, then waits
    // past the node's 1 s write timeout.
    let lock = format!("BEGIN; SELECT 1 FROM \"{table}\" WHERE id = 'i' FOR UPDATE");
    let release = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        db.batch_execute("COMMIT").await.unwrap();
    };

    db.batch_execute(&lock).await.unwrap();
    let put = user.send_with(
        http.put(&url),
        Some(("application/json", json!({"title": "v2"}))),
        &[],
    );
    let (unkeyed, ()) = futures_util::join!(put, release());
    assert_eq!(
        unkeyed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unkeyed.body
    );
    assert_eq!(unkeyed.problem(), "write-outcome-unknown");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = stored(&settings, &item).await;
    assert_eq!(
        after.version(),
        2,
        "one client PUT raised the version by one, not by a retry"
    );

    // With a key, nginx still sends the write once; the client retries with the key
    // and is answered from the record.
    db.batch_execute(&lock).await.unwrap();
    let key = unique("lb-key");
    let headers = [("idempotency-key", key.as_str())];
    let body = json!({"title": "v3"});
    let put = user.send_with(http.put(&url), Some(("application/json", body.clone())), &headers);
    let (first, ()) = futures_util::join!(put, release());
    assert_eq!(first.problem(), "write-outcome-unknown", "{}", first.body);
    let retried = user
        .send_with(http.put(&url), Some(("application/json", body)), &headers)
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.header("idempotent-replayed"), "true");
    assert_eq!(retried.version(), 3);
    assert_eq!(stored(&settings, &item).await.version(), 3, "applied once");
}

/// A peer that is healthy but never answers a forwarded request (it hangs after
/// reading it, as a node stuck in a long write would).
async fn hanging_peer() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    actix_web::rt::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            actix_web::rt::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 64 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"GET /cluster/health") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                        .await;
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    port
}

#[actix_web::test]
async fn a_write_forwarded_to_an_owner_that_never_answers_is_applied_here_only_with_a_key() {
    let store = Store::new();
    let peer = hanging_peer().await;
    let config = format!(
        "{SHOP}\n[node]\nid = \"n0\"\nregion = \"test\"\n[cluster]\n{CLUSTER_SECRETS}\nhealth_interval = \"50ms\"\n\
         health_timeout = \"200ms\"\nforward_timeout = \"500ms\"\n[cluster.peers]\nn1 = \"127.0.0.1:{peer}\"\n"
    );
    let app = spawn_app(&store, &config);
    let in_rotation = crate::helpers::eventually(Duration::from_secs(5), || async {
        app.cluster.owner("probe-0").is_some() || app.cluster.owner("probe-1").is_some()
    })
    .await;
    assert!(in_rotation, "the peer is in rotation");
    // A session the hanging peer owns.
    let id = (0..)
        .map(|i| format!("owned-{i}"))
        .find(|id| app.cluster.owner(id).is_some_and(|p| p.id == "n1"))
        .unwrap();

    let mut user = Client::with_id(&id);
    let unkeyed = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/f",
        Some(json!({"label": "f", "stock": 1})),
        "",
    )
    .await;
    assert_eq!(
        unkeyed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        unkeyed.body
    );
    assert_eq!(
        unkeyed.problem(),
        "write-outcome-unknown",
        "never applied here as well"
    );
    assert_eq!(
        Client::new().get(&app, "/v1/shop/f").await.status,
        StatusCode::NOT_FOUND
    );

    let key = unique("fwd");
    let with_key = keyed(
        &mut user,
        &app,
        Method::PUT,
        "/v1/shop/f",
        Some(json!({"label": "f", "stock": 1})),
        &key,
    )
    .await;
    assert_eq!(with_key.status, StatusCode::CREATED, "{}", with_key.body);
    assert_eq!(with_key.version(), 1);

    // Refused here, but the owner's attempt may still commit: unknown, not "not
    // applied".
    let refused_here = keyed(
        &mut user,
        &app,
        Method::POST,
        "/v1/shop/f/increment",
        Some(json!({"field": "stock", "by": -5})),
        &unique("fwd-inc"),
    )
    .await;
    assert_eq!(
        refused_here.problem(),
        "write-outcome-unknown",
        "{}",
        refused_here.body
    );
}
