//! The outer UDP checksum of a GUE tunnel over IPv6 (`lb_common::gue`: from the headers
//! alone), filled in once `encap::forward` has written the tunnel's headers.
//!
//! IPv6 only: RFC 768 makes the checksum optional over IPv4, and every receiver takes a
//! zero there, while over IPv6 a zero is an exception for tunnels (RFC 6935) that not every
//! middlebox knows. Over IPv4 it would cost each GUE packet about 8 ns (the bench's
//! `gue_adds` went from 1 to 9 ns) for nothing a receiver needs.
//!
//! Its own global BPF function, reading back from the frame what it needs: the verifier
//! checks it once, on its own. Inlined into the hit path, the sum's inputs took the entry
//! function's stack from 280 to 416 bytes (past what its call chains may use) and the
//! verifier's walk from 508 000 to 728 000 instructions.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use lb_common::gue::{self, InnerPacket, PROTO_UDP};
use lb_ebpf::{
    parse::{
        ipv4::{Ipv4Hdr, IPV4_HLEN},
        ipv6::{Ipv6Hdr, IPV6_HLEN},
        IPPROTO_ICMPV6, IPPROTO_TCP,
    },
    ptr::{ptr_at, ptr_at_mut, read},
};

/// The UDP header.
const UDP_HLEN: usize = 8;

/// Fills in the checksum of the GUE tunnel whose outer IPv6 header starts at `outer_off`
/// of the frame `raw`. Returns 1 when it wrote one, 0 when the field stays 0 (no checksum:
/// the headers do not tell it, see `lb_common::gue`; or no IPv6 header there).
#[no_mangle]
pub extern "C" fn xlb_gue_checksum(raw: *mut xdp_md, outer_off: u32) -> u64 {
    let ctx = XdpContext::new(raw);
    u64::from(fill(&ctx, outer_off as usize).is_some())
}

#[inline(always)]
fn fill(ctx: &XdpContext, outer_off: usize) -> Option<()> {
    if version(ctx, outer_off)? != 6 {
        return None;
    }
    let addresses = addresses_v6(ctx, outer_off)?;
    let udp_off = outer_off + IPV6_HLEN;
    // One checked pointer for the read and the write: a second check of the same bytes
    // is one LLVM folds away, and the verifier then sees an unchecked store.
    let udp = ptr_at_mut::<[u16; UDP_HLEN / 2]>(ctx, udp_off)?;
    // SAFETY: eight bytes checked above.
    let [sport, dport, len, _] = unsafe { *udp };
    let inner = inner_packet(ctx, udp_off + UDP_HLEN)?;
    let check = gue::udp_checksum(
        addresses,
        u16::from_be(sport),
        u16::from_be(dport),
        u16::from_be(len),
        gue::inner_sum(&inner),
    );
    if check == 0 {
        return None;
    }
    // SAFETY: as above; halfword-aligned (the frame and every header before it are of even
    // length, see `encap::NextHop::write_l2`).
    unsafe { (*udp)[3] = check.to_be() };
    Some(())
}

/// The IP version of the header at `off`. Read as two bytes: for a one-byte read LLVM
/// turns the bounds check into a form the verifier does not take as one.
#[inline(always)]
fn version(ctx: &XdpContext, off: usize) -> Option<u8> {
    Some(read::<[u8; 2]>(ctx, off)?[0] >> 4)
}

/// The sum of the addresses of the IPv4 header at `off` (the client's; read in place: this
/// function's stack adds to the entry function's, and the two may use 512 bytes in all).
#[inline(always)]
fn addresses_v4(ctx: &XdpContext, off: usize) -> Option<u32> {
    let h = ptr_at::<Ipv4Hdr>(ctx, off)?;
    // SAFETY: the whole header checked above.
    let (src, dst) = unsafe { ((*h).saddr, (*h).daddr) };
    Some(gue::add_address(
        gue::add_address(0, &[src, 0, 0, 0]),
        &[dst, 0, 0, 0],
    ))
}

/// As [`addresses_v4`] for an IPv6 header.
#[inline(always)]
fn addresses_v6(ctx: &XdpContext, off: usize) -> Option<u32> {
    let h = ptr_at::<Ipv6Hdr>(ctx, off)?;
    // SAFETY: the whole header checked above; the addresses are read where they are.
    unsafe {
        Some(gue::add_address(
            gue::add_address(0, &(*h).saddr),
            &(*h).daddr,
        ))
    }
}

/// The client's packet at `off`, as its sum needs it (`None`: not one whose headers can
/// be read, which the balancer never tunnels).
#[inline(always)]
fn inner_packet(ctx: &XdpContext, off: usize) -> Option<InnerPacket> {
    if version(ctx, off)? == 4 {
        let h = ptr_at::<Ipv4Hdr>(ctx, off)?;
        // SAFETY: the whole header checked above.
        let (version_ihl, tot_len_be, proto) =
            unsafe { ((*h).version_ihl, (*h).tot_len_be, (*h).proto) };
        let hlen = usize::from(version_ihl & 0x0f) * 4;
        let total = usize::from(u16::from_be(tot_len_be));
        if hlen < IPV4_HLEN || total < hlen {
            return None;
        }
        let udp_check = if proto == PROTO_UDP {
            u16::from_be(read::<u16>(ctx, off + hlen + 6)?)
        } else {
            1
        };
        return Some(InnerPacket {
            v4: true,
            proto,
            address_sum: addresses_v4(ctx, off)?,
            ip_hlen: hlen as u16,
            l4_len: (total - hlen) as u16,
            v6_lead: [0; 4],
            udp_check,
        });
    }
    let lead = read::<[u16; 4]>(ctx, off)?.map(u16::from_be);
    // The fourth word: payload length, then next header and hop limit.
    let nexthdr = (lead[3] >> 8) as u8;
    // Extension headers would have to be summed too: the sum is then left unknown.
    let ip_hlen = match nexthdr {
        IPPROTO_TCP | PROTO_UDP | IPPROTO_ICMPV6 => IPV6_HLEN as u16,
        _ => 0,
    };
    Some(InnerPacket {
        v4: false,
        proto: nexthdr,
        address_sum: addresses_v6(ctx, off)?,
        ip_hlen,
        l4_len: lead[2],
        v6_lead: lead,
        udp_check: 1,
    })
}
