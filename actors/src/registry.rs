//! The node's table of live sessions: bounded (past the bound, quick_cache's S3-FIFO
//! policy evicts a cold session: not strictly the least recently used), idle ones
//! passivated; a session that is not live is rebuilt from its token.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use arrayvec::ArrayString;
use quick_cache::sync::{Cache, GuardResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter};

use crate::retired::RetiredMarks;
use crate::session::{PendingBudget, Session, SessionActor, SessionLimits};
use crate::token::Carried;
use crate::Lineage;

/// A live session: its shared state and its actor.
pub struct LiveSession {
    pub session: Arc<Session>,
    pub addr: Addr<SessionActor>,
}

impl LiveSession {
    /// Ends a session that is not kept, once its request is done: its actor stops now
    /// (or at its next tick, if its mailbox is full). A kept session is left alone.
    pub fn release(&self) {
        if !self.session.is_kept() {
            self.session.retire();
            let _ = self.addr.try_send(crate::session::Passivate);
        }
    }
}

/// What the table hands out for a live session. One `Arc`, so taking it for a
/// request is one atomic increment: cloning an actix `Addr` allocates twice.
pub type SessionHandle = Arc<LiveSession>;

/// How a request found its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStart {
    /// The session was live on this node.
    Live,
    /// The session was not live here; it was rebuilt from the token.
    Rebuilt,
    /// A session with nothing to rebuild from (no token): a new one.
    New,
    /// The session id names a live session, but the request holds no token of its
    /// lineage: it is served by a session of its own, from its token if it sent one,
    /// that sees none of the live session's marks and is not kept
    /// ([`SessionRegistry::detached`]).
    Detached,
}

/// The longest session id (bytes).
pub const MAX_SESSION_ID_BYTES: usize = 64;

/// A session id as the table's key, stored inline: a look-up compares it where the
/// table's entry is, without following a pointer to another allocation (on a hit,
/// that was a cache miss of its own). It hashes and compares as the `str` it holds, so
/// look-ups take the `&str`.
type SessionKey = ArrayString<MAX_SESSION_ID_BYTES>;

/// Marks an evicted session retired, so its actor stops at its next tick. It pours
/// its marks into the retired marks first, under the table's lock: a request that
/// finds the session gone and rebuilds it from an older token finds them there.
#[derive(Clone, Copy, Default)]
struct RetireOnEvict;

impl Lifecycle<SessionKey, SessionHandle> for RetireOnEvict {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut Self::RequestState, _: SessionKey, handle: SessionHandle) {
        handle.session.retire();
    }
}

type Table = Cache<SessionKey, SessionHandle, UnitWeighter, DefaultHashBuilder, RetireOnEvict>;

/// The live sessions of this node. Cheap to clone.
#[derive(Clone)]
pub struct SessionRegistry {
    table: Arc<Table>,
    limits: SessionLimits,
    lease: Duration,
    budget: Arc<PendingBudget>,
    /// What retired copies of sessions recorded (see [`RetiredMarks`]).
    retired: Arc<RetiredMarks>,
}

/// Slots of the retired marks unless configured ([`SessionRegistry::with_retired_marks`]).
const DEFAULT_RETIRED_SLOTS: usize = 1 << 16;

impl SessionRegistry {
    /// A table of at most `max_live` sessions, each passivated after `lease` idle.
    pub fn new(max_live: usize, lease: Duration, limits: SessionLimits) -> Self {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(max_live)
            .weight_capacity(max_live as u64)
            .build()
            .expect("valid session table options");
        let table = Cache::with_options(
            options,
            UnitWeighter,
            DefaultHashBuilder::default(),
            RetireOnEvict,
        );
        Self {
            table: Arc::new(table),
            limits,
            lease,
            budget: PendingBudget::new(u64::MAX),
            retired: RetiredMarks::new(DEFAULT_RETIRED_SLOTS),
        }
    }

    /// Keeps what retired session copies recorded in a table of `slots` (session,
    /// item) slots (`24 × slots` bytes; see [`RetiredMarks`]).
    pub fn with_retired_marks(mut self, slots: usize) -> Self {
        self.retired = RetiredMarks::new(slots);
        self
    }

    /// Bounds the bytes of the written values all sessions keep (see
    /// [`PendingBudget`]).
    pub fn with_pending_budget(mut self, max_bytes: u64) -> Self {
        self.budget = PendingBudget::new(max_bytes);
        self
    }

