//! ICMP: errors about VIP flows go to the flow's backend; oversized client packets get
//! "fragmentation needed" / "packet too big" from us; echo requests to a VIP's address are
//! answered by us.
//!
//! A router on the return path (backend → client, which never crosses us in DSR) that
//! cannot forward a reply sends its ICMP error to the reply's source: the VIP. Only the
//! backend holding that connection can act on it, so we find the flow quoted inside the
//! error and send the whole ICMP packet down the flow's tunnel.
//!
//! Encapsulation makes a full-size client packet too big for the link to the backend; the
//! kernel would drop it silently, so we answer like a router would (RFC 1191 / RFC 8201)
//! and the client's path MTU discovery shrinks its segments.
//!
//! A VIP lives on the backends' `lo`, not on the balancer: an echo request to it (an
//! operator's `ping`, a monitoring probe) would find no host that answers for it. We do,
//! as Katran does, turning the request into its reply in place: the VIP's address answers
//! as long as the balancer forwards to it, whatever its backends' health.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    addr::FAMILY_V4,
    counters::{Drop, Event},
    flow::FlowKey,
    maps::{LbConfig, VipKey, CFG_F_ICMP_ECHO, CFG_F_ICMP_TOO_BIG},
};
use lb_ebpf::{
    csum,
    parse::{
        eth::{ETH_HLEN, VLAN_HLEN},
        ipv4::{Ipv4Hdr, IPV4_HLEN, IP_OFFSET_MASK},
        ipv6::{skip_ext_headers, Ipv6Hdr, IPV6_HLEN},
        FRAG_LATER, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3,
    },
    ptr::{frame_len, ptr_at, ptr_at_mut, read, write},
    stats::{bump, counters},
    subprog::{from_global, pack, unpack},
};

use crate::{
    encap::{write_ipv4_header, OUTER_TTL},
    lookup,
    maps::{within_rate, Scratch, ICMP_WINDOW, STATS},
    select,
};

/// The fewest bytes of the offending packet quoted in the ICMP errors we generate: its IP
/// header and the start of its payload. More when its headers need more (see `quote_len`).
pub const QUOTE_LEN: usize = 64;
/// The most we quote: an ICMPv6 error must fit the minimum IPv6 MTU (RFC 4443 section
/// 2.4 (c)): 1280 less its IPv6 and ICMPv6 headers. An IPv4 quote never comes near it
/// (60 bytes of header at most, 576 allowed).
const MAX_QUOTE_LEN: usize = 1232;
const ICMP_HLEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// The smallest MTU an IPv6 link may have (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// `route` found the flow an ICMP error is about and wrote its target.
pub const ROUTED: u32 = 1;
/// `route`: not an error about a VIP flow; the kernel gets it (it may be for this host).
pub const NOT_OURS: u32 = 0;
/// `route`: an echo request to a VIP's address, turned into its reply in the frame; the
/// caller sends it back.
pub const ECHOED: u32 = 2;

/// Finds the backend of the flow an ICMP / ICMPv6 error is about, into `s.target` (the
/// quoted flow goes to `s.flow`: scratch memory, not this frame's stack, which the
/// verifier's 512-byte limit shares with the caller's and `pick`'s). Only decides: the
/// caller forwards.
#[inline(always)]
pub fn route(ctx: &XdpContext, l3: &L3, s: *mut Scratch) -> u64 {
    // SAFETY: this CPU's scratch slot (map memory).
    unsafe { (*s).l3 = *l3 };
    from_global(xlb_icmp_route(ctx.ctx))
}

/// [`route`] as a global BPF function: the verifier checks it once, on its own, with what
/// it reads from the scratch slot unknown, instead of once for every way the entry
/// function reaches it (each IPv4 option length, each IPv6 extension chain, …): as a
/// static function it made more than half the program's verification (470 000 of 880 000
/// instructions, of a limit of a million).
#[no_mangle]
pub extern "C" fn xlb_icmp_route(raw: *mut aya_ebpf::bindings::xdp_md) -> u64 {
    let ctx = XdpContext::new(raw);
    let s = match crate::maps::scratch() {
        Ok(s) => s,
        Err(d) => return pack(Err(d)),
    };
    // SAFETY: this CPU's scratch slot, `l3` written by `route` before the call.
    let l3 = unsafe { &(*s).l3 };
    pack(route_stage(&ctx, l3, s))
}

