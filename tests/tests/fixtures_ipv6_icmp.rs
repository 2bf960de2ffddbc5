//! test_run fixtures: IPv6 and mixed-family tunnels, flow-hash sources, ICMP errors routed
//! to the flow's backend, and too-big answers.

use lb_common::{
    counters::{Drop, Event},
    hash::flow_hash,
};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ip_packet, ExtHeader, Pkt},
};

const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"},
  "hashed_source": {"v4": "198.19.0.0/16", "v6": "fd00:ff::/96"},
  "mtu": 1500,
  "vips": [
    {"address": "fd00:1::1", "port": 80, "protocol": "tcp", "backends": [{"address": "fd00::11"}]},
    {"address": "198.18.1.1", "port": 8080, "protocol": "tcp", "backends": [{"address": "fd00::11"}]},
    {"address": "fd00:1::1", "port": 8080, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 81, "protocol": "tcp", "source": "flow_hash", "backends": [{"address": "198.18.0.11"}]},
    {"address": "fd00:1::1", "port": 81, "protocol": "tcp", "source": "flow_hash", "backends": [{"address": "fd00::11"}]}
]}"#;

const TCP: u8 = 6;

fn v4_client() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
}

fn v6_client() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6("fd00::10"), v6("fd00:1::1"))
}

fn hash_of(src: &str, sport: u16, dst: &str, dport: u16) -> u32 {
    flow_hash(&flow(
        src.parse().unwrap(),
        sport,
        dst.parse().unwrap(),
        dport,
        TCP,
    ))
}

fn lb4() -> std::net::IpAddr {
    "198.18.0.2".parse().unwrap()
}

fn lb6() -> std::net::IpAddr {
    "fd00::2".parse().unwrap()
}

#[test]
fn ipv6_and_mixed_family_fixtures() {
    if !require_root() {
        return;
    }
    let tx = Event::TxEncap.slot();
    let v6_syn = v6_client().tcp(5000, 80).syn().build();
    let v6_exts = v6_client()
        .ipv6_ext(ExtHeader::HopByHop(vec![]))
        .ipv6_ext(ExtHeader::DestOpts(vec![]))
        .tcp(5001, 80)
        .syn()
        .build();
    let four_in_six = v4_client().tos(0x28).tcp(5002, 8080).syn().build();
    let six_in_four = v6_client()
        .traffic_class(0x28)
        .tcp(5003, 8080)
        .syn()
        .build();
    let fh4 = v4_client().tcp(5004, 81).syn().build();
    let fh6 = v6_client().tcp(5005, 81).syn().build();
    let h = |src, sport, dst, dport| hash_of(src, sport, dst, dport);
    let fh4_hash = h("198.18.0.10", 5004, "198.18.1.1", 81);
    let fh4_src = std::net::Ipv4Addr::from(u32::from(v4("198.19.0.0")) | (fh4_hash & 0xffff));
    let fh6_hash = h("fd00::10", 5005, "fd00:1::1", 81);
    let mut fh6_src = v6("fd00:ff::").octets();
    fh6_src[12..].copy_from_slice(&fh6_hash.to_be_bytes());
    run_all(vec![
        Fixture {
            name: "v6_tcp_ip6ip6_flow_label_from_hash",
            config: CFG.into(),
            steps: vec![step(
                v6_syn.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &v6_syn,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    h("fd00::10", 5000, "fd00:1::1", 80),
                )),
                &[(tx, 1), (Event::NewFlow.slot(), 1)],
            )],
        },
        Fixture {
            name: "v6_extension_headers_inner_verbatim",
            config: CFG.into(),
            steps: vec![step(
                v6_exts.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &v6_exts,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    h("fd00::10", 5001, "fd00:1::1", 80),
                )),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "v4_in_v6_tunnel",
            config: CFG.into(),
            steps: vec![step(
                four_in_six.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &four_in_six,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    h("198.18.0.10", 5002, "198.18.1.1", 8080),
                )),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "v6_in_v4_tunnel",
            config: CFG.into(),
            steps: vec![step(
                six_in_four.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &six_in_four,
                    lb4(),
                    "198.18.0.11".parse().unwrap(),
                    0,
                )),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "v4_outer_source_from_flow_hash",
            config: CFG.into(),
            steps: vec![step(
                fh4.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &fh4,
                    fh4_src.into(),
                    "198.18.0.11".parse().unwrap(),
                    0,
                )),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "v6_outer_source_from_flow_hash",
            config: CFG.into(),
            steps: vec![step(
                fh6.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &fh6,
                    std::net::Ipv6Addr::from(fh6_src).into(),
                    "fd00::11".parse().unwrap(),
                    fh6_hash,
                )),
                &[(tx, 1)],
            )],
        },
    ]);
}

