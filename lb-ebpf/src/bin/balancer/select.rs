//! Which backend gets a packet: the connection table first, then the VIP's scheduler.
//!
//! The connection table is consulted before the VIP table: a recorded flow carries what
//! forwarding needs (backend, hash, VIP id, source mode), so the common case — a packet of
//! a known flow — costs one hash lookup, not two; and a per-CPU cache of the table's
//! entries (cache.rs) usually answers before that lookup. Traffic for the host itself pays
//! a cache miss and a connection-table miss before its VIP miss. A removed VIP's flows do
//! not linger: its backends are deactivated, so their entries stop counting as hits.
//!
//! When flows are recorded: on *every* packet that misses the connection table (not only
//! TCP SYN, and for UDP too). A flow that arrives mid-stream — after a balancer restart, or
//! moved here by ECMP from another balancer — hashes to the same backend as everywhere
//! else (Maglev is consistent across balancers), and recording it then pins it against
//! later backend-set changes. Entries age out through the LRU; FIN/RST do not delete them,
//! since in DSR mode we never see the server's half of the close. The exception: a CPU that
//! sees more new flows in a second than `LbConfig::record_rate_limit` (a flood) forwards the
//! rest of that second's new flows of hash-scheduled VIPs by their hash, unrecorded, so
//! that the flood cannot evict the established flows (lb_common::rate_window). A
//! `stateless` VIP (`VIP_F_STATELESS`, hash schedulers only) records none of its flows: each
//! packet goes where its hash points, as a DNS service's one-query flows want.
//!
//! Schedulers (new flows only; recorded flows always keep their backend):
//! - Maglev (default) and `sh`: the flow hash (5-tuple, or client address) picks a slot.
//! - `rr` / `wrr` (`VIP_F_SEQUENCE`): the table holds a smooth weighted round-robin sequence;
//!   each CPU walks it with its own cursor. Every CPU's walk alone is exactly fair over a
//!   cycle, so their sum is too (at most one partial cycle per CPU off).
//! - `lc` / `wlc` (`VIP_F_LEAST_CONN`): two distinct candidates from the weighted table (two
//!   hashes of the flow), and the one with fewer active flows per unit of weight wins —
//!   power of two choices: O(1) per packet, no scan over backends. A backend at its
//!   `max_conns` loses to any with room; with none in reach the new flow is dropped
//!   (`BackendsFull`), its client's retry a moment later being the queue.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    addr::FAMILY_V4,
    counters::{Counters, Drop, Event},
    flow::FlowKey,
    hash::{flow_hash, next_probe, src_hash, SECOND_CHOICE_PROBES},
    lookup::{self as tables},
    maps::{
        Backend, ConnEntry, VipInfo, BACKEND_F_ACTIVE, BACKEND_F_NO_NEW, CONN_F_CLOSED,
        CONN_F_COUNTED, CONN_F_HASHED_SRC, VIP_F_COUNT_ACTIVE, VIP_F_HASHED_SRC, VIP_F_LEAST_CONN,
        VIP_F_SEQUENCE, VIP_F_SRC_HASH, VIP_F_STATELESS,
    },
};
use lb_ebpf::{
    stats::{bump, bump_in},
    subprog::pack,
};

use crate::{
    cache, lookup,
    maps::{
        within_rate, Scratch, BACKENDS, BACKEND_ACTIVE, CONNS, CONNS_V4, LOOKUP, RECORD_WINDOW,
        RR_CURSORS, STATS,
    },
};

/// TCP FIN and RST flags: the client is closing.
const TCP_FIN_RST: u8 = 0x01 | 0x04;
/// TCP SYN and ACK flags: SYN without ACK opens a connection.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// TCP RST: a flow the table does not know is not recorded on it (`Event::UnknownRst`).
const TCP_RST: u8 = 0x04;

/// The chosen backend. Lives in per-CPU scratch memory (`maps::Scratch`), written by
/// `pinned` or `pick` before anyone reads it.
#[repr(C)]
pub struct Target {
    /// Backend index.
    pub idx: u32,
    /// The flow's hash (outer flow label / hashed outer source).
    pub hash: u32,
    /// 1: outer source from the flow hash (`VIP_F_HASHED_SRC`).
    pub hashed_src: u32,
    /// 1: the flow was recorded just now.
    pub new_flow: u32,
}

