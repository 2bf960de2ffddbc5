//! Which backend gets a packet: the connection table first, then the VIP's Maglev table.
//!
//! When flows are recorded: on *every* packet that misses the connection table (not only
//! TCP SYN, and for UDP too). A flow that arrives mid-stream — after a balancer restart, or
//! moved here by ECMP from another balancer — hashes to the same backend as everywhere
//! else (Maglev is consistent across balancers), and recording it then pins it against
//! later backend-set changes. Entries age out through the LRU; FIN/RST do not delete them,
//! since in DSR mode we never see the server's half of the close.

use lb_common::{
    counters::{Drop, Event},
    flow::FlowKey,
    hash::{flow_hash, src_hash},
    maps::{Backend, ConnEntry, VipInfo, BACKEND_F_ACTIVE, MAX_TABLE_SIZE, VIP_F_SRC_HASH},
};
use lb_ebpf::stats::bump;

use crate::maps::{BACKENDS, CONNS, LOOKUP, STATS};

/// The chosen backend.
#[derive(Default)]
pub struct Target {
    /// Backend index (for per-backend counters).
    pub idx: u32,
    /// The flow's hash (outer flow label / hashed outer source).
    pub hash: u32,
    /// The flow was recorded just now.
    pub new_flow: bool,
}

/// Picks the backend for `flow`; records new flows in the connection table when `record`.
#[inline(always)]
pub fn backend(flow: &FlowKey, vip: &VipInfo, record: bool) -> Result<Target, Drop> {
    if let Some(entry) = CONNS.get_ptr(flow) {
        // SAFETY: the map value stays valid for the duration of the program (RCU).
        let entry = unsafe { *entry };
        if usable(entry.backend).is_some() {
            bump(&STATS, Event::ConnHit.slot());
            return Ok(Target { idx: entry.backend, hash: entry.hash, new_flow: false });
        }
        bump(&STATS, Event::ConnRepick.slot());
    }
    let hash = if vip.flags & VIP_F_SRC_HASH != 0 { src_hash(flow) } else { flow_hash(flow) };
    if vip.table_size == 0 {
        return Err(Drop::NoBackend);
    }
    let slot = vip.table_id * MAX_TABLE_SIZE + hash % vip.table_size;
    let idx = match LOOKUP.get(slot) {
        Some(&idx) if idx != 0 => idx,
        _ => return Err(Drop::NoBackend),
    };
    usable(idx).ok_or(Drop::BadBackend)?;
    if record {
        // A failed insert (map full of in-flight updates) only costs stickiness, so the
        // packet still goes out.
        let _ = CONNS.insert(flow, ConnEntry { backend: idx, hash }, 0);
        bump(&STATS, Event::NewFlow.slot());
    }
    Ok(Target { idx, hash, new_flow: record })
}

/// The backend at `idx` if it may carry flows. Callers keep the index, not the pointer:
/// map-value pointers held in structs across BPF function calls get spilled in ways the
/// verifier rejects.
#[inline(always)]
pub fn usable(idx: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(idx)?;
    if idx != 0 && b.flags & BACKEND_F_ACTIVE != 0 {
        Some(b)
    } else {
        None
    }
}
