//! test_run: GUE tunnels (`"encap": "gue"`). A GUE VIP's packets leave in an outer IP header
//! of the backend's family with UDP as its protocol, a UDP header from the flow hash's source
//! port to `gue_port` (over IPv6 with the checksum over the whole datagram, computed here
//! byte by byte where the balancer gets it from the headers; over IPv4 none), then the
//! client's packet untouched; byte for byte, for each pairing of families, TCP, UDP and a
//! router's ICMP error. Where the client's packet does not let the headers tell the sum
//! (UDP over IPv4 without a checksum, IPv6 extension headers) an IPv6 tunnel carries none. An IP-in-IP VIP on the same address
//! keeps IP-in-IP, and the UDP header's 8 bytes count when a packet is too big for the path.

use std::net::IpAddr;

use lb_common::{flow::FlowKey, hash::flow_hash};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ip_packet, ExtHeader, Pkt},
};

const LB4: &str = "198.18.0.2";
const LB6: &str = "fd00::2";
const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00::1:1";
const PORT: u16 = 5555;

/// A GUE VIP of each family for TCP and for UDP, each with one backend of
/// `backend_family`'s, and an IP-in-IP VIP beside the IPv4 one.
fn config(v4_backends: bool) -> String {
    let b = |i: u8| {
        if v4_backends {
            format!("198.18.0.{i}")
        } else {
            format!("fd00::{i}")
        }
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB4}", "v6": "{LB6}"}}, "gue_port": {PORT}, "vips": [
            {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "encap": "gue",
              "backends": [{{"address": "{}"}}]}},
            {{"address": "{VIP6}", "port": 80, "protocol": "tcp", "encap": "gue",
              "backends": [{{"address": "{}"}}]}},
            {{"address": "{VIP4}", "port": 81, "protocol": "tcp",
              "backends": [{{"address": "{}"}}]}},
            {{"address": "{VIP4}", "port": 53, "protocol": "udp", "encap": "gue",
              "backends": [{{"address": "{}"}}]}},
            {{"address": "{VIP6}", "port": 53, "protocol": "udp", "encap": "gue",
              "backends": [{{"address": "{}"}}]}}]}}"#,
        b(11),
        b(12),
        b(13),
        b(14),
        b(15)
    )
}

fn syn4(dport: u16, payload: usize) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP4))
        .tos(0x2a)
        .tcp(40_000, dport)
        .syn()
        .payload(&vec![7; payload])
        .build()
}

fn syn6(payload: usize) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6(VIP6))
        .traffic_class(0x2a)
        .tcp(40_000, 80)
        .syn()
        .payload(&vec![7; payload])
        .build()
}

fn hash(src: &str, dst: &str, dport: u16) -> u32 {
    hash_of(src, dst, dport, 6)
}

fn hash_of(src: &str, dst: &str, dport: u16, proto: u8) -> u32 {
    let k: FlowKey = flow(
        src.parse().unwrap(),
        40_000,
        dst.parse().unwrap(),
        dport,
        proto,
    );
    flow_hash(&k)
}