/// The connection-table entry of the flow in `s` (`s.flow`, and `s.flow4` for IPv4).
#[inline(always)]
fn conn_entry(s: &Scratch, v4: bool) -> Option<*mut ConnEntry> {
    if v4 {
        CONNS_V4.get_ptr_mut(&s.flow4)
    } else {
        CONNS.get_ptr_mut(&s.flow)
    }
}

/// Records the flow in `s` (whole flow written, see `Scratch::complete_flow`) with the
/// entry in `s.conn` in its family's connection table; false when the kernel refused the
/// insert.
#[inline(always)]
fn record_conn(s: &Scratch) -> bool {
    if s.flow.family == FAMILY_V4 {
        CONNS_V4.insert(&s.flow4, &s.conn, 0).is_ok()
    } else {
        CONNS.insert(&s.flow, &s.conn, 0).is_ok()
    }
}

/// Looks the flow in `s` up in this CPU's flow cache, then the connection table, into
/// `s.target` (its connection-table key must be there, see `Scratch::set_conn_key`; `v4`:
/// an IPv4 flow): its backend when that can still take it, `None` when the scheduler must
/// pick. A table hit fills the cache, as does recording a new flow in `pick` (cache.rs says
/// why that never moves a flow).
/// `tcp_flags` (0 for UDP) let least-connection VIPs take a flow's count back when the
/// client closes it and count it again when a SYN reuses its 5-tuple, and keep such SYNs
/// off backends that take no new connections; `stats` is this CPU's counters. Inlined:
/// this is the hit path.
#[inline(always)]
pub fn pinned(
    s: *mut Scratch,
    v4: bool,
    tcp_flags: u8,
    stats: Option<*mut Counters>,
) -> Option<&'static Backend> {
    let closing = tcp_flags & TCP_FIN_RST != 0;
    // A client reusing a recorded 5-tuple opens a new connection with it: a backend that
    // takes no new ones must not get it (see `recorded`).
    let opening = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A counted flow's SYN, FIN and RST go to the table, whose entry least-connection
    // accounting marks; the cache serves every other packet.
    if let Some(backend) =
        cache::lookup(s, v4, opening || closing).and_then(|c| cached(c.backend, c.epoch))
    {
        // `lookup` wrote the target.
        bump_in(stats, Event::ConnHit.slot());
        bump_in(stats, Event::FlowCacheHit.slot());
        return Some(backend);
    }
    // SAFETY: this CPU's scratch slot, its key written by the caller.
    let sc = unsafe { &*s };
    let entry = conn_entry(sc, v4)?;
    // SAFETY: the map value stays valid for the duration of the program (RCU).
    let e = unsafe { *entry };
    let Some(backend) = recorded(e.backend, e.generation, opening) else {
        bump_in(stats, Event::ConnRepick.slot());
        uncount_moved(entry);
        return None;
    };
    bump_in(stats, Event::ConnHit.slot());
    if !closing && backend.flags & BACKEND_F_NO_NEW == 0 {
        // The key and set again rather than kept from above: fewer values live across
        // the table lookup, and the entry function's stack is at the verifier's limit.
        // A backend that takes no new flows is not cached: see `cached`.
        cache::fill(sc, v4, &e, backend.cache_epoch);
    }
    // Least connection: the client's FIN/RST takes its flow's count back, and a SYN on a
    // closed entry (a client reusing the 5-tuple) counts the new connection.
    let counted = e.flags & CONN_F_COUNTED != 0;
    let closed = e.flags & CONN_F_CLOSED != 0;
    // SAFETY: as above. Every table visit stamps the entry: the daemon's recount stops
    // counting idle least-connection flows, and `xlb flows` says how long any flow has been
    // idle (a flow's packets reach the table at least once a second while they come: the
    // cache's age limit).
    unsafe { (*entry).seen_s = now_s() };
    if counted && closing && !closed {
        // SAFETY: as above. Two CPUs racing here may both count: the count is an
        // estimate (and reads treat a count below zero as zero, see `load`).
        unsafe { (*entry).flags = e.flags | CONN_F_CLOSED };
        add_active(e.backend, u64::MAX);
    } else if counted && opening && closed {
        // SAFETY: as above.
        unsafe { (*entry).flags = e.flags & !CONN_F_CLOSED };
        add_active(e.backend, 1);
    }
    // SAFETY: this CPU's scratch slot; one write of the whole target.
    unsafe {
        core::ptr::addr_of_mut!((*s).target).write(Target {
            idx: e.backend,
            hash: e.hash,
            hashed_src: u32::from(e.flags & CONN_F_HASHED_SRC != 0),
            new_flow: 0,
        })
    };
    Some(backend)
}

