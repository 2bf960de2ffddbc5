//! test_run fixtures: malformed frames and the policy drops. Every parse error is dropped
//! and counted under its own reason, never forwarded or passed as valid; each fixture hits
//! exactly one reason (the harness fails on any other drop counter moving).
//!
//! Truncations keep the IP length fields consistent with the cut where the intended check
//! comes after the length check (a TCP header cut inside a packet whose total length still
//! claims the full header is `ipv4_bad_length`, not `l4_truncated`).
//!
//! Drop reasons not produced here, and why:
//! - `eth_truncated`: the kernel never runs an XDP program under `BPF_PROG_TEST_RUN` on
//!   fewer than 14 bytes (see `shortest_frames`, which fails the day it does).
//! - `no_route`, `no_neighbour`: need the kernel FIB, see `fixtures_fib.rs`.
//! - `no_backend`: `fixtures_basic.rs` (`vip_without_backends_drops`).
//! - `adjust_failed`: `BPF_PROG_TEST_RUN` gives every frame 256 bytes of headroom (less at
//!   most 32 bytes of metadata) and the program only grows the front by 20/40 (+8) bytes
//!   and shrinks the tail down to the IP packet, which stays over 14 bytes; the helpers
//!   cannot refuse that, and the header writes after them cannot fall outside the frame.
//! - `internal`: only a stage returning an unknown packed value produces it (a bug).

use std::net::IpAddr;

use lb_common::{
    counters::{Drop, Event, Pass, COUNTER_SLOTS},
    hash::flow_hash,
    maps::BACKEND_F_ACTIVE,
};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{self, ip_packet, truncated, ExtHeader, Pkt, PROTO_TCP},
};

const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 53, "protocol": "udp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "fd00::1:1", "port": 80, "protocol": "tcp", "backends": [{"address": "fd00::11"}]}
]}"#;

const NO_ICMP_REPLIES: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "mtu": 1500, "icmp_too_big": false, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]}
]}"#;

const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00::1:1";
const CLIENT4: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::10";
/// Ethernet header length (untagged) = offset of the IP header.
const L3: usize = 14;

fn c4() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(v4(CLIENT4), v4(VIP4))
}

fn c6() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6(CLIENT6), v6(VIP6))
}

fn syn4() -> Vec<u8> {
    c4().tcp(31337, 80).syn().build()
}

fn syn6() -> Vec<u8> {
    c6().tcp(31337, 80).syn().build()
}

/// Sets the IPv4 total length of the packet at `l3` and recomputes the header checksum.
fn set_ipv4_total_len(frame: &mut [u8], l3: usize, len: usize) {
    frame[l3 + 2..l3 + 4].copy_from_slice(&(len as u16).to_be_bytes());
    fix_ipv4_checksum(frame, l3);
}

fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let ihl = ihl.clamp(20, frame.len() - l3);
    frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[l3..l3 + ihl]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn set_ipv6_payload_len(frame: &mut [u8], l3: usize, len: usize) {
    frame[l3 + 4..l3 + 6].copy_from_slice(&(len as u16).to_be_bytes());
}

/// The first `len` bytes of an untagged IPv4 frame, total length fixed to match the cut.
fn cut4(frame: &[u8], len: usize) -> Vec<u8> {
    let mut f = truncated(frame, len);
    set_ipv4_total_len(&mut f, L3, len - L3);
    f
}

/// The first `len` bytes of an untagged IPv6 frame, payload length fixed to match the cut.
fn cut6(frame: &[u8], len: usize) -> Vec<u8> {
    let mut f = truncated(frame, len);
    set_ipv6_payload_len(&mut f, L3, len - L3 - 40);
    f
}

fn drop_step(input: Vec<u8>, reason: Drop) -> Step {
    step(input, XDP_DROP, Expect::Ignored, &[(reason.slot(), 1)])
}

fn drops(inputs: impl IntoIterator<Item = Vec<u8>>, reason: Drop) -> Vec<Step> {
    inputs.into_iter().map(|f| drop_step(f, reason)).collect()
}

fn fixture(name: &'static str, steps: Vec<Step>) -> Fixture {
    Fixture {
        name,
        config: CFG.into(),
        steps,
    }
}

