//! The Unleash flag source against a real Unleash server.
//!
//! `scripts/test.sh` starts a throwaway server with `scripts/unleash.sh` and exports
//! `EDGECACHE_TEST_UNLEASH_URL`, `…_ADMIN_TOKEN` and `…_CLIENT_TOKEN`. Without them
//! these tests fail: they are never skipped.
//!
//! Every test owns the flag of one strategy (flag names are fixed), so they run in
//! parallel against one server: read-your-writes (rollout), monotonic-reads (flip),
//! strict-fields (outage, variants), replica-wait (bootstrap). Nothing creates
//! stale-while-revalidate or session-affinity: they stay absent, to show that a
//! strategy without a flag keeps its configured default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgecache_flags::{
    Arm, ConfigFlags, FlagContext, FlagSource, Rollout, Strategy, UnleashFlags, UnleashSettings, UnleashState,
};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

#[path = "common/admin.rs"]
mod admin;

use admin::Admin;

// ------------------------------------------------------------------ set-up

struct Env {
    url: String,
    admin_token: String,
    client_token: String,
}

fn env() -> Env {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set. These tests need a real Unleash server: run scripts/test.sh, \
                 or `source scripts/unleash.sh && unleash_start` before `cargo test -p edgecache-flags`"
            )
        })
    };
    Env {
        url: var("EDGECACHE_TEST_UNLEASH_URL"),
        admin_token: var("EDGECACHE_TEST_UNLEASH_ADMIN_TOKEN"),
        client_token: var("EDGECACHE_TEST_UNLEASH_CLIENT_TOKEN"),
    }
}

fn defaults(pairs: &[(Strategy, Rollout)]) -> ConfigFlags {
    ConfigFlags::new(&pairs.iter().copied().collect::<BTreeMap<_, _>>())
}

fn settings(url: &str, token: &str, refresh: Duration) -> UnleashSettings {
    let mut s = UnleashSettings::new(url, token);
    s.app_name = "edgecache-flags-test".into();
    s.refresh_interval = refresh;
    s.request_timeout = Duration::from_secs(2);
    s
}

fn session(i: usize) -> String {
    format!("{i:08x}-session")
}

/// The context of session `i`; the user id differs from the session id, so a rollout
/// sticky on the session id shows it is.
fn with_ctx<R>(i: usize, f: impl FnOnce(&FlagContext<'_>) -> R) -> R {
    let sid = session(i);
    let uid = format!("user-{i}");
    f(&FlagContext {
        session_id: &sid,
        user_id: &uid,
        node: "edge-test",
        region: "test",
    })
}

/// A loopback port nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/api/")
}

/// Waits, polling, until `done` holds; panics naming `what` past `within`.
async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        if start.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `flags` fetched after `since` (so it saw what the server served then).
async fn fetched_after(flags: &UnleashFlags, since: Instant, within: Duration) {
    eventually("a fetch after the change", within, || {
        let status = flags.status();
        status.state == UnleashState::Ready
            && status
                .last_fetch_ms_ago
                .is_some_and(|ago| u128::from(ago) + 2 < since.elapsed().as_millis())
    })
    .await;
}

// ------------------------------------------------------------------ the admin API

// ------------------------------------------------------------------ a proxy to cut

/// A loopback TCP proxy in front of Unleash; `cut` closes every connection and the
/// listening socket, so the client sees Unleash go away mid-run.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Notify::new());
        let cut_signal = cut.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = cut_signal.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            // Dropping the listener refuses new connections; aborting the copies
            // closes the open ones.
            drop(listener);
            connections.shutdown().await;
        });
        Self { addr, cut, task }
    }

    async fn cut(self) {
        self.cut.notify_one();
        self.task.await.unwrap();
    }
}

fn upstream_addr(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.split('/')
        .next()
        .unwrap()
        .parse()
        .expect("host:port of the Unleash URL")
}

// ------------------------------------------------------------------ the tests

