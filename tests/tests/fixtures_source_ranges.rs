//! test_run fixtures: VIPs that admit new flows only from some client prefixes
//! (`allowed_sources`). The XDP program runs before the host's firewall, so this is where a
//! VIP is restricted: others' new flows are dropped and counted (`source_denied`); recorded
//! flows keep going (a stateful firewall's rule change applies to new connections).

use lb_common::{
    counters::{Drop, Event},
    hash::flow_hash,
};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

/// Port 80 admits 198.18.0.0/24 and 198.19.7.1; port 81 every client; the IPv6 VIP
/// fd00:10::/64.
const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "health_check": {"kind": "none"},
     "allowed_sources": ["198.18.0.0/24", "198.19.7.1"], "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 81, "protocol": "tcp", "health_check": {"kind": "none"},
     "backends": [{"address": "198.18.0.11"}]},
    {"address": "fd00:1::1", "port": 80, "protocol": "tcp", "health_check": {"kind": "none"},
     "allowed_sources": ["fd00:10::/64"], "backends": [{"address": "fd00::11"}]}
]}"#;

fn syn4(src: &str, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(src), v4("198.18.1.1"))
        .tcp(40000, dport)
        .syn()
        .build()
}

fn syn6(src: &str) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6(src), v6("fd00:1::1"))
        .tcp(40000, 80)
        .syn()
        .build()
}

fn to4(input: &[u8]) -> Expect {
    expect_tunnel(input, "198.18.0.11", 0)
}

fn to6(input: &[u8], src: &str) -> Expect {
    let hash = flow_hash(&flow(
        src.parse().unwrap(),
        40000,
        "fd00:1::1".parse().unwrap(),
        80,
        6,
    ));
    expect_tunnel(input, "fd00::11", hash)
}

#[test]
fn only_the_listed_clients_open_flows_to_a_restricted_vip() {
    if !require_root() {
        return;
    }
    let tx = Event::TxEncap.slot();
    let denied = Drop::SourceDenied.slot();
    let (inside, edge, host, outside) = (
        syn4("198.18.0.10", 80),
        syn4("198.18.0.255", 80),
        syn4("198.19.7.1", 80),
        syn4("198.18.1.10", 80),
    );
    let neighbour = syn4("198.19.7.2", 80);
    let open_port = syn4("198.18.1.10", 81);
    let (in6, out6) = (syn6("fd00:10::1234"), syn6("fd00:11::1"));
    let close_the_vip: fn(&mut Lab) = |lab| {
        lab.core
            .set_sources(
                &"198.18.1.1:80/tcp".parse().unwrap(),
                vec!["198.19.7.1".parse().unwrap()],
            )
            .expect("narrow the list");
    };
    let open_the_vip: fn(&mut Lab) = |lab| {
        lab.core
            .set_sources(&"198.18.1.1:80/tcp".parse().unwrap(), Vec::new())
            .expect("drop the list");
    };
    run_all(vec![
        Fixture {
            name: "listed_prefixes_and_addresses_are_admitted_others_dropped",
            config: CFG.into(),
            steps: vec![
                step(inside.clone(), XDP_TX, to4(&inside), &[(tx, 1)]),
                step(edge.clone(), XDP_TX, to4(&edge), &[(tx, 1)]),
                step(host.clone(), XDP_TX, to4(&host), &[(tx, 1)]),
                step(outside.clone(), XDP_DROP, Expect::Ignored, &[(denied, 1)]),
                step(neighbour, XDP_DROP, Expect::Ignored, &[(denied, 1)]),
                // Dropped every time: nothing was recorded for it.
                step(outside.clone(), XDP_DROP, Expect::Ignored, &[(denied, 1)]),
            ],
        },
        Fixture {
            name: "a_vip_without_a_list_admits_everyone",
            config: CFG.into(),
            steps: vec![step(open_port.clone(), XDP_TX, to4(&open_port), &[(tx, 1)])],
        },
        Fixture {
            name: "ipv6_prefixes",
            config: CFG.into(),
            steps: vec![
                step(in6.clone(), XDP_TX, to6(&in6, "fd00:10::1234"), &[(tx, 1)]),
                step(out6, XDP_DROP, Expect::Ignored, &[(denied, 1)]),
            ],
        },
        Fixture {
            name: "a_narrowed_list_keeps_recorded_flows_and_refuses_new_ones",
            config: CFG.into(),
            steps: vec![
                step(inside.clone(), XDP_TX, to4(&inside), &[(tx, 1)]),
                Step {
                    before: Some(close_the_vip),
                    ..step(inside.clone(), XDP_TX, to4(&inside), &[(tx, 1)])
                },
                step(edge.clone(), XDP_DROP, Expect::Ignored, &[(denied, 1)]),
                step(host.clone(), XDP_TX, to4(&host), &[(tx, 1)]),
                Step {
                    before: Some(open_the_vip),
                    ..step(outside.clone(), XDP_TX, to4(&outside), &[(tx, 1)])
                },
            ],
        },
    ]);
}