fn lb4() -> IpAddr {
    "198.18.0.2".parse().unwrap()
}

fn lb6() -> IpAddr {
    "fd00::2".parse().unwrap()
}

#[test]
fn header_parse_errors() {
    if !require_root() {
        return;
    }
    let syn4 = syn4();
    let syn6 = syn6();
    let tagged = Pkt::eth(CLIENT_MAC, LB_MAC)
        .vlan(7)
        .ipv4(v4(CLIENT4), v4(VIP4))
        .tcp(31337, 80)
        .syn()
        .build();

    // IPv4 header with a bad version / IHL / total length.
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = syn4.clone();
        f(&mut frame);
        frame
    };
    let ihl4 = with(&|f| {
        f[L3] = 0x44;
        fix_ipv4_checksum(f, L3)
    });
    let ihl0 = with(&|f| f[L3] = 0x40);
    // IHL 15 = 60 bytes, past the end of a 54-byte frame.
    let ihl15 = with(&|f| f[L3] = 0x4f);
    let version5 = with(&|f| {
        f[L3] = 0x55;
        fix_ipv4_checksum(f, L3)
    });
    // An IPv6 packet behind ethertype 0x0800.
    let mut v6_as_v4 = syn6.clone();
    v6_as_v4[12..14].copy_from_slice(&packet::ETHERTYPE_IPV4.to_be_bytes());
    let len19 = with(&|f| set_ipv4_total_len(f, L3, 19));
    let len0 = with(&|f| set_ipv4_total_len(f, L3, 0));
    let len_past_frame = with(&|f| {
        let past = f.len() - L3 + 1;
        set_ipv4_total_len(f, L3, past)
    });
    let len_max = with(&|f| set_ipv4_total_len(f, L3, 0xffff));
    // Options make IHL 6; a total length of 22 covers the options' header but is < IHL*4.
    let mut opts_short = c4().ipv4_options(&[1, 1, 1, 0]).tcp(1, 80).syn().build();
    set_ipv4_total_len(&mut opts_short, L3, 22);

    // IPv6: version, payload length past the frame.
    let mut v4_as_v6 = c4().tcp(31337, 80).syn().payload(&[0; 40]).build();
    v4_as_v6[12..14].copy_from_slice(&packet::ETHERTYPE_IPV6.to_be_bytes());
    let mut v6_version4 = syn6.clone();
    v6_version4[L3] = (v6_version4[L3] & 0x0f) | 0x40;
    let mut v6_long = syn6.clone();
    set_ipv6_payload_len(&mut v6_long, L3, syn6.len() - L3 - 40 + 1);

    // IPv6 extension headers.
    let one_ext = c6()
        .ipv6_ext(ExtHeader::HopByHop(vec![]))
        .tcp(31337, 80)
        .syn()
        .build();
    // Cut at 0..8 bytes into the 8-byte hop-by-hop header, payload length matching.
    let ext_cuts: Vec<Vec<u8>> = (0..8).map(|k| cut6(&one_ext, L3 + 40 + k)).collect();
    // Length byte claiming 48 bytes while 8 + 20 follow.
    let mut ext_long = one_ext.clone();
    ext_long[L3 + 40 + 1] = 5;
    let seven = (0..7)
        .fold(c6(), |p, _| p.ipv6_ext(ExtHeader::DestOpts(vec![])))
        .tcp(31337, 80)
        .syn()
        .build();
    let six = (0..6)
        .fold(c6(), |p, _| p.ipv6_ext(ExtHeader::DestOpts(vec![])))
        .tcp(31337, 80)
        .syn()
        .build();
    let six_hash = flow_hash(&flow(
        CLIENT6.parse().unwrap(),
        31337,
        VIP6.parse().unwrap(),
        80,
        PROTO_TCP,
    ));

    // Transport headers, total / payload length matching the cut.
    let udp4 = c4().udp(5353, 53).payload(b"query").build();
    let mut doff4 = syn4.clone();
    doff4[L3 + 20 + 12] = 0x40;
    let mut doff0 = syn4.clone();
    doff0[L3 + 20 + 12] = 0x00;
    // Data offset 15 (60 bytes) in a packet with a 20-byte TCP header and nothing after it.
    let mut doff15 = syn4.clone();
    doff15[L3 + 20 + 12] = 0xf0;
    let echo4 = c4().icmp_echo(1, 1).build();
    let echo6 = c6().icmpv6_echo(1, 1).build();

    let tx = Event::TxEncap.slot();
    run_all(vec![
        fixture(
            "vlan_tag_cut",
            drops((14..18).map(|n| truncated(&tagged, n)), Drop::VlanTruncated),
        ),
        fixture(
            "ipv4_header_cut",
            drops(
                (L3..L3 + 20).map(|n| truncated(&syn4, n)),
                Drop::Ipv4Truncated,
            ),
        ),
        fixture(
            "ipv4_header_cut_behind_vlan",
            drops(
                (18..18 + 20).map(|n| truncated(&tagged, n)),
                Drop::Ipv4Truncated,
            ),
        ),
        fixture("ipv4_bad_ihl", drops([ihl4, ihl0, ihl15], Drop::Ipv4BadIhl)),
        fixture(
            "ipv4_version_not_4",
            drops([version5, v6_as_v4], Drop::Ipv4BadIhl),
        ),
        fixture(
            "ipv4_bad_total_length",
            drops(
                [len19, len0, len_past_frame, len_max, opts_short],
                Drop::Ipv4BadLength,
            ),
        ),
        fixture(
            "ipv6_header_cut",
            drops(
                (L3..L3 + 40).map(|n| truncated(&syn6, n)),
                Drop::Ipv6Truncated,
            ),
        ),
        fixture(
            "ipv6_version_not_6",
            drops([v4_as_v6, v6_version4], Drop::Ipv6Truncated),
        ),
        fixture(
            "ipv6_payload_length_past_frame",
            drops([v6_long], Drop::Ipv6Truncated),
        ),
        fixture(
            "ipv6_ext_header_cut",
            drops(
                ext_cuts.into_iter().chain([ext_long]),
                Drop::Ipv6ExtTruncated,
            ),
        ),
        fixture(
            "ipv6_seven_ext_headers",
            drops([seven], Drop::Ipv6ExtChainTooLong),
        ),
        Fixture {
            name: "ipv6_six_ext_headers_still_forwarded",
            config: CFG.into(),
            steps: vec![step(
                six.clone(),
                XDP_TX,
                Expect::Frame(encapsulated(
                    &six,
                    lb6(),
                    "fd00::11".parse().unwrap(),
                    six_hash,
                )),
                &[(tx, 1)],
            )],
        },
        fixture(
            "tcp_v4_header_cut",
            drops(
                (L3 + 20..L3 + 40).map(|n| cut4(&syn4, n)),
                Drop::L4Truncated,
            ),
        ),
        fixture(
            "tcp_v6_header_cut",
            drops(
                (L3 + 40..L3 + 60).map(|n| cut6(&syn6, n)),
                Drop::L4Truncated,
            ),
        ),
        fixture(
            "tcp_data_offset_below_5",
            drops([doff4, doff0], Drop::L4Truncated),
        ),
        fixture(
            "tcp_data_offset_past_packet",
            drops([doff15], Drop::L4Truncated),
        ),
        fixture(
            "udp_header_cut",
            drops(
                (L3 + 20..L3 + 28).map(|n| cut4(&udp4, n)),
                Drop::L4Truncated,
            ),
        ),
        fixture(
            "icmp_header_cut",
            drops(
                (L3 + 20..L3 + 28).map(|n| cut4(&echo4, n)),
                Drop::IcmpTruncated,
            ),
        ),
        fixture(
            "icmpv6_header_cut",
            drops(
                (L3 + 40..L3 + 48).map(|n| cut6(&echo6, n)),
                Drop::IcmpTruncated,
            ),
        ),
    ]);
}

