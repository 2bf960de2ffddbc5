//! Per-VIP and per-backend traffic counters.

use lb_common::maps::TrafficStats;

use crate::maps::{BACKEND_STATS, VIP_STATS};

/// Adds one forwarded packet of `bytes` (client IP packet size) to its VIP and backend.
#[inline(always)]
pub fn traffic(vip_id: u32, backend: u32, bytes: u64, new_flow: bool) {
    add(VIP_STATS.get_ptr_mut(vip_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend), bytes, new_flow);
}

#[inline(always)]
fn add(slot: Option<*mut TrafficStats>, bytes: u64, new_flow: bool) {
    if let Some(s) = slot {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(new_flow);
        }
    }
}
