//! Map keys and values shared by the XDP programs and user space, with their map names.
//!
//! Rules every type here follows: `#[repr(C)]`, explicit `_pad` fields (always zero),
//! integers for flags (the kernel may hold any bit pattern), byte order in the field name,
//! and a compile-time size check.

use crate::addr::AddrWords;

/// `BACKEND_ACTIVE`: backend index → active-flow estimate (`u64`, atomically updated by the
/// program for VIPs with [`VIP_F_COUNT_ACTIVE`]; the daemon reads it).
pub const MAP_BACKEND_ACTIVE: &str = "BACKEND_ACTIVE";
/// `RR_CURSORS`: per-CPU position in each VIP's round-robin sequence, by `vip_id`.
pub const MAP_RR_CURSORS: &str = "RR_CURSORS";
/// `VIPS`: [`VipKey`] → [`VipInfo`]. Written by the daemon.
pub const MAP_VIPS: &str = "VIPS";
/// `SOURCE_RANGES`: the client prefixes each VIP with [`VIP_F_SRC_RANGES`] admits, an LPM
/// trie over [`SourceRange`] (value: `u32`, unused). Written by the daemon.
pub const MAP_SOURCE_RANGES: &str = "SOURCE_RANGES";
/// Entries `SOURCE_RANGES` may hold, all VIPs together (allocated as written).
pub const MAX_SOURCE_RANGES: u32 = 65_536;
/// `BACKENDS`: backend index → [`Backend`] (array; index 0 is "no backend").
pub const MAP_BACKENDS: &str = "BACKENDS";
/// `LOOKUP`: the VIPs' lookup tables, slot → backend index, four slots to an entry
/// ([`crate::lookup`]).
pub const MAP_LOOKUP: &str = "LOOKUP";
/// `CONNS`: IPv6 flows, [`crate::flow::FlowKey`] → [`ConnEntry`] (LRU, per-CPU lists).
pub const MAP_CONNS: &str = "CONNS";
/// `CONNS_V4`: IPv4 flows, [`crate::flow::FlowKeyV4`] → [`ConnEntry`] (LRU, per-CPU lists).
pub const MAP_CONNS_V4: &str = "CONNS_V4";
/// The balancer's per-CPU flow cache of IPv4 flows (program only; user space sizes it at
/// load time).
pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
/// The same for IPv6 flows.
pub const MAP_FLOW_CACHE_V6: &str = "FLOW_CACHE_V6";
/// Sets of the flow cache for each CPU: the loader gives `FLOW_CACHE` this many entries
/// per possible CPU.
pub const FLOW_CACHE_SETS: u32 = 1 << FLOW_CACHE_SET_BITS;
/// log2 of [`FLOW_CACHE_SETS`].
pub const FLOW_CACHE_SET_BITS: u32 = 12;
/// Sets of the IPv6 flow cache for each CPU (two cache lines each).
pub const FLOW_CACHE_V6_SETS: u32 = 1 << FLOW_CACHE_V6_SET_BITS;
/// log2 of [`FLOW_CACHE_V6_SETS`].
pub const FLOW_CACHE_V6_SET_BITS: u32 = 11;
/// Packets a flow-cache entry serves before its flow's next packet looks the connection
/// table up again (which refreshes the LRU and picks up changes), at most: see
/// [`FLOW_CACHE_MAX_AGE`].
pub const FLOW_CACHE_REFRESH: u16 = 128;
/// Jiffies after its fill from which a flow-cache entry no longer serves: the flow's next
/// packet looks the table up, so even a slow flow refreshes its LRU entry at least this
/// often while it sends (1 s at HZ 250, 0.25–2.5 s for HZ 1000–100). Fast flows are held
/// to [`FLOW_CACHE_REFRESH`] packets instead.
pub const FLOW_CACHE_MAX_AGE: u16 = 250;
/// `CONFIG`: single slot → [`LbConfig`].
pub const MAP_CONFIG: &str = "CONFIG";
/// `STATS`: per-CPU `u64` counters indexed by [`crate::counters`] slots.
pub const MAP_STATS: &str = "STATS";
/// `BACKEND_STATS`: per-CPU [`TrafficStats`] indexed by backend index.
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
/// `VIP_FLOW_LIMITS`: VIP id → [`FlowLimits`], the new flows each CPU admits per second to
/// a VIP with [`VIP_F_FLOW_LIMIT`], and to each of its clients with [`VIP_F_CLIENT_LIMIT`].
/// Written by the daemon; sized at load to the VIPs with tables.
pub const MAP_VIP_FLOW_LIMITS: &str = "VIP_FLOW_LIMITS";
/// `VIP_LIMITED`: per-CPU VIP id → [`LimitedFlows`], the new flows each VIP's limits
/// turned away. Program writes, daemon reads (and zeroes a slot a new VIP takes); sized
/// like `VIP_FLOW_LIMITS`.
pub const MAP_VIP_LIMITED: &str = "VIP_LIMITED";
/// `CLIENT_WINDOWS`: LRU hash [`ClientKey`] → [`ClientWindow`], the new flows from each
/// client of a VIP with [`VIP_F_CLIENT_LIMIT`] in the current second, all CPUs together.
/// Program only. Shared rather than per CPU: a per-CPU map preallocates every entry's value
/// once per possible CPU (65 536 × 16 bytes × 128 CPUs is 128 MB on a large host).
pub const MAP_CLIENT_WINDOWS: &str = "CLIENT_WINDOWS";
/// Clients `CLIENT_WINDOWS` keeps windows for: more than open flows to limited VIPs in one
/// second, and the LRU evicts the quietest, whose next flow opens a fresh window (a flood
/// from that many addresses is what the VIP's own limit is for).
pub const CLIENT_WINDOWS_ENTRIES: u32 = 65_536;
/// `VIP_FLOW_WINDOW`: per-CPU VIP id → [`crate::rate_window::RateWindow`], each CPU's new
/// flows of each VIP in the current second. Program only; sized like `VIP_FLOW_LIMITS`.
pub const MAP_VIP_FLOW_WINDOW: &str = "VIP_FLOW_WINDOW";
/// `VIP_RETIRED`: [`VipKey`] → [`TrafficStats`], what each VIP's removed backends carried
/// (a VIP's figures are its backends' added up, and a removed backend's slot is cleared for
/// reuse). The daemon's record, which the program never touches: it lives in the object so
/// that it is pinned and inherited with the counters it completes (`--state-dir`).
pub const MAP_VIP_RETIRED: &str = "VIP_RETIRED";
/// `TX_PORTS`: devmap (hash) ifindex → ifindex, egress interfaces for `XDP_REDIRECT`.
pub const MAP_TX_PORTS: &str = "TX_PORTS";
/// `DROP_SAMPLES`: ring buffer of [`DropSample`]s, dropped packets the balancer shows to
/// `xlb drops`. The program writes; the daemon reads.
pub const MAP_DROP_SAMPLES: &str = "DROP_SAMPLES";
/// `DROP_BUDGET`: per-CPU single slot → `u32`, the drops a CPU may still sample; the
/// daemon sets every CPU's to `drop_samples` each second, the program takes one a sample.
pub const MAP_DROP_BUDGET: &str = "DROP_BUDGET";
/// `DECAP_ADDRS`: [`DecapAddr`] → `u32` (1): addresses the decap program accepts tunnels for.
pub const MAP_DECAP_ADDRS: &str = "DECAP_ADDRS";
/// `GUE_PORT`: single slot → `u32`, the UDP port on which the decap program takes GUE
/// tunnels (`xlb decap --gue-port`); 0: none, IP-in-IP only.
pub const MAP_GUE_PORT: &str = "GUE_PORT";
/// `CLAMP_SOURCES`: [`DecapAddr`] → `u32` (1): the addresses (the VIPs on `lo`) whose
/// outgoing SYN-ACKs `xlb_mss_clamp` clamps.
pub const MAP_CLAMP_SOURCES: &str = "CLAMP_SOURCES";
/// `MSS_CLAMP`: single slot → [`crate::mss::MssClamp`], the MSS those SYN-ACKs may carry.
pub const MAP_MSS_CLAMP: &str = "MSS_CLAMP";

