//! test_run with mutated frames: valid client frames (TCP, UDP, VLAN, IPv4 options, IPv6
//! extension headers, ICMP errors about VIP flows, a frame too big to tunnel) and valid
//! tunnel frames, each mutated thousands of times (bits flipped, fields set to extremes,
//! frames cut or padded), run through the balancer and the decap program. Whatever the
//! bytes, each program must give one of its verdicts, count the frame under exactly one
//! reason (and a drop's reason must be a fault the frame has, read by `drop_reasons`, not
//! by our parser), leave passed frames untouched, and send out only what it may send: the client's
//! IP packet verbatim inside a correct tunnel to a configured backend (and, decapsulated by
//! the backend's program, that packet again), or a correct ICMP error back to the client.
//!
//! The fixed fixtures (`fixtures_malformed.rs`, `fixtures_decap.rs`) say which reason each
//! known defect gets; this test looks for the defects nobody listed. The mutations come from
//! a fixed generator, so a failure names a frame that fails again on every run. A third test
//! builds valid IPv6 extension-header chains at random and checks that none is refused below
//! the walk limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::counters::{Drop, Event, COUNTER_SLOTS};
use xlb::testing::Lcg;
use xlb_tests::{
    drop_reasons,
    fixtures::*,
    netns::require_root,
    packet::{
        eth_frame, ip_packet, ipv4_outer, ipv6_outer, pad_n, ExtHeader, Pkt, ETHERTYPE_IPV4,
        ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, PROTO_IPIP, PROTO_IPV6, PROTO_TCP,
        PROTO_UDP,
    },
};

// No ICMP rate limit: every answer the mutants earn is sent, and checked.
const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "icmp_rate_limit": 0, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp",
     "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]},
    {"address": "198.18.1.1", "port": 53, "protocol": "udp", "backends": [{"address": "198.18.0.13"}]},
    {"address": "198.18.1.1", "port": 0, "protocol": "udp", "health_check": {"kind": "none"},
     "backends": [{"address": "198.18.0.14"}]},
    {"address": "fd00::1:1", "port": 80, "protocol": "tcp",
     "backends": [{"address": "fd00::11"}, {"address": "fd00::12"}]}
]}"#;

const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00::1:1";
const CLIENT4: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::10";
const BACKENDS: [&str; 6] = [
    "198.18.0.11",
    "198.18.0.12",
    "198.18.0.13",
    "198.18.0.14",
    "fd00::11",
    "fd00::12",
];
const LB4: &str = "198.18.0.2";
const LB6: &str = "fd00::2";
/// Mutated frames per seed frame; `XLB_MUTANTS=N` for a deeper search by hand (the
/// sequence is the same, only longer).
fn mutants() -> usize {
    std::env::var("XLB_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// What `CFG` serves, for the drop-reason checks.
const SERVICES: drop_reasons::Services<'static> = drop_reasons::Services {
    vips: &[
        (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 80, PROTO_TCP),
        (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 53, PROTO_UDP),
        (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 0, PROTO_UDP),
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1)),
            80,
            PROTO_TCP,
        ),
    ],
    mtu: 1500,
    v4_overhead: 20,
};

/// Counter slot ranges (`lb_common::counters`): drops, passes, events.
const DROPS: std::ops::Range<usize> = 1..32;
const PASSES: std::ops::Range<usize> = 32..48;

/// Offsets worth aiming at in a frame with an L2 header of `l2` bytes: the EtherType and
/// the IP header's length, protocol and fragment fields, and the first transport bytes.
fn hot_offsets(l2: usize) -> Vec<usize> {
    let mut v = vec![12, 13, 16, 17];
    // IPv4: version/IHL, total length, flags/fragment offset, protocol.
    v.extend([l2, l2 + 2, l2 + 3, l2 + 6, l2 + 7, l2 + 9]);
    // IPv6: payload length, next header.
    v.extend([l2 + 4, l2 + 5, l2 + 6]);
    // First option / extension header / transport bytes.
    v.extend([
        l2 + 20,
        l2 + 21,
        l2 + 24,
        l2 + 40,
        l2 + 41,
        l2 + 42,
        l2 + 43,
    ]);
    v
}

/// `seed` with one to three mutations.
fn mutate(seed: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut f = seed.to_vec();
    let l2 = l2_len(seed).unwrap_or(14);
    let hot = hot_offsets(l2);
    for _ in 0..1 + rng.below(3) {
        match rng.below(7) {
            // One bit anywhere in the headers' reach.
            0 => {
                let i = rng.below(f.len().min(128));
                f[i] ^= 1 << rng.below(8);
            }
            // A hot byte set to an extreme or random value.
            1 | 2 => {
                let i = hot[rng.below(hot.len())];
                if i < f.len() {
                    f[i] = [0, 0xff, 1, 0x80, rng.next_u32() as u8][rng.below(5)];
                }
            }
            // A random byte in the first 80.
            3 => {
                let i = rng.below(f.len().min(80));
                f[i] = rng.next_u32() as u8;
            }
            // Cut anywhere past the Ethernet header.
            4 => {
                let len = 14 + rng.below(f.len() - 13);
                f.truncate(len);
            }
            // Ethernet padding, or junk after the packet.
            5 => {
                for _ in 0..1 + rng.below(40) {
                    f.push(rng.next_u32() as u8);
                }
            }
            // A length field that claims more or less than the frame holds.
            _ => {
                let field = if f.get(l2).is_some_and(|b| b >> 4 == 6) {
                    l2 + 4
                } else {
                    l2 + 2
                };
                if field + 2 <= f.len() {
                    let old = u16::from_be_bytes([f[field], f[field + 1]]);
                    let new = old.wrapping_add(rng.below(64) as u16).wrapping_sub(32);
                    f[field..field + 2].copy_from_slice(&new.to_be_bytes());
                }
            }
        }
        if f.len() < 14 {
            f.resize(14, 0);
        }
    }
    f
}

