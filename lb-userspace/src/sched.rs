//! Schedulers as table builders: each turns a VIP's usable backends into the data plane's
//! table plus the flags that tell the XDP program how to read it.
//!
//! - Hash tables (Maglev; used by `maglev`, `sh`, `lc`, `wlc`, `lrt`, `agent`): the program
//!   hashes the flow (or the client) into the table; `lc`/`wlc` draw two candidates from it.
//! - Sequences (`rr`, `wrr`): the smooth weighted round-robin order (the algorithm nginx
//!   uses: every turn each backend gains its weight, the richest is picked and pays the
//!   total), which spreads a backend's turns evenly instead of in bursts. The program walks
//!   it with a per-CPU cursor.

use lb_common::{
    maglev::{self, MaglevBackend, MaglevError},
    maps::{MAX_TABLE_SIZE, VIP_F_COUNT_ACTIVE, VIP_F_LEAST_CONN, VIP_F_SEQUENCE, VIP_F_SRC_HASH},
};

use crate::config::Scheduler;

/// A backend that may take new flows, as a builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Data-plane backend index (what the table holds).
    pub index: u32,
    /// Stable identity (address words + family) for consistent hashing.
    pub key: [u32; 5],
    /// Effective weight (≥ 1).
    pub weight: u32,
}

/// A built table and how the program reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Slots (backend indices).
    pub slots: Vec<u32>,
    /// `VIP_F_*` scheduling flags.
    pub flags: u32,
}

/// Builds a VIP's table from its members.
pub trait TableBuilder {
    /// The table for `members` (non-empty, weights ≥ 1); `size` is the VIP's hash-table size.
    fn build(&self, members: &[Member], size: u32) -> Result<Table, MaglevError>;
}

/// Weighted Maglev; `weights: false` treats every member as weight 1.
pub struct MaglevTable {
    /// Extra `VIP_F_*` flags (source hashing, least connections, counting).
    pub flags: u32,
    /// Use the members' weights.
    pub weights: bool,
}

impl TableBuilder for MaglevTable {
    fn build(&self, members: &[Member], size: u32) -> Result<Table, MaglevError> {
        let m: Vec<MaglevBackend> = members
            .iter()
            .map(|b| MaglevBackend {
                id: b.index,
                key: b.key,
                weight: if self.weights { b.weight } else { 1 },
            })
            .collect();
        Ok(Table {
            slots: maglev::build(&m, size)?,
            flags: self.flags,
        })
    }
}

/// Smooth weighted round robin; `weights: false` is plain round robin.
pub struct SequenceTable {
    /// Use the members' weights.
    pub weights: bool,
}