/// Largest lookup table (a prime). Each table id owns this many slots of `LOOKUP`
/// ([`crate::lookup::ENTRIES_PER_TABLE`] entries).
pub const MAX_TABLE_SIZE: u32 = 65_537;
/// Default lookup-table size (Maglev's `M`; a prime, ≥ 100 × the number of backends).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Entries in `VIPS` (address-only marker entries included).
pub const MAX_VIP_ENTRIES: u32 = 16_384;
/// Default number of VIPs with a lookup table (`LOOKUP` holds two tables per VIP).
/// User space may change it at load time; BPF never assumes it.
pub const DEFAULT_MAX_VIPS: u32 = 64;
/// Slots in `BACKENDS` (index 0 is never used).
pub const MAX_BACKENDS: u32 = 4096;
/// Default size of each connection table (IPv4 and IPv6 flows have one each).
pub const DEFAULT_MAX_CONNS: u32 = 1 << 20;
/// Extension headers the IPv6 parser walks before it gives up.
pub const MAX_IPV6_EXT_HEADERS: u32 = 6;

/// `VipKey::proto` of an address-only marker entry, which says "this address is a VIP"
/// for traffic that has no ports (fragments, ICMP).
pub const PROTO_ANY: u8 = 0;

/// What a client connects to: address, port, protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// VIP address, raw network-order words.
    pub addr: AddrWords,
    /// Port, network byte order. 0 with a protocol: an all-ports VIP, the service of its
    /// address's packets that no VIP on their own port takes (while [`CFG_F_ALL_PORTS`] is
    /// set); 0 with [`PROTO_ANY`]: an address-only marker.
    pub port_be: u16,
    /// IP protocol (6 TCP, 17 UDP; [`PROTO_ANY`] in address-only markers).
    pub proto: u8,
    /// Address family.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// `VipInfo::flags`: pick the backend by the client address only (`sh`), not the 5-tuple.