/// Backend `idx` of a flow-cache entry filled under `epoch`, if the backend still takes new
/// flows and has not stopped doing so since (`Backend::cache_epoch`). Only while it takes
/// new flows can nothing move its flows elsewhere in the connection table: when it is down
/// its flows move on their next packet, and when it is drained or of weight 0 so do flows
/// whose client opens a new connection on the 5-tuple, on whatever CPU those packets
/// arrive, while another CPU's cache may hold the flow. Such flows go to the table, which
/// has the final word, until the daemon gives the backend a new epoch.
#[inline(always)]
fn cached(idx: u32, epoch: u32) -> Option<&'static Backend> {
    usable(idx).filter(|b| b.cache_epoch == epoch && b.flags & BACKEND_F_NO_NEW == 0)
}

/// Backend `idx` if it is usable and still the one a flow was recorded with (slot indices
/// are reused, and every reuse bumps the slot's generation), and, for a packet `opening` a
/// connection (TCP SYN without ACK), if it takes new connections: a drained backend keeps
/// its flows, but a client that reuses a recorded 5-tuple after TIME_WAIT opens a new one,
/// which is scheduled anew. Table and cache hits alike.
#[inline(always)]
fn recorded(idx: u32, generation: u32, opening: bool) -> Option<&'static Backend> {
    usable(idx)
        .filter(|b| b.generation == generation && !(opening && b.flags & BACKEND_F_NO_NEW != 0))
}

/// Picks a backend for the flow in `s` that the connection table does not pin, into
/// `s.target`; records the flow when `record`. `named`: a backend the packet itself names
/// (a QUIC connection ID, `quic::named_backend`; 0: none), which takes the flow whatever
/// the scheduler would say. Its own BPF function: new flows only.
#[inline(never)]
pub fn pick(s: *mut Scratch, vip: &VipInfo, record: bool, tcp_flags: u8, named: u32) -> u64 {
    pack(pick_stage(s, vip, record, tcp_flags, named).map(|t| {
        // SAFETY: this CPU's scratch slot (map memory); one write of the whole target.
        unsafe { core::ptr::addr_of_mut!((*s).target).write(t) };
        0
    }))
}

#[inline(always)]
fn pick_stage(
    s: *mut Scratch,
    vip: &VipInfo,
    record: bool,
    tcp_flags: u8,
    named: u32,
) -> Result<Target, Drop> {
    // SAFETY: this CPU's scratch slot, its flow keys written by the caller.
    let hash = flow_hash_for(vip, unsafe { &(*s).flow });
    // A named backend is a connection's own server, drained or not (its VIP's table may
    // even be empty): the connection is not new, only its path.
    let idx = if named != 0 {
        named
    } else {
        if vip.table_size == 0 {
            return Err(Drop::NoBackend);
        }
        let slot = if vip.flags & VIP_F_SEQUENCE != 0 {
            next_in_sequence(vip)
        } else {
            hash % vip.table_size
        };
        let first = table_entry(vip, slot)?;
        if vip.flags & VIP_F_LEAST_CONN != 0 {
            less_loaded(vip, first, hash)?
        } else {
            first
        }
    };
    let chosen = usable(idx).ok_or(Drop::BadBackend)?;
    let (generation, epoch) = (chosen.generation, chosen.cache_epoch);
    let hashed_src = vip.flags & VIP_F_HASHED_SRC != 0;
    // Over this CPU's record rate, a VIP that picks by hash alone forwards the flow by its
    // hash and records nothing: every packet of the flow gets the same pick while the
    // table stays. Round robin and least connection picks are not a function of the
    // packet, so their flows are recorded whatever the rate.
    let by_hash = vip.flags & (VIP_F_SEQUENCE | VIP_F_LEAST_CONN) == 0;
    let record = if record && vip.flags & VIP_F_STATELESS != 0 {
        bump(&STATS, Event::StatelessPick.slot());
        false
    } else if record && tcp_flags & TCP_RST != 0 {
        bump(&STATS, Event::UnknownRst.slot());
        false
    } else if record && !within_record_rate() && by_hash {
        bump(&STATS, Event::FlowNotRecorded.slot());
        false
    } else {
        record
    };
    if record {
        // A named flow's connection was counted on its first path.
        let counted = vip.flags & VIP_F_COUNT_ACTIVE != 0 && tcp_flags & TCP_FIN_RST == 0;
        let mut flags = if counted { CONN_F_COUNTED } else { 0 };
        if hashed_src {
            flags |= CONN_F_HASHED_SRC;
        }
        // SAFETY: as above; one write of the whole entry, while no reference to the slot
        // is live.
        unsafe {
            core::ptr::addr_of_mut!((*s).conn).write(ConnEntry {
                backend: idx,
                hash,
                flags,
                vip_id: vip.vip_id,
                generation,
                seen_s: now_s(),
            })
        };
        // SAFETY: as above; only read from here on.
        let sc = unsafe { &*s };
        // A failed insert (map full of in-flight updates) only costs stickiness, so the
        // packet still goes out — and is then neither counted nor cached.
        if record_conn(sc) {
            if counted {
                add_active(idx, 1);
            }
            // The flow's next packets find it in the cache rather than in the table.
            cache::fill(sc, sc.flow.family == FAMILY_V4, &sc.conn, epoch);
        }
        bump(&STATS, Event::NewFlow.slot());
    }
    Ok(Target {
        idx,
        hash,
        hashed_src: u32::from(hashed_src),
        new_flow: u32::from(record),
    })
}

