//! `POST /admin/purge` on three nodes: by ids, by collection, by tag (surrogate keys),
//! hard or soft, through the peers (embedded) and through the change feed
//! (PostgreSQL). The next read by a fresh session on each node goes to the origin; a
//! soft purge serves stale once while one refresh runs; a session's guarantees hold
//! across a purge.

use std::time::Duration;

use edgecache_config::Settings;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, reserved_port, settings, spawn_with, unique, Client, Reply, Store, TestApp, CLUSTER_SECRETS,
};
use crate::pg::cluster;

const ADMIN_TOKEN: &str = "the-test-admin-token-0123456789abcdef";

/// A tagged collection whose entries stay fresh for the whole test (an hour), with an
/// hour of stale-while-revalidate for soft purges.
fn posts(name: &str) -> String {
    format!(
        r#"
[collections.{name}]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
surrogate_keys = ["tags"]
[collections.{name}.fields]
title = {{ type = "string" }}
tags = {{ type = "json" }}
[admin]
token = "{ADMIN_TOKEN}"
"#
    )
}

/// Ports for `n` nodes, chosen before they start.
fn ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| reserved_port()).collect()
}

/// The `[node]` and `[cluster]` of node `i` of a group on `ports`; affinity off, so
/// each request is served by the node it is sent to.
fn member(i: usize, ports: &[u16]) -> String {
    let peers: Vec<String> = (0..ports.len())
        .filter(|j| *j != i)
        .map(|j| format!("n{j} = \"127.0.0.1:{}\"", ports[j]))
        .collect();
    format!(
        "[node]\nid = \"n{i}\"\nregion = \"test\"\n[flags.defaults]\nsession-affinity = \"off\"\n\
         [cluster]\n{CLUSTER_SECRETS}\nhealth_interval = \"100ms\"\nhealth_timeout = \"200ms\"\n\
         forward_timeout = \"2s\"\n[cluster.peers]\n{}\n",
        peers.join("\n")
    )
}

fn start(mut settings: Settings, port: u16) -> TestApp {
    settings.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    spawn_with(&settings)
}

/// Three nodes on one embedded store that know each other.
fn group(store: &Store, extra: &str) -> Vec<TestApp> {
    let ports = ports(3);
    (0..3)
        .map(|i| {
            start(
                settings(&store.path, &format!("{extra}\n{}", member(i, &ports))),
                ports[i],
            )
        })
        .collect()
}

async fn admin_purge(app: &TestApp, body: Value) -> Reply {
    Client::new()
        .send_with(
            app.request(Method::POST, "/admin/purge").bearer_auth(ADMIN_TOKEN),
            Some(("application/json", body)),
            &[],
        )
        .await
}