#[inline(always)]
fn route_stage(ctx: &XdpContext, l3: &L3, s: *mut Scratch) -> Result<u32, Drop> {
    // ICMP of the packet's own family only: protocol 1 in IPv6 (or 58 in IPv4) is no ICMP
    // any stack would read, so it is the host's like any other protocol. Checked here
    // rather than in the entry function, whose code it made longer on every path.
    let icmp = if l3.family == FAMILY_V4 {
        IPPROTO_ICMP
    } else {
        IPPROTO_ICMPV6
    };
    if l3.proto != icmp {
        return Ok(NOT_OURS);
    }
    let ty = lb_ebpf::parse::icmp_type(ctx, l3)?;
    if ty == ICMP_ECHO_REQUEST && l3.family == FAMILY_V4
        || ty == ICMPV6_ECHO_REQUEST && l3.family != FAMILY_V4
    {
        return answer_echo(ctx, l3);
    }
    let is_error = if l3.family == FAMILY_V4 {
        matches!(
            ty,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
        )
    } else {
        matches!(
            ty,
            ICMPV6_DEST_UNREACH | ICMPV6_PKT_TOOBIG | ICMPV6_TIME_EXCEED | ICMPV6_PARAMPROB
        )
    };
    if !is_error || !lookup::is_vip_address(l3) {
        return Ok(NOT_OURS);
    }
    // SAFETY: this CPU's scratch slot (map memory); written here before it is read.
    let flow = unsafe {
        (*s).set_flow(&quoted_flow(ctx, l3)?);
        &(*s).flow
    };
    let mut vip_key = VipKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        proto: flow.proto,
        family: flow.family,
    };
    let vip = lookup::service(&mut vip_key).ok_or(Drop::IcmpNotForVip)?;
    // Errors never create flows: they follow an existing one or its hash.
    if select::pinned(s, l3.family == FAMILY_V4, 0, counters(&STATS)).is_none() {
        select::follow_hash(s, &vip)?;
    }
    Ok(ROUTED)
}