pub const VIP_F_SRC_HASH: u32 = 1 << 0;
/// `VipInfo::flags`: outer source address derived from the flow hash (within the configured
/// prefix) instead of the balancer's own address, so routers downstream can spread load.
pub const VIP_F_HASHED_SRC: u32 = 1 << 1;
/// `VipInfo::flags`: this entry is an address-only marker, not a service.
pub const VIP_F_ADDR_ONLY: u32 = 1 << 2;
/// `VipInfo::flags` (`rr`, `wrr`): the table is a smooth weighted round-robin *sequence*
/// (`table_size` entries) that each CPU walks with its own cursor, instead of a hash table.
pub const VIP_F_SEQUENCE: u32 = 1 << 3;
/// `VipInfo::flags` (`lc`, `wlc`): pick the less loaded of two distinct candidates from the
/// table (power of two choices), comparing active flows per unit of weight.
pub const VIP_F_LEAST_CONN: u32 = 1 << 4;
/// `VipInfo::flags` (`lc`, `wlc`, `lrt`): keep `BACKEND_ACTIVE` up to date — +1 per new flow,
/// −1 the first time the client's FIN or RST of a recorded flow is seen.
pub const VIP_F_COUNT_ACTIVE: u32 = 1 << 5;

/// `VipInfo::flags`: new flows only from the client prefixes `SOURCE_RANGES` holds for
/// the VIP; others are dropped (`source_denied`).
pub const VIP_F_SRC_RANGES: u32 = 1 << 6;
/// `VipInfo::flags` (`stateless: true`, `maglev` and `sh` only): every packet goes to the
/// backend its hash picks and nothing is recorded (Katran's LRU bypass, IPVS's one-packet
/// scheduling): for request/response UDP services whose every query is a new flow.
pub const VIP_F_STATELESS: u32 = 1 << 7;
/// `VipInfo::flags` (UDP VIPs with `quic`): a short-header QUIC packet the connection table
/// does not know goes to the backend its connection ID names (`QUIC_SERVERS`), so that a
/// connection's new path (a client that moved, a NAT that rebound) stays on its server.
/// The VIP's [`crate::quic::VipQuic`] is in the flags' bits 16..24.
pub const VIP_F_QUIC: u32 = 1 << 8;
/// `VipInfo::flags` (`new_flow_rate_limit`): each CPU admits at most
/// `VIP_FLOW_LIMITS[vip_id]` new flows of the VIP per second (`VIP_FLOW_WINDOW`); beyond,
/// they are dropped (`vip_flow_limit`). Recorded flows are never limited.
pub const VIP_F_FLOW_LIMIT: u32 = 1 << 9;
/// `VipInfo::flags` (`client_flow_rate_limit`): the balancer admits at most
/// `VIP_FLOW_LIMITS[vip_id].client` new flows of the VIP per second from each client (an
/// IPv4 address, an IPv6 /64: [`ClientKey`]; `CLIENT_WINDOWS`); beyond, they are dropped
/// (`client_flow_limit`), before they count against the VIP's own limit. Recorded flows are
/// never limited.
pub const VIP_F_CLIENT_LIMIT: u32 = 1 << 10;