impl TableBuilder for SequenceTable {
    fn build(&self, members: &[Member], _size: u32) -> Result<Table, MaglevError> {
        let mut sorted = members.to_vec();
        // Address order: every balancer with the same backends walks the same sequence.
        sorted.sort_by_key(|m| m.key);
        let mut weights: Vec<u64> = sorted
            .iter()
            .map(|m| if self.weights { u64::from(m.weight) } else { 1 })
            .collect();
        let g = weights.iter().copied().fold(0, gcd).max(1);
        weights.iter_mut().for_each(|w| *w /= g);
        // Keep the sequence within one table: scale down (every member keeps ≥ 1 turn).
        let total: u64 = weights.iter().sum();
        if total > u64::from(MAX_TABLE_SIZE) {
            weights.iter_mut().for_each(|w| {
                *w = (*w * u64::from(MAX_TABLE_SIZE - sorted.len() as u32) / total).max(1)
            });
        }
        let total: i64 = weights.iter().sum::<u64>() as i64;
        let mut current = vec![0i64; sorted.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..sorted.len() {
                current[i] += weights[i] as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            slots.push(sorted[best].index);
        }
        Ok(Table {
            slots,
            flags: VIP_F_SEQUENCE,
        })
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The `VIP_F_*` flags a scheduler's tables carry: how the data plane picks from them.
pub fn flags(s: Scheduler) -> u32 {
    match s {
        Scheduler::Maglev | Scheduler::Agent => 0,
        Scheduler::Sh => VIP_F_SRC_HASH,
        Scheduler::Lrt => VIP_F_COUNT_ACTIVE,
        Scheduler::Lc | Scheduler::Wlc => VIP_F_LEAST_CONN | VIP_F_COUNT_ACTIVE,
        Scheduler::Rr | Scheduler::Wrr => VIP_F_SEQUENCE,
    }
}

/// The builder for a scheduler.
pub fn builder(s: Scheduler) -> Box<dyn TableBuilder> {
    match s {
        Scheduler::Rr => Box::new(SequenceTable { weights: false }),
        Scheduler::Wrr => Box::new(SequenceTable { weights: true }),
        _ => Box::new(MaglevTable {
            flags: flags(s),
            weights: s.uses_weights(),
        }),
    }
}

/// Whether the VIPs of `s` pick new flows by each backend's active flows
/// (`VIP_F_LEAST_CONN`), so that a backend's `max_conns` can hold it back.
pub fn picks_by_count(s: Scheduler) -> bool {
    flags(s) & VIP_F_LEAST_CONN != 0
}

/// Whether the VIPs of `s` count active flows per backend (`VIP_F_COUNT_ACTIVE` in its
/// tables): the backends the daemon's recount corrects.
pub fn counts_active(s: Scheduler) -> bool {
    matches!(s, Scheduler::Lc | Scheduler::Wlc | Scheduler::Lrt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u32, w: u32) -> Member {
        Member {
            index: i,
            key: [i, 0, 0, 0, 4],
            weight: w,
        }
    }

    #[test]
    fn smooth_wrr_is_exact_and_spread() {
        let t = SequenceTable { weights: true }
            .build(&[m(1, 3), m(2, 2), m(3, 1)], 65537)
            .unwrap();
        assert_eq!(t.flags, VIP_F_SEQUENCE);
        // The classic smooth order for 3:2:1 (a b a c b a): no backend gets a burst.
        assert_eq!(t.slots, vec![1, 2, 1, 3, 2, 1]);
    }

    #[test]
    fn rr_ignores_weights_and_gcd_shortens() {
        let t = SequenceTable { weights: false }
            .build(&[m(2, 7), m(1, 3)], 65537)
            .unwrap();
        assert_eq!(t.slots, vec![1, 2]);
        let t = SequenceTable { weights: true }
            .build(&[m(1, 40), m(2, 20)], 65537)
            .unwrap();
        assert_eq!(t.slots, vec![1, 2, 1]);
    }

    #[test]
    fn huge_weights_fit_one_table() {
        let members: Vec<Member> = (1..=20).map(|i| m(i, 10_000)).collect();
        let t = SequenceTable { weights: true }
            .build(&members, 65537)
            .unwrap();
        assert_eq!(t.slots.len(), 20, "equal weights reduce by their gcd");
        let members: Vec<Member> = (1..=1000).map(|i| m(i, 9_000 + i)).collect();
        let t = SequenceTable { weights: true }
            .build(&members, 65537)
            .unwrap();
        assert!(t.slots.len() <= MAX_TABLE_SIZE as usize);
        for i in 1..=1000 {
            assert!(t.slots.contains(&i), "member {i} lost its turns");
        }
    }

    #[test]
    fn flags_per_scheduler() {
        let members = [m(1, 1), m(2, 3)];
        let flags = |s| builder(s).build(&members, 13).unwrap().flags;
        assert_eq!(flags(Scheduler::Maglev), 0);
        assert_eq!(flags(Scheduler::Sh), VIP_F_SRC_HASH);
        assert_eq!(flags(Scheduler::Lc), VIP_F_LEAST_CONN | VIP_F_COUNT_ACTIVE);
        assert_eq!(flags(Scheduler::Wrr), VIP_F_SEQUENCE);
        for s in [
            Scheduler::Maglev,
            Scheduler::Sh,
            Scheduler::Rr,
            Scheduler::Wrr,
            Scheduler::Lc,
            Scheduler::Wlc,
            Scheduler::Lrt,
            Scheduler::Agent,
        ] {
            assert_eq!(
                counts_active(s),
                flags(s) & VIP_F_COUNT_ACTIVE != 0,
                "{s:?}"
            );
            assert_eq!(flags(s), super::flags(s), "{s:?}: the tables' flags");
        }
        // lc ignores weights: equal shares of the hash table.
        let t = builder(Scheduler::Lc).build(&members, 13).unwrap();
        let ones = t.slots.iter().filter(|&&s| s == 1).count();
        assert!((6..=7).contains(&ones), "{:?}", t.slots);
    }
}