/// Length of the frame's Ethernet header (with its one tag), if it has one.
fn l2_len(f: &[u8]) -> Option<usize> {
    let t = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    Some(if t == ETHERTYPE_VLAN || t == ETHERTYPE_QINQ {
        18
    } else {
        14
    })
}

/// The IP packet of `f` as its own length field delimits it (Ethernet padding excluded),
/// if that field fits the frame.
fn ip_extent(f: &[u8]) -> Option<&[u8]> {
    let ip = &f[l2_len(f)?..];
    let len = match ip.first()? >> 4 {
        4 => usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        6 => 40 + usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?])),
        _ => return None,
    };
    ip.get(..len)
}

fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn folds_to_zero(mut sum: u32) -> bool {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// A ones' complement sum folded to 16 bits.
fn fold(mut sum: u32) -> u32 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

fn addr_at(ip: &[u8], off: usize, v4: bool) -> IpAddr {
    if v4 {
        let b: [u8; 4] = ip[off..off + 4].try_into().expect("4 bytes");
        IpAddr::V4(Ipv4Addr::from(b))
    } else {
        let b: [u8; 16] = ip[off..off + 16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// Checks a balancer `XDP_TX` frame: the client's IP packet verbatim in a tunnel to one of
/// the configured backends, behind the next hop's Ethernet header and the client's tag.
fn check_tunnel(input: &[u8], out: &[u8]) -> Result<IpAddr, String> {
    let inner = ip_extent(input).ok_or("forwarded a frame whose IP length does not fit")?;
    let l2 = l2_len(input).ok_or("no Ethernet header")?;
    let v4_outer = u16::from_be_bytes([out[l2 - 2], out[l2 - 1]]) == ETHERTYPE_IPV4;
    let hdr_len = if v4_outer { 20 } else { 40 };
    let outer = out
        .get(l2..l2 + hdr_len)
        .ok_or("output shorter than its headers")?;
    let backend = addr_at(outer, if v4_outer { 16 } else { 24 }, v4_outer);
    if !BACKENDS.iter().any(|b| b.parse::<IpAddr>() == Ok(backend)) {
        return Err(format!("tunnel to {backend}, which is no backend"));
    }
    let vip = addr_at(
        inner,
        if inner[0] >> 4 == 4 { 16 } else { 24 },
        inner[0] >> 4 == 4,
    );
    if vip.to_string() != VIP4 && vip.to_string() != VIP6 {
        return Err(format!("tunnelled a packet for {vip}, which is no VIP"));
    }
    let proto = if inner[0] >> 4 == 4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };
    let tos = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (u16::from_be_bytes([inner[0], inner[1]]) >> 4) as u8
    };
    let header = match backend {
        IpAddr::V4(b) => ipv4_outer(v4(LB4), b, proto, tos, 64, 0, true, inner),
        IpAddr::V6(b) => {
            let label = u32::from_be_bytes([0, outer[1], outer[2], outer[3]]) & 0xf_ffff;
            ipv6_outer(v6(LB6), b, proto, tos, label, 64, inner)
        }
    };
    let ethertype = if v4_outer {
        ETHERTYPE_IPV4
    } else {
        ETHERTYPE_IPV6
    };
    let mut want = eth_frame(NEXTHOP_MAC, LB_MAC, None, ethertype, &header);
    if l2 == 18 {
        // The client's tag (TPID and TCI) as it came, whatever its TPID.
        want.splice(12..12, input[12..16].iter().copied());
    }
    if out != want {
        return Err(format!(
            "tunnel frame differs from the expected one: {}",
            difference(out, &want)
        ));
    }
    Ok(backend)
}

/// Checks an ICMP "fragmentation needed" / "packet too big" reply to the client.
fn check_too_big_reply(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l2 = l2_len(input).ok_or("no Ethernet header")?;
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..l2] != input[12..l2] {
        return Err("reply's Ethernet header is not the request's, swapped".into());
    }
    let req = ip_extent(input).ok_or("answered a frame whose IP length does not fit")?;
    let ip = &out[l2..];
    let req_v4 = req[0] >> 4 == 4;
    let (hdr, src_off, dst_off, alen) = if req_v4 {
        (20, 12, 16, 4)
    } else {
        (40, 8, 24, 16)
    };
    if !drop_reasons::addr(req, src_off, req_v4).is_some_and(drop_reasons::unicast) {
        return Err("answered a source no ICMP error may go to".into());
    }
    // The sender's stack finds the socket by the quote's headers and 8 bytes behind them.
    let needed = if req_v4 {
        usize::from(req[0] & 0x0f) * 4 + 8
    } else {
        match drop_reasons::walk_v6(req) {
            drop_reasons::Walk::Transport { at, .. } => at + 8,
            _ => return Err("answered a packet whose headers do not walk".into()),
        }
    };
    let quote_len = ip.len().saturating_sub(hdr + 8);
    if quote_len < needed.clamp(64, 1232) || quote_len > 1232 {
        return Err(format!(
            "reply quotes {quote_len} bytes; its headers and ports take {needed} (at least 64, at most 1232)"
        ));
    }
    if ip[src_off..src_off + alen] != req[dst_off..dst_off + alen]
        || ip[dst_off..dst_off + alen] != req[src_off..src_off + alen]
    {
        return Err("reply's addresses are not the request's, swapped".into());
    }
    let icmp = &ip[hdr..];
    let quote = &icmp[8..];
    if req.get(..quote.len()) != Some(quote) {
        return Err("reply does not quote the start of the request".into());
    }
    let sum_ok = if req_v4 {
        folds_to_zero(ones_sum(&ip[..20])) && folds_to_zero(ones_sum(icmp)) && icmp[0] == 3
    } else {
        let pseudo = ones_sum(&ip[8..40]) + icmp.len() as u32 + 58;
        folds_to_zero(pseudo + ones_sum(icmp)) && icmp[0] == 2
    };
    if !sum_ok {
        return Err("reply's type or checksums are wrong".into());
    }
    Ok(())
}

/// Checks the balancer's answer to what it took for an echo request to a VIP: the request
/// was one (type 8 / 128, code 0, no IPv4 options or IPv6 extension headers, to a VIP's
/// address, from a unicast source), and the answer is the request with MACs and addresses
/// swapped, TTL / hop limit 64, the reply's type, and checksums as right (or as wrong) as
/// the request's; every other byte as it came.
fn check_echo_reply(input: &[u8], out: &[u8]) -> Result<(), String> {
    let l2 = l2_len(input).ok_or("no Ethernet header")?;
    if out.len() != input.len() {
        return Err("the answer is not the request's length".into());
    }
    if out[..6] != input[6..12] || out[6..12] != input[..6] || out[12..l2] != input[12..l2] {
        return Err("answer's Ethernet header is not the request's, swapped".into());
    }
    let req = ip_extent(input).ok_or("answered a frame whose IP length does not fit")?;
    let v4 = req[0] >> 4 == 4;
    let (hdr, src_off, dst_off, alen, ttl_at, proto, request, reply) = if v4 {
        (20, 12, 16, 4, 8, req[9], 8, 0)
    } else {
        (40, 8, 24, 16, 7, req[6], 128, 129)
    };
    let plain = if v4 { req[0] & 0x0f == 5 } else { true };
    let icmp_proto = if v4 { 1 } else { 58 };
    if !plain || proto != icmp_proto || req.len() < hdr + 8 {
        return Err("answered what is no plain ICMP packet".into());
    }
    if req[hdr] != request || req[hdr + 1] != 0 {
        return Err(format!(
            "answered ICMP type {} code {}",
            req[hdr],
            req[hdr + 1]
        ));
    }
    let dst = drop_reasons::addr(req, dst_off, v4).ok_or("no destination")?;
    if !SERVICES.is_vip_address(dst) {
        return Err(format!("answered an echo request to {dst}, no VIP"));
    }
    if !drop_reasons::addr(req, src_off, v4).is_some_and(drop_reasons::unicast) {
        return Err("answered a source no reply may go to".into());
    }
    let ip = &out[l2..l2 + req.len()];
    let mut want = req.to_vec();
    want[src_off..src_off + alen].copy_from_slice(&req[dst_off..dst_off + alen]);
    want[dst_off..dst_off + alen].copy_from_slice(&req[src_off..src_off + alen]);
    want[ttl_at] = 64;
    want[hdr] = reply;
    // Checksums aside, the rest as it came.
    let (ip_check, icmp_check) = (10, hdr + 2);
    for at in [icmp_check, icmp_check + 1]
        .into_iter()
        .chain(v4.then_some([ip_check, ip_check + 1]).into_iter().flatten())
    {
        want[at] = ip[at];
    }
    if ip != want.as_slice() {
        return Err(format!(
            "answer differs from the request turned round: {}",
            difference(ip, &want)
        ));
    }
    if out[l2 + req.len()..] != input[l2 + req.len()..] {
        return Err("the padding behind the packet changed".into());
    }
    let valid = |p: &[u8]| {
        let icmp = &p[hdr..];
        if v4 {
            (
                folds_to_zero(ones_sum(&p[..20])),
                folds_to_zero(ones_sum(icmp)),
            )
        } else {
            let pseudo = ones_sum(&p[8..40]) + icmp.len() as u32 + 58;
            (true, folds_to_zero(pseudo + ones_sum(icmp)))
        }
    };
    if valid(ip) != valid(req) {
        return Err(format!(
            "checksums (IP, ICMP) valid {:?} in the answer, {:?} in the request",
            valid(ip),
            valid(req)
        ));
    }
    Ok(())
}

/// Where `got` first differs from `want`, and their lengths.
fn difference(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    format!(
        "{} bytes, want {}; first difference at {}\n  want {}",
        got.len(),
        want.len(),
        at.map_or("the end of the shorter".into(), |i| format!("byte {i}")),
        hex(&want[..want.len().min(160)])
    )
}

/// Hex of a frame's first 160 bytes (headers; the rest is payload).
fn hex(b: &[u8]) -> String {
    let shown = &b[..b.len().min(160)];
    let mut s: String = shown.iter().map(|x| format!("{x:02x}")).collect();
    if b.len() > shown.len() {
        s.push_str(&format!("… ({} bytes)", b.len()));
    }
    s
}

/// The VIP service a frame is for, if an independent parser (etherparse) reads it as a
/// whole, unfragmented TCP or UDP packet to one: such a frame must never be passed to the
/// host. (Not a check on drops: etherparse is laxer than we are, e.g. it reads a TCP header
/// past an IPv6 payload length of 6.) Only frames untagged or with one 802.1Q / 802.1ad tag count, as for Linux and for
/// us (etherparse also reads 0x9100 tags, and two of them).
fn vip_service_of(f: &[u8]) -> Option<String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let be16 = |at: usize| Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]));
    let ip = |t: Option<u16>| t == Some(ETHERTYPE_IPV4) || t == Some(ETHERTYPE_IPV6);
    let tagged = matches!(be16(12), Some(ETHERTYPE_VLAN | ETHERTYPE_QINQ));
    if !(ip(be16(12)) || tagged && ip(be16(16))) {
        return None;
    }
    let p = SlicedPacket::from_ethernet(f).ok()?;
    let (dst, fragmented) = match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().destination_addr()),
            ip.is_payload_fragmented(),
        ),
        NetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().destination_addr()),
            ip.is_payload_fragmented(),
        ),
    };
    let (proto, port) = match p.transport.as_ref()? {
        TransportSlice::Tcp(t) => ("tcp", t.destination_port()),
        TransportSlice::Udp(u) => ("udp", u.destination_port()),
        _ => return None,
    };
    // Port 0: every UDP port of VIP4 that no VIP of its own takes.
    let services = [
        (VIP4, 80, "tcp"),
        (VIP4, 53, "udp"),
        (VIP4, 0, "udp"),
        (VIP6, 80, "tcp"),
    ];
    services
        .iter()
        .any(|&(a, p, t)| a.parse() == Ok(dst) && (p == port || p == 0) && t == proto)
        .then(|| format!("{dst} port {port}/{proto}"))
        .filter(|_| !fragmented)
}

