//! IP-in-IP encapsulation towards a backend: IPv4-in-IPv4, IPv6-in-IPv4 (proto 41),
//! IPv4-in-IPv6 and IPv6-in-IPv6, or the same with a UDP header between the two (GUE's
//! variant 1, `BACKEND_F_GUE`; over IPv6 its UDP checksum from the headers alone:
//! gue_checksum.rs),
//! then out through `XDP_TX` or `XDP_REDIRECT`.
//!
//! Every decision that can fail (outer source, next hop, egress port) is taken before the
//! frame is touched, so a failure drops an intact frame, never a half-rewritten one. The
//! inner packet is left byte-for-byte as the client sent it (no TTL decrement: the tunnel
//! is one hop, like Katran and IPVS-TUN).

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    addr::FAMILY_V4,
    counters::{Counters, Drop, Event},
    maps::{
        gue_source_port, Backend, LbConfig, BACKEND_F_GUE, BACKEND_F_NEXTHOP,
        CFG_F_BENCH_NEW_FLOWS, CFG_F_BENCH_RESTORE,
    },
};
use lb_ebpf::{
    csum,
    parse::{
        eth::{ETH_HLEN, VLAN_HLEN},
        ipv4::{Ipv4Hdr, IPV4_HLEN, IP_DF},
        ipv6::{Ipv6Hdr, IPV6_HLEN},
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, L3,
    },
    ptr::{fits, frame_len, ptr_at_mut, read},
    stats::{bump, bump_in},
    subprog::{pack, unpack},
};

use crate::{
    account,
    maps::{STATS, TX_PORTS},
    select::Target,
};

/// TTL / hop limit of the outer header.
pub const OUTER_TTL: u8 = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// The UDP header of a GUE tunnel.
pub const UDP_HLEN: usize = 8;

/// Bytes the outer headers add for this backend: its family's IP header, and a UDP header
/// for GUE.
#[inline(always)]
pub fn overhead(backend: &Backend) -> usize {
    let ip = if backend.family == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    ip + udp_len(backend)
}

/// The UDP header's length in a tunnel to `backend`: [`UDP_HLEN`] for GUE, else 0.
/// Arithmetic rather than a branch: the verifier then carries one bounded length through
/// the rest of the hit path instead of walking it once for each tunnel kind (a branch here
/// took the program from 480 000 verified instructions to 625 000).
#[inline(always)]
fn udp_len(backend: &Backend) -> usize {
    const _: () = assert!(BACKEND_F_GUE == 1 << 3 && UDP_HLEN == 1 << 3);
    (backend.flags & BACKEND_F_GUE) as usize
}

/// Where the encapsulated frame goes: the egress interface and the first 12 bytes of the
/// new Ethernet header (destination MAC, then source MAC) as three words, so that copying
/// them takes three loads instead of a call to BPF's byte-by-byte memmove.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct NextHop {
    ifindex: u32,
    macs: [u32; 3],
}

impl NextHop {
    /// The next hop the daemon resolved for `backend` (`BACKEND_F_NEXTHOP`).
    #[inline(always)]
    fn cached(backend: &Backend) -> NextHop {
        const MACS: usize = core::mem::offset_of!(Backend, dmac);
        const _: () = assert!(
            MACS % 4 == 0 && core::mem::offset_of!(Backend, smac) == MACS + 6,
            "Backend keeps dmac, smac back to back and word-aligned"
        );
        let p = (backend as *const Backend)
            .cast::<u8>()
            .wrapping_add(MACS)
            .cast::<u32>();
        // SAFETY: the three words lie inside `backend` (checked above) and are aligned.
        let macs = unsafe { [p.read(), p.add(1).read(), p.add(2).read()] };
        NextHop {
            ifindex: backend.ifindex,
            macs,
        }
    }

