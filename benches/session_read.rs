//! Session-read benches: one `GET /v1/{collection}/{id}` through the node's data plane,
//! the same code path as the REST API minus the socket and the HTTP framing.
//!
//! Each iteration does what the GET handler does: `Node::open_session` with the
//! request's session id and token, `Node::read`, and `Node::token` for the response's
//! `X-Session-Token`. The node runs over an embedded (SQLite) origin in a temporary
//! directory, seeded with the base configuration's demo data, inside a single-threaded
//! actix system (session actors need one, and an actix-web worker is one).
//!
//! * `session_read/cache_hit_issued_token`: the common case — a live session sends
//!   back the last token this node issued, so it needs no verification, and the item
//!   (`profiles/u1`, no strict fields) is fresh in the cache: a pure cache hit with
//!   the session's guarantees checked, and the cached token reused.
//! * `session_read/cache_hit_verified_token`: the same read, but the session sends
//!   older tokens of its own (issued before its last reads, as a client with requests
//!   in parallel or one coming back from another node would), none the last one
//!   issued nor the last one taken in: two alternate, so each is verified (HMAC) and
//!   merged into the live session every time.
//! * `session_read/cache_hit_repeated_token`: the session sends the same older token
//!   on every request (a client that does not follow the tokens in the answers): it
//!   was taken in once, so it is recognised and neither verified nor merged again.
//! * `session_read/strict_field_primary_read`: `products/p1`, whose `stock` field is
//!   strict: its other fields come from the cache but `stock` is read from the
//!   primary on every read — the cost of the strict class, for comparison.
//!
//! Freshness windows are raised to an hour (overrides below), so nothing expires or
//! goes stale while the benches run, and the session's idle lease likewise.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use edgecache_actors::SessionStart;
use edgecache_config::{OriginSettings, Settings, Sources};
use edgecache_flags::ConfigFlags;
use edgecache_services::metrics::Tier;
use edgecache_services::origin::EmbeddedOrigin;
use edgecache_services::{CacheStatus, Node, ReadOutcome};

/// One long relaxed class, so cached entries stay fresh for the whole run.
const FRESH: &str =
    r#"{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1m", stale_if_error = "1h" }"#;

/// The base configuration with the origin in `dir`, long freshness windows, and a
/// `profiles/u1` item in the demo data.
fn settings(dir: &Path) -> Settings {
    let db = dir.join("edgecache.db");
    let overrides = format!(
        r#"
[origin]
kind = "embedded"
path = {db:?}

[session]
idle_lease = "1h"

[collections.profiles]
freshness = {FRESH}

[collections.profiles.fields.bio]
freshness = {FRESH}

[collections.products]
freshness = {FRESH}

[collections.products.fields.price]
freshness = {FRESH}

[seed.profiles.u1]
display_name = "Ada Lovelace"
email = "ada@example.com"
"#,
        db = db.to_str().expect("a UTF-8 temporary path"),
    );
    edgecache_config::load(&Sources {
        skip_env: true,
        dir: Some("/nonexistent".into()),
        overrides: Some(overrides),
        ..Default::default()
    })
    .expect("the bench configuration loads")
}

/// A node over a freshly seeded embedded origin, built as `Application::build` does.
fn node(settings: &Settings) -> Node {
    let OriginSettings::Embedded {
        path,
        read_connections,
        busy_timeout,
    } = &settings.origin
    else {
        unreachable!("the bench configures the embedded origin")
    };
    let origin = EmbeddedOrigin::open(path, *read_connections, *busy_timeout).expect("open the origin");
    assert!(
        origin.seed_if_fresh(&settings.seed).expect("seed"),
        "a fresh store is seeded"
    );
    let flags = Arc::new(ConfigFlags::new(&settings.flags.defaults));
    Node::new(settings, Arc::new(origin), flags)
}

/// What the REST API does for one GET: open the session from its headers, read, and
/// sign (or reuse) the token for the response. Returns the token and the read.
async fn get(
    node: &Node,
    session_id: &str,
    token: Option<&str>,
    collection: &str,
    id: &str,
) -> (Bytes, ReadOutcome, SessionStart) {
    let session = node
        .open_session(Some(session_id), None, token)
        .expect("the session opens");
    let outcome = node
        .read(&session, collection, id, false)
        .await
        .expect("the read succeeds");
    (node.token(&session), outcome, session.start)
}

/// Runs `iters` GETs of `collection/id` for `session_id`, sending `tokens` in turn,
/// and times them.
fn run(
    system: &actix_rt::SystemRunner,
    node: &Node,
    session_id: &str,
    tokens: &[&str],
    collection: &str,
    id: &str,
    iters: u64,
) -> Duration {
    system.block_on(async {
        let started = Instant::now();
        for i in 0..iters as usize {
            let token = tokens[i % tokens.len()];
            let (issued, outcome, _) = get(node, session_id, Some(token), collection, id).await;
            std::hint::black_box((issued, outcome.body));
        }
        started.elapsed()
    })
}

fn text(token: &Bytes) -> &str {
    std::str::from_utf8(token).expect("tokens are ASCII")
}

