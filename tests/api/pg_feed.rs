//! Change data capture through logical replication (issue 17): every node follows
//! the primary's pgoutput stream on a temporary slot of its own, so a change made
//! outside edgecache (psql, a batch job) reaches every node, with a higher version,
//! and a node that dies leaves no slot behind.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use edgecache_services::metrics::Tier;

use crate::helpers::{eventually, spawn_with, unique, Client, TestApp};
use crate::pg::{cluster, collection, Cluster};

/// A connection to the primary outside edgecache, as a batch job holds one.
async fn outside_writer(pg: &Cluster) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.primary, tokio_postgres::NoTls)
        .await
        .expect("the primary answers");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Waits until every node's change feed follows: a change committed before a
/// node's feed started is not announced to it (the node clears its cache when the
/// feed starts instead), so a test of invalidations starts writing after this.
pub async fn following(nodes: &[&TestApp]) {
    for node in nodes {
        let ready = eventually(std::time::Duration::from_secs(15), || async {
            node.node.change_feed().is_some_and(|f| f.following)
        })
        .await;
        assert!(ready, "the node's change feed follows");
    }
}

/// The q-quantile of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[actix_web::test]
async fn updates_and_deletes_made_outside_edgecache_reach_every_node_within_a_bound() {
    let pg = cluster();
    let table = unique("cdc").replace('-', "_");
    let settings = pg.settings(&collection(&table)).await;
    let apps = [
        spawn_with(&settings),
        spawn_with(&settings),
        spawn_with(&settings),
    ];
    let nodes: Vec<&TestApp> = apps.iter().collect();
    following(&nodes).await;
    let db = outside_writer(&pg).await;

    const ITEMS: usize = 30;
    let path = |i: usize| format!("/v1/{table}/i{i}");
    for i in 0..ITEMS {
        let put = Client::new()
            .put(nodes[0], &path(i), json!({"title": "v1", "n": i}))
            .await;
        assert_eq!(put.status, 201, "{}", put.body);
    }

    // 30 UPDATEs, then 30 DELETEs, each committed by psql's equal: from its commit
    // until no node serves the old version to a fresh session.
    let mut latencies = Vec::new();
    let mut last_before = 0u64;
    for round in 0..2 * ITEMS {
        let i = round % ITEMS;
        let delete = round >= ITEMS;
        // Every node holds the item's current version.
        let mut old = 0;
        for node in &nodes {
            let read = Client::new().get(node, &path(i)).await;
            assert_eq!(read.status, 200, "{}", read.body);
            old = read.version();
        }
        let id = format!("i{i}");
        let before: tokio_postgres::types::PgLsn = db
            .query_one("SELECT pg_current_wal_lsn()", &[])
            .await
            .unwrap()
            .get(0);
        last_before = u64::from(before);
        if delete {
            db.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id])
                .await
                .unwrap();
        } else {
            db.execute(&format!("UPDATE {table} SET title = 'v2' WHERE id = $1"), &[&id])
                .await
                .unwrap();
        }
        let committed = Instant::now();
        let mut pending: Vec<&TestApp> = nodes.clone();
        while !pending.is_empty() {
            assert!(
                committed.elapsed() < Duration::from_secs(10),
                "item {i}: {} node(s) still served version {old} 10 s after the commit",
                pending.len()
            );
            let mut still = Vec::new();
            for node in pending {
                let read = Client::new().get(node, &path(i)).await;
                let current = if delete {
                    read.status == 404
                } else {
                    read.status == 200 && read.body["title"] == "v2" && read.version() > old
                };
                if !current {
                    assert!(
                        read.status == 200 && read.version() == old,
                        "item {i}: neither the old nor the new version: {} {}",
                        read.status,
                        read.body
                    );
                    still.push(node);
                }
            }
            pending = still;
        }
        latencies.push(committed.elapsed());
        let version: i64 = db
            .query_one(&format!("SELECT version FROM {table} WHERE id = $1"), &[&id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version as u64, old + 1, "the trigger raised the version by one");
    }
    latencies.sort_unstable();
    eprintln!(
        "external change → no node serves the old version to a fresh session, {} changes over 3 nodes: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        quantile(&latencies, 0.5).as_secs_f64() * 1e3,
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    assert!(
        quantile(&latencies, 0.99) < Duration::from_secs(2),
        "every node drops a changed item within 2 s (p99)"
    );

    // Each node has applied the stream past the last change, and says so.
    for app in &apps {
        let applied = app.node.change_feed().and_then(|f| f.applied).map_or(0, |p| p.0);
        assert!(applied >= last_before, "applied {applied} < {last_before}");
        assert!(app.node.metrics().invalidations.get() >= (2 * ITEMS) as u64);
        let ready: Value = reqwest::get(format!("{}/readyz", app.address))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["change_feed"]["kind"], "logical", "{ready}");
        assert!(
            ready["change_feed"]["applied_lsn"].as_u64().unwrap() >= last_before,
            "{ready}"
        );
        let metrics = reqwest::get(format!("{}/metrics", app.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("edgecache_change_feed_applied_lsn "),
            "{metrics}"
        );
    }
    for app in apps {
        app.stop().await;
    }
}

