//! test_run fixtures: IPv6 and mixed-family tunnels, flow-hash sources, ICMP errors routed
//! to the flow's backend, and too-big answers.

use lb_common::{
    counters::{Drop, Event},
    hash::flow_hash,
};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ip_packet, pad_n, ExtHeader, Pkt},
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
    // Quoting a later fragment of a reply: its payload happens to start with the bytes the
    // ports of a VIP flow would be (80 → 6000), but a later fragment has no ports.
    let mut looks_like_ports = vec![0x00, 0x50, 0x17, 0x70];
    looks_like_ports.resize(24, 0);
    let later4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .fragment(100, false)
        .protocol(TCP)
        .payload(&looks_like_ports)
        .build();
    let about_later4 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.1.1"))
        .icmp_frag_needed(1400, &ip_packet(&later4)[..28])
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
            name: "v4_error_quoting_a_later_fragment_drops",
            config: CFG.into(),
            steps: vec![step(
                about_later4,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::IcmpNotForVip.slot(), 1), (fwd, 0)],
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

/// Too-big answers quote the offending packet's headers and 8 bytes behind them even when
/// options or extension headers push that past 64 bytes (the sender's stack needs them to
/// find the socket), and go to unicast sources only.
#[test]
fn too_big_quotes_and_sources() {
    if !require_root() {
        return;
    }
    // 40 bytes of IPv4 options (NOPs): 60 + 8 = 68 bytes, quoted as 72.
    let opts4 = v4_client()
        .ipv4_options(&[1; 40])
        .tcp(6010, 80)
        .ack()
        .payload(&[7; 1440])
        .build();
    let need_opts4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .icmp_frag_needed(1480, &ip_packet(&opts4)[..72])
        .build();
    // A 24-byte destination options header (one PadN): 64 + 8 = 72 bytes quoted.
    let pad_n = pad_n(22);
    let ext6 = v6_client()
        .ipv6_ext(ExtHeader::DestOpts(pad_n.clone()))
        .tcp(6011, 80)
        .ack()
        .payload(&[7; 1440])
        .build();
    let need_ext6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("fd00::10"))
        .icmpv6_packet_too_big(1460, &ip_packet(&ext6)[..72])
        .build();
    // Three of them: 40 + 3 × 24 + 8 = 120 bytes.
    let ext6_3 = v6_client()
        .ipv6_ext(ExtHeader::HopByHop(pad_n.clone()))
        .ipv6_ext(ExtHeader::DestOpts(pad_n.clone()))
        .ipv6_ext(ExtHeader::DestOpts(pad_n))
        .tcp(6012, 80)
        .ack()
        .payload(&[7; 1440])
        .build();
    let need_ext6_3 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("fd00::10"))
        .icmpv6_packet_too_big(1460, &ip_packet(&ext6_3)[..120])
        .build();
    let sent = Event::IcmpTooBigSent.slot();
    let mut fixtures = vec![
        Fixture {
            name: "v4_too_big_with_options_quotes_their_ports",
            config: CFG.into(),
            steps: vec![step(opts4, XDP_TX, Expect::Frame(need_opts4), &[(sent, 1)])],
        },
        Fixture {
            name: "v6_too_big_with_an_extension_header_quotes_its_ports",
            config: CFG.into(),
            steps: vec![step(ext6, XDP_TX, Expect::Frame(need_ext6), &[(sent, 1)])],
        },
        Fixture {
            name: "v6_too_big_with_three_extension_headers_quotes_their_ports",
            config: CFG.into(),
            steps: vec![step(
                ext6_3,
                XDP_TX,
                Expect::Frame(need_ext6_3),
                &[(sent, 1)],
            )],
        },
    ];
    // Sources no ICMP error may go to: counted, never answered.
    let not_unicast: [(&'static str, &str); 8] = [
        ("v4_too_big_from_this_network_not_answered", "0.0.0.0"),
        ("v4_too_big_from_loopback_not_answered", "127.0.0.1"),
        ("v4_too_big_from_multicast_not_answered", "224.0.0.5"),
        ("v4_too_big_from_reserved_not_answered", "240.0.0.1"),
        ("v4_too_big_from_broadcast_not_answered", "255.255.255.255"),
        ("v6_too_big_from_unspecified_not_answered", "::"),
        ("v6_too_big_from_loopback_not_answered", "::1"),
        ("v6_too_big_from_multicast_not_answered", "ff02::1"),
    ];
    for (name, src) in not_unicast {
        // Too big for either tunnel (IPv4: 1500 bytes of IP, IPv6: 1520).
        let to_vip = match src.parse().unwrap() {
            std::net::IpAddr::V4(a) => Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(a, v4("198.18.1.1")),
            std::net::IpAddr::V6(a) => Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(a, v6("fd00:1::1")),
        };
        let big = to_vip.tcp(6020, 80).ack().payload(&[7; 1460]).build();
        fixtures.push(Fixture {
            name,
            config: CFG.into(),
            steps: vec![step(
                big,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::TooBigNotUnicast.slot(), 1), (sent, 0)],
            )],
        });
    }
    // The edges of those ranges are unicast and answered.
    let edge = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("223.255.255.254"), v4("198.18.1.1"))
        .tcp(6022, 80)
        .ack()
        .payload(&[7; 1460])
        .build();
    let edge_answer = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("223.255.255.254"))
        .icmp_frag_needed(1480, &ip_packet(&edge)[..64])
        .build();
    let edge6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("::2"), v6("fd00:1::1"))
        .tcp(6023, 80)
        .ack()
        .payload(&[7; 1440])
        .build();
    let edge6_answer = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("::2"))
        .icmpv6_packet_too_big(1460, &ip_packet(&edge6)[..64])
        .build();
    fixtures.push(Fixture {
        name: "too_big_from_the_edges_of_those_ranges_answered",
        config: CFG.into(),
        steps: vec![
            step(edge, XDP_TX, Expect::Frame(edge_answer), &[(sent, 1)]),
            step(edge6, XDP_TX, Expect::Frame(edge6_answer), &[(sent, 1)]),
        ],
    });
    run_all(fixtures);
}