    /// From a FIB lookup's answer.
    #[inline(always)]
    fn from_fib(ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> NextHop {
        NextHop {
            ifindex,
            macs: [
                u32::from_le_bytes([dmac[0], dmac[1], dmac[2], dmac[3]]),
                u32::from_le_bytes([dmac[4], dmac[5], smac[0], smac[1]]),
                u32::from_le_bytes([smac[2], smac[3], smac[4], smac[5]]),
            ],
        }
    }

    /// Writes the Ethernet header at `p`, the start of the frame: the MACs, the 802.1Q tag
    /// (TPID and TCI as read from the frame) if there is one, and `ethertype` (host
    /// order). Returns its length. Halfword stores: XDP frames start 2-byte aligned (the
    /// headroom is even, and so is every head adjustment we make), while a
    /// `write_unaligned` compiles to byte stores (BPF has no unaligned stores).
    ///
    /// # Safety
    /// `p` must point at [`L2_MAX`] writable bytes of the frame.
    #[inline(always)]
    unsafe fn write_l2(&self, p: *mut u16, vlan: Option<u32>, ethertype: u16) -> usize {
        let mut i = 0;
        while i < 3 {
            // SAFETY: within the first 12 bytes (caller's guarantee).
            unsafe {
                p.add(2 * i).write(self.macs[i] as u16);
                p.add(2 * i + 1).write((self.macs[i] >> 16) as u16);
            }
            i += 1;
        }
        // SAFETY: bytes 12..18 at most (caller's guarantee).
        unsafe {
            match vlan {
                Some(tag) => {
                    p.add(6).write(tag as u16);
                    p.add(7).write((tag >> 16) as u16);
                    p.add(8).write(ethertype.to_be());
                    ETH_HLEN + VLAN_HLEN
                }
                None => {
                    p.add(6).write(ethertype.to_be());
                    ETH_HLEN
                }
            }
        }
    }
}

/// The longest Ethernet header we write (with an 802.1Q tag).
const L2_MAX: usize = ETH_HLEN + VLAN_HLEN;
/// Bytes at the front of an encapsulated frame that one bounds check covers: the longest
/// Ethernet header and outer header. Every frame we encapsulate is longer (its inner packet
/// carries an IP header and at least 8 bytes of ports or ICMP header).
const FRONT: usize = L2_MAX + IPV6_HLEN;

/// Encapsulates the packet described by `l3` towards the target's backend (`backend` is
/// `target.idx`, already checked usable) and returns the verdict. `flow_packet`: a flow's
/// packet rather than an ICMP error about one, counted as the backend's traffic, and
/// answered if the FIB finds it too big for the path. `hop` is scratch space for the next
/// hop. Inlined into the hit path.
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    l3: &L3,
    target: &Target,
    cfg: &LbConfig,
    backend: &Backend,
    hop: *mut NextHop,
    stats: Option<*mut Counters>,
    flow_packet: bool,
) -> Result<u32, Drop> {
    let hash = target.hash;
    let v4_outer = backend.family == FAMILY_V4;
    let outer_len = overhead(backend);
    let src = outer_source(backend, hash, target.hashed_src != 0, cfg)?;
    let hop = if backend.flags & BACKEND_F_NEXTHOP != 0 {
        // The daemon resolved it: no FIB lookup per packet.
        NextHop::cached(backend)
    } else {
        let fib = unpack(fib_next_hop(
            ctx,
            backend,
            &src,
            l3.l3_len() + outer_len,
            hop,
        ))?;
        if fib != FIB_HOP {
            // Too big for the path.
            if !flow_packet {
                return Err(Drop::TooBig);
            }
            let mtu = fib.saturating_sub(outer_len as u32);
            return unpack(crate::icmp::answer_too_big(ctx, l3, cfg, mtu));
        }
        // SAFETY: fib_next_hop wrote the whole NextHop when it returned FIB_HOP.
        unsafe { *hop }
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let redirect = hop.ifindex != ingress;
    if redirect && TX_PORTS.get(hop.ifindex).is_none() {
        return Err(Drop::NoRoute);
    }
    // Nothing can refuse the packet any more but the kernel growing the frame, which XDP's
    // headroom rules out: count it now. Before the encapsulation rather than after it, the
    // balancer's time per packet under wrk is 2–7 % lower (XLB_BENCH_AB_WRK; docs/design.md).
    let bytes = l3.l3_len() as u64;
    if flow_packet {
        account::traffic(target, bytes);
    }
    let refused = || {
        if flow_packet {
            account::take_back(target, bytes);
        }
        Drop::AdjustFailed
    };

    // Keep the 802.1Q tag (TPID + TCI) if there is one: we answer on the same VLAN.
    let l2_len = l3.l3_off();
    let vlan = if l2_len == ETH_HLEN + VLAN_HLEN {
        read::<u32>(ctx, ETH_HLEN - 2)
    } else {
        None
    };

    // Drop Ethernet padding behind the IP packet, or it would end up inside the tunnel.
    // Only frames with padding pay for the length lookup. The offset is the L2 header's:
    // `fits` refuses offsets past `MAX_OFFSET`, and with the IP length in the offset, bytes
    // behind a packet longer than that went out with it (found by fixtures_mutated_frames).
    if fits(ctx, l2_len, l3.l3_len() + 1) {
        let excess = frame_len(ctx) as i64 - (l2_len + l3.l3_len()) as i64;
        // SAFETY: helper call on our own context; the verifier re-checks every later access.
        if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
            return Err(refused());
        }
    }
    // SAFETY: as above; grows the frame at the front by the outer header's length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(refused());
    }

    let ethertype: u16 = if v4_outer { ETH_P_IP } else { ETH_P_IPV6 };
    // One bounds check for everything written below.
    let front = ptr_at_mut::<[u8; FRONT]>(ctx, 0)
        .ok_or_else(refused)?
        .cast::<u8>();
    // SAFETY: FRONT ≥ L2_MAX bytes checked above.
    let off = unsafe { hop.write_l2(front.cast(), vlan, ethertype) };
    // SAFETY: off ≤ L2_MAX, so the outer header (≤ IPV6_HLEN) lies within FRONT.
    let outer = unsafe { front.add(off) };

    let inner_proto = if udp_len(backend) != 0 {
        IPPROTO_UDP
    } else if l3.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    // Headers are written field by field straight into the frame: building them on the
    // stack first would cost stack the verifier's 512-byte budget cannot spare.
    if v4_outer {
        let p = outer.cast::<Ipv4Hdr>();
        // SAFETY: inside FRONT (see above).
        unsafe {
            write_ipv4_header(
                p,
                src[0],
                backend.addr[0],
                inner_proto,
                l3.tos,
                (outer_len + l3.l3_len()) as u16,
            )
        };
    } else {
        let p = outer.cast::<Ipv6Hdr>();
        // SAFETY: inside FRONT (see above).
        unsafe {
            (*p).vtc_flow_be =
                ((6u32 << 28) | (u32::from(l3.tos) << 20) | (hash & 0x000f_ffff)).to_be();
            (*p).payload_len_be = ((outer_len - IPV6_HLEN + l3.l3_len()) as u16).to_be();
            (*p).nexthdr = inner_proto;
            (*p).hop_limit = OUTER_TTL;
            // Word by word: an array assignment from map memory compiles to a call to a
            // byte-by-byte BPF memmove.
            (*p).saddr = src;
            (*p).daddr[0] = backend.addr[0];
            (*p).daddr[1] = backend.addr[1];
            (*p).daddr[2] = backend.addr[2];
            (*p).daddr[3] = backend.addr[3];
        }
    }

    if udp_len(backend) != 0 {
        // Behind the outer IP header: inside FRONT behind an IPv4 header; behind an IPv6
        // one, a check of its own (FRONT covers only what every frame holds, and the
        // shortest IPv4 tunnel is shorter than FRONT and this header together).
        let udp = if v4_outer {
            // SAFETY: off + 20 + 8 ≤ L2_MAX + 28 < FRONT.
            unsafe { outer.add(IPV4_HLEN) }
        } else {
            let longer = ptr_at_mut::<[u8; FRONT + UDP_HLEN]>(ctx, 0).ok_or_else(refused)?;
            // SAFETY: off + 40 + 8 ≤ FRONT + 8, checked above.
            unsafe { longer.cast::<u8>().add(off + IPV6_HLEN) }
        };
        let sport = gue_source_port(hash);
        // SAFETY: eight bytes in the frame (above), halfword-aligned (see
        // `NextHop::write_l2`). The checksum field is filled in below.
        unsafe {
            *udp.cast::<[u16; UDP_HLEN / 2]>() = [
                sport.to_be(),
                cfg.gue_port_be,
                ((UDP_HLEN + l3.l3_len()) as u16).to_be(),
                0,
            ]
        };
        // IPv6 tunnels only (see gue_checksum.rs); where it cannot tell the checksum, the
        // field stays 0, which means none.
        if !v4_outer {
            crate::gue_checksum::xlb_gue_checksum(ctx.ctx, off as u32);
        }
    }
    if cfg.flags & CFG_F_BENCH_RESTORE != 0 {
        return restore_for_bench(ctx, outer_len, &hop, vlan, l3, cfg, stats);
    }
    if redirect {
        bump_in(stats, Event::RedirectEncap.slot());
        return Ok(TX_PORTS
            .redirect(hop.ifindex, 0)
            .unwrap_or(xdp_action::XDP_ABORTED));
    }
    bump_in(stats, Event::TxEncap.slot());
    Ok(xdp_action::XDP_TX)
}