/// A fresh session's read of `path` on `app`: its `Cache-Status` parameters.
async fn fresh_read(app: &TestApp, path: &str) -> (String, Value) {
    let reply = Client::new().get(app, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    (reply.cache_status().to_owned(), reply.body)
}

/// Every node holds `paths`: a fresh read of each is a hit.
async fn cached_everywhere(nodes: &[TestApp], paths: &[&str]) {
    for node in nodes {
        for path in paths {
            fresh_read(node, path).await;
            assert_eq!(fresh_read(node, path).await.0, "hit", "{path} cached");
        }
    }
}

fn went_to_origin(status: &str) -> bool {
    status.starts_with("fwd=")
}

/// Each node's count in a purge report.
fn counts(report: &Reply, field: &str) -> Vec<(String, u64)> {
    report.body["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(node, count)| (node.clone(), count[field].as_u64().unwrap()))
        .collect()
}

fn per_node(n: u64) -> Vec<(String, u64)> {
    (0..3).map(|i| (format!("n{i}"), n)).collect()
}

#[actix_web::test]
async fn purge_by_id_collection_and_tag_reaches_three_nodes_through_the_peers() {
    let store = Store::new();
    let nodes = group(&store, &posts("posts"));
    let writer = &nodes[0];
    for (id, tags) in [
        ("a", json!(["coffee", "kitchen"])),
        ("b", json!(["tea"])),
        ("c", json!("coffee")),
    ] {
        let put = Client::new()
            .put(
                writer,
                &format!("/v1/posts/{id}"),
                json!({"title": id, "tags": tags}),
            )
            .await;
        assert_eq!(put.status, 201);
    }
    let all = ["/v1/posts/a", "/v1/posts/b", "/v1/posts/c"];
    cached_everywhere(&nodes, &all).await;

    let by_id = admin_purge(&nodes[1], json!({"collection": "posts", "ids": ["a", "zz"]})).await;
    assert_eq!(by_id.status, 200, "{}", by_id.body);
    assert_eq!(counts(&by_id, "dropped"), per_node(1), "{}", by_id.body);
    assert_eq!(by_id.body["unconfirmed"], json!({}));
    assert_eq!(
        by_id.body["change_feed"], "none",
        "the embedded store has no feed"
    );
    for node in &nodes {
        assert!(went_to_origin(&fresh_read(node, "/v1/posts/a").await.0));
        assert_eq!(fresh_read(node, "/v1/posts/b").await.0, "hit", "b was not purged");
    }

    cached_everywhere(&nodes, &all).await;
    let by_tag = admin_purge(&nodes[0], json!({"tag": "coffee"})).await;
    assert_eq!(counts(&by_tag, "dropped"), per_node(2), "{}", by_tag.body);
    for node in &nodes {
        assert!(went_to_origin(&fresh_read(node, "/v1/posts/a").await.0));
        assert!(went_to_origin(&fresh_read(node, "/v1/posts/c").await.0));
        assert_eq!(
            fresh_read(node, "/v1/posts/b").await.0,
            "hit",
            "b is not tagged coffee"
        );
    }

    cached_everywhere(&nodes, &all).await;
    let whole = admin_purge(&nodes[2], json!({"collection": "posts"})).await;
    assert_eq!(counts(&whole, "dropped"), per_node(3), "{}", whole.body);
    for node in &nodes {
        for path in all {
            assert!(went_to_origin(&fresh_read(node, path).await.0), "{path}");
        }
        assert_eq!(node.node.metrics().purges.get(), 3, "each purge applied once");
    }
}

#[actix_web::test]
async fn a_soft_purge_serves_stale_once_while_one_refresh_runs_and_sessions_keep_their_guarantees() {
    let store = Store::new();
    let nodes = group(&store, &posts("posts"));
    let mut user = Client::new();
    assert_eq!(
        user.put(&nodes[0], "/v1/posts/s", json!({"title": "v1", "tags": ["x"]}))
            .await
            .status,
        201
    );
    cached_everywhere(&nodes, &["/v1/posts/s"]).await;
    for node in &nodes {
        user.get(node, "/v1/posts/s").await;
    }
    // Version 2 through n0: n1 and n2 (no change feed between them) keep version 1.
    let v2 = user.patch(&nodes[0], "/v1/posts/s", json!({"title": "v2"})).await;
    assert_eq!(v2.version(), 2);

    let soft = admin_purge(
        &nodes[0],
        json!({"collection": "posts", "ids": ["s"], "soft": true}),
    )
    .await;
    assert_eq!(soft.body["soft"], true);
    assert_eq!(counts(&soft, "marked"), per_node(1), "{}", soft.body);

    for node in &nodes[1..] {
        // The session needs its write: never the stale copy.
        let mine = user.get(node, "/v1/posts/s").await;
        assert_eq!(mine.body["title"], "v2", "read-your-writes across a soft purge");
    }
    let node = &nodes[2];
    // n1 and n2 stored version 2 for the session: purge them soft again (n0's
    // entry is still marked), then watch the stale copy being served while one
    // refresh runs.
    let again = admin_purge(&nodes[0], json!({"collection": "posts", "soft": true})).await;
    let expected: Vec<(String, u64)> = [("n0", 0), ("n1", 1), ("n2", 1)]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c))
        .collect();
    assert_eq!(counts(&again, "marked"), expected, "{}", again.body);
    let refreshes = node.node.metrics().refreshes.get();
    let (status, body) = fresh_read(node, "/v1/posts/s").await;
    assert_eq!(status, "hit; detail=stale-while-revalidate", "served stale");
    assert_eq!(body["title"], "v2");
    let refreshed = eventually(Duration::from_secs(5), || async {
        fresh_read(node, "/v1/posts/s").await.0 == "hit"
    })
    .await;
    assert!(refreshed, "the refresh replaced the stale entry");
    assert_eq!(node.node.metrics().refreshes.get(), refreshes + 1, "one refresh");

    // Hard: the session still reads its version, everyone else goes to the origin.
    let hard = admin_purge(&nodes[1], json!({"collection": "posts", "ids": ["s"]})).await;
    assert_eq!(counts(&hard, "dropped"), per_node(1), "{}", hard.body);
    for node in &nodes {
        assert_eq!(user.get(node, "/v1/posts/s").await.body["title"], "v2");
    }
}

