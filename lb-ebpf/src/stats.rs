//! Per-CPU counters.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to `slot` of a per-CPU counter array. Per-CPU, so no atomics on the packet path.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, slot: u32) {
    if let Some(c) = map.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}
