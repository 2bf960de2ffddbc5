//! test_run fixtures for `xlb_decap`, the program backends run: IP-in-IP to a local address
//! comes out as the inner packet behind the same Ethernet header (and VLAN tag); tunnels to
//! us that the kernel's tunnel code would drop are dropped; everything else is passed
//! untouched. Each frame is counted under one reason. Then the round trip: what the
//! balancer sends, decapsulated, is exactly what the client sent.

use std::net::IpAddr;

use lb_common::counters::{slot_name, Drop, Event, Pass, COUNTER_SLOTS};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{
        eth_frame, ip_packet, ipv4_outer, ipv6_outer, truncated, ExtHeader, Mac, Pkt,
        ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_IPIP, PROTO_IPV6,
    },
};

/// The backend's MAC (destination of tunnel frames) and the router's.
const HOST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xee];
const LOCAL4: &str = "198.18.0.11";
const LOCAL6: &str = "fd00::11";
const LB4: &str = "198.18.0.2";
const LB6: &str = "fd00::2";

fn local() -> Vec<IpAddr> {
    vec![LOCAL4.parse().unwrap(), LOCAL6.parse().unwrap()]
}

/// The client's packets, as the balancer tunnels them.
fn inner4() -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(31337, 80)
        .syn()
        .build_ip()
}

fn inner6() -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00::1:1"))
        .udp(5353, 53)
        .payload(b"query")
        .build_ip()
}

fn outer4(dst: &str, proto: u8, inner: &[u8]) -> Vec<u8> {
    ipv4_outer(v4(LB4), v4(dst), proto, 0, 64, 0, true, inner)
}

fn outer6(dst: &str, next: u8, inner: &[u8]) -> Vec<u8> {
    ipv6_outer(v6(LB6), v6(dst), next, 0, 0x12345, 64, inner)
}

fn frame(vlan: Option<u16>, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    eth_frame(HOST_MAC, ROUTER_MAC, vlan, ethertype, l3)
}

/// One frame through the decap program.
struct Case {
    name: &'static str,
    input: Vec<u8>,
    verdict: u32,
    /// `None`: passed untouched (or dropped).
    output: Option<Vec<u8>>,
    /// The one counter slot that must move (by one); every other slot must stay.
    counter: u32,
}

