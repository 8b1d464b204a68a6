//! What retired copies of sessions knew, kept so a newer copy of the same session on
//! this node never asks less of a source than they did.
//!
//! A session can have two copies on one node: its table entry is evicted (a full
//! table) or passivated while a request still holds it, and the next request of the
//! session rebuilds it from the token it carries. With requests of one session in
//! parallel, that token may lack what the old copy recorded meanwhile — a write the
//! old copy committed after the token was issued, or one whose answer arrived at the
//! client before another answer's older token replaced it. The old copy's marks would
//! then be lost to the node, and the session could read an item older than its own
//! write.
//!
//! So a copy pours its marks in here when it retires, and every mark it records after
//! that too; every read's need takes in what is here for its session and item. The
//! table is lossy the safe way: fixed arrays of positions, each slot the highest of
//! every session (floors) or (session, item) (marks) that hashes to it. A collision only raises a need's position
//! (an extra origin read, or a cache entry the change feed must vouch for), never
//! lowers it; the arrays never grow. A session's slot says whether any of its item
//! slots holds a mark above the need, so a read of a session that never retired a
//! copy looks at one cache line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Need, Position, Watermarks};

/// One session's slot: the floors its retired copies poured, and the highest position
/// of any per-item mark they poured (0: none, so no item slot needs a look). One
/// cache line holds two, so a read of a session that never retired a copy costs one
/// line.
#[derive(Debug, Default)]
#[repr(C, align(32))]
struct SessionSlot {
    write_floor: AtomicU64,
    read_floor: AtomicU64,
    items: AtomicU64,
}

/// One (session, item) slot: the positions of the write and read marks poured.
#[derive(Debug, Default)]
#[repr(C, align(16))]
struct ItemSlot {
    write: AtomicU64,
    read: AtomicU64,
}

/// The positions retired session copies recorded, per session (floors) and per
/// (session, item) (marks), for writes (read-your-writes) and reads (monotonic
/// reads).
#[derive(Debug)]
pub struct RetiredMarks {
    sessions: Box<[SessionSlot]>,
    items: Box<[ItemSlot]>,
}

impl RetiredMarks {
    /// A table of `slots` (session, item) slots, rounded up to a power of two (at
    /// least 64), and a quarter as many session slots: `24 × slots` bytes.
    pub fn new(slots: usize) -> Arc<Self> {
        let slots = slots.max(64).next_power_of_two();
        Arc::new(Self {
            sessions: (0..slots / 4).map(|_| SessionSlot::default()).collect(),
            items: (0..slots).map(|_| ItemSlot::default()).collect(),
        })
    }

    /// The (session, item) slots.
    pub fn slots(&self) -> usize {
        self.items.len()
    }

    fn session_slot(&self, session: u64) -> &SessionSlot {
        &self.sessions[(mix(session) as usize) & (self.sessions.len() - 1)]
    }

    fn item_slot(&self, session: u64, item: u64) -> &ItemSlot {
        &self.items[(mix(session ^ item.rotate_left(29)) as usize) & (self.items.len() - 1)]
    }

    fn raise(slot: &AtomicU64, position: Position) {
        if position.0 > 0 {
            slot.fetch_max(position.0, Ordering::AcqRel);
        }
    }

    /// Keeps everything `marks` (of the session hashed to `session`) asks of a source.
    pub fn keep(&self, session: u64, marks: &Watermarks) {
        for mark in marks.writes() {
            self.keep_mark(session, mark.item, mark.position, false);
        }
        for mark in marks.reads() {
            self.keep_mark(session, mark.item, mark.position, true);
        }
        self.keep_floor(session, marks.write_floor(), false);
        self.keep_floor(session, marks.read_floor(), true);
    }

    /// Keeps one mark. The item slot is raised before the session slot says there
    /// is one to look at.
    pub fn keep_mark(&self, session: u64, item: u64, position: Position, read: bool) {
        let slot = self.item_slot(session, item);
        Self::raise(if read { &slot.read } else { &slot.write }, position);
        Self::raise(&self.session_slot(session).items, position);
    }

