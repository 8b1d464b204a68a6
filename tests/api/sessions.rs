//! Session lifecycle: passivation, rebuilding from the token, the bounded table, and
//! a token that stays small however much the session does.

use std::time::Duration;

use base64::Engine;
use edgecache_actors::item_hash;
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

#[actix_web::test]
async fn tokens_over_http_do_not_reveal_which_known_ids_a_session_touched() {
    let store = Store::new();
    let app = spawn_app(&store, LONG_TTL);
    let catalogue: Vec<String> = (0..2_000).map(|i| format!("sku-{i:04}")).collect();
    for id in ["sku-0017", "sku-1234", "sku-0018", "sku-0999"] {
        Client::new()
            .put(&app, &format!("/v1/articles/{id}"), json!({"title": "t"}))
            .await;
    }
    let mut tokens = Vec::new();
    for ids in [["sku-0017", "sku-1234"], ["sku-0018", "sku-0999"]] {
        let mut user = Client::new();
        user.put(&app, &format!("/v1/articles/{}", ids[0]), json!({"title": "u"}))
            .await;
        user.get(&app, &format!("/v1/articles/{}", ids[1])).await;
        tokens.push(user.token.clone().unwrap());
    }
    // The attacker's reversal: hash every id with the public item hash and look for
    // it anywhere in the token's bytes.
    for token in &tokens {
        let bytes: Vec<u8> = token
            .split('.')
            .skip(2)
            .flat_map(|part| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .unwrap_or_default()
            })
            .collect();
        let found: Vec<&String> = catalogue
            .iter()
            .filter(|id| {
                let hash = item_hash("articles", id).to_le_bytes();
                bytes.windows(8).any(|w| w == hash)
            })
            .collect();
        assert!(found.is_empty(), "{found:?} found in {token}");
    }
    assert_eq!(tokens[0].len(), tokens[1].len(), "nor told apart by length");
}