#[actix_web::test]
async fn a_peer_that_does_not_answer_is_named_unconfirmed() {
    let store = Store::new();
    let mut nodes = group(&store, &posts("posts"));
    nodes.pop().unwrap().stop().await;
    let report = admin_purge(&nodes[0], json!({"collection": "posts"})).await;
    assert_eq!(report.status, 200);
    let confirmed: Vec<&String> = report.body["nodes"].as_object().unwrap().keys().collect();
    assert_eq!(confirmed, ["n0", "n1"]);
    let unconfirmed = report.body["unconfirmed"].as_object().unwrap();
    assert_eq!(unconfirmed.keys().collect::<Vec<_>>(), ["n2"], "{}", report.body);
}

#[actix_web::test]
async fn purge_requests_are_checked() {
    let store = Store::new();
    let extra = format!("{}\n{}", posts("posts"), crate::helpers::LONG_TTL);
    let app = crate::helpers::spawn_app(&store, &extra);
    let unauthorized = Client::new()
        .send(
            &app,
            Method::POST,
            "/admin/purge",
            Some(("application/json", json!({"collection": "posts"}))),
        )
        .await;
    assert_eq!(unauthorized.status, 401);
    for (body, status, problem) in [
        (json!({}), 400, "invalid-request"),
        (json!({"ids": ["a"]}), 400, "invalid-request"),
        (
            json!({"collection": "posts", "ids": ["a"], "tag": "t"}),
            400,
            "invalid-request",
        ),
        (json!({"collection": "posts", "ids": []}), 400, "invalid-request"),
        (json!({"collection": "posts", "ids": ["a b"]}), 400, "invalid-id"),
        (json!({"collection": "nope"}), 404, "unknown-collection"),
        (
            json!({"collection": "articles", "tag": "t"}),
            400,
            "invalid-request",
        ),
        (
            json!({"collection": "posts", "colour": "red"}),
            400,
            "invalid-request",
        ),
    ] {
        let reply = admin_purge(&app, body.clone()).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.problem(), problem, "{body}");
    }
    let get = Client::new()
        .send_with(
            app.request(Method::GET, "/admin/purge").bearer_auth(ADMIN_TOKEN),
            None,
            &[],
        )
        .await;
    assert_eq!(get.status, 405);
    let ok = admin_purge(&app, json!({"collection": "articles"})).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["nodes"]["edge-1"]["dropped"], 0);
}

