//! Session lifecycle: passivation, rebuilding from the token, the bounded table, and
//! a token that stays small however much the session does.

use std::time::Duration;

use base64::Engine;
use edgecache_actors::{item_hash, TokenKeys, Watermarks};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::helpers::{cache_status_params, settings, spawn_app, Client, Store, TestApp, LONG_TTL};

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

    // Named from its first request: an anonymous writer's session is not kept.
    let mut user = Client::with_id("passivated-user");
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

/// The keys the test nodes seal tokens with (the shipped base configuration's), to
/// look inside a token as only a node can.
fn node_keys(store: &Store) -> TokenKeys {
    let settings = settings(&store.path, "");
    let session = &settings.session;
    TokenKeys::new(
        session
            .keys
            .iter()
            .map(|k| (k.id.as_str(), k.secret.expose_secret().as_bytes())),
        &session.active_key,
    )
    .expect("the active key is among the keys")
}

/// The watermarks a token carries for `session`, opened with the nodes' keys.
fn opened(store: &Store, session: &str, token: &str) -> Watermarks {
    node_keys(store)
        .verify(session, token)
        .expect("a genuine token of the session")
        .watermarks
}

/// Whether `w` names `articles/{id}` in any mark.
fn names(w: &Watermarks, id: &str) -> bool {
    let item = item_hash("articles", id);
    w.writes().iter().chain(w.reads()).any(|m| m.item == item)
}

