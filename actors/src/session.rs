//! One live session: its shared state (watermarks, own pending writes) and the actor
//! that serialises its writes and passivates it when idle.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use compact_str::CompactString;
use edgecache_flags::Strategies;
use futures_util::future::LocalBoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::retired::{session_hash, RetiredMarks};
use crate::{Doc, ItemKey, KeyRef, Lineage, Need, TokenKeys, Watermarks};

/// Bounds of one session's state.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Most per-item marks kept (and carried in the token).
    pub max_items: usize,
    /// Most own written values kept to answer the session's reads.
    pub max_pending: usize,
}

/// A write of this session the origin committed: the value it wrote, kept so the
/// session's next read of the item can be answered from it while the cache or a
/// replica may not show it yet.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    pub key: ItemKey,
    pub doc: Doc,
    /// When the write was acknowledged (the age of this value).
    pub committed_at: Instant,
    /// What the value weighs against the node's [`PendingBudget`].
    bytes: u64,
}

/// The bytes of written values all sessions of a node keep to answer their own reads
/// (`session.max_pending_bytes`). A value that does not fit is not kept: the write's
/// watermark still is, so the session's next read of the item goes to the cache or the
/// origin instead — an extra read, never a stale one.
#[derive(Debug)]
pub struct PendingBudget {
    used: AtomicU64,
    max: u64,
}

impl PendingBudget {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&next| next <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The state of one session, read by request handlers under a short per-session lock
/// (never a global one) and changed by its actor (writes) and by reads (read marks).
#[derive(Debug)]
pub struct SessionState {
    /// The line of tokens this state issues and takes in (see [`Lineage`]).
    lineage: Lineage,
    watermarks: Watermarks,
    pending: VecDeque<PendingWrite>,
    /// Bumped on every change of `watermarks`, so an unchanged session reuses its
    /// last token instead of signing again.
    generation: u64,
    /// The last token issued and the generation it was signed at (ASCII bytes, so the
    /// response header is built from it without a copy).
    issued: Option<(u64, Bytes)>,
    /// The last token a client sent that was verified and taken in (a client that does
    /// not follow the tokens in the answers, or one with requests in parallel, sends
    /// the same older token again and again).
    merged: Option<Arc<str>>,
    /// The session's strategies as last evaluated.
    strategies: Option<KeptStrategies>,
    /// Where the bytes of `pending` are counted (none: unbounded, in unit tests).
    budget: Option<Arc<PendingBudget>>,
    /// The node's marks of retired session copies, and this session's id hashed for
    /// it: every need takes them in (none: in unit tests).
    retired_marks: Option<(Arc<RetiredMarks>, u64)>,
    /// This copy retired and poured its marks into `retired_marks`: what it records
    /// from now on goes there too (a request that still holds it may record more).
    poured: bool,
    /// A request proved it holds the session: it sent a token of its lineage, or the
    /// session was rebuilt from one. Until then the session is only a name — every
    /// request of it came without a token (a client's parallel first requests) — and
    /// tokenless requests share it; after, they are detached (see
    /// [`SessionState::claim`]).
    proven: bool,
    /// Until then another copy of the session may still be serving requests (on the
    /// node the session came from) and record marks no token of this copy will hold:
    /// its reads come from the primary (see [`SessionState::begin_handover`]).
    handover_until: Option<Instant>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.pending.iter().map(|p| p.bytes).sum());
        }
    }
}

/// Strategies evaluated for a session, kept while the flag source's generation and
/// the request's user are the same (`FlagSource::generation`): evaluating six flags
/// against Unleash's definitions costs more than the rest of a cache hit.
#[derive(Debug)]
struct KeptStrategies {
    generation: u64,
    /// The `X-User-Id` they were evaluated for (none: the session id stood for it).
    user: Option<CompactString>,
    strategies: Strategies,
}

impl SessionState {
    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    pub fn lineage(&self) -> Lineage {
        self.lineage
    }