fn bench_session_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let settings = settings(dir.path());
    let system = actix_rt::System::new();
    let node = node(&settings);

    // Fast path: a live session sending back the last token this node issued.
    let issued = system.block_on(async {
        let (first, outcome, start) = get(&node, "bench-issued", None, "profiles", "u1").await;
        assert_eq!(start, SessionStart::New);
        assert_eq!(
            outcome.status,
            CacheStatus::Miss,
            "the first read fills the cache"
        );
        let (token, outcome, start) = get(&node, "bench-issued", Some(text(&first)), "profiles", "u1").await;
        assert_eq!(start, SessionStart::Live);
        assert_eq!(outcome.status, CacheStatus::Hit, "a pure cache hit");
        assert_eq!(outcome.tier, Tier::Cache);
        assert!(!outcome.strict_from_primary);
        let (again, _, _) = get(&node, "bench-issued", Some(text(&token)), "profiles", "u1").await;
        assert_eq!(
            again, token,
            "nothing changed: the issued token is reused, not re-signed"
        );
        token
    });

    // Verified path: the session read products/p2, then products/p3, then profiles/u1,
    // and sends the tokens it got after the first two reads in turn; they carry
    // nothing new, so merging them changes nothing and the response token stays the
    // cached one — but neither is the last issued or the last taken in.
    let (older, latest) = system.block_on(async {
        let (a, _, _) = get(&node, "bench-verified", None, "products", "p2").await;
        let (b, _, _) = get(&node, "bench-verified", Some(text(&a)), "products", "p3").await;
        let (latest, outcome, _) = get(&node, "bench-verified", Some(text(&b)), "profiles", "u1").await;
        assert_eq!(outcome.status, CacheStatus::Hit);
        assert!(a != latest && b != latest, "the reads added marks");
        for token in [&a, &b, &a] {
            let (again, outcome, start) =
                get(&node, "bench-verified", Some(text(token)), "profiles", "u1").await;
            assert_eq!(start, SessionStart::Live);
            assert_eq!(outcome.status, CacheStatus::Hit);
            assert_eq!(again, latest);
        }
        ([a, b], latest)
    });
    let live = node.sessions().get("bench-verified").expect("live");
    assert!(
        !live.session.state().contains(text(&older[1])),
        "the token sent next must be verified"
    );
    drop(live);

    // Repeated path: the same older token every time.
    let (repeated, repeated_latest) = system.block_on(async {
        let (older, _, _) = get(&node, "bench-repeated", None, "products", "p2").await;
        let (latest, _, _) = get(&node, "bench-repeated", Some(text(&older)), "profiles", "u1").await;
        let (again, outcome, _) = get(&node, "bench-repeated", Some(text(&older)), "profiles", "u1").await;
        assert_eq!(
            (again.clone(), outcome.status),
            (latest.clone(), CacheStatus::Hit)
        );
        (older, latest)
    });
    let live = node.sessions().get("bench-repeated").expect("live");
    assert!(
        live.session.state().contains(text(&repeated)),
        "the repeated token is recognised"
    );
    drop(live);

    // Strict path: products/p1's non-strict fields from the cache, `stock` from the primary.
    let strict = system.block_on(async {
        let (first, outcome, _) = get(&node, "bench-strict", None, "products", "p1").await;
        assert!(matches!(outcome.status, CacheStatus::Miss | CacheStatus::Hit));
        let (token, outcome, _) = get(&node, "bench-strict", Some(text(&first)), "products", "p1").await;
        assert_eq!(outcome.status, CacheStatus::Hit);
        assert!(outcome.strict_from_primary, "stock was read from the primary");
        token
    });

    let mut group = c.benchmark_group("session_read");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    group.bench_function("cache_hit_issued_token", |b| {
        b.iter_custom(|iters| {
            run(
                &system,
                &node,
                "bench-issued",
                &[text(&issued)],
                "profiles",
                "u1",
                iters,
            )
        })
    });
    let alternating = [text(&older[0]), text(&older[1])];
    group.bench_function("cache_hit_verified_token", |b| {
        b.iter_custom(|iters| {
            run(
                &system,
                &node,
                "bench-verified",
                &alternating,
                "profiles",
                "u1",
                iters,
            )
        })
    });
    group.bench_function("cache_hit_repeated_token", |b| {
        b.iter_custom(|iters| {
            run(
                &system,
                &node,
                "bench-repeated",
                &[text(&repeated)],
                "profiles",
                "u1",
                iters,
            )
        })
    });
    group.bench_function("strict_field_primary_read", |b| {
        b.iter_custom(|iters| {
            run(
                &system,
                &node,
                "bench-strict",
                &[text(&strict)],
                "products",
                "p1",
                iters,
            )
        })
    });
    group.finish();

    // Nothing drifted off the measured path while measuring.
    system.block_on(async {
        let (token, outcome, _) = get(&node, "bench-issued", Some(text(&issued)), "profiles", "u1").await;
        assert_eq!((token, outcome.status), (issued.clone(), CacheStatus::Hit));
        for older in &older {
            let (token, outcome, _) = get(&node, "bench-verified", Some(text(older)), "profiles", "u1").await;
            assert_eq!((token, outcome.status), (latest.clone(), CacheStatus::Hit));
        }
        let (token, outcome, _) = get(&node, "bench-repeated", Some(text(&repeated)), "profiles", "u1").await;
        assert_eq!(
            (token, outcome.status),
            (repeated_latest.clone(), CacheStatus::Hit)
        );
        let (_, outcome, _) = get(&node, "bench-strict", Some(text(&strict)), "products", "p1").await;
        assert!(outcome.strict_from_primary);
    });
    node.sessions().passivate_all();
}

criterion_group!(benches, bench_session_read);
criterion_main!(benches);
