//! What each tier costs, in one run, over the PostgreSQL cluster the test command
//! starts (`source scripts/pg-cluster.sh && pg_cluster_start`, then
//! `cargo bench --bench origin_tiers`):
//!
//! * `origin_tiers/cache_hit`: a session read served from the node's cache (the same
//!   path as `GET`, minus the socket);
//! * `origin_tiers/replica_read`: one origin read answered by the streaming replica
//!   (its replay position, then the row);
//! * `origin_tiers/primary_read`: one origin read of the primary — what a node with
//!   no cache (read-through) pays on every read.
//!
//! Ratios, not absolute times, are what carries across machines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgecache_actors::{ItemKey, Position};
use edgecache_config::{OriginSettings, Settings, Sources};
use edgecache_flags::ConfigFlags;
use edgecache_services::origin::{MaxStaleness, Origin, OriginTier, PostgresOrigin, ReadRequest};
use edgecache_services::{CacheStatus, Node};

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: start the cluster with scripts/pg-cluster.sh first"))
}

fn settings() -> Settings {
    let overrides = format!(
        r#"
[origin]
kind = "postgres"
primary = {:?}
replicas = [{:?}]
health_interval = "50ms"
change_feed = "off"
[session]
idle_lease = "1h"
[collections.bench_tiers]
freshness = {{ class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }}
[collections.bench_tiers.fields]
name = {{ type = "string" }}
description = {{ type = "string" }}
price = {{ type = "number" }}
"#,
        var("EDGECACHE_TEST_PG_PRIMARY"),
        var("EDGECACHE_TEST_PG_REPLICA")
    );
    edgecache_config::load(&Sources {
        dir: Some("/nonexistent".into()),
        skip_env: true,
        overrides: Some(overrides),
        ..Sources::default()
    })
    .expect("bench settings are valid")
}

fn tiers(c: &mut Criterion) {
    let settings = settings();
    let OriginSettings::Postgres(pg) = &settings.origin else {
        unreachable!("the bench configures PostgreSQL")
    };
    let system = actix_rt::System::new();
    let origin = PostgresOrigin::open(&settings, pg).expect("origin");
    let node = system.block_on(async {
        origin.migrate(&settings).await.expect("migrate");
        let node = Node::new(
            &settings,
            Arc::new(origin.clone()),
            Arc::new(ConfigFlags::new(&Default::default())),
        );
        let s = node.open_session(None, None, None).unwrap();
        let doc = serde_json::json!({
            "name": "Pour-over kettle",
            "description": "A 1 l gooseneck kettle for a slow, even pour; brushed steel, 300 bytes of JSON.",
            "price": 49.0
        });
        let key = ItemKey::new("bench_tiers".into(), "k1");
        let op = edgecache_services::origin::WriteOp {
            key: key.clone(),
            if_match: None,
            kind: edgecache_services::origin::WriteOpKind::Put(Arc::new(doc.as_object().unwrap().clone())),
            idempotency: None,
        };
        node.write(&s, op).await.expect("write");
        // Wait until the replica has the item and is in rotation.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read = origin
                .read(
                    key.clone(),
                    ReadRequest::at_least(Position(0), false, MaxStaleness::ANY),
                )
                .await
                .unwrap();
            if read.tier == OriginTier::Replica && read.doc.exists() {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never served the item");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    });
    let key = ItemKey::new("bench_tiers".into(), "k1");
    system.block_on(async {
        let session = node.open_session(Some("bench"), None, None).unwrap();
        node.read(&session, "bench_tiers", "k1", false).await.unwrap();
        let hit = node.read(&session, "bench_tiers", "k1", false).await.unwrap();
        assert_eq!(hit.status, CacheStatus::Hit, "the second read is a cache hit");
    });

    let mut group = c.benchmark_group("origin_tiers");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group.bench_function("cache_hit", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let s = node.open_session(Some("bench"), None, None).unwrap();
                    let read = node.read(&s, "bench_tiers", "k1", false).await.unwrap();
                    assert_eq!(read.status, CacheStatus::Hit);
                    std::hint::black_box(node.token(&s));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("replica_read", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let read = origin
                        .read(
                            key.clone(),
                            ReadRequest::at_least(Position(0), false, MaxStaleness::ANY),
                        )
                        .await
                        .unwrap();
                    assert_eq!(read.tier, OriginTier::Replica);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("primary_read", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let read = origin.read(key.clone(), ReadRequest::PRIMARY).await.unwrap();
                    assert_eq!(read.tier, OriginTier::Primary);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, tiers);
criterion_main!(benches);