    /// Another copy of this session may be serving requests until `until`: this copy
    /// was rebuilt from a token on a node the session came to from another. A request
    /// in flight on that copy may still answer with marks of what it served, and the
    /// client — with requests in parallel, keeping the token that arrived last — may
    /// then send this copy a token without them. Until then, every read of the
    /// session is checked against the primary, which holds whatever any copy served
    /// (decision 0008).
    pub fn begin_handover(&mut self, until: Instant) {
        self.handover_until = Some(self.handover_until.map_or(until, |u| u.max(until)));
    }

    /// Whether another copy may still be serving requests (see
    /// [`SessionState::begin_handover`]).
    pub fn in_handover(&self, now: Instant) -> bool {
        self.handover_until.is_some_and(|until| now < until)
    }

    /// Whether a request proved it holds the session (see the field).
    pub fn is_proven(&self) -> bool {
        self.proven
    }

    /// A request sent a token of this session's lineage.
    pub fn prove(&mut self) {
        self.proven = true;
    }

    /// A request sent a verified token of `lineage`, another one, while this session
    /// was still unproven: every request it served so far came without a token, so it
    /// holds nothing that belongs to anyone more than to the token's holder. The token
    /// claims it: the session takes the token's lineage (its answers now carry tokens
    /// of it, which the session's tokenless requests never held), takes the token's
    /// watermarks in, and is proven. Returns false, changing nothing, if the session
    /// is proven already.
    pub fn claim(
        &mut self,
        lineage: Lineage,
        token: &str,
        carried: &Watermarks,
        limits: SessionLimits,
    ) -> bool {
        if self.proven {
            return false;
        }
        self.lineage = lineage;
        self.issued = None;
        self.generation += 1;
        self.merge_token(token, carried, limits);
        self.proven = true;
        true
    }

    /// The need of a read of `item` under the given switches: what this copy's
    /// watermarks ask, and what retired copies of the session on this node asked.
    pub fn need(&self, item: u64, ryw: bool, monotonic: bool) -> Need {
        let mut need = self.watermarks.need(item, ryw, monotonic);
        if let Some((table, session)) = &self.retired_marks {
            table.raise_need(*session, item, ryw, monotonic, &mut need);
        }
        need
    }

    /// Pours this copy's marks into the node's retired marks, now and from now on
    /// (see [`crate::retired`]).
    fn pour(&mut self) {
        self.poured = true;
        if let Some((table, session)) = &self.retired_marks {
            table.keep(*session, &self.watermarks);
        }
    }

    /// After a retired copy recorded `item` (a read if `read`): its mark goes to the
    /// retired marks too, where a newer copy of the session finds it.
    fn pour_mark(&self, item: u64, read: bool) {
        let Some((table, session)) = self.retired_marks.as_ref().filter(|_| self.poured) else {
            return;
        };
        let marks = &self.watermarks;
        let (list, floor) = if read {
            (marks.reads(), marks.read_floor())
        } else {
            (marks.writes(), marks.write_floor())
        };
        // Compaction may have folded the mark into the floor.
        match list.iter().find(|m| m.item == item) {
            Some(mark) => table.keep_mark(*session, item, mark.position, read),
            None => table.keep_floor(*session, floor, read),
        }
    }

    /// This session's own last write of `key`, if still kept.
    pub fn pending(&self, key: KeyRef<'_>) -> Option<&PendingWrite> {
        self.pending.iter().rev().find(|p| {
            p.key.hash() == key.hash && p.key.id() == key.id && p.key.collection() == key.collection
        })
    }

    /// Records that the session was served `doc` of `item`.
    pub fn record_read(&mut self, item: u64, doc: &Doc, limits: SessionLimits) {
        if self
            .watermarks
            .record_read(item, doc.version, doc.position, limits.max_items)
        {
            self.generation += 1;
            self.pour_mark(item, true);
        }
    }

    /// Takes in the watermarks of a token the client sent.
    pub fn merge(&mut self, other: &Watermarks, limits: SessionLimits) {
        if self.watermarks.merge(other, limits.max_items) {
            self.generation += 1;
            if self.poured {
                self.pour();
            }
        }
    }

