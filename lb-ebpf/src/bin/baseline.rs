//! Baseline XDP programs: the floors `cargo xtask bench` measures xlb against, the
//! `XDP_PASS` program test topologies attach to veth peers (veth delivers `XDP_TX` frames
//! only to a peer that runs an XDP program), and the bench's
//! traffic generator `xlb_gen` and hop-only floor `xlb_hop`.
#![no_std]
#![no_main]

// Links the shared panic handler.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use lb_ebpf as _;

/// Passes every frame to the stack.
#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame: the receive ceiling.
#[xdp]
pub fn xlb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Sends every frame back out untouched: the one-arm forwarding ceiling.
#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Bytes of the generator's frame template (a 64-byte frame, FCS not included).
pub const GEN_FRAME_LEN: usize = 64;

/// What `xlb_gen` sends. Mirrored by `bench/src/forward.rs` (same layout, same size check).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenConfig {
    /// The whole frame, written over every frame before the flow fields vary.
    pub frame: [u8; GEN_FRAME_LEN],
    /// Distinct source ports to cycle through (0 counts as 1).
    pub flows: u32,
    /// First source port (host order; the low 16 bits are used).
    pub sport_base: u32,
    /// Byte offset of the L4 source port in `frame` (34 for IPv4, 54 for IPv6).
    pub sport_off: u32,
    /// Verdict: `XDP_TX` (send to the peer) or `XDP_DROP` (generator-alone cost).
    pub action: u32,
    /// 1: a flood, every frame a flow of its own: the IPv4 source address's low 16 bits
    /// count the rounds of the port cycle (`seq / flows`), and the header checksum follows.
    /// IPv4 templates only.
    pub flood: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 84);

/// Offsets in an untagged IPv4 template: the header checksum, the source's low half.
const GEN_IP_CSUM: usize = 14 + 10;
const GEN_IP_SRC_LOW: usize = 14 + 14;

/// Slot 0: the generator's template and settings. Written by the bench.
#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Sequence number: picks each frame's source port (and in a flood its source). One for
/// all CPUs, not one per CPU: the bench's thread may run its calls on either CPU, and a
/// flood must not repeat on one CPU the flows it sent from the other. One generator call
/// runs at a time, so plain increments do.
#[map]
static GEN_SEQ: Array<u32> = Array::with_max_entries(1, 0);

/// Traffic generator for `BPF_PROG_TEST_RUN` with live frames. The kernel recycles
/// live-frame pages without re-initialising them, and whatever the frame went through last
/// time (our own encapsulation on the far side) may have rewritten it, so every frame gets
/// the full template first, then its source port: `sport_base + seq % flows`.
#[xdp]
pub fn xlb_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let data = ctx.data();
    if data + GEN_FRAME_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let words = GEN_FRAME_LEN / 8;
    let src = cfg.frame.as_ptr().cast::<u64>();
    let dst = data as *mut u64;
    for i in 0..words {
        // SAFETY: i < 8 words = GEN_FRAME_LEN bytes, checked against data_end above;
        // the source is the map value of that size.
        unsafe { dst.add(i).write_unaligned(src.add(i).read_unaligned()) };
    }
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: one generator call at a time (see GEN_SEQ); a plain read and write.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flows = if cfg.flows == 0 { 1 } else { cfg.flows };
    let sport = (cfg.sport_base.wrapping_add(n % flows) & 0xffff) as u16;
    // Masked so the verifier sees a bounded offset; the 2-byte write is checked again.
    let off = (cfg.sport_off as usize) & (GEN_FRAME_LEN - 1);
    if data + off + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: checked against data_end just above.
    unsafe { ((data + off) as *mut u16).write_unaligned(sport.to_be()) };
    if cfg.flood != 0 {
        let be = |at: usize| u32::from(u16::from_be_bytes([cfg.frame[at], cfg.frame[at + 1]]));
        let (old_src, old_sum) = (be(GEN_IP_SRC_LOW), be(GEN_IP_CSUM));
        let src = old_src.wrapping_add(n / flows) & 0xffff;
        // RFC 1624: HC' = ~(~HC + ~m + m').
        let mut sum = (!old_sum & 0xffff) + (!old_src & 0xffff) + src;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let csum = !(sum as u16);
        // SAFETY: both offsets lie within the GEN_FRAME_LEN bytes checked above.
        unsafe {
            ((data + GEN_IP_SRC_LOW) as *mut u16).write_unaligned((src as u16).to_be());
            ((data + GEN_IP_CSUM) as *mut u16).write_unaligned(csum.to_be());
        }
    }
    match cfg.action {
        xdp_action::XDP_DROP => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_TX,
    }
}

/// `xlb_hop`'s next hops: new Ethernet addresses, destination MAC then source MAC, one
/// slot for each of the first `HOP_COUNT[0]` backends.
#[map]
static HOP_MACS: Array<[u8; 12]> = Array::with_max_entries(HOP_SLOTS, 0);

