//! Session affinity over three nodes on one store: a session's requests are served by
//! its owner wherever they land; with the owner gone, by whichever node gets them.
//! Calls between the nodes are authenticated by the group's cluster secret: a forged
//! leave announcement or a client's claim that its request was forwarded is refused
//! and changes nothing.

use std::time::{Duration, SystemTime};

use edgecache_services::cluster::Keys;
use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    eventually, reserved_port, settings, spawn_with, Client, Reply, Store, TestApp, CLUSTER_SECRETS, LONG_TTL,
};

/// Three nodes that know each other, on ports chosen before they start.
fn group(store: &Store, extra: &str) -> Vec<TestApp> {
    group_checking_every(store, extra, "100ms", "200ms")
}

/// Like [`group`], with health checks every `interval`, each (and a leave
/// announcement) bounded by `timeout`.
fn group_checking_every(store: &Store, extra: &str, interval: &str, timeout: &str) -> Vec<TestApp> {
    group_with_secrets(store, extra, interval, timeout, |_| CLUSTER_SECRETS.to_owned())
}

/// Like [`group_checking_every`], node `i` with the `[cluster]` secrets line `secrets(i)`.
fn group_with_secrets(
    store: &Store,
    extra: &str,
    interval: &str,
    timeout: &str,
    secrets: impl Fn(usize) -> String,
) -> Vec<TestApp> {
    let ports: Vec<u16> = (0..3).map(|_| reserved_port()).collect();
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
                     [cluster]\n{}\nhealth_interval = \"{interval}\"\nhealth_timeout = \"{timeout}\"\n\
                     forward_timeout = \"2s\"\n[cluster.peers]\n{}\n",
                    secrets(i),
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
    let owner = first.node().to_owned();
    for node in &nodes {
        let read = user.get(node, "/v1/articles/aff").await;
        assert_eq!(read.node(), owner, "served by the owner");
        assert_eq!(read.body["title"], "mine");
    }
    let total: u64 = nodes.iter().map(forwarded).sum();
    assert_eq!(
        total,
        2 + u64::from(owner != "n0"),
        "one hop from each node that is not the owner"
    );
    // A request a peer forwarded (with its proof) is never forwarded again.
    let here = nodes.iter().find(|n| n.node.node_id() != owner).unwrap();
    let from = if here.node.node_id() == "n0" { "n1" } else { "n0" };
    let reply = here
        .request(Method::GET, "/v1/articles/aff")
        .header("x-session-id", "affine-user")
        .header("x-edgecache-forwarded", from)
        .header("x-edgecache-proof", proof(from, "GET", "/v1/articles/aff"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.headers()["cache-status"]
            .to_str()
            .unwrap()
            .split("; ")
            .next()
            .unwrap(),
        here.node.node_id()
    );
}

/// The proof a node of the test group would send with a call of `method` on `target`.
fn proof(node: &str, method: &str, target: &str) -> String {
    proof_with(CLUSTER_SECRETS, node, method, target, None)
}

/// The proof of a call that carries `body` (a `POST` to a peer: it covers the body).
fn proof_of_body(node: &str, method: &str, target: &str, body: &str) -> String {
    proof_with(CLUSTER_SECRETS, node, method, target, Some(body))
}

/// The proof of `node` made with the `[cluster]` secrets line `secrets`.
fn proof_with(secrets: &str, node: &str, method: &str, target: &str, body: Option<&str>) -> String {
    let store = Store::new();
    let cluster = settings(&store.path, &format!("[cluster]\n{secrets}\n")).cluster;
    Keys::new(&cluster)
        .sign(node, method, target, body.map(str::as_bytes), SystemTime::now())
        .expect("the test group has a secret")
}

/// Another secret under the same id: a forger's.
const FORGED_SECRETS: &str =
    r#"secrets = [{ id = "c1", secret = "not-the-group-secret-but-32-bytes-long" }]"#;

/// Sends `request` and reads its answer.
async fn answer(request: reqwest::RequestBuilder) -> Reply {
    Client::new().send_with(request, None, &[]).await
}

fn in_rotation(node: &TestApp, peer: &str) -> bool {
    node.cluster.view().iter().any(|(id, up)| *id == peer && *up)
}

#[actix_web::test]
async fn a_forged_leave_announcement_is_refused_and_the_peer_stays_in_rotation() {
    let store = Store::new();
    // Health checks an hour apart: only a leave announcement can take a peer out.
    let nodes = group_checking_every(&store, "", "1h", "5s");
    let body = |node: &str| json!({ "node": node }).to_string();
    let leave = |node: &str| {
        nodes[1]
            .request(Method::POST, "/cluster/leave")
            .header("content-type", "application/json")
            .body(body(node))
    };
    let signed = |node: &str, names: &str| proof_of_body(node, "POST", "/cluster/leave", &body(names));
    let forgeries = [
        ("no proof", leave("n0")),
        (
            "another secret",
            leave("n0").header(
                "x-edgecache-proof",
                proof_with(FORGED_SECRETS, "n0", "POST", "/cluster/leave", Some(&body("n0"))),
            ),
        ),
        (
            "a proof for another path",
            leave("n0").header("x-edgecache-proof", proof("n0", "GET", "/cluster/health")),
        ),
        (
            "a proof of another body (n0's proof of n2's leaving, sent with n0's)",
            leave("n0").header("x-edgecache-proof", signed("n0", "n2")),
        ),
        (
            "a proof that does not cover the body",
            leave("n0").header("x-edgecache-proof", proof("n0", "POST", "/cluster/leave")),
        ),
        (
            "a node that is no peer",
            leave("n9").header("x-edgecache-proof", signed("n9", "n9")),
        ),
        ("garbage", leave("n0").header("x-edgecache-proof", "n0:c1:0:AAAA")),
    ];
    for (what, request) in forgeries {
        let reply = answer(request).await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        assert_eq!(reply.problem(), "unauthorized", "{what}");
        assert!(in_rotation(&nodes[1], "n0"), "{what}: n0 stays in rotation");
    }
    // A peer may announce only its own leaving.
    let reply = answer(leave("n2").header("x-edgecache-proof", signed("n0", "n2"))).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(in_rotation(&nodes[1], "n2"), "n2 stays in rotation");
    assert!(in_rotation(&nodes[1], "n0"));

    // The peer's own, authenticated announcement works.
    let reply = answer(leave("n0").header("x-edgecache-proof", signed("n0", "n0"))).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert!(!in_rotation(&nodes[1], "n0"), "n0 left");
    assert!(in_rotation(&nodes[1], "n2"));
}

#[actix_web::test]
async fn a_client_set_forwarded_header_is_refused_and_nothing_is_served_or_written() {
    let store = Store::new();
    let nodes = group(&store, "");
    let mut user = Client::with_id("claims-forwarded");
    let wrote = user
        .put(&nodes[0], "/v1/articles/claim", json!({"title": "first"}))
        .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    let owner = wrote.node().to_owned();
    let here = nodes.iter().find(|n| n.node.node_id() != owner).unwrap();
    let before: u64 = nodes.iter().map(forwarded).sum();

    let path = "/v1/articles/claim";
    let claims: [(&str, Vec<(&str, String)>); 4] = [
        ("no proof", vec![]),
        (
            "another secret",
            vec![(
                "x-edgecache-proof",
                proof_with(FORGED_SECRETS, &owner, "PUT", path, None),
            )],
        ),
        (
            "a proof for another method",
            vec![("x-edgecache-proof", proof(&owner, "GET", path))],
        ),
        (
            "the proof of another node",
            vec![(
                "x-edgecache-proof",
                proof(if owner == "n2" { "n1" } else { "n2" }, "PUT", path),
            )],
        ),
    ];
    for (what, extra) in claims {
        let mut headers = vec![("x-edgecache-forwarded", owner.as_str())];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let reply = user
            .send_with(
                here.request(Method::PUT, path),
                Some(("application/json", json!({"title": "forged"}))),
                &headers,
            )
            .await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        assert_eq!(reply.problem(), "forwarded-without-proof", "{what}");
        assert_eq!(reply.node(), here.node.node_id(), "{what}");
    }
    // Nothing was written, nothing forwarded; the same request without the claim is
    // an ordinary one, forwarded to its owner.
    assert_eq!(nodes.iter().map(forwarded).sum::<u64>(), before);
    let read = user.get(here, path).await;
    assert_eq!(read.body["title"], "first");
    assert_eq!(read.node(), owner, "forwarded as usual");
}

#[actix_web::test]
async fn a_node_with_another_cluster_secret_is_kept_out_and_every_request_is_served() {
    let store = Store::new();
    let nodes = group_with_secrets(&store, "", "100ms", "200ms", |i| {
        if i == 2 {
            FORGED_SECRETS.to_owned()
        } else {
            CLUSTER_SECRETS.to_owned()
        }
    });
    // From the start, whoever owns a session: answered (a forward n2 refuses, or that
    // n2 makes and the others refuse, is served where it landed).
    for i in 0..12 {
        let mut user = Client::with_id(&format!("mixed-{i}"));
        for node in &nodes {
            let reply = user
                .put(node, &format!("/v1/articles/mixed-{i}"), json!({"title": "t"}))
                .await;
            assert!(reply.status.is_success(), "{}", reply.body);
        }
    }
    let apart = eventually(Duration::from_secs(5), || async {
        !in_rotation(&nodes[0], "n2")
            && !in_rotation(&nodes[1], "n2")
            && !in_rotation(&nodes[2], "n0")
            && !in_rotation(&nodes[2], "n1")
    })
    .await;
    assert!(apart, "n2 and the others refuse each other's proofs");
    assert!(in_rotation(&nodes[0], "n1") && in_rotation(&nodes[1], "n0"));
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
        assert_eq!(read.node(), node.node.node_id());
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
    let owner = wrote.node().to_owned();
    let index = nodes.iter().position(|n| n.node.node_id() == owner).unwrap();
    nodes.remove(index).stop().await;

    for node in &nodes {
        let read = user.get(node, "/v1/articles/orphan").await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.body["title"], "kept");
        assert_ne!(read.node(), owner);
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

#[actix_web::test]
async fn the_shipped_nginx_keeps_the_peer_admin_and_metrics_routes_private() {
    const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
    let store = Store::new();
    let nodes = group_checking_every(&store, &format!("[admin]\ntoken = \"{ADMIN}\"\n"), "1h", "5s");
    let lb = crate::nginx::start(&nodes.iter().collect::<Vec<_>>());
    let http = reqwest::Client::new();
    let private = [
        (Method::POST, "/cluster/leave"),
        (Method::GET, "/cluster/health"),
        (Method::GET, "/admin/experiments"),
        (Method::GET, "/admin"),
        (Method::GET, "//admin/experiments"),
        (Method::GET, "/admin%2Fexperiments"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in private {
        // Even with every credential a node would want.
        let request = http
            .request(method.clone(), format!("{}{path}", lb.address))
            .bearer_auth(ADMIN)
            .header("x-edgecache-proof", proof("n0", method.as_str(), path))
            .json(&json!({"node": "n0"}));
        let reply = answer(request).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
        assert_eq!(reply.problem(), "no-route", "{method} {path}");
    }
    for node in &nodes {
        assert!(node.cluster.view().iter().all(|(_, up)| *up), "nobody left");
    }
    for path in ["/healthz", "/readyz"] {
        let reply = answer(http.get(format!("{}{path}", lb.address))).await;
        assert_eq!(reply.status, 200, "{path} stays public");
    }
    // The nodes serve those routes on their own addresses.
    let direct = answer(
        nodes[0]
            .request(Method::GET, "/admin/experiments")
            .bearer_auth(ADMIN),
    )
    .await;
    assert_eq!(direct.status, 200);

    // A client's claim to be forwarded never reaches a node through nginx: the
    // request is an ordinary one.
    let mut user = Client::with_id("through-nginx");
    let wrote = user
        .send_with(
            http.put(format!("{}/v1/articles/lb", lb.address)),
            Some(("application/json", json!({"title": "t"}))),
            &[
                ("x-edgecache-forwarded", "n0"),
                ("x-edgecache-proof", &proof("n0", "PUT", "/v1/articles/lb")),
            ],
        )
        .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
}

#[actix_web::test]
async fn a_copy_rebuilt_from_an_older_token_reads_through_the_primary_while_another_copy_may_serve() {
    // Affinity off: each request is served where it lands, as when the session's owner
    // changes (a node leaves or comes back) while requests of the session are in flight.
    let store = Store::new();
    let nodes = group(
        &store,
        "[flags.defaults]\nsession-affinity = \"off\"\n[session]\nhandover_window = \"300ms\"\n",
    );
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut writer = Client::new();
    writer.put(a, "/v1/articles/news", json!({"title": "v1"})).await;
    writer.put(a, "/v1/articles/other", json!({"title": "x"})).await;
    Client::new().get(b, "/v1/articles/news").await; // B caches v1
    writer.put(a, "/v1/articles/news", json!({"title": "v2"})).await;

    // The session sends two requests at once from the same token: R1 reads `news` on
    // A (v2), R2 lands on B, which rebuilds the session from that token. R2's answer
    // arrives last, so the client keeps B's token — which knows nothing of R1's read
    // — and reads `news` again on B.
    let mut session = Client::new();
    session.get(a, "/v1/articles/other").await;
    let before = session.token.clone();
    let first = session.get(a, "/v1/articles/news").await;
    assert_eq!(first.body["title"], "v2");
    session.token = before;
    session.get(b, "/v1/articles/other").await;
    let again = session.get(b, "/v1/articles/news").await;
    assert_eq!(
        again.body["title"],
        "v2",
        "monotonic reads: the session read v2 on A, B still caches v1 ({})",
        again.header("cache-status")
    );

    // Past the handover window the copy on B is the only one serving: hits again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut later = Client::new();
    later.get(a, "/v1/articles/other").await;
    let read = later.get(b, "/v1/articles/other").await; // rebuilt on B: a handover
    assert!(
        read.header("cache-status").contains("strict-from-primary"),
        "{}",
        read.header("cache-status")
    );
    let handovers = b.node.metrics().handover_reads.get();
    assert!(handovers >= 2, "the handover reads are counted: {handovers}");
    let exported = format!("edgecache_session_handover_reads_total {handovers}");
    assert!(b.scrape().await.contains(&exported), "{exported}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let read = later.get(b, "/v1/articles/other").await;
    assert_eq!(read.cache_status(), "hit", "{}", read.header("cache-status"));
    assert!(!read.header("cache-status").contains("strict-from-primary"));
    assert_eq!(
        b.node.metrics().handover_reads.get(),
        handovers,
        "past the window"
    );
}
