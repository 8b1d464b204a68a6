//! Session-actor benches: the cost of putting a write through its session's actor.
//!
//! Every write of a session is a `Write` message to that session's `SessionActor`,
//! which runs the write's job as an `AtomicResponse` (so the session's writes never
//! overlap) and then records the commit in the session's watermarks and pending
//! writes. Here the job does no I/O — it resolves at once to a committed item with a
//! new version — so what is measured is the overhead the actor adds to every write:
//! `Addr::send`, the mailbox, the `AtomicResponse` and the watermark bookkeeping.
//!
//! * `session_actor/write_round_trip`: one write in flight at a time (one request's
//!   latency share).
//! * `session_actor/write_concurrent/16`: 16 writes of one session sent at once and
//!   awaited together; the actor runs them one after another, so this shows the
//!   serialisation cost when a client pipelines writes. Reported per batch, with the
//!   per-write throughput.
//!
//! Like an HTTP worker, the benches run on a single-threaded actix system: the sender
//! and the session's actor share one thread (as a request handler and the sessions it
//! started do on an actix-web worker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgecache_actors::{
    Doc, Fields, ItemKey, Position, SessionActor, SessionLimits, SessionRegistry, SessionStart, Version,
    Write, WriteTicket, Written,
};
use futures_util::future::{join_all, FutureExt};

/// The base configuration's session bounds.
const LIMITS: SessionLimits = SessionLimits {
    max_items: 24,
    max_pending: 16,
};

/// One write whose job commits at once: `seq` gives it a new version and position,
/// as a real commit would.
fn write(key: &ItemKey, fields: &Arc<Fields>, seq: u64) -> Write<(), ()> {
    let key = key.clone();
    let doc = Doc {
        version: Version(seq),
        position: Position(seq),
        fields: Some(fields.clone()),
    };
    Write {
        start: Box::new(move || {
            async move {
                Ok::<_, ()>(Written {
                    key,
                    doc,
                    own_value: true,
                    bytes: 64,
                    extra: (),
                })
            }
            .boxed_local()
        }),
        ticket: WriteTicket::new(),
    }
}

/// Sends one write and checks it was recorded.
async fn send_one(addr: &Addr<SessionActor>, key: &ItemKey, fields: &Arc<Fields>, seq: u64) {
    let (doc, ()) = addr
        .send(write(key, fields, seq))
        .await
        .expect("the session actor is alive")
        .expect("the write was not given up")
        .expect("the job does not fail");
    debug_assert_eq!(doc.version, Version(seq));
}

fn bench_session_actor(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let registry = SessionRegistry::new(1_000, Duration::from_secs(3600), LIMITS);
    let (handle, start) = system.block_on(async { registry.open("bench-session", None) });
    assert_eq!(start, SessionStart::New);
    let addr = handle.addr.clone();

    let key = ItemKey::new("carts".into(), "c1");
    let mut fields = Fields::new();
    fields.insert("items".into(), serde_json::json!([{"sku": "p1", "qty": 2}]));
    fields.insert("total".into(), serde_json::json!(25.0));
    let fields = Arc::new(fields);
    let mut seq = 0u64;

    // Once, before measuring: the write is recorded as the session's own pending write.
    seq += 1;
    system.block_on(send_one(&addr, &key, &fields, seq));
    {
        let state = handle.session.state();
        let pending = state.pending(key.as_ref()).expect("the write is pending");
        assert_eq!(pending.doc.version, Version(seq));
    }

    let mut group = c.benchmark_group("session_actor");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);

    group.throughput(Throughput::Elements(1));
    group.bench_function("write_round_trip", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    seq += 1;
                    send_one(&addr, &key, &fields, seq).await;
                }
                started.elapsed()
            })
        })
    });

    const IN_FLIGHT: u64 = 16;
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.bench_with_input(
        BenchmarkId::new("write_concurrent", IN_FLIGHT),
        &IN_FLIGHT,
        |b, &n| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let first = seq + 1;
                        seq += n;
                        join_all((first..=seq).map(|s| send_one(&addr, &key, &fields, s))).await;
                    }
                    started.elapsed()
                })
            })
        },
    );
    group.finish();

    assert!(addr.connected(), "the session stayed live throughout");
    assert_eq!(
        handle.session.state().pending(key.as_ref()).unwrap().doc.version,
        Version(seq)
    );
}

criterion_group!(benches, bench_session_actor);
criterion_main!(benches);
