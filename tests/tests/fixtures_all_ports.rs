//! test_run fixtures: all-ports VIPs (port 0, written `*`) serve every port of their address
//! and protocol that no VIP of its own takes.

use lb_common::{
    counters::{Event, Pass},
    hash::flow_hash,
};
use xlb_tests::{
    fixtures::*,
    netns::require_root,
    packet::{ip_packet, Pkt},
};

/// Every TCP port of 198.18.1.1 and fd00:1::1 to .11 / ::11, but port 80 to .12.
const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 0, "protocol": "tcp", "health_check": {"kind": "none"}, "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.12"}]},
    {"address": "fd00:1::1", "port": 0, "protocol": "tcp", "health_check": {"kind": "icmp"}, "backends": [{"address": "fd00::11"}]}
]}"#;

const TCP: u8 = 6;

fn syn4(dst: &str, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(dst))
        .tcp(40000, dport)
        .syn()
        .build()
}

fn to(input: &[u8], backend: &str, hash: u32) -> Expect {
    expect_tunnel(input, backend, hash)
}

#[test]
fn all_ports_vips_take_the_ports_no_other_vip_takes() {
    if !require_root() {
        return;
    }
    let tx = Event::TxEncap.slot();
    let not_vip = Pass::NotVip.slot();
    let (high, http, https) = (
        syn4("198.18.1.1", 8080),
        syn4("198.18.1.1", 80),
        syn4("198.18.1.1", 443),
    );
    // The all-ports VIP is TCP's: UDP to its address is no VIP's.
    let udp = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .udp(40000, 8080)
        .payload(b"q")
        .build();
    let other_address = syn4("198.18.1.2", 8080);
    let syn6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00:1::1"))
        .tcp(40001, 8443)
        .syn()
        .build();
    let hash6 = flow_hash(&flow(
        "fd00::10".parse().unwrap(),
        40001,
        "fd00:1::1".parse().unwrap(),
        8443,
        TCP,
    ));
    // A router's frag-needed about the backend's reply on port 8080: the flow's backend
    // gets it, recorded or not.
    let reply = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .tcp(8080, 40000)
        .ack()
        .build();
    let frag_needed = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.1.1"))
        .icmp_frag_needed(1400, &ip_packet(&reply)[..40])
        .build();
    let remove_all_ports: fn(&mut Lab) = |lab| {
        lab.core
            .remove_vip(&"198.18.1.1:*/tcp".parse().unwrap())
            .expect("remove the all-ports VIP");
    };
    run_all(vec![
        Fixture {
            name: "any_port_goes_to_the_all_ports_vip_and_its_own_port_to_its_vip",
            config: CFG.into(),
            steps: vec![
                step(
                    high.clone(),
                    XDP_TX,
                    to(&high, "198.18.0.11", 0),
                    &[(tx, 1)],
                ),
                step(
                    https.clone(),
                    XDP_TX,
                    to(&https, "198.18.0.11", 0),
                    &[(tx, 1)],
                ),
                step(
                    http.clone(),
                    XDP_TX,
                    to(&http, "198.18.0.12", 0),
                    &[(tx, 1)],
                ),
                step(
                    syn6.clone(),
                    XDP_TX,
                    to(&syn6, "fd00::11", hash6),
                    &[(tx, 1)],
                ),
            ],
        },
        Fixture {
            name: "another_protocol_or_address_is_no_vip_s",
            config: CFG.into(),
            steps: vec![
                step(udp, XDP_PASS, Expect::Unchanged, &[(not_vip, 1)]),
                step(other_address, XDP_PASS, Expect::Unchanged, &[(not_vip, 1)]),
            ],
        },
        Fixture {
            name: "icmp_errors_about_an_all_ports_flow_go_to_its_backend",
            config: CFG.into(),
            steps: vec![step(
                frag_needed.clone(),
                XDP_TX,
                to(&frag_needed, "198.18.0.11", 0),
                &[(Event::IcmpForwarded.slot(), 1)],
            )],
        },
        Fixture {
            name: "once_removed_its_ports_are_no_vip_s_and_port_80_stays",
            config: CFG.into(),
            steps: vec![
                Step {
                    before: Some(remove_all_ports),
                    ..step(
                        syn4("198.18.1.1", 8081),
                        XDP_PASS,
                        Expect::Unchanged,
                        &[(not_vip, 1)],
                    )
                },
                step(
                    http.clone(),
                    XDP_TX,
                    to(&http, "198.18.0.12", 0),
                    &[(tx, 1)],
                ),
            ],
        },
    ]);
}