/// Turns an echo request to a VIP's address into its reply, in place: MACs, addresses
/// swapped, a fresh TTL / hop limit, the reply's type, both checksums updated for the
/// words that changed (RFC 1624). [`ECHOED`], or [`NOT_OURS`] for the host when the config
/// says not to (`icmp_echo`), the address has no VIP, the sender is no unicast address,
/// or the request carries IPv4 options or IPv6 extension headers (which a reply would
/// have to reverse, as the kernel does) or a code other than 0.
#[inline(always)]
fn answer_echo(ctx: &XdpContext, l3: &L3) -> Result<u32, Drop> {
    let v4 = l3.family == FAMILY_V4;
    let on = lookup::config().is_ok_and(|cfg| cfg.flags & CFG_F_ICMP_ECHO != 0);
    let plain = l3.l4_off() - l3.l3_off() == if v4 { IPV4_HLEN } else { IPV6_HLEN };
    if !on || !plain || !unicast_source(l3) || !lookup::is_vip_address(l3) {
        return Ok(NOT_OURS);
    }
    // Type and code, then the checksum.
    let icmp = ptr_at_mut::<[u16; 2]>(ctx, l3.l4_off()).ok_or(Drop::IcmpTruncated)?;
    // SAFETY: four bytes checked above (`route_stage` checked eight); halfword-aligned
    // (see `ptr::read_u16`).
    let (type_code, check) = unsafe { (u16::from_be((*icmp)[0]), u16::from_be((*icmp)[1])) };
    if type_code & 0xff != 0 {
        return Ok(NOT_OURS);
    }
    let reply = if v4 {
        ICMP_ECHO_REPLY
    } else {
        ICMPV6_ECHO_REPLY
    };
    let reply_word = u16::from(reply) << 8;
    let eth = ptr_at_mut::<[u16; 6]>(ctx, 0).ok_or(Drop::EthTruncated)?;
    // SAFETY: twelve bytes checked above, halfword-aligned (the frame's start).
    unsafe {
        let e = &mut *eth;
        let dst = [e[0], e[1], e[2]];
        e[0] = e[3];
        e[1] = e[4];
        e[2] = e[5];
        e[3] = dst[0];
        e[4] = dst[1];
        e[5] = dst[2];
    }
    if v4 {
        let h = ptr_at_mut::<Ipv4Hdr>(ctx, l3.l3_off()).ok_or(Drop::Ipv4Truncated)?;
        // SAFETY: the header checked above. The addresses' swap leaves the header's sum
        // as it was; the TTL's word changes.
        unsafe {
            let old = (u16::from((*h).ttl) << 8) | u16::from((*h).proto);
            let new = (u16::from(OUTER_TTL) << 8) | u16::from((*h).proto);
            (*h).check_be = csum::replace(u16::from_be((*h).check_be), old, new).to_be();
            (*h).ttl = OUTER_TTL;
            let src = (*h).saddr;
            (*h).saddr = (*h).daddr;
            (*h).daddr = src;
        }
    } else {
        let h = ptr_at_mut::<Ipv6Hdr>(ctx, l3.l3_off()).ok_or(Drop::Ipv6Truncated)?;
        // SAFETY: the header checked above; the pseudo-header's sum does not change with
        // the addresses' order.
        unsafe {
            (*h).hop_limit = OUTER_TTL;
            let src = (*h).saddr;
            (*h).saddr = (*h).daddr;
            (*h).daddr = src;
        }
    }
    // SAFETY: as above.
    unsafe {
        (*icmp)[0] = reply_word.to_be();
        (*icmp)[1] = csum::replace(check, type_code, reply_word).to_be();
    }
    bump(&STATS, Event::IcmpEchoReplied.slot());
    Ok(ECHOED)
}

/// The client → VIP flow of the VIP → client packet quoted in an ICMP error.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, l3: &L3) -> Result<FlowKey, Drop> {
    let q_off = l3.l4_off() + ICMP_HLEN;
    // Quoted headers are read in place, not copied to the stack (see encap.rs).
    let (src, dst, proto, ports_off) = if l3.family == FAMILY_V4 {
        let q = ptr_at::<Ipv4Hdr>(ctx, q_off).ok_or(Drop::IcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        let q = unsafe { &*q };
        let ihl = usize::from(q.version_ihl & 0x0f) * 4;
        if q.version_ihl >> 4 != 4 || ihl < IPV4_HLEN {
            return Err(Drop::IcmpTruncated);
        }
        // A later fragment (offset not zero) carries no ports: what sits where they would
        // is payload, and routing by it would pick a backend at random (see IPv6 below).
        if u16::from_be(q.frag_off_be) & IP_OFFSET_MASK != 0 {
            return Err(Drop::IcmpNotForVip);
        }
        ([q.saddr, 0, 0, 0], [q.daddr, 0, 0, 0], q.proto, q_off + ihl)
    } else {
        let q = ptr_at::<Ipv6Hdr>(ctx, q_off).ok_or(Drop::IcmpTruncated)?;
        // SAFETY: bounds checked by ptr_at.
        let q = unsafe { &*q };
        // The quote's extension headers (a backend's fragmented UDP reply carries one)
        // end inside the error, not where the quote's own length says: quotes are cut.
        let ext = match skip_ext_headers(ctx, q.nexthdr, q_off + IPV6_HLEN, l3.l3_end()) {
            Ok(ext) => ext,
            // As far as we walk a chain, and no further: its ports stay unknown.
            Err(Drop::Ipv6ExtChainTooLong) => return Err(Drop::IcmpNotForVip),
            Err(_) => return Err(Drop::IcmpTruncated),
        };
        // A later fragment has no ports to find a flow by (the kernel ignores such errors too).
        if ext.frag == FRAG_LATER {
            return Err(Drop::IcmpNotForVip);
        }
        (q.saddr, q.daddr, ext.proto, ext.l4_off)
    };
    // First whether the quote is whole: its header comes before its ports.
    let ports = unpack(quoted_ports(ctx, l3.l3_end(), ports_off))?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Drop::IcmpNotForVip);
    }
    // The quoted packet was sent by the VIP: its source must be the address the error
    // came to, or somebody is steering errors at us.
    if src != l3.dst {
        return Err(Drop::IcmpNotForVip);
    }
    let (sport_be, dport_be) = (ports as u16, (ports >> 16) as u16);
    Ok(FlowKey {
        src: dst,
        dst: src,
        sport_be: dport_be,
        dport_be: sport_be,
        proto,
        family: l3.family,
        _pad: [0; 2],
    })
}

