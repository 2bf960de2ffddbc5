//! An independent reading of the drop reasons (`lb_common::counters::Drop`) of the balancer
//! ([`check`]) and of the decap program ([`check_decap`]): whether a frame shows what the
//! reason it was dropped for says. Written from the reasons' definitions and the RFCs, not
//! from the parser, so that a test can catch a valid packet dropped under a reason it does
//! not have (as the 1 KiB read limit once dropped valid IPv6 packets as truncated).
//!
//! Each check is a necessary condition: the reason's defining fault, read over the IP
//! packet as its own length field delimits it. The parser may read Ethernet padding where
//! this reading stops at the packet's end, so it finds fewer faults, never more.

use std::net::IpAddr;

use lb_common::counters::Drop;

use crate::packet::{
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, PROTO_AH, PROTO_DSTOPTS,
    PROTO_FRAGMENT, PROTO_HOPOPTS, PROTO_ICMP, PROTO_ICMPV6, PROTO_ROUTING, PROTO_TCP, PROTO_UDP,
};

/// What the balancer under test serves: the checks that depend on configuration.
pub struct Services<'a> {
    /// (address, port, protocol number) of every VIP service; port 0: every port (an
    /// all-ports VIP).
    pub vips: &'a [(IpAddr, u16, u8)],
    /// The link MTU towards the backends.
    pub mtu: usize,
    /// Bytes the tunnel adds to an IPv4 client packet (its backends' family).
    pub v4_overhead: usize,
}

impl Services<'_> {
    /// Whether `a` carries a VIP.
    pub fn is_vip_address(&self, a: IpAddr) -> bool {
        self.vips.iter().any(|v| v.0 == a)
    }
}

/// Extension headers the balancer walks (RFC 8200 order does not matter here).
const MAX_EXT: usize = lb_common::maps::MAX_IPV6_EXT_HEADERS as usize;