/// ICMPv6 errors about a reply with extension headers (a backend's fragmented UDP reply
/// has one) are routed by the ports behind them.
#[test]
fn icmpv6_errors_quoting_extension_headers() {
    if !require_root() {
        return;
    }
    // One PadN option: 24-byte options headers.
    let pad_n = pad_n(22);
    let reply = |sport: u16| {
        Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv6(v6("fd00:1::1"), v6("fd00::10"))
            .tcp(80, sport)
    };
    let ptb = |quoted: &[u8]| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(v6("fd00::1"), v6("fd00:1::1"))
            .icmpv6_packet_too_big(1400, quoted)
            .build()
    };
    let with_opts = reply(6030)
        .ipv6_ext(ExtHeader::DestOpts(pad_n.clone()))
        .ack()
        .payload(&[0; 32])
        .build();
    let about_opts = ptb(&ip_packet(&with_opts)[..96]);
    let first_fragment = reply(6031)
        .fragment(0, true)
        .ack()
        .payload(&[0; 32])
        .build();
    let about_first = ptb(&ip_packet(&first_fragment)[..80]);
    let later_fragment = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00:1::1"), v6("fd00::10"))
        .fragment(100, false)
        .protocol(TCP)
        .payload(&[0; 32])
        .build();
    let about_later = ptb(&ip_packet(&later_fragment)[..80]);
    // Cut inside the options header: its ports are not there.
    let about_cut = ptb(&ip_packet(&with_opts)[..56]);
    let mut long = reply(6032);
    for _ in 0..lb_common::maps::MAX_IPV6_EXT_HEADERS + 1 {
        long = long.ipv6_ext(ExtHeader::DestOpts(vec![]));
    }
    let long = long.ack().build();
    let about_long = ptb(ip_packet(&long));
    let fwd = Event::IcmpForwarded.slot();
    run_all(vec![
        Fixture {
            name: "v6_error_quoting_destination_options_goes_to_the_flows_backend",
            config: CFG.into(),
            steps: vec![step(
                about_opts.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &about_opts,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    hash_of("fd00::10", 6030, "fd00:1::1", 80),
                )),
                &[(fwd, 1)],
            )],
        },
        Fixture {
            name: "v6_error_quoting_a_first_fragment_goes_to_the_flows_backend",
            config: CFG.into(),
            steps: vec![step(
                about_first.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &about_first,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    hash_of("fd00::10", 6031, "fd00:1::1", 80),
                )),
                &[(fwd, 1)],
            )],
        },
        Fixture {
            name: "v6_error_quoting_a_later_fragment_drops",
            config: CFG.into(),
            steps: vec![step(
                about_later,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::IcmpNotForVip.slot(), 1), (fwd, 0)],
            )],
        },
        Fixture {
            name: "v6_error_quoting_a_cut_extension_header_drops",
            config: CFG.into(),
            steps: vec![step(
                about_cut,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::IcmpTruncated.slot(), 1), (fwd, 0)],
            )],
        },
        Fixture {
            name: "v6_error_quoting_too_long_an_extension_chain_drops",
            config: CFG.into(),
            steps: vec![step(
                about_long,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::IcmpNotForVip.slot(), 1), (fwd, 0)],
            )],
        },
    ]);
}

