//! IPv4, honouring IHL (options) and the total length; and the header checksum, which the
//! decap program checks.

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

/// Whether the header of the IPv4 packet `l3` (as [`ipv4`] parsed it) has a correct
/// checksum: its 16-bit words, checksum included, add up to 0xffff (RFC 1071). Only the
/// decap program asks: the balancer forwards the client's header untouched, and its
/// backend's stack checks it.
#[inline(always)]
#[expect(
    unused_assignments,
    reason = "the last chunk advances `off` as the others do, so that the four read alike"
)]
pub fn checksum_ok(ctx: &XdpContext, l3: &L3) -> bool {
    let mut off = l3.l3_off();
    let options = l3.l4_off() - off - IPV4_HLEN;
    let mut sum = match sum_words::<{ IPV4_HLEN / 2 }>(ctx, off) {
        Some(s) => s,
        None => return false,
    };
    off += IPV4_HLEN;
    // Options (0 to 40 bytes, in 4-byte words) in chunks of 32, 16, 8 and 4 bytes, as the
    // bits of their length say. A loop over the words at `off + 4 * i` is what one would
    // write, but LLVM strength-reduces its bounds check into `~off - data`, a pointer
    // subtracted from a scalar, which the verifier refuses.
    macro_rules! chunk {
        ($bytes:literal) => {
            if options & $bytes != 0 {
                match sum_words::<{ $bytes / 2 }>(ctx, off) {
                    Some(s) => sum += s,
                    None => return false,
                }
                off += $bytes;
            }
        };
    }
    chunk!(32);
    chunk!(16);
    chunk!(8);
    chunk!(4);
    crate::csum::finish(sum) == 0
}

/// Sum of the `N` 16-bit words at the even offset `off`, read in host order: a ones'
/// complement sum is byte-order independent (RFC 1071 section 2B), and 0xffff reads the
/// same both ways. One bounds check for all of them; the constant `N` unrolls the loop.
#[inline(always)]
fn sum_words<const N: usize>(ctx: &XdpContext, off: usize) -> Option<u32> {
    let p = ptr_at::<[u16; N]>(ctx, off)?;
    let mut sum = 0u32;
    for i in 0..N {
        // SAFETY: ptr_at checked all N words lie inside the frame; `off` is even and
        // frames start 2-byte aligned (see `crate::ptr::read_u16`).
        sum += u32::from(unsafe { (*p)[i] });
    }
    Some(sum)
}
