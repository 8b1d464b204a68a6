//! Session lifecycle: passivation, rebuilding from the token, the bounded table, and
//! a token that stays small however much the session does.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_app, Client, Store, LONG_TTL};

#[actix_web::test]
async fn a_passivated_session_is_rebuilt_from_its_token_with_its_guarantees() {
    let store = Store::new();
    let extra = format!("{LONG_TTL}\n[session]\nidle_lease = \"1s\"\n");
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);
    Client::new()
        .put(&a, "/v1/articles/s1", json!({"title": "v1"}))
        .await;
    Client::new().get(&b, "/v1/articles/s1").await; // B caches v1

    let mut user = Client::new();
    user.put(&b, "/v1/articles/s1", json!({"title": "v2"})).await;
    user.put(&a, "/v1/articles/s1", json!({"title": "v3"})).await; // B's cache: v2
    let id = user.session_id.clone().unwrap();
    assert!(b.node.sessions().get(&id).is_some());
    let passivated = crate::helpers::eventually(Duration::from_secs(4), || async {
        b.node.sessions().get(&id).is_none()
    })
    .await;
    assert!(passivated, "an idle session is passivated after its lease");

    let read = user.get(&b, "/v1/articles/s1").await;
    assert_eq!(
        read.body["title"], "v3",
        "rebuilt from the token, the session still reads its write"
    );
    assert_eq!(b.node.metrics().stale_own(true), 0);
}

#[actix_web::test]
async fn the_live_session_table_is_bounded() {
    let store = Store::new();
    let app = spawn_app(&store, "[session]\nmax_live = 16\n");
    for _ in 0..200 {
        assert_eq!(Client::new().get(&app, "/v1/products/p1").await.status, 200);
    }
    assert!(
        app.node.sessions().len() <= 20,
        "{} live sessions",
        app.node.sessions().len()
    );
}

#[actix_web::test]
async fn a_token_stays_under_1_kib_and_compaction_only_adds_origin_reads() {
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    let b = spawn_app(&store, LONG_TTL);
    let mut user = Client::new();
    for i in 0..60 {
        let path = format!("/v1/articles/k{i}");
        Client::new().put(&a, &path, json!({"title": "old"})).await;
        Client::new().get(&b, &path).await; // B caches "old"
        user.put(&a, &path, json!({"title": format!("mine-{i}")})).await;
        assert!(user.token.as_ref().unwrap().len() <= 1024);
    }
    // A fresh node-side view: B never saw the session; the compacted token must still
    // refuse every "old" entry B holds.
    for i in 0..60 {
        let reply = user.get(&b, &format!("/v1/articles/k{i}")).await;
        assert_eq!(reply.body["title"], format!("mine-{i}"));
    }
    assert_eq!(b.node.metrics().stale_own(true), 0);
}

#[actix_web::test]
async fn the_session_id_is_answered_only_when_the_node_minted_it() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let mut client = Client::new();
    let first = client.get(&app, "/v1/products/p1").await;
    let minted = first.header("x-session-id").to_owned();
    assert_eq!(minted.len(), 32, "a new session id: {minted:?}");
    assert!(!first.header("x-session-token").is_empty());
    let again = client.get(&app, "/v1/products/p1").await;
    assert!(
        again.headers.get("x-session-id").is_none(),
        "the request named its session"
    );
    assert!(
        !again.header("x-session-token").is_empty(),
        "the token always comes back"
    );
    assert_eq!(client.session_id.as_deref(), Some(minted.as_str()));
}