/// The hash a VIP places flows by: the client address's (`sh`) or the 5-tuple's.
#[inline(always)]
fn flow_hash_for(vip: &VipInfo, flow: &FlowKey) -> u32 {
    if vip.flags & VIP_F_SRC_HASH != 0 {
        src_hash(flow)
    } else {
        flow_hash(flow)
    }
}

/// The backend the VIP's table holds at the hash of the flow in `s`, into `s.target`,
/// nothing recorded: where an ICMP error about a flow the table does not know goes (an
/// error creates no flow, and has no better guide than the flow's hash). Returns 0.
#[inline(always)]
pub fn follow_hash(s: *mut Scratch, vip: &VipInfo) -> Result<u32, Drop> {
    if vip.table_size == 0 {
        return Err(Drop::NoBackend);
    }
    // SAFETY: this CPU's scratch slot, its flow keys written by the caller.
    let hash = flow_hash_for(vip, unsafe { &(*s).flow });
    let idx = table_entry(vip, hash % vip.table_size)?;
    usable(idx).ok_or(Drop::BadBackend)?;
    // SAFETY: as above; one write of the whole target.
    unsafe {
        core::ptr::addr_of_mut!((*s).target).write(Target {
            idx,
            hash,
            hashed_src: u32::from(vip.flags & VIP_F_HASHED_SRC != 0),
            new_flow: 0,
        })
    };
    Ok(0)
}

/// Counts a new flow in this CPU's window; false when the window holds more new flows than
/// `LbConfig::record_rate_limit` (lb_common::rate_window). One clock read per new flow,
/// only with a limit set.
#[inline(always)]
fn within_record_rate() -> bool {
    within_rate(
        &RECORD_WINDOW,
        lookup::config().map_or(0, |cfg| cfg.record_rate_limit),
    )
}

/// Backend index in slot `slot` of the VIP's live table.
#[inline(always)]
fn table_entry(vip: &VipInfo, slot: u32) -> Result<u32, Drop> {
    let idx = LOOKUP
        .get(tables::entry(vip.table_id, slot))
        .map_or(0, |&word| tables::slot_of(word, slot));
    if idx == 0 {
        return Err(Drop::NoBackend);
    }
    Ok(idx)
}

/// This CPU's next position in the VIP's round-robin sequence.
#[inline(always)]
fn next_in_sequence(vip: &VipInfo) -> u32 {
    match RR_CURSORS.get_ptr_mut(vip.vip_id) {
        Some(cur) => {
            // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
            let c = unsafe { *cur } % vip.table_size;
            unsafe { *cur = c + 1 };
            c
        }
        None => 0,
    }
}

