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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(version: u64, position: u64) -> Doc {
        Doc {
            version: Version(version),
            position: Position(position),
            fields: None,
        }
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
}