    /// Records a committed write of this session (see [`Written`]).
    pub fn record_write<T>(&mut self, written: &Written<T>, limits: SessionLimits) {
        let (key, doc) = (&written.key, &written.doc);
        if self
            .watermarks
            .record_write(key.hash(), doc.version, doc.position, limits.max_items)
        {
            self.generation += 1;
            self.pour_mark(key.hash(), false);
        }
        let mut freed = 0;
        self.pending.retain(|p| {
            let keep = p.key != *key;
            if !keep {
                freed += p.bytes;
            }
            keep
        });
        let keep = limits.max_pending > 0 && written.own_value;
        if keep && self.pending.len() == limits.max_pending {
            freed += self.pending.pop_front().map_or(0, |p| p.bytes);
        }
        if let Some(budget) = &self.budget {
            budget.give(freed);
        }
        let bytes = written.bytes as u64;
        if keep && self.budget.as_ref().is_none_or(|b| b.take(bytes)) {
            self.pending.push_back(PendingWrite {
                key: key.clone(),
                doc: doc.clone(),
                committed_at: Instant::now(),
                bytes,
            });
        }
    }

    /// Whether `token` is the last token this node issued for the session. It then
    /// needs no verification and carries nothing new: watermarks only ever rise, so
    /// the state it was signed from is contained in the current one.
    pub fn issued_is(&self, token: &str) -> bool {
        matches!(&self.issued, Some((_, issued)) if issued == token.as_bytes())
    }

    /// Whether the current state already contains what `token` carries: it is the
    /// last token issued, or the last one taken in with [`SessionState::merge_token`]
    /// (a merge only ever raises watermarks and compaction keeps floors at or above
    /// what it folds, so taking the same token in again changes nothing).
    pub fn contains(&self, token: &str) -> bool {
        self.issued_is(token) || self.merged.as_deref() == Some(token)
    }

    /// The strategies kept for flag `generation` and `user`, if they were evaluated for
    /// exactly those.
    pub fn strategies(&self, generation: u64, user: Option<&str>) -> Option<Strategies> {
        self.strategies
            .as_ref()
            .filter(|kept| kept.generation == generation && kept.user.as_deref() == user)
            .map(|kept| kept.strategies)
    }

    /// Keeps `strategies`, evaluated at flag `generation` for `user`.
    pub fn keep_strategies(&mut self, generation: u64, user: Option<&str>, strategies: Strategies) {
        self.strategies = Some(KeptStrategies {
            generation,
            user: user.map(CompactString::new),
            strategies,
        });
    }

    /// Takes in the watermarks of a verified `token` and remembers it.
    pub fn merge_token(&mut self, token: &str, carried: &Watermarks, limits: SessionLimits) {
        self.merge(carried, limits);
        self.merged = Some(token.into());
    }

    /// The token for the current watermarks: the last one issued if nothing changed
    /// since, else a freshly signed one.
    pub fn token(&mut self, session_id: &str, keys: &TokenKeys) -> Bytes {
        match &self.issued {
            Some((generation, token)) if *generation == self.generation => token.clone(),
            _ => {
                let token = Bytes::from(keys.sign(session_id, &self.lineage, &self.watermarks));
                self.issued = Some((self.generation, token.clone()));
                token
            }
        }
    }
}

/// A live session, shared between its actor and the requests that use it.
#[derive(Debug)]
pub struct Session {
    id: Arc<str>,
    state: Mutex<SessionState>,
    limits: SessionLimits,
    /// Milliseconds since `epoch` of the last request (for the idle lease).
    last_seen: AtomicU64,
    epoch: Instant,
    /// Set when the session table dropped this session (evicted or passivated); its
    /// actor stops at its next tick.
    retired: AtomicBool,
    /// Where the node's metrics last counted the session (see [`Session::counted_in`]).
    counted_in: AtomicU32,
    /// Whether the session table holds this session (see [`Session::detached`]).
    kept: bool,
}