/// Unreachable Unleash and no bootstrap file: the configured defaults, not "all off",
/// from before the first fetch on; a rejected token is reported as such.
#[tokio::test]
async fn unreachable_or_rejected_means_configured_defaults() {
    let env = env();
    let defaults_of = || {
        defaults(&[
            (Strategy::ReadYourWrites, Rollout::Off),
            (Strategy::MonotonicReads, Rollout::Percent(50)),
        ])
    };
    let expected = defaults_of();

    let flags = UnleashFlags::start(
        &settings(&closed_port_url(), &env.client_token, Duration::from_millis(100)),
        defaults_of(),
        "edge-test",
    )
    .unwrap();
    // Before any fetch completed.
    for i in 0..200 {
        with_ctx(i, |ctx| {
            assert_eq!(flags.strategies(ctx), expected.strategies(ctx))
        });
    }
    eventually("two failed fetches", Duration::from_secs(5), || {
        flags.status().consecutive_failures >= 2
    })
    .await;
    let status = flags.status();
    assert_eq!(status.state, UnleashState::Defaults);
    let error = status.last_error.clone().unwrap();
    assert!(error.contains("/client/features"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
    eprintln!("unreachable: {status}");
    let mut on = 0;
    for i in 0..200 {
        with_ctx(i, |ctx| {
            let arms = flags.strategies(ctx);
            assert_eq!(arms, expected.strategies(ctx));
            assert!(
                arms.is_on(Strategy::StrictFields),
                "an unnamed strategy defaults to on"
            );
            assert!(!arms.is_on(Strategy::ReadYourWrites));
            on += usize::from(arms.is_on(Strategy::MonotonicReads));
        });
    }
    assert!((60..140).contains(&on), "{on} of 200 at 50%");
    flags.stop();

    // The server is there but the token is wrong: HTTP 401, said as such.
    let wrong = UnleashFlags::start(
        &settings(
            &env.url,
            "default:development.not-a-token",
            Duration::from_millis(100),
        ),
        defaults_of(),
        "edge-test",
    )
    .unwrap();
    eventually("a rejected fetch", Duration::from_secs(5), || {
        wrong.status().last_error.is_some()
    })
    .await;
    let status = wrong.status();
    eprintln!("rejected token: {status}");
    assert_eq!(status.state, UnleashState::Defaults);
    let error = status.last_error.unwrap();
    assert!(error.starts_with("HTTP 401 Unauthorized"), "{error}");
    assert!(error.contains("flags.unleash.client_token"), "{error}");
    with_ctx(7, |ctx| {
        assert_eq!(wrong.strategies(ctx), expected.strategies(ctx))
    });
}

/// A 50% flexibleRollout sticky on the session id: about half of 1000 sessions, and
/// exactly the ones `Rollout::Percent(50)` picks (the same normalisation).
#[tokio::test]
async fn half_rollout_matches_our_normalisation() {
    let env = env();
    let admin = Admin::new(&env.url, &env.admin_token, &env.client_token);
    let flag = Strategy::ReadYourWrites.flag_name();
    admin.rollout(flag, 50, &[], true).await;
    admin.served(flag, true, 50).await;
    let served_at = Instant::now();

    let flags = UnleashFlags::start(
        &settings(&env.url, &env.client_token, Duration::from_millis(200)),
        defaults(&[(Strategy::ReadYourWrites, Rollout::Off)]),
        "edge-test",
    )
    .unwrap();
    fetched_after(&flags, served_at, Duration::from_secs(10)).await;

    let ours = Rollout::Percent(50);
    let (mut enabled, mut differ) = (0, Vec::new());
    for i in 0..1000 {
        with_ctx(i, |ctx| {
            let arm = flags.arm(Strategy::ReadYourWrites, ctx);
            assert_eq!(arm.variant, None, "a flag without variants is on or off");
            enabled += usize::from(arm.enabled);
            if arm.enabled != ours.is_enabled(flag, ctx.session_id) {
                differ.push(ctx.session_id.to_owned());
            }
            // Sticky on the session: another user id, the same arm.
            let other_user = FlagContext {
                user_id: "someone-else",
                ..*ctx
            };
            assert_eq!(flags.arm(Strategy::ReadYourWrites, &other_user), arm);
        });
    }
    eprintln!(
        "50% rollout: {enabled} of 1000 sessions enabled, {} differ from Rollout::Percent(50)",
        differ.len()
    );
    assert!(
        (430..=570).contains(&enabled),
        "{enabled} of 1000 sessions enabled at 50%"
    );
    assert!(
        differ.is_empty(),
        "Unleash and Rollout::Percent(50) disagree on {differ:?}"
    );
    // Strategies with no flag in Unleash keep their configured default (on).
    with_ctx(1, |ctx| {
        assert!(flags.strategies(ctx).is_on(Strategy::StaleWhileRevalidate));
    });
    // Registered, and the evaluations above reported (with the next fetch).
    eventually(
        "registration and a metrics report",
        Duration::from_secs(5),
        || {
            let status = flags.status();
            status.registered && status.metrics_sent >= 1
        },
    )
    .await;
}

/// A flag switched through the admin API mid-run: followed without a restart, within
/// the refresh interval plus a second (the server's own revision cache), plus the
/// round trip of a fetch.
#[tokio::test]
async fn a_flip_is_followed_within_the_interval_plus_a_second() {
    let env = env();
    let admin = Admin::new(&env.url, &env.admin_token, &env.client_token);
    let strategy = Strategy::MonotonicReads;
    let flag = strategy.flag_name();
    admin.rollout(flag, 100, &[], true).await;
    admin.served(flag, true, 100).await;

    let refresh = Duration::from_secs(1);
    let flags = UnleashFlags::start(
        &settings(&env.url, &env.client_token, refresh),
        defaults(&[(strategy, Rollout::Off)]),
        "edge-test",
    )
    .unwrap();
    let is_on = |flags: &UnleashFlags| with_ctx(3, |ctx| flags.arm(strategy, ctx).enabled);
    eventually("the flag on", Duration::from_secs(10), || is_on(&flags)).await;

    // A fetch's round trip on this machine is a few milliseconds; allow for it and for
    // the test's own 10 ms polling.
    let bound = refresh + Duration::from_secs(1) + Duration::from_millis(250);
    let mut worst = Duration::ZERO;
    for on in [false, true, false] {
        let generation = flags.generation();
        let flipped_at = Instant::now();
        admin.switch(flag, on).await;
        let took = eventually(
            &format!("the flag switched {}", if on { "on" } else { "off" }),
            Duration::from_secs(10),
            || is_on(&flags) == on,
        )
        .await;
        let took = took.max(flipped_at.elapsed());
        eprintln!("flip to {on}: followed after {took:?}");
        assert!(
            flags.generation() > generation,
            "a new generation for cached arms"
        );
        worst = worst.max(took);
        // Every session follows, not only the one polled.
        for i in 0..50 {
            with_ctx(i, |ctx| assert_eq!(flags.arm(strategy, ctx).enabled, on));
        }
    }
    assert!(
        worst <= bound,
        "a flip took {worst:?} to be followed, more than {bound:?}"
    );
}

/// Unleash going away mid-run: the last fetched flags, variants included, stay in
/// force, and the status says why fetching fails.
#[tokio::test]
async fn an_outage_keeps_the_last_known_flags() {
    let env = env();
    let admin = Admin::new(&env.url, &env.admin_token, &env.client_token);
    let strategy = Strategy::StrictFields;
    let flag = strategy.flag_name();
    admin
        .rollout(flag, 100, &["treatment-a", "treatment-b"], true)
        .await;
    admin.served(flag, true, 100).await;
    let served_at = Instant::now();

    let proxy = Proxy::start(upstream_addr(&env.url)).await;
    let url = format!("http://{}/api/", proxy.addr);
    let flags = UnleashFlags::start(
        &settings(&url, &env.client_token, Duration::from_millis(100)),
        defaults(&[(strategy, Rollout::Off)]),
        "edge-test",
    )
    .unwrap();
    fetched_after(&flags, served_at, Duration::from_secs(10)).await;

    let arms: Vec<Arm> = (0..1000)
        .map(|i| with_ctx(i, |ctx| flags.arm(strategy, ctx)))
        .collect();
    let a = arms.iter().filter(|arm| arm.label() == "treatment-a").count();
    let b = arms.iter().filter(|arm| arm.label() == "treatment-b").count();
    eprintln!("variants: {a} treatment-a, {b} treatment-b of 1000");
    assert!(arms.iter().all(|arm| arm.enabled), "100% rollout");
    assert_eq!(a + b, 1000, "every enabled session is in a variant's arm");
    assert!((400..=600).contains(&a), "{a} of 1000 in treatment-a at 50/50");

    proxy.cut().await;
    let cut_at = Instant::now();
    let generation = flags.generation();
    eventually("fetches failing", Duration::from_secs(10), || {
        flags.status().consecutive_failures >= 3
    })
    .await;
    let status = flags.status();
    eprintln!("outage ({:?} after the cut): {status}", cut_at.elapsed());
    assert_eq!(status.state, UnleashState::Ready, "fetched flags stay the source");
    assert!(status.last_error.is_some());
    assert_eq!(flags.generation(), generation, "cached arms stay valid");
    for (i, arm) in arms.iter().enumerate() {
        with_ctx(i, |ctx| {
            assert_eq!(flags.arm(strategy, ctx), *arm, "session {i} changed arm")
        });
    }
}

/// Started with a bootstrap file (a saved /api/client/features document) and no
/// reachable Unleash: the file's flags; strategies not in it keep their defaults.
#[tokio::test]
async fn a_bootstrap_file_without_unleash_gives_the_files_flags() {
    let env = env();
    let admin = Admin::new(&env.url, &env.admin_token, &env.client_token);
    let strategy = Strategy::ReplicaWait;
    let flag = strategy.flag_name();
    admin.rollout(flag, 100, &[], true).await;
    let document = admin.served(flag, true, 100).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&document).unwrap()).unwrap();

    let mut s = settings(&closed_port_url(), &env.client_token, Duration::from_millis(100));
    s.bootstrap_file = Some(path.clone());
    let flags = UnleashFlags::start(
        &s,
        defaults(&[
            (strategy, Rollout::Off),
            (Strategy::StaleWhileRevalidate, Rollout::Off),
        ]),
        "edge-test",
    )
    .unwrap();
    assert_eq!(flags.status().state, UnleashState::Bootstrapped);
    eventually("failed fetches", Duration::from_secs(5), || {
        flags.status().consecutive_failures >= 2
    })
    .await;
    let status = flags.status();
    eprintln!("bootstrapped: {status}");
    assert_eq!(status.state, UnleashState::Bootstrapped);
    for i in 0..200 {
        with_ctx(i, |ctx| {
            let arms = flags.strategies(ctx);
            assert!(arms.is_on(strategy), "the file has {flag} on for everyone");
            assert!(
                !arms.is_on(Strategy::StaleWhileRevalidate),
                "not in the file: the configured default (off)"
            );
            assert!(
                arms.is_on(Strategy::SessionAffinity),
                "not in the file, no default: on"
            );
        });
    }

    // A file that is not a features document stops start-up, naming the key.
    std::fs::write(&path, br#"{"message":"not flags"}"#).unwrap();
    let err = UnleashFlags::start(&s, defaults(&[]), "edge-test")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("flags.unleash.bootstrap_file:"), "{err}");
    s.bootstrap_file = Some(dir.path().join("missing.json"));
    let err = UnleashFlags::start(&s, defaults(&[]), "edge-test")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("flags.unleash.bootstrap_file: cannot read"),
        "{err}"
    );
}