/// Slot 0: how many of `HOP_MACS`' slots are set (1..=`HOP_SLOTS`; others: slot 0 only).
#[map]
static HOP_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Next hops `xlb_hop` can spread over.
const HOP_SLOTS: u32 = 8;

/// EtherType of IPv4, network order as read from the frame.
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

/// The bench's hop-only floor: bounces IPv4 frames to a next hop (MAC rewrite and `XDP_TX`,
/// no encapsulation, no table), spread over the backends by the client's port as a
/// balancer spreads connections: the servers then do the same work as behind xlb (all of
/// them, each a share), and only the hop differs. The port is the first 16 bits after the
/// IPv4 header (TCP and UDP); a frame too short for it goes to the first. Everything else
/// (ARP) goes to the stack, so the host stays reachable.
#[xdp]
pub fn xlb_hop(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    if data + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 14-byte Ethernet header was checked against data_end above.
    let ethertype = unsafe { ((data + 12) as *const u16).read_unaligned() };
    if ethertype != ETH_P_IP_BE {
        return xdp_action::XDP_PASS;
    }
    let count = HOP_COUNT.get(0).copied().unwrap_or(1);
    let slot = if (2..=HOP_SLOTS).contains(&count) && data + 15 <= ctx.data_end() {
        // SAFETY: byte 14, the IPv4 header's first, was checked above.
        let ihl = usize::from(unsafe { *((data + 14) as *const u8) } & 0x0f);
        let port_at = data + 14 + ihl * 4;
        if port_at + 2 <= ctx.data_end() {
            // SAFETY: the two bytes at `port_at` were checked against data_end above.
            let port = unsafe { (port_at as *const u16).read_unaligned() };
            u32::from(u16::from_be(port)) % count
        } else {
            0
        }
    } else {
        0
    };
    let Some(macs) = HOP_MACS.get(slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above; 12 bytes of the checked header.
    unsafe { (data as *mut [u8; 12]).write_unaligned(*macs) };
    xdp_action::XDP_TX
}

/// Bytes of `xlb_encap`'s outer headers: Ethernet and IPv4.
pub const ENCAP_HDR_LEN: usize = 34;

/// Slot 0: `xlb_encap`'s new Ethernet header and outer IPv4 header, written by the bench.
#[map]
static ENCAP_HDR: Array<[u16; ENCAP_HDR_LEN / 2]> = Array::with_max_entries(1, 0);

/// The forwarding bench's encapsulation floor: IP-in-IP and nothing else. Grows the frame
/// by an IPv4 header, writes the bench's Ethernet and outer IPv4 headers (complete for its
/// fixed 64-byte frames: total length and checksum included) and bounces it. What any
/// IP-in-IP DSR balancer pays on this path before it decides anything.
#[xdp]
pub fn xlb_encap(ctx: XdpContext) -> u32 {
    encap(&ctx)
}

/// test_run's floor under xlb's restored hit (`CFG_F_BENCH_RESTORE`): `xlb_encap`'s
/// IP-in-IP, then undone as xlb's bench restore undoes it (the outer IPv4 header stripped,
/// the Ethernet header written again) and the frame dropped, so that repeat mode reuses
/// it. The helper calls and header writes of a restored hit, without a decision: xlb's hit
/// less this is what its decisions cost.
#[xdp]
pub fn xlb_encap_undo(ctx: XdpContext) -> u32 {
    let verdict = encap(&ctx);
    if verdict != xdp_action::XDP_TX {
        return verdict;
    }
    let Some(hdr) = ENCAP_HDR.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: helper call on our own context; every later access is checked again.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, 20) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let data = ctx.data();
    if data + 14 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let dst = data as *mut u16;
    for (i, w) in hdr.iter().take(7).enumerate() {
        // SAFETY: i < 7 halfwords = 14 bytes, checked against data_end above.
        unsafe { dst.add(i).write(*w) };
    }
    xdp_action::XDP_DROP
}

/// `xlb_encap`'s work: the frame grown by an IPv4 header and `ENCAP_HDR` written at its
/// front; `XDP_TX`, or `XDP_ABORTED` when it cannot be done.
#[inline(always)]
fn encap(ctx: &XdpContext) -> u32 {
    let Some(hdr) = ENCAP_HDR.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: helper call on our own context; every later access is checked again.
    if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_head(ctx.ctx, -20) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let data = ctx.data();
    if data + ENCAP_HDR_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let dst = data as *mut u16;
    for (i, w) in hdr.iter().enumerate() {
        // SAFETY: i < 17 halfwords = ENCAP_HDR_LEN bytes, checked against data_end above;
        // frames start 2-byte aligned.
        unsafe { dst.add(i).write(*w) };
    }
    xdp_action::XDP_TX
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