impl Session {
    /// A session of `lineage` starting from `watermarks`.
    pub fn new(id: Arc<str>, lineage: Lineage, watermarks: Watermarks, limits: SessionLimits) -> Self {
        Self {
            id,
            state: Mutex::new(SessionState {
                lineage,
                watermarks,
                pending: VecDeque::new(),
                generation: 0,
                issued: None,
                merged: None,
                strategies: None,
                budget: None,
                retired_marks: None,
                poured: false,
                proven: false,
                handover_until: None,
            }),
            limits,
            last_seen: AtomicU64::new(0),
            epoch: Instant::now(),
            retired: AtomicBool::new(false),
            counted_in: AtomicU32::new(0),
            kept: true,
        }
    }

    /// Counts the session's kept values against `budget`.
    pub fn with_budget(self, budget: Arc<PendingBudget>) -> Self {
        self.state.lock().budget = Some(budget);
        self
    }

    /// A session proven from birth (rebuilt from a token of its lineage).
    pub fn proven(self) -> Self {
        self.state.lock().proven = true;
        self
    }

    /// Takes in (on every need) and keeps (on retiring) the marks of retired copies
    /// of this session in `table`.
    pub fn with_retired_marks(self, table: Arc<RetiredMarks>) -> Self {
        self.state.lock().retired_marks = Some((table, session_hash(&self.id)));
        self
    }

    /// The same session, not to be kept in the session table: it serves one request
    /// and is retired after it (a request that named a live session id without a
    /// token of its lineage; see `SessionRegistry::detached`).
    pub fn detached(mut self) -> Self {
        self.kept = false;
        self
    }

    /// Whether the session table holds (or held) this session; `false` for one that
    /// serves a single request.
    pub fn is_kept(&self) -> bool {
        self.kept
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Locks the session's state. Hold it only for bookkeeping, never across an await.
    pub fn state(&self) -> parking_lot::MutexGuard<'_, SessionState> {
        self.state.lock()
    }