/// `Ok` when frame `f` shows the fault `reason` names; otherwise why not.
pub fn check(f: &[u8], reason: Drop, services: &Services) -> Result<(), String> {
    let fail = |what: &str| Err(format!("dropped as {}, but {what}", reason.name()));
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let tagged = matches!(be16(f, 12), Some(ETHERTYPE_VLAN | ETHERTYPE_QINQ));
    match reason {
        Drop::EthTruncated if f.len() < 14 => return Ok(()),
        Drop::VlanTruncated if tagged && f.len() < 18 => return Ok(()),
        Drop::EthTruncated | Drop::VlanTruncated => return fail("its Ethernet header is whole"),
        _ => {}
    }
    let l2 = if tagged { 18 } else { 14 };
    let Some(ip) = f.get(l2..) else {
        return fail("the frame ends in its Ethernet header");
    };
    let v4 = match be16(f, l2 - 2) {
        Some(ETHERTYPE_IPV4) => true,
        Some(ETHERTYPE_IPV6) => false,
        _ => return fail("the frame carries no IP"),
    };
    let packet = if v4 {
        if ip.len() < 20 {
            return if reason == Drop::Ipv4Truncated {
                Ok(())
            } else {
                fail("the IPv4 header is cut off")
            };
        }
        let vihl = ip[0];
        let ihl = usize::from(vihl & 0x0f) * 4;
        let bad_ihl = vihl >> 4 != 4 || ihl < 20 || ihl > ip.len();
        if reason == Drop::Ipv4Truncated {
            return fail("the IPv4 header is whole");
        }
        if reason == Drop::Ipv4BadIhl {
            return if bad_ihl {
                Ok(())
            } else {
                fail("version and IHL are fine")
            };
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let bad_length = total < ihl || total > ip.len();
        if reason == Drop::Ipv4BadLength {
            return if !bad_ihl && bad_length {
                Ok(())
            } else {
                fail("the total length fits")
            };
        }
        if bad_ihl || bad_length {
            return fail("the IPv4 header is broken in another way");
        }
        &ip[..total]
    } else {
        let whole = ip.len() >= 40 && ip[0] >> 4 == 6;
        let total = whole.then(|| 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])));
        let fits = total.is_some_and(|t| t <= ip.len());
        if reason == Drop::Ipv6Truncated {
            return if fits {
                fail("the IPv6 header and payload fit")
            } else {
                Ok(())
            };
        }
        match total {
            Some(t) if fits => &ip[..t],
            _ => return fail("the IPv6 header is broken in another way"),
        }
    };
    let dst = if v4 {
        addr(packet, 16, true)
    } else {
        addr(packet, 24, false)
    };
    let Some(dst) = dst else {
        return fail("no destination address");
    };
    // The transport: its protocol, where it starts, and whether the packet is a fragment.
    let (proto, l4, fragment) = if v4 {
        let flags = u16::from_be_bytes([packet[6], packet[7]]);
        (
            packet[9],
            usize::from(packet[0] & 0x0f) * 4,
            flags & 0x3fff != 0,
        )
    } else {
        match walk_v6(packet) {
            Walk::Truncated => {
                return if reason == Drop::Ipv6ExtTruncated {
                    Ok(())
                } else {
                    fail("an extension header is cut off")
                };
            }
            Walk::TooLong => {
                return if reason == Drop::Ipv6ExtChainTooLong {
                    Ok(())
                } else {
                    fail("the extension chain is too long")
                };
            }
            Walk::Transport {
                proto,
                at,
                fragment,
                ..
            } => (proto, at, fragment),
        }
    };
    match reason {
        Drop::Ipv6ExtTruncated => return fail("the extension headers are whole"),
        Drop::Ipv6ExtChainTooLong => return fail("the extension chain is within the walk limit"),
        Drop::Fragment => {
            return if fragment && services.is_vip_address(dst) {
                Ok(())
            } else {
                fail("it is no fragment to a VIP")
            };
        }
        _ => {}
    }
    if fragment {
        return fail("it is a fragment");
    }
    let rest = &packet[l4..];
    match reason {
        Drop::L4Truncated => {
            let cut = match proto {
                PROTO_TCP => {
                    rest.len() < 20
                        || usize::from(rest[12] >> 4) * 4 < 20
                        || usize::from(rest[12] >> 4) * 4 > rest.len()
                }
                PROTO_UDP => rest.len() < 8,
                _ => false,
            };
            if cut {
                Ok(())
            } else {
                fail("its TCP / UDP header is whole")
            }
        }
        Drop::TooBig => {
            let df = v4 && packet[6] & 0x40 != 0;
            if v4 && !df && packet.len() + services.v4_overhead > services.mtu {
                Ok(())
            } else {
                fail("it fits once tunnelled, or may be answered with ICMP")
            }
        }
        Drop::TooBigNotUnicast | Drop::TooBigRateLimited => {
            let df = !v4 || packet[6] & 0x40 != 0;
            // The smallest tunnel (20 bytes) for IPv6: a necessary condition whatever the
            // backend's family.
            let overhead = if v4 { services.v4_overhead } else { 20 };
            let unicast_src = addr(packet, if v4 { 12 } else { 8 }, v4).is_some_and(unicast);
            if !df || packet.len() + overhead <= services.mtu {
                fail("it fits once tunnelled, or its sender does no path MTU discovery")
            } else if reason == Drop::TooBigNotUnicast && unicast_src {
                fail("its source is a unicast address")
            } else if reason == Drop::TooBigRateLimited && !unicast_src {
                fail("its source may not be answered, whatever the rate")
            } else {
                // The rate itself is the CPU's, not the frame's: not checked here.
                Ok(())
            }
        }
        Drop::IcmpTruncated | Drop::IcmpNotForVip => {
            let icmp = if v4 { PROTO_ICMP } else { PROTO_ICMPV6 };
            if proto != icmp {
                return fail("it is no ICMP message");
            }
            // A cut-off ICMP header is malformed whoever it is for.
            if rest.len() < 8 {
                return if reason == Drop::IcmpTruncated {
                    Ok(())
                } else {
                    fail("its ICMP header is cut off")
                };
            }
            if !services.is_vip_address(dst) {
                return fail("it is no ICMP error to a VIP address");
            }
            let q = quoted(rest, v4);
            let foreign = |(src, proto): (IpAddr, u8)| {
                let sport = q.sport;
                src != dst
                    || !services.vips.iter().any(|&(a, p, t)| {
                        a == src && t == proto && (p == 0 || sport.is_none_or(|s| s == p))
                    })
            };
            let cut = !q.unreadable && (q.header.is_none() || q.sport.is_none());
            match reason {
                Drop::IcmpTruncated if cut => Ok(()),
                Drop::IcmpTruncated => fail(
                    "the error and the start of the packet it quotes are whole, or it cannot be read to its ports",
                ),
                _ if q.unreadable || q.header.is_some_and(foreign) => Ok(()),
                _ => fail("it quotes a packet from a VIP service, or one cut short"),
            }
        }
        _ => fail("no frame of this test should meet it"),
    }
}