/// The quoted packet's ports at `ports_off` (raw halfwords: source in the low half), if
/// they (and so the quoted header before them) lie inside the error's IP packet, which
/// ends at `end`: what lies behind it is
/// Ethernet padding, whatever it holds (fixtures_mutated_frames found an error whose IP
/// length left its quote out routed by the padding's bytes). Its own BPF function: the
/// route → pick call chain has no stack to spare for it.
#[inline(never)]
fn quoted_ports(ctx: &XdpContext, end: usize, ports_off: usize) -> u64 {
    if ports_off + 4 > end {
        return pack(Err(Drop::IcmpTruncated));
    }
    pack(
        read::<[u16; 2]>(ctx, ports_off)
            .map(|[sport, dport]| u32::from(sport) | u32::from(dport) << 16)
            .ok_or(Drop::IcmpTruncated),
    )
}

/// A flow's packet (not an ICMP error: those are never answered with one, RFC 1122,
/// RFC 4443) that does not fit the path to its backend once encapsulated: answered with
/// "fragmentation needed" / "packet too big" advertising `mtu` (what the path carries of
/// the inner packet) where the config asks for it, else dropped as `too_big`. Both places
/// that find a packet too big end here: the MTUs the daemon knows, and the kernel's FIB.
/// Its own BPF function: the headers' copy stays out of the entry function's code.
#[inline(never)]
pub fn answer_too_big(ctx: &XdpContext, l3: &L3, cfg: &LbConfig, mtu: u32) -> u64 {
    if cfg.flags & CFG_F_ICMP_TOO_BIG == 0 {
        return pack(Err(Drop::TooBig));
    }
    let s = match crate::maps::scratch() {
        Ok(s) => s,
        Err(d) => return pack(Err(d)),
    };
    // SAFETY: this CPU's scratch slot (map memory); `l3` is free: this is no ICMP packet.
    unsafe { (*s).l3 = *l3 };
    from_global(xlb_too_big(ctx.ctx, mtu))
}

/// Answers the packet in the frame with "fragmentation needed" (IPv4, only when DF is
/// set: without DF the sender does no path MTU discovery, so it is dropped and counted)
/// or "packet too big" (IPv6), advertising `mtu`, and bounces it to the sender, if that
/// is a unicast address an ICMP error may go to (RFC 1812 section 4.3.2.7, RFC 4443
/// section 2.4 (e)). Its headers are in the scratch slot's `l3`. A global BPF function
/// (see [`xlb_icmp_route`]): verified once, not once for each of its two call sites and
/// each way the entry function reaches them.
#[no_mangle]
pub extern "C" fn xlb_too_big(raw: *mut aya_ebpf::bindings::xdp_md, mtu: u32) -> u64 {
    let ctx = XdpContext::new(raw);
    let s = match crate::maps::scratch() {
        Ok(s) => s,
        Err(d) => return pack(Err(d)),
    };
    // SAFETY: this CPU's scratch slot, `l3` written by `answer_too_big` before the call.
    let l3 = unsafe { &(*s).l3 };
    pack(too_big_stage(&ctx, l3, mtu))
}

