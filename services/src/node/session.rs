//! Opening a request's session: the live one (merging in a newer token of its
//! lineage), one rebuilt from its token, a new one, or a detached one for a request
//! that names a live session without its token; then its strategy arms, evaluated
//! once per session while the flags and the user stay the same.

use std::sync::Arc;

use bytes::Bytes;
use edgecache_actors::{Session, SessionHandle, SessionStart};
use edgecache_flags::{FlagContext, Strategies};

use super::{Node, SessionError};
use crate::metrics::CellId;

/// A request's session: its state, its actor when live, its strategy arms, and how it
/// was found.
pub struct SessionCtx {
    /// The state the request reads and records into, and whose token answers it.
    pub session: Arc<Session>,
    /// The session's actor and table entry; `None` for a session minted for a request
    /// that named none, which is never kept (a write gets an actor for itself).
    pub(super) live: Option<SessionHandle>,
    pub strategies: Strategies,
    pub start: SessionStart,
    /// Where the request's reads are counted: the experiment cell of `strategies`.
    pub experiment: CellId,
}

impl SessionCtx {
    pub fn id(&self) -> &str {
        self.session.id()
    }

    /// Whether the session is in the node's table (a named one is; an anonymous
    /// request's never is).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }
}

impl Drop for SessionCtx {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.release();
        }
    }
}

impl Node {
    /// Opens the request's session: the live one (taking in a newer token), else one
    /// rebuilt from the token, else a new one; a request with no session id gets a
    /// new id. Then evaluates its strategies. A user id longer than
    /// `api.max_user_id_bytes` opens nothing: the session would keep it.
    ///
    /// A session id is a name anyone may send; a token is what a request proves with
    /// that it holds the session. A request that names a live, proven session without
    /// a token of its lineage ([`edgecache_actors::Lineage`]: none, or one issued to
    /// another holder of the name) is served by a detached session of its own, from
    /// its token if any: it sees none of the live session's marks (nor, through
    /// `Cache-Status`, their effect), adds nothing to them, and its answer's token
    /// carries only what it did itself. A session no token has proven yet (all its
    /// requests came without one) is shared by tokenless requests and claimed by the
    /// first token of another lineage (see `docs/decisions/0008-parallel-requests-of-a-session.md`).
    /// Clients that send their tokens keep every guarantee; one that sends none has
    /// nothing to carry guarantees with from request to request.
    pub fn open_session(
        &self,
        session_id: Option<&str>,
        user_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<SessionCtx, SessionError> {
        let max = self.limits.max_user_id_bytes;
        if user_id.is_some_and(|user| user.len() > max) {
            return Err(SessionError::UserIdTooLong { max });
        }
        let (session, live, start) = match session_id {
            Some(id) if valid_session_id(id) => {
                let (handle, start) = self.open_named(id, token)?;
                (handle.session.clone(), Some(handle), start)
            }
            Some(_) => return Err(SessionError::InvalidId),
            None if token.is_some() => return Err(SessionError::TokenWithoutSession),
            // Nothing to look up or keep: the session lives in this request and in
            // the token it answers with.
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                (self.sessions.anonymous(&id), None, SessionStart::New)
            }
        };
        match start {
            SessionStart::Rebuilt => self.metrics.sessions_rebuilt.inc(),
            SessionStart::New => self.metrics.sessions_new.inc(),
            SessionStart::Detached => self.metrics.sessions_detached.inc(),
            SessionStart::Live => {}
        }
        session.touch();
        // Evaluated once per session while the flags and the user stay the same.
        let generation = self.flags.generation();
        let kept = session.state().strategies(generation, user_id);
        let strategies = match kept {
            Some(strategies) => strategies,
            None => {
                let strategies = self.flags.strategies(&FlagContext {
                    session_id: session.id(),
                    user_id: user_id.unwrap_or(session.id()),
                    node: &self.node_id,
                    region: &self.region,
                });
                session.state().keep_strategies(generation, user_id, strategies);
                strategies
            }
        };
        let experiment =
            self.metrics
                .experiments
                .session_seen(session.id(), &strategies, session.counted_in());
        Ok(SessionCtx {
            session,
            live,
            strategies,
            start,
            experiment,
        })
    }