/// A VIP's new-flow limits (`VIP_FLOW_LIMITS`), in new flows a second (the VIP's per CPU,
/// each client's in all); 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowLimits {
    /// All of the VIP's new flows (`new_flow_rate_limit`, [`VIP_F_FLOW_LIMIT`]).
    pub vip: u32,
    /// Each client's (`client_flow_rate_limit`, [`VIP_F_CLIENT_LIMIT`]).
    pub client: u32,
}
const _: () = assert!(core::mem::size_of::<FlowLimits>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no padding, any bit pattern valid.
unsafe impl aya::Pod for FlowLimits {}

/// New flows a VIP's limits turned away (`VIP_LIMITED`, per CPU; the daemon sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitedFlows {
    /// By the VIP's `new_flow_rate_limit` (`vip_flow_limit`).
    pub vip: u64,
    /// By its `client_flow_rate_limit` (`client_flow_limit`).
    pub client: u64,
}
const _: () = assert!(core::mem::size_of::<LimitedFlows>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no padding, any bit pattern valid.
unsafe impl aya::Pod for LimitedFlows {}

impl core::ops::Add for LimitedFlows {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            vip: self.vip + o.vip,
            client: self.client + o.client,
        }
    }
}

/// One client's window (`CLIENT_WINDOWS` value), shared by the CPUs: its count is added to
/// atomically; a window's start may be reset by two CPUs at once at its end, which costs
/// the next second a few flows' accuracy at most.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientWindow {
    /// Start of the window (`CLOCK_MONOTONIC` ns).
    pub start_ns: u64,
    /// New flows seen in it, admitted or not.
    pub events: u64,
}
const _: () = assert!(core::mem::size_of::<ClientWindow>() == 16);

/// Whom a per-client limit counts (`CLIENT_WINDOWS` key): the VIP, and the client's IPv4
/// address or IPv6 /64. Why /64 for IPv6: a host commonly has a /64 to itself and picks
/// addresses in it at will (privacy addresses, or an attacker's rotation), so a limit per
/// IPv6 address would limit nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientKey {
    /// The VIP's id.
    pub vip_id: u32,
    /// Address words (raw network order): IPv4 in word 0, an IPv6 /64 in words 0 and 1,
    /// the rest zero.
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<ClientKey>() == 20);

impl ClientKey {
    /// The key of a client at `src` (address words as in [`crate::flow::FlowKey`]) of VIP
    /// `vip_id`; `v4`: an IPv4 client.
    #[inline(always)]
    pub fn new(vip_id: u32, v4: bool, src: &[u32; 4]) -> Self {
        let addr = if v4 {
            [src[0], 0, 0, 0]
        } else {
            [src[0], src[1], 0, 0]
        };
        Self { vip_id, addr }
    }
}