#[actix_web::test]
async fn an_edgecache_message_emitted_into_the_wal_reaches_the_nodes_as_a_change() {
    let pg = cluster();
    let table = unique("msg").replace('-', "_");
    let settings = pg.settings(&collection(&table)).await;
    let app = spawn_with(&settings);
    following(&[&app]).await;
    let path = format!("/v1/{table}/m");
    Client::new().put(&app, &path, json!({"title": "kept"})).await;
    let before = app.node.metrics().invalidations.get();
    // What another node publishes through the feed (a purge, say): not a row.
    let payload = json!({"c": table, "i": "m", "v": 5}).to_string();
    pg.psql(
        &pg.primary,
        &[&format!(
            "SELECT pg_logical_emit_message(false, 'edgecache', '{payload}')"
        )],
    );
    // Another prefix is not ours.
    pg.psql(
        &pg.primary,
        &[&format!(
            "SELECT pg_logical_emit_message(false, 'other', '{payload}')"
        )],
    );
    let dropped = eventually(Duration::from_secs(5), || async {
        app.node.metrics().invalidations.get() == before + 1
    })
    .await;
    assert!(dropped, "the message's change dropped the cached version 1");
    app.stop().await;
}

/// One observation of a session: an acknowledged write or a read.
struct Op {
    session: usize,
    write: bool,
    item: usize,
    version: u64,
    body: Value,
}