/// Benchmark mode (`CFG_F_BENCH_RESTORE`): strips the outer header again, keeping the new
/// Ethernet header (`hop`'s MACs, the VLAN tag), and drops the frame, so every repeat of a
/// test run starts from the same input; with `CFG_F_BENCH_NEW_FLOWS` from the next flow's
/// input instead: the client port's raw halfword plus one. The bench reports what the undo
/// costs.
#[inline(always)]
fn restore_for_bench(
    ctx: &XdpContext,
    outer_len: usize,
    hop: &NextHop,
    vlan: Option<u32>,
    l3: &L3,
    cfg: &LbConfig,
    stats: Option<*mut Counters>,
) -> Result<u32, Drop> {
    // SAFETY: helper call on our own context; shrinks the frame at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Drop::AdjustFailed);
    }
    let front = ptr_at_mut::<[u16; L2_MAX / 2]>(ctx, 0).ok_or(Drop::AdjustFailed)?;
    let ethertype: u16 = if l3.family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    // SAFETY: L2_MAX bytes checked above.
    unsafe { hop.write_l2(front.cast(), vlan, ethertype) };
    if cfg.flags & CFG_F_BENCH_NEW_FLOWS != 0 {
        // The frame is the parsed one again, so its ports are where they were.
        let sport = ptr_at_mut::<u16>(ctx, l3.l4_off()).ok_or(Drop::AdjustFailed)?;
        // SAFETY: two bytes checked above; halfword-aligned (see `ptr::read_u16`).
        unsafe { *sport = (*sport).wrapping_add(1) };
    }
    bump_in(stats, Event::TxEncap.slot());
    Ok(xdp_action::XDP_DROP)
}

