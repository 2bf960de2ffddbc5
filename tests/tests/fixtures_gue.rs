//! test_run: GUE tunnels (`"encap": "gue"`). A GUE VIP's packets leave in an outer IP header
//! of the backend's family with UDP as its protocol, a UDP header from the flow hash's source
//! port to `gue_port` (no checksum), then the client's packet untouched; byte for byte, for
//! each pairing of families. An IP-in-IP VIP on the same address keeps IP-in-IP, and the
//! UDP header's 8 bytes count when a packet is too big for the path.

use std::net::IpAddr;

use lb_common::{flow::FlowKey, hash::flow_hash};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB4: &str = "198.18.0.2";
const LB6: &str = "fd00::2";
const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00::1:1";
const PORT: u16 = 5555;

/// A GUE VIP of each family, each with one backend of `backend_family`'s, and an IP-in-IP
/// VIP beside the IPv4 one.
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
              "backends": [{{"address": "{}"}}]}}]}}"#,
        b(11),
        b(12),
        b(13)
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
    let k: FlowKey = flow(src.parse().unwrap(), 40_000, dst.parse().unwrap(), dport, 6);
    flow_hash(&k)
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
        let cases = [
            (
                "IPv4 client",
                syn4(80, 0),
                b11,
                hash("198.18.0.10", VIP4, 80),
            ),
            ("IPv6 client", syn6(0), b12, hash("fd00::10", VIP6, 80)),
        ];
        for (what, input, backend, h) in cases {
            let out = lab.run(&input);
            assert_eq!(out.verdict, XDP_TX, "{what}, backends v4 {v4_backends}");
            let want = gue_encapsulated(&input, ip(src), ip(backend), h, PORT);
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