    /// The bytes of written values kept now.
    pub fn pending_bytes(&self) -> u64 {
        self.budget.used()
    }

    /// A session for a request that named none (its id was just minted): never kept
    /// in the table, so anonymous requests pin nothing. A write starts an actor for
    /// it that ends with the request ([`SessionRegistry::serve_once`]); the session
    /// goes on in the token the answer carries, if the client sends it back.
    pub fn anonymous(&self, id: &str) -> Arc<Session> {
        Arc::new(self.build(id, None).detached())
    }

    /// Starts an actor for a session that is not kept (an anonymous request's, about
    /// to write): it serves this request and stops when the request releases it
    /// ([`LiveSession::release`]).
    pub fn serve_once(&self, session: Arc<Session>) -> SessionHandle {
        debug_assert!(!session.is_kept());
        self.start(session)
    }

    /// Makes a kept session live: starts its actor and enters it in the table.
    fn adopt(&self, session: Arc<Session>) -> SessionHandle {
        let handle = self.start(session);
        if let Ok(key) = SessionKey::from(handle.session.id()) {
            self.table.insert(key, handle.clone());
        }
        handle
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The live session `id`, if any.
    pub fn get(&self, id: &str) -> Option<SessionHandle> {
        self.table.get(id).filter(|h| !h.session.is_retired())
    }

    /// The session `id`: the live one, else one rebuilt from `token` (what a verified
    /// token carries, its lineage with it), else a new one with a new lineage. Must
    /// run inside an actix system (the session's actor starts on the current arbiter).
    ///
    /// A live session is handed out whatever its lineage: the caller decides whether
    /// the request may use it.
    pub fn open(&self, id: &str, token: Option<&Carried>) -> (SessionHandle, SessionStart) {
        if let Some(handle) = self.get(id) {
            return (handle, SessionStart::Live);
        }
        let start = if token.is_some() {
            SessionStart::Rebuilt
        } else {
            SessionStart::New
        };
        let session = || Arc::new(self.build_named(id, token));
        // An id past the bound (callers validate ids) gets a session that is not kept:
        // its requests rebuild it from their tokens, which is slower, never wrong.
        let Ok(key) = SessionKey::from(id) else {
            return (
                self.start(Arc::new(self.build_named(id, token).detached())),
                start,
            );
        };
        // One request creates the session; a concurrent one waits for it briefly.
        let guard = match self
            .table
            .get_value_or_guard(&key, Some(Duration::from_millis(50)))
        {
            GuardResult::Value(handle) if !handle.session.is_retired() => {
                return (handle, SessionStart::Live)
            }
            GuardResult::Guard(guard) => Some(guard),
            GuardResult::Value(_) | GuardResult::Timeout => None,
        };
        let handle = self.start(session());
        match guard {
            Some(guard) => {
                let _ = guard.insert(handle.clone());
            }
            None => self.table.insert(key, handle.clone()),
        }
        (handle, start)
    }

    /// A session `id` that is not kept in the table: rebuilt from `token` (with its
    /// lineage), else new. For a request that names a live session without a token of
    /// its lineage: it must not see that session's marks, nor add to them. The caller
    /// ends it when the request is done ([`LiveSession::release`]).
    pub fn detached(&self, id: &str, token: Option<&Carried>) -> SessionHandle {
        self.start(Arc::new(self.build_named(id, token).detached()))
    }

    /// The session `id` as [`SessionRegistry::build`] makes it, sharing the node's
    /// retired marks: a session a client named.
    fn build_named(&self, id: &str, token: Option<&Carried>) -> Session {
        self.build(id, token).with_retired_marks(self.retired.clone())
    }

    /// A session from what `token` carries (a token of the first format names no
    /// lineage: it gets a new one), else an empty one with a new lineage.
    fn build(&self, id: &str, token: Option<&Carried>) -> Session {
        let lineage = token.and_then(|t| t.lineage).unwrap_or_else(Lineage::random);
        let mut watermarks = token.map(|t| t.watermarks.clone()).unwrap_or_default();
        watermarks.compact(self.limits.max_items);
        let session =
            Session::new(id.into(), lineage, watermarks, self.limits).with_budget(self.budget.clone());
        if token.is_some_and(|t| t.lineage.is_some()) {
            session.proven()
        } else {
            session
        }
    }

    /// Starts a new actor for a session whose actor stopped while a request still
    /// held it (evicted or passivated mid-request), and makes it live again (unless
    /// it was detached: then it stays out of the table).
    pub fn revive(&self, session: Arc<Session>) -> SessionHandle {
        let (lineage, watermarks, proven) = {
            let state = session.state();
            (state.lineage(), state.watermarks().clone(), state.is_proven())
        };
        let mut fresh = Session::new(session.id().into(), lineage, watermarks, self.limits)
            .with_budget(self.budget.clone())
            .with_retired_marks(self.retired.clone());
        if proven {
            fresh = fresh.proven();
        }
        if !session.is_kept() {
            return self.start(Arc::new(fresh.detached()));
        }
        self.adopt(Arc::new(fresh))
    }

    fn start(&self, session: Arc<Session>) -> SessionHandle {
        session.touch();
        let table = Arc::downgrade(&self.table);
        let on_stop = Box::new(move |stopped: &Arc<Session>| {
            if let Some(table) = table.upgrade() {
                table.remove_if(stopped.id(), |h: &SessionHandle| Arc::ptr_eq(&h.session, stopped));
            }
        });
        let addr = SessionActor::new(session.clone(), self.lease, on_stop).start();
        Arc::new(LiveSession { session, addr })
    }

    /// Stops every live session now (node shutdown): each actor is sent
    /// [`Passivate`](crate::session::Passivate), or stops at its next tick if its
    /// mailbox is full. Their state lives on in the tokens.
    pub fn passivate_all(&self) {
        for (_, handle) in self.table.iter() {
            handle.session.retire();
            let _ = handle.addr.try_send(crate::session::Passivate);
        }
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Position, Version, Watermarks};

    fn registry(max_live: usize, lease: Duration) -> SessionRegistry {
        SessionRegistry::new(
            max_live,
            lease,
            SessionLimits {
                max_items: 8,
                max_pending: 4,
            },
        )
    }

    #[actix_rt::test]
    async fn a_session_is_rebuilt_from_its_token_after_passivation() {
        let reg = registry(16, Duration::from_millis(40));
        let (handle, start) = reg.open("s1", None);
        assert_eq!(start, SessionStart::New);
        handle.session.state().merge(
            &{
                let mut w = Watermarks::default();
                w.record_write(7, Version(3), Position(30), 8);
                w
            },
            reg.limits(),
        );
        let carried = {
            let state = handle.session.state();
            Carried {
                lineage: Some(state.lineage()),
                watermarks: state.watermarks().clone(),
            }
        };
        assert_eq!(reg.open("s1", None).1, SessionStart::Live);

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            reg.get("s1").is_none(),
            "an idle session is passivated after its lease"
        );
        assert!(handle.session.is_retired());

        let (rebuilt, start) = reg.open("s1", Some(&carried));
        assert_eq!(start, SessionStart::Rebuilt);
        assert_eq!(rebuilt.session.state().need(7, true, true).version, Version(3));
        assert_eq!(
            rebuilt.session.state().lineage(),
            carried.lineage.unwrap(),
            "the lineage carries on"
        );
    }