/// Exactly one slot in `range` moved, by one.
fn one_in(range: std::ops::Range<usize>, before: &[u64], after: &[u64]) -> bool {
    let moved: Vec<u64> = range
        .map(|i| after[i] - before[i])
        .filter(|&d| d != 0)
        .collect();
    moved == [1]
}

fn client_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let c4 = || Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(v4(CLIENT4), v4(VIP4));
    let c6 = || Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6(CLIENT6), v6(VIP6));
    let reply4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4(VIP4), v4(CLIENT4))
        .tcp(80, 6000)
        .ack()
        .payload(&[0; 32])
        .build();
    let reply6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6(VIP6), v6(CLIENT6))
        .tcp(80, 6001)
        .ack()
        .payload(&[0; 32])
        .build();
    // One PadN option: a 24-byte destination options header.
    let pad_n = pad_n(22);
    let reply6_ext = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6(VIP6), v6(CLIENT6))
        .ipv6_ext(ExtHeader::DestOpts(pad_n.clone()))
        .tcp(80, 6002)
        .ack()
        .payload(&[0; 32])
        .build();
    let mut qinq = Pkt::eth(CLIENT_MAC, LB_MAC)
        .vlan(200)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .udp(5354, 53)
        .payload(&[2; 8])
        .build();
    qinq[12..14].copy_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
    vec![
        ("tcp syn", c4().tcp(31337, 80).syn().build()),
        (
            "tcp data",
            c4().tcp(31338, 80).ack().payload(&[7; 100]).build(),
        ),
        ("udp", c4().udp(5353, 53).payload(&[1; 24]).build()),
        (
            "vlan",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(100)
                .ipv4(v4(CLIENT4), v4(VIP4))
                .tcp(31339, 80)
                .syn()
                .build(),
        ),
        (
            "ipv4 options",
            c4().ipv4_options(&[1, 1, 7, 3, 4, 0])
                .tcp(31340, 80)
                .syn()
                .build(),
        ),
        ("ipv6 syn", c6().tcp(31341, 80).syn().build()),
        (
            "ipv6 extension headers",
            c6().ipv6_ext(ExtHeader::HopByHop(vec![]))
                .ipv6_ext(ExtHeader::DestOpts(vec![1, 2, 0, 0]))
                .tcp(31342, 80)
                .syn()
                .build(),
        ),
        (
            "echo request",
            c4().icmp_echo(7, 1).payload(&[5; 56]).build(),
        ),
        (
            "echov6 request",
            c6().icmpv6_echo(7, 2).payload(&[5; 56]).build(),
        ),
        (
            "icmp frag needed",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .ipv4(v4("198.18.0.1"), v4(VIP4))
                .icmp_frag_needed(1400, &ip_packet(&reply4)[..60])
                .build(),
        ),
        (
            "icmpv6 packet too big",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .ipv6(v6("fd00::1"), v6(VIP6))
                .icmpv6_packet_too_big(1400, &ip_packet(&reply6)[..72])
                .build(),
        ),
        (
            "too big to tunnel",
            c4().tcp(31343, 80).ack().payload(&[7; 1460]).build(),
        ),
        (
            "ipv4 options, too big to tunnel",
            c4().ipv4_options(&[1; 40])
                .tcp(31348, 80)
                .ack()
                .payload(&[7; 1440])
                .build(),
        ),
        (
            "ipv6 extension headers, too big to tunnel",
            c6().ipv6_ext(ExtHeader::DestOpts(pad_n.clone()))
                .tcp(31349, 80)
                .ack()
                .payload(&[7; 1440])
                .build(),
        ),
        (
            "icmpv6 packet too big, quoting extension headers",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .ipv6(v6("fd00::1"), v6(VIP6))
                .icmpv6_packet_too_big(1400, &ip_packet(&reply6_ext)[..96])
                .build(),
        ),
        (
            "ipv6 too big to tunnel",
            c6().tcp(31344, 80).ack().payload(&[7; 1440]).build(),
        ),
        ("802.1ad tag", qinq),
        (
            "vlan, too big to tunnel",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(300)
                .ipv4(v4(CLIENT4), v4(VIP4))
                .tcp(31346, 80)
                .ack()
                .payload(&[5; 1456])
                .build(),
        ),
        (
            "vlan, ipv6",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(301)
                .ipv6(v6(CLIENT6), v6(VIP6))
                .tcp(31347, 80)
                .syn()
                .build(),
        ),
        (
            "ipv6 routing, fragment and destination headers",
            c6().ipv6_ext(ExtHeader::Routing(vec![4, 0, 0, 0, 0, 0]))
                .ipv6_ext(ExtHeader::Fragment {
                    offset: 0,
                    more: false,
                    id: 7,
                })
                .ipv6_ext(ExtHeader::DestOpts(vec![1, 4, 0, 0, 0, 0]))
                .tcp(31345, 80)
                .ack()
                .payload(&[3; 16])
                .build(),
        ),
    ]
}