fn decapsulated(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Case {
    Case {
        name,
        input,
        verdict: XDP_PASS,
        output: Some(output),
        counter: Event::Decapsulated.slot(),
    }
}

fn untouched(name: &'static str, input: Vec<u8>, reason: Pass) -> Case {
    Case {
        name,
        input,
        verdict: XDP_PASS,
        output: None,
        counter: reason.slot(),
    }
}

fn dropped(name: &'static str, input: Vec<u8>, reason: Drop) -> Case {
    Case {
        name,
        input,
        verdict: XDP_DROP,
        output: None,
        counter: reason.slot(),
    }
}

fn run_cases(cases: Vec<Case>) {
    run_cases_on(&mut DecapLab::new(&local()), cases);
}

fn run_cases_on(lab: &mut DecapLab, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let before = lab.counters();
        let out = lab.run(&c.input);
        let after = lab.counters();
        let changes = counter_deltas(&before, &after);
        if out.verdict != c.verdict {
            failures.push(format!(
                "{}: verdict {} (want {}); counters {changes}",
                c.name, out.verdict, c.verdict
            ));
            continue;
        }
        // A dropped frame's bytes go nowhere: only a passed one's are compared.
        let want = c.output.as_ref().unwrap_or(&c.input);
        let diff = (c.verdict == XDP_PASS)
            .then(|| xlb_tests::packet::diff_frames(want, &out.frame))
            .flatten();
        if let Some(d) = diff {
            failures.push(format!(
                "{}: output differs (counters {changes}):\n{d}",
                c.name
            ));
            continue;
        }
        let wrong: Vec<u32> = (0..COUNTER_SLOTS)
            .filter(|&s| after[s as usize] - before[s as usize] != u64::from(s == c.counter))
            .collect();
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: want {}+1 only, got {changes}",
                c.name,
                slot_name(c.counter).unwrap_or("?")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} decap cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn decap_strips_tunnels_to_local_addresses() {
    if !require_root() {
        return;
    }
    let (i4, i6) = (inner4(), inner6());
    // Outer IPv4 with options (IHL 6): the whole outer header goes.
    let opts = Pkt::eth(ROUTER_MAC, HOST_MAC)
        .ipv4(v4(LB4), v4(LOCAL4))
        .ipv4_options(&[1, 1, 1, 0])
        .protocol(PROTO_IPIP)
        .payload(&i4)
        .build();
    // Outer IPv6 with a destination-options header carrying a tunnel encapsulation limit
    // (RFC 2473; Linux ip6tnl adds one by default): stripped with the outer header.
    let encap_limit = Pkt::eth(ROUTER_MAC, HOST_MAC)
        .ipv6(v6(LB6), v6(LOCAL6))
        .ipv6_ext(ExtHeader::DestOpts(vec![4, 1, 4]))
        .protocol(PROTO_IPV6)
        .payload(&i6)
        .build();
    run_cases(vec![
        decapsulated(
            "ipip",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4)),
            frame(None, ETHERTYPE_IPV4, &i4),
        ),
        decapsulated(
            "ip6ip6",
            frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPV6, &i6)),
            frame(None, ETHERTYPE_IPV6, &i6),
        ),
        decapsulated(
            "4in6",
            frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPIP, &i4)),
            frame(None, ETHERTYPE_IPV4, &i4),
        ),
        decapsulated(
            "6in4",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPV6, &i6)),
            frame(None, ETHERTYPE_IPV6, &i6),
        ),
        decapsulated(
            "ipip_vlan_tag_kept",
            frame(Some(42), ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4)),
            frame(Some(42), ETHERTYPE_IPV4, &i4),
        ),
        decapsulated(
            "6in4_vlan_tag_kept",
            frame(Some(4094), ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPV6, &i6)),
            frame(Some(4094), ETHERTYPE_IPV6, &i6),
        ),
        decapsulated("ipip_outer_options", opts, frame(None, ETHERTYPE_IPV4, &i4)),
        decapsulated(
            "ip6ip6_encap_limit_option",
            encap_limit,
            frame(None, ETHERTYPE_IPV6, &i6),
        ),
    ]);
}