/// `eth_truncated` cannot be produced under `BPF_PROG_TEST_RUN`: the kernel refuses
/// `data_in` shorter than 14 bytes, and (6.18) also a shorter packet placed behind XDP
/// metadata. This pins that down, so the day a kernel lets one through, this test fails and
/// says to turn it into an `eth_truncated` fixture. The shortest frames it does accept are
/// parsed as far as they go.
#[test]
fn shortest_frames() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(CFG);
    let syn = syn4();
    for len in 0..L3 {
        let meta = (L3 - len).div_ceil(4) * 4;
        let res = lab.run_ctx(&truncated(&syn, len), meta, 0);
        assert!(
            res.is_err(),
            "the kernel ran the balancer on a {len}-byte packet ({:?}): assert Drop::EthTruncated here instead",
            res.map(|o| o.verdict)
        );
    }
    // The same context path with a whole frame behaves as without it.
    let out = lab.run_ctx(&syn, 8, 0).expect("test_run with metadata");
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(
        out.frame,
        encapsulated(&syn, lb4(), "198.18.0.11".parse().unwrap(), 0)
    );

    let arp14 = Pkt::eth(CLIENT_MAC, LB_MAC).ethertype(0x0806).build();
    let ip14 = truncated(&syn, L3);
    let ip6_14 = truncated(&syn6(), L3);
    run_all(vec![
        fixture(
            "fourteen_byte_non_ip_passes",
            vec![step(
                arp14,
                XDP_PASS,
                Expect::Unchanged,
                &[(Pass::NotIp.slot(), 1)],
            )],
        ),
        fixture(
            "fourteen_byte_ipv4",
            vec![drop_step(ip14, Drop::Ipv4Truncated)],
        ),
        fixture(
            "fourteen_byte_ipv6",
            vec![drop_step(ip6_14, Drop::Ipv6Truncated)],
        ),
    ]);
}