    /// The named session `id`: the live one (taking in a newer token), else one
    /// rebuilt from the token, else a new one, live in the table.
    fn open_named(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> Result<(SessionHandle, SessionStart), SessionError> {
        Ok(match (self.sessions.get(id), token) {
            (Some(live), None) => self.tokenless(id, live),
            (Some(live), Some(token)) => self.take_in(id, live, token, None)?,
            (None, token) => {
                let carried = token.map(|t| self.keys.verify(id, t)).transpose()?;
                let (handle, start) = self.sessions.open(id, carried.as_ref());
                match (start, token, carried) {
                    // Rebuilt from this token: remembered, so it is not merged again.
                    (SessionStart::Rebuilt, Some(token), Some(carried)) => {
                        let mut state = handle.session.state();
                        state.merge_token(token, &carried.watermarks, self.sessions.limits());
                        if let Some(until) = self.handover_end() {
                            state.begin_handover(until);
                        }
                        drop(state);
                        (handle, start)
                    }
                    // A parallel request of the session opened it first, from its own
                    // token: this one's is taken in all the same, if of its lineage.
                    (SessionStart::Live, Some(token), Some(carried)) => {
                        self.take_in(id, handle, token, Some(carried))?
                    }
                    (SessionStart::Live, None, _) => self.tokenless(id, handle),
                    _ => (handle, start),
                }
            }
        })
    }

    /// A request's `token` for the `live` session `id` (`carried`: what it carries,
    /// if already verified): taken in when it is of the session's lineage (or is the
    /// last one issued or taken in), else the request gets a detached session of its
    /// own, from its token.
    fn take_in(
        &self,
        id: &str,
        live: SessionHandle,
        token: &str,
        carried: Option<edgecache_actors::Carried>,
    ) -> Result<(SessionHandle, SessionStart), SessionError> {
        let mut state = live.session.state();
        if state.contains(token) {
            state.prove();
            drop(state);
            return Ok((live, SessionStart::Live));
        }
        let carried = match carried {
            Some(carried) => carried,
            None => self.keys.verify(id, token)?,
        };
        let limits = self.sessions.limits();
        let claimed = match carried.lineage {
            Some(lineage) if lineage == state.lineage() => {
                state.merge_token(token, &carried.watermarks, limits);
                state.prove();
                true
            }
            // A session no token has proven yet yields to the first that comes while
            // it is young (its first requests: see `tokenless`).
            Some(lineage) if self.first_requests(&live) => {
                state.claim(lineage, token, &carried.watermarks, limits)
            }
            Some(_) => false,
            None => false,
        };
        drop(state);
        if claimed {
            return Ok((live, SessionStart::Live));
        }
        Ok((self.sessions.detached(id, Some(&carried)), SessionStart::Detached))
    }

    /// A request without a token for the `live` session `id`: it shares the session
    /// while no request has proven it holds it and the session is young
    /// (`session.first_requests_window`) — a client's first requests, sent in
    /// parallel before any answer brought a token, are one session, and splitting
    /// them would leave the client with the token of only one half. Otherwise it gets
    /// a detached session of its own.
    fn tokenless(&self, id: &str, live: SessionHandle) -> (SessionHandle, SessionStart) {
        if self.first_requests(&live) && !live.session.state().is_proven() {
            (live, SessionStart::Live)
        } else {
            (self.sessions.detached(id, None), SessionStart::Detached)
        }
    }

    /// Whether `live` is young enough that its first requests may still be arriving.
    fn first_requests(&self, live: &SessionHandle) -> bool {
        live.session.age() < self.first_requests_window
    }

    /// When the handover of a session copy rebuilt now from a token ends: on a node
    /// with peers, where the copy may have taken over from another node that is still
    /// answering the session's requests in flight (`session.handover_window`). A solo
    /// node's rebuilt copies follow only evicted copies of its own, whose marks the
    /// retired marks keep.
    fn handover_end(&self) -> Option<tokio::time::Instant> {
        self.handover_window
            .map(|window| tokio::time::Instant::now() + window)
    }

    /// The token to send back: the session's current watermarks, signed.
    pub fn token(&self, s: &SessionCtx) -> Bytes {
        s.session.state().token(s.id(), &self.keys)
    }
}

/// Session ids: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=edgecache_actors::MAX_SESSION_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
