//! What one request can make a node keep: every string a live session holds has a
//! bound, and a request past it is refused before any session is opened.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_app, Client, Store};
use crate::process;

/// `api.max_user_id_bytes` in the base configuration.
const MAX_USER_ID: usize = 256;

async fn get_as(app: &crate::helpers::TestApp, user: &str) -> crate::helpers::Reply {
    let response = app
        .request(reqwest::Method::GET, "/v1/products/p1")
        .header("x-user-id", user)
        .send()
        .await
        .expect("the node answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    crate::helpers::Reply {
        status,
        headers,
        body,
    }
}

#[actix_web::test]
async fn a_user_id_past_its_bound_is_a_400_problem_and_opens_no_session() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let at_bound = "u".repeat(MAX_USER_ID);
    let ok = get_as(&app, &at_bound).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let live = app.node.sessions().len();

    // Past the user id's bound: 400; past the bound of all headers (16 KiB): 431.
    for (length, status, problem) in [
        (MAX_USER_ID + 1, StatusCode::BAD_REQUEST, "user-id-too-long"),
        (8 * 1024, StatusCode::BAD_REQUEST, "user-id-too-long"),
        (
            100 * 1024,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
        ),
    ] {
        let reply = get_as(&app, &"u".repeat(length)).await;
        assert_eq!(reply.status, status, "{length} bytes");
        assert_eq!(reply.problem(), problem);
        assert!(
            reply.header("x-session-id").is_empty(),
            "no session was minted for it"
        );
    }
    assert_eq!(app.node.sessions().len(), live, "no session was opened");

    // A session that names itself is refused the same way, and keeps working.
    let mut user = Client::with_id("bounded-user");
    assert_eq!(user.get(&app, "/v1/products/p1").await.status, 200);
    let refused = app
        .request(reqwest::Method::GET, "/v1/products/p1")
        .header("x-session-id", "bounded-user")
        .header("x-user-id", "u".repeat(MAX_USER_ID + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(user.get(&app, "/v1/products/p1").await.status, 200);
}

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test]
async fn anonymous_requests_with_a_huge_user_id_do_not_grow_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (node, address) = process::start(dir.path());
    let pid = node.0.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let huge = "u".repeat(100 * 1024);
    let send = |user: String| {
        client
            .get(format!("{address}/v1/products/p1"))
            .header("x-user-id", user)
            .send()
    };
    // Warm up: the node's buffers, the allocator's pages for requests of this size and
    // the item's cache entry exist before the baseline (mimalloc keeps freed pages of
    // a thread for its next allocations: a first burst raises RSS once, not per
    // request). A refused request that kept its 100 KiB would grow it by ~50 MiB below.
    for i in 0..20 {
        send(format!("warm-{i}")).await.unwrap();
    }
    for _ in 0..200 {
        send(huge.clone()).await.unwrap();
    }
    let before = rss(pid);

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..500 {
        let status = send(huge.clone()).await.unwrap().status().as_u16();
        *statuses.entry(status).or_default() += 1;
    }
    let grown = rss(pid).saturating_sub(before);
    eprintln!(
        "500 requests with a 100 KiB X-User-Id: {statuses:?}, RSS {:.1} → +{:.1} MiB",
        before as f64 / (1 << 20) as f64,
        grown as f64 / (1 << 20) as f64
    );
    assert_eq!(statuses.get(&431), Some(&500), "every one refused: {statuses:?}");
    assert!(
        grown < 8 << 20,
        "the node grew by {grown} bytes for 500 refused requests"
    );
}

/// `edgecache_live_sessions` from a node's `/metrics`.
async fn live_sessions(client: &reqwest::Client, address: &str) -> u64 {
    let metrics = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgecache_live_sessions "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no live-session gauge in {metrics}"))
}

