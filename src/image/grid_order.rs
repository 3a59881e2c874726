//! The order in which the reference visits candidate grids (spec §7.1).
//!
//! `dynamic_preprocess` builds the candidates as a Python **set** of `(i, j)` tuples and then
//! stable-sorts them by `i * j`. Grids with equal products therefore keep the set's iteration
//! order, and that order decides ties in `find_closest_aspect_ratio` (e.g. whether (2,1) or (1,2)
//! is seen first never matters for aspect, but the order among same-aspect grids like (1,1),
//! (2,2), (3,3) and the first-match rule do). The set order is deterministic: integers and tuples of
//! integers are not hash-randomised. We reproduce it by emulating CPython 3.8+ (64-bit):
//!
//! - `hash(int) = int` for the small positive ints here;
//! - tuple hash: the xxHash-style loop of `Objects/tupleobject.c` (`tuplehash`);
//! - set insertion: `Objects/setobject.c` (`set_add_entry`): start at `hash & mask`, probe up to
//!   `LINEAR_PROBES = 9` following slots when they fit, then jump with
//!   `perturb >>= 5; i = (i*5 + 1 + perturb) & mask`; grow when `fill*5 >= mask*3` to the smallest
//!   power of two above `used*4` and reinsert in table order (`set_insert_clean`);
//! - iteration walks the table slots in index order.
//!
//! Verified against python3 3.11 for every `1 <= min <= max <= 40` while developing, and by the
//! committed fixture `tests/fixtures/images/grid_order.txt` in `tests/image_inputs.rs`.

const XXPRIME_1: u64 = 11_400_714_785_074_694_791;
const XXPRIME_2: u64 = 14_029_467_366_897_019_727;
const XXPRIME_5: u64 = 2_870_177_450_012_600_261;
const LINEAR_PROBES: usize = 9;
const PERTURB_SHIFT: u32 = 5;
const SET_MINSIZE: usize = 8;

/// CPython's `hash((a, b))` for small non-negative ints, as the unsigned 64-bit value.
fn tuple_hash(items: &[u64]) -> u64 {
    let mut acc = XXPRIME_5;
    for &lane in items {
        acc = acc.wrapping_add(lane.wrapping_mul(XXPRIME_2));
        acc = acc.rotate_left(31);
        acc = acc.wrapping_mul(XXPRIME_1);
    }
    acc = acc.wrapping_add((items.len() as u64) ^ (XXPRIME_5 ^ 3_527_539));
    if acc == u64::MAX {
        // hash -1 is reserved for errors in CPython.
        return 1_546_275_796;
    }
    acc
}

/// An open-addressing table laid out like CPython's `PySetObject` (no deletions, so no dummies).
struct PySet {
    table: Vec<Option<((u32, u32), u64)>>,
    fill: usize,
}

impl PySet {
    fn new() -> Self {
        PySet {
            table: vec![None; SET_MINSIZE],
            fill: 0,
        }
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    /// Finds the slot holding `key`, or the free slot where CPython would put it.
    fn probe(table: &[Option<((u32, u32), u64)>], key: (u32, u32), hash: u64) -> usize {
        let mask = table.len() - 1;
        let mut perturb = hash;
        let mut i = (hash as usize) & mask;
        loop {
            let probes = if i + LINEAR_PROBES <= mask { LINEAR_PROBES } else { 0 };
            for (slot, entry) in table.iter().enumerate().skip(i).take(probes + 1) {
                match *entry {
                    None => return slot,
                    Some((k, h)) if h == hash && k == key => return slot,
                    Some(_) => {}
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i.wrapping_mul(5).wrapping_add(1).wrapping_add(perturb as usize)) & mask;
        }
    }

    fn add(&mut self, key: (u32, u32)) {
        let hash = tuple_hash(&[u64::from(key.0), u64::from(key.1)]);
        let slot = Self::probe(&self.table, key, hash);
        if self.table[slot].is_some() {
            return; // already present
        }
        self.table[slot] = Some((key, hash));
        self.fill += 1;
        if self.fill * 5 < self.mask() * 3 {
            return;
        }
        // set_table_resize(so, used > 50000 ? used*2 : used*4); `used == fill` without deletions.
        let min_used = if self.fill > 50_000 {
            self.fill * 2
        } else {
            self.fill * 4
        };
        let mut new_size = SET_MINSIZE;
        while new_size <= min_used {
            new_size <<= 1;
        }
        let old = std::mem::replace(&mut self.table, vec![None; new_size]);
        for (key, hash) in old.into_iter().flatten() {
            // set_insert_clean: same probe sequence, first empty slot wins.
            let slot = Self::probe(&self.table, key, hash);
            self.table[slot] = Some((key, hash));
        }
    }

    fn iter_order(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.table.iter().flatten().map(|(k, _)| *k)
    }
}

/// The candidate grids `(cols, rows)` in the reference's order: CPython's iteration order of
///
/// ```python
/// set((i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
///     for j in range(1, n + 1) if i * j <= max_num and i * j >= min_num)
/// ```
///
/// stable-sorted by `i * j`. The caller validates `1 <= min <= max <= 40`.
pub(super) fn candidate_grids(min_tiles: u32, max_tiles: u32) -> Vec<(u32, u32)> {
    let mut set = PySet::new();
    for n in min_tiles..=max_tiles {
        for i in 1..=n {
            for j in 1..=n {
                let p = i * j;
                if p <= max_tiles && p >= min_tiles {
                    set.add((i, j));
                }
            }
        }
    }
    let mut grids: Vec<(u32, u32)> = set.iter_order().collect();
    grids.sort_by_key(|&(i, j)| i * j); // stable, like Python's sorted()
    grids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_hash_matches_cpython() {
        // python3 -c 'print(hash((1, 1)) & (2**64-1), hash((3, 4)) & (2**64-1))'
        assert_eq!(tuple_hash(&[1, 1]), 8_389_048_192_121_911_274);
        assert_eq!(tuple_hash(&[3, 4]), 1_079_245_023_883_434_373);
    }
}