/// The data of a `SOURCE_RANGES` key (an LPM trie: the kernel compares the first
/// `prefix_len` bits, in memory order). The VIP's id first, always compared whole
/// ([`SOURCE_RANGE_VIP_BITS`]), then the client's address as raw network-order words: an
/// IPv4 address is the first word, so its prefix bits come right after the id's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// `VipInfo::vip_id`.
    pub vip_id: u32,
    /// Address, raw network-order words (IPv4 in the first, the rest zero).
    pub addr: AddrWords,
}
const _: () = assert!(core::mem::size_of::<SourceRange>() == 20);

/// Bits of a `SOURCE_RANGES` key before the address: the VIP id.
pub const SOURCE_RANGE_VIP_BITS: u32 = 32;

/// A service's data-plane settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// The VIP's small integer id (index into `RR_CURSORS`).
    pub vip_id: u32,
    /// Which lookup table serves new flows. The daemon writes the other of the VIP's two
    /// tables and then flips this id in one map update, so no packet sees a half-written table.
    pub table_id: u32,
    /// Slots in that table (a prime ≤ [`MAX_TABLE_SIZE`]); 0 means "no backend".
    pub table_size: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 16);

/// `Backend::flags`: the backend may carry flows (existing ones and, if it is in the
/// lookup table, new ones). Cleared when it dies or is removed: pinned flows move.
pub const BACKEND_F_ACTIVE: u32 = 1 << 0;
/// `Backend::flags`: `ifindex`, `dmac` and `smac` hold a resolved next hop; without it the
/// program asks `bpf_fib_lookup` per packet.
pub const BACKEND_F_NEXTHOP: u32 = 1 << 1;
/// `Backend::flags`: active but out of the lookup table (drained, or weight 0): it keeps its
/// flows but takes no new connections, also not from a client that reuses a recorded
/// 5-tuple, so a TCP SYN (without ACK) pinned to it is scheduled anew.
pub const BACKEND_F_NO_NEW: u32 = 1 << 2;
/// `Backend::flags`: tunnel to it with GUE (an outer UDP header, port
/// `LbConfig::gue_port_be`, in front of the client's packet: GUE's variant 1, direct IP)
/// rather than IP-in-IP, so that the backend's NIC spreads tunnels over its receive
/// queues by the outer ports, which carry the flow hash.
pub const BACKEND_F_GUE: u32 = 1 << 3;

/// A real server behind VIPs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Backend address (outer destination), raw network-order words.
    pub addr: AddrWords,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Egress interface of the resolved next hop (valid with [`BACKEND_F_NEXTHOP`]).
    pub ifindex: u32,
    /// Next hop's MAC (valid with [`BACKEND_F_NEXTHOP`]).
    pub dmac: [u8; 6],
    /// Our MAC on `ifindex` (valid with [`BACKEND_F_NEXTHOP`]).
    pub smac: [u8; 6],
    /// Address family of `addr`.
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
    /// Effective weight (≥ 1) used by weighted least-connection comparisons.
    pub weight: u32,
    /// Bumped every time the slot is given to a new backend: a connection entry recorded
    /// for an earlier holder of the slot no longer matches, so a reused index never
    /// inherits another backend's flows.
    pub generation: u32,
    /// The daemon's tag of the slot's VIP (a hash of its address, port and protocol), for
    /// the next daemon that inherits the connection tables (`xlb run --state-dir`): it gives
    /// the same (VIP, address) the same slot. The program never reads it.
    pub vip_tag: u32,
    /// Changes whenever the slot gets a new holder, and whenever its backend takes new flows
    /// again after a time it did not (down, drained, weight 0): the program's flow cache
    /// serves an entry only under the value it was filled with, and only for a backend that
    /// takes new flows. In such a time another CPU may have moved the flow in the connection
    /// table, so a cached copy from before it must not come back into use.
    pub cache_epoch: u32,
    /// Largest IP packet the path to the next hop carries (valid with
    /// [`BACKEND_F_NEXTHOP`]): the egress interface's MTU, or the route's if it sets one.
    /// A backend behind another interface than the balancer's own link may have a smaller
    /// one; the program answers too-big packets with the smaller of this and
    /// `LbConfig::mtu`. 0 = `LbConfig::mtu` alone (no next hop yet, or a slot written by a
    /// daemon that predates the field).
    pub mtu: u32,
    /// Most active flows a least-connection scheduler (`VIP_F_LEAST_CONN`) gives the backend: at
    /// `BACKEND_ACTIVE` ≥ this it takes no new flows (`max_conns`). 0 = no limit (also a
    /// slot written by a daemon that predates the field, where it was padding).
    pub max_active: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 64);

