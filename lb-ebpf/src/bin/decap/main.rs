//! `xlb_decap`: runs on backends. Removes the outer IPv4/IPv6 header of IP-in-IP packets
//! (IPIP, IP6IP6, 4in6, 6in4) addressed to one of this host's addresses, and the outer IP
//! and UDP headers of GUE packets (variant 1: the client's packet right behind the UDP
//! header) to the port `xlb decap --gue-port` names, and passes the client's original
//! packet to the stack, which answers the client directly (DSR). This kernel has no ipip
//! or fou module, so without this program tunnel packets would be dropped.
//!
//! Everything else — and anything that does not parse — is passed untouched and counted:
//! the program must never break the backend's own traffic. The only drops are tunnels to
//! us that the kernel's own tunnel code would drop too (each under its own reason).
//!
//! The same object holds `xlb_mss_clamp` (`mss`), the TC egress program that keeps the
//! SYN-ACKs of tunnelled connections from inviting segments too big for the tunnel.
#![no_std]
#![no_main]

mod mss;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    counters::{Drop, Event, Pass},
    ecn::{self, ECN_MASK},
    maps::DecapAddr,
};
use lb_ebpf::{
    csum,
    parse::{
        self,
        eth::{ETH_HLEN, VLAN_HLEN},
        ipv4::IPV4_HLEN,
        ipv6::IPV6_HLEN,
        ETH_P_IP, ETH_P_IPV6, FRAG_NONE, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP, L2, L3,
    },
    ptr::{read, write},
    stats::{bump, stats_map, StatsMap},
};

/// This host's addresses that tunnels may be addressed to. Written by `xlb decap`.
#[map]
static DECAP_ADDRS: HashMap<DecapAddr, u32> = HashMap::with_max_entries(256, 0);

/// Slot 0: the UDP port GUE tunnels come to (host order); 0: IP-in-IP only. Written by
/// `xlb decap --gue-port`.
#[map]
static GUE_PORT: Array<u32> = Array::with_max_entries(1, 0);

/// A GUE tunnel's UDP header.
const UDP_HLEN: usize = 8;

/// Per-CPU counters by reason slot. Written here, summed by `xlb decap`.
#[map]
static STATS: StatsMap = stats_map();

/// Why a frame was not decapsulated.
enum Refused {
    /// Handed to the stack untouched: not a tunnel to us, or the stack's checks decide.
    Pass(Pass),
    /// A tunnel to us that the kernel's tunnel code would drop as well.
    Drop(Drop),
}

impl From<Pass> for Refused {
    fn from(reason: Pass) -> Self {
        Refused::Pass(reason)
    }
}

impl From<Drop> for Refused {
    fn from(reason: Drop) -> Self {
        Refused::Drop(reason)
    }
}

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let (slot, verdict) = match decap(&ctx) {
        Ok(()) => (Event::Decapsulated.slot(), xdp_action::XDP_PASS),
        Err(Refused::Pass(reason)) => (reason.slot(), xdp_action::XDP_PASS),
        Err(Refused::Drop(reason)) => (reason.slot(), xdp_action::XDP_DROP),
    };
    bump(&STATS, slot);
    verdict
}

/// Strips the tunnel header, or says why the frame is left alone or dropped.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<(), Refused> {
    let (l2, l3, t) = local_tunnel(ctx)?;
    check_inner(ctx, &l3, &t)?;
    // Before the strip, where the drop can still leave the frame as it came. After the
    // inner header is rewritten nothing refuses a frame but a failed head adjustment, which
    // cannot fail when shrinking the frame by a header it holds.
    propagate_ecn(ctx, &l3, &t)?;
    strip(ctx, &l2, &l3, &t)
}

/// Where a tunnel's inner packet is, and what it is.
struct Inner {
    /// Its offset in the frame: behind the outer IP header, or the UDP header of GUE.
    off: usize,
    /// Its EtherType.
    ethertype: u16,
}

