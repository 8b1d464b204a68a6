//! What a session has written and read, as the least versions and positions every
//! later read of the session must reflect.

use crate::{Doc, Position, Version};

/// One item's mark: its stable hash, the version the session wrote or read, and the
/// origin position that version was committed (write) or read (read) at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub item: u64,
    pub version: Version,
    pub position: Position,
}

/// The least a source must reflect to serve one item to a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// The item's version must be at least this.
    pub version: Version,
    /// The source must reflect at least this origin position (the floors).
    pub position: Position,
    /// An origin tier that has replayed this position holds `version` of the item:
    /// where to send an origin read (a replica behind it would answer too old).
    pub origin_position: Position,
}

impl Need {
    /// Whether `doc` (from any tier) satisfies this need.
    pub fn admits(&self, doc: &Doc) -> bool {
        doc.version >= self.version && doc.position >= self.position
    }

    /// Whether a cached `doc` that the change feed vouches for satisfies this need:
    /// every change committed up to `through` has reached the cache, and the entry
    /// is still there, so its item is unchanged from `doc.position` up to `through`
    /// — it reflects any position in between as well as `doc.position` does.
    pub fn admits_through(&self, doc: &Doc, through: Position) -> bool {
        doc.version >= self.version && doc.position.max(through) >= self.position
    }

    pub fn is_none(&self) -> bool {
        *self == Need::default()
    }
}

/// A session's watermarks: per-item marks for what it wrote (read-your-writes,
/// monotonic writes) and read (monotonic reads), most recent last, and a floor for
/// each that stands in for marks dropped to keep the set small.
///
/// Dropping a mark raises its floor to the mark's position: a source at or past that
/// position reflects the mark's version of its item, and of every other item at least
/// what it had then. So compaction only ever asks more of a source (an extra origin
/// read), never less (a stale read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    writes: Vec<Mark>,
    reads: Vec<Mark>,
    write_floor: Position,
    read_floor: Position,
}

impl Watermarks {
    /// Watermarks from their parts (a decoded token), compacted to `max_items`.
    pub fn from_parts(
        writes: Vec<Mark>,
        reads: Vec<Mark>,
        write_floor: Position,
        read_floor: Position,
    ) -> Self {
        Self {
            writes,
            reads,
            write_floor,
            read_floor,
        }
    }

    pub fn writes(&self) -> &[Mark] {
        &self.writes
    }

    pub fn reads(&self) -> &[Mark] {
        &self.reads
    }

    pub fn write_floor(&self) -> Position {
        self.write_floor
    }

    pub fn read_floor(&self) -> Position {
        self.read_floor
    }

    /// The need of a read of `item`: what read-your-writes asks (if `ryw`) and what
    /// monotonic reads asks (if `monotonic`).
    pub fn need(&self, item: u64, ryw: bool, monotonic: bool) -> Need {
        let mut need = Need::default();
        if ryw {
            need.position = self.write_floor;
            if let Some(mark) = find(&self.writes, item) {
                need.version = mark.version;
                need.origin_position = mark.position;
            }
        }
        if monotonic {
            need.position = need.position.max(self.read_floor);
            if let Some(mark) = find(&self.reads, item) {
                need.version = need.version.max(mark.version);
                need.origin_position = need.origin_position.max(mark.position);
            }
        }
        need.origin_position = need.origin_position.max(need.position);
        need
    }

    /// Records a write the origin committed. Returns whether anything changed.
    pub fn record_write(
        &mut self,
        item: u64,
        version: Version,
        position: Position,
        max_items: usize,
    ) -> bool {
        self.record(
            Mark {
                item,
                version,
                position,
            },
            false,
            max_items,
        )
    }

    /// Records that the session was served `version` of `item` from a source at
    /// `position`. Returns whether anything changed.
    pub fn record_read(&mut self, item: u64, version: Version, position: Position, max_items: usize) -> bool {
        if position <= self.read_floor && find(&self.reads, item).is_none() {
            // Already implied by the floor: any source admitted later reflects it.
            return false;
        }
        self.record(
            Mark {
                item,
                version,
                position,
            },
            true,
            max_items,
        )
    }