/// Power of two choices: `first` or a second, distinct candidate from another hash of the
/// flow, whichever has fewer active flows per unit of weight, of those below their
/// `max_conns` (`Backend::max_active`). When both are full, the flow's next hashes are
/// tried in turn for a backend that is not; none: `BackendsFull`.
#[inline(always)]
fn less_loaded(vip: &VipInfo, first: u32, hash: u32) -> Result<u32, Drop> {
    // Up to SECOND_CHOICE_PROBES more hashes to find a second, distinct backend: with a third of the
    // table on `first`, all of them miss with probability 3^-8. Bounded; with one backend the
    // first candidate stands.
    let mut probe = hash;
    let mut second = first;
    for _ in 0..SECOND_CHOICE_PROBES {
        probe = next_probe(probe);
        if let Ok(c) = table_entry(vip, probe % vip.table_size) {
            if c != first {
                second = c;
                break;
            }
        }
    }
    let (a, wa) = load(first);
    if second == first {
        return if a == FULL {
            Err(Drop::BackendsFull)
        } else {
            Ok(first)
        };
    }
    let (b, wb) = load(second);
    if a != FULL || b != FULL {
        // A full backend is the heavier; else a / wa <= b / wb, without division.
        let first_lighter = b == FULL || (a != FULL && a * wb <= b * wa);
        return Ok(if first_lighter { first } else { second });
    }
    // Both at their limit: another backend of the table may have room. The probes start
    // again from the flow's hash (which the caller keeps anyway: one value fewer to hold
    // here, where the ICMP path's call chain is at the verifier's stack limit), past the
    // two full ones; bounded as above.
    let mut h = hash;
    for _ in 0..2 * SECOND_CHOICE_PROBES {
        h = next_probe(h);
        if let Ok(c) = table_entry(vip, h % vip.table_size) {
            if load(c).0 != FULL {
                return Ok(c);
            }
        }
    }
    Err(Drop::BackendsFull)
}

/// [`load`]'s active count of a backend at its `max_conns`.
const FULL: u64 = u64::MAX;

/// Active flows and weight (at least 1) of a backend; [`FULL`] flows when it has reached
/// its `max_conns` and takes no new flow.
#[inline(always)]
fn load(idx: u32) -> (u64, u64) {
    let active = BACKEND_ACTIVE.get(idx).copied().unwrap_or(0);
    // Counts may dip below zero transiently (a racing double close): treat as zero.
    let active = if active > (1 << 62) { 0 } else { active };
    let (weight, max) = BACKENDS
        .get(idx)
        .map_or((1, 0), |b| (u64::from(b.weight), u64::from(b.max_active)));
    let active = if max != 0 && active >= max {
        FULL
    } else {
        active
    };
    (active, weight.max(1))
}

/// `CLOCK_MONOTONIC_COARSE` in seconds (`ConnEntry::seen_s`). A helper call, made on table
/// visits only (a new flow, and a known flow's packet the flow cache does not serve).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: no arguments.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// A flow leaving backend `idx` for a new pick (down, or drained when its client reopens
/// the 5-tuple) takes back the count it holds there, if counted and open and the slot is
/// still the backend it was recorded with (a reused slot starts from zero). Without it the
/// old backend kept the count until the daemon's next recount, and least connection
/// steered new flows away from it for up to 30 s after it came back. Its own BPF function,
/// so that the hit path's code gains a call, not the body (the entry as a pointer: one
/// argument). Returns 0.
#[inline(never)]
fn uncount_moved(entry: *const ConnEntry) -> u32 {
    // SAFETY: a connection-table value, valid for the duration of the program (RCU).
    let e = unsafe { &*entry };
    if e.flags & (CONN_F_COUNTED | CONN_F_CLOSED) != CONN_F_COUNTED {
        return 0;
    }
    if BACKENDS
        .get(e.backend)
        .is_some_and(|b| b.generation == e.generation)
    {
        add_active(e.backend, u64::MAX);
    }
    0
}

/// Adds `delta` (wrapping: `u64::MAX` is −1) to a backend's active-flow count.
#[inline(always)]
fn add_active(idx: u32, delta: u64) {
    if let Some(p) = BACKEND_ACTIVE.get_ptr_mut(idx) {
        // SAFETY: the counter is an aligned u64 inside the map value; the atomic add is one
        // BPF instruction (`lock *(u64 *)(p + 0) += delta`, XADD), shared safely by all
        // CPUs. core's AtomicU64 has no fetch_add on the BPF target, hence the asm.
        unsafe {
            core::arch::asm!("lock *(u64 *)({p} + 0) += {d}", p = in(reg) p, d = in(reg) delta)
        };
    }
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
