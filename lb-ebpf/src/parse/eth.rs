//! Ethernet, with at most one 802.1Q / 802.1ad tag.

use aya_ebpf::programs::XdpContext;
use lb_common::counters::Drop;

use crate::ptr::read_u16;

/// EtherType IPv4 (host order).
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6 (host order).
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q tag.
const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag; treated like 802.1Q, one tag deep.
const ETH_P_8021AD: u16 = 0x88a8;

/// Ethernet header length without a tag.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;

/// Layer-2 summary.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Offset of the L3 header (14, or 18 behind a tag).
    pub l3_off: usize,
    /// EtherType of the payload (host order), after the tag if any.
    pub ethertype: u16,
}

/// Parses the Ethernet header and one VLAN tag.
#[inline(always)]
pub fn eth(ctx: &XdpContext) -> Result<L2, Drop> {
    let ethertype = u16::from_be(read_u16(ctx, 12).ok_or(Drop::EthTruncated)?);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let inner = u16::from_be(read_u16(ctx, ETH_HLEN + 2).ok_or(Drop::VlanTruncated)?);
        return Ok(L2 {
            l3_off: ETH_HLEN + VLAN_HLEN,
            ethertype: inner,
        });
    }
    Ok(L2 {
        l3_off: ETH_HLEN,
        ethertype,
    })
}