    /// Raises `mark` in the reads (or writes), makes it the most recent, and compacts.
    fn record(&mut self, mark: Mark, read: bool, max_items: usize) -> bool {
        let marks = if read { &mut self.reads } else { &mut self.writes };
        let changed = upsert(marks, mark, true);
        if changed {
            self.compact(max_items);
        }
        changed
    }

    /// Takes in what `other` (a token, possibly issued by another node) knows.
    /// Returns whether anything changed.
    pub fn merge(&mut self, other: &Watermarks, max_items: usize) -> bool {
        let mut changed = false;
        if other.write_floor > self.write_floor {
            self.write_floor = other.write_floor;
            changed = true;
        }
        if other.read_floor > self.read_floor {
            self.read_floor = other.read_floor;
            changed = true;
        }
        for mark in &other.writes {
            changed |= upsert(&mut self.writes, *mark, false);
        }
        for mark in &other.reads {
            changed |= upsert(&mut self.reads, *mark, false);
        }
        if changed {
            self.compact(max_items);
        }
        changed
    }

    /// Drops marks until at most `max_items` remain, the lowest positions first (they
    /// raise the floors least), and marks a floor already implies.
    pub fn compact(&mut self, max_items: usize) {
        let (wf, rf) = (self.write_floor, self.read_floor);
        self.writes.retain(|m| m.position > wf);
        self.reads.retain(|m| m.position > rf);
        while self.writes.len() + self.reads.len() > max_items {
            let lowest_write = self.writes.iter().enumerate().min_by_key(|(_, m)| m.position);
            let lowest_read = self.reads.iter().enumerate().min_by_key(|(_, m)| m.position);
            match (lowest_write, lowest_read) {
                (Some((i, w)), Some((_, r))) if w.position <= r.position => {
                    self.write_floor = self.write_floor.max(w.position);
                    self.writes.remove(i);
                }
                (_, Some((i, r))) => {
                    self.read_floor = self.read_floor.max(r.position);
                    self.reads.remove(i);
                }
                (Some((i, w)), None) => {
                    self.write_floor = self.write_floor.max(w.position);
                    self.writes.remove(i);
                }
                (None, None) => break,
            }
        }
        let (wf, rf) = (self.write_floor, self.read_floor);
        self.writes.retain(|m| m.position > wf);
        self.reads.retain(|m| m.position > rf);
    }

    /// Whether `doc` is older than this session's own last write of `item` (what a
    /// session with read-your-writes off would have been wrong to see). Only the
    /// per-item marks can tell; a floor alone cannot name the item.
    pub fn is_stale_own(&self, item: u64, doc: &Doc) -> bool {
        find(&self.writes, item).is_some_and(|m| doc.version < m.version)
    }

    /// Whether `doc` is older than a version of `item` this session already read.
    pub fn is_regression(&self, item: u64, doc: &Doc) -> bool {
        find(&self.reads, item).is_some_and(|m| doc.version < m.version)
    }
}

fn find(marks: &[Mark], item: u64) -> Option<&Mark> {
    marks.iter().find(|m| m.item == item)
}

/// Raises `mark.item`'s mark to at least `mark`; a use (`touch`) also moves it to the
/// end (most recent), a merge leaves it where it is. Returns whether it changed.
fn upsert(marks: &mut Vec<Mark>, mark: Mark, touch: bool) -> bool {
    let Some(i) = marks.iter().position(|m| m.item == mark.item) else {
        marks.push(mark);
        return true;
    };
    let old = marks[i];
    let merged = Mark {
        item: mark.item,
        version: old.version.max(mark.version),
        position: old.position.max(mark.position),
    };
    marks[i] = merged;
    if touch {
        let moved = marks.remove(i);
        marks.push(moved);
    }
    merged != old
}