/// GUE (`xlb decap --gue-port`): UDP to the port, from the balancer's flow-hash source
/// port, with a checksum or without, the client's packet right behind (GUE's variant 1: its version
/// says which). Stripped to the inner packet like IP-in-IP, for every pairing of families;
/// other UDP, other ports, and GUE while no port is set go to the stack untouched; a
/// datagram to the port that is no tunnel as we send them is passed as malformed.
#[test]
fn decap_strips_gue_tunnels_to_its_port() {
    if !require_root() {
        return;
    }
    const PORT: u16 = 5555;
    let (i4, i6) = (inner4(), inner6());
    let udp = |inner: &[u8]| gue_udp(PORT, 0x1234_5678, inner);
    let gue4 = |inner: &[u8]| frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, 17, &udp(inner)));
    let gue6 = |inner: &[u8]| frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, 17, &udp(inner)));
    let edited = |mut d: Vec<u8>, at: usize, bytes: &[u8]| {
        d[at..at + bytes.len()].copy_from_slice(bytes);
        frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, 17, &d))
    };
    let gue_cases = || {
        vec![
            decapsulated("gue 4 in 4", gue4(&i4), frame(None, ETHERTYPE_IPV4, &i4)),
            decapsulated("gue 6 in 6", gue6(&i6), frame(None, ETHERTYPE_IPV6, &i6)),
            decapsulated("gue 4 in 6", gue6(&i4), frame(None, ETHERTYPE_IPV4, &i4)),
            decapsulated("gue 6 in 4", gue4(&i6), frame(None, ETHERTYPE_IPV6, &i6)),
            decapsulated(
                "gue vlan tag kept",
                frame(Some(42), ETHERTYPE_IPV4, &outer4(LOCAL4, 17, &udp(&i4))),
                frame(Some(42), ETHERTYPE_IPV4, &i4),
            ),
            untouched(
                "gue to another address",
                frame(None, ETHERTYPE_IPV4, &outer4("198.18.0.99", 17, &udp(&i4))),
                Pass::TunnelNotLocal,
            ),
            untouched(
                "udp to another port",
                frame(
                    None,
                    ETHERTYPE_IPV4,
                    &outer4(LOCAL4, 17, &gue_udp(PORT + 1, 7, &i4)),
                ),
                Pass::NotTunnel,
            ),
            // The balancer's tunnels carry one: not checked (the inner packet's are).
            decapsulated(
                "gue with a udp checksum",
                edited(udp(&i4), 6, &[0xab, 0xcd]),
                frame(None, ETHERTYPE_IPV4, &i4),
            ),
            untouched(
                "udp length short of the packet",
                edited(udp(&i4), 4, &(8 + i4.len() as u16 - 1).to_be_bytes()),
                Pass::Malformed,
            ),
            untouched(
                "udp length past the packet",
                edited(udp(&i4), 4, &(8 + i4.len() as u16 + 1).to_be_bytes()),
                Pass::Malformed,
            ),
            untouched(
                "neither IPv4 nor IPv6 behind it (a GUE header, variant 0)",
                edited(udp(&i4), 8, &[0x00]),
                Pass::Malformed,
            ),
        ]
    };
    let mut lab = DecapLab::new(&local());
    // No port set: GUE is some UDP datagram, the stack's.
    let not_yet = |c: Case| {
        let input = c.input.clone();
        untouched(c.name, input, Pass::NotTunnel)
    };
    let first: Vec<Case> = gue_cases()
        .into_iter()
        .filter(|c| c.name != "gue to another address")
        .map(not_yet)
        .collect();
    run_cases_on(&mut lab, first);
    lab.set_gue_port(PORT);
    run_cases_on(&mut lab, gue_cases());
    // IP-in-IP still.
    run_cases_on(
        &mut lab,
        vec![decapsulated(
            "ipip beside gue",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4)),
            frame(None, ETHERTYPE_IPV4, &i4),
        )],
    );
}