#[inline(always)]
fn too_big_stage(ctx: &XdpContext, l3: &L3, mtu: u32) -> Result<u32, Drop> {
    let v4 = l3.family == FAMILY_V4;
    let quote = quote_len(l3);
    if (v4 && !l3.df) || l3.l3_len() < quote {
        return Err(Drop::TooBig);
    }
    if !unicast_source(l3) {
        return Err(Drop::TooBigNotUnicast);
    }
    let limit = lookup::config().map_or(0, |cfg| cfg.icmp_rate_limit);
    if !within_rate(&ICMP_WINDOW, limit) {
        return Err(Drop::TooBigRateLimited);
    }
    let l2_len = l3.l3_off();
    let src_mac = read::<[u8; 6]>(ctx, 6).ok_or(Drop::EthTruncated)?;
    let dst_mac = read::<[u8; 6]>(ctx, 0).ok_or(Drop::EthTruncated)?;
    let vlan = if l2_len == ETH_HLEN + VLAN_HLEN {
        read::<u32>(ctx, ETH_HLEN - 2)
    } else {
        None
    };
    let ip_len = if v4 { IPV4_HLEN } else { IPV6_HLEN };
    let new_hdrs = ip_len + ICMP_HLEN;

    // Grow the front by exactly the new IP + ICMP headers: the offending packet then starts
    // where its quote belongs, and the tail trim keeps `quote` bytes of it.
    // SAFETY: helper calls on our own context; every later access is re-checked.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(new_hdrs as i32)) } != 0 {
        return Err(Drop::AdjustFailed);
    }
    let keep = l2_len + new_hdrs + quote;
    let trim = frame_len(ctx) as i64 - keep as i64;
    if trim > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(trim as i32)) } != 0 {
        return Err(Drop::AdjustFailed);
    }

    write(ctx, 0, src_mac).ok_or(Drop::AdjustFailed)?;
    write(ctx, 6, dst_mac).ok_or(Drop::AdjustFailed)?;
    let mut off = ETH_HLEN - 2;
    if let Some(tag) = vlan {
        write(ctx, off, tag).ok_or(Drop::AdjustFailed)?;
        off += VLAN_HLEN;
    }
    let ethertype: u16 = if v4 {
        lb_ebpf::parse::ETH_P_IP
    } else {
        lb_ebpf::parse::ETH_P_IPV6
    };
    write(ctx, off, ethertype.to_be()).ok_or(Drop::AdjustFailed)?;
    off += 2;

    let icmp_off = off + ip_len;
    let quote_sum = sum_quote(ctx, icmp_off + ICMP_HLEN, quote)?;
    let icmp_len = (ICMP_HLEN + quote) as u32;
    if v4 {
        let p = ptr_at_mut::<Ipv4Hdr>(ctx, off).ok_or(Drop::AdjustFailed)?;
        // SAFETY: ptr_at_mut checked the header fits in the frame.
        unsafe {
            write_ipv4_header(
                p,
                l3.dst[0],
                l3.src[0],
                IPPROTO_ICMP,
                0,
                (IPV4_HLEN as u32 + icmp_len) as u16,
            )
        };
        let mtu = mtu.min(0xffff);
        let sum =
            quote_sum + ((u32::from(ICMP_DEST_UNREACH) << 8) | u32::from(ICMP_FRAG_NEEDED)) + mtu;
        let icmp: [u16; 4] = [
            ((u16::from(ICMP_DEST_UNREACH) << 8) | u16::from(ICMP_FRAG_NEEDED)).to_be(),
            csum::finish(sum).to_be(),
            0,
            (mtu as u16).to_be(),
        ];
        write(ctx, icmp_off, icmp).ok_or(Drop::AdjustFailed)?;
    } else {
        let mtu = mtu.max(IPV6_MIN_MTU);
        let p = ptr_at_mut::<Ipv6Hdr>(ctx, off).ok_or(Drop::AdjustFailed)?;
        // SAFETY: ptr_at_mut checked the header fits in the frame.
        unsafe {
            (*p).vtc_flow_be = (6u32 << 28).to_be();
            (*p).payload_len_be = (icmp_len as u16).to_be();
            (*p).nexthdr = IPPROTO_ICMPV6;
            (*p).hop_limit = OUTER_TTL;
            (*p).saddr = l3.dst;
            (*p).daddr = l3.src;
        }
        // Pseudo header: addresses, upper-layer length, next header.
        let mut sum = quote_sum + icmp_len + u32::from(IPPROTO_ICMPV6);
        let mut i = 0;
        while i < 4 {
            sum = csum::add_word(sum, l3.dst[i]);
            sum = csum::add_word(sum, l3.src[i]);
            i += 1;
        }
        sum += (u32::from(ICMPV6_PKT_TOOBIG) << 8) + (mtu >> 16) + (mtu & 0xffff);
        let icmp: [u16; 4] = [
            (u16::from(ICMPV6_PKT_TOOBIG) << 8).to_be(),
            csum::finish(sum).to_be(),
            ((mtu >> 16) as u16).to_be(),
            (mtu as u16).to_be(),
        ];
        write(ctx, icmp_off, icmp).ok_or(Drop::AdjustFailed)?;
    }
    bump(&STATS, Event::IcmpTooBigSent.slot());
    Ok(xdp_action::XDP_TX)
}

