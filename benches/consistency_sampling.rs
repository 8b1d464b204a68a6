//! What the online consistency checks cost a cache hit: the same read through two
//! nodes in one run, one with `flags.consistency_checks.sample = 0` (off: one
//! comparison on the read path) and one at `0.01` (1 %: a thread-local random draw per
//! read; one read in a hundred builds its sample and queues it, and the checker reads
//! the item from the primary). A third at `1.0` shows the cost per sampled read.
//!
//! Each iteration does what the GET handler does for a live session that sends back
//! its last token: `Node::open_session`, `Node::read` (`profiles/u1`, fresh in the
//! cache: a pure hit), `Node::token`. The nodes run in one single-threaded actix
//! system, as an actix-web worker is, and the loop yields after every read in every
//! variant, so the checker's task (spawned on the same system) gets its turns on the
//! thread being measured: its bookkeeping is counted against the hits, while its
//! primary reads run on SQLite's blocking threads, as in production. In production
//! the checker lives on the main system's thread, not on a worker's, so this
//! overstates the cost rather than hiding it.
//!
//! `cargo bench --bench consistency_sampling`; the issue's bar: 1 % costs < 3 % of
//! hit throughput (compare `cache_hit/off` with `cache_hit/sample_1pct`, and the
//! interleaved A/B printed at the end, which drift between the two does not move).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgecache_config::{OriginSettings, Settings, Sources};
use edgecache_flags::ConfigFlags;
use edgecache_services::metrics::Tier;
use edgecache_services::origin::EmbeddedOrigin;
use edgecache_services::{CacheStatus, Node};

const FRESH: &str =
    r#"{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1m", stale_if_error = "1h" }"#;

/// The base configuration over an embedded store in `dir`, `profiles/u1` fresh for an
/// hour, checks sampling `sample` of the reads.
fn settings(dir: &Path, sample: f64) -> Settings {
    let db = dir.join("edgecache.db");
    let overrides = format!(
        r#"
[origin]
kind = "embedded"
path = {db:?}

[session]
idle_lease = "1h"

[flags.consistency_checks]
sample = {sample}
queue = 1024

[collections.profiles]
freshness = {FRESH}

[collections.profiles.fields.bio]
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
    origin.seed_if_fresh(&settings.seed).expect("seed");
    let flags = Arc::new(ConfigFlags::new(&settings.flags.defaults));
    Node::new(settings, Arc::new(origin), flags)
}

/// One GET of `profiles/u1` for the live session `bench`, sending `token`; returns
/// the token of the answer.
async fn get(node: &Node, token: Option<&str>) -> (String, CacheStatus, Tier) {
    let session = node
        .open_session(Some("bench"), None, token)
        .expect("the session opens");
    let outcome = node
        .read(&session, "profiles", "u1", false)
        .await
        .expect("the read succeeds");
    let token = String::from_utf8(node.token(&session).to_vec()).expect("ASCII");
    (token, outcome.status, outcome.tier)
}

/// `iters` hits, yielding after each; the time they took.
async fn hits(node: &Node, token: &mut String, iters: u64) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        let (next, status, _) = get(node, Some(token)).await;
        std::hint::black_box(status);
        *token = next;
        tokio::task::yield_now().await;
    }
    started.elapsed()
}

fn bench_sampling(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let variants = [("off", 0.0), ("sample_1pct", 0.01), ("sample_100pct", 1.0)];
    let nodes: Vec<(&str, tempfile::TempDir, Node, String)> = variants
        .iter()
        .map(|(name, sample)| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let settings = settings(dir.path(), *sample);
            let node = system.block_on(async { node(&settings) });
            let token = system.block_on(async {
                let (first, status, _) = get(&node, None).await;
                assert_eq!(status, CacheStatus::Miss, "the first read fills the cache");
                let (token, status, tier) = get(&node, Some(&first)).await;
                assert_eq!(
                    (status, tier),
                    (CacheStatus::Hit, Tier::Cache),
                    "a pure cache hit"
                );
                token
            });
            (*name, dir, node, token)
        })
        .collect();

    let mut group = c.benchmark_group("consistency_sampling");
    group.throughput(Throughput::Elements(1));
    for (name, _dir, node, token) in &nodes {
        let mut token = token.clone();
        group.bench_function(format!("cache_hit/{name}"), |b| {
            b.iter_custom(|iters| system.block_on(hits(node, &mut token, iters)));
        });
    }
    group.finish();

    // Interleaved A/B, off against 1 %: criterion measures one variant after the
    // other, and on a shared VM the machine's speed drifts by more than the effect
    // between them. Here each round runs ROUND_HITS hits on one node then on the
    // other (the order alternating), and the ratio is taken per round.
    const ROUNDS: usize = 41;
    const ROUND_HITS: u64 = 20_000;
    let (off, one) = (&nodes[0], &nodes[1]);
    let (mut off_token, mut one_token) = (off.3.clone(), one.3.clone());
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (t_off, t_one) = system.block_on(async {
                if round % 2 == 0 {
                    let t_off = hits(&off.2, &mut off_token, ROUND_HITS).await;
                    (t_off, hits(&one.2, &mut one_token, ROUND_HITS).await)
                } else {
                    let t_one = hits(&one.2, &mut one_token, ROUND_HITS).await;
                    (hits(&off.2, &mut off_token, ROUND_HITS).await, t_one)
                }
            });
            t_one.as_secs_f64() / t_off.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "interleaved A/B, {ROUNDS} rounds of {ROUND_HITS} hits: time per hit at 1 % ÷ off: median {:.3} \
         (quartiles {:.3}–{:.3})",
        ratios[ROUNDS / 2],
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4]
    );

    // What the sampled variants checked (the bench's own sanity, not a figure).
    for (name, _dir, node, _) in &nodes {
        let arms = node
            .metrics()
            .experiments
            .arms_of(edgecache_flags::Strategy::ReadYourWrites);
        let checks: Vec<(&str, u64)> = edgecache_services::metrics::CHECK_OUTCOMES
            .iter()
            .map(|o| (o.as_str(), arms.iter().map(|a| a.checks_with(*o)).sum()))
            .collect();
        let reads: u64 = arms.iter().map(|a| a.reads).sum();
        eprintln!("{name}: {reads} reads, checks {checks:?}");
    }
}

criterion_group!(benches, bench_sampling);
criterion_main!(benches);
