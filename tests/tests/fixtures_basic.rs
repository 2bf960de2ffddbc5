//! test_run fixtures: forwarding basics (IPv4, UDP, VLAN, options, padding, pass-through).

use lb_common::counters::{Drop, Event, Pass};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const ONE_BACKEND: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 53, "protocol": "udp", "backends": [{"address": "198.18.0.12"}]},
    {"address": "198.18.1.2", "port": 80, "protocol": "tcp", "backends": []}
]}"#;

fn client() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
}

fn to_backend(input: &[u8], backend: &str) -> Expect {
    expect_tunnel(input, backend, 0)
}

#[test]
fn basic_fixtures() {
    if !require_root() {
        return;
    }
    let syn = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(31337, 80)
        .syn()
        .build();
    let udp = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .udp(5353, 53)
        .payload(b"query")
        .build();
    let tagged = client()
        .vlan(100)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(31338, 80)
        .syn()
        .build();
    let options = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .ipv4_options(&[1, 1, 1, 0])
        .tcp(31339, 80)
        .syn()
        .build();
    let tos = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tos(0xb8)
        .tcp(31340, 80)
        .ack()
        .payload(b"x")
        .build();
    // 1 byte of UDP payload: the frame is padded to Ethernet's 60-byte minimum.
    let unpadded = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .udp(5354, 53)
        .payload(b"q")
        .build();
    let mut padded = unpadded.clone();
    padded.resize(60, 0);
    // Bytes behind a long packet: until fixtures_mutated_frames found it, the trim only
    // looked for them behind packets shorter than the parser's offset bound (1024 bytes),
    // and these went into the tunnel, the frame then longer than the link's MTU.
    let long = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .udp(5355, 53)
        .payload(&[9; 1200])
        .build();
    let mut long_trailer = long.clone();
    long_trailer.extend([0xee; 22]);
    let other_port = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(31337, 8080)
        .syn()
        .build();
    let other_addr = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.0.2"))
        .tcp(31337, 22)
        .syn()
        .build();
    let arp = client().ethertype(0x0806).payload(&[0; 28]).build();
    let empty_vip = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.2"))
        .tcp(31337, 80)
        .syn()
        .build();
    let icmp_echo = client()
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .icmp_echo(1, 1)
        .build();

    let nf = Event::NewFlow.slot();
    let tx = Event::TxEncap.slot();
    run_all(vec![
        Fixture {
            name: "v4_tcp_syn_new_flow_ipip",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                syn.clone(),
                XDP_TX,
                to_backend(&syn, "198.18.0.11"),
                &[(nf, 1), (tx, 1)],
            )],
        },
        Fixture {
            name: "v4_udp_ipip",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                udp.clone(),
                XDP_TX,
                to_backend(&udp, "198.18.0.12"),
                &[(nf, 1), (tx, 1)],
            )],
        },
        Fixture {
            name: "vlan_tag_kept",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                tagged.clone(),
                XDP_TX,
                to_backend(&tagged, "198.18.0.11"),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "v4_options_inner_verbatim",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                options.clone(),
                XDP_TX,
                to_backend(&options, "198.18.0.11"),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "tos_copied_to_outer",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                tos.clone(),
                XDP_TX,
                to_backend(&tos, "198.18.0.11"),
                &[(nf, 1), (tx, 1)],
            )],
        },
        Fixture {
            name: "ethernet_padding_trimmed",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                padded.clone(),
                XDP_TX,
                to_backend(&unpadded, "198.18.0.12"),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "bytes_behind_a_long_packet_trimmed",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                long_trailer,
                XDP_TX,
                to_backend(&long, "198.18.0.12"),
                &[(tx, 1)],
            )],
        },
        Fixture {
            name: "unknown_port_passes_untouched",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                other_port,
                XDP_PASS,
                Expect::Unchanged,
                &[(Pass::NotVip.slot(), 1), (nf, 0)],
            )],
        },
        Fixture {
            name: "unknown_address_passes_untouched",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                other_addr,
                XDP_PASS,
                Expect::Unchanged,
                &[(Pass::NotVip.slot(), 1)],
            )],
        },
        Fixture {
            name: "non_ip_passes_untouched",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                arp,
                XDP_PASS,
                Expect::Unchanged,
                &[(Pass::NotIp.slot(), 1)],
            )],
        },
        // Answered by the balancer (fixtures_icmp_echo.rs), unless the config says no.
        Fixture {
            name: "icmp_echo_to_vip_passes_with_icmp_echo_off",
            config: ONE_BACKEND.replacen('{', r#"{"icmp_echo": false, "#, 1),
            steps: vec![step(
                icmp_echo,
                XDP_PASS,
                Expect::Unchanged,
                &[(Pass::NotVip.slot(), 1)],
            )],
        },
        Fixture {
            name: "vip_without_backends_drops",
            config: ONE_BACKEND.into(),
            steps: vec![step(
                empty_vip,
                XDP_DROP,
                Expect::Ignored,
                &[(Drop::NoBackend.slot(), 1)],
            )],
        },
    ]);
}