/// What the property tests of watermarks and tokens share: a strategy for any
/// watermarks a session can hold, and what "at least as conservative" means.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;

    use super::*;

    /// Whether `after` asks at least as much of a source as `before` for a read of
    /// `item` under the given switches: positions at least as high, and each of
    /// `before`'s marks of the item either kept (a version at least as high) or
    /// folded into a floor at or past its position — a source there reflects the
    /// mark's version, since a read reflects every commit at or below its position.
    pub fn covers(after: &Watermarks, before: &Watermarks, item: u64, ryw: bool, monotonic: bool) -> bool {
        let (a, b) = (
            after.need(item, ryw, monotonic),
            before.need(item, ryw, monotonic),
        );
        let writes = ryw.then(|| find(&before.writes, item)).flatten();
        let reads = monotonic.then(|| find(&before.reads, item)).flatten();
        a.position >= b.position
            && a.origin_position >= b.origin_position
            && writes
                .into_iter()
                .chain(reads)
                .all(|m| a.version >= m.version || a.position >= m.position)
    }

    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1_000, 1_000u64..5_000_000, any::<u64>()]
    }

    /// Watermarks as a session holds them: up to 30 marks of each kind over 40 items
    /// (so writes and reads share items), none implied by its floor.
    pub fn watermarks() -> impl Strategy<Value = Watermarks> {
        let marks = || proptest::collection::vec((0u64..40, number(), number()), 0..30);
        (marks(), marks(), number(), number()).prop_map(|(writes, reads, write_floor, read_floor)| {
            let marks = |list: Vec<(u64, u64, u64)>| {
                let mut out: Vec<Mark> = Vec::new();
                for (item, version, position) in list {
                    if find(&out, item).is_none() {
                        out.push(Mark {
                            item,
                            version: Version(version),
                            position: Position(position),
                        });
                    }
                }
                out
            };
            let mut w = Watermarks::from_parts(
                marks(writes),
                marks(reads),
                Position(write_floor),
                Position(read_floor),
            );
            w.compact(usize::MAX);
            w
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testing::{covers, watermarks};
    use super::*;

    fn doc(version: u64, position: u64) -> Doc {
        Doc {
            version: Version(version),
            position: Position(position),
            fields: None,
        }
    }

    #[test]
    fn a_vouched_entry_satisfies_floors_up_to_the_position_it_is_vouched_through() {
        let need = Need {
            version: Version(2),
            position: Position(100),
            origin_position: Position(0),
        };
        assert!(!need.admits(&doc(2, 60)), "below the floor on its own");
        assert!(need.admits_through(&doc(2, 60), Position(100)));
        assert!(
            !need.admits_through(&doc(2, 60), Position(99)),
            "the feed lags the floor"
        );
        assert!(
            !need.admits_through(&doc(1, 60), Position(1000)),
            "never an older version than the session's own marks"
        );
    }

    #[test]
    fn need_follows_the_switched_guarantees() {
        let mut w = Watermarks::default();
        w.record_write(1, Version(5), Position(50), 8);
        w.record_read(2, Version(3), Position(40), 8);
        assert_eq!(w.need(1, true, true).version, Version(5));
        assert_eq!(w.need(1, true, true).origin_position, Position(50));
        assert_eq!(
            w.need(1, true, true).position,
            Position(0),
            "no floor: cached copies need no position"
        );
        assert_eq!(w.need(1, false, true).version, Version(0));
        assert_eq!(w.need(2, true, true).version, Version(3));
        assert_eq!(w.need(2, true, false).version, Version(0));
        assert!(w.need(3, true, true).is_none());
    }

    #[test]
    fn compaction_is_conservative() {
        let mut w = Watermarks::default();
        for i in 0..10u64 {
            w.record_write(i, Version(i + 1), Position(100 + i), 4);
        }
        assert_eq!(w.writes().len(), 4);
        // Every dropped write is implied by the floor: a doc admitted for any dropped
        // item reflects a position at or past that item's commit.
        for i in 0..10u64 {
            let need = w.need(i, true, false);
            let stale = doc(i, 100 + i - 1);
            assert!(
                !need.admits(&stale),
                "item {i}: an older version must never be admitted"
            );
            assert!(
                need.admits(&doc(i + 1, 110)),
                "the primary's answer is always admitted"
            );
        }
    }

    #[test]
    fn merge_takes_the_maximum_of_both() {
        let mut a = Watermarks::default();
        a.record_write(1, Version(2), Position(20), 8);
        let mut b = Watermarks::default();
        b.record_write(1, Version(4), Position(40), 8);
        b.record_read(2, Version(9), Position(45), 8);
        assert!(a.merge(&b, 8));
        assert_eq!(a.need(1, true, true).version, Version(4));
        assert_eq!(a.need(2, true, true).version, Version(9));
        assert!(!a.merge(&b, 8), "merging the same again changes nothing");
    }

    #[test]
    fn stale_own_and_regressions_are_detected() {
        let mut w = Watermarks::default();
        w.record_write(1, Version(5), Position(50), 8);
        w.record_read(2, Version(7), Position(60), 8);
        assert!(w.is_stale_own(1, &doc(4, 49)));
        assert!(!w.is_stale_own(1, &doc(5, 50)));
        assert!(w.is_regression(2, &doc(6, 70)));
        assert!(!w.is_regression(2, &doc(7, 70)));
    }

    /// Every item either of `a` and `b` names, and one neither does.
    fn items(a: &Watermarks, b: &Watermarks) -> Vec<u64> {
        let mut items: Vec<u64> = [a.writes(), a.reads(), b.writes(), b.reads()]
            .into_iter()
            .flatten()
            .map(|m| m.item)
            .chain([1_000])
            .collect();
        items.sort_unstable();
        items.dedup();
        items
    }

    const SWITCHES: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Without compaction a merge is a union of maxima: the order of the two
        /// sides does not matter, for any item under any switches.
        #[test]
        fn merge_is_commutative(a in watermarks(), b in watermarks()) {
            let (mut ab, mut ba) = (a.clone(), b.clone());
            ab.merge(&b, usize::MAX);
            ba.merge(&a, usize::MAX);
            for item in items(&a, &b) {
                for (ryw, monotonic) in SWITCHES {
                    prop_assert_eq!(ab.need(item, ryw, monotonic), ba.need(item, ryw, monotonic));
                }
            }
        }

        /// A merge, compacted to any size, asks at least what each side asked, and
        /// merging again changes nothing.
        #[test]
        fn merge_is_monotone_and_idempotent(a in watermarks(), b in watermarks(), max_items in 0usize..48) {
            let mut merged = a.clone();
            merged.merge(&b, max_items);
            prop_assert!(merged.writes().len() + merged.reads().len() <= max_items.max(a.writes().len() + a.reads().len()));
            for item in items(&a, &b) {
                for (ryw, monotonic) in SWITCHES {
                    prop_assert!(covers(&merged, &a, item, ryw, monotonic), "item {} against a", item);
                    prop_assert!(covers(&merged, &b, item, ryw, monotonic), "item {} against b", item);
                }
            }
            // Taken in again (a client that sends the same token twice), `b` asks
            // nothing new: what it carried is in the merge, kept or under a floor.
            let mut again = merged.clone();
            again.merge(&b, max_items);
            for item in items(&a, &b) {
                for (ryw, monotonic) in SWITCHES {
                    prop_assert_eq!(again.need(item, ryw, monotonic), merged.need(item, ryw, monotonic));
                }
            }
        }

        /// Compaction never asks less: for every item, the need after compaction
        /// covers the need before, and at most `max_items` marks remain.
        #[test]
        fn compaction_is_never_less_conservative(w in watermarks(), max_items in 0usize..48) {
            let mut compacted = w.clone();
            compacted.compact(max_items);
            prop_assert!(compacted.writes().len() + compacted.reads().len() <= max_items);
            for item in items(&w, &w) {
                for (ryw, monotonic) in SWITCHES {
                    prop_assert!(covers(&compacted, &w, item, ryw, monotonic), "item {}", item);
                }
            }
        }

        /// Recording reads and writes only ever raises what the session asks.
        #[test]
        fn recording_only_raises_the_need(
            w in watermarks(),
            ops in proptest::collection::vec((any::<bool>(), 0u64..40, 0u64..10_000, 0u64..10_000), 1..20),
            max_items in 1usize..30,
        ) {
            let mut now = w.clone();
            for (write, item, version, position) in ops {
                let before = now.clone();
                if write {
                    now.record_write(item, Version(version), Position(position), max_items);
                } else {
                    now.record_read(item, Version(version), Position(position), max_items);
                }
                for item in items(&before, &now) {
                    prop_assert!(covers(&now, &before, item, true, true), "item {}", item);
                }
            }
        }
    }
}