#[actix_web::test]
async fn past_its_bound_the_tag_index_makes_a_tag_purge_drop_the_collection() {
    let store = Store::new();
    let extra = format!("{}\n[cache]\nmax_tag_entries = 2\n", posts("posts"));
    let app = crate::helpers::spawn_app(&store, &extra);
    for (id, tags) in [
        ("a", json!(["red"])),
        ("b", json!(["red"])),
        ("c", json!(["blue"])),
    ] {
        Client::new()
            .put(
                &app,
                &format!("/v1/posts/{id}"),
                json!({"title": id, "tags": tags}),
            )
            .await;
    }
    for path in ["/v1/posts/a", "/v1/posts/b", "/v1/posts/c"] {
        fresh_read(&app, path).await;
    }
    // Only two (tag, item) pairs are indexed (a and b are red): the index cannot
    // tell whether the rest is red, so the whole collection goes — blue c too.
    let report = admin_purge(&app, json!({"tag": "red"})).await;
    assert_eq!(report.body["nodes"]["edge-1"]["dropped"], 3, "{}", report.body);
    assert!(went_to_origin(&fresh_read(&app, "/v1/posts/c").await.0));
    // Dropped whole, the collection is indexed again from scratch (c alone now):
    // within the bound, a tag purge takes only the tagged items.
    let again = admin_purge(&app, json!({"tag": "blue"})).await;
    assert_eq!(again.body["nodes"]["edge-1"]["dropped"], 1, "{}", again.body);
    assert!(went_to_origin(&fresh_read(&app, "/v1/posts/c").await.0));
    fresh_read(&app, "/v1/posts/a").await;
    assert_eq!(fresh_read(&app, "/v1/posts/a").await.0, "hit");
    let red = admin_purge(&app, json!({"tag": "red"})).await;
    assert_eq!(red.body["nodes"]["edge-1"]["dropped"], 1, "only a: {}", red.body);
}

#[actix_web::test]
async fn on_postgres_a_purge_reaches_the_group_and_nodes_outside_it_through_the_change_feed() {
    let pg = cluster();
    let table = unique("purged").replace('-', "_");
    let ports = ports(3);
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let s = pg
            .settings(&format!("{}\n{}", posts(&table), member(i, &ports)))
            .await;
        nodes.push(start(s, *port));
    }
    // A node outside the group: only the change feed reaches it.
    let outside = spawn_with(&pg.settings(&posts(&table)).await);
    let items: Vec<String> = (0..2)
        .map(|i| format!("/v1/{table}/{}", unique(&format!("p{i}"))))
        .collect();
    for item in &items {
        let put = Client::new()
            .put(&nodes[0], item, json!({"title": "t", "tags": ["sale"]}))
            .await;
        assert_eq!(put.status, 201);
    }
    let paths: Vec<&str> = items.iter().map(String::as_str).collect();
    let everyone: Vec<&TestApp> = nodes.iter().chain([&outside]).collect();
    for node in &everyone {
        for path in &paths {
            let cached = eventually(Duration::from_secs(5), || async {
                fresh_read(node, path).await;
                fresh_read(node, path).await.0 == "hit"
            })
            .await;
            assert!(cached, "{path} cached on {}", node.node.node_id());
        }
    }

    let report = admin_purge(&nodes[1], json!({"tag": "sale"})).await;
    assert_eq!(report.status, 200, "{}", report.body);
    assert_eq!(report.body["change_feed"], "published");
    assert_eq!(counts(&report, "dropped"), per_node(2), "{}", report.body);
    let reached = eventually(Duration::from_secs(2), || async {
        outside.node.metrics().purges.get() == 1
    })
    .await;
    assert!(
        reached,
        "the node outside the group got the purge through the feed"
    );
    for node in &everyone {
        for path in &paths {
            assert!(went_to_origin(&fresh_read(node, path).await.0), "{path}");
        }
    }
    // The group heard of it twice (peer and feed), and applied it once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for node in &everyone {
        assert_eq!(node.node.metrics().purges.get(), 1, "{}", node.node.node_id());
    }

    // Guarantees across a purge, with the replica 300 ms behind: a session that wrote
    // reads its write on every node right after a purge.
    let mut user = Client::new();
    let item = &items[0];
    let wrote = user.patch(&nodes[0], item, json!({"title": "mine"})).await;
    assert_eq!(wrote.status, 200);
    admin_purge(&nodes[2], json!({"collection": table})).await;
    for node in &everyone {
        let read = user.get(node, item).await;
        assert_eq!(read.body["title"], "mine", "on {}", node.node.node_id());
    }
}
