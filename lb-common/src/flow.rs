//! Connection-table keys: the full 5-tuple (both families; also what the flow hash reads)
//! and the short IPv4 key of the IPv4 table.

use crate::addr::AddrWords;

/// A flow's 5-tuple as the client sent it (client → VIP).
///
/// Used as the connection-table key and as the input of [`crate::hash::flow_hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address, raw network-order words (see [`crate::addr`]).
    pub src: AddrWords,
    /// VIP address, raw network-order words.
    pub dst: AddrWords,
    /// Client port, network byte order as read from the packet (0 for ICMP).
    pub sport_be: u16,
    /// VIP port, network byte order as read from the packet.
    pub dport_be: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// [`crate::addr::FAMILY_V4`] or [`crate::addr::FAMILY_V6`].
    pub family: u8,
    /// Always zero: the kernel hashes every byte of a key.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The ports and protocol as one word, the way the hash consumes them.
    #[inline(always)]
    pub const fn ports_word(&self) -> u32 {
        (self.sport_be as u32) | ((self.dport_be as u32) << 16)
    }

    /// Protocol and family as one word, the way the hash consumes them.
    #[inline(always)]
    pub const fn proto_word(&self) -> u32 {
        (self.proto as u32) | ((self.family as u32) << 8)
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integer fields, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for FlowKey {}

#[cfg(feature = "user")]
impl FlowKey {
    /// The key the data plane builds from a client → VIP packet with these addresses,
    /// ports and protocol (both addresses of one family).
    pub fn between(
        client: std::net::IpAddr,
        sport: u16,
        vip: std::net::IpAddr,
        dport: u16,
        proto: u8,
    ) -> FlowKey {
        let (src, family) = crate::addr::to_words(client);
        let (dst, _) = crate::addr::to_words(vip);
        FlowKey {
            src,
            dst,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

/// The key of an IPv4 flow in the IPv4 connection table (`CONNS_V4`).
///
/// The kernel hashes and compares every byte of a key on each lookup: 16 bytes instead of
/// [`FlowKey`]'s 40 make the lookup every packet of a known IPv4 flow pays cheaper.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    /// Client address (raw network order).
    pub src: u32,
    /// VIP address (raw network order).
    pub dst: u32,
    /// Client port, network byte order.
    pub sport_be: u16,
    /// VIP port, network byte order.
    pub dport_be: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero: the kernel hashes every byte of a key.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);

impl FlowKeyV4 {
    /// The IPv4 key of `flow` (meaningful only when `flow.family` is IPv4).
    #[inline(always)]
    pub const fn of(flow: &FlowKey) -> FlowKeyV4 {
        FlowKeyV4 {
            src: flow.src[0],
            dst: flow.dst[0],
            sport_be: flow.sport_be,
            dport_be: flow.dport_be,
            proto: flow.proto,
            _pad: [0; 3],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only integer fields, explicit padding, no invalid bit patterns.
unsafe impl aya::Pod for FlowKeyV4 {}

#[cfg(feature = "user")]
impl FlowKeyV4 {
    /// The full key of the flow this IPv4 key stands for (the inverse of [`FlowKeyV4::of`]).
    pub const fn widen(&self) -> FlowKey {
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            family: crate::addr::FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use crate::addr::{FAMILY_V4, FAMILY_V6};

    #[test]
    fn between_lays_the_key_out_as_the_packet_does() {
        let k = FlowKey::between(
            "198.18.0.10".parse().unwrap(),
            40000,
            "198.18.1.1".parse().unwrap(),
            80,
            6,
        );
        // Words and ports in network order, as read from the packet's bytes.
        assert_eq!(k.src[0].to_ne_bytes(), [198, 18, 0, 10]);
        assert_eq!(k.dst[0].to_ne_bytes(), [198, 18, 1, 1]);
        assert_eq!((k.src[1], k.dst[3]), (0, 0));
        assert_eq!(k.sport_be.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(k.dport_be.to_ne_bytes(), [0, 80]);
        assert_eq!((k.proto, k.family), (6, FAMILY_V4));
        let k6 = FlowKey::between(
            "fd00::10".parse().unwrap(),
            1,
            "fd00:1::1".parse().unwrap(),
            2,
            17,
        );
        assert_eq!(k6.family, FAMILY_V6);
        assert_eq!(k6.src[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(k6.dst[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn an_ipv4_key_widens_back_to_its_flow() {
        let k = FlowKey::between(
            "198.18.0.10".parse().unwrap(),
            40000,
            "198.18.1.1".parse().unwrap(),
            80,
            17,
        );
        assert_eq!(FlowKeyV4::of(&k).widen(), k);
    }
}
