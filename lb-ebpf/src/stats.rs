//! Per-CPU counters: one [`Counters`] value per CPU (a one-entry per-CPU array), indexed
//! by reason slot. Per-CPU, so no atomics on the packet path; one value, so a packet that
//! bumps several counters pays for one map lookup.

use aya_ebpf::maps::PerCpuArray;
use lb_common::counters::{Counters, COUNTER_SLOTS};

/// A program's counter map.
pub type StatsMap = PerCpuArray<Counters>;

/// A one-entry per-CPU counter map, for `#[map]` statics.
pub const fn stats_map() -> StatsMap {
    PerCpuArray::with_max_entries(1, 0)
}

/// This CPU's counters, for paths that bump more than one.
#[inline(always)]
pub fn counters(map: &StatsMap) -> Option<*mut Counters> {
    map.get_ptr_mut(0)
}

/// Adds one to `slot` of this CPU's counters (`None`: the lookup failed, nothing to count).
#[inline(always)]
pub fn bump_in(counters: Option<*mut Counters>, slot: u32) {
    if let Some(c) = counters {
        if slot < COUNTER_SLOTS {
            // SAFETY: this CPU's value (only this CPU writes it while the program runs);
            // `slot` is in bounds.
            unsafe { (*c)[slot as usize] += 1 };
        }
    }
}

/// Adds one to `slot` (one map lookup).
#[inline(always)]
pub fn bump(map: &StatsMap, slot: u32) {
    bump_in(counters(map), slot);
}