/// `Ok` when frame `f`, dropped by the decap program, shows the fault `reason` names;
/// otherwise why not. The program drops only unfragmented IP-in-IP tunnels to one of
/// `local` (its addresses) that the kernel's tunnel code would drop too.
pub fn check_decap(f: &[u8], reason: Drop, local: &[IpAddr]) -> Result<(), String> {
    let fail = |what: &str| Err(format!("decap dropped as {}, but {what}", reason.name()));
    let Some(t) = outer_tunnel(f) else {
        return fail("it is no whole, unfragmented IP-in-IP packet");
    };
    if !local.contains(&t.dst) {
        return fail(&format!("its tunnel is to {}, not a local address", t.dst));
    }
    let checksum_ok = !t.v4 || sums_to_ffff(&t.packet[..t.inner_at]);
    match reason {
        Drop::TunnelBadChecksum if checksum_ok => return fail("its outer IPv4 checksum is right"),
        Drop::TunnelBadChecksum => return Ok(()),
        _ if !checksum_ok => return fail("its outer IPv4 checksum is wrong"),
        _ => {}
    }
    // The other reasons judge the inner packet, as the outer one delimits it.
    let payload = &t.packet[t.inner_at..];
    let be16 = |at: usize| {
        payload
            .get(at..at + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
    };
    let (version, own_len) = if t.proto == 4 {
        (4, be16(2).map(usize::from))
    } else {
        (6, be16(4).map(|l| 40 + usize::from(l)))
    };
    let header = if version == 4 { 20 } else { 40 };
    let Some(own_len) = own_len.filter(|_| payload.len() >= header) else {
        return fail("its inner header is not whole inside the outer packet");
    };
    if payload[0] >> 4 != version {
        return fail("its inner packet is not the version the outer header announces");
    }
    let too_long = own_len > payload.len();
    match reason {
        Drop::TunnelInnerTooLong if too_long => return Ok(()),
        Drop::TunnelInnerTooLong => return fail("its inner packet fits the outer payload"),
        _ if too_long => return fail("its inner packet runs past the outer payload"),
        _ => {}
    }
    // RFC 3168 ECN fields: IPv4, the TOS byte's low bits; IPv6, the traffic class's, bits 5
    // and 4 of the second byte.
    let inner_ecn = if version == 4 {
        payload[1] & 0b11
    } else {
        (payload[1] >> 4) & 0b11
    };
    match reason {
        // RFC 6040 section 4.2: CE on the outer header over a Not-ECT inner packet.
        Drop::TunnelCeNotEct if t.ecn == 0b11 && inner_ecn == 0 => Ok(()),
        Drop::TunnelCeNotEct => fail("it is not CE over a Not-ECT packet"),
        _ => fail("the decap program has no such reason"),
    }
}

/// The outer layer of an IP-in-IP frame, read on its own.
struct OuterTunnel<'a> {
    /// Outer IPv4 (else IPv6).
    v4: bool,
    /// The outer packet, as its length field delimits it.
    packet: &'a [u8],
    /// Where the inner packet starts in `packet` (IPv6: behind the extension headers).
    inner_at: usize,
    /// The inner packet's protocol: 4 (IPv4) or 41 (IPv6).
    proto: u8,
    /// The outer ECN field.
    ecn: u8,
    /// Outer destination.
    dst: IpAddr,
}

/// The outer layer of `f`, if `f` is a once-tagged or untagged frame carrying a whole,
/// unfragmented IPv4 or IPv6 packet whose payload is IPv4 (4) or IPv6 (41).
fn outer_tunnel(f: &[u8]) -> Option<OuterTunnel<'_>> {
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let l2 = match be16(f, 12)? {
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => 18,
        _ => 14,
    };
    let ip = f.get(l2..)?;
    let (v4, packet, proto, inner_at) = match be16(f, l2 - 2)? {
        ETHERTYPE_IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let packet = ip.get(..usize::from(be16(ip, 2)?))?;
            let fragment = be16(ip, 6)? & 0x3fff != 0;
            if ihl < 20 || ihl > packet.len() || fragment {
                return None;
            }
            (true, packet, ip[9], ihl)
        }
        ETHERTYPE_IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let packet = ip.get(..40 + usize::from(be16(ip, 4)?))?;
            match walk_v6(packet) {
                Walk::Transport {
                    proto,
                    at,
                    fragment: false,
                    ..
                } => (false, packet, proto, at),
                _ => return None,
            }
        }
        _ => return None,
    };
    if !matches!(proto, 4 | 41) {
        return None;
    }
    let dst = if v4 {
        addr(packet, 16, true)
    } else {
        addr(packet, 24, false)
    }?;
    Some(OuterTunnel {
        v4,
        packet,
        inner_at,
        proto,
        ecn: if v4 {
            packet[1] & 0b11
        } else {
            (packet[1] >> 4) & 0b11
        },
        dst,
    })
}