/// The ICMP errors a CPU sends are limited per second (`icmp_rate_limit`, RFC 4443 section
/// 2.4 (f)): beyond the limit, too-big packets of either family are dropped unanswered and
/// counted; 0 lifts the limit. The window is per CPU and per second: the thread is pinned
/// (test_run runs on the calling CPU), and a run slower than half a second is repeated in
/// a fresh lab rather than judged.
#[test]
fn icmp_errors_are_rate_limited_per_cpu() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let config = |limit: u32| {
        CFG.replacen(
            r#""mtu": 1500,"#,
            &format!(r#""mtu": 1500, "icmp_rate_limit": {limit},"#),
            1,
        )
    };
    let big4 = |sport: u16| v4_client().tcp(sport, 80).ack().payload(&[7; 1460]).build();
    let big6 = v6_client().tcp(6050, 80).ack().payload(&[7; 1440]).build();
    let limited = Drop::TooBigRateLimited.slot() as usize;
    let sent = Event::IcmpTooBigSent.slot() as usize;
    for attempt in 0.. {
        assert!(
            attempt < 3,
            "three runs of a few packets took over half a second each"
        );
        let mut lab = Lab::new(&config(3));
        let start = std::time::Instant::now();
        let before = lab.counters();
        let verdicts: Vec<u32> = (6040..6045).map(|p| lab.run(&big4(p)).verdict).collect();
        let v6_verdict = lab.run(&big6).verdict;
        let after = lab.counters();
        if start.elapsed() > std::time::Duration::from_millis(500) {
            continue;
        }
        assert_eq!(
            verdicts,
            [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP],
            "{}",
            counter_deltas(&before, &after)
        );
        assert_eq!(v6_verdict, XDP_DROP, "one window for both families");
        assert_eq!(after[sent] - before[sent], 3);
        assert_eq!(after[limited] - before[limited], 3);
        break;
    }
    // No limit: every one answered.
    let mut lab = Lab::new(&config(0));
    for p in 6060..6100 {
        let out = lab.run(&big4(p));
        assert_eq!(out.verdict, XDP_TX, "port {p}");
    }
    assert_eq!(lab.counters()[limited], 0);
}