/// Evaluation runs once per session (so on every anonymous request, which opens a new
/// one) and again when the flags change: it must stay cheap once flags are fetched.
#[tokio::test]
async fn evaluation_is_cheap() {
    let env = env();
    let flags = UnleashFlags::start(
        &settings(&env.url, &env.client_token, Duration::from_secs(1)),
        defaults(&[]),
        "edge-test",
    )
    .unwrap();
    eventually("the first fetch", Duration::from_secs(10), || {
        flags.status().state == UnleashState::Ready
    })
    .await;
    let n = 20_000;
    let ids: Vec<String> = (0..n).map(session).collect();
    let start = Instant::now();
    let mut on = 0usize;
    for id in &ids {
        let ctx = FlagContext {
            session_id: id,
            user_id: id,
            node: "edge-test",
            region: "test",
        };
        on += usize::from(flags.strategies(&ctx).is_on(Strategy::ReadYourWrites));
    }
    let per_request = start.elapsed() / n as u32;
    eprintln!(
        "all six strategies from Unleash: {per_request:?} per request ({} build; {on} on)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let limit = if cfg!(debug_assertions) { 200 } else { 20 };
    assert!(
        per_request < Duration::from_micros(limit),
        "{per_request:?} per request is too slow for the hot path"
    );
}
