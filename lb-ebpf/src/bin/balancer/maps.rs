//! The balancer's maps. Sizes here are defaults; the loader in user space may change
//! `max_entries` at load time (`LOOKUP`, `CONNS`, `CONNS_V4`), and the code below never
//! assumes a size: every lookup handles "out of range".

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf,
    },
};
use lb_common::{
    counters::Drop,
    flow::{FlowKey, FlowKeyV4},
    maps::{
        Backend, ClientKey, ClientWindow, ConnEntry, FlowLimits, LbConfig, LimitedFlows,
        SourceRange, TrafficStats, VipInfo, VipKey, CLIENT_WINDOWS_ENTRIES, DEFAULT_MAX_VIPS,
        MAX_BACKENDS, MAX_SOURCE_RANGES, MAX_VIP_ENTRIES,
    },
    quic::{QuicServer, QuicServerKey},
    rate_window::{RateWindow, WINDOW_NS},
};

use lb_ebpf::{
    parse::L3,
    stats::{stats_map, StatsMap},
};

use crate::{encap::NextHop, select::Target};

/// (address, port, protocol) → service settings, plus address-only markers. Daemon writes.
#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(MAX_VIP_ENTRIES, 0);

/// The client prefixes of VIPs that admit only some (`VIP_F_SRC_RANGES`), by VIP id.
/// Daemon writes; looked up for such VIPs' new flows only.
#[map]
pub static SOURCE_RANGES: LpmTrie<SourceRange, u32> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// Backend index → backend (address, state, cached next hop). Index 0 = none. Daemon writes.
/// `BPF_F_MMAPABLE` for the layout only: such arrays keep their values page-aligned, so
/// each 64-byte entry is one cache line (see `cache::FLOW_CACHE`). The map is too large
/// for the kernel to place it anywhere but in vmalloc pages either way.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);

/// Flat array of lookup tables, four 16-bit slots to an entry (`lb_common::lookup`). Two
/// tables per VIP (double-buffered, see `VipInfo::table_id`). Daemon writes.
#[map]
pub static LOOKUP: Array<u64> =
    Array::with_max_entries(8 * 2 * lb_common::lookup::ENTRIES_PER_TABLE, 0);

/// IPv6 client 5-tuple → pinned backend. LRU with per-CPU free lists
/// (`BPF_F_NO_COMMON_LRU`): no global lock on insert, one value per flow. The program
/// writes; the daemon reads, and deletes only what an operator forgets (`flows.forget`).
#[map]
pub static CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(65_536, BPF_F_NO_COMMON_LRU);

/// IPv4 flows, as [`CONNS`] but under the 16-byte [`FlowKeyV4`]: the kernel hashes and
/// compares whole keys, and most traffic is IPv4.
#[map]
pub static CONNS_V4: LruHashMap<FlowKeyV4, ConnEntry> =
    LruHashMap::with_max_entries(65_536, BPF_F_NO_COMMON_LRU);

/// Slot 0: balancer-wide settings. Daemon writes. Not mmapable like `BACKENDS`: that would
/// move this small map from the kernel's huge-page direct map to a 4 KiB vmalloc page.
#[map]
pub static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Per-CPU counters by reason slot (`lb_common::counters`). Program writes, daemon sums.
#[map]
pub static STATS: StatsMap = stats_map();

/// This CPU's new flows in the current second, against `LbConfig::record_rate_limit`.
/// Program only; read and written on the new-flow path alone.
#[map]
pub static RECORD_WINDOW: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's ICMP errors sent in the current second, against `LbConfig::icmp_rate_limit`.
/// Program only; read and written when a too-big packet is answered.
#[map]
pub static ICMP_WINDOW: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// Dropped packets sampled for `xlb drops` (`lb_common::maps::DropSample` records; 1 MiB,
/// a few thousand records: the daemon drains it as they come). Program writes, daemon reads.
#[map]
pub static DROP_SAMPLES: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Slot 0: the drops this CPU may still sample. The daemon sets every CPU's to
/// `drop_samples` each second, the program takes one per sample: no clock read on the
/// drop path, and no sampling once no daemon reads the ring. Read on drops only.
#[map]
pub static DROP_BUDGET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU traffic per backend index. Program writes, daemon sums.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// VIP → what its removed backends carried (`lb_common::maps::MAP_VIP_RETIRED`). The
/// daemon's; the program never touches it.
#[map]
pub static VIP_RETIRED: HashMap<VipKey, TrafficStats> =
    HashMap::with_max_entries(MAX_VIP_ENTRIES, 0);

/// Backend index → active-flow estimate for least-connection scheduling. Updated with
/// atomic adds (one counter shared by all CPUs: the comparison needs the global figure).
#[map]
pub static BACKEND_ACTIVE: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU cursor into each VIP's round-robin sequence, by `vip_id`. Per CPU so that new
/// flows never contend on a shared counter.
#[map]
pub static RR_CURSORS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1024, 0);