/// `ConnEntry::flags`: the flow was counted in `BACKEND_ACTIVE`.
pub const CONN_F_COUNTED: u32 = 1 << 0;
/// `ConnEntry::flags`: the client's FIN/RST was seen and the count taken back.
pub const CONN_F_CLOSED: u32 = 1 << 1;
/// `ConnEntry::flags`: the flow's VIP derives outer sources from the flow hash
/// (`VIP_F_HASHED_SRC`), copied so that a hit needs no VIP lookup.
pub const CONN_F_HASHED_SRC: u32 = 1 << 2;

/// A recorded flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// Backend index the flow is pinned to.
    pub backend: u32,
    /// The flow's hash, kept so hits need not recompute it (outer flow label / source).
    pub hash: u32,
    /// `CONN_F_*` bits.
    pub flags: u32,
    /// The flow's VIP (`VipInfo::vip_id`), for the daemon's view of the table.
    pub vip_id: u32,
    /// `Backend::generation` of the slot when the flow was recorded.
    pub generation: u32,
    /// When the table last saw the flow, in seconds of `CLOCK_MONOTONIC_COARSE` (0: never
    /// stamped, an entry of a daemon that stamped least-connection flows only). Written
    /// when the flow is recorded and on its table hits, which a sending flow makes at least
    /// once per flow-cache age (`FLOW_CACHE_MAX_AGE`); the daemon's recount leaves
    /// least-connection flows idle for longer than their protocol's timeout uncounted, and
    /// `xlb flows` shows every flow's idle time.
    pub seen_s: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 24);

/// `LbConfig::flags`: answer oversized packets with ICMP frag-needed / packet-too-big.
pub const CFG_F_ICMP_TOO_BIG: u32 = 1 << 0;

/// `LbConfig::flags`: benchmark builds only — after encapsulating, undo it, so that
/// `BPF_PROG_TEST_RUN`'s repeat mode (which reuses one buffer) sees the same input every
/// time. `cargo xtask bench` measures and reports what the undo costs. Never set by `xlb run`.
pub const CFG_F_BENCH_RESTORE: u32 = 1 << 1;

/// `LbConfig::flags`: benchmark builds only, with [`CFG_F_BENCH_RESTORE`] — the restore also
/// adds one to the client port's raw halfword, so that each repeat of a test run is a new
/// flow (the bench measures new flows in repeat mode, like hits). Never set by `xlb run`.
pub const CFG_F_BENCH_NEW_FLOWS: u32 = 1 << 2;

/// `LbConfig::flags`: some VIP serves every port of its address (`VipKey::port_be` 0): a
/// new flow no VIP on its port takes is looked up once more on port 0. Set by the daemon
/// while such a VIP exists, so that other traffic pays no second lookup.
pub const CFG_F_ALL_PORTS: u32 = 1 << 3;

/// `LbConfig::flags`: answer ICMP / ICMPv6 echo requests to VIP addresses (`icmp_echo`).
pub const CFG_F_ICMP_ECHO: u32 = 1 << 4;

/// Balancer-wide settings (one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Outer IPv4 source for IPv4 tunnels (network order word); 0 = not configured.
    pub src_v4: u32,
    /// Network-order prefix for flow-hash derived IPv4 sources (`VIP_F_HASHED_SRC`).
    pub hashed_src_v4: u32,
    /// Host-order mask of the bits of `hashed_src_v4` the flow hash may set.
    pub hashed_src_v4_hostmask: u32,
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// Outer IPv6 source for IPv6 tunnels.
    pub src_v6: AddrWords,
    /// Prefix for flow-hash derived IPv6 sources: the hash replaces the last word.
    pub hashed_src_v6: AddrWords,
    /// Largest IP packet (bytes) the egress link carries; 0 = do not check.
    pub mtu: u32,
    /// New flows each CPU records per second; beyond, hash-scheduled VIPs' new flows go
    /// unrecorded (`lb_common::rate_window`). 0 = no limit.
    pub record_rate_limit: u32,
    /// ICMP errors (frag-needed, packet-too-big) each CPU sends per second; beyond, the
    /// packet is dropped (`too_big_rate_limited`). 0 = no limit.
    pub icmp_rate_limit: u32,
    /// Destination port of GUE tunnels (`BACKEND_F_GUE`), network order.
    pub gue_port_be: u16,
    /// Always zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<LbConfig>() == 64);