#[actix_web::test]
async fn sessions_keep_their_four_guarantees_with_a_writer_outside_edgecache_in_the_loop() {
    let pg = cluster();
    let table = unique("hist").replace('-', "_");
    let settings = pg.settings(&collection(&table)).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    following(&[&a, &b]).await;
    const ITEMS: usize = 6;
    let path = |i: usize| format!("/v1/{table}/h{i}");
    for i in 0..ITEMS {
        Client::new()
            .put(&a, &path(i), json!({"title": "start", "n": 0}))
            .await;
    }
    let db = outside_writer(&pg).await;
    let done = std::cell::Cell::new(false);
    // The outside writer: UPDATEs of the same items, as fast as it can commit them,
    // until the sessions are done.
    let outside = async {
        let mut rng = SmallRng::seed_from_u64(17);
        let mut writes = 0u64;
        while !done.get() {
            let id = format!("h{}", rng.random_range(0..ITEMS));
            let n: i64 = rng.random_range(1000..100_000);
            db.execute(
                &format!("UPDATE {table} SET title = 'outside', n = $2 WHERE id = $1"),
                &[&id, &n],
            )
            .await
            .unwrap();
            writes += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        writes
    };
    let sessions = (0..8).map(|s| {
        let (a, b, path) = (&a, &b, &path);
        async move {
            let mut rng = SmallRng::seed_from_u64(s as u64);
            let mut user = Client::new();
            let mut ops = Vec::new();
            for k in 0..40 {
                let node = if rng.random_bool(0.5) { a } else { b };
                let item = rng.random_range(0..ITEMS);
                let write = rng.random_bool(0.4);
                let reply = if write {
                    user.patch(node, &path(item), json!({"title": format!("s{s}-{k}"), "n": k}))
                        .await
                } else {
                    user.get(node, &path(item)).await
                };
                assert_eq!(reply.status, 200, "session {s} op {k}: {}", reply.body);
                ops.push(Op {
                    session: s,
                    write,
                    item,
                    version: reply.version(),
                    body: reply.body,
                });
            }
            ops
        }
    });
    let (outside_writes, ops) = futures_util::join!(outside, async {
        let ops = futures_util::future::join_all(sessions).await;
        done.set(true);
        ops
    });
    let ops: Vec<Op> = ops.into_iter().flatten().collect();

    // Per session and item, in issue order: W the highest version it wrote, R the
    // highest it read (each session issues one operation at a time).
    let mut violations = Vec::new();
    let mut seen: HashMap<(usize, usize), (u64, u64)> = HashMap::new();
    for op in &ops {
        let (w, r) = seen.entry((op.session, op.item)).or_default();
        if op.write {
            if op.version <= *w {
                violations.push(format!(
                    "monotonic writes: s{} h{} wrote v{} after v{w}",
                    op.session, op.item, op.version
                ));
            }
            if op.version <= *r {
                violations.push(format!(
                    "writes-follow-reads: s{} h{} wrote v{} after reading v{r}",
                    op.session, op.item, op.version
                ));
            }
            *w = (*w).max(op.version);
        } else {
            if op.version < *w {
                violations.push(format!(
                    "read-your-writes: s{} h{} read v{} after writing v{w}",
                    op.session, op.item, op.version
                ));
            }
            if op.version < *r {
                violations.push(format!(
                    "monotonic reads: s{} h{} read v{} after v{r}",
                    op.session, op.item, op.version
                ));
            }
            *r = (*r).max(op.version);
        }
    }
    // One version, one content — whoever wrote it.
    let mut contents: HashMap<(usize, u64), &Value> = HashMap::new();
    for op in &ops {
        let body = contents.entry((op.item, op.version)).or_insert(&op.body);
        if **body != op.body {
            violations.push(format!(
                "h{} v{} seen as {} and as {}",
                op.item, op.version, body, op.body
            ));
        }
    }
    let outside_seen = ops.iter().filter(|op| op.body["title"] == "outside").count();
    eprintln!(
        "{} session operations, {outside_writes} outside writes, {outside_seen} reads or writes showed an \
         outside write, {} violations",
        ops.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        outside_writes > 20,
        "the outside writer ran alongside the sessions"
    );
    a.stop().await;
    b.stop().await;
}

/// An `edgecache serve` process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn a_node_killed_and_restarted_leaves_no_replication_slot_behind() {
    let pg = cluster();
    let table = unique("kill").replace('-', "_");
    let id = table.clone();
    pg.settings(&collection(&table)).await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::helpers::reserved_port();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 1\nshutdown_timeout = \"1s\"\n\
             [node]\nid = \"{id}\"\n\
             [origin]\nkind = \"postgres\"\nprimary = {:?}\nreplicas = [{:?}]\npool_size = 4\n{}",
            pg.primary,
            pg.replica,
            collection(&table)
        ),
    )
    .unwrap();
    let start = || {
        Node(
            Command::new(env!("CARGO_BIN_EXE_edgecache"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .current_dir(dir.path())
                .env_remove("EDGECACHE_ENVIRONMENT")
                .env("EDGECACHE_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let slots = |active: &str| {
        format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'edgecache_{id}_%'{active}")
    };
    let count = |sql: &str| pg.psql(&pg.primary, &[sql]);

    let mut node = start();
    let held = eventually(Duration::from_secs(15), || async {
        count(&slots(" AND active")) == "1"
    })
    .await;
    assert!(held, "the node follows the stream on a slot of its own");
    Command::new("kill")
        .args(["-KILL", &node.0.id().to_string()])
        .status()
        .unwrap();
    let _ = node.0.wait();
    let gone = eventually(Duration::from_secs(10), || async { count(&slots("")) == "0" }).await;
    assert!(gone, "the killed node's slot is gone: {}", count(&slots("")));

    // Restarted, it takes a new slot, and still only one.
    node = start();
    let held = eventually(Duration::from_secs(15), || async {
        count(&slots(" AND active")) == "1"
    })
    .await;
    assert!(held, "the restarted node follows again");
    // It serves a change made outside edgecache.
    let path = format!("http://127.0.0.1:{port}/v1/{table}/k");
    let client = reqwest::Client::new();
    let put = client
        .request(Method::PUT, &path)
        .header("content-type", "application/json")
        .body(r#"{"title": "one"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let cached = client.get(&path).send().await.unwrap().text().await.unwrap();
    assert!(cached.contains("one"), "{cached}");
    pg.psql(
        &pg.primary,
        &[&format!("UPDATE {table} SET title = 'two' WHERE id = 'k'")],
    );
    let seen = eventually(Duration::from_secs(5), || async {
        client
            .get(&path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("two")
    })
    .await;
    assert!(seen, "the restarted node dropped the changed item");
    Command::new("kill")
        .args(["-KILL", &node.0.id().to_string()])
        .status()
        .unwrap();
    let _ = node.0.wait();
    let gone = eventually(Duration::from_secs(10), || async { count(&slots("")) == "0" }).await;
    assert!(gone, "no slot is left behind");
    drop(node);
}

#[actix_web::test]
async fn the_notify_feed_still_carries_every_kind_of_edgecache_write() {
    let pg = cluster();
    let table = unique("ntf").replace('-', "_");
    let channel = format!("edgecache_{table}");
    let extra = format!(
        "change_feed = \"notify\"\nnotify_channel = \"{channel}\"\n{}",
        collection(&table)
    );
    let settings = pg.settings(&extra).await;
    let a = spawn_with(&settings);
    let b = spawn_with(&settings);
    following(&[&a, &b]).await;
    let path = format!("/v1/{table}/n");
    // B holds the item; each kind of write through A drops B's copy.
    let created = Client::new()
        .put(&a, &path, json!({"title": "put", "n": 1}))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let writes: [(Method, Value, &str); 4] = [
        (Method::PUT, json!({"title": "replaced", "n": 1}), "replaced"),
        (Method::PATCH, json!({"title": "patched"}), "patched"),
        (Method::POST, json!({"field": "n", "by": 2}), "patched"),
        (Method::DELETE, Value::Null, ""),
    ];
    for (method, body, title) in writes {
        let before = Client::new().get(&b, &path).await;
        assert_eq!(before.status, 200, "{}", before.body);
        let (route, content) = match method {
            Method::POST => (format!("{path}/increment"), "application/json"),
            Method::PATCH => (path.clone(), "application/merge-patch+json"),
            _ => (path.clone(), "application/json"),
        };
        let body = (!body.is_null()).then_some((content, body));
        let wrote = Client::new().send(&a, method.clone(), &route, body).await;
        assert!(wrote.status.is_success(), "{method}: {}", wrote.body);
        let seen = eventually(Duration::from_secs(5), || async {
            let read = Client::new().get(&b, &path).await;
            if method == Method::DELETE {
                read.status == 404
            } else {
                read.version() > before.version() && read.body["title"] == title
            }
        })
        .await;
        assert!(seen, "{method} through A reached B through NOTIFY");
    }
    assert!(b.node.metrics().invalidations.get() >= 4);
    a.stop().await;
    b.stop().await;
}

/// An entry a node read from a replica behind the change feed is vouched for when the
/// feed recorded no change to its item after the replica's position: a session whose
/// write floor lies past that position (its token compacted) is served the entry
/// from the cache, counted feed-vouched, instead of reading the origin again. Before,
/// only entries read at or past the feed's applied position were vouched for, so a
/// replica's were not while other items changed.
#[actix_web::test]
async fn a_replica_read_the_feed_saw_no_later_change_to_is_served_past_a_sessions_floor() {
    let pg = cluster();
    let table = unique("vouch").replace('-', "_");
    let extra = format!("{}\n[session]\nmax_token_items = 2\n", collection(&table));
    let node = spawn_with(&pg.settings(&extra).await);
    following(&[&node]).await;
    let path = |item: &str| format!("/v1/{table}/{item}");
    let db = outside_writer(&pg).await;
    let applied = || node.node.change_feed().and_then(|f| f.applied).map_or(0, |a| a.0);
    // The replica must be behind the feed when the node reads from it, or the entry
    // would be vouched for by its position alone: a write to another item just
    // before, which the feed applies in milliseconds and the replica 300 ms later.
    // Timing on a loaded machine can spoil a try; five are allowed.
    let mut proven = None;
    for attempt in 0..5 {
        let item = format!("x{attempt}");
        // Written outside edgecache, so no write of the node's own caches it.
        db.execute(
            &format!("INSERT INTO {table} (id, title, n) VALUES ($1, 'x', 1)"),
            &[&item],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(1_200)).await; // the replica holds it
        db.execute(
            &format!("INSERT INTO {table} (id, title, n) VALUES ($1, 'y', 1)"),
            &[&format!("y{attempt}")],
        )
        .await
        .unwrap();
        let now = pg_position(&pg.primary, "pg_current_wal_lsn()").await;
        let fed = eventually(Duration::from_millis(250), || async { applied() >= now }).await;
        let applied_before = applied();
        let replica_reads = node.node.metrics().reads_from(Tier::Replica);
        let read = Client::new().get(&node, &path(&item)).await;
        assert_eq!(read.body["title"], "x");
        let replayed = pg_position(&pg.replica, "pg_last_wal_replay_lsn()").await;
        if fed
            && node.node.metrics().reads_from(Tier::Replica) == replica_reads + 1
            && replayed < applied_before
        {
            proven = Some(item);
            break;
        }
    }
    let item = proven.expect("a replica read behind the feed, in one of five tries");

    // A session whose floor is past every position before its three writes.
    let mut user = Client::new();
    for other in ["a", "b", "c"] {
        let put = user
            .put(&node, &path(other), json!({"title": other, "n": 0}))
            .await;
        assert_eq!(put.status, 201, "{}", put.body);
    }
    let now = pg_position(&pg.primary, "pg_current_wal_lsn()").await;
    assert!(
        eventually(Duration::from_secs(5), || async { applied() >= now }).await,
        "the feed applied the session's writes"
    );
    let vouched = node.node.metrics().feed_vouched.get();
    let read = user.get(&node, &path(&item)).await;
    assert_eq!(read.body["title"], "x");
    assert_eq!(read.cache_status(), "hit", "{}", read.header("cache-status"));
    assert_eq!(node.node.metrics().feed_vouched.get(), vouched + 1);
    node.stop().await;
}

/// A WAL position `function` (`pg_current_wal_lsn()`, `pg_last_wal_replay_lsn()`)
/// gives on the server at `url`.
async fn pg_position(url: &str, function: &str) -> u64 {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = db
        .query_one(&format!("SELECT {function}::text"), &[])
        .await
        .unwrap();
    let text: String = row.get(0);
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}