#[test]
fn icmp_fixtures() {
    if !require_root() {
        return;
    }
    // A reply the backend sent (VIP → client), as a router would quote it.
    let reply4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .tcp(80, 6000)
        .ack()
        .payload(&[0; 32])
        .build();
    let frag_needed = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.1.1"))
        .icmp_frag_needed(1400, &ip_packet(&reply4)[..60])
        .build();
    let reply6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("fd00::10"))
        .tcp(80, 6001)
        .ack()
        .payload(&[0; 32])
        .build();
    let ptb = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::1"), v6("fd00:1::1"))
        .icmpv6_packet_too_big(1400, &ip_packet(&reply6)[..72])
        .build();
    // Quoting a packet from a port that is no VIP.
    let stray = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .tcp(9999, 6000)
        .ack()
        .build();
    let stray_err = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.1.1"))
        .icmp_frag_needed(1400, &ip_packet(&stray)[..40])
        .build();
    // Errors about the host's own traffic are the host's.
    let host_err = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.0.2"))
        .icmp_frag_needed(1400, &ip_packet(&stray)[..40])
        .build();

    // Full-size client segments: 1500-byte IP packets no longer fit once encapsulated.
    let big4 = v4_client().tcp(6002, 80).ack().payload(&[7; 1460]).build();
    let big4_nodf = v4_client()
        .df(false)
        .tcp(6003, 80)
        .ack()
        .payload(&[7; 1460])
        .build();
    let fits4 = v4_client().tcp(6004, 80).ack().payload(&[7; 1440]).build();
    let big6 = v6_client().tcp(6005, 80).ack().payload(&[7; 1440]).build();
    let need4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .icmp_frag_needed(1480, &ip_packet(&big4)[..64])
        .build();
    let need6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("fd00::10"))
        .icmpv6_packet_too_big(1460, &ip_packet(&big6)[..64])
        .build();

    let fwd = Event::IcmpForwarded.slot();
    run_all(vec![
        Fixture {
            name: "v4_frag_needed_goes_to_the_flows_backend",
            config: CFG.into(),
            steps: vec![step(
                frag_needed.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &frag_needed,
                    lb4(),
                    "198.18.0.11".parse().unwrap(),
                    0,
                )),
                &[(fwd, 1), (Event::NewFlow.slot(), 0)],
            )],
        },
        Fixture {
            name: "v6_packet_too_big_goes_to_the_flows_backend",
            config: CFG.into(),
            steps: vec![step(
                ptb.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &ptb,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    hash_of("fd00::10", 6001, "fd00:1::1", 80),
                )),
                &[(fwd, 1)],
            )],
        },
        Fixture {
            name: "icmp_error_quoting_no_vip_flow_drops",
            config: CFG.into(),
            steps: vec![step(
                stray_err,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::IcmpNotForVip.slot(), 1)],
            )],
        },
        Fixture {
            name: "icmp_error_for_the_host_passes",
            config: CFG.into(),
            steps: vec![step(
                host_err,
                XDP_PASS,
                Expect::Unchanged,
                &[(lb_common::counters::Pass::NotVip.slot(), 1)],
            )],
        },
        Fixture {
            name: "v4_too_big_answered_with_frag_needed",
            config: CFG.into(),
            steps: vec![step(
                big4,
                XDP_TX,
                Expect::Frame(need4),
                &[
                    (Event::IcmpTooBigSent.slot(), 1),
                    (Event::TxEncap.slot(), 0),
                ],
            )],
        },
        Fixture {
            name: "v4_too_big_without_df_dropped",
            config: CFG.into(),
            steps: vec![step(
                big4_nodf,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::TooBig.slot(), 1)],
            )],
        },
        Fixture {
            name: "v4_exactly_mtu_after_encap_forwarded",
            config: CFG.into(),
            steps: vec![step(
                fits4.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &fits4,
                    lb4(),
                    "198.18.0.11".parse().unwrap(),
                    0,
                )),
                &[(Event::TxEncap.slot(), 1)],
            )],
        },
        Fixture {
            name: "v6_too_big_answered_with_packet_too_big",
            config: CFG.into(),
            steps: vec![step(
                big6,
                XDP_TX,
                Expect::Frame(need6),
                &[(Event::IcmpTooBigSent.slot(), 1)],
            )],
        },
    ]);
}