    /// Keeps a floor (what stands for every item).
    pub fn keep_floor(&self, session: u64, floor: Position, read: bool) {
        let slot = self.session_slot(session);
        Self::raise(if read { &slot.read_floor } else { &slot.write_floor }, floor);
    }

    /// Raises `need` (a read of `item` by the session hashed to `session`) to what
    /// retired copies of the session asked: a source must reflect their positions.
    #[inline]
    pub fn raise_need(&self, session: u64, item: u64, ryw: bool, monotonic: bool, need: &mut Need) {
        if !(ryw || monotonic) {
            return;
        }
        let at = |slot: &AtomicU64| Position(slot.load(Ordering::Acquire));
        let s = self.session_slot(session);
        let items = at(&s.items);
        let mut position = need.position;
        if ryw {
            position = position.max(at(&s.write_floor));
        }
        if monotonic {
            position = position.max(at(&s.read_floor));
        }
        // An item mark can only raise the need if some item mark is above it.
        if items > position {
            let i = self.item_slot(session, item);
            if ryw {
                position = position.max(at(&i.write));
            }
            if monotonic {
                position = position.max(at(&i.read));
            }
        }
        need.position = position;
        need.origin_position = need.origin_position.max(position);
    }
}

/// The hash of a session id, as [`RetiredMarks`] keys sessions.
pub fn session_hash(id: &str) -> u64 {
    crate::item_hash("", id)
}

/// A finaliser (splitmix64's): every input bit moves every output bit, so slots take
/// the low bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;

    fn marks() -> Watermarks {
        let mut w = Watermarks::default();
        w.record_write(7, Version(3), Position(30), 8);
        w.record_read(8, Version(5), Position(40), 8);
        w
    }

    #[test]
    fn a_need_takes_in_the_positions_a_retired_copy_recorded_for_its_session_and_item() {
        let table = RetiredMarks::new(1 << 12);
        let s = session_hash("s1");
        table.keep(s, &marks());
        let need = |item, ryw, monotonic| {
            let mut need = Need::default();
            table.raise_need(s, item, ryw, monotonic, &mut need);
            need
        };
        assert_eq!(need(7, true, false).position, Position(30), "its own write");
        assert_eq!(need(7, true, false).origin_position, Position(30));
        assert_eq!(need(8, false, true).position, Position(40), "what it read");
        assert_eq!(
            need(7, false, false),
            Need::default(),
            "nothing asked when both are off"
        );
        // Another session and another item: unaffected (the table is large enough
        // that these do not collide).
        let mut other = Need::default();
        table.raise_need(session_hash("s2"), 7, true, true, &mut other);
        assert_eq!(other, Need::default());
        assert_eq!(need(9, true, true), Need::default());
    }

    #[test]
    fn floors_stand_for_every_item_and_a_need_is_never_lowered() {
        let table = RetiredMarks::new(64);
        let s = session_hash("s1");
        let w = Watermarks::from_parts(vec![], vec![], Position(50), Position(60));
        table.keep(s, &w);
        let mut need = Need::default();
        table.raise_need(s, 12345, true, false, &mut need);
        assert_eq!(need.position, Position(50));
        let mut high = Need {
            version: Version(9),
            position: Position(99),
            origin_position: Position(99),
        };
        table.raise_need(s, 12345, true, true, &mut high);
        assert_eq!(high.position, Position(99));
        assert_eq!(high.version, Version(9));
    }

    #[test]
    fn a_full_table_only_raises_positions() {
        // 64 slots, 10,000 sessions: every slot is shared; each need is at least what
        // its own session kept.
        let table = RetiredMarks::new(64);
        for i in 0..10_000u64 {
            table.keep_mark(session_hash(&format!("s{i}")), i, Position(i + 1), false);
        }
        for i in 0..10_000u64 {
            let mut need = Need::default();
            table.raise_need(session_hash(&format!("s{i}")), i, true, false, &mut need);
            assert!(need.position >= Position(i + 1));
        }
        assert_eq!(table.slots(), 64);
    }
}
