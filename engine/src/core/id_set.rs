//! An ordered set of task ids made for how ids are used: handed out
//! consecutively, so the members of a set sit close together.
//!
//! The set is a map from each 64-id word to the word's bits. A million
//! consecutive ids take 15,625 words (about 16 bytes of map per 64 ids,
//! against some 16 bytes per id in a `BTreeSet`), and adding or removing an
//! id is one search of that much smaller tree and one bit operation, which
//! is what every task pays at each change of state (see `task_index.rs`).

use std::collections::BTreeMap;

use flotilla_protocol::TaskId;

const WORD_BITS: u64 = 64;

/// A set of task ids, read highest first.
#[derive(Debug, Default)]
pub(super) struct IdSet {
    /// Word number (id / 64) → the bits of the ids in it; never zero.
    words: BTreeMap<u64, u64>,
    len: u64,
}

fn split(id: TaskId) -> (u64, u64) {
    (id.0 / WORD_BITS, 1u64 << (id.0 % WORD_BITS))
}

impl IdSet {
    /// Adds `id`; true if it was not there.
    pub(super) fn insert(&mut self, id: TaskId) -> bool {
        let (word, bit) = split(id);
        let bits = self.words.entry(word).or_insert(0);
        let added = *bits & bit == 0;
        *bits |= bit;
        self.len += u64::from(added);
        added
    }

    /// Removes `id`; true if it was there.
    pub(super) fn remove(&mut self, id: TaskId) -> bool {
        let (word, bit) = split(id);
        let Some(bits) = self.words.get_mut(&word) else {
            return false;
        };
        if *bits & bit == 0 {
            return false;
        }
        *bits &= !bit;
        if *bits == 0 {
            self.words.remove(&word);
        }
        self.len -= 1;
        true
    }

    /// How many ids it holds.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// True if it holds none.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ids below `upper`, highest first.
    pub(super) fn descending_below(&self, upper: TaskId) -> impl Iterator<Item = TaskId> + '_ {
        let (top_word, top_bit) = split(upper);
        // Bits of the top word strictly below `upper`'s own.
        let below_top = top_bit - 1;
        self.words
            .range(..=top_word)
            .rev()
            .flat_map(move |(&word, &bits)| {
                let bits = if word == top_word {
                    bits & below_top
                } else {
                    bits
                };
                HighBits(bits).map(move |bit| TaskId(word * WORD_BITS + bit))
            })
    }
}

/// The set bits of a word, highest first.
struct HighBits(u64);

impl Iterator for HighBits {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.0 == 0 {
            return None;
        }
        let bit = u64::from(WORD_BITS as u32 - 1 - self.0.leading_zeros());
        self.0 &= !(1u64 << bit);
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn reads_highest_first_below_a_bound_across_words() {
        let mut set = IdSet::default();
        for id in [0, 1, 63, 64, 65, 200, u64::MAX - 1] {
            assert!(set.insert(TaskId(id)));
        }
        assert!(!set.insert(TaskId(64)), "already there");
        assert_eq!(set.len(), 7);
        let all: Vec<u64> = set
            .descending_below(TaskId(u64::MAX))
            .map(|t| t.0)
            .collect();
        assert_eq!(all, [u64::MAX - 1, 200, 65, 64, 63, 1, 0]);
        let below: Vec<u64> = set.descending_below(TaskId(65)).map(|t| t.0).collect();
        assert_eq!(below, [64, 63, 1, 0]);
        assert!(set.remove(TaskId(64)));
        assert!(!set.remove(TaskId(64)));
        assert!(!set.remove(TaskId(5000)));
        assert_eq!(set.len(), 6);
        for id in [0, 1, 63, 65, 200, u64::MAX - 1] {
            assert!(set.remove(TaskId(id)));
        }
        assert!(set.is_empty());
        assert!(set.words.is_empty(), "empty words go");
    }

    /// Random inserts and removals, checked against `BTreeSet` after each
    /// step and in full at the end (a fixed xorshift sequence per seed, so
    /// a failure repeats).
    #[test]
    fn behaves_as_an_ordered_set() {
        for seed in 1..=200u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut set = IdSet::default();
            let mut model = BTreeSet::new();
            for _ in 0..400 {
                let r = next();
                let id = (r >> 8) % 700;
                if r & 3 != 0 {
                    assert_eq!(set.insert(TaskId(id)), model.insert(id), "seed {seed}");
                } else {
                    assert_eq!(set.remove(TaskId(id)), model.remove(&id), "seed {seed}");
                }
                assert_eq!(set.len(), model.len() as u64, "seed {seed}");
            }
            for bound in [0, 1, 63, 64, 65, 333, 699, 700, 10_000] {
                let got: Vec<u64> = set.descending_below(TaskId(bound)).map(|t| t.0).collect();
                let want: Vec<u64> = model.range(..bound).rev().copied().collect();
                assert_eq!(got, want, "seed {seed}, below {bound}");
            }
        }
    }
}
