//! TCP / UDP ports and ICMP types.

use aya_ebpf::programs::XdpContext;
use lb_common::counters::Drop;

use super::{IPPROTO_TCP, L3};
use crate::ptr::{ptr_at, read};

/// Ports and TCP flags of a flow's packet.
#[derive(Clone, Copy)]
pub struct L4 {
    /// Source port, network order.
    pub sport_be: u16,
    /// Destination port, network order.
    pub dport_be: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for UDP.
    pub tcp_flags: u8,
}

/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// An ICMP / ICMPv6 header: type, code, checksum and four bytes that depend on the type.
pub const ICMP_HLEN: usize = 8;

/// Reads the ports of a TCP or UDP header at `l3.l4_off()`, checking the whole fixed header
/// is present (a truncated L4 header is never forwarded). One bounds check per header, and
/// halfword loads: L4 headers sit at even offsets (IP headers and IPv6 extension headers
/// have even lengths) of 2-byte aligned frames (see [`crate::ptr::read_u16`]).
#[inline(always)]
pub fn ports(ctx: &XdpContext, l3: &L3) -> Result<L4, Drop> {
    let off = l3.l4_off();
    let l3_end = l3.l3_end();
    if l3.proto == IPPROTO_TCP {
        let h = ptr_at::<[u16; TCP_HLEN / 2]>(ctx, off).ok_or(Drop::L4Truncated)?;
        // SAFETY: bounds checked by ptr_at; aligned as above. Halfword 6 holds byte 12
        // (data offset, high nibble) and byte 13 (flags), in memory order.
        let (sport_be, dport_be, off_flags) = unsafe { ((*h)[0], (*h)[1], (*h)[6]) };
        let doff = usize::from((off_flags as u8) >> 4) * 4;
        if doff < TCP_HLEN || off + doff > l3_end {
            return Err(Drop::L4Truncated);
        }
        return Ok(L4 {
            sport_be,
            dport_be,
            tcp_flags: (off_flags >> 8) as u8,
        });
    }
    if off + UDP_HLEN > l3_end {
        return Err(Drop::L4Truncated);
    }
    let h = ptr_at::<[u16; UDP_HLEN / 2]>(ctx, off).ok_or(Drop::L4Truncated)?;
    // SAFETY: bounds checked by ptr_at; aligned as above.
    let (sport_be, dport_be) = unsafe { ((*h)[0], (*h)[1]) };
    Ok(L4 {
        sport_be,
        dport_be,
        tcp_flags: 0,
    })
}

/// Type of the ICMP / ICMPv6 message at `l3.l4_off()` (whole 8-byte header must be present,
/// inside the IP packet: bytes behind it are Ethernet padding, whatever they hold).
#[inline(always)]
pub fn icmp_type(ctx: &XdpContext, l3: &L3) -> Result<u8, Drop> {
    if l3.l4_off() + ICMP_HLEN > l3.l3_end() {
        return Err(Drop::IcmpTruncated);
    }
    let hdr = read::<[u8; ICMP_HLEN]>(ctx, l3.l4_off()).ok_or(Drop::IcmpTruncated)?;
    Ok(hdr[0])
}