#[tokio::test]
async fn a_flood_of_anonymous_reads_pins_no_session_and_a_real_session_keeps_its_guarantees() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let small = [("EDGECACHE__SESSION__MAX_LIVE", "1000")];
    let (a, address_a) = process::start_with(dir.path(), &small);
    let (_b, address_b) = process::start_with(dir.path(), &small);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let get = |address: &str| client.get(format!("{address}/v1/products/p1")).send();
    // Warm up with the flood's own shape (32 at a time), so the baseline holds what a
    // burst of reads raises once — connections' buffers, the allocator's pages per
    // thread — and what grows after it is what the reads keep.
    let warmed = futures_util::stream::iter(0..10_000)
        .map(|_| get(&address_a))
        .buffer_unordered(32)
        .fold(0usize, |ok, r| async move { ok + usize::from(r.is_ok()) })
        .await;
    assert_eq!(warmed, 10_000);
    let before = rss(a.0.id());

    // 50,000 anonymous reads, 32 at a time; beside them one real session writes
    // through A and reads through B, with its token.
    let flood = futures_util::stream::iter(0..50_000)
        .map(|_| get(&address_a))
        .buffer_unordered(32)
        .fold(0usize, |ok, r| async move {
            ok + usize::from(r.is_ok_and(|r| r.status() == 200))
        });
    let real = async {
        let (mut session, mut stale) = (Client::with_id("real-user"), 0);
        for n in 0..100 {
            let reply = session
                .send_with(
                    client.put(format!("{address_a}/v1/profiles/real")),
                    Some((
                        "application/json",
                        serde_json::json!({"display_name": format!("t{n}")}),
                    )),
                    &[],
                )
                .await;
            assert!(reply.status.is_success(), "{}", reply.body);
            let read = session
                .send_with(client.get(format!("{address_b}/v1/profiles/real")), None, &[])
                .await;
            if read.body["display_name"] != format!("t{n}") {
                stale += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stale
    };
    let (served, stale) = futures_util::join!(flood, real);
    let live = live_sessions(&client, &address_a).await;
    let grown = rss(a.0.id()).saturating_sub(before);
    eprintln!(
        "50,000 anonymous reads: {served} answered 200, {live} live sessions after, RSS +{:.1} MiB; \
         the real session: {stale} stale own reads in 100",
        grown as f64 / (1 << 20) as f64
    );
    assert_eq!(served, 50_000);
    assert!(live <= 5, "{live} live sessions: anonymous reads pinned sessions");
    assert!(grown < 10 << 20, "the node grew by {grown} bytes");
    assert_eq!(stale, 0, "the real session read its own writes stale");
}

#[actix_web::test]
async fn request_headers_past_their_bound_are_refused_431_before_anything_is_opened() {
    let store = Store::new();
    let app = spawn_app(&store, "");
    let live = app.node.sessions().len();
    let reply = app
        .request(reqwest::Method::GET, "/v1/products/p1")
        .header("x-padding", "p".repeat(64 * 1024))
        .send()
        .await;
    match reply {
        Ok(reply) => assert_eq!(reply.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // A server may also close the connection on a head it will not read.
        Err(e) => assert!(e.is_request() || e.is_body() || e.is_connect(), "{e}"),
    }
    assert_eq!(app.node.sessions().len(), live);
    assert_eq!(Client::new().get(&app, "/v1/products/p1").await.status, 200);
}

/// A client that writes without naming a session (a back-office job, a webhook) gets
/// a session id and a token in every answer; the node keeps none of those sessions.
/// One that comes back with its id and token reads its write, on any node.
#[actix_web::test]
async fn anonymous_writes_pin_no_session_and_their_token_still_reads_them() {
    let store = Store::new();
    let a = spawn_app(&store, "");
    let b = spawn_app(&store, "");
    let mut writers = Vec::new();
    for n in 0..300 {
        let mut writer = Client::new();
        let reply = writer
            .put(
                &a,
                &format!("/v1/profiles/anon-{n}"),
                serde_json::json!({"display_name": format!("w{n}")}),
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
        assert!(writer.session_id.is_some() && writer.token.is_some());
        writers.push(writer);
    }
    let live = a.node.sessions().len();
    assert_eq!(live, 0, "300 anonymous writes left {live} live sessions");

    // Their tokens carry the writes: each reads its own value, here and elsewhere, and
    // a second write in the same session raises the version it saw.
    for (n, writer) in writers.iter_mut().enumerate().step_by(37) {
        let path = format!("/v1/profiles/anon-{n}");
        for node in [&a, &b] {
            let read = writer.get(node, &path).await;
            assert_eq!(read.status, StatusCode::OK);
            assert_eq!(read.body["display_name"], format!("w{n}"));
        }
        let first = writer.get(&b, &path).await.version();
        let again = writer
            .put(
                &b,
                &path,
                serde_json::json!({"display_name": format!("again{n}")}),
            )
            .await;
        assert_eq!(again.version(), first + 1);
        assert_eq!(
            writer.get(&a, &path).await.body["display_name"],
            format!("again{n}")
        );
    }
    a.stop().await;
    b.stop().await;
}
