//! A per-CPU cache of connection-table entries, in front of `CONNS_V4` and `CONNS`.
//!
//! Why: on a known flow's packet the LRU hash lookup was the largest cost left. The kernel
//! hashes the key, walks a bucket and compares keys in out-of-line functions, and on CPUs
//! with return-thunk mitigations every return is expensive. A slot of an array map is found
//! by arithmetic the verifier inlines into the program.
//!
//! Shape: 2-way set associative, indexed by a multiplicative hash of the key. An IPv4 set
//! (`FLOW_CACHE`, 16-byte keys) is one 64-byte cache line, an IPv6 set (`FLOW_CACHE_V6`,
//! 40-byte keys) two. A fill evicts the set's older way.
//!
//! Why it never changes where a flow goes:
//! - The connection table stays the authority. Entries are filled only with what it holds
//!   (from a table hit, or with the entry a new flow was just recorded with), and an entry
//!   serves at most [`REFRESH`] packets, and for at most [`MAX_AGE`] jiffies, before the
//!   next packet looks the table up again. That lookup sets the LRU's reference bit (a
//!   busy flow is not evicted because its packets skip the table; a slow one refreshes it
//!   every [`MAX_AGE`] jiffies while it sends) and picks up whatever changed in the entry.
//! - A cached entry is served only while its backend takes new flows, and has done so
//!   without a break since the fill: the way keeps the backend's `Backend::cache_epoch`,
//!   which the daemon changes when the slot gets a new holder and whenever the backend
//!   comes back into its VIP's table. Removed, dead, drained and reused backends are seen
//!   at once, and their flows go to the table.
//! - A least-connection flow's SYN, FIN and RST packets go to the table, whose entry the
//!   accounting marks when the client closes and unmarks when it reuses the 5-tuple for a
//!   new connection (a way keeps the entry's `CONN_F_COUNTED` to know which flows those
//!   are).
//! - The daemon deletes entries only for `flows.forget`, and then gives the backends
//!   those flows were on a new `cache_epoch`: their cached copies stop serving, so a
//!   forgotten flow's next packet finds no entry, as a new flow's would. Otherwise it only
//!   reads the tables. The program rewrites a live flow's entry only when
//!   it moves the flow: its backend is down, or a SYN reuses the 5-tuple while the backend
//!   takes no new flows. Both happen only while the backend is out of the table, when no
//!   cache serves its flows, and the new epoch it comes back with keeps copies from before
//!   out of use (fixtures_flow_affinity found a flow moved on one CPU going back to its old
//!   backend from another CPU's cache, before the epoch). Otherwise a cached copy can only
//!   be older than an entry the LRU evicted; it then serves at most [`REFRESH`] more
//!   packets, to the backend the flow already had. One exception: two
//!   CPUs that record the same new flow at once (its first packets on both) while the
//!   daemon swaps the VIP's Maglev table can pick different backends, and the later insert
//!   wins; the other CPU's cached copy then serves at most [`REFRESH`] packets, for at
//!   most [`MAX_AGE`] jiffies, before the table's entry takes over. Without the cache the
//!   flow's first packets were split the same way.
//! - The age is kept in 16 bits of jiffies: an entry untouched for a multiple of 65 536
//!   jiffies can look fresh again, and then serves at most [`REFRESH`] packets, as above.
//! - Per CPU: no other CPU writes a set while this one reads it, so no torn entries.
//! - A collision costs only a table lookup. A crafted set of flows that collide can make
//!   every packet miss; each then pays what every packet paid before the cache.

use crate::{maps::Scratch, select::Target};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
    macros::map,
    maps::Array,
};
use lb_common::{
    flow_cache::{self, key_v4, key_v6, V4_WORDS, V6_WORDS},
    maps::{
        ConnEntry, CONN_F_COUNTED, CONN_F_HASHED_SRC, FLOW_CACHE_MAX_AGE as MAX_AGE,
        FLOW_CACHE_REFRESH as REFRESH, FLOW_CACHE_SETS, FLOW_CACHE_SET_BITS, FLOW_CACHE_V6_SETS,
        FLOW_CACHE_V6_SET_BITS,
    },
};