#[test]
fn decap_leaves_everything_else_alone() {
    if !require_root() {
        return;
    }
    let (i4, i6) = (inner4(), inner6());
    let to_local4 = || Pkt::eth(ROUTER_MAC, HOST_MAC).ipv4(v4("198.18.0.10"), v4(LOCAL4));
    let to_local6 = || Pkt::eth(ROUTER_MAC, HOST_MAC).ipv6(v6("fd00::10"), v6(LOCAL6));
    let ipip = frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4));
    let ip6ip6 = frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPV6, &i6));

    // Malformed outer headers (the stack's own checks decide).
    let mut bad_ihl = ipip.clone();
    bad_ihl[14] = 0x44;
    let mut long_total = ipip.clone();
    long_total[16..18].copy_from_slice(&((ipip.len() - 14 + 1) as u16).to_be_bytes());
    let mut long_payload6 = ip6ip6.clone();
    long_payload6[18..20].copy_from_slice(&((ip6ip6.len() - 54 + 1) as u16).to_be_bytes());
    let seven_exts = (0..7)
        .fold(
            Pkt::eth(ROUTER_MAC, HOST_MAC).ipv6(v6(LB6), v6(LOCAL6)),
            |p, _| p.ipv6_ext(ExtHeader::DestOpts(vec![])),
        )
        .protocol(PROTO_IPV6)
        .payload(&i6)
        .build();
    let fragment = Pkt::eth(ROUTER_MAC, HOST_MAC)
        .ipv4(v4(LB4), v4(LOCAL4))
        .df(false)
        .id(3)
        .fragment(0, true)
        .protocol(PROTO_IPIP)
        .payload(&i4)
        .build();
    let fragment6 = Pkt::eth(ROUTER_MAC, HOST_MAC)
        .ipv6(v6(LB6), v6(LOCAL6))
        .id(3)
        .fragment(0, true)
        .protocol(PROTO_IPV6)
        .payload(&i6)
        .build();

    let mut cases = vec![
        untouched(
            "ipip_to_other_address",
            frame(
                None,
                ETHERTYPE_IPV4,
                &outer4("198.18.0.99", PROTO_IPIP, &i4),
            ),
            Pass::TunnelNotLocal,
        ),
        untouched(
            "ip6ip6_to_other_address",
            frame(None, ETHERTYPE_IPV6, &outer6("fd00::99", PROTO_IPV6, &i6)),
            Pass::TunnelNotLocal,
        ),
        untouched(
            "4in6_to_other_address",
            frame(None, ETHERTYPE_IPV6, &outer6("fd00::12", PROTO_IPIP, &i4)),
            Pass::TunnelNotLocal,
        ),
        untouched(
            "tcp4",
            to_local4().tcp(1, 22).syn().build(),
            Pass::NotTunnel,
        ),
        untouched(
            "udp4",
            to_local4().udp(1, 53).payload(b"q").build(),
            Pass::NotTunnel,
        ),
        untouched(
            "icmp4",
            to_local4().icmp_echo(1, 1).build(),
            Pass::NotTunnel,
        ),
        untouched(
            "tcp6",
            to_local6().tcp(1, 22).syn().build(),
            Pass::NotTunnel,
        ),
        untouched(
            "icmpv6",
            to_local6().icmpv6_echo(1, 1).build(),
            Pass::NotTunnel,
        ),
        untouched(
            "arp",
            Pkt::eth(ROUTER_MAC, HOST_MAC)
                .ethertype(0x0806)
                .payload(&[0; 28])
                .build(),
            Pass::NotTunnel,
        ),
        untouched(
            "tcp4_vlan",
            Pkt::eth(ROUTER_MAC, HOST_MAC)
                .vlan(5)
                .ipv4(v4("198.18.0.10"), v4(LOCAL4))
                .tcp(1, 22)
                .build(),
            Pass::NotTunnel,
        ),
        untouched("outer_ipv4_bad_ihl", bad_ihl, Pass::Malformed),
        untouched(
            "outer_ipv4_total_length_past_frame",
            long_total,
            Pass::Malformed,
        ),
        untouched(
            "outer_ipv6_payload_length_past_frame",
            long_payload6,
            Pass::Malformed,
        ),
        untouched("outer_ipv6_seven_ext_headers", seven_exts, Pass::Malformed),
        untouched(
            "vlan_tag_cut",
            truncated(
                &frame(Some(42), ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4)),
                16,
            ),
            Pass::Malformed,
        ),
        untouched("outer_ipv4_fragment", fragment, Pass::Malformed),
        untouched("outer_ipv6_fragment", fragment6, Pass::Malformed),
        // Inner header cut by the outer length, the rest of it in the frame's padding.
        untouched(
            "ipip_inner_header_in_padding",
            [
                frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4[..1])),
                i4[1..].to_vec(),
            ]
            .concat(),
            Pass::Malformed,
        ),
        untouched(
            "ip6ip6_inner_header_in_padding",
            [
                frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPV6, &i6[..39])),
                i6[39..].to_vec(),
            ]
            .concat(),
            Pass::Malformed,
        ),
        // Inner version not what the outer header announced.
        untouched(
            "ipip_carrying_ipv6",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i6)),
            Pass::Malformed,
        ),
        untouched(
            "6in4_carrying_ipv4",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPV6, &i4)),
            Pass::Malformed,
        ),
        untouched(
            "ip6ip6_carrying_ipv4",
            frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPV6, &i4)),
            Pass::Malformed,
        ),
        untouched(
            "4in6_carrying_ipv6",
            frame(None, ETHERTYPE_IPV6, &outer6(LOCAL6, PROTO_IPIP, &i6)),
            Pass::Malformed,
        ),
        untouched(
            "ipip_empty",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &[])),
            Pass::Malformed,
        ),
        untouched(
            "ipip_one_byte",
            frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &[0x45])),
            Pass::Malformed,
        ),
    ];
    // Every cut inside the outer IPv4 header (lengths as sent): malformed, untouched.
    for len in 14..34 {
        cases.push(untouched(
            "ipip_outer_header_cut",
            truncated(&ipip, len),
            Pass::Malformed,
        ));
    }
    for len in 14..54 {
        cases.push(untouched(
            "ip6ip6_outer_header_cut",
            truncated(&ip6ip6, len),
            Pass::Malformed,
        ));
    }
    run_cases(cases);
}