#[test]
fn mutated_client_frames_are_forwarded_intact_or_counted() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(CFG);
    let local: Vec<IpAddr> = BACKENDS.iter().map(|b| b.parse().unwrap()).collect();
    let mut decap = DecapLab::new(&local);
    let mut rng = Lcg(0x786c_625f_6d75_7461);
    let mut seen = [0usize; 6];
    for (name, seed) in client_seeds() {
        // The seed itself must go out (or be answered): otherwise its mutants test little.
        let o = lab.run(&seed);
        assert_eq!(o.verdict, XDP_TX, "seed {name}");
        for n in 0..mutants() {
            let f = if n == 0 {
                seed.clone()
            } else {
                mutate(&seed, &mut rng)
            };
            let before = lab.counters();
            let o = lab.run(&f);
            let after = lab.counters();
            let fail = |why: &str| {
                panic!(
                    "{name}, mutant {n}: {why}\n  in  {}\n  out {} (verdict {})\n  counted {}",
                    hex(&f),
                    hex(&o.frame),
                    o.verdict,
                    counter_deltas(&before, &after)
                )
            };
            match o.verdict {
                XDP_DROP => {
                    seen[0] += 1;
                    if !one_in(DROPS, &before, &after) || moved(PASSES, &before, &after) {
                        fail("dropped without exactly one drop reason");
                    }
                    let reason = DROPS
                        .filter_map(|i| Drop::from_slot(i as u32))
                        .find(|d| after[d.slot() as usize] != before[d.slot() as usize])
                        .expect("one drop reason moved");
                    if let Err(why) = drop_reasons::check(&f, reason, &SERVICES) {
                        fail(&why);
                    }
                }
                XDP_PASS => {
                    seen[1] += 1;
                    if !one_in(PASSES, &before, &after) || moved(DROPS, &before, &after) {
                        fail("passed without exactly one pass reason");
                    }
                    if o.frame != f {
                        fail("passed a frame it changed");
                    }
                    if let Some(service) = vip_service_of(&f) {
                        fail(&format!("passed a well-formed packet for {service}"));
                    }
                }
                XDP_TX => {
                    if moved(DROPS, &before, &after) || moved(PASSES, &before, &after) {
                        fail("sent a frame and counted a drop or pass");
                    }
                    let slot = |e: Event| e.slot() as usize;
                    let d = |e: Event| after[slot(e)] - before[slot(e)];
                    if d(Event::IcmpEchoReplied) == 1 {
                        seen[5] += 1;
                        if let Err(why) = check_echo_reply(&f, &o.frame) {
                            fail(&why);
                        }
                        continue;
                    }
                    if d(Event::IcmpTooBigSent) == 1 {
                        seen[3] += 1;
                        if let Err(why) = check_too_big_reply(&f, &o.frame) {
                            fail(&why);
                        }
                        continue;
                    }
                    if d(Event::TxEncap) != 1 {
                        fail("sent a frame without counting tx_encap");
                    }
                    seen[2] += 1;
                    if let Err(why) = check_tunnel(&f, &o.frame) {
                        fail(&why);
                    }
                    // The backend's program gives back exactly the client's packet.
                    let back = decap.run(&o.frame);
                    let inner = ip_extent(&f).expect("checked by check_tunnel");
                    if back.verdict != XDP_PASS || ip_packet(&back.frame) != inner {
                        fail(&format!(
                            "the backend's decap did not give back the client's packet: {}",
                            hex(&back.frame)
                        ));
                    }
                    seen[4] += 1;
                }
                v => fail(&format!("verdict {v}")),
            }
        }
    }
    eprintln!(
        "mutants: {} dropped, {} passed, {} tunnelled (all decapsulated back), {} answered with ICMP, {} echo requests answered",
        seen[0], seen[1], seen[2], seen[3], seen[5]
    );
    // Every outcome must have been reached, or the mutations miss what they are for.
    assert!(seen[..4].iter().all(|&n| n > 100), "outcomes {seen:?}");
}