    /// Marks the session as used now (renews its idle lease).
    pub fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// How long ago this copy of the session started.
    pub fn age(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_seen.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// A slot for the node's metrics: the experiment cell the session was last
    /// counted in (0: none), so a session is not counted again on every request.
    pub fn counted_in(&self) -> &AtomicU32 {
        &self.counted_in
    }

    /// Retires this copy. It first pours its marks into the node's retired marks, so a
    /// newer copy that finds it retired also finds them. A detached copy pours too: it
    /// may have served the session's holder (from a token of another lineage), whose
    /// next request may carry an older token; a squatter's marks only make the
    /// session's reads more careful.
    pub(crate) fn retire(&self) {
        if !self.retired.load(Ordering::Acquire) {
            self.state.lock().pour();
        }
        self.retired.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// What a write job resolves to.
pub struct Written<T> {
    pub key: ItemKey,
    /// The item as the write left it.
    pub doc: Doc,
    /// Whether `doc` is this write's own fresh value, kept to answer the session's
    /// next reads. A replayed outcome of an earlier request (idempotency) only raises
    /// the watermarks: its value may be long superseded.
    pub own_value: bool,
    /// The size of the value (its JSON), counted against the node's pending budget.
    pub bytes: usize,
    /// Whatever else the caller wants back (e.g. whether the item was created).
    pub extra: T,
}

/// The job of a write: starts the write and resolves once it committed (or failed).
pub type WriteFuture<T, E> = LocalBoxFuture<'static, Result<Written<T>, E>>;

/// Whether a queued write has started, shared by the requester and the actor, so the
/// two agree exactly on whether a write that ran out of time was applied: the actor
/// starts a write only if the requester has not given up on it, and a requester that
/// gives up learns whether the write had started.
#[derive(Debug, Default)]
pub struct WriteTicket(AtomicU8);

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

impl WriteTicket {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The actor's side: whether the write may start (its requester still waits).
    fn start(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The requester's side, giving up: `true` if the write had not started and now
    /// never will (not applied); `false` if it had started (its outcome is unknown to
    /// the requester, and the actor carries it on to its end).
    pub fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Runs one write of the session in its turn: the actor starts `start` only after the
/// session's earlier writes finished, and records the commit (watermark and pending
/// value) before it takes the next message. That is monotonic writes on this node;
/// across nodes they follow from the client waiting for each acknowledgement.
///
/// A write whose `ticket` was abandoned before its turn is dropped unstarted (the
/// answer is `None`).
pub struct Write<T, E> {
    pub start: Box<dyn FnOnce() -> WriteFuture<T, E> + Send>,
    pub ticket: Arc<WriteTicket>,
}

impl<T: Send + 'static, E: Send + 'static> Message for Write<T, E> {
    type Result = Option<Result<(Doc, T), E>>;
}

/// Asks the actor to stop now: sent when a session that is not kept is released
/// ([`crate::LiveSession::release`]) and to every live session at node shutdown
/// ([`crate::SessionRegistry::passivate_all`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate;

/// Runs once when a session's actor stops.
pub type OnStop = Box<dyn FnOnce(&Arc<Session>) + Send>;

/// The actor of one session. It owns what must be serialised — the session's writes —
/// and its lifetime (the idle lease). Reads do not pass through it.
pub struct SessionActor {
    session: Arc<Session>,
    lease: Duration,
    on_stop: Option<OnStop>,
}

impl SessionActor {
    /// An actor for `session`; `on_stop` runs once when it stops (the session table
    /// uses it to drop the entry if it is still this session's).
    pub fn new(session: Arc<Session>, lease: Duration, on_stop: OnStop) -> Self {
        Self {
            session,
            lease,
            on_stop: Some(on_stop),
        }
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        let tick = (self.lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        ctx.run_interval(tick, |actor, ctx| {
            if actor.session.is_retired() || actor.session.idle_for() >= actor.lease {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.session.retire();
        if let Some(on_stop) = self.on_stop.take() {
            on_stop(&self.session);
        }
        tracing::debug!(session_id = %self.session.id(), "session passivated");
    }
}

impl<T: Send + 'static, E: Send + 'static> Handler<Write<T, E>> for SessionActor {
    type Result = AtomicResponse<Self, Option<Result<(Doc, T), E>>>;

    fn handle(&mut self, msg: Write<T, E>, _: &mut Self::Context) -> Self::Result {
        if !msg.ticket.start() {
            return AtomicResponse::new(Box::pin(fut::ready(None)));
        }
        self.session.touch();
        let fut = (msg.start)();
        AtomicResponse::new(Box::pin(fut.into_actor(self).map(|result, actor, _| {
            Some(result.map(|written| {
                let limits = actor.session.limits;
                actor.session.state().record_write(&written, limits);
                (written.doc, written.extra)
            }))
        })))
    }
}

impl Handler<Passivate> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Position, Version};
    use futures_util::FutureExt;
    use std::sync::Mutex as StdMutex;

    fn job(
        log: Arc<StdMutex<Vec<String>>>,
        name: &'static str,
        delay: Duration,
        version: u64,
    ) -> Write<(), ()> {
        Write {
            ticket: WriteTicket::new(),
            start: Box::new(move || {
                async move {
                    log.lock().unwrap().push(format!("{name} start"));
                    tokio::time::sleep(delay).await;
                    log.lock().unwrap().push(format!("{name} end"));
                    let key = ItemKey::new("c".into(), "k");
                    let doc = Doc {
                        version: Version(version),
                        position: Position(version),
                        fields: None,
                    };
                    Ok(Written {
                        key,
                        doc,
                        own_value: true,
                        bytes: 100,
                        extra: (),
                    })
                }
                .boxed_local()
            }),
        }
    }

    /// A session and its running actor (limits 8 marks, 4 kept values).
    fn started() -> (Arc<Session>, Addr<SessionActor>) {
        let limits = SessionLimits {
            max_items: 8,
            max_pending: 4,
        };
        let session = Arc::new(Session::new(
            "s".into(),
            Lineage::random(),
            Watermarks::default(),
            limits,
        ));
        let addr = SessionActor::new(session.clone(), Duration::from_secs(60), Box::new(|_| {})).start();
        (session, addr)
    }

    #[test]
    fn a_token_taken_in_once_is_contained_in_the_state_even_after_compaction() {
        let keys = TokenKeys::new([("k1", &[7u8; 32][..])], "k1").unwrap();
        let limits = SessionLimits {
            max_items: 4,
            max_pending: 4,
        };
        let doc = |v: u64| Doc {
            version: Version(v),
            position: Position(v),
            fields: None,
        };
        // A token that carries a write of item 1 at version 5 and reads of 2 and 3.
        let mut sent = Watermarks::default();
        sent.record_write(1, Version(5), Position(50), limits.max_items);
        sent.record_read(2, Version(3), Position(30), limits.max_items);
        sent.record_read(3, Version(4), Position(40), limits.max_items);
        let lineage = Lineage::random();
        let token = keys.sign("s", &lineage, &sent);
        let carried = keys.verify("s", &token).unwrap().watermarks;

        let session = Session::new("s".into(), lineage, Watermarks::default(), limits);
        let mut state = session.state();
        assert!(!state.contains(&token), "never taken in");
        state.merge_token(&token, &carried, limits);
        assert!(state.contains(&token));
        let other = keys.sign("s", &lineage, &Watermarks::default());
        assert!(!state.contains(&other), "another token is verified and merged");

        // Many more reads compact the marks: the state still needs at least what the
        // token carried, so skipping it the next time loses nothing.
        for item in 10..40 {
            state.record_read(item, &doc(item), limits);
        }
        for (item, version) in [(1, 5), (2, 3), (3, 4)] {
            let need = state.need(item, true, true);
            assert!(
                need.version >= Version(version) || need.position >= Position(10 * version),
                "item {item}: {need:?}"
            );
        }
        let issued = state.token("s", &keys);
        assert!(
            state.contains(std::str::from_utf8(&issued).unwrap()),
            "the last issued token is contained too"
        );
    }

    /// A new session "s" holding at most `max_items` marks (and 4 pending writes).
    fn fresh_session(max_items: usize) -> Session {
        let limits = SessionLimits {
            max_items,
            max_pending: 4,
        };
        Session::new("s".into(), Lineage::random(), Watermarks::default(), limits)
    }

    #[test]
    fn kept_strategies_serve_only_the_same_flag_generation_and_user() {
        use edgecache_flags::{Arm, Strategy};
        let session = fresh_session(4);
        let mut state = session.state();
        let off = Strategies::ALL_ON.with(Strategy::ReadYourWrites, Arm::OFF);
        assert_eq!(state.strategies(3, None), None, "nothing kept yet");
        state.keep_strategies(3, None, off);
        assert_eq!(state.strategies(3, None), Some(off));
        assert_eq!(state.strategies(4, None), None, "new flag definitions");
        assert_eq!(state.strategies(3, Some("u1")), None, "another user");
        state.keep_strategies(3, Some("u1"), Strategies::ALL_ON);
        assert_eq!(state.strategies(3, Some("u1")), Some(Strategies::ALL_ON));
        assert_eq!(state.strategies(3, None), None);
    }

    #[actix_rt::test]
    async fn a_write_given_up_before_its_turn_never_starts_one_given_up_while_running_completes() {
        let (session, addr) = started();
        let log = Arc::new(StdMutex::new(Vec::new()));
        let key = ItemKey::new("c".into(), "k");

        // A slow write runs; the next one waits its turn and its requester gives up.
        let slow = job(log.clone(), "slow", Duration::from_millis(100), 1);
        let queued = job(log.clone(), "queued", Duration::ZERO, 2);
        let queued_ticket = queued.ticket.clone();
        let slow_ticket = slow.ticket.clone();
        let slow = addr.send(slow);
        let gave_up = addr.send(queued).timeout(Duration::from_millis(20)).await;
        assert!(matches!(gave_up, Err(MailboxError::Timeout)));
        assert!(queued_ticket.abandon(), "the queued write had not started");
        assert!(!slow_ticket.abandon(), "the slow write had started");
        assert_eq!(slow.await.unwrap().unwrap().unwrap().0.version, Version(1));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !log.lock().unwrap().iter().any(|l| l.starts_with("queued")),
            "an abandoned write never starts: {:?}",
            log.lock().unwrap()
        );

        // A requester that gives up on a running write: the write goes on to its end
        // and is recorded in the session.
        let running = job(log.clone(), "running", Duration::from_millis(80), 3);
        let running_ticket = running.ticket.clone();
        let gave_up = addr.send(running).timeout(Duration::from_millis(20)).await;
        assert!(matches!(gave_up, Err(MailboxError::Timeout)));
        assert!(
            !running_ticket.abandon(),
            "it had started: its outcome is unknown"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(log.lock().unwrap().contains(&"running end".to_owned()));
        assert_eq!(session.state().need(key.hash(), true, false).version, Version(3));
    }

    #[test]
    fn kept_values_stay_within_the_node_budget_and_their_watermarks_are_kept_regardless() {
        let limits = SessionLimits {
            max_items: 8,
            max_pending: 4,
        };
        let budget = PendingBudget::new(250);
        let written = |id: &str, version: u64| Written {
            key: ItemKey::new("c".into(), id),
            doc: Doc {
                version: Version(version),
                position: Position(version),
                fields: None,
            },
            own_value: true,
            bytes: 100,
            extra: (),
        };
        let a = Session::new("a".into(), Lineage::random(), Watermarks::default(), limits)
            .with_budget(budget.clone());
        let b = Session::new("b".into(), Lineage::random(), Watermarks::default(), limits)
            .with_budget(budget.clone());
        a.state().record_write(&written("x", 1), limits);
        a.state().record_write(&written("y", 2), limits);
        assert_eq!(budget.used(), 200);
        // Past the budget: the value is not kept, the watermark is.
        b.state().record_write(&written("z", 3), limits);
        let z = ItemKey::new("c".into(), "z");
        assert!(b.state().pending(z.as_ref()).is_none());
        assert_eq!(b.state().need(z.hash(), true, false).version, Version(3));
        assert_eq!(budget.used(), 200);
        // A newer write of a kept item replaces its value; a dropped session frees all.
        a.state().record_write(&written("x", 4), limits);
        assert_eq!(budget.used(), 200);
        drop(a);
        assert_eq!(budget.used(), 0);
        b.state().record_write(&written("z", 5), limits);
        assert!(b.state().pending(z.as_ref()).is_some());
        assert_eq!(budget.used(), 100);
    }

    #[actix_rt::test]
    async fn writes_of_a_session_run_one_at_a_time_in_arrival_order() {
        let (session, addr) = started();
        let log = Arc::new(StdMutex::new(Vec::new()));
        // The first write is slow; the second arrives while it runs.
        let first = addr.send(job(log.clone(), "first", Duration::from_millis(80), 1));
        let second = addr.send(job(log.clone(), "second", Duration::ZERO, 2));
        let (a, b) = futures_util::join!(first, second);
        assert!(a.unwrap().unwrap().is_ok() && b.unwrap().unwrap().is_ok());
        assert_eq!(
            *log.lock().unwrap(),
            ["first start", "first end", "second start", "second end"],
            "the second write started only after the first committed"
        );
        let key = ItemKey::new("c".into(), "k");
        let state = session.state();
        assert_eq!(state.need(key.hash(), true, false).version, Version(2));
        assert_eq!(state.pending(key.as_ref()).unwrap().doc.version, Version(2));
    }

    #[test]
    fn a_handover_lasts_until_its_latest_end() {
        let here = fresh_session(8);
        let mut state = here.state();
        let now = Instant::now();
        assert!(!state.in_handover(now));
        state.begin_handover(now + Duration::from_secs(5));
        state.begin_handover(now + Duration::from_secs(1));
        assert!(
            state.in_handover(now + Duration::from_secs(4)),
            "a shorter one never cuts it"
        );
        assert!(!state.in_handover(now + Duration::from_secs(5)));
    }
}
