//! Weighted Maglev lookup-table builder (Eisenbud et al., NSDI 2016).
//!
//! Each backend walks its own permutation of the table's slots (`offset`, `skip` from two
//! independent hashes of its address) and takes turns claiming the next free slot on it.
//! Weights decide how many turns a backend gets per round: a backend of weight `w` earns
//! `w` credits a round and spends `max_weight` per turn, so its share of the table is its
//! share of the total weight, to within one turn.
//!
//! Determinism: backends are ordered by their key (address bytes), not by their index or
//! the order they were given in, so every load balancer with the same backends and weights
//! builds a byte-identical table (in terms of backend keys) and picks the same backend for
//! the same flow.

use crate::hash::{murmur3_words, MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED};

/// One backend as the builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// The value written into the table's slots (the data plane's backend index).
    pub id: u32,
    /// Stable identity hashed into the permutation: address words plus family.
    pub key: [u32; 5],
    /// Relative weight; 0 keeps the backend out of the table.
    pub weight: u32,
}

/// Value of a slot that has no backend.
pub const EMPTY_SLOT: u32 = 0;

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime ≥ 2.
    SizeNotPrime(u32),
    /// Two backends share a key.
    DuplicateKey([u32; 5]),
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::SizeNotPrime(m) => write!(f, "lookup table size {m} is not a prime"),
            Self::DuplicateKey(k) => write!(f, "two backends share the key {k:?}"),
        }
    }
}

impl std::error::Error for MaglevError {}

