//! Strategies from a real Unleash server (started by scripts/test.sh): a rollout
//! compared per arm, and a flag flipped mid-run, followed without a restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{spawn_app, Client, Store, TestApp, LONG_TTL};
use crate::unleash_admin::Admin;

const RYW: &str = "edgecache.read-your-writes";
const TOKEN: &str = "admin-token-for-unleash-tests-0123456789";

/// Both tests here steer the same flag on one server: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Unleash {
    pub url: String,
    pub admin: Admin,
    client_token: String,
}

pub fn unleash() -> Unleash {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: these tests need the Unleash server that scripts/test.sh starts")
        })
    };
    let url = var("EDGECACHE_TEST_UNLEASH_URL");
    let client_token = var("EDGECACHE_TEST_UNLEASH_CLIENT_TOKEN");
    let admin = Admin::new(&url, &var("EDGECACHE_TEST_UNLEASH_ADMIN_TOKEN"), &client_token);
    Unleash {
        url,
        admin,
        client_token,
    }
}

impl Unleash {
    /// The TOML of a node that takes its flags from this server.
    pub fn flags_toml(&self) -> String {
        format!(
            "[flags.unleash]\nurl = {:?}\nclient_token = {:?}\nrefresh_interval = \"200ms\"\n",
            self.url, self.client_token
        )
    }
}

/// Waits until the node's flag source has fetched from Unleash.
pub async fn until_fetched(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app
        .node
        .flag_status()
        .is_some_and(|s| s.starts_with("unleash: ready"))
    {
        assert!(
            Instant::now() < deadline,
            "the node never fetched its flags: {:?}",
            app.node.flag_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stale-own scenario for one new session: B caches an item, the session writes
/// it through A and reads it through B. Returns whether it read its own write.
pub async fn reads_own_write(a: &TestApp, b: &TestApp, session: &str, item: &str) -> bool {
    let path = format!("/v1/articles/{item}");
    Client::new().put(a, &path, json!({"title": "old"})).await;
    Client::new().get(b, &path).await;
    let mut user = Client::with_id(session);
    user.put(a, &path, json!({"title": "mine"})).await;
    user.get(b, &path).await.body["title"] == "mine"
}

#[actix_web::test]
async fn a_flag_flipped_in_unleash_is_followed_by_every_node_without_a_restart() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let unleash = unleash();
    unleash.admin.rollout(RYW, 100, &[], true).await;
    unleash.admin.served(RYW, true, 100).await;
    let store = Store::new();
    let extra = format!("{LONG_TTL}\n{}", unleash.flags_toml());
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);
    until_fetched(&a).await;
    until_fetched(&b).await;
    assert!(
        reads_own_write(&a, &b, "flip-before", "flip-0").await,
        "on for every session"
    );

    unleash.admin.switch(RYW, false).await;
    let flipped = Instant::now();
    let mut n = 0;
    let followed = loop {
        n += 1;
        if !reads_own_write(&a, &b, &format!("flip-{n}"), &format!("flip-{n}")).await {
            break flipped.elapsed();
        }
        assert!(
            flipped.elapsed() < Duration::from_secs(10),
            "the nodes never followed the flip"
        );
    };
    // Unleash itself serves a change about a second later (it caches by revision);
    // the nodes then follow within their refresh interval.
    assert!(
        followed <= Duration::from_millis(200 + 1000 + 500),
        "followed after {followed:?}"
    );
    unleash.admin.switch(RYW, true).await;
}

#[actix_web::test]
async fn a_read_your_writes_rollout_in_unleash_is_compared_per_arm_by_the_nodes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let unleash = unleash();
    unleash.admin.rollout(RYW, 50, &[], true).await;
    unleash.admin.served(RYW, true, 50).await;
    let store = Store::new();
    let extra = format!(
        "{LONG_TTL}\n{}\n[admin]\ntoken = \"{TOKEN}\"\n",
        unleash.flags_toml()
    );
    let a = spawn_app(&store, &extra);
    let b = spawn_app(&store, &extra);
    until_fetched(&a).await;
    until_fetched(&b).await;

    // Unleash's flexibleRollout (stickiness sessionId, group = flag name) puts a
    // session in the same arm as our own 50% rollout: checked against the server in
    // the flags crate's tests, and relied on here to know each session's arm.
    let mut stale = std::collections::BTreeMap::from([("on", 0u64), ("off", 0u64)]);
    for (arm, on) in [("on", true), ("off", false)] {
        for (i, id) in crate::helpers::sessions_in_arm(RYW, on, "ab-user", 4)
            .iter()
            .enumerate()
        {
            if !reads_own_write(&a, &b, id, &format!("ab-{arm}-{i}")).await {
                *stale.get_mut(arm).unwrap() += 1;
            }
        }
    }
    assert_eq!(stale["on"], 0, "treatment sessions never read a stale own write");
    assert_eq!(stale["off"], 4, "control sessions read B's stale copy");

    let report: serde_json::Value = b
        .request(reqwest::Method::GET, "/admin/experiments")
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        report["flag_source"]
            .as_str()
            .unwrap()
            .starts_with("unleash: ready"),
        "{report}"
    );
    let arms = &report["experiments"]["read-your-writes"]["arms"];
    for (arm, n) in &stale {
        assert_eq!(arms[arm]["stale_own_reads"], *n, "{arm}: {}", arms[arm]);
    }
    let metrics = b.scrape().await;
    for (arm, n) in &stale {
        let line = format!("edgecache_stale_own_reads_total{{arm=\"{arm}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in /metrics");
    }
}