/// (VIP id, QUIC server ID) → the backend that ID names (`lb_common::quic`), for VIPs with
/// `VIP_F_QUIC`. Daemon writes; looked up for such VIPs' new flows only.
#[map]
pub static QUIC_SERVERS: HashMap<QuicServerKey, QuicServer> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// VIP id → the new flows each CPU admits to it per second (`VIP_F_FLOW_LIMIT`), and to
/// each of its clients (`VIP_F_CLIENT_LIMIT`). Daemon writes; the loader sizes it to the
/// VIPs with tables. Read on such VIPs' new flows only.
#[map]
pub static VIP_FLOW_LIMITS: Array<FlowLimits> = Array::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// VIP id → the new flows its limits turned away on this CPU. Program writes, daemon
/// reads; the loader sizes it like `VIP_FLOW_LIMITS`.
#[map]
pub static VIP_LIMITED: PerCpuArray<LimitedFlows> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Counts a new flow of VIP `vip_id` that a limit turned away: its client's (`client`)
/// or the VIP's own.
#[inline(always)]
pub fn count_limited(vip_id: u32, client: bool) {
    if let Some(c) = VIP_LIMITED.get_ptr_mut(vip_id) {
        // SAFETY: this CPU's slot; only this CPU writes it while the program runs.
        unsafe {
            if client {
                (*c).client += 1;
            } else {
                (*c).vip += 1;
            }
        }
    }
}

/// The new flows from each client of a VIP with `VIP_F_CLIENT_LIMIT` in the current
/// second, all CPUs together (`lb_common::maps::ClientWindow`). Program only. Per-CPU LRU
/// lists (`BPF_F_NO_COMMON_LRU`): no global lock when a new client's window goes in.
#[map]
pub static CLIENT_WINDOWS: LruHashMap<ClientKey, ClientWindow> =
    LruHashMap::with_max_entries(CLIENT_WINDOWS_ENTRIES, BPF_F_NO_COMMON_LRU);

/// This CPU's new flows of each VIP in the current second, against `VIP_FLOW_LIMITS`.
/// Program only; sized like it.
#[map]
pub static VIP_FLOW_WINDOW: PerCpuArray<RateWindow> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// Egress interfaces other than the ingress one: ifindex → device, for `XDP_REDIRECT`.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Working state of the packet in flight, in map memory rather than on the stack.
///
/// The hit path (flow key, connection table, encapsulation) is one BPF function: every
/// BPF-to-BPF call costs a call, a return and the spills around them on each packet. The
/// verifier limits a call chain's combined stack to 512 bytes, and the slow paths (new-flow
/// scheduling, ICMP replies, FIB lookups) are called from that function, so its large
/// values live here instead. One slot per CPU; a program run never yields the CPU.
#[repr(C)]
pub struct Scratch {
    /// The packet's flow (also the IPv6 connection-table key: map memory is a valid key).
    pub flow: FlowKey,
    /// Its IPv4 connection-table key (IPv4 flows only).
    pub flow4: FlowKeyV4,
    /// The backend chosen for it.
    pub target: Target,
    /// Where its encapsulated frame goes.
    pub hop: NextHop,
    /// A new flow's connection-table entry, as recorded (map memory is a valid value) and
    /// cached; here rather than on `select::pick`'s stack, which shares the verifier's
    /// 512 bytes with the entry function's.
    pub conn: ConnEntry,
    /// An ICMP packet's parsed headers, for `icmp::route` (a global BPF function: it takes
    /// nothing from its caller's stack).
    pub l3: L3,
    /// A new flow's `SOURCE_RANGES` key (map memory is a valid key).
    pub source: Key<SourceRange>,
    /// A new flow's `CLIENT_WINDOWS` key (likewise).
    pub client: ClientKey,
}

impl Scratch {
    /// Writes the packet's flow and, for IPv4, its short key.
    #[inline(always)]
    pub fn set_flow(&mut self, flow: &FlowKey) {
        self.set_conn_key(flow);
        self.complete_flow(flow);
    }

    /// Writes what the connection-table lookup needs: the short key of an IPv4 flow, the
    /// full key of an IPv6 one. A hit needs nothing else; a miss must call
    /// [`Scratch::complete_flow`] before the scheduler reads `flow`.
    #[inline(always)]
    pub fn set_conn_key(&mut self, flow: &FlowKey) {
        if flow.family == lb_common::addr::FAMILY_V4 {
            self.set_v4_key(flow);
        } else {
            self.set_full_flow(flow);
        }
    }

    /// After [`Scratch::set_conn_key`]: writes the rest of what the scheduler reads, the
    /// whole flow of an IPv4 packet (an IPv6 flow's key already is the whole flow).
    #[inline(always)]
    pub fn complete_flow(&mut self, flow: &FlowKey) {
        if flow.family == lb_common::addr::FAMILY_V4 {
            self.set_full_flow(flow);
        }
    }

