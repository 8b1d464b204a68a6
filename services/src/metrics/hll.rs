//! Distinct counting: a HyperLogLog of the sessions seen in an experiment cell.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::hash::{fmix64, GOLDEN_GAMMA};

/// The hash a session id is counted under in the HyperLogLogs: eight bytes at a time,
/// then murmur3's 64-bit finaliser, so every bit of the result depends on every byte.
#[inline]
pub(super) fn session_hash(session_id: &str) -> u64 {
    let bytes = session_id.as_bytes();
    let mut h = GOLDEN_GAMMA ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
    }
    let tail = chunks
        .remainder()
        .iter()
        .enumerate()
        .fold(0u64, |word, (i, b)| word | (u64::from(*b) << (8 * i)));
    fmix64(h ^ tail)
}

/// A HyperLogLog of 2^12 one-byte registers (4 KiB): a count of distinct sessions in
/// fixed memory, with a standard error of 1.6%. Below about 10,000 sessions it counts
/// by linear counting, which is exact for small counts unless two sessions share a
/// register. Inserting an already-seen session is one load.
pub(super) struct Hll {
    registers: Box<[AtomicU8]>,
}

const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

impl Hll {
    pub(super) fn new() -> Self {
        Self {
            registers: (0..HLL_REGISTERS).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    #[inline]
    pub(super) fn insert(&self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        // The rank of the first 1 bit after the index bits (a guard bit bounds it).
        let rest = (hash << HLL_BITS) | (1 << (HLL_BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        let register = &self.registers[index];
        if register.load(Ordering::Relaxed) < rank {
            register.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// The distinct count of the union of `sets` (register-wise maximum).
    pub(super) fn estimate_union<'a>(sets: impl Iterator<Item = &'a Hll>) -> u64 {
        let mut merged = vec![0u8; HLL_REGISTERS];
        for set in sets {
            for (m, register) in merged.iter_mut().zip(set.registers.iter()) {
                *m = (*m).max(register.load(Ordering::Relaxed));
            }
        }
        let m = HLL_REGISTERS as f64;
        let zeros = merged.iter().filter(|r| **r == 0).count();
        let sum: f64 = merged.iter().map(|r| (-f64::from(*r)).exp2()).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_hash_is_pinned() {
        // Cells merged across nodes and builds count the same session once.
        assert_eq!(session_hash(""), 0x9ca0_66f1_a4ab_2eea);
        assert_eq!(session_hash("s1"), 0x2ae7_e16c_e788_1084);
        assert_eq!(
            session_hash("9676d3f15235493f99b8ec32c7ef5c01"),
            0x69b3_712b_018f_999c
        );
    }

    #[test]
    fn hyperloglog_counts_small_sets_exactly_and_large_ones_closely() {
        let (a, b) = (Hll::new(), Hll::new());
        for i in 0..20 {
            for _ in 0..3 {
                a.insert(session_hash(&format!("session-{i}")));
            }
        }
        assert_eq!(Hll::estimate_union([&a].into_iter()), 20);
        for i in 10..30 {
            b.insert(session_hash(&format!("session-{i}")));
        }
        assert_eq!(
            Hll::estimate_union([&a, &b].into_iter()),
            30,
            "a union counts each once"
        );
        for i in 30..50_000 {
            a.insert(session_hash(&format!("{i:032x}")));
        }
        let estimate = Hll::estimate_union([&a].into_iter()) as f64;
        assert!((estimate / 50_000.0 - 1.0).abs() < 0.05, "{estimate}");
    }
}
