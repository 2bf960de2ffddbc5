//! IPv6, walking extension headers with a bounded loop.

use aya_ebpf::programs::XdpContext;
use lb_common::{addr::FAMILY_V6, counters::Drop, maps::MAX_IPV6_EXT_HEADERS};

use super::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, L3};
use crate::ptr::{fits, ptr_at, read};

/// The fixed IPv6 header, fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20), network order.
    pub vtc_flow_be: u32,
    /// Payload length, network order.
    pub payload_len_be: u16,
    /// Next header.
    pub nexthdr: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address (raw words).
    pub saddr: [u32; 4],
    /// Destination address (raw words).
    pub daddr: [u32; 4],
}

/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Parses the IPv6 header at `off` and skips its extension headers.
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize) -> Result<L3, Drop> {
    let p = ptr_at::<Ipv6Hdr>(ctx, off).ok_or(Drop::Ipv6Truncated)?;
    // SAFETY: ptr_at checked the header lies inside the frame; fields are read in place
    // (see ipv4.rs).
    let hdr = unsafe { &*p };
    let vtc = u32::from_be(hdr.vtc_flow_be);
    if vtc >> 28 != 6 {
        return Err(Drop::Ipv6Truncated);
    }
    let l3_len = IPV6_HLEN + usize::from(u16::from_be(hdr.payload_len_be));
    if !fits(ctx, off, l3_len) {
        return Err(Drop::Ipv6Truncated);
    }
    let ext = skip_ext_headers(ctx, hdr.nexthdr, off + IPV6_HLEN, off + l3_len)?;
    Ok(L3 {
        family: FAMILY_V6,
        proto: ext.proto,
        tos: ((vtc >> 20) & 0xff) as u8,
        frag: ext.frag,
        df: false,
        l3_off_: off as u16,
        l4_off_: ext.l4_off as u16,
        l3_len_: l3_len as u32,
        src: hdr.saddr,
        dst: hdr.daddr,
    })
}

/// Where a chain of extension headers ends.
pub struct Ext {
    /// The protocol after the last extension header.
    pub proto: u8,
    /// Where that protocol's header starts.
    pub l4_off: usize,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER`, from a fragment header if any.
    pub frag: u8,
}

/// Skips the extension headers that start at `off` (the first one's type is `nexthdr`),
/// none of which may run past `end`. Shared by the packet's own header and the packet an
/// ICMPv6 error quotes, whose end is the error's.
#[inline(always)]
pub fn skip_ext_headers(
    ctx: &XdpContext,
    mut nexthdr: u8,
    off: usize,
    end: usize,
) -> Result<Ext, Drop> {
    let mut l4_off = off;
    let mut frag = FRAG_NONE;
    let mut walked = 0;
    // Bounded: at most MAX_IPV6_EXT_HEADERS headers, then we give up (counted).
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ext_header(nexthdr) {
            break;
        }
        // Next header and length byte together: see `crate::ptr` on one-byte reads.
        let [next, len_field] = read::<[u8; 2]>(ctx, l4_off).ok_or(Drop::Ipv6ExtTruncated)?;
        let len = match nexthdr {
            NEXTHDR_AUTH => (usize::from(len_field) + 2) * 4,
            NEXTHDR_FRAGMENT => {
                let off_flags =
                    u16::from_be(read::<u16>(ctx, l4_off + 2).ok_or(Drop::Ipv6ExtTruncated)?);
                // Offset in the high 13 bits, M flag in bit 0.
                frag = if off_flags & 0xfff8 != 0 {
                    FRAG_LATER
                } else if off_flags & 1 != 0 {
                    FRAG_FIRST
                } else {
                    FRAG_NONE
                };
                8
            }
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            _ => (usize::from(len_field) + 1) * 8,
        };
        nexthdr = next;
        l4_off += len;
        walked += 1;
        if l4_off > end {
            return Err(Drop::Ipv6ExtTruncated);
        }
    }
    if walked == MAX_IPV6_EXT_HEADERS && is_ext_header(nexthdr) {
        return Err(Drop::Ipv6ExtChainTooLong);
    }
    Ok(Ext {
        proto: nexthdr,
        l4_off,
        frag,
    })
}

#[inline(always)]
fn is_ext_header(nexthdr: u8) -> bool {
    matches!(
        nexthdr,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    )
}