/// Whether `bytes` (an even number) add up to 0xffff in ones' complement (RFC 1071): a
/// correct IPv4 header checksum.
fn sums_to_ffff(bytes: &[u8]) -> bool {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The address at `at` of `packet`, if it is there.
pub fn addr(packet: &[u8], at: usize, v4: bool) -> Option<IpAddr> {
    if v4 {
        let b: [u8; 4] = packet.get(at..at + 4)?.try_into().ok()?;
        Some(IpAddr::from(b))
    } else {
        let b: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
        Some(IpAddr::from(b))
    }
}

/// Where an IPv6 packet's extension headers end.
pub enum Walk {
    /// A header runs past the packet's end.
    Truncated,
    /// More headers than the balancer walks.
    TooLong,
    /// The transport starts at `at` with protocol `proto`.
    Transport {
        /// The transport protocol.
        proto: u8,
        /// Its offset in the packet.
        at: usize,
        /// A fragment header with an offset or more fragments on the way.
        fragment: bool,
        /// A fragment header with an offset: no transport header follows.
        later_fragment: bool,
    },
}

/// Walks the extension headers of the IPv6 `packet` (as its length delimits it), at most
/// as many as the balancer walks.
pub fn walk_v6(packet: &[u8]) -> Walk {
    let mut next = packet[6];
    let mut at = 40;
    let mut fragment = false;
    let mut later_fragment = false;
    for _ in 0..MAX_EXT {
        if !matches!(
            next,
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH | PROTO_FRAGMENT
        ) {
            return Walk::Transport {
                proto: next,
                at,
                fragment,
                later_fragment,
            };
        }
        let Some(&[nh, len]) = packet
            .get(at..at + 2)
            .and_then(|b| <&[u8; 2]>::try_from(b).ok())
        else {
            return Walk::Truncated;
        };
        let size = match next {
            // RFC 4302: 4-octet units, minus two.
            PROTO_AH => (usize::from(len) + 2) * 4,
            PROTO_FRAGMENT => {
                let Some(&[hi, lo]) = packet
                    .get(at + 2..at + 4)
                    .and_then(|b| <&[u8; 2]>::try_from(b).ok())
                else {
                    return Walk::Truncated;
                };
                // Offset (13 bits) or more-fragments: a real fragment; neither: atomic.
                fragment |= u16::from_be_bytes([hi, lo]) & 0xfff9 != 0;
                later_fragment |= u16::from_be_bytes([hi, lo]) & 0xfff8 != 0;
                8
            }
            _ => (usize::from(len) + 1) * 8,
        };
        next = nh;
        at += size;
        if at > packet.len() {
            return Walk::Truncated;
        }
    }
    if matches!(
        next,
        PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS | PROTO_AH | PROTO_FRAGMENT
    ) {
        Walk::TooLong
    } else {
        Walk::Transport {
            proto: next,
            at,
            fragment,
            later_fragment,
        }
    }
}

/// The packet an ICMP error quotes (`icmp`: the message from its type on).
struct Quoted {
    /// Its source and protocol, if its IP header is whole and valid.
    header: Option<(IpAddr, u8)>,
    /// Its source port, if both ports are there (the flow is the client's, whose port is
    /// the quoted destination).
    sport: Option<u16>,
    /// Whole, but with no ports to find: a later fragment, or more extension headers than
    /// the balancer walks.
    unreadable: bool,
}

/// Whether `a` may be sent an ICMP error (RFC 1812 section 4.3.2.7, RFC 4443 section 2.4).
pub fn unicast(a: IpAddr) -> bool {
    match a {
        // 0/8 (unspecified among them), loopback, multicast, 240/4 (broadcast among them).
        IpAddr::V4(a) => {
            let first = a.octets()[0];
            !(first == 0 || a.is_loopback() || a.is_multicast() || first >= 240)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_loopback() || a.is_multicast()),
    }
}

fn quoted(icmp: &[u8], v4: bool) -> Quoted {
    let none = Quoted {
        header: None,
        sport: None,
        unreadable: false,
    };
    let Some(q) = icmp.get(8..) else { return none };
    let (hlen, proto, src) = if v4 {
        let Some(&vihl) = q.first() else { return none };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || q.len() < 20 {
            return none;
        }
        // A later fragment: no ports behind its header.
        if u16::from_be_bytes([q[6], q[7]]) & 0x1fff != 0 {
            return Quoted {
                unreadable: true,
                ..none
            };
        }
        (ihl, q[9], addr(q, 12, true))
    } else {
        if q.len() < 40 {
            return none;
        }
        // The quote's extension headers, as far as the error's end (quotes are cut).
        match walk_v6(q) {
            Walk::Truncated => return none,
            Walk::TooLong
            | Walk::Transport {
                later_fragment: true,
                ..
            } => {
                return Quoted {
                    unreadable: true,
                    ..none
                }
            }
            Walk::Transport { proto, at, .. } => (at, proto, addr(q, 8, false)),
        }
    };
    Quoted {
        unreadable: false,
        header: src.map(|a| (a, proto)),
        sport: q
            .get(hlen..hlen + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]])),
    }
}