/// True when `n` is a prime (trial division; table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds a table of `size` slots. Slots hold backend ids, or [`EMPTY_SLOT`] when no
/// backend has a weight above zero.
pub fn build(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime(size));
    }
    let mut live: Vec<MaglevBackend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    live.sort_by_key(|b| b.key);
    if let Some(w) = live.windows(2).find(|w| w[0].key == w[1].key) {
        return Err(MaglevError::DuplicateKey(w[0].key));
    }
    let m = size as usize;
    let mut table = vec![EMPTY_SLOT; m];
    if live.is_empty() {
        return Ok(table);
    }
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let offset = u64::from(murmur3_words(&b.key, MAGLEV_OFFSET_SEED)) % size as u64;
            let skip = u64::from(murmur3_words(&b.key, MAGLEV_SKIP_SEED)) % (size as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut taken = vec![false; m];
    let mut filled = 0usize;
    'rounds: loop {
        for (i, b) in live.iter().enumerate() {
            credit[i] += u64::from(b.weight);
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (offset, skip) = perms[i];
                // Walk this backend's permutation to its next free slot. Terminates: the
                // permutation visits every slot (size is prime, 0 < skip < size) and at
                // least one slot is free.
                let slot = loop {
                    let c = ((offset + next[i] * skip) % size as u64) as usize;
                    next[i] += 1;
                    if !taken[c] {
                        break c;
                    }
                };
                taken[slot] = true;
                table[slot] = b.id;
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(i: u32, weight: u32) -> MaglevBackend {
        // 198.18.2.i as raw words, family 4: the same keys user space derives.
        MaglevBackend {
            id: i,
            key: [u32::from_ne_bytes([198, 18, 2, i as u8]), 0, 0, 0, 4],
            weight,
        }
    }

    fn shares(table: &[u32], n: u32) -> Vec<f64> {
        let mut counts = vec![0usize; n as usize + 1];
        for &s in table {
            counts[s as usize] += 1;
        }
        counts
            .iter()
            .skip(1)
            .map(|&c| c as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn rejects_non_prime_sizes_and_duplicates() {
        assert_eq!(
            build(&[backend(1, 1)], 65536),
            Err(MaglevError::SizeNotPrime(65536))
        );
        assert_eq!(
            build(&[backend(1, 1)], 1),
            Err(MaglevError::SizeNotPrime(1))
        );
        let dup = [
            backend(1, 1),
            MaglevBackend {
                id: 2,
                ..backend(1, 1)
            },
        ];
        assert!(matches!(build(&dup, 13), Err(MaglevError::DuplicateKey(_))));
    }

    #[test]
    fn empty_or_zero_weight_gives_empty_table() {
        assert!(build(&[], 13).unwrap().iter().all(|&s| s == EMPTY_SLOT));
        assert!(build(&[backend(1, 0)], 13)
            .unwrap()
            .iter()
            .all(|&s| s == EMPTY_SLOT));
        assert!(build(&[backend(1, 0), backend(2, 5)], 13)
            .unwrap()
            .iter()
            .all(|&s| s == 2));
    }

    #[test]
    fn balance_equal_weights_within_one_percent() {
        for n in [3u32, 10, 100] {
            let bs: Vec<_> = (1..=n).map(|i| backend(i, 1)).collect();
            let t = build(&bs, 65537).unwrap();
            for (i, s) in shares(&t, n).iter().enumerate() {
                let want = 1.0 / n as f64;
                assert!(
                    (s - want).abs() <= want * 0.01,
                    "n={n} backend {} share {s} want {want}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn balance_weighted_within_one_percent() {
        let weights = [3u32, 2, 1, 10, 7];
        let bs: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(i as u32 + 1, w))
            .collect();
        let t = build(&bs, 65537).unwrap();
        let total: u32 = weights.iter().sum();
        for (i, s) in shares(&t, weights.len() as u32).iter().enumerate() {
            let want = f64::from(weights[i]) / f64::from(total);
            assert!(
                (s - want).abs() <= want * 0.01,
                "backend {} share {s} want {want}",
                i + 1
            );
        }
    }

    #[test]
    fn deterministic_and_independent_of_input_order_and_ids() {
        let bs: Vec<_> = (1..=10).map(|i| backend(i, i % 3 + 1)).collect();
        let a = build(&bs, 65537).unwrap();
        assert_eq!(a, build(&bs, 65537).unwrap());
        let mut rev = bs.clone();
        rev.reverse();
        assert_eq!(a, build(&rev, 65537).unwrap());
        // Other ids for the same keys: the same placement in terms of keys.
        let renumbered: Vec<_> = bs
            .iter()
            .map(|b| MaglevBackend {
                id: b.id + 100,
                ..*b
            })
            .collect();
        let c = build(&renumbered, 65537).unwrap();
        assert!(a.iter().zip(&c).all(|(x, y)| x + 100 == *y));
    }

    /// Fraction of slots whose backend changed.
    fn moved(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn minimal_disruption_on_remove_and_add() {
        let n = 10u32;
        let bs: Vec<_> = (1..=n).map(|i| backend(i, 1)).collect();
        let before = build(&bs, 65537).unwrap();
        let removed = build(&bs[1..], 65537).unwrap();
        let mut more = bs.clone();
        more.push(backend(n + 1, 1));
        let added = build(&more, 65537).unwrap();
        let rm = moved(&before, &removed);
        let add = moved(&before, &added);
        println!("maglev 1-of-{n}: removal moves {:.2}% of slots, addition {:.2}% (ideal {:.2}% / {:.2}%)",
            rm * 100.0, add * 100.0, 100.0 / n as f64, 100.0 / (n + 1) as f64);
        // Every slot of the removed backend must move; Maglev moves a few more.
        assert!(
            rm >= 1.0 / n as f64 * 0.99 && rm <= 0.11,
            "removal moved {rm}"
        );
        assert!(
            add >= 1.0 / (n + 1) as f64 * 0.99 && add <= 0.11,
            "addition moved {add}"
        );
        // Slots of surviving backends that moved must be few (they only fill the gap).
        let stray = before
            .iter()
            .zip(&removed)
            .filter(|(x, y)| **x != 1 && x != y)
            .count();
        assert!(
            (stray as f64) < 0.02 * before.len() as f64,
            "{stray} slots of live backends moved"
        );
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(13) && is_prime(2));
        assert!(!is_prime(65535) && !is_prime(0) && !is_prime(9));
    }
}