/// Any slot in `range` moved.
fn moved(range: std::ops::Range<usize>, before: &[u64], after: &[u64]) -> bool {
    range.into_iter().any(|i| after[i] != before[i])
}

/// Mutated tunnel frames: stripped intact, passed untouched, or dropped under a decap
/// reason the frame shows (`drop_reasons::check_decap`).
#[test]
fn mutated_tunnel_frames_are_decapsulated_intact_or_passed_untouched() {
    if !require_root() {
        return;
    }
    let local: Vec<IpAddr> = vec!["198.18.0.11".parse().unwrap(), "fd00::11".parse().unwrap()];
    let mut decap = DecapLab::new(&local);
    let inner4 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .tcp(31337, 80)
        .syn()
        .build_ip();
    let inner6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6(CLIENT6), v6(VIP6))
        .tcp(31337, 80)
        .syn()
        .build_ip();
    let ect4 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .tos(2)
        .tcp(31337, 80)
        .syn()
        .build_ip();
    let ect6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6(CLIENT6), v6(VIP6))
        .traffic_class(1)
        .tcp(31337, 80)
        .syn()
        .build_ip();
    let tun4 =
        |inner: &[u8], proto| ipv4_outer(v4(LB4), v4("198.18.0.11"), proto, 0, 64, 0, true, inner);
    let tun6 = |inner: &[u8], proto| ipv6_outer(v6(LB6), v6("fd00::11"), proto, 0, 7, 64, inner);
    let seeds = [
        (
            "ipip",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV4,
                &tun4(&inner4, PROTO_IPIP),
            ),
        ),
        (
            "6in4",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV4,
                &tun4(&inner6, PROTO_IPV6),
            ),
        ),
        (
            "ip6ip6",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV6,
                &tun6(&inner6, PROTO_IPV6),
            ),
        ),
        (
            "4in6",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV6,
                &tun6(&inner4, PROTO_IPIP),
            ),
        ),
        (
            "ipip, vlan",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                Some(7),
                ETHERTYPE_IPV4,
                &tun4(&inner4, PROTO_IPIP),
            ),
        ),
        // ECN-capable inner packets whose tunnel a router marked CE: stripped and marked.
        (
            "ipip, outer CE",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV4,
                &ipv4_outer(
                    v4(LB4),
                    v4("198.18.0.11"),
                    PROTO_IPIP,
                    3,
                    64,
                    0,
                    true,
                    &ect4,
                ),
            ),
        ),
        (
            "ip6ip6, outer CE",
            eth_frame(
                NEXTHOP_MAC,
                LB_MAC,
                None,
                ETHERTYPE_IPV6,
                &ipv6_outer(v6(LB6), v6("fd00::11"), PROTO_IPV6, 3, 7, 64, &ect6),
            ),
        ),
    ];
    let mut rng = Lcg(0x6465_6361_705f_6d75);
    let (mut stripped, mut untouched, mut dropped) = (0usize, 0usize, 0usize);
    for (name, seed) in seeds {
        assert_eq!(
            ip_packet(&decap.run(&seed).frame).len(),
            seed.len()
                - l2_len(&seed).unwrap()
                - if seed[l2_len(&seed).unwrap()] >> 4 == 4 {
                    20
                } else {
                    40
                },
            "seed {name} is decapsulated"
        );
        for n in 0..mutants() {
            let f = mutate(&seed, &mut rng);
            let before = decap.counters();
            let o = decap.run(&f);
            let after = decap.counters();
            let fail = |why: &str| {
                panic!(
                    "{name}, mutant {n}: {why}\n  in  {}\n  out {}\n  counted {}",
                    hex(&f),
                    hex(&o.frame),
                    counter_deltas(&before, &after)
                )
            };
            let total: u64 = (0..COUNTER_SLOTS as usize)
                .map(|i| after[i] - before[i])
                .sum();
            if total != 1 {
                fail("not counted under exactly one reason");
            }
            if o.verdict == XDP_DROP {
                dropped += 1;
                let Some(reason) = DROPS
                    .filter_map(|i| Drop::from_slot(i as u32))
                    .find(|d| after[d.slot() as usize] != before[d.slot() as usize])
                else {
                    fail("dropped without a drop reason");
                    continue;
                };
                if let Err(why) = drop_reasons::check_decap(&f, reason, &local) {
                    fail(&why);
                }
                continue;
            }
            if o.verdict != XDP_PASS {
                fail("decap must pass or drop every frame");
            }
            let decapsulated = after[Event::Decapsulated.slot() as usize]
                - before[Event::Decapsulated.slot() as usize]
                == 1;
            if !decapsulated {
                untouched += 1;
                if o.frame != f {
                    fail("passed a frame it changed");
                }
                if is_valid_local_tunnel(&f, &local) {
                    fail("passed a valid tunnel to a local address without stripping it");
                }
                continue;
            }
            stripped += 1;
            if let Err(why) = check_stripped(&f, &o.frame, &local) {
                fail(&why);
            }
        }
    }
    eprintln!(
        "tunnel mutants: {stripped} decapsulated, {untouched} passed untouched, {dropped} dropped"
    );
    assert!(
        stripped > 100 && untouched > 100,
        "{stripped} / {untouched}"
    );
}