/// The outer UDP source port of a GUE tunnel carrying a flow of hash `hash`: in the dynamic
/// range (49152..=65535), so that receivers' RSS and routers' ECMP spread flows while no
/// well-known service sees them as its own.
pub const fn gue_source_port(hash: u32) -> u16 {
    0xc000 | (hash ^ (hash >> 16)) as u16 & 0x3fff
}

/// Packets and bytes per backend slot (per-CPU; user space sums, and adds a VIP's slots up
/// for the VIP's figures).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes of the client's IP packets forwarded (before encapsulation).
    pub bytes: u64,
    /// New flows assigned.
    pub new_flows: u64,
}

impl core::ops::Add for TrafficStats {
    type Output = TrafficStats;

    fn add(self, o: TrafficStats) -> TrafficStats {
        TrafficStats {
            packets: self.packets.wrapping_add(o.packets),
            bytes: self.bytes.wrapping_add(o.bytes),
            new_flows: self.new_flows.wrapping_add(o.new_flows),
        }
    }
}
const _: () = assert!(core::mem::size_of::<TrafficStats>() == 24);

/// A local address the decap program accepts tunnels for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapAddr {
    /// Address, raw network-order words.
    pub addr: AddrWords,
    /// Address family.
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<DecapAddr>() == 20);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all): repr(C), integer fields only, explicit padding, any bit pattern valid.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for DecapAddr {}
    unsafe impl aya::Pod for SourceRange {}
}

/// Bytes of a dropped frame a [`DropSample`] keeps: Ethernet, a VLAN tag, an IPv6 header
/// with an extension header or two, and the TCP header, enough to tell a packet's flow and
/// its fault.
pub const DROP_CAPTURE: usize = 128;

/// One dropped packet as the balancer saw it (a `DROP_SAMPLES` record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropSample {
    /// When it was dropped (`CLOCK_MONOTONIC` ns).
    pub time_ns: u64,
    /// Its drop reason's slot ([`crate::counters::Drop`]).
    pub reason: u32,
    /// The interface it came in on.
    pub ifindex: u32,
    /// The whole frame's length.
    pub frame_len: u32,
    /// Bytes of it in `frame` (at most [`DROP_CAPTURE`]); the rest of `frame` is not
    /// written.
    pub captured: u32,
    /// The frame's first `captured` bytes.
    pub frame: [u8; DROP_CAPTURE],
}
const _: () = assert!(core::mem::size_of::<DropSample>() == 24 + DROP_CAPTURE);

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel keeps 15 bytes of a map's name (`BPF_OBJ_NAME_LEN`): what `bpftool` shows
    /// and what finding a program's map by name (the fixtures, the bench) compares with.
    #[test]
    fn map_names_fit_the_kernel() {
        for name in [
            MAP_BACKEND_ACTIVE,
            MAP_RR_CURSORS,
            MAP_VIPS,
            MAP_SOURCE_RANGES,
            MAP_BACKENDS,
            MAP_LOOKUP,
            MAP_CONNS,
            MAP_CONNS_V4,
            MAP_FLOW_CACHE,
            MAP_FLOW_CACHE_V6,
            MAP_CONFIG,
            MAP_STATS,
            MAP_BACKEND_STATS,
            MAP_VIP_RETIRED,
            MAP_TX_PORTS,
            MAP_DROP_SAMPLES,
            MAP_DROP_BUDGET,
            MAP_DECAP_ADDRS,
        ] {
            assert!(name.len() <= 15, "{name}: {} bytes", name.len());
        }
    }
}
