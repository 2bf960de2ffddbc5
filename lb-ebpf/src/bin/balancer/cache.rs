//! A per-CPU cache of IPv4 connection-table entries, in front of `CONNS_V4`.
//!
//! Why: on a known flow's packet the LRU hash lookup was the largest cost left. The kernel
//! hashes the key, walks a bucket and compares keys in out-of-line functions, and on CPUs
//! with return-thunk mitigations every return is expensive. A slot of an array map is found
//! by arithmetic the verifier inlines into the program.
//!
//! Shape: 2-way set associative, indexed by a multiplicative hash of the 16-byte key; one
//! set is one 64-byte cache line. A fill evicts the set's older way.
//!
//! Why it never changes where a flow goes:
//! - The connection table stays the authority. Entries are filled only from a table hit, and
//!   an entry serves at most [`REFRESH`] packets before the next one looks the table up
//!   again. That lookup sets the LRU's reference bit (a busy flow is not evicted because its
//!   packets skip the table) and picks up whatever changed in the entry.
//! - A cached entry passes the same backend check as a table hit (slot usable, generation
//!   recorded with the flow), so removed, dead and reused backend slots are seen at once.
//! - FIN and RST packets always go to the table: least-connection accounting marks the
//!   table's entry when the client closes.
//! - Nothing else rewrites the entry of a live flow (the daemon only reads the tables), so a
//!   cached copy can only be older than an entry the LRU evicted; it then serves at most
//!   [`REFRESH`] more packets, to the backend the flow already had.
//! - Per CPU: no other CPU writes a set while this one reads it, so no torn entries.
//! - A collision costs only a table lookup. A crafted set of flows that collide can make
//!   every packet miss; each then pays what every packet paid before the cache.
//!
//! IPv6 flows are not cached: their 40-byte keys would double the set size, and most
//! traffic is IPv4.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE, helpers::bpf_get_smp_processor_id, macros::map, maps::Array,
};
use lb_common::{
    flow::FlowKeyV4,
    maps::{
        ConnEntry, FLOW_CACHE_REFRESH as REFRESH, FLOW_CACHE_SETS as SETS,
        FLOW_CACHE_SET_BITS as SET_BITS,
    },
};

/// A cached connection-table entry. An all-zero key is an empty way: a real key has a
/// protocol (TCP or UDP) in its second word.
#[repr(C)]
pub struct CachedFlow {
    /// The IPv4 key as two words ([`key_of`]).
    key: [u64; 2],
    /// `ConnEntry::backend`.
    pub backend: u32,
    /// `ConnEntry::hash`.
    pub hash: u32,
    /// `ConnEntry::generation`.
    pub generation: u32,
    /// Packets served since the fill.
    served: u16,
    /// 1: outer source from the flow hash (`CONN_F_HASHED_SRC`).
    pub hashed_src: u16,
}

/// One set: its ways, the most recently filled first.
#[repr(C)]
pub struct CacheSet {
    ways: [CachedFlow; 2],
}

const _: () = assert!(
    core::mem::size_of::<CachedFlow>() == 32 && core::mem::size_of::<CacheSet>() == 64,
    "one set per 64-byte cache line"
);

/// See the module docs: CPU `c`'s sets are entries `c × SETS ..`. The loader sizes it to
/// `SETS` × possible CPUs; a CPU beyond the map's size simply never hits. A plain array
/// indexed by CPU rather than a per-CPU array: the slot's address is arithmetic, where a
/// per-CPU array first loads a pointer per slot (one more cache miss per packet for a
/// table this size). `BPF_F_MMAPABLE` for its layout, not for user space: only mmapable
/// arrays keep their values page-aligned, so that each set is exactly one cache line
/// (otherwise the values start 312 bytes into the map and every set spans two lines).
/// Program only; the daemon never reads it.
#[map]
pub static FLOW_CACHE: Array<CacheSet> = Array::with_max_entries(SETS, BPF_F_MMAPABLE);

/// An IPv4 key as the cache compares it.
type Key = [u64; 2];

/// `key` as two words, in its memory layout (composed from fields: reading the 4-aligned
/// key as `u64`s would compile to byte loads).
#[inline(always)]
fn key_of(key: &FlowKeyV4) -> Key {
    let ports = u64::from(key.sport_be) | u64::from(key.dport_be) << 16;
    [
        u64::from(key.src) | u64::from(key.dst) << 32,
        ports | u64::from(key.proto) << 32,
    ]
}

/// This CPU's set for `key`.
#[inline(always)]
fn set_of(key: &Key) -> Option<*mut CacheSet> {
    // Multiplicative hashing: the top bits of the product depend on every input bit, and
    // the rotation moves the ports (low bits of the second word) away from the addresses.
    let mixed = (key[0] ^ key[1].rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // SAFETY: no arguments; the verifier inlines it as a read of this CPU's number.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    FLOW_CACHE.get_ptr_mut(cpu.wrapping_mul(SETS) + (mixed >> (64 - SET_BITS)) as u32)
}

/// The cached entry of the IPv4 flow `flow` if it may still serve a packet; counts the
/// packet.
#[inline(always)]
pub fn lookup(flow: &FlowKeyV4) -> Option<&'static CachedFlow> {
    let key = &key_of(flow);
    let set = set_of(key)?;
    // SAFETY: `set` is in this CPU's part of the map, valid for the whole run; nothing
    // else touches it meanwhile (other CPUs use their own part, programs do not yield).
    let ways = unsafe { &mut (*set).ways };
    // Two ways, unrolled by hand: the verifier sees straight-line code.
    let way = if ways[0].holds(key) {
        &mut ways[0]
    } else if ways[1].holds(key) {
        &mut ways[1]
    } else {
        return None;
    };
    if way.served >= REFRESH {
        return None;
    }
    way.served += 1;
    Some(way)
}

/// Caches the table entry `e` of the IPv4 flow `flow`: over the way that already holds it,
/// or else over its set's older way.
#[inline(always)]
pub fn fill(flow: &FlowKeyV4, e: &ConnEntry, hashed_src: bool) {
    let key = &key_of(flow);
    let Some(set) = set_of(key) else {
        return;
    };
    // SAFETY: as in `hit`.
    let ways = unsafe { &mut (*set).ways };
    let way = if ways[0].holds(key) {
        &mut ways[0]
    } else if ways[1].holds(key) {
        &mut ways[1]
    } else {
        // The older way goes. Word by word: a struct assignment compiles to a byte-wise
        // BPF memmove call.
        let [a, b] = ways;
        let (from, to) = (
            (a as *const CachedFlow).cast::<[u64; 4]>(),
            (b as *mut CachedFlow).cast::<[u64; 4]>(),
        );
        // SAFETY: both are 32-byte, 8-aligned ways of the same map value.
        unsafe {
            (*to)[0] = (*from)[0];
            (*to)[1] = (*from)[1];
            (*to)[2] = (*from)[2];
            (*to)[3] = (*from)[3];
        }
        a
    };
    way.key[0] = key[0];
    way.key[1] = key[1];
    way.backend = e.backend;
    way.hash = e.hash;
    way.generation = e.generation;
    way.served = 0;
    way.hashed_src = u16::from(hashed_src);
}

impl CachedFlow {
    /// Whether this way holds `key` (field by field: an array comparison can compile to a
    /// `bcmp` call).
    #[inline(always)]
    fn holds(&self, key: &Key) -> bool {
        self.key[0] == key[0] && self.key[1] == key[1]
    }
}