/// The one drop reason that moved (by exactly one), if exactly one did and nothing was
/// forwarded or passed.
fn only_drop(before: &[u64], after: &[u64]) -> Option<Drop> {
    let moved: Vec<u32> = (0..COUNTER_SLOTS)
        .filter(|&s| after[s as usize] != before[s as usize])
        .collect();
    let drops: Vec<Drop> = moved.iter().filter_map(|&s| Drop::from_slot(s)).collect();
    let forwarded = moved.iter().any(|&s| {
        Pass::from_slot(s).is_some()
            || s == Event::TxEncap.slot()
            || s == Event::RedirectEncap.slot()
            || s == Event::IcmpTooBigSent.slot()
    });
    match drops[..] {
        [d] if !forwarded && after[d.slot() as usize] - before[d.slot() as usize] == 1 => Some(d),
        _ => None,
    }
}

/// Every cut of valid frames (length fields left as sent) is dropped with one drop reason;
/// only the whole frame is forwarded.
#[test]
fn every_truncation_is_dropped() {
    if !require_root() {
        return;
    }
    let quoted = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4(VIP4), v4(CLIENT4))
        .tcp(80, 31337)
        .ack()
        .build_ip();
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("tcp4 syn", syn4()),
        ("udp4", c4().udp(5353, 53).payload(b"query").build()),
        (
            "tcp4 behind vlan",
            Pkt::eth(CLIENT_MAC, LB_MAC)
                .vlan(7)
                .ipv4(v4(CLIENT4), v4(VIP4))
                .tcp(2, 80)
                .syn()
                .build(),
        ),
        (
            "tcp4 with options",
            c4().ipv4_options(&[1, 1, 1, 0])
                .tcp(3, 80)
                .syn()
                .payload(b"data")
                .build(),
        ),
        ("tcp6 syn", syn6()),
        (
            "tcp6 behind ext headers",
            c6().ipv6_ext(ExtHeader::HopByHop(vec![]))
                .ipv6_ext(ExtHeader::DestOpts(vec![]))
                .tcp(4, 80)
                .syn()
                .build(),
        ),
        (
            "icmp4 error to vip",
            c4().icmp(3, 1, [0; 4])
                .payload(&truncated(&quoted, 28))
                .build(),
        ),
    ];
    let mut lab = Lab::new(CFG);
    let mut failures = Vec::new();
    for (what, frame) in &frames {
        // Shorter than 14 bytes: see `shortest_frames`.
        for len in L3..=frame.len() {
            let cut = truncated(frame, len);
            let before = lab.counters();
            let out = lab.run(&cut);
            let after = lab.counters();
            if len == frame.len() {
                if out.verdict != XDP_TX {
                    failures.push(format!(
                        "{what}: whole frame not forwarded ({})",
                        counter_deltas(&before, &after)
                    ));
                }
                continue;
            }
            if out.verdict != XDP_DROP || only_drop(&before, &after).is_none() {
                failures.push(format!(
                    "{what} cut to {len} of {} bytes: verdict {}, changes {}",
                    frame.len(),
                    out.verdict,
                    counter_deltas(&before, &after)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cuts misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fragments() {
    if !require_root() {
        return;
    }
    let first4 = |dst: &str| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4(CLIENT4), v4(dst))
            .df(false)
            .id(7)
            .fragment(0, true)
            .tcp(31337, 80)
            .syn()
            .build()
    };
    let later4 = |dst: &str| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4(CLIENT4), v4(dst))
            .df(false)
            .id(7)
            .fragment(185, false)
            .protocol(PROTO_TCP)
            .payload(&[0xab; 16])
            .build()
    };
    let first6 = |dst: &str| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(v6(CLIENT6), v6(dst))
            .id(9)
            .fragment(0, true)
            .tcp(31337, 80)
            .syn()
            .build()
    };
    let later6 = |dst: &str| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv6(v6(CLIENT6), v6(dst))
            .id(9)
            .fragment(100, false)
            .protocol(PROTO_TCP)
            .payload(&[0xab; 16])
            .build()
    };
    // A UDP fragment to the VIP address on a port no VIP has: still the VIP's address.
    let other_port = c4()
        .df(false)
        .id(8)
        .fragment(0, true)
        .udp(1, 9999)
        .payload(&[0; 32])
        .build();
    // IPv6 atomic fragment (offset 0, M clear; RFC 6946): a whole packet, forwarded.
    let atomic = c6().id(10).fragment(0, false).tcp(31337, 80).syn().build();
    let atomic_hash = flow_hash(&flow(
        CLIENT6.parse().unwrap(),
        31337,
        VIP6.parse().unwrap(),
        80,
        PROTO_TCP,
    ));
    let atomic_out = encapsulated(&atomic, lb6(), "fd00::11".parse().unwrap(), atomic_hash);

    let not_vip = Pass::NotVip.slot();
    let frag = Drop::Fragment;
    let pass = |f: Vec<u8>| step(f, XDP_PASS, Expect::Unchanged, &[(not_vip, 1)]);
    run_all(vec![
        fixture(
            "v4_first_fragment_to_vip",
            vec![drop_step(first4(VIP4), frag)],
        ),
        fixture(
            "v4_later_fragment_to_vip",
            vec![drop_step(later4(VIP4), frag)],
        ),
        fixture(
            "v4_fragment_to_vip_address_other_port",
            vec![drop_step(other_port, frag)],
        ),
        fixture(
            "v4_fragments_to_other_address_pass",
            vec![pass(first4("198.18.0.2")), pass(later4("198.18.0.2"))],
        ),
        fixture(
            "v6_first_fragment_to_vip",
            vec![drop_step(first6(VIP6), frag)],
        ),
        fixture(
            "v6_later_fragment_to_vip",
            vec![drop_step(later6(VIP6), frag)],
        ),
        fixture(
            "v6_fragments_to_other_address_pass",
            vec![pass(first6("fd00::2")), pass(later6("fd00::2"))],
        ),
        fixture(
            "v6_atomic_fragment_forwarded",
            vec![step(
                atomic,
                XDP_TX,
                Expect::Frame(atomic_out),
                &[(Event::TxEncap.slot(), 1)],
            )],
        ),
    ]);
}

