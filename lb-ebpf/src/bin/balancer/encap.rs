//! IP-in-IP encapsulation towards a backend: IPv4-in-IPv4, IPv6-in-IPv4 (proto 41),
//! IPv4-in-IPv6 and IPv6-in-IPv6, then out through `XDP_TX` or `XDP_REDIRECT`.
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
    counters::{Drop, Event},
    maps::{Backend, LbConfig, BACKEND_F_NEXTHOP, CFG_F_BENCH_RESTORE},
};
use lb_ebpf::{
    csum,
    parse::{
        eth::{ETH_HLEN, VLAN_HLEN},
        ipv4::{Ipv4Hdr, IPV4_HLEN, IP_DF},
        ipv6::{Ipv6Hdr, IPV6_HLEN},
        ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, L3,
    },
    ptr::{fits, frame_len, ptr_at_mut, read, write},
    stats::bump,
    subprog::{pack, unpack},
};

use crate::{
    maps::{STATS, TX_PORTS},
    select::{self, Target},
};

/// TTL / hop limit of the outer header.
pub const OUTER_TTL: u8 = 64;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// Bytes the outer header adds for a backend of this family.
#[inline(always)]
pub fn overhead(backend: &Backend) -> usize {
    if backend.family == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    }
}

/// Where the encapsulated frame goes.
struct NextHop {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// Encapsulates the packet described by `l3` towards the target's backend and returns the
/// verdict. Its own BPF function, to keep every call chain under the verifier's 512-byte
/// combined stack limit.
#[inline(never)]
pub fn forward(ctx: &XdpContext, l3: &L3, target: &Target) -> u64 {
    pack(forward_stage(ctx, l3, target))
}

#[inline(always)]
fn forward_stage(ctx: &XdpContext, l3: &L3, target: &Target) -> Result<u32, Drop> {
    let cfg = crate::lookup::config()?;
    let backend = select::usable(target.idx).ok_or(Drop::BadBackend)?;
    let hash = target.hash;
    let v4_outer = backend.family == FAMILY_V4;
    let outer_len = overhead(backend);
    let src = outer_source(backend, hash, target.hashed_src != 0, cfg)?;
    // Left uninitialised until next_hop fills it: zeroing a struct with MAC arrays costs a
    // call to a byte-by-byte BPF memset (measured: ~3 % of the hit path).
    let mut hop = core::mem::MaybeUninit::<NextHop>::uninit();
    unpack(next_hop(
        ctx,
        backend,
        &src,
        l3.l3_len() + outer_len,
        hop.as_mut_ptr(),
    ))?;
    // SAFETY: next_hop writes every field of `hop` whenever it returns Ok.
    let hop = unsafe { hop.assume_init() };
    let ingress = ctx.ingress_ifindex() as u32;
    let redirect = hop.ifindex != ingress;
    if redirect && TX_PORTS.get(hop.ifindex).is_none() {
        return Err(Drop::NoRoute);
    }

    // Keep the 802.1Q tag (TPID + TCI) if there is one: we answer on the same VLAN.
    let l2_len = l3.l3_off();
    let vlan = if l2_len == ETH_HLEN + VLAN_HLEN {
        read::<u32>(ctx, ETH_HLEN - 2)
    } else {
        None
    };

    // Drop Ethernet padding behind the IP packet, or it would end up inside the tunnel.
    // Only frames with padding pay for the length lookup.
    if fits(ctx, l2_len + l3.l3_len(), 1) {
        let excess = frame_len(ctx) as i64 - (l2_len + l3.l3_len()) as i64;
        // SAFETY: helper call on our own context; the verifier re-checks every later access.
        if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
            return Err(Drop::AdjustFailed);
        }
    }
    // SAFETY: as above; grows the frame at the front by the outer header's length.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Drop::AdjustFailed);
    }

    let ethertype: u16 = if v4_outer { ETH_P_IP } else { ETH_P_IPV6 };
    write(ctx, 0, hop.dmac).ok_or(Drop::AdjustFailed)?;
    write(ctx, 6, hop.smac).ok_or(Drop::AdjustFailed)?;
    let mut off = ETH_HLEN - 2;
    if let Some(tag) = vlan {
        write(ctx, off, tag).ok_or(Drop::AdjustFailed)?;
        off += VLAN_HLEN;
    }
    write(ctx, off, ethertype.to_be()).ok_or(Drop::AdjustFailed)?;
    off += 2;

    let inner_proto = if l3.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    // Headers are written field by field straight into the frame: building them on the
    // stack first would cost stack the verifier's 512-byte budget cannot spare.
    if v4_outer {
        let p = ptr_at_mut::<Ipv4Hdr>(ctx, off).ok_or(Drop::AdjustFailed)?;
        // SAFETY: ptr_at_mut checked the header fits in the frame.
        unsafe {
            write_ipv4_header(
                p,
                src[0],
                backend.addr[0],
                inner_proto,
                l3.tos,
                (IPV4_HLEN + l3.l3_len()) as u16,
            )
        };
    } else {
        let p = ptr_at_mut::<Ipv6Hdr>(ctx, off).ok_or(Drop::AdjustFailed)?;
        // SAFETY: ptr_at_mut checked the header fits in the frame.
        unsafe {
            (*p).vtc_flow_be =
                ((6u32 << 28) | (u32::from(l3.tos) << 20) | (hash & 0x000f_ffff)).to_be();
            (*p).payload_len_be = (l3.l3_len() as u16).to_be();
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

    if cfg.flags & CFG_F_BENCH_RESTORE != 0 {
        return unpack(restore_for_bench(ctx, outer_len, l2_len));
    }
    if redirect {
        bump(&STATS, Event::RedirectEncap.slot());
        return Ok(TX_PORTS
            .redirect(hop.ifindex, 0)
            .unwrap_or(xdp_action::XDP_ABORTED));
    }
    bump(&STATS, Event::TxEncap.slot());
    Ok(xdp_action::XDP_TX)
}

/// Benchmark mode (`CFG_F_BENCH_RESTORE`): strips the outer header again, keeping the new
/// Ethernet header, and drops the frame, so every repeat of a test run starts from the same
/// input. The bench reports what this undo costs.
#[inline(never)]
fn restore_for_bench(ctx: &XdpContext, outer_len: usize, l2_len: usize) -> u64 {
    pack(restore_stage(ctx, outer_len, l2_len))
}

#[inline(always)]
fn restore_stage(ctx: &XdpContext, outer_len: usize, l2_len: usize) -> Result<u32, Drop> {
    // The new MACs, and the 802.1Q tag if there is one. Only the L2 header goes back:
    // copying 18 bytes on an untagged frame would overwrite the inner header's first 4
    // bytes (IPv4 total length) with the outer header's.
    let macs = read::<[u8; 12]>(ctx, 0).ok_or(Drop::AdjustFailed)?;
    let tag = if l2_len == ETH_HLEN {
        None
    } else {
        Some(read::<u32>(ctx, ETH_HLEN - 2).ok_or(Drop::AdjustFailed)?)
    };
    // SAFETY: helper call on our own context; shrinks the frame at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Drop::AdjustFailed);
    }
    write(ctx, 0, macs).ok_or(Drop::AdjustFailed)?;
    if let Some(tag) = tag {
        write(ctx, ETH_HLEN - 2, tag).ok_or(Drop::AdjustFailed)?;
    }
    // The inner packet's family decides the ethertype again.
    let inner = if l2_len == ETH_HLEN {
        ETH_HLEN
    } else {
        ETH_HLEN + VLAN_HLEN
    };
    let version = read::<[u8; 2]>(ctx, inner).ok_or(Drop::AdjustFailed)?[0] >> 4;
    let ethertype: u16 = if version == 4 { ETH_P_IP } else { ETH_P_IPV6 };
    // Constant offsets: the L2 header is 14 or 18 bytes, and the verifier follows constants
    // more easily than a computed offset.
    let at = if l2_len == ETH_HLEN {
        ETH_HLEN - 2
    } else {
        ETH_HLEN + VLAN_HLEN - 2
    };
    write(ctx, at, ethertype.to_be()).ok_or(Drop::AdjustFailed)?;
    bump(&STATS, Event::TxEncap.slot());
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

/// Next hop towards the backend into `hop`: the daemon's cached one, else the kernel's FIB.
/// Its own BPF function: the 64-byte FIB request lives only in this frame.
#[inline(never)]
fn next_hop(
    ctx: &XdpContext,
    backend: &Backend,
    src: &[u32; 4],
    tot_len: usize,
    hop: *mut NextHop,
) -> u64 {
    if backend.flags & BACKEND_F_NEXTHOP != 0 {
        // SAFETY: `hop` points at the caller's NextHop; plain field writes, no reads.
        unsafe {
            (*hop).ifindex = backend.ifindex;
            (*hop).smac = backend.smac;
            (*hop).dmac = backend.dmac;
        }
        return pack(Ok(0));
    }
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
            unsafe {
                (*hop).ifindex = p.ifindex;
                (*hop).smac = p.smac;
                (*hop).dmac = p.dmac;
            }
            Ok(0)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(Drop::NoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Drop::TooBig),
        _ => Err(Drop::NoRoute),
    };
    pack(result)
}
