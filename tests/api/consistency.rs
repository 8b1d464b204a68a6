//! The online consistency checks over real HTTP, two nodes on one store: with
//! read-your-writes off for a session, the node that has the item cached serves its
//! own write stale, and the background checks (sampling every read here) count
//! exactly the stale reads the client saw in that arm; with it on, none.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{eventually, sessions_in_arm, spawn_app, Client, Store, TestApp, LONG_TTL};

const RYW: &str = "edgecache.read-your-writes";
const TOKEN: &str = "admin-token-for-tests-0123456789abcdef";

/// `edgecache_consistency_checks_total` of `arm` of `flag` with `outcome`, from
/// `/metrics`.
async fn checks(node: &TestApp, flag: &str, arm: &str, outcome: &str) -> u64 {
    let body = node.scrape().await;
    let labels = [
        format!("flag=\"{flag}\""),
        format!("arm=\"{arm}\""),
        format!("outcome=\"{outcome}\""),
    ];
    body.lines()
        .filter(|line| line.starts_with("edgecache_consistency_checks_total{"))
        .find(|line| labels.iter().all(|l| line.contains(l.as_str())))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[actix_web::test]
async fn the_checks_count_the_stale_own_reads_the_client_saw_and_none_with_the_strategy_on() {
    const ITEMS_PER_ARM: usize = 200;
    const READS: usize = 3;
    let store = Store::new();
    let extra = format!(
        "{LONG_TTL}\n[flags.defaults]\nread-your-writes = \"50%\"\n\
         [flags.consistency_checks]\nsample = 1.0\nqueue = 100000\n[admin]\ntoken = \"{TOKEN}\"\n"
    );
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);

    let mut observed_stale = [0u64; 2];
    let mut hits_on_b = 0u64;
    for (arm, on) in [(0, false), (1, true)] {
        let users = sessions_in_arm(RYW, on, &format!("check-{on}"), ITEMS_PER_ARM);
        for (i, id) in users.iter().enumerate() {
            let item = format!("/v1/articles/c-{on}-{i}");
            let mut author = Client::new();
            assert_eq!(author.put(&a, &item, json!({"title": "v1"})).await.status, 201);
            // Another user reads it through B, which then caches v1 for an hour.
            assert_eq!(Client::new().get(&b, &item).await.body["title"], "v1");

            let mut user = Client::with_id(id);
            let written = user.put(&a, &item, json!({"title": "v2"})).await;
            assert_eq!(written.status, 200);
            for _ in 0..READS {
                let read = user.get(&b, &item).await;
                assert_eq!(read.status, 200);
                if read.version() < written.version() {
                    observed_stale[arm] += 1;
                }
                if read.cache_status() == "hit" {
                    hits_on_b += 1;
                }
            }
        }
    }
    assert_eq!(
        observed_stale[0],
        (ITEMS_PER_ARM * READS) as u64,
        "with read-your-writes off every read through B is its cached v1"
    );
    assert_eq!(observed_stale[1], 0);
    assert!(hits_on_b >= 1000, "{hits_on_b} sampled reads");

    // Every read B served from its cache is checked in the background.
    let judged = |node: &TestApp| {
        let node = node.node.clone();
        async move {
            let arms = node
                .metrics()
                .experiments
                .arms_of(edgecache_flags::Strategy::ReadYourWrites);
            arms.iter().map(|a| a.checks.iter().sum::<u64>()).sum::<u64>()
        }
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            judged(&b).await >= hits_on_b
        })
        .await,
        "the checker caught up: {} of {hits_on_b}",
        judged(&b).await
    );
    assert_eq!(
        judged(&b).await,
        hits_on_b,
        "one check per read served from the cache"
    );
    let flag = "read-your-writes";
    assert_eq!(checks(&b, flag, "off", "skipped").await, 0);
    assert_eq!(checks(&b, flag, "on", "skipped").await, 0);
    assert_eq!(
        checks(&b, flag, "off", "stale_own").await,
        observed_stale[0],
        "the checks find the stale own reads the client saw"
    );
    assert_eq!(checks(&b, flag, "on", "stale_own").await, 0);
    assert_eq!(checks(&b, flag, "on", "regression").await, 0);
    assert_eq!(checks(&b, flag, "off", "regression").await, 0);
    assert_eq!(
        checks(&b, flag, "on", "ok").await + checks(&b, flag, "off", "ok").await + observed_stale[0],
        hits_on_b
    );
    assert_eq!(
        b.node.metrics().stale_own(false),
        observed_stale[0],
        "and what the node's own counter finds"
    );
    a.stop().await;
    b.stop().await;
}