#[test]
fn icmp_errors_that_are_not_for_a_vip_flow() {
    if !require_root() {
        return;
    }
    // What the VIP would have sent to the client.
    let from_vip = |sport: u16| {
        Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(v4(VIP4), v4(CLIENT4))
            .tcp(sport, 31337)
            .ack()
            .build_ip()
    };
    let unreach = |quoted: &[u8]| c4().icmp(3, 1, [0; 4]).payload(quoted).build();
    let not_a_vip_port = unreach(&truncated(&from_vip(9999), 28));
    let from_elsewhere = unreach(&truncated(
        &Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(v4("198.18.1.9"), v4(CLIENT4))
            .tcp(80, 31337)
            .build_ip(),
        28,
    ));
    let quoting_icmp = unreach(
        &Pkt::eth(LB_MAC, CLIENT_MAC)
            .ipv4(v4(VIP4), v4(CLIENT4))
            .icmp(0, 0, [0, 1, 0, 1])
            .build_ip(),
    );
    let from_vip6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6(VIP6), v6(CLIENT6))
        .tcp(9999, 31337)
        .ack()
        .build_ip();
    let unreach6 = c6().icmpv6(1, 3, [0; 4]).payload(&from_vip6).build();

    // The quoted packet cut before its ports: 0..24 bytes of IPv4 header + ports.
    let quote = from_vip(80);
    let cut_quotes: Vec<Vec<u8>> = (0..24).map(|n| unreach(&truncated(&quote, n))).collect();
    let mut bad_ihl = truncated(&quote, 28);
    bad_ihl[0] = 0x44;
    let quote6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6(VIP6), v6(CLIENT6))
        .tcp(80, 31337)
        .ack()
        .build_ip();
    let cut_quotes6: Vec<Vec<u8>> = (0..44)
        .map(|n| {
            c6().icmpv6(1, 3, [0; 4])
                .payload(&truncated(&quote6, n))
                .build()
        })
        .collect();

    // The quote, or the error's own header, behind the error's IP length: Ethernet padding,
    // whatever it holds (fixtures_mutated_frames' drop check found such errors routed, or
    // dropped for a fault of the padding's bytes). The quote is whole in the frame.
    let whole4 = unreach(&truncated(&quote, 28));
    let padded4: Vec<Vec<u8>> = [4, 8, 8 + 20, 8 + 22]
        .into_iter()
        .map(|icmp_len| {
            let mut f = whole4.clone();
            set_ipv4_total_len(&mut f, L3, 20 + icmp_len);
            f
        })
        .collect();
    let whole6 = c6()
        .icmpv6(1, 3, [0; 4])
        .payload(&truncated(&quote6, 44))
        .build();
    let padded6: Vec<Vec<u8>> = [4, 8, 8 + 40, 8 + 42]
        .into_iter()
        .map(|icmp_len| {
            let mut f = whole6.clone();
            set_ipv6_payload_len(&mut f, L3, icmp_len);
            f
        })
        .collect();

    // ICMP under the other family's protocol number: no stack reads it as ICMP, so it is
    // the host's like any protocol we do not balance.
    let mut proto1_in_v6 = whole6.clone();
    proto1_in_v6[L3 + 6] = 1;
    let mut proto58_in_v4 = whole4.clone();
    proto58_in_v4[L3 + 9] = 58;
    fix_ipv4_checksum(&mut proto58_in_v4, L3);
    let not_vip = Pass::NotVip.slot();
    let pass = |f: Vec<u8>| step(f, XDP_PASS, Expect::Unchanged, &[(not_vip, 1)]);

    run_all(vec![
        fixture(
            "icmp_under_the_other_familys_number",
            vec![pass(proto1_in_v6), pass(proto58_in_v4)],
        ),
        fixture(
            "icmp_error_quote_in_ethernet_padding",
            drops(padded4.into_iter().chain(padded6), Drop::IcmpTruncated),
        ),
        fixture(
            "icmp_error_quoting_vip_on_other_port",
            vec![drop_step(not_a_vip_port, Drop::IcmpNotForVip)],
        ),
        fixture(
            "icmp_error_quoting_other_source",
            vec![drop_step(from_elsewhere, Drop::IcmpNotForVip)],
        ),
        fixture(
            "icmp_error_quoting_icmp",
            vec![drop_step(quoting_icmp, Drop::IcmpNotForVip)],
        ),
        fixture(
            "icmpv6_error_quoting_vip_on_other_port",
            vec![drop_step(unreach6, Drop::IcmpNotForVip)],
        ),
        fixture(
            "icmp_error_quote_cut",
            drops(
                cut_quotes.into_iter().chain([unreach(&bad_ihl)]),
                Drop::IcmpTruncated,
            ),
        ),
        fixture(
            "icmpv6_error_quote_cut",
            drops(cut_quotes6, Drop::IcmpTruncated),
        ),
    ]);
}