/// Whether `f` is a tunnel the decap program must strip, read on its own: an untagged or
/// once-tagged frame with a whole, unfragmented outer IPv4 (with a correct header
/// checksum) or IPv6 header (IPv6: no extension headers, the only kind judged here) to a
/// local address, announcing IPv4 (4) or IPv6 (41), and an inner IP header of that version
/// whole inside the outer packet, as long as its own length says, and no CE mark on the
/// outer header over a Not-ECT inner packet (RFC 6040 drops that).
fn is_valid_local_tunnel(f: &[u8], local: &[IpAddr]) -> bool {
    let Some(l2) = l2_len(f) else { return false };
    let Some(ip) = f.get(l2..) else { return false };
    let ethertype = u16::from_be_bytes([f[l2 - 2], f[l2 - 1]]);
    let (proto, inner_at, end, dst) = match ethertype {
        ETHERTYPE_IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ihl < 20 || total < ihl || total > ip.len() || fragment {
                return false;
            }
            if !folds_to_zero(ones_sum(&ip[..ihl])) {
                return false;
            }
            (ip[9], ihl, total, addr_at(ip, 16, true))
        }
        ETHERTYPE_IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if total > ip.len() {
                return false;
            }
            (ip[6], 40, total, addr_at(ip, 24, false))
        }
        _ => return false,
    };
    let (version, header) = match proto {
        PROTO_IPIP => (4, 20),
        PROTO_IPV6 => (6, 40),
        _ => return false,
    };
    if !(local.contains(&dst) && inner_at + header <= end && ip[inner_at] >> 4 == version) {
        return false;
    }
    let (outer_ecn, inner_ecn) = (ecn_field(ip), ecn_field(&ip[inner_at..]));
    inner_at + inner_length(&ip[inner_at..]) <= end && !(outer_ecn == 3 && inner_ecn == 0)
}

