//! `/readyz` answers from the node's last readiness ping of the origin, taken in the
//! background every `server.readiness_interval`: asking it often costs the origin
//! nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgecache_actors::{ItemKey, Position};
use edgecache_services::origin::{
    Committed, EmbeddedOrigin, IdempotencySweep, Origin, OriginError, OriginRead, ReadRequest, WriteError,
    WriteOp,
};
use futures_util::future::BoxFuture;

use crate::helpers::{eventually, settings, spawn_over, Client, Store};

/// The embedded store, counting its pings; they can be made to fail.
struct Counted {
    inner: EmbeddedOrigin,
    pings: AtomicU64,
    down: AtomicBool,
}

impl Origin for Counted {
    fn read(
        &self,
        key: ItemKey,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
        self.inner.read(key, request)
    }

    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
        self.inner.read_many(keys, request)
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
        self.inner.write(op)
    }

    fn sweep_idempotency(
        &self,
        retention: Duration,
    ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>> {
        self.inner.sweep_idempotency(retention)
    }

    fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(OriginError::Unavailable {
                    reason: "switched off".into(),
                    source: None,
                })
            });
        }
        self.inner.ping()
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

#[actix_web::test]
async fn a_hundred_readyz_calls_cost_a_ping_per_interval_not_one_each() {
    let store = Store::new();
    let mut settings = settings(&store.path, "");
    let interval = Duration::from_millis(200);
    settings.server.readiness_interval = interval;
    let origin = Arc::new(Counted {
        inner: EmbeddedOrigin::open(&store.path, 2, Duration::from_millis(200)).unwrap(),
        pings: AtomicU64::new(0),
        down: AtomicBool::new(false),
    });
    let app = spawn_over(&settings, origin.clone());

    let started = Instant::now();
    for _ in 0..100 {
        let reply = Client::new().get(&app, "/readyz").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["status"], "ready");
    }
    let took = started.elapsed();
    let pings = origin.pings.load(Ordering::SeqCst);
    let at_most = 2 + (took.as_millis() / interval.as_millis()) as u64;
    assert!(
        pings <= at_most,
        "{pings} pings for 100 /readyz calls in {took:?} (at most {at_most})"
    );

    // Still accurate: the origin failing shows within an interval or two, and so
    // does its recovery.
    origin.down.store(true, Ordering::SeqCst);
    let down = eventually(Duration::from_secs(2), || async {
        Client::new().get(&app, "/readyz").await.status == 503
    })
    .await;
    assert!(down, "not ready while the origin fails its pings");
    let reply = Client::new().get(&app, "/readyz").await;
    assert_eq!(reply.problem(), "origin-unavailable");
    origin.down.store(false, Ordering::SeqCst);
    let up = eventually(Duration::from_secs(2), || async {
        Client::new().get(&app, "/readyz").await.status == 200
    })
    .await;
    assert!(up, "ready again");
}