/// A cached connection-table entry under a key of `N` words. An all-zero key is an empty
/// way: a real key has a protocol (TCP or UDP) in it.
#[repr(C)]
pub struct CachedFlow<const N: usize> {
    /// The flow's key (`flow_cache::key_v4`, `key_v6`).
    key: [u64; N],
    /// `ConnEntry::backend`.
    backend: u32,
    /// `ConnEntry::hash`.
    hash: u32,
    /// The backend's `Backend::cache_epoch` at the fill.
    epoch: u32,
    /// Packets served since the fill (at most [`REFRESH`], which fits).
    served: u8,
    /// `ConnEntry::flags` that a hit needs: `CONN_F_HASHED_SRC`, `CONN_F_COUNTED` (which
    /// all fit in a byte).
    flags: u8,
    /// Jiffies at the fill, low 16 bits.
    filled: u16,
}

const _: () = assert!(
    REFRESH <= u8::MAX as u16,
    "CachedFlow::served counts up to REFRESH"
);

/// The entry flags a way keeps.
const KEPT_FLAGS: u32 = CONN_F_HASHED_SRC | CONN_F_COUNTED;

const _: () = assert!(KEPT_FLAGS <= u8::MAX as u32, "CachedFlow::flags holds them");

/// One set: its ways, the most recently filled first.
#[repr(C)]
pub struct CacheSet<const N: usize> {
    ways: [CachedFlow<N>; 2],
}

const _: () = assert!(
    core::mem::size_of::<CacheSet<V4_WORDS>>() == 64
        && core::mem::size_of::<CacheSet<V6_WORDS>>() == 128,
    "sets are whole cache lines"
);

/// See the module docs; entries by `lb_common::flow_cache::entry`. The loader sizes it to
/// 1 + `FLOW_CACHE_SETS` × possible CPUs (entry 0 is never used, so one entry is a cache
/// no CPU reaches); a CPU beyond the map's size simply never hits. A plain array indexed
/// by CPU rather than a per-CPU array: the slot's address is arithmetic, where a per-CPU
/// array first loads a pointer per slot (one more cache miss per packet for a table this
/// size). `BPF_F_MMAPABLE` for its layout, not for user space:
/// only mmapable arrays keep their values page-aligned, so that each set is exactly one
/// cache line (otherwise the values start 312 bytes into the map and every set spans two
/// lines). Program only; the daemon never reads it.
#[map]
pub static FLOW_CACHE: Array<CacheSet<V4_WORDS>> =
    Array::with_max_entries(FLOW_CACHE_SETS, BPF_F_MMAPABLE);

/// IPv6 flows, as [`FLOW_CACHE`] (`FLOW_CACHE_V6_SETS` per CPU).
#[map]
pub static FLOW_CACHE_V6: Array<CacheSet<V6_WORDS>> =
    Array::with_max_entries(FLOW_CACHE_V6_SETS, BPF_F_MMAPABLE);

/// A cache hit: the backend index and its cache epoch at the fill, for the caller's
/// backend check. The rest of the entry went to the target already.
pub struct Cached {
    /// `ConnEntry::backend`.
    pub backend: u32,
    /// `Backend::cache_epoch` when the entry was filled.
    pub epoch: u32,
}

/// This CPU's set for `key` in `map` (`bits`: log2 of the sets per CPU).
#[inline(always)]
fn this_cpus_set<const N: usize>(
    map: &Array<CacheSet<N>>,
    key: &[u64; N],
    bits: u32,
) -> Option<&'static mut CacheSet<N>> {
    // SAFETY: no arguments; the verifier inlines it as a read of this CPU's number.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let set = map.get_ptr_mut(flow_cache::entry(key, cpu, bits))?;
    // SAFETY: `set` is in this CPU's part of the map, valid for the whole run; nothing
    // else touches it meanwhile (other CPUs use their own part, programs do not yield).
    Some(unsafe { &mut *set })
}

impl<const N: usize> CacheSet<N> {
    /// The way holding `key`, if any. Two ways, unrolled by hand: the verifier sees
    /// straight-line code.
    #[inline(always)]
    fn way_of(&mut self, key: &[u64; N]) -> Option<&mut CachedFlow<N>> {
        let [a, b] = &mut self.ways;
        if a.holds(key) {
            Some(a)
        } else if b.holds(key) {
            Some(b)
        } else {
            None
        }
    }
}

