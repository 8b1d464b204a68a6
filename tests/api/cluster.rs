//! Session affinity over three nodes on one store: a session's requests are served by
//! its owner wherever they land; with the owner gone, by whichever node gets them.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{eventually, settings, spawn_with, Client, Store, TestApp, CLUSTER_SECRETS, LONG_TTL};

/// Three nodes that know each other, on ports chosen before they start.
fn group(store: &Store, extra: &str) -> Vec<TestApp> {
    group_checking_every(store, extra, "100ms", "200ms")
}

/// Like [`group`], with health checks every `interval`, each (and a leave
/// announcement) bounded by `timeout`.
fn group_checking_every(store: &Store, extra: &str, interval: &str, timeout: &str) -> Vec<TestApp> {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    (0..3)
        .map(|i| {
            let peers: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("n{j} = \"127.0.0.1:{}\"", ports[j]))
                .collect();
            let mut s = settings(
                &store.path,
                &format!(
                    "{LONG_TTL}\n{extra}\n[node]\nid = \"n{i}\"\nregion = \"test\"\n\
                     [cluster]\n{CLUSTER_SECRETS}\nhealth_interval = \"{interval}\"\nhealth_timeout = \"{timeout}\"\n\
                     forward_timeout = \"2s\"\n[cluster.peers]\n{}\n",
                    peers.join("\n")
                ),
            );
            s.server.listen = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
            spawn_with(&s)
        })
        .collect()
}

fn forwarded(app: &TestApp) -> u64 {
    app.cluster.forwarded.load(std::sync::atomic::Ordering::Relaxed)
}

#[actix_web::test]
async fn a_session_is_served_by_its_owner_wherever_its_requests_land() {
    let store = Store::new();
    let nodes = group(&store, "");
    let mut user = Client::with_id("affine-user");
    let first = user
        .put(&nodes[0], "/v1/articles/aff", json!({"title": "mine"}))
        .await;
    assert_eq!(first.status, 201);
    let owner = first.header("x-edgecache-node").to_owned();
    for node in &nodes {
        let read = user.get(node, "/v1/articles/aff").await;
        assert_eq!(read.header("x-edgecache-node"), owner, "served by the owner");
        assert_eq!(read.body["title"], "mine");
    }
    let total: u64 = nodes.iter().map(forwarded).sum();
    assert_eq!(
        total,
        2 + u64::from(owner != "n0"),
        "one hop from each node that is not the owner"
    );
    // A request already forwarded is never forwarded again.
    let reply = nodes
        .iter()
        .find(|n| n.node.node_id() != owner)
        .unwrap()
        .request(reqwest::Method::GET, "/v1/articles/aff")
        .header("x-session-id", "affine-user")
        .header("x-edgecache-forwarded", "elsewhere")
        .send()
        .await
        .unwrap();
    assert_ne!(reply.headers()["x-edgecache-node"].to_str().unwrap(), owner);
}

#[actix_web::test]
async fn with_affinity_off_a_session_is_served_where_it_lands() {
    let store = Store::new();
    let nodes = group(&store, "[flags.defaults]\nsession-affinity = \"off\"\n");
    let mut user = Client::with_id("roaming-user");
    user.put(&nodes[0], "/v1/articles/roam", json!({"title": "mine"}))
        .await;
    for node in &nodes {
        let read = user.get(node, "/v1/articles/roam").await;
        assert_eq!(read.header("x-edgecache-node"), node.node.node_id());
        assert_eq!(read.body["title"], "mine", "the token carries the guarantees");
    }
    assert_eq!(nodes.iter().map(forwarded).sum::<u64>(), 0);
}

#[actix_web::test]
async fn when_the_owner_is_gone_another_node_serves_the_session_from_its_token() {
    let store = Store::new();
    let mut nodes = group(&store, "");
    let mut user = Client::with_id("orphan-user");
    let wrote = user
        .put(&nodes[0], "/v1/articles/orphan", json!({"title": "kept"}))
        .await;
    let owner = wrote.header("x-edgecache-node").to_owned();
    let index = nodes.iter().position(|n| n.node.node_id() == owner).unwrap();
    nodes.remove(index).stop().await;

    for node in &nodes {
        let read = user.get(node, "/v1/articles/orphan").await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.body["title"], "kept");
        assert_ne!(read.header("x-edgecache-node"), owner);
    }
    // The survivors notice and stop trying the owner.
    let noticed = eventually(Duration::from_secs(3), || async {
        nodes
            .iter()
            .all(|n| n.cluster.view().iter().any(|(id, up)| *id == owner && !up))
    })
    .await;
    assert!(noticed, "the stopped owner is out of rotation");
}

#[actix_web::test]
async fn a_node_that_announces_it_is_leaving_is_out_of_rotation_at_once() {
    let store = Store::new();
    // Health checks an hour apart: only the announcement can take n0 out. (A generous
    // timeout: tests run in parallel on two cores.)
    let nodes = group_checking_every(&store, "", "1h", "5s");
    for node in &nodes[1..] {
        assert!(node.cluster.view().iter().all(|(_, up)| *up));
    }
    nodes[0].cluster.announce_leaving().await;
    for node in &nodes[1..] {
        let view = node.cluster.view();
        assert!(view.iter().any(|(id, up)| *id == "n0" && !up), "{view:?}");
        assert!(view.iter().filter(|(id, _)| *id != "n0").all(|(_, up)| *up));
    }
}
