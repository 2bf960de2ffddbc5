//! Per-backend traffic counters. A VIP's figures are its backends' added up by the daemon:
//! one counter update per packet instead of two.

use crate::{maps::BACKEND_STATS, select::Target};

/// Counts one forwarded packet of `bytes` (client IP packet size) for the target's backend.
#[inline(always)]
pub fn traffic(target: &Target, bytes: u64) {
    add(target, 1, bytes, u64::from(target.new_flow != 0));
}

/// Takes back what [`traffic`] counted, for a packet the kernel then refused to
/// encapsulate (see `encap::forward`).
#[inline(always)]
pub fn take_back(target: &Target, bytes: u64) {
    let minus = |n: u64| n.wrapping_neg();
    add(
        target,
        minus(1),
        minus(bytes),
        minus(u64::from(target.new_flow != 0)),
    );
}

#[inline(always)]
fn add(target: &Target, packets: u64, bytes: u64, new_flows: u64) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(target.idx) {
        // SAFETY: per-CPU slot; only this CPU writes it while the program runs.
        unsafe {
            (*s).packets = (*s).packets.wrapping_add(packets);
            (*s).bytes = (*s).bytes.wrapping_add(bytes);
            (*s).new_flows = (*s).new_flows.wrapping_add(new_flows);
        }
    }
}