/// The cached entry of the flow in `s` (`v4`: an IPv4 flow, keyed by `s.flow4`; else by
/// `s.flow`) if it may still serve a packet (`opens_or_closes`: a TCP SYN, FIN or RST, which
/// least-connection flows take to the table): counts the packet and writes the entry's target
/// into `s.target`, which the caller still has to accept or overwrite (the entry's backend
/// is checked there). The target is written here so that fewer values stay live in the
/// caller, whose stack is at the verifier's limit.
#[inline(always)]
pub fn lookup(s: *mut Scratch, v4: bool, opens_or_closes: bool) -> Option<Cached> {
    // SAFETY: this CPU's scratch slot, its key written by the caller.
    let (sc, target) = unsafe { (&*s, core::ptr::addr_of_mut!((*s).target)) };
    if v4 {
        lookup_in(
            &FLOW_CACHE,
            &key_v4(&sc.flow4),
            FLOW_CACHE_SET_BITS,
            target,
            opens_or_closes,
        )
    } else {
        lookup_in(
            &FLOW_CACHE_V6,
            &key_v6(&sc.flow),
            FLOW_CACHE_V6_SET_BITS,
            target,
            opens_or_closes,
        )
    }
}

/// Caches the connection-table entry `e` of the flow in `s` (as in [`lookup`]), whose
/// backend's `Backend::cache_epoch` is `epoch`: over the way that already holds it, or else
/// over its set's older way.
#[inline(always)]
pub fn fill(s: &Scratch, v4: bool, e: &ConnEntry, epoch: u32) {
    if v4 {
        fill_in(
            &FLOW_CACHE,
            &key_v4(&s.flow4),
            FLOW_CACHE_SET_BITS,
            e,
            epoch,
        )
    } else {
        fill_in(
            &FLOW_CACHE_V6,
            &key_v6(&s.flow),
            FLOW_CACHE_V6_SET_BITS,
            e,
            epoch,
        )
    }
}

#[inline(always)]
fn lookup_in<const N: usize>(
    map: &Array<CacheSet<N>>,
    key: &[u64; N],
    bits: u32,
    target: *mut Target,
    opens_or_closes: bool,
) -> Option<Cached> {
    let way = this_cpus_set(map, key, bits)?.way_of(key)?;
    if u16::from(way.served) >= REFRESH || age(way.filled) >= MAX_AGE {
        return None;
    }
    if opens_or_closes && u32::from(way.flags) & CONN_F_COUNTED != 0 {
        return None;
    }
    way.served += 1;
    // SAFETY: the caller's scratch target (map memory); one write of the whole struct.
    unsafe {
        target.write(Target {
            idx: way.backend,
            hash: way.hash,
            hashed_src: u32::from(u32::from(way.flags) & CONN_F_HASHED_SRC != 0),
            new_flow: 0,
        })
    };
    Some(Cached {
        backend: way.backend,
        epoch: way.epoch,
    })
}

#[inline(always)]
fn fill_in<const N: usize>(
    map: &Array<CacheSet<N>>,
    key: &[u64; N],
    bits: u32,
    e: &ConnEntry,
    epoch: u32,
) {
    let Some(set) = this_cpus_set(map, key, bits) else {
        return;
    };
    let way = match set.way_of(key) {
        Some(way) => way,
        None => {
            // The older way goes. Word by word: a struct assignment compiles to a
            // byte-wise BPF memmove call.
            let [a, b] = &mut set.ways;
            a.copy_to(b);
            a
        }
    };
    for (dst, src) in way.key.iter_mut().zip(key) {
        *dst = *src;
    }
    way.backend = e.backend;
    way.hash = e.hash;
    way.epoch = epoch;
    way.served = 0;
    way.flags = (e.flags & KEPT_FLAGS) as u8;
    way.filled = jiffies();
}

/// The kernel's jiffies, low 16 bits (the verifier inlines the helper as one load).
#[inline(always)]
fn jiffies() -> u16 {
    // SAFETY: no arguments.
    unsafe { bpf_jiffies64() as u16 }
}

/// Jiffies since `filled` (modulo 2^16).
#[inline(always)]
fn age(filled: u16) -> u16 {
    jiffies().wrapping_sub(filled)
}

impl<const N: usize> CachedFlow<N> {
    /// Whether this way holds `key` (word by word: an array comparison can compile to a
    /// `bcmp` call).
    #[inline(always)]
    fn holds(&self, key: &[u64; N]) -> bool {
        let mut same = true;
        for (a, b) in self.key.iter().zip(key) {
            same &= a == b;
        }
        same
    }

    /// Copies this way over `to`, word by word.
    #[inline(always)]
    fn copy_to(&self, to: &mut CachedFlow<N>) {
        for (dst, src) in to.key.iter_mut().zip(&self.key) {
            *dst = *src;
        }
        to.backend = self.backend;
        to.hash = self.hash;
        to.epoch = self.epoch;
        to.served = self.served;
        to.flags = self.flags;
        to.filled = self.filled;
    }
}
