//! Session-token benches: what signing and verifying `X-Session-Token` costs.
//!
//! Every response signs the session's watermarks (unless they did not change since the
//! last token, see `SessionState::token`), and every request whose token is not the
//! last one this node issued verifies it. These benches measure those two operations
//! on their own — AES-256-GCM-SIV, base64url and the varint codec — for the smallest
//! useful token (one mark) and for a full one (as many marks as
//! `session.max_token_items` allows, 24 in the base configuration), so the per-request
//! overhead of carrying session guarantees between nodes can be quoted.
//!
//! The keys and the mark limit come from the compiled-in base configuration, as a
//! node would build them. The encoded length of each token is printed once (stderr).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use edgecache_actors::{item_hash, Lineage, Position, TokenKeys, Version, Watermarks};
use edgecache_config::{Settings, Sources};
use secrecy::ExposeSecret;

const SESSION_ID: &str = "0f6c2b1e9a8d4c7b8e5f3a2d1c0b9a87";

/// The base configuration, without environment variables or configuration files.
fn settings() -> Settings {
    edgecache_config::load(&Sources {
        skip_env: true,
        dir: Some("/nonexistent".into()),
        ..Default::default()
    })
    .expect("the base configuration loads")
}

/// The token keys a node builds from `settings` (as `Node::new` does).
fn keys(settings: &Settings) -> TokenKeys {
    let session = &settings.session;
    TokenKeys::new(
        session
            .keys
            .iter()
            .map(|k| (k.id.as_str(), k.secret.expose_secret().as_bytes())),
        &session.active_key,
    )
    .expect("the active key is among the keys")
}

/// Watermarks with `marks` per-item marks, alternating writes and reads, with the
/// magnitudes a session on a busy store would carry: item versions in the tens,
/// origin positions in the millions (3–4 byte varints), item hashes of real keys.
fn watermarks(marks: usize, max_items: usize) -> Watermarks {
    let mut w = Watermarks::default();
    for i in 0..marks {
        let item = item_hash("products", &format!("p{i}"));
        let version = Version(10 + i as u64);
        let position = Position(4_000_000 + 1_000 * i as u64);
        if i % 2 == 0 {
            w.record_write(item, version, position, max_items);
        } else {
            w.record_read(item, version, position, max_items);
        }
    }
    assert_eq!(
        w.writes().len() + w.reads().len(),
        marks,
        "no mark was compacted away"
    );
    w
}

fn bench_token(c: &mut Criterion) {
    let settings = settings();
    let keys = keys(&settings);
    let max_items = settings.session.max_token_items;
    let lineage = Lineage::random();

    let mut group = c.benchmark_group("token");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);

    for marks in [1, max_items] {
        let w = watermarks(marks, max_items);
        let token = keys.sign(SESSION_ID, &lineage, &w);
        let carried = keys.verify(SESSION_ID, &token).expect("the token verifies");
        assert_eq!(carried.watermarks, w, "round trip");
        eprintln!("token with {marks:>2} mark(s): {} bytes", token.len());

        group.bench_with_input(BenchmarkId::new("sign", format!("{marks}_marks")), &w, |b, w| {
            b.iter(|| keys.sign(black_box(SESSION_ID), &lineage, black_box(w)))
        });
        group.bench_with_input(
            BenchmarkId::new("verify", format!("{marks}_marks")),
            &token,
            |b, token| b.iter(|| keys.verify(black_box(SESSION_ID), black_box(token))),
        );
        group.bench_with_input(
            BenchmarkId::new("sign_then_verify", format!("{marks}_marks")),
            &w,
            |b, w| {
                b.iter(|| {
                    let token = keys.sign(black_box(SESSION_ID), &lineage, black_box(w));
                    keys.verify(SESSION_ID, &token)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_token);
criterion_main!(benches);