    #[actix_rt::test]
    async fn passivating_all_stops_every_actor_now_not_at_its_next_tick() {
        // A long lease: the idle check ticks every 5 s, so only `Passivate` stops the
        // actors within the second allowed here.
        let reg = registry(16, Duration::from_secs(60));
        let handles: Vec<_> = ["s1", "s2"].map(|id| reg.open(id, None).0).into();
        reg.passivate_all();
        assert_eq!(reg.len(), 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while handles.iter().any(|h| h.addr.connected()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for handle in &handles {
            assert!(!handle.addr.connected(), "{} stopped", handle.session.id());
            assert!(handle.session.is_retired());
        }
    }

    #[actix_rt::test]
    async fn a_detached_session_stays_out_of_the_table_and_a_revived_one_too() {
        let reg = registry(16, Duration::from_secs(60));
        let (live, _) = reg.open("s1", None);
        let detached = reg.detached("s1", None);
        assert!(!detached.session.is_kept());
        assert_ne!(
            detached.session.state().lineage(),
            live.session.state().lineage(),
            "a lineage of its own"
        );
        detached.session.retire();
        let revived = reg.revive(detached.session.clone());
        assert!(!revived.session.is_kept());
        assert_eq!(
            revived.session.state().lineage(),
            detached.session.state().lineage()
        );
        let kept = reg.get("s1").expect("live");
        assert!(
            Arc::ptr_eq(&kept.session, &live.session),
            "the live session is untouched"
        );
        assert_eq!(reg.len(), 1);
    }

    #[actix_rt::test]
    async fn ids_of_any_length_up_to_the_bound_are_kept_apart() {
        let reg = registry(64, Duration::from_secs(60));
        let long = "x".repeat(MAX_SESSION_ID_BYTES);
        let ids = ["a", "ab", "a-b", &long[1..], &long];
        for id in ids {
            assert_eq!(reg.open(id, None).1, SessionStart::New, "{id}");
        }
        for id in ids {
            let live = reg.get(id).expect("live");
            assert_eq!(live.session.id(), id);
            assert_eq!(reg.open(id, None).1, SessionStart::Live);
        }
        // Past the bound: served, never kept.
        let longer = "y".repeat(MAX_SESSION_ID_BYTES + 1);
        assert_eq!(reg.open(&longer, None).1, SessionStart::New);
        assert!(reg.get(&longer).is_none());
    }

    /// Two requests of one session in parallel while its table entry is evicted: one
    /// still holds the evicted copy and records a write into it; the other rebuilt
    /// the session from the token it carried, issued before that write. The client
    /// may keep the second answer's token (it arrived last), so the node must: a read
    /// by the rebuilt copy asks for a source at the write's position.
    #[actix_rt::test]
    async fn a_copy_rebuilt_from_an_older_token_never_asks_less_than_an_evicted_copy_recorded() {
        let reg = registry(4, Duration::from_secs(60));
        // Sessions that came first and are used again hold the table's hot places.
        let first: Vec<_> = (0..8).map(|i| reg.open(&format!("f{i}"), None).0).collect();
        for i in 0..8 {
            let _ = reg.get(&format!("f{i}"));
        }
        let (old, _) = reg.open("s1", None);
        let token = {
            let state = old.session.state();
            Carried {
                lineage: Some(state.lineage()),
                watermarks: state.watermarks().clone(),
            }
        };
        // Other sessions take the places: s1's copy is evicted.
        let mut others = Vec::new();
        while !old.session.is_retired() && others.len() < 10_000 {
            others.push(reg.open(&format!("s{}", others.len() + 2), None).0);
        }
        assert!(
            old.session.is_retired(),
            "evicted ({} others after {})",
            others.len(),
            first.len()
        );
        // A parallel request of s1 rebuilds it from the older token…
        let (rebuilt, start) = reg.open("s1", Some(&token));
        assert_eq!(start, SessionStart::Rebuilt);
        let item = 7;
        assert!(rebuilt.session.state().need(item, true, true).is_none());
        // …and then the request holding the evicted copy records its write.
        let mut write = Watermarks::default();
        write.record_write(item, Version(14), Position(1400), 8);
        old.session.state().merge(&write, reg.limits());
        let need = rebuilt.session.state().need(item, true, false);
        assert!(
            need.position >= Position(1400),
            "the rebuilt copy's read of the item needs a source at the write: {need:?}"
        );
        // What the evicted copy held before it was evicted counts too (poured at
        // eviction), and monotonic reads likewise.
        let mut read = Watermarks::default();
        read.record_read(8, Version(3), Position(900), 8);
        old.session.state().merge(&read, reg.limits());
        assert!(rebuilt.session.state().need(8, false, true).position >= Position(900));
        // A detached copy (a request without a token of the session's lineage: it
        // may be the holder's, from a token of another lineage) pours when it ends.
        let detached = reg.detached("s1", None);
        let mut other = Watermarks::default();
        other.record_write(9, Version(2), Position(5000), 8);
        detached.session.state().merge(&other, reg.limits());
        detached.release();
        assert!(rebuilt.session.state().need(9, true, false).position >= Position(5000));
        // Another session's needs are untouched.
        let (s3, _) = reg.open("s3-unrelated", None);
        assert!(s3.session.state().need(9, true, true).is_none());
    }

    #[actix_rt::test]
    async fn the_table_is_bounded() {
        let reg = registry(32, Duration::from_secs(60));
        let handles: Vec<_> = (0..500).map(|i| reg.open(&format!("s{i}"), None).0).collect();
        assert!(reg.len() <= 40, "{} live sessions for a bound of 32", reg.len());
        let retired = handles.iter().filter(|h| h.session.is_retired()).count();
        assert!(retired >= 460, "evicted sessions are retired ({retired})");
    }
}
