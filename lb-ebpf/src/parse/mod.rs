//! Header parsers, one function per header, shared by the balancer and the decap program.
//!
//! Every function reads through [`crate::ptr`] and returns `Result<_, Drop>` naming what was
//! wrong, so the caller decides whether a bad frame is dropped (balancer) or passed (decap).

pub mod eth;
pub mod ipv4;
pub mod ipv6;
pub mod l4;

pub use eth::{eth, ETH_P_IP, ETH_P_IPV6, L2};
pub use ipv4::ipv4;
pub use ipv6::ipv6;
pub use l4::{icmp_type, ports, L4};

/// IP protocol numbers we act on.
pub const IPPROTO_ICMP: u8 = 1;
/// IPv4-in-IP (tunnel).
pub const IPPROTO_IPIP: u8 = 4;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6-in-IP (tunnel).
pub const IPPROTO_IPV6: u8 = 41;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// `L3::frag`: not a fragment.
pub const FRAG_NONE: u8 = 0;
/// `L3::frag`: first fragment (carries the L4 header).
pub const FRAG_FIRST: u8 = 1;
/// `L3::frag`: a later fragment (no L4 header).
pub const FRAG_LATER: u8 = 2;

/// What the IP parsers found; one layout for both families. Kept small (48 bytes): it lives
/// on the entry function's stack, which the whole BPF call chain shares (512 bytes).
#[derive(Clone, Copy)]
pub struct L3 {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// TOS (v4) or traffic class (v6).
    pub tos: u8,
    /// `FRAG_*`.
    pub frag: u8,
    /// IPv4 DF bit set (always false for IPv6, which routers never fragment).
    pub df: bool,
    /// Offset of the IP header in the frame (see [`L3::l3_off`]).
    pub l3_off_: u16,
    /// Offset of the upper-layer header.
    pub l4_off_: u16,
    /// IP packet length from the header (total length; v6: 40 + payload length).
    pub l3_len_: u32,
    /// Source address words (raw network order).
    pub src: [u32; 4],
    /// Destination address words (raw network order).
    pub dst: [u32; 4],
}

impl L3 {
    /// Offset of the IP header in the frame.
    #[inline(always)]
    pub fn l3_off(&self) -> usize {
        usize::from(self.l3_off_)
    }

    /// Offset of the upper-layer header.
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        usize::from(self.l4_off_)
    }

    /// IP packet length.
    #[inline(always)]
    pub fn l3_len(&self) -> usize {
        self.l3_len_ as usize
    }

    /// Offset just past the IP packet (Ethernet padding may follow).
    #[inline(always)]
    pub fn l3_end(&self) -> usize {
        self.l3_off() + self.l3_len()
    }
}