/// Tunnels to us that the kernel's own tunnel code would drop are dropped, each counted
/// under its reason; stripping them would hand the stack a packet it cannot judge.
#[test]
fn decap_drops_what_the_kernel_tunnel_drops() {
    if !require_root() {
        return;
    }
    let (i4, i6) = (inner4(), inner6());
    // Outer IPv4 with `n` bytes of options (NOPs, then end of list): the checksum covers
    // them, in every chunk size the program sums them by.
    let with_options = |n: usize, inner: &[u8], proto| {
        let mut options = vec![1; n];
        options[n - 1] = 0;
        Pkt::eth(ROUTER_MAC, HOST_MAC)
            .ipv4(v4(LB4), v4(LOCAL4))
            .ipv4_options(&options)
            .protocol(proto)
            .payload(inner)
            .build()
    };
    // Outer IPv4 checksum (frame bytes 24, 25) made wrong.
    let bad_checksum = |mut f: Vec<u8>| {
        f[24] ^= 0x5a;
        f
    };
    // One outer option byte changed, the checksum left as it was.
    let bad_option = |mut f: Vec<u8>, at: usize| {
        f[34 + at] = 0x94;
        f
    };
    let ipip = frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4));
    let sixin4 = frame(None, ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPV6, &i6));
    let ipip_vlan = frame(Some(42), ETHERTYPE_IPV4, &outer4(LOCAL4, PROTO_IPIP, &i4));
    let mut ipip_vlan_bad = ipip_vlan.clone();
    ipip_vlan_bad[28] ^= 0x01;
    let mut cases = vec![
        dropped(
            "ipip_bad_outer_checksum",
            bad_checksum(ipip.clone()),
            Drop::TunnelBadChecksum,
        ),
        dropped(
            "6in4_bad_outer_checksum",
            bad_checksum(sixin4),
            Drop::TunnelBadChecksum,
        ),
        dropped(
            "ipip_vlan_bad_outer_checksum",
            ipip_vlan_bad,
            Drop::TunnelBadChecksum,
        ),
        // Not for us: the stack's business, checksum and all.
        untouched(
            "ipip_to_other_address_bad_checksum",
            bad_checksum(frame(
                None,
                ETHERTYPE_IPV4,
                &outer4("198.18.0.99", PROTO_IPIP, &i4),
            )),
            Pass::TunnelNotLocal,
        ),
    ];
    // The inner packet longer than the outer one says it carries, its last `cut` bytes (and
    // 20 more) behind the outer packet. The review's case: outer total length 60, inner 70.
    let long_inner = |outer_v4: bool, inner: &[u8], cut: usize| {
        let keep = &inner[..inner.len() - cut];
        let trailer = [&inner[inner.len() - cut..], &[0xee; 20][..]].concat();
        let (l3, ethertype) = match (outer_v4, inner[0] >> 4) {
            (true, 4) => (outer4(LOCAL4, PROTO_IPIP, keep), ETHERTYPE_IPV4),
            (true, _) => (outer4(LOCAL4, PROTO_IPV6, keep), ETHERTYPE_IPV4),
            (false, 4) => (outer6(LOCAL6, PROTO_IPIP, keep), ETHERTYPE_IPV6),
            (false, _) => (outer6(LOCAL6, PROTO_IPV6, keep), ETHERTYPE_IPV6),
        };
        [frame(None, ethertype, &l3), trailer].concat()
    };
    let i4_70 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(31337, 80)
        .ack()
        .payload(&[0x61; 30])
        .build_ip();
    assert_eq!(i4_70.len(), 70);
    let i6_long = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00::1:1"))
        .udp(5353, 53)
        .payload(&[0x61; 30])
        .build_ip();
    cases.extend([
        dropped(
            "ipip_inner_total_length_past_outer",
            long_inner(true, &i4_70, 30),
            Drop::TunnelInnerTooLong,
        ),
        dropped(
            "ipip_inner_total_length_one_past_outer",
            long_inner(true, &i4_70, 1),
            Drop::TunnelInnerTooLong,
        ),
        dropped(
            "6in4_inner_payload_length_past_outer",
            long_inner(true, &i6_long, 10),
            Drop::TunnelInnerTooLong,
        ),
        dropped(
            "ip6ip6_inner_payload_length_past_outer",
            long_inner(false, &i6_long, 10),
            Drop::TunnelInnerTooLong,
        ),
        dropped(
            "4in6_inner_total_length_past_outer",
            long_inner(false, &i4_70, 1),
            Drop::TunnelInnerTooLong,
        ),
        // Shorter is no fault: the stack trims the outer packet's bytes behind the inner one.
        decapsulated(
            "ipip_inner_shorter_than_outer_payload",
            frame(
                None,
                ETHERTYPE_IPV4,
                &outer4(LOCAL4, PROTO_IPIP, &[&i4[..], &[0xee; 6]].concat()),
            ),
            frame(None, ETHERTYPE_IPV4, &[&i4[..], &[0xee; 6]].concat()),
        ),
    ]);
    for n in [4, 8, 12, 16, 28, 32, 36, 40] {
        cases.push(decapsulated(
            "ipip_outer_options_checksum_ok",
            with_options(n, &i4, PROTO_IPIP),
            frame(None, ETHERTYPE_IPV4, &i4),
        ));
        cases.push(dropped(
            "ipip_outer_options_first_byte_changed",
            bad_option(with_options(n, &i4, PROTO_IPIP), 0),
            Drop::TunnelBadChecksum,
        ));
        cases.push(dropped(
            "ipip_outer_options_last_word_changed",
            bad_option(with_options(n, &i4, PROTO_IPIP), n - 2),
            Drop::TunnelBadChecksum,
        ));
    }
    run_cases(cases);
}