/// How much of the packet to quote: QUOTE_LEN, or its IP headers and the first 8 bytes
/// behind them if that is more (IPv4 options, IPv6 extension headers), which the sender's
/// stack needs to find the socket (Linux reads that far, no further), in whole 8-byte
/// words, at most MAX_QUOTE_LEN.
#[inline(always)]
fn quote_len(l3: &L3) -> usize {
    let needed = (l3.l4_off() - l3.l3_off() + 8 + 7) & !7;
    needed.clamp(QUOTE_LEN, MAX_QUOTE_LEN)
}

/// Whether the packet's source may be sent an ICMP error: not unspecified, loopback,
/// multicast, broadcast or reserved (IPv4 0/8, 127/8, 224/4, 240/4; IPv6 ::, ::1,
/// ff00::/8). Such a source is forged or broken; answering it would send our error to
/// a group, or nowhere.
#[inline(always)]
fn unicast_source(l3: &L3) -> bool {
    // Raw words in network order: the first byte in memory is the first octet.
    let first = l3.src[0].to_ne_bytes()[0];
    if l3.family == FAMILY_V4 {
        return first != 0 && first != 127 && first < 224;
    }
    let low_zero = l3.src[0] == 0 && l3.src[1] == 0 && l3.src[2] == 0;
    first != 0xff && !(low_zero && u32::from_be(l3.src[3]) <= 1)
}

/// One's-complement sum of the `len` bytes at `off` (`len` a multiple of 8, at most
/// MAX_QUOTE_LEN), folded, as the sum of their big-endian 16-bit words.
#[inline(always)]
fn sum_quote(ctx: &XdpContext, off: usize, len: usize) -> Result<u32, Drop> {
    let mut sum = 0u64;
    let mut i = 0;
    // Bounded by the largest quote; 8 bytes a step, read in place.
    while i < MAX_QUOTE_LEN / 8 {
        if i * 8 >= len {
            break;
        }
        let w = read::<u64>(ctx, off + i * 8).ok_or(Drop::AdjustFailed)?;
        sum += (w & 0xffff_ffff) + (w >> 32);
        i += 1;
    }
    // Words read in host (little-endian) order sum to the byte-swapped sum (RFC 1071,
    // section 2 (B)): fold to 16 bits, then swap.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let mut s32 = sum as u32;
    s32 = (s32 & 0xffff) + (s32 >> 16);
    s32 = (s32 & 0xffff) + (s32 >> 16);
    Ok(u32::from((s32 as u16).swap_bytes()))
}
