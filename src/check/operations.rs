//! Attempts grouped into operations. Loadgen sends a write whose outcome is unknown
//! again with the same `Idempotency-Key`; every attempt is a line of the history, and
//! the key ties the attempts of one logical operation together. What the operation
//! did follows from all of them:
//!
//! - **applied** (`Ok`) when some attempt was acknowledged — once, whatever the
//!   others said: the key makes the retries of an applied write replays;
//! - **unknown** when none was, but some attempt left the outcome open (no answer,
//!   `write-outcome-unknown`, a gateway error, `idempotency-key-in-flight`): that
//!   attempt may still have committed, whatever the later ones answered;
//! - **not applied** (`Failed`) when every attempt was refused before it wrote
//!   (`session-busy`, `origin-unavailable`, a 4xx, a refused connection).
//!
//! A line without a key (a read, or a history recorded before keys) is an operation
//! of one attempt.

use std::collections::HashMap;

use crate::loadgen::history::{OpKind, OpRecord, Outcome};

/// The attempts of one operation, in the order they were sent.
#[derive(Debug, Clone)]
pub struct Operation<'a> {
    pub attempts: Vec<&'a OpRecord>,
}

impl<'a> Operation<'a> {
    pub fn first(&self) -> &'a OpRecord {
        self.attempts[0]
    }

    pub fn kind(&self) -> OpKind {
        self.first().op
    }

    /// What the operation did; see the module documentation.
    pub fn outcome(&self) -> Outcome {
        if self.acked().is_some() {
            Outcome::Ok
        } else if self.attempts.iter().any(|a| a.unsettled()) {
            Outcome::Unknown
        } else {
            Outcome::Failed
        }
    }

    /// The first acknowledged attempt.
    pub fn acked(&self) -> Option<&'a OpRecord> {
        self.attempts.iter().copied().find(|a| a.outcome() == Outcome::Ok)
    }

    /// Every acknowledged attempt.
    pub fn acks(&self) -> impl Iterator<Item = &'a OpRecord> + '_ {
        self.attempts
            .iter()
            .copied()
            .filter(|a| a.outcome() == Outcome::Ok)
    }

    /// When the operation's first attempt started: a write it applied happened
    /// after this, whichever attempt is answered for it.
    pub fn start_ns(&self) -> u64 {
        self.first().start_ns
    }

    /// Whether the first attempt left the outcome open.
    pub fn first_unsettled(&self) -> bool {
        self.first().unsettled()
    }

    /// The string the operation wrote into `field`, if it is a write that did.
    pub fn written(&self, field: &str) -> Option<&'a str> {
        if !self.kind().is_write() {
            return None;
        }
        self.first().body.as_ref()?.get(field)?.as_str()
    }
}

/// Groups `ops` into operations, in the order of their first attempts in `ops`.
pub fn operations(ops: &[OpRecord]) -> Vec<Operation<'_>> {
    let mut grouped: Vec<Operation> = Vec::new();
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    for op in ops {
        match &op.idempotency_key {
            Some(key) => {
                let at = *by_key.entry((&op.session, key)).or_insert_with(|| {
                    grouped.push(Operation { attempts: Vec::new() });
                    grouped.len() - 1
                });
                grouped[at].attempts.push(op);
            }
            None => grouped.push(Operation { attempts: vec![op] }),
        }
    }
    for op in &mut grouped {
        op.attempts.sort_by_key(|a| (a.attempt, a.index));
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn attempts_settle_their_operation() {
        let unknown = keyed(lost(put("a", 0, "x", 0)), "k1", 0);
        let busy = keyed(refused(put("a", 1, "x", 0), 503, "session-busy"), "k1", 1);
        let replay = keyed(replayed(put("a", 2, "x", 4)), "k1", 2);
        let other = keyed(refused(put("a", 3, "y", 0), 503, "session-busy"), "k2", 0);
        let ops = vec![unknown.clone(), busy.clone(), other, read("a", 4, "x", 4), replay];
        let grouped = operations(&ops);
        assert_eq!(grouped.len(), 3);
        assert_eq!(grouped[0].attempts.len(), 3);
        assert_eq!(grouped[0].outcome(), Outcome::Ok);
        assert_eq!(grouped[0].acked().unwrap().version, Some(4));
        assert!(grouped[0].first_unsettled());
        assert_eq!(grouped[1].outcome(), Outcome::Failed);
        assert_eq!(grouped[2].kind(), OpKind::Read);

        // Refused after an open attempt: still unknown.
        let ops = vec![unknown, busy];
        assert_eq!(operations(&ops)[0].outcome(), Outcome::Unknown);
    }
}