/// A request in session `id` sending `token` (if any), and the token it got back.
async fn as_session(app: &TestApp, id: &str, token: Option<&str>, path: &str) -> (String, String, String) {
    let mut request = app.request(reqwest::Method::GET, path).header("x-session-id", id);
    if let Some(token) = token {
        request = request.header("x-session-token", token);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (token, status) = (
        header("x-session-token"),
        cache_status_params(&header("cache-status")).to_owned(),
    );
    let body: serde_json::Value = response.json().await.unwrap();
    (token, status, body["title"].as_str().unwrap_or("").to_owned())
}

#[actix_web::test]
async fn a_request_naming_a_live_session_without_its_token_learns_none_of_its_marks() {
    let store = Store::new();
    let a = spawn_app(&store, LONG_TTL);
    let b = spawn_app(&store, LONG_TTL);
    for id in ["diagnosis", "pharmacy", "weather"] {
        Client::new()
            .put(&a, &format!("/v1/articles/{id}"), json!({"title": "old"}))
            .await;
        Client::new().get(&b, &format!("/v1/articles/{id}")).await; // B caches "old"
    }

    // The victim writes one article through A and reads another through B: its
    // session is live on B with both marks (B still caches the old "diagnosis").
    let mut victim = Client::new();
    victim
        .put(&a, "/v1/articles/diagnosis", json!({"title": "mine"}))
        .await;
    victim.get(&b, "/v1/articles/pharmacy").await;
    let id = victim.session_id.clone().unwrap();
    assert!(b.node.sessions().get(&id).is_some(), "live on B");
    let carried = opened(&store, &id, victim.token.as_deref().unwrap());
    assert!(names(&carried, "diagnosis") && names(&carried, "pharmacy"));

    // Someone who knows the session id, but holds none of its tokens, reads through B.
    let (token, status, title) = as_session(&b, &id, None, "/v1/articles/diagnosis").await;
    assert_eq!(
        (status.as_str(), title.as_str()),
        ("hit", "old"),
        "served as any other session: the victim's marks do not show in Cache-Status"
    );
    let theirs = opened(&store, &id, &token);
    assert!(
        !names(&theirs, "pharmacy") && theirs.writes().is_empty(),
        "the answer's token carries none of the live session's marks: {theirs:?}"
    );
    assert!(names(&theirs, "diagnosis"), "only what the request itself did");
    assert_eq!(theirs.write_floor().0 + theirs.read_floor().0, 0);

    // Sending that token back proves nothing of the victim's session either.
    let (again, _, _) = as_session(&b, &id, Some(&token), "/v1/articles/weather").await;
    let theirs = opened(&store, &id, &again);
    assert!(
        !names(&theirs, "pharmacy") && theirs.writes().is_empty(),
        "{theirs:?}"
    );
    assert!(names(&theirs, "diagnosis") && names(&theirs, "weather"));
    assert!(b.node.metrics().sessions_detached.get() >= 2);

    // The victim's session is untouched: it still reads its write, and its token
    // holds its marks and none of the other requests'.
    let read = victim.get(&b, "/v1/articles/diagnosis").await;
    assert_eq!(read.body["title"], "mine");
    let carried = opened(&store, &id, victim.token.as_deref().unwrap());
    assert!(names(&carried, "diagnosis") && names(&carried, "pharmacy"));
    assert!(!names(&carried, "weather"));
    assert_eq!(b.node.metrics().stale_own(true), 0);
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

/// A request in session `id` with no token writing `title` to `articles/{article}`; the
/// token it got back.
async fn first_write(app: &TestApp, id: &str, article: &str, title: &str) -> String {
    let response = app
        .request(reqwest::Method::PUT, &format!("/v1/articles/{article}"))
        .header("x-session-id", id)
        .json(&json!({ "title": title }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.headers()["x-session-token"].to_str().unwrap().to_owned()
}

/// A client's first requests often leave together, before any answer brought a
/// token (a page that loads several things at once). The node sees two requests of a
/// new session without a token: they must be one session, or the client — which keeps
/// whichever answer's token arrived last — may be left with a token that lacks its
/// own write. Once a token came back, or once the session is past its first requests
/// (`session.first_requests_window`), a tokenless request is someone else's: detached.
#[actix_web::test]
async fn a_sessions_first_requests_without_a_token_are_one_session_later_tokenless_ones_are_not() {
    let store = Store::new();
    let config = format!("{LONG_TTL}\n[session]\nfirst_requests_window = \"1s\"\n");
    let a = spawn_app(&store, &config);
    let b = spawn_app(&store, &config);
    Client::new()
        .put(&a, "/v1/articles/cart", json!({"title": "old"}))
        .await;
    assert_eq!(
        Client::new().get(&b, "/v1/articles/cart").await.body["title"],
        "old"
    );

    // The first two requests of session `tab`, neither with a token: a write, and a
    // read whose answer arrives last, so the client keeps its token.
    let id = "tab-first-requests";
    let _written = first_write(&a, id, "cart", "mine").await;
    let (kept, _, _) = as_session(&a, id, None, "/v1/articles/weather").await;
    assert!(
        names(&opened(&store, id, &kept), "cart"),
        "the second first request shared the session: its token carries the write"
    );
    // With that token, node B (which still caches "old") serves the client its write.
    let (_, status, title) = as_session(&b, id, Some(&kept), "/v1/articles/cart").await;
    assert_eq!(title, "mine", "read-your-writes on another node ({status})");

    // The token came back to A: the session is proven. A tokenless request within
    // the window is now someone else's, and learns nothing of it.
    let (_, _, _) = as_session(&a, id, Some(&kept), "/v1/articles/weather").await;
    let detached_before = a.node.metrics().sessions_detached.get();
    let (theirs, _, _) = as_session(&a, id, None, "/v1/articles/weather").await;
    assert!(!names(&opened(&store, id, &theirs), "cart"));
    assert_eq!(a.node.metrics().sessions_detached.get(), detached_before + 1);

    // Past the window, an unproven session is closed to tokenless requests too.
    let late = "tab-late-request";
    first_write(&a, late, "pharmacy", "mine").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (theirs, _, _) = as_session(&a, late, None, "/v1/articles/weather").await;
    assert!(!names(&opened(&store, late, &theirs), "pharmacy"));
    assert_eq!(a.node.metrics().sessions_detached.get(), detached_before + 2);
}

/// A session that started on a node without a token, then was claimed: a token of
/// another lineage that arrives while the session is young and unproven takes it over
/// (its first requests were split by an eviction between them), merging what the
/// session did, so the client's next read sees both halves.
#[actix_web::test]
async fn a_young_unproven_session_is_claimed_by_the_first_token_of_another_lineage() {
    let store = Store::new();
    let config = format!("{LONG_TTL}\n[session]\nfirst_requests_window = \"30s\"\n");
    let a = spawn_app(&store, &config);
    let b = spawn_app(&store, &config);
    let id = "tab-split";
    // Half one: a write through B, whose token the client keeps.
    let kept = first_write(&b, id, "diagnosis", "mine").await;
    // Half two: a tokenless write through A starts the session there.
    first_write(&a, id, "pharmacy", "mine").await;
    // The client's next request carries B's token to A: it claims A's session.
    let (token, _, _) = as_session(&a, id, Some(&kept), "/v1/articles/weather").await;
    let carried = opened(&store, id, &token);
    assert!(
        names(&carried, "diagnosis") && names(&carried, "pharmacy"),
        "both halves: {carried:?}"
    );
    // Claimed, so proven: a tokenless request is detached from now on.
    let (theirs, _, _) = as_session(&a, id, None, "/v1/articles/weather").await;
    assert!(!names(&opened(&store, id, &theirs), "diagnosis"));
}
