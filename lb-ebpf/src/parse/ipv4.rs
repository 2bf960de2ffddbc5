//! IPv4, honouring IHL (options) and the total length.

use aya_ebpf::programs::XdpContext;
use lb_common::{addr::FAMILY_V4, counters::Drop};

use super::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, L3};
use crate::ptr::{fits, ptr_at};

/// The fixed part of an IPv4 header, fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP + ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len_be: u16,
    /// Identification, network order.
    pub id_be: u16,
    /// Flags and fragment offset, network order.
    pub frag_off_be: u16,
    /// Time to live.
    pub ttl: u8,
    /// Upper-layer protocol.
    pub proto: u8,
    /// Header checksum, network order.
    pub check_be: u16,
    /// Source address (raw).
    pub saddr: u32,
    /// Destination address (raw).
    pub daddr: u32,
}

/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// "More fragments" flag in host-order `frag_off`.
pub const IP_MF: u16 = 0x2000;
/// "Don't fragment" flag in host-order `frag_off`.
pub const IP_DF: u16 = 0x4000;
/// Fragment offset bits (8-byte units) in host-order `frag_off`.
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// Parses the IPv4 header at `off`.
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize) -> Result<L3, Drop> {
    let p = ptr_at::<Ipv4Hdr>(ctx, off).ok_or(Drop::Ipv4Truncated)?;
    // SAFETY: ptr_at checked the header lies inside the frame. Fields are read in place
    // (no copy of the header on the stack: the verifier's 512-byte stack is shared by
    // the whole call chain).
    let hdr = unsafe { &*p };
    if hdr.version_ihl >> 4 != 4 {
        return Err(Drop::Ipv4BadIhl);
    }
    let ihl = usize::from(hdr.version_ihl & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return Err(Drop::Ipv4BadIhl);
    }
    if !fits(ctx, off, ihl) {
        return Err(Drop::Ipv4BadIhl);
    }
    let tot_len = usize::from(u16::from_be(hdr.tot_len_be));
    if tot_len < ihl || !fits(ctx, off, tot_len) {
        return Err(Drop::Ipv4BadLength);
    }
    let frag_off = u16::from_be(hdr.frag_off_be);
    let frag = if frag_off & IP_OFFSET_MASK != 0 {
        FRAG_LATER
    } else if frag_off & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    Ok(L3 {
        family: FAMILY_V4,
        proto: hdr.proto,
        tos: hdr.tos,
        frag,
        df: frag_off & IP_DF != 0,
        l3_off_: off as u16,
        l4_off_: (off + ihl) as u16,
        l3_len_: tot_len as u32,
        src: [hdr.saddr, 0, 0, 0],
        dst: [hdr.daddr, 0, 0, 0],
    })
}