    /// `flow`, word by word: building the keys as structs and assigning them compiles to
    /// byte-wise BPF `memset` calls for the padding and to extra copies.
    #[inline(always)]
    fn set_full_flow(&mut self, flow: &FlowKey) {
        let ports = flow.ports_word();
        let w = core::ptr::addr_of_mut!(self.flow).cast::<[u32; 10]>();
        // SAFETY: FlowKey is repr(C), 40 bytes, 4-aligned, every bit pattern valid; the
        // words follow its layout (src, dst, ports, proto | family << 8 with zero padding).
        unsafe {
            *w = [
                flow.src[0],
                flow.src[1],
                flow.src[2],
                flow.src[3],
                flow.dst[0],
                flow.dst[1],
                flow.dst[2],
                flow.dst[3],
                ports,
                flow.proto_word(),
            ]
        };
    }

    /// `flow`'s IPv4 key, word by word (see [`Scratch::set_full_flow`]).
    #[inline(always)]
    fn set_v4_key(&mut self, flow: &FlowKey) {
        let w = core::ptr::addr_of_mut!(self.flow4).cast::<[u32; 4]>();
        // SAFETY: FlowKeyV4 is repr(C), 16 bytes, 4-aligned (src, dst, ports, proto with
        // zero padding; layout asserted below).
        unsafe {
            *w = [
                flow.src[0],
                flow.dst[0],
                flow.ports_word(),
                u32::from(flow.proto),
            ]
        };
    }
}

const _: () = assert!(
    core::mem::size_of::<FlowKey>() == 40
        && core::mem::size_of::<FlowKeyV4>() == 16
        && core::mem::offset_of!(FlowKey, sport_be) == 32
        && core::mem::offset_of!(FlowKey, proto) == 36
        && core::mem::offset_of!(FlowKeyV4, sport_be) == 8
        && core::mem::offset_of!(FlowKeyV4, proto) == 12,
    "set_flow writes the keys word by word in this layout"
);

/// See [`Scratch`].
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's [`Scratch`]. Its fields are written before they are read on every path.
#[inline(always)]
pub fn scratch() -> Result<*mut Scratch, Drop> {
    // A one-slot array always has slot 0: a miss would be a bug, counted as such.
    SCRATCH.get_ptr_mut(0).ok_or(Drop::Internal)
}

/// Counts one event in this CPU's `window`; false when the window holds more than `limit`
/// (0: no limit, and nothing is counted nor the clock read). `lb_common::rate_window`.
#[inline(always)]
pub fn within_rate(window: &PerCpuArray<RateWindow>, limit: u32) -> bool {
    within_rate_at(window, 0, limit)
}

/// A new flow of VIP `vip_id` (`VIP_F_FLOW_LIMIT`), counted in its window: false when this
/// CPU has admitted its `VIP_FLOW_LIMITS` share this second.
#[inline(always)]
pub fn vip_flow_admitted(vip_id: u32) -> bool {
    let limit = VIP_FLOW_LIMITS.get(vip_id).map_or(0, |l| l.vip);
    within_rate_at(&VIP_FLOW_WINDOW, vip_id, limit)
}

/// A new flow of VIP `vip_id` (`VIP_F_CLIENT_LIMIT`) from the client of the flow in `s`,
/// counted in the client's window: false when the balancer has admitted the VIP's
/// per-client limit from it this second. A client without a window gets a new one; when
/// the kernel cannot make it (it can: the LRU evicts), the flow is admitted.
#[inline(always)]
pub fn client_flow_admitted(s: *mut Scratch, vip_id: u32) -> bool {
    let limit = VIP_FLOW_LIMITS.get(vip_id).map_or(0, |l| l.client);
    if limit == 0 {
        return true;
    }
    // SAFETY: this CPU's scratch slot, its flow written by the caller; the key is built
    // there (map memory is a valid key), off the verifier's 512-byte stack.
    unsafe {
        let flow = &(*s).flow;
        (*s).client = ClientKey::new(vip_id, flow.family == lb_common::addr::FAMILY_V4, &flow.src);
        let now = bpf_ktime_get_coarse_ns();
        match CLIENT_WINDOWS.get_ptr_mut(&(*s).client) {
            Some(w) => {
                // Two CPUs at a window's end may both start the next one: a few flows'
                // accuracy, not worth a lock (lb_common::maps::ClientWindow).
                if now.wrapping_sub((*w).start_ns) >= WINDOW_NS {
                    (*w).start_ns = now;
                    (*w).events = 0;
                }
                let events = core::ptr::addr_of_mut!((*w).events);
                // SAFETY: an aligned u64 of the map value; one atomic add (XADD), as
                // select.rs counts active flows: the CPUs share the window.
                core::arch::asm!("lock *(u64 *)({p} + 0) += {d}", p = in(reg) events, d = in(reg) 1u64);
                events.read_volatile() <= u64::from(limit)
            }
            None => {
                let w = ClientWindow {
                    start_ns: now,
                    events: 1,
                };
                let _ = CLIENT_WINDOWS.insert(&(*s).client, &w, 0);
                true
            }
        }
    }
}

/// [`within_rate`] on slot `slot` of `window` (a slot past its end: no limit).
#[inline(always)]
fn within_rate_at(window: &PerCpuArray<RateWindow>, slot: u32, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    match window.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs; no
        // arguments to the clock helper.
        Some(w) => unsafe { (*w).admit(bpf_ktime_get_coarse_ns(), limit) },
        None => true,
    }
}
