//! QUIC server-ID routing: which backend a QUIC packet's connection ID names.
//!
//! Why: a QUIC connection outlives its 5-tuple. A client that moves (Wi-Fi to cellular, a
//! NAT that rebinds its port) keeps the connection and sends from a new address or port; a
//! balancer that places flows by their 5-tuple sends that new path to another backend,
//! which knows nothing of the connection, and the client's connection dies. So a backend
//! writes an ID of its own into every connection ID it issues, and the balancer reads it
//! back from each packet the connection's tables do not know.
//!
//! Encoding: the plaintext connection IDs of QUIC-LB (the IETF QUIC working group's
//! "Generating Routable QUIC Connection IDs"): the first octet's top three bits are the
//! configuration's rotation codepoint ([`VipQuic::config_id`]; `0b111` marks an ID that
//! names no server), the next [`VipQuic::id_bytes`] octets the server ID, big-endian, and
//! the rest the server's own.
//!
//! Only short-header packets (1-RTT, what a connection sends once established) carry a
//! connection ID the backend chose where the balancer can find it without knowing its
//! length: right after the first byte. Long-header packets (the handshake) go by the
//! 5-tuple like any other flow: a client's first Initial carries a connection ID of its
//! own choice, which names no server.

/// Bytes of a UDP payload that [`server_id`] reads: the first byte, the connection ID's
/// first octet and at most four octets of server ID, rounded up to a whole word. A short
/// header packet is longer than this (connection ID, packet number, at least a 16-byte
/// AEAD tag), so a payload shorter than this is no QUIC packet that can be routed.
pub const QUIC_HEAD: usize = 8;
/// Longest server ID read, in octets: it fits a `u32`.
pub const MAX_ID_BYTES: u32 = 4;
/// Largest configuration codepoint: `0b111` marks connection IDs that name no server.
pub const MAX_CONFIG_ID: u32 = 6;

/// A VIP's QUIC-LB configuration, as the daemon packs it into `VipInfo::flags`
/// ([`VipQuic::flags`], [`VipQuic::from_flags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipQuic {
    /// Octets of server ID after the first octet (1..=[`MAX_ID_BYTES`]).
    pub id_bytes: u32,
    /// The configuration codepoint the backends write (0..=[`MAX_CONFIG_ID`]): connection
    /// IDs of another configuration (a rotation under way, or `0b111`) go by the 5-tuple.
    pub config_id: u32,
}

pub use crate::maps::VIP_F_QUIC;
const ID_BYTES_SHIFT: u32 = 16;
const CONFIG_ID_SHIFT: u32 = 20;

impl VipQuic {
    /// The `VipInfo::flags` bits that say so ([`VIP_F_QUIC`] included).
    pub const fn flags(self) -> u32 {
        VIP_F_QUIC
            | ((self.id_bytes & 0xf) << ID_BYTES_SHIFT)
            | ((self.config_id & 0x7) << CONFIG_ID_SHIFT)
    }

    /// The configuration in a VIP's flags, if it routes QUIC by server ID.
    pub const fn from_flags(flags: u32) -> Option<Self> {
        if flags & VIP_F_QUIC == 0 {
            return None;
        }
        Some(Self {
            id_bytes: (flags >> ID_BYTES_SHIFT) & 0xf,
            config_id: (flags >> CONFIG_ID_SHIFT) & 0x7,
        })
    }
}

/// The server ID a UDP payload's first [`QUIC_HEAD`] bytes name under `quic`, or `None`:
/// a long-header packet, a connection ID of another configuration, or a configuration
/// out of range (which the daemon never writes). The header's fixed bit is not checked: a
/// connection that greases it (RFC 9287) still names its server.
#[inline(always)]
pub fn server_id(head: &[u8; QUIC_HEAD], quic: VipQuic) -> Option<u32> {
    // Header form 1: a long header.
    if head[0] & 0x80 != 0 {
        return None;
    }
    if u32::from(head[1] >> 5) != quic.config_id || quic.config_id > MAX_CONFIG_ID {
        return None;
    }
    // The ID's octets, big-endian; a match rather than a loop: four cases, no bounds for
    // the verifier to follow.
    let id = match quic.id_bytes {
        1 => u32::from(head[2]),
        2 => u32::from(head[2]) << 8 | u32::from(head[3]),
        3 => u32::from(head[2]) << 16 | u32::from(head[3]) << 8 | u32::from(head[4]),
        4 => u32::from_be_bytes([head[2], head[3], head[4], head[5]]),
        _ => return None,
    };
    Some(id)
}

/// The largest server ID `id_bytes` octets hold.
pub const fn max_server_id(id_bytes: u32) -> u32 {
    if id_bytes >= MAX_ID_BYTES {
        u32::MAX
    } else {
        (1 << (8 * id_bytes)) - 1
    }
}