/// Writes an IPv4 header without options, checksum included, at `p`. DF is set: path MTU
/// problems are answered by ICMP (ours, or the routers'), never by fragmenting the tunnel.
///
/// # Safety
/// `p` must point at 20 writable bytes of the frame.
#[inline(always)]
pub unsafe fn write_ipv4_header(
    p: *mut Ipv4Hdr,
    saddr: u32,
    daddr: u32,
    proto: u8,
    tos: u8,
    tot_len: u16,
) {
    let mut sum = 0x4500u32 | u32::from(tos);
    sum += u32::from(tot_len) + u32::from(IP_DF) + (u32::from(OUTER_TTL) << 8 | u32::from(proto));
    sum = csum::add_word(sum, saddr);
    sum = csum::add_word(sum, daddr);
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*p).version_ihl = 0x45;
        (*p).tos = tos;
        (*p).tot_len_be = tot_len.to_be();
        (*p).id_be = 0;
        (*p).frag_off_be = IP_DF.to_be();
        (*p).ttl = OUTER_TTL;
        (*p).proto = proto;
        (*p).check_be = csum::finish(sum).to_be();
        (*p).saddr = saddr;
        (*p).daddr = daddr;
    }
}

/// The outer source address: ours, or one derived from the flow hash (per-VIP choice).
#[inline(always)]
fn outer_source(
    backend: &Backend,
    hash: u32,
    hashed: bool,
    cfg: &LbConfig,
) -> Result<[u32; 4], Drop> {
    if backend.family == FAMILY_V4 {
        let src = if hashed && cfg.hashed_src_v4 != 0 {
            cfg.hashed_src_v4 | (hash & cfg.hashed_src_v4_hostmask).to_be()
        } else {
            cfg.src_v4
        };
        if src == 0 {
            return Err(Drop::NoSource);
        }
        return Ok([src, 0, 0, 0]);
    }
    let mut src = cfg.src_v6;
    if hashed && cfg.hashed_src_v6 != [0; 4] {
        src = cfg.hashed_src_v6;
        src[3] = hash.to_be();
    }
    if src == [0; 4] {
        return Err(Drop::NoSource);
    }
    Ok(src)
}

/// `fib_next_hop`: the next hop was written (any other value is an MTU).
const FIB_HOP: u32 = u32::MAX;

/// Next hop towards the backend into `hop`, from the kernel's FIB (backends whose next hop
/// the daemon has not resolved yet): [`FIB_HOP`], or the MTU of the path if the
/// `tot_len`-byte packet does not fit it (the kernel checks it: the route's MTU, or the
/// egress device's), which the daemon has not told us yet. Its own BPF function: the
/// 64-byte FIB request lives only in this frame.
#[inline(never)]
fn fib_next_hop(
    ctx: &XdpContext,
    backend: &Backend,
    src: &[u32; 4],
    tot_len: usize,
    hop: *mut NextHop,
) -> u64 {
    bump(&STATS, Event::FibLookup.slot());
    // SAFETY: plain-old-data struct; all-zero is a valid "no options" request.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_1.tot_len = tot_len as u16;
    if backend.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = backend.addr[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = backend.addr;
    }
    // SAFETY: p is a valid bpf_fib_lookup of the size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let result = match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // SAFETY: as above.
            unsafe { hop.write(NextHop::from_fib(p.ifindex, p.dmac, p.smac)) };
            Ok(FIB_HOP)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Drop::NoNeighbour),
        // SAFETY: the kernel wrote the MTU over `tot_len` (a union) for this answer.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(u32::from(unsafe { p.__bindgen_anon_1.mtu_result })),
        _ => Err(Drop::NoRoute),
    };
    pack(result)
}