/// ECN at the tunnel exit (RFC 6040 section 4.2, as `lb_common::ecn` implements it): a
/// congestion mark a router put on the outer header reaches the inner packet (IPv4 header
/// checksum updated), or the packet is dropped when its sender does not do ECN; an outer
/// ECT(1) turns an inner ECT(0) into ECT(1); any other outer field leaves the inner packet
/// as it is.
#[test]
fn decap_carries_congestion_marks_over() {
    if !require_root() {
        return;
    }
    use lb_common::ecn::{CE, ECT_0, ECT_1, NOT_ECT};
    let i4 = |tos: u8| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
            .tos(tos)
            .tcp(31337, 80)
            .syn()
            .build_ip()
    };
    let i6 = |tc: u8| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(v6("fd00::10"), v6("fd00::1:1"))
            .traffic_class(tc)
            .udp(5353, 53)
            .payload(b"query")
            .build_ip()
    };
    // Tunnels whose outer ECN field a router set to `outer`, over `inner`.
    let ipip = |outer: u8, inner: &[u8]| {
        frame(
            None,
            ETHERTYPE_IPV4,
            &ipv4_outer(v4(LB4), v4(LOCAL4), PROTO_IPIP, outer, 64, 0, true, inner),
        )
    };
    let sixin4 = |outer: u8, inner: &[u8]| {
        frame(
            None,
            ETHERTYPE_IPV4,
            &ipv4_outer(v4(LB4), v4(LOCAL4), PROTO_IPV6, outer, 64, 0, true, inner),
        )
    };
    let ip6ip6 = |outer: u8, inner: &[u8]| {
        frame(
            None,
            ETHERTYPE_IPV6,
            &ipv6_outer(v6(LB6), v6(LOCAL6), PROTO_IPV6, outer, 0x12345, 64, inner),
        )
    };
    let fourin6 = |outer: u8, inner: &[u8]| {
        frame(
            None,
            ETHERTYPE_IPV6,
            &ipv6_outer(v6(LB6), v6(LOCAL6), PROTO_IPIP, outer, 0x12345, 64, inner),
        )
    };
    let out4 = |inner: &[u8]| frame(None, ETHERTYPE_IPV4, inner);
    let out6 = |inner: &[u8]| frame(None, ETHERTYPE_IPV6, inner);
    // DSCP EF (46) in front of the ECN field: kept as it is.
    const EF: u8 = 46 << 2;
    let i4_options = |tos: u8| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
            .tos(tos)
            .ipv4_options(&[1, 1, 1, 0])
            .tcp(31337, 80)
            .syn()
            .build_ip()
    };
    let mut cases = vec![
        // Outer CE over an ECN-capable inner packet: the inner packet is marked CE.
        decapsulated(
            "ipip_outer_ce_inner_ect0",
            ipip(CE, &i4(EF | ECT_0)),
            out4(&i4(EF | CE)),
        ),
        decapsulated(
            "ipip_outer_ce_inner_ect1",
            ipip(CE, &i4(EF | ECT_1)),
            out4(&i4(EF | CE)),
        ),
        decapsulated(
            "ipip_inner_options_outer_ce_inner_ect0",
            ipip(CE, &i4_options(ECT_0)),
            out4(&i4_options(CE)),
        ),
        decapsulated(
            "6in4_outer_ce_inner_ect0",
            sixin4(CE, &i6(EF | ECT_0)),
            out6(&i6(EF | CE)),
        ),
        decapsulated(
            "ip6ip6_outer_ce_inner_ect1",
            ip6ip6(EF | CE, &i6(EF | ECT_1)),
            out6(&i6(EF | CE)),
        ),
        decapsulated(
            "ip6ip6_outer_ce_inner_ect0",
            ip6ip6(CE, &i6(0xfc | ECT_0)), // every DSCP bit set
            out6(&i6(0xff)),
        ),
        decapsulated(
            "4in6_outer_ce_inner_ect1",
            fourin6(CE, &i4(EF | ECT_1)),
            out4(&i4(EF | CE)),
        ),
        decapsulated(
            "ipip_vlan_outer_ce_inner_ect0",
            frame(
                Some(42),
                ETHERTYPE_IPV4,
                &ipv4_outer(v4(LB4), v4(LOCAL4), PROTO_IPIP, CE, 64, 0, true, &i4(ECT_0)),
            ),
            frame(Some(42), ETHERTYPE_IPV4, &i4(CE)),
        ),
        // Already CE: stays CE.
        decapsulated("ipip_outer_ce_inner_ce", ipip(CE, &i4(CE)), out4(&i4(CE))),
        decapsulated(
            "ip6ip6_outer_ce_inner_ce",
            ip6ip6(CE, &i6(CE)),
            out6(&i6(CE)),
        ),
        // Outer CE over a sender that does not do ECN: dropped.
        dropped(
            "ipip_outer_ce_inner_not_ect",
            ipip(CE, &i4(EF | NOT_ECT)),
            Drop::TunnelCeNotEct,
        ),
        dropped(
            "6in4_outer_ce_inner_not_ect",
            sixin4(CE, &i6(NOT_ECT)),
            Drop::TunnelCeNotEct,
        ),
        dropped(
            "ip6ip6_outer_ce_inner_not_ect",
            ip6ip6(EF | CE, &i6(EF)),
            Drop::TunnelCeNotEct,
        ),
        dropped(
            "4in6_outer_ce_inner_not_ect",
            fourin6(CE, &i4(NOT_ECT)),
            Drop::TunnelCeNotEct,
        ),
    ];
    // Outer ECT(1) over inner ECT(0): ECT(1), the table's second congestion level.
    cases.extend([
        decapsulated(
            "ipip_outer_ect1_inner_ect0",
            ipip(ECT_1, &i4(EF | ECT_0)),
            out4(&i4(EF | ECT_1)),
        ),
        decapsulated(
            "ip6ip6_outer_ect1_inner_ect0",
            ip6ip6(ECT_1, &i6(EF | ECT_0)),
            out6(&i6(EF | ECT_1)),
        ),
        decapsulated(
            "4in6_outer_ect1_inner_ect0",
            fourin6(ECT_1, &i4(ECT_0)),
            out4(&i4(ECT_1)),
        ),
    ]);
    // Any other outer field: the inner packet as it came, whatever its own field.
    for outer in [NOT_ECT, ECT_0, ECT_1] {
        for inner in [NOT_ECT, ECT_0, ECT_1, CE] {
            if (outer, inner) == (ECT_1, ECT_0) {
                continue;
            }
            cases.push(decapsulated(
                "ipip_outer_not_ce_inner_unchanged",
                ipip(EF | outer, &i4(inner)),
                out4(&i4(inner)),
            ));
            cases.push(decapsulated(
                "ip6ip6_outer_not_ce_inner_unchanged",
                ip6ip6(outer, &i6(EF | inner)),
                out6(&i6(EF | inner)),
            ));
        }
    }
    // The incremental IPv4 checksum update, over every DSCP (carries included).
    for dscp in 0..64u8 {
        for ect in [ECT_0, ECT_1] {
            cases.push(decapsulated(
                "ipip_outer_ce_every_dscp",
                ipip(CE, &i4(dscp << 2 | ect)),
                out4(&i4(dscp << 2 | CE)),
            ));
        }
    }
    run_cases(cases);
}