#[test]
fn policy_drops() {
    if !require_root() {
        return;
    }
    let big = |df: bool, ip_len: usize| {
        c4().df(df)
            .tcp(31337, 80)
            .ack()
            .payload(&vec![0x5a; ip_len - 40])
            .build()
    };
    let fits = big(true, 1480);
    let fits_out = encapsulated(&fits, lb4(), "198.18.0.11".parse().unwrap(), 0);
    let syn = syn4();
    let ack = c4().tcp(31337, 80).ack().payload(b"more").build();
    let syn_out = encapsulated(&syn, lb4(), "198.18.0.11".parse().unwrap(), 0);
    let syn6 = syn6();
    let tx = Event::TxEncap.slot();

    run_all(vec![
        Fixture {
            name: "too_big_without_df",
            config: CFG.into(),
            steps: vec![
                drop_step(big(false, 1500), Drop::TooBig),
                // 1480 + 20 outer = 1500: fits exactly.
                step(
                    fits.clone(),
                    XDP_TX,
                    Expect::Frame(fits_out.clone()),
                    &[(tx, 1)],
                ),
            ],
        },
        Fixture {
            name: "too_big_with_icmp_replies_off",
            config: NO_ICMP_REPLIES.into(),
            steps: vec![
                drop_step(big(true, 1500), Drop::TooBig),
                drop_step(big(true, 1481), Drop::TooBig),
                step(fits, XDP_TX, Expect::Frame(fits_out), &[(tx, 1)]),
            ],
        },
        Fixture {
            name: "bad_backend_new_flow",
            config: CFG.into(),
            steps: vec![Step {
                // The table still points at a backend slot that is no longer active.
                before: Some(|lab: &mut Lab| {
                    let idx = lab.backend_index("198.18.1.1:80/tcp", "198.18.0.11");
                    lab.poke_backend(idx, |b| b.flags &= !BACKEND_F_ACTIVE);
                }),
                ..drop_step(syn.clone(), Drop::BadBackend)
            }],
        },
        Fixture {
            name: "bad_backend_pinned_flow_repicks_into_it",
            config: CFG.into(),
            steps: vec![
                step(
                    syn.clone(),
                    XDP_TX,
                    Expect::Frame(syn_out),
                    &[(Event::NewFlow.slot(), 1)],
                ),
                Step {
                    before: Some(|lab: &mut Lab| {
                        let idx = lab.backend_index("198.18.1.1:80/tcp", "198.18.0.11");
                        lab.poke_backend(idx, |b| b.flags &= !BACKEND_F_ACTIVE);
                    }),
                    ..step(
                        ack,
                        XDP_DROP,
                        Expect::Ignored,
                        &[(Drop::BadBackend.slot(), 1), (Event::ConnRepick.slot(), 1)],
                    )
                },
            ],
        },
        Fixture {
            name: "no_source_v4",
            config: CFG.into(),
            steps: vec![Step {
                before: Some(|lab: &mut Lab| lab.poke_config(|c| c.src_v4 = 0)),
                ..drop_step(syn, Drop::NoSource)
            }],
        },
        Fixture {
            name: "no_source_v6",
            config: CFG.into(),
            steps: vec![Step {
                before: Some(|lab: &mut Lab| lab.poke_config(|c| c.src_v6 = [0; 4])),
                ..drop_step(syn6, Drop::NoSource)
            }],
        },
    ]);
}

/// Sanity for the helpers above: the cut frames are what they claim.
#[test]
fn cut_helpers_keep_lengths_consistent() {
    let f = cut4(&syn4(), L3 + 25);
    assert_eq!(ip_packet(&f).len(), 25);
    assert_eq!(u16::from_be_bytes([f[L3 + 2], f[L3 + 3]]), 25);
    let hdr = &f[L3..L3 + 20];
    let sum: u32 = hdr
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "header checksum");
    let g = cut6(&syn6(), L3 + 45);
    assert_eq!(u16::from_be_bytes([g[L3 + 4], g[L3 + 5]]), 5);
}
