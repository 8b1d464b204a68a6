//! Session guarantees under ordinary adversity: a session evicted while its own write
//! is in flight, parallel first requests of one session on a node where it is not
//! live, and many reads of a strict field coalesced onto one fill from a lagging
//! replica. Each over real HTTP; each failed before the fix it names.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{eventually, settings, spawn_app, spawn_with, unique, Client, Store, LONG_TTL};
use crate::pg;

/// A PUT sent by hand: the head and half the body now, the rest when `between` is
/// done. Returns the status, the ETag and the token of the answer.
async fn slow_put(
    address: &str,
    path: &str,
    session: &Client,
    body: serde_json::Value,
    between: impl std::future::Future<Output = ()>,
) -> (u16, String, String) {
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nX-Session-Id: {}\r\nX-Session-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        session.session_id.as_deref().unwrap(),
        session.token.as_deref().unwrap(),
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    between.await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the node answers")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer[9..12].parse().unwrap();
    let header = |name: &str| {
        answer
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    (status, header("etag"), header("x-session-token"))
}

#[actix_web::test]
async fn a_session_evicted_while_its_write_is_in_flight_answers_with_a_token_that_holds_the_write() {
    let store = Store::new();
    let small = format!("{LONG_TTL}\n[session]\nmax_live = 4\n");
    let a = spawn_app(&store, &small);
    let b = spawn_app(&store, LONG_TTL);
    for trial in 0..5 {
        let item = format!("/v1/articles/{}", unique(&format!("evict{trial}")));
        Client::new().put(&a, &item, json!({"title": "v1"})).await;
        assert_eq!(
            Client::new().get(&b, &item).await.body["title"],
            "v1",
            "B caches v1"
        );
        let mut user = Client::with_id(&unique("evicted"));
        user.get(&a, &item).await;
        let id = user.session_id.clone().unwrap();

        // While the PUT's body is on its way, other active sessions push the user's
        // session out of A's table (four live at most).
        let flood = async {
            let evicted = eventually(Duration::from_secs(5), || async {
                for other in 0..8 {
                    let mut c = Client::with_id(&format!("other-{trial}-{other}"));
                    for _ in 0..3 {
                        c.get(&a, &item).await;
                    }
                }
                a.node.sessions().get(&id).is_none()
            })
            .await;
            assert!(evicted, "the session was evicted mid-request");
        };
        let (status, etag, token) = slow_put(&a.address, &item, &user, json!({"title": "v2"}), flood).await;
        assert_eq!(status, 200);
        assert_eq!(etag, "\"2\"");

        user.token = Some(token);
        let read = user.get(&b, &item).await;
        assert_eq!(
            read.body["title"],
            "v2",
            "trial {trial}: the answer's token holds the write (read through B: {})",
            read.cache_status()
        );
    }
}

#[actix_web::test]
async fn parallel_first_requests_of_a_session_on_a_new_node_lose_no_mark() {
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    // Two workers: the two requests really run at once.
    let mut on_b = settings(&store.path, LONG_TTL);
    on_b.server.workers = 2;
    let b = spawn_with(&on_b);
    let other = "/v1/articles/other";
    Client::new().put(&a, other, json!({"title": "o"})).await;
    let mut stale = 0;
    for trial in 0..150 {
        let item = format!("/v1/articles/{}", unique(&format!("par{trial}")));
        Client::new().put(&a, &item, json!({"title": "v1"})).await;
        Client::new().get(&b, &item).await;
        let mut user = Client::with_id(&unique("par"));
        user.get(&a, &item).await;
        let older = user.clone();
        let put = user.put(&a, &item, json!({"title": "v2"})).await;
        assert_eq!(put.status, 200);
        // The session is not live on B: one request carries the token from before
        // the write, the other the token with it.
        let (mut old, mut new) = (older, user.clone());
        let (_, read) = futures_util::join!(old.get(&b, other), new.get(&b, &item));
        if read.body["title"] != "v2" {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "reads of the session's own write served stale");
}

#[actix_web::test]
async fn reads_coalesced_on_a_replica_fill_read_strict_fields_from_the_primary_and_explain_says_so() {
    let pg = pg::cluster();
    let table = unique("coalesce").replace('-', "_");
    let mut settings = pg.settings(&pg::shop(&table)).await;
    if let edgecache_config::OriginSettings::Postgres(p) = &mut settings.origin {
        p.change_feed = edgecache_config::ChangeFeed::Off;
    }
    let a = spawn_with(&settings);
    let (replica, connection) = tokio_postgres::connect(&pg.replica, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let mut exercised = 0;
    for trial in 0..5 {
        let b = spawn_with(&settings);
        let item = format!("/v1/{table}/p{trial}");
        Client::new()
            .put(&a, &item, json!({"label": "cup", "stock": 5}))
            .await;
        let replayed = eventually(Duration::from_secs(5), || async {
            // Until the replica has replayed the table's creation, it has no table.
            let row = replica
                .query_opt(
                    &format!("SELECT stock FROM \"{table}\" WHERE id = $1"),
                    &[&format!("p{trial}")],
                )
                .await;
            matches!(row, Ok(Some(_)))
        })
        .await;
        assert!(replayed, "the replica has the item");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let decrement = Client::new()
            .increment(&a, &item, json!({"field": "stock", "by": -1}))
            .await;
        assert_eq!(decrement.body["stock"], 4);

        // Twenty readers at once on B, which has never read the item: one fills
        // from the replica (still at stock 5), the others wait on that fill.
        let reads = futures_util::future::join_all((0..20).map(|_| {
            let (b, item) = (&b, &item);
            async move { Client::new().get(b, &format!("{item}?explain=true")).await }
        }))
        .await;
        let behind: i64 = replica
            .query_one(
                &format!("SELECT stock FROM \"{table}\" WHERE id = $1"),
                &[&format!("p{trial}")],
            )
            .await
            .unwrap()
            .get(0);
        if behind == 5 {
            exercised += 1;
        }
        for read in &reads {
            assert_eq!(read.status, 200, "{}", read.body);
            assert_eq!(
                read.body["stock"], 4,
                "a strict field is the primary's: {}",
                read.body
            );
            let stock = read.body["_explain"]["fields"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["field"] == "stock")
                .cloned()
                .unwrap();
            assert_eq!(stock["tier"], "primary", "{}", read.body);
            assert_eq!(stock["version"], 2, "{}", read.body);
        }
        b.stop().await;
    }
    assert!(
        exercised > 0,
        "the replica was still behind during the reads at least once"
    );
}