/// The balancer's output, fed to the decap program on the backend, is exactly the client's
/// IP packet behind the balancer's Ethernet header, for every tunnel kind.
#[test]
fn balancer_then_decap_round_trip() {
    if !require_root() {
        return;
    }
    const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
        {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
        {"address": "fd00::1:1", "port": 80, "protocol": "tcp", "backends": [{"address": "fd00::11"}]},
        {"address": "198.18.1.1", "port": 8080, "protocol": "tcp", "backends": [{"address": "fd00::11"}]},
        {"address": "fd00::1:1", "port": 8080, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]}
    ]}"#;
    let c4 = || Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(v4("198.18.0.10"), v4("198.18.1.1"));
    let c6 = || Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6("fd00::10"), v6("fd00::1:1"));
    let clients: Vec<(&str, Vec<u8>)> = vec![
        ("ipip", c4().tcp(40000, 80).syn().build()),
        (
            "ipip_tos_options_payload",
            c4().tos(0xb8)
                .ipv4_options(&[1, 1, 1, 0])
                .tcp(40001, 80)
                .ack()
                .payload(b"GET / HTTP/1.1\r\n")
                .build(),
        ),
        (
            "ipip_vlan",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(42)
                .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
                .tcp(40002, 80)
                .syn()
                .build(),
        ),
        (
            "ip6ip6",
            c6().traffic_class(0x28)
                .flow_label(0xabcde)
                .tcp(40003, 80)
                .syn()
                .build(),
        ),
        (
            "ip6ip6_ext_headers",
            c6().ipv6_ext(ExtHeader::HopByHop(vec![]))
                .tcp(40004, 80)
                .ack()
                .payload(b"x")
                .build(),
        ),
        ("4in6", c4().tcp(40005, 8080).syn().build()),
        ("6in4", c6().tcp(40006, 8080).syn().build()),
    ];
    let mut lb = Lab::new(CFG);
    let mut backend = DecapLab::new(&local());
    for (what, input) in clients {
        let sent = lb.run(&input);
        assert_eq!(sent.verdict, XDP_TX, "{what}: balancer did not forward");
        let before = backend.counters();
        let got = backend.run(&sent.frame);
        let after = backend.counters();
        assert_eq!(got.verdict, XDP_PASS, "{what}");
        let inner = ip_packet(&input);
        let ethertype = if inner[0] >> 4 == 4 {
            ETHERTYPE_IPV4
        } else {
            ETHERTYPE_IPV6
        };
        let vlan = (input[12..14] == [0x81, 0x00])
            .then(|| u16::from_be_bytes([input[14], input[15]]) & 0x0fff);
        let want = eth_frame(NEXTHOP_MAC, LB_MAC, vlan, ethertype, inner);
        if let Some(d) = xlb_tests::packet::diff_frames(&want, &got.frame) {
            panic!("{what}: decapsulated frame is not the client's packet:\n{d}");
        }
        let slot = Event::Decapsulated.slot() as usize;
        assert_eq!(
            after[slot] - before[slot],
            1,
            "{what}: counters {}",
            counter_deltas(&before, &after)
        );
    }
}