/// A UDP query to port 53 of the VIP of `client`'s family, `payload` bytes long;
/// `checksum`: `Some(0)` sends none (IPv4 only).
fn query(client: &str, payload: usize, checksum: Option<u16>) -> Vec<u8> {
    let p = Pkt::eth(CLIENT_MAC, LB_MAC);
    let p = if client.contains(':') {
        p.ipv6(v6(client), v6(VIP6))
    } else {
        p.ipv4(v4(client), v4(VIP4))
    };
    let p = p.udp(40_000, 53).payload(&vec![0x5a; payload]);
    match checksum {
        Some(c) => p.l4_checksum(c).build(),
        None => p.build(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn gue_vips_tunnel_in_udp_byte_for_byte() {
    if !require_root() {
        return;
    }
    for v4_backends in [true, false] {
        let mut lab = Lab::new(&config(v4_backends));
        lab.set_all_nexthops();
        let (src, b11, b12, b13) = if v4_backends {
            (LB4, "198.18.0.11", "198.18.0.12", "198.18.0.13")
        } else {
            (LB6, "fd00::11", "fd00::12", "fd00::13")
        };
        let (b14, b15) = if v4_backends {
            ("198.18.0.14", "198.18.0.15")
        } else {
            ("fd00::14", "fd00::15")
        };
        // A router's frag-needed about b11's reply to the IPv4 client: the flow's backend
        // gets it, in the flow's tunnel.
        let reply = Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(v4(VIP4), v4("198.18.0.10"))
            .tcp(80, 40_000)
            .ack()
            .build();
        let frag_needed = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.1"), v4(VIP4))
            .icmp_frag_needed(1400, &ip_packet(&reply)[..40])
            .build();
        let with_options = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.10"), v4(VIP4))
            .ipv4_options(&[1, 1, 1, 0])
            .tcp(40_000, 80)
            .ack()
            .payload(&[9; 333])
            .build();
        let with_dest_opts = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(v6("fd00::10"), v6(VIP6))
            .ipv6_ext(ExtHeader::DestOpts(Vec::new()))
            .tcp(40_000, 80)
            .ack()
            .build();
        let (tcp4, tcp6) = (hash("198.18.0.10", VIP4, 80), hash("fd00::10", VIP6, 80));
        let cases = [
            ("IPv4 client", syn4(80, 0), b11, tcp4, true),
            ("IPv4 client, odd length", syn4(80, 1001), b11, tcp4, true),
            ("IPv4 client with IP options", with_options, b11, tcp4, true),
            ("IPv6 client", syn6(0), b12, tcp6, true),
            ("IPv6 client, odd length", syn6(1001), b12, tcp6, true),
            (
                "IPv4 UDP query",
                query("198.18.0.10", 37, None),
                b14,
                hash_of("198.18.0.10", VIP4, 53, 17),
                true,
            ),
            (
                "IPv4 UDP query without a checksum: none outside either",
                query("198.18.0.10", 37, Some(0)),
                b14,
                hash_of("198.18.0.10", VIP4, 53, 17),
                false,
            ),
            (
                "IPv6 UDP query",
                query("fd00::10", 36, None),
                b15,
                hash_of("fd00::10", VIP6, 53, 17),
                true,
            ),
            (
                "IPv6 client with an extension header: no checksum",
                with_dest_opts,
                b12,
                tcp6,
                false,
            ),
            (
                "a router's ICMP error about a flow",
                frag_needed,
                b11,
                tcp4,
                true,
            ),
        ];
        for (what, input, backend, h, checksum) in cases {
            let out = lab.run(&input);
            assert_eq!(out.verdict, XDP_TX, "{what}, backends v4 {v4_backends}");
            let want = gue_encapsulated(&input, ip(src), ip(backend), h, PORT, checksum);
            if let Some(d) = xlb_tests::packet::diff_frames(&want, &out.frame) {
                panic!("{what}, backends v4 {v4_backends}:\n{d}");
            }
        }
        // The IP-in-IP VIP on the same address keeps its tunnel.
        let input = syn4(81, 0);
        let out = lab.run(&input);
        let h = hash("198.18.0.10", VIP4, 81);
        assert_eq!(out.frame, encapsulated(&input, ip(src), ip(b13), h));
    }
}

/// 1500-byte link: an IPv4 packet of 1473 bytes fits an IPv4 IP-in-IP tunnel (1493) but not
/// a GUE one (1501), which is answered with frag-needed for 1472.
#[test]
fn the_udp_header_counts_against_the_mtu() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(&config(true));
    lab.set_all_nexthops();
    // 20 (IP) + 20 (TCP) + 1433 = 1473 bytes.
    let out = lab.run(&syn4(81, 1433));
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(out.frame.len(), 14 + 20 + 1473, "tunnelled whole");
    let out = lab.run(&syn4(80, 1433));
    assert_eq!(out.verdict, XDP_TX, "answered");
    // Ethernet, IPv4 (protocol ICMP), then type 3 code 4 with the next-hop MTU.
    assert_eq!(out.frame[23], 1, "not ICMP");
    assert_eq!(&out.frame[34..36], &[3, 4], "not frag-needed");
    assert_eq!(u16::from_be_bytes([out.frame[40], out.frame[41]]), 1472);
    // One byte less fits.
    let out = lab.run(&syn4(80, 1432));
    assert_eq!(out.frame.len(), 14 + 28 + 1472, "tunnelled whole");
}
