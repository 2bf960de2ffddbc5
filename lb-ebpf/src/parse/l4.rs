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

/// Reads the ports of a TCP or UDP header at `l3.l4_off()`, checking the whole fixed header
/// is present (a truncated L4 header is never forwarded).
#[inline(always)]
pub fn ports(ctx: &XdpContext, l3: &L3) -> Result<L4, Drop> {
    let off = l3.l4_off();
    let ports = ptr_at::<[u16; 2]>(ctx, off).ok_or(Drop::L4Truncated)?;
    // SAFETY: bounds checked by ptr_at.
    let [sport_be, dport_be] = unsafe { ports.read_unaligned() };
    if l3.proto == IPPROTO_TCP {
        // Byte 12: data offset (high nibble); byte 13: flags.
        let b = read::<[u8; 2]>(ctx, off + 12).ok_or(Drop::L4Truncated)?;
        let doff = usize::from(b[0] >> 4) * 4;
        if doff < TCP_HLEN || off + doff > l3.l3_off() + l3.l3_len() {
            return Err(Drop::L4Truncated);
        }
        return Ok(L4 {
            sport_be,
            dport_be,
            tcp_flags: b[1],
        });
    }
    if off + UDP_HLEN > l3.l3_off() + l3.l3_len() || ptr_at::<[u8; UDP_HLEN]>(ctx, off).is_none() {
        return Err(Drop::L4Truncated);
    }
    Ok(L4 {
        sport_be,
        dport_be,
        tcp_flags: 0,
    })
}

/// Type of the ICMP / ICMPv6 message at `l3.l4_off()` (whole 8-byte header must be present).
#[inline(always)]
pub fn icmp_type(ctx: &XdpContext, l3: &L3) -> Result<u8, Drop> {
    let hdr = read::<[u8; 8]>(ctx, l3.l4_off()).ok_or(Drop::IcmpTruncated)?;
    Ok(hdr[0])
}