#[actix_web::test]
async fn a_full_queue_skips_checks_and_never_holds_a_read() {
    let store = Store::new();
    // One waiting check at most, and a checker that reads one at a time.
    let extra = format!("{LONG_TTL}\n[flags.consistency_checks]\nsample = 1.0\nqueue = 1\nconcurrency = 1\n");
    let node = spawn_app(&store, &extra);
    let mut user = Client::new();
    assert_eq!(
        user.put(&node, "/v1/articles/q", json!({"title": "t"}))
            .await
            .status,
        201
    );
    let reads = 300;
    let reads_done = futures_util::future::join_all((0..reads).map(|_| {
        let mut reader = Client::new();
        let node = &node;
        async move { reader.get(node, "/v1/articles/q").await.status }
    }))
    .await;
    assert!(reads_done.iter().all(|s| s.is_success()));
    let total = || {
        let arms = node
            .node
            .metrics()
            .experiments
            .arms_of(edgecache_flags::Strategy::ReadYourWrites);
        (
            arms.iter().map(|a| a.checks.iter().sum::<u64>()).sum::<u64>(),
            arms.iter()
                .map(|a| a.checks_with(edgecache_services::metrics::CheckOutcome::Skipped))
                .sum::<u64>(),
        )
    };
    assert!(eventually(Duration::from_secs(10), || async { total().0 == reads }).await);
    let (checked, skipped) = total();
    assert_eq!(
        checked, reads,
        "every sampled read is counted once, judged or skipped"
    );
    assert!(skipped > 0, "a queue of one overflows under 300 concurrent reads");
    node.stop().await;
}

#[actix_web::test]
async fn under_real_replica_lag_the_checks_find_the_stale_reads_of_the_off_arm_only() {
    let pg = crate::pg::cluster();
    let name = format!("checked{}", std::process::id());
    let extra = format!(
        "{}\n[flags.defaults]\nread-your-writes = \"50%\"\n[flags.consistency_checks]\nsample = 1.0\nqueue = 100000\n",
        crate::pg::collection(&name)
    );
    let mut settings = pg.settings(&extra).await;
    // Without the change feed: only the session's token keeps its reads fresh.
    if let edgecache_config::OriginSettings::Postgres(pg) = &mut settings.origin {
        pg.change_feed = edgecache_config::ChangeFeed::Off;
    }
    let a = crate::helpers::spawn_with(&settings);
    let b = crate::helpers::spawn_with(&settings);

    // 50 sessions, half in each arm, 20 write → immediate read pairs each: 1,000.
    let prefix = crate::helpers::unique("checked");
    let sessions = [true, false].into_iter().flat_map(|on| {
        sessions_in_arm(RYW, on, &format!("{prefix}-{on}"), 25)
            .into_iter()
            .map(move |id| (on, id))
    });
    let runs = sessions.map(|(on, id)| {
        let (a, b, name) = (&a, &b, &name);
        async move {
            let mut user = Client::with_id(&id);
            let mut stale = 0u64;
            // A connection per request: under this load (every read also checked
            // against the primary) a pooled connection the node closed after its
            // keep-alive was now and then picked for the next request.
            let close = [("connection", "close")];
            for i in 0..20 {
                let item = format!("/v1/{name}/{id}-{i}");
                let body = json!({"title": "pair", "n": i});
                let wrote = user
                    .send_with(
                        a.request(Method::PUT, &item),
                        Some(("application/json", body)),
                        &close,
                    )
                    .await;
                assert!(wrote.status.is_success(), "{}", wrote.body);
                let read = user.send_with(b.request(Method::GET, &item), None, &close).await;
                if read.status != 200 || read.body["n"] != i {
                    stale += 1;
                }
            }
            (on, stale)
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let stale_on: u64 = results.iter().filter(|(on, _)| *on).map(|(_, s)| s).sum();
    let stale_off: u64 = results.iter().filter(|(on, _)| !*on).map(|(_, s)| s).sum();
    assert_eq!(stale_on, 0);
    assert!(
        stale_off > 0,
        "the lagging replica shows stale reads in the off arm"
    );

    let flag = "read-your-writes";
    let caught_up = eventually(Duration::from_secs(20), || async {
        checks(&b, flag, "off", "stale_own").await == stale_off && b.node.consistency_checks().queued() == 0
    })
    .await;
    assert!(
        caught_up,
        "the checks found {} stale own reads, the client saw {stale_off}",
        checks(&b, flag, "off", "stale_own").await
    );
    assert_eq!(checks(&b, flag, "on", "stale_own").await, 0);
    assert_eq!(checks(&b, flag, "on", "regression").await, 0);
    assert_eq!(checks(&b, flag, "off", "skipped").await, 0);
    assert!(
        checks(&b, flag, "on", "ok").await > 0,
        "reads of the on arm that waited for the replica were checked too"
    );
    assert_eq!(b.node.metrics().stale_own(false), stale_off);
    eprintln!(
        "under replica lag: {stale_off} stale reads seen and found in the off arm; checks ok: off {}, on {}",
        checks(&b, flag, "off", "ok").await,
        checks(&b, flag, "on", "ok").await
    );
    a.stop().await;
    b.stop().await;
}