/// The ECN field of the IP header at the start of `ip`: the TOS byte's two low bits in
/// IPv4, the traffic class's (bits 5 and 4 of the second byte) in IPv6.
fn ecn_field(ip: &[u8]) -> u8 {
    if ip[0] >> 4 == 4 {
        ip[1] & 3
    } else {
        (ip[1] >> 4) & 3
    }
}

/// The length the IP packet at the start of `inner` gives itself (its header is whole).
fn inner_length(inner: &[u8]) -> usize {
    if inner[0] >> 4 == 4 {
        usize::from(u16::from_be_bytes([inner[2], inner[3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([inner[4], inner[5]]))
    }
}

/// Checks a decapsulated frame: `input` was a tunnel to a local address, and the output is
/// its Ethernet header (and tag) with the inner EtherType, then everything behind the outer
/// header, byte for byte.
fn check_stripped(input: &[u8], out: &[u8], local: &[IpAddr]) -> Result<(), String> {
    let l2 = l2_len(input).ok_or("no Ethernet header")?;
    let ip = &input[l2..];
    let outer_v4 = ip[0] >> 4 == 4;
    let (proto, outer_len, dst) = if outer_v4 {
        (ip[9], usize::from(ip[0] & 0x0f) * 4, addr_at(ip, 16, true))
    } else {
        // Extension headers (if a mutation made some) are part of the outer header: find
        // the inner packet where the output says it starts.
        let outer_len = ip.len() + l2 - out.len();
        (ip[6], outer_len, addr_at(ip, 24, false))
    };
    if !local.contains(&dst) {
        return Err(format!(
            "decapsulated a tunnel to {dst}, not a local address"
        ));
    }
    if outer_v4
        && !ip
            .get(..outer_len)
            .is_some_and(|h| folds_to_zero(ones_sum(h)))
    {
        return Err("decapsulated a tunnel whose outer IPv4 header checksum is wrong".into());
    }
    let inner = input
        .get(l2 + outer_len..)
        .ok_or("outer header longer than the frame")?;
    let inner_v4 = inner.first().map(|b| b >> 4);
    let want_type = match inner_v4 {
        Some(4) => ETHERTYPE_IPV4,
        Some(6) => ETHERTYPE_IPV6,
        _ => return Err("inner packet has no IP version".into()),
    };
    if outer_v4 && proto != [PROTO_IPV6, PROTO_IPIP][usize::from(want_type == ETHERTYPE_IPV4)] {
        return Err(format!(
            "outer protocol {proto} does not announce the inner packet"
        ));
    }
    // The inner header must be the tunnel's, not completed by Ethernet padding behind it.
    let outer_total = match ip_extent(input) {
        Some(p) => p.len(),
        None => return Err("decapsulated a frame whose outer length does not fit".into()),
    };
    let inner_header = if want_type == ETHERTYPE_IPV4 { 20 } else { 40 };
    if outer_len + inner_header > outer_total {
        return Err(format!(
            "decapsulated an outer packet of {outer_total} bytes whose inner header starts at {outer_len}: the padding completed it"
        ));
    }
    if outer_len + inner_length(inner) > outer_total {
        return Err(format!(
            "decapsulated an inner packet of {} bytes from {} behind its outer header",
            inner_length(inner),
            outer_total - outer_len
        ));
    }
    let mut want = input[..l2 - 2].to_vec();
    want.extend(want_type.to_be_bytes());
    want.extend(inner);
    // RFC 6040 section 4.2: a CE mark on the outer header goes to an ECN-capable inner
    // packet, an outer ECT(1) to an inner ECT(0); the IPv4 checksum then changes by what
    // the TOS byte did, so the ones' complement sum of the words around both (the first
    // 12 bytes) stays what it was.
    let (outer_ecn, inner_ecn) = (ecn_field(ip), ecn_field(inner));
    if outer_ecn == 3 && inner_ecn == 0 {
        return Err("decapsulated a tunnel marked CE over a Not-ECT packet".into());
    }
    let marked = match (outer_ecn, inner_ecn) {
        (3, _) => 3,
        (1, 2) => 1,
        (_, inner) => inner,
    };
    if marked != inner_ecn {
        let shift = if want_type == ETHERTYPE_IPV4 { 0 } else { 4 };
        want[l2 + 1] = (want[l2 + 1] & !(3 << shift)) | (marked << shift);
        if want_type == ETHERTYPE_IPV4 {
            let check = out
                .get(l2 + 10..l2 + 12)
                .ok_or("output cut in the inner header")?;
            want[l2 + 10..l2 + 12].copy_from_slice(check);
            if fold(ones_sum(&inner[..12])) != fold(ones_sum(&out[l2..l2 + 12])) {
                return Err("changed the inner IPv4 ECN field without fixing its checksum".into());
            }
        }
    }
    if out != want {
        return Err(format!(
            "decapsulated frame differs: {}",
            difference(out, &want)
        ));
    }
    Ok(())
}

/// Random valid IPv6 extension-header chains (hop-by-hop first, then destination options,
/// routing with no segments left, atomic fragments; up to 48 bytes each, or in half of
/// the chains up to 500, so that some put the TCP header past the first kilobyte
/// of the frame) in front of TCP to the VIP: up to `MAX_IPV6_EXT_HEADERS` of them the packet is
/// tunnelled whole, beyond that it is dropped as `ipv6_ext_chain_too_long`, and never
/// anything else.
#[test]
fn valid_ipv6_extension_chains_are_forwarded_whole_up_to_the_walk_limit() {
    use lb_common::{counters::Drop, maps::MAX_IPV6_EXT_HEADERS};
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(CFG);
    let mut rng = Lcg(0x6578_7468_6472);
    let limit = MAX_IPV6_EXT_HEADERS as usize;
    let bytes = |rng: &mut Lcg, most: usize| -> Vec<u8> {
        (0..rng.below(most + 1))
            .map(|_| rng.next_u32() as u8)
            .collect()
    };
    let (mut whole, mut too_long, mut past_1k) = (0, 0, 0);
    for n in 0..800u16 {
        let count = rng.below(limit + 3);
        let mut p = Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6(CLIENT6), v6(VIP6));
        let mut chain = Vec::new();
        // Extension bytes so far: the chain stays under 1 300, so that the packet still fits
        // the link once tunnelled (else the answer is ICMP, another test's business).
        let mut ext_bytes = 0;
        let big = rng.below(2) == 0;
        for i in 0..count {
            let most = if big { 500 } else { 40 };
            let most = most.min(1_300usize.saturating_sub(ext_bytes + 48));
            let body = bytes(&mut rng, most);
            // What the header adds: two bytes and the body, padded to 8 (fragments: 8).
            let mut added = (2 + body.len()).div_ceil(8) * 8;
            let ext = match rng.below(if i == 0 { 4 } else { 3 }) {
                0 => ExtHeader::DestOpts(body),
                1 => {
                    // Routing type, segments left 0, then type-specific data.
                    let mut routing = vec![rng.pick(&[0u8, 2, 3, 4]), 0];
                    routing.extend(&body[body.len().min(2)..]);
                    ExtHeader::Routing(routing)
                }
                2 => {
                    added = 8;
                    ExtHeader::Fragment {
                        offset: 0,
                        more: false,
                        id: rng.next_u32(),
                    }
                }
                _ => ExtHeader::HopByHop(body),
            };
            ext_bytes += added;
            chain.push(format!("{ext:?}"));
            p = p.ipv6_ext(ext);
        }
        let f = p
            .tcp(20_000 + n, 80)
            .ack()
            .payload(&bytes(&mut rng, 64))
            .build();
        let before = lab.counters();
        let o = lab.run(&f);
        let after = lab.counters();
        let moved = counter_deltas(&before, &after);
        let why = format!("{count} headers {chain:?}: counted {moved}");
        // Where the TCP header starts in the frame (14 bytes of Ethernet header).
        if let drop_reasons::Walk::Transport { at, .. } = drop_reasons::walk_v6(ip_packet(&f)) {
            if 14 + at > 1024 {
                past_1k += 1;
            }
        }
        if count <= limit {
            assert_eq!(o.verdict, XDP_TX, "{why}");
            assert_eq!(
                after[Event::TxEncap.slot() as usize] - before[Event::TxEncap.slot() as usize],
                1,
                "{why}"
            );
            if let Err(e) = check_tunnel(&f, &o.frame) {
                panic!("{why}: {e}");
            }
            whole += 1;
        } else {
            let slot = Drop::Ipv6ExtChainTooLong.slot() as usize;
            assert_eq!(o.verdict, XDP_DROP, "{why}");
            assert_eq!(after[slot] - before[slot], 1, "{why}");
            too_long += 1;
        }
    }
    eprintln!("{whole} whole, {too_long} too long, {past_1k} with TCP past 1 KiB");
    assert!(
        whole > 400 && too_long > 50 && past_1k > 10,
        "{whole} whole, {too_long} too long, {past_1k} with TCP past 1 KiB"
    );
}
