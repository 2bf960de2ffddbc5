//! test_run: echo requests to a VIP's address (`icmp_echo`). The balancer answers them
//! itself, in place, byte for byte what a host would send: MACs and addresses swapped, TTL /
//! hop limit 64, the reply's type, checksums right (the expected frames here are built
//! from scratch, checksums summed anew); a VLAN tag stays. Everything else goes to the
//! host's stack untouched: other addresses, echo replies, requests with IPv4 options or
//! IPv6 extension headers, a code other than 0, senders no reply may go to, and every
//! request once `icmp_echo` is off.

use lb_common::counters::{Event, Pass};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ExtHeader, Pkt},
};

const CONFIG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "fd00:1::1", "port": 53, "protocol": "udp", "backends": [{"address": "fd00::11"}]}
]}"#;

const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00:1::1";
const CLIENT4: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::10";

/// What `ping` sends: 56 bytes of payload.
fn payload() -> Vec<u8> {
    (0..56u8).collect()
}

/// An echo request (`reply`: the answer a host sends back) of each family; `tag` a VLAN.
fn echo4(src: &str, dst: &str, reply: bool, tag: Option<u16>) -> Vec<u8> {
    let (macs, addrs, ttl) = if reply {
        ((LB_MAC, CLIENT_MAC), (dst, src), 64)
    } else {
        ((CLIENT_MAC, LB_MAC), (src, dst), 57)
    };
    let mut p = Pkt::eth(macs.0, macs.1);
    if let Some(id) = tag {
        p = p.vlan(id);
    }
    p.ipv4(v4(addrs.0), v4(addrs.1))
        .tos(0x10)
        .id(0x4242)
        .df(true)
        .ttl(ttl)
        .icmp(if reply { 0 } else { 8 }, 0, [0x12, 0x34, 0, 7])
        .payload(&payload())
        .build()
}

fn echo6(src: &str, dst: &str, reply: bool) -> Vec<u8> {
    let (macs, addrs, hops) = if reply {
        ((LB_MAC, CLIENT_MAC), (dst, src), 64)
    } else {
        ((CLIENT_MAC, LB_MAC), (src, dst), 57)
    };
    Pkt::eth(macs.0, macs.1)
        .ipv6(v6(addrs.0), v6(addrs.1))
        .traffic_class(0x20)
        .flow_label(0x1_2345)
        .ttl(hops)
        .icmpv6(if reply { 129 } else { 128 }, 0, [0x12, 0x34, 0, 7])
        .payload(&payload())
        .build()
}

fn answered(input: Vec<u8>, reply: Vec<u8>) -> Step {
    step(
        input,
        XDP_TX,
        Expect::Frame(reply),
        &[(Event::IcmpEchoReplied.slot(), 1)],
    )
}

fn passed(input: Vec<u8>) -> Step {
    step(
        input,
        XDP_PASS,
        Expect::Unchanged,
        &[(Pass::NotVip.slot(), 1), (Event::IcmpEchoReplied.slot(), 0)],
    )
}

#[test]
fn echo_requests_to_vips_are_answered_by_the_balancer() {
    if !require_root() {
        return;
    }
    let with_options = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .ipv4_options(&[1, 1, 1, 0])
        .icmp_echo(1, 1)
        .build();
    let with_ext = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6(CLIENT6), v6(VIP6))
        .ipv6_ext(ExtHeader::DestOpts(Vec::new()))
        .icmpv6_echo(1, 1)
        .build();
    let code1 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .icmp(8, 1, [0, 1, 0, 1])
        .build();
    let off = CONFIG.replacen('{', r#"{"icmp_echo": false, "#, 1);
    run_all(vec![
        Fixture {
            name: "answered_of_each_family_and_behind_a_vlan_tag",
            config: CONFIG.into(),
            steps: vec![
                answered(
                    echo4(CLIENT4, VIP4, false, None),
                    echo4(CLIENT4, VIP4, true, None),
                ),
                answered(echo6(CLIENT6, VIP6, false), echo6(CLIENT6, VIP6, true)),
                answered(
                    echo4(CLIENT4, VIP4, false, Some(42)),
                    echo4(CLIENT4, VIP4, true, Some(42)),
                ),
            ],
        },
        Fixture {
            name: "left_to_the_host",
            config: CONFIG.into(),
            steps: vec![
                // No VIP there (the balancer's own address, say).
                passed(echo4(CLIENT4, "198.18.0.2", false, None)),
                passed(echo6(CLIENT6, "fd00::2", false)),
                // A reply is no request.
                passed(echo4(VIP4, CLIENT4, true, None)),
                passed(with_options),
                passed(with_ext),
                passed(code1),
                // No reply goes to a multicast or loopback source.
                passed(echo4("224.0.0.1", VIP4, false, None)),
                passed(echo6("ff02::1", VIP6, false)),
            ],
        },
        Fixture {
            name: "icmp_echo_off",
            config: off,
            steps: vec![
                passed(echo4(CLIENT4, VIP4, false, None)),
                passed(echo6(CLIENT6, VIP6, false)),
            ],
        },
    ]);
}
