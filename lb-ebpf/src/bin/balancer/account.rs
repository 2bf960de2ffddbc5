//! Per-backend traffic counters. A VIP's figures are its backends' added up by the daemon:
//! one counter update per packet instead of two.

use crate::maps::BACKEND_STATS;

/// Adds one forwarded packet of `bytes` (client IP packet size) to its backend slot.
#[inline(always)]
pub fn traffic(backend: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(new_flow);
        }
    }
}