/// A backend's path may carry less than the balancer's own link (it sits behind another
/// interface, or its route sets an MTU): packets too big for that path once encapsulated
/// are answered with the path's MTU less the tunnel, not forwarded to be dropped on the way.
/// A path that carries more than our link changes nothing, nor does one not known (0).
#[test]
fn a_backend_s_path_mtu_below_ours_sets_the_too_big_answer() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(CFG);
    let path_mtu = |lab: &mut Lab, mtu: u32| {
        for (vip, addr) in [
            ("198.18.1.1:80/tcp", "198.18.0.11"),
            ("[fd00:1::1]:80/tcp", "fd00::11"),
        ] {
            let hop = xlb::core::NextHop {
                ifindex: TEST_RUN_IFINDEX,
                smac: LB_MAC,
                dmac: NEXTHOP_MAC,
                mtu,
            };
            lab.core
                .set_nexthop(&vip.parse().unwrap(), addr.parse().unwrap(), Some(hop))
                .expect("set next hop");
        }
    };
    // IPv4 packets of 1381 and 1380 bytes, IPv6 ones of 1361 and 1360, against a 1400-byte
    // path: the larger ones no longer fit once encapsulated (20 and 40 bytes).
    let p4 = |sport: u16, len: usize| {
        v4_client()
            .tcp(sport, 80)
            .ack()
            .payload(&vec![7; len - 40])
            .build()
    };
    let p6 = |sport: u16, len: usize| {
        v6_client()
            .tcp(sport, 80)
            .ack()
            .payload(&vec![7; len - 60])
            .build()
    };
    let need4 = |pkt: &[u8], mtu: u16| {
        Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
            .icmp_frag_needed(mtu, &ip_packet(pkt)[..64])
            .build()
    };
    let need6 = |pkt: &[u8], mtu: u32| {
        Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv6(v6("fd00:1::1"), v6("fd00::10"))
            .icmpv6_packet_too_big(mtu, &ip_packet(pkt)[..64])
            .build()
    };
    let check = |lab: &mut Lab, what: &str, frame: &[u8], verdict: u32, want: &[u8]| {
        let out = lab.run(frame);
        assert_eq!(out.verdict, verdict, "{what}: verdict");
        if let Some(d) = xlb_tests::packet::diff_frames(want, &out.frame) {
            panic!("{what}: output frame:\n{d}");
        }
    };
    let (b4, b6) = ("198.18.0.11".parse().unwrap(), "fd00::11".parse().unwrap());

    path_mtu(&mut lab, 1400);
    let (big4, fits4) = (p4(6070, 1381), p4(6071, 1380));
    let (big6, fits6) = (p6(6072, 1361), p6(6073, 1360));
    check(
        &mut lab,
        "v4 over the path",
        &big4,
        XDP_TX,
        &need4(&big4, 1380),
    );
    check(
        &mut lab,
        "v4 fitting the path",
        &fits4,
        XDP_TX,
        &encapsulated(&fits4, lb4(), b4, 0),
    );
    check(
        &mut lab,
        "v6 over the path",
        &big6,
        XDP_TX,
        &need6(&big6, 1360),
    );
    check(
        &mut lab,
        "v6 fitting the path",
        &fits6,
        XDP_TX,
        &encapsulated(
            &fits6,
            lb6(),
            b6,
            hash_of("fd00::10", 6073, "fd00:1::1", 80),
        ),
    );

    // Larger than our link, or not known: our link's 1500 bytes decide.
    for mtu in [9000, 0] {
        path_mtu(&mut lab, mtu);
        let (big4, fits4) = (p4(6074, 1481), p4(6075, 1480));
        check(
            &mut lab,
            &format!("path {mtu}: v4 over ours"),
            &big4,
            XDP_TX,
            &need4(&big4, 1480),
        );
        check(
            &mut lab,
            &format!("path {mtu}: v4 fitting ours"),
            &fits4,
            XDP_TX,
            &encapsulated(&fits4, lb4(), b4, 0),
        );
    }
}