/// The inner packet of a GUE tunnel (UDP to `GUE_PORT`) at `l3`, `None` for any other UDP
/// datagram (the stack's). The UDP header must be whole and its length what the IP header
/// leaves for it, and the inner packet's version IPv4's or IPv6's (GUE's variant 1 tells
/// them apart by it). Its checksum, zero or not, is not checked: that would take a sum over
/// every byte of the packet, and what it guards beyond what is checked here (port, length,
/// version, our address) is the inner packet, whose own checksums the stack checks once
/// the tunnel is stripped (RFC 6936's argument for tunnels).
#[inline(always)]
fn gue_inner(ctx: &XdpContext, l3: &L3) -> Result<Option<Inner>, Refused> {
    let port = GUE_PORT.get(0).copied().unwrap_or(0);
    if port == 0 {
        return Ok(None);
    }
    let udp = read::<[u8; UDP_HLEN]>(ctx, l3.l4_off()).ok_or(Pass::Malformed)?;
    if u32::from(u16::from_be_bytes([udp[2], udp[3]])) != port {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if len != l3.l3_end().saturating_sub(l3.l4_off()) {
        return Err(Pass::Malformed.into());
    }
    let off = l3.l4_off() + UDP_HLEN;
    let ethertype = match read::<[u8; 2]>(ctx, off).ok_or(Pass::Malformed)?[0] >> 4 {
        4 => ETH_P_IP,
        6 => ETH_P_IPV6,
        _ => return Err(Pass::Malformed.into()),
    };
    Ok(Some(Inner { off, ethertype }))
}

/// The frame's headers and its inner packet, if it is an unfragmented tunnel to one of our
/// addresses whose outer header is intact.
#[inline(always)]
fn local_tunnel(ctx: &XdpContext) -> Result<(L2, L3, Inner), Refused> {
    let l2 = parse::eth(ctx).map_err(|_| Pass::Malformed)?;
    let l3 = match l2.ethertype {
        ETH_P_IP => parse::ipv4(ctx, l2.l3_off),
        ETH_P_IPV6 => parse::ipv6(ctx, l2.l3_off),
        _ => return Err(Pass::NotTunnel.into()),
    }
    .map_err(|_| Pass::Malformed)?;
    let inner = match l3.proto {
        IPPROTO_IPIP => Inner {
            off: l3.l4_off(),
            ethertype: ETH_P_IP,
        },
        IPPROTO_IPV6 => Inner {
            off: l3.l4_off(),
            ethertype: ETH_P_IPV6,
        },
        IPPROTO_UDP if l3.frag == FRAG_NONE => gue_inner(ctx, &l3)?.ok_or(Pass::NotTunnel)?,
        _ => return Err(Pass::NotTunnel.into()),
    };
    // Fragmented tunnel packets cannot be stripped one by one; the stack drops them.
    if l3.frag != FRAG_NONE {
        return Err(Pass::Malformed.into());
    }
    let key = DecapAddr {
        addr: l3.dst,
        family: u32::from(l3.family),
    };
    if DECAP_ADDRS.get_ptr(&key).is_none() {
        // A tunnel aimed at an address we do not accept usually means a balancer configured
        // with a backend address this host lacks: worth a debug line (filtered out in the
        // kernel unless `--log-level debug`), and always counted.
        if l3.family == FAMILY_V4 {
            debug!(
                ctx,
                "tunnel to {:i} is not for a local address",
                u32::from_be(l3.dst[0])
            );
        } else {
            debug!(ctx, "IPv6 tunnel is not for a local address");
        }
        return Err(Pass::TunnelNotLocal.into());
    }
    // Checked only here, for tunnels to us: any other frame goes to the stack untouched,
    // and the stack checks it. Once stripped, the outer header is gone and nobody would.
    if l3.family == FAMILY_V4 && !parse::ipv4::checksum_ok(ctx, &l3) {
        return Err(Drop::TunnelBadChecksum.into());
    }
    Ok((l2, l3, inner))
}

/// Checks that the inner packet is what the outer header announced and lies inside it.
/// Shorter is fine: the stack trims what the outer packet carries behind it.
#[inline(always)]
fn check_inner(ctx: &XdpContext, l3: &L3, inner: &Inner) -> Result<(), Refused> {
    let version = read::<[u8; 2]>(ctx, inner.off).ok_or(Pass::Malformed)?[0] >> 4;
    let want = if inner.ethertype == ETH_P_IP {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    if version != want {
        return Err(Pass::Malformed.into());
    }
    // And whole inside the outer packet: bytes behind it are Ethernet padding, which the
    // stack would otherwise take for the rest of the inner packet (fixtures_mutated_frames
    // found a one-byte inner packet completed by the padding).
    let inner_header = if want == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    let outer_end = l3.l3_end();
    if inner.off + inner_header > outer_end {
        return Err(Pass::Malformed.into());
    }
    // Its own length must fit too: the stack believes it, and would take bytes from behind
    // the outer packet (padding, or whatever a sender put there) for the inner packet's end.
    let (len_at, len_base) = if want == FAMILY_V4 {
        (2, 0) // total length
    } else {
        (4, IPV6_HLEN) // payload length
    };
    let len = read::<[u8; 2]>(ctx, inner.off + len_at).ok_or(Pass::Malformed)?;
    if inner.off + len_base + usize::from(u16::from_be_bytes(len)) > outer_end {
        return Err(Drop::TunnelInnerTooLong.into());
    }
    Ok(())
}

/// Carries congestion marked on the outer header over to the inner packet (RFC 6040
/// section 4.2, the table at `lb_common::ecn::decapsulate`): routers between the balancer
/// and us mark the header they see, which is the one we remove.
#[inline(always)]
fn propagate_ecn(ctx: &XdpContext, l3: &L3, inner: &Inner) -> Result<(), Refused> {
    let at = inner.off;
    let inner_v4 = inner.ethertype == ETH_P_IP;
    let head = read::<[u8; 2]>(ctx, at).ok_or(Pass::Malformed)?;
    // The ECN field: IPv4, the low bits of the TOS byte (the second); IPv6, the low bits of
    // the traffic class, which straddles the first two bytes: bits 5 and 4 of the second.
    let shift = if inner_v4 { 0 } else { 4 };
    let inner = (head[1] >> shift) & ECN_MASK;
    let marked = ecn::decapsulate(l3.tos, inner).ok_or(Drop::TunnelCeNotEct)?;
    if marked == inner {
        return Ok(());
    }
    let new_head = [
        head[0],
        (head[1] & !(ECN_MASK << shift)) | (marked << shift),
    ];
    if inner_v4 {
        // Read before anything is written, so that a frame is never left half-changed.
        let check = read::<[u8; 2]>(ctx, at + 10).ok_or(Pass::Malformed)?;
        // RFC 1624: the checksum follows the one 16-bit word that changed.
        let check = csum::replace(
            u16::from_be_bytes(check),
            u16::from_be_bytes(head),
            u16::from_be_bytes(new_head),
        );
        write(ctx, at + 10, check.to_be_bytes()).ok_or(Pass::Malformed)?;
    }
    write(ctx, at, new_head).ok_or(Pass::Malformed)?;
    Ok(())
}

/// Removes the outer headers, keeping the Ethernet header (and VLAN tag) in front of the
/// inner packet with the inner packet's EtherType.
#[inline(always)]
fn strip(ctx: &XdpContext, l2: &L2, l3: &L3, inner: &Inner) -> Result<(), Refused> {
    let macs = read::<[u8; 12]>(ctx, 0).ok_or(Pass::Malformed)?;
    let vlan = if l2.l3_off == ETH_HLEN + VLAN_HLEN {
        read::<u32>(ctx, ETH_HLEN - 2)
    } else {
        None
    };
    let outer_len = inner.off - l3.l3_off();
    // SAFETY: helper call on our own context; shrinks the frame at the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Pass::Malformed.into());
    }
    write(ctx, 0, macs).ok_or(Pass::Malformed)?;
    let mut off = ETH_HLEN - 2;
    if let Some(tag) = vlan {
        write(ctx, off, tag).ok_or(Pass::Malformed)?;
        off += VLAN_HLEN;
    }
    write(ctx, off, inner.ethertype.to_be()).ok_or(Pass::Malformed)?;
    Ok(())
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
