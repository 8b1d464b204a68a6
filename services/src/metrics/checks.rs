//! The outcomes of the online consistency checks (`crate::consistency`), counted per
//! experiment cell ([`super::Experiments::checked`]).

/// What a consistency check found about one sampled read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The served version met every need the session had when it was served.
    Ok = 0,
    /// The served version was older than the session's own write of the item (which
    /// the primary holds): read-your-writes was broken.
    StaleOwn = 1,
    /// The served version was older than one the session had already read:
    /// monotonic reads was broken.
    Regression = 2,
    /// A bounded field was served older than its bound, and the primary holds a newer
    /// version.
    OverBound = 3,
    /// Sampled but not judged: the queue was full, or the primary read failed.
    Skipped = 4,
}

/// Every outcome, in the order of their index.
pub const CHECK_OUTCOMES: [CheckOutcome; 5] = [
    CheckOutcome::Ok,
    CheckOutcome::StaleOwn,
    CheckOutcome::Regression,
    CheckOutcome::OverBound,
    CheckOutcome::Skipped,
];

impl CheckOutcome {
    /// The `outcome` label of `edgecache_consistency_checks_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Ok => "ok",
            CheckOutcome::StaleOwn => "stale_own",
            CheckOutcome::Regression => "regression",
            CheckOutcome::OverBound => "over_bound",
            CheckOutcome::Skipped => "skipped",
        }
    }

    /// Whether the outcome is a violation of a guarantee or a bound.
    pub fn is_violation(self) -> bool {
        matches!(
            self,
            CheckOutcome::StaleOwn | CheckOutcome::Regression | CheckOutcome::OverBound
        )
    }
}