/// `QUIC_SERVERS`: [`QuicServerKey`] → [`QuicServer`]. Written by the daemon.
pub const MAP_QUIC_SERVERS: &str = "QUIC_SERVERS";

/// A server ID of one VIP's backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuicServerKey {
    /// `VipInfo::vip_id`.
    pub vip_id: u32,
    /// The server ID its connection IDs carry.
    pub server_id: u32,
}
const _: () = assert!(core::mem::size_of::<QuicServerKey>() == 8);

/// The backend a server ID names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicServer {
    /// Backend index.
    pub backend: u32,
    /// `Backend::generation` of the slot when the daemon wrote this: a slot given to
    /// another backend since no longer matches, so a stale entry never routes there.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<QuicServer>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, no padding, any bit pattern valid.
unsafe impl aya::Pod for QuicServerKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for QuicServer {}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: VipQuic = VipQuic {
        id_bytes: 2,
        config_id: 0,
    };

    /// A short-header packet's first bytes: first byte, then the connection ID.
    fn short(cid: &[u8]) -> [u8; QUIC_HEAD] {
        let mut h = [0u8; QUIC_HEAD];
        h[0] = 0x40 | 0x01; // fixed bit, a packet number length
        h[1..1 + cid.len()].copy_from_slice(cid);
        h
    }

    #[test]
    fn flags_round_trip_and_stay_out_of_the_other_vip_bits() {
        for id_bytes in 1..=MAX_ID_BYTES {
            for config_id in 0..=MAX_CONFIG_ID {
                let q = VipQuic {
                    id_bytes,
                    config_id,
                };
                assert_eq!(VipQuic::from_flags(q.flags()), Some(q));
                // The VIP_F_* bits below: none taken.
                assert_eq!(q.flags() & 0xff, 0);
                assert_eq!(VipQuic::from_flags(q.flags() | 0xff), Some(q));
            }
        }
        assert_eq!(VipQuic::from_flags(0xff), None);
    }

    /// The table of what a packet names: (first bytes, configuration, server ID).
    #[test]
    fn short_headers_name_their_server() {
        let cases: &[(&str, [u8; QUIC_HEAD], VipQuic, Option<u32>)] = &[
            (
                "two octets",
                short(&[0x00, 0x12, 0x34, 0xaa]),
                TWO,
                Some(0x1234),
            ),
            (
                "the low five bits are the server's",
                short(&[0x1f, 0x00, 0x07]),
                TWO,
                Some(7),
            ),
            (
                "one octet",
                short(&[0x00, 0x09, 0xff]),
                VipQuic {
                    id_bytes: 1,
                    config_id: 0,
                },
                Some(9),
            ),
            (
                "three octets",
                short(&[0x00, 0x01, 0x02, 0x03, 0x04]),
                VipQuic {
                    id_bytes: 3,
                    config_id: 0,
                },
                Some(0x010203),
            ),
            (
                "four octets",
                short(&[0x00, 0xde, 0xad, 0xbe, 0xef]),
                VipQuic {
                    id_bytes: 4,
                    config_id: 0,
                },
                Some(0xdead_beef),
            ),
            (
                "configuration 5",
                short(&[0xa0, 0x00, 0x02]),
                VipQuic {
                    id_bytes: 2,
                    config_id: 5,
                },
                Some(2),
            ),
            (
                "another configuration: a rotation under way",
                short(&[0x20, 0x00, 0x02]),
                TWO,
                None,
            ),
            (
                "0b111: names no server",
                short(&[0xe0, 0x00, 0x02]),
                TWO,
                None,
            ),
            (
                "a long header (Initial)",
                {
                    let mut h = short(&[0x00, 0x00, 0x02]);
                    h[0] = 0xc0;
                    h
                },
                TWO,
                None,
            ),
            (
                "fixed bit clear (greased): still routed",
                {
                    let mut h = short(&[0x00, 0x00, 0x02]);
                    h[0] = 0x01;
                    h
                },
                TWO,
                Some(2),
            ),
            (
                "no ID octets configured",
                short(&[0x00, 0x00, 0x02]),
                VipQuic {
                    id_bytes: 0,
                    config_id: 0,
                },
                None,
            ),
            (
                "configuration out of range",
                short(&[0xe0, 0x00, 0x02]),
                VipQuic {
                    id_bytes: 2,
                    config_id: 7,
                },
                None,
            ),
        ];
        for (what, head, quic, want) in cases {
            assert_eq!(server_id(head, *quic), *want, "{what}");
        }
    }

    #[test]
    fn id_ranges() {
        assert_eq!(max_server_id(1), 0xff);
        assert_eq!(max_server_id(2), 0xffff);
        assert_eq!(max_server_id(3), 0xff_ffff);
        assert_eq!(max_server_id(4), u32::MAX);
    }
}
