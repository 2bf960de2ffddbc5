//! test_run: the flow hash in BPF equals the host's, and the connection table keeps flows
//! on their backend through backend-set changes, drains and failures.

use std::net::IpAddr;

use lb_common::counters::Event;
use xlb::config::{BackendConfig, VipId};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const FIVE: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"}, {"address": "198.18.0.13"},
        {"address": "198.18.0.14"}, {"address": "198.18.0.15"}]},
    {"address": "198.18.1.1", "port": 443, "protocol": "tcp", "scheduler": "sh", "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"}, {"address": "198.18.0.13"}]}
]}"#;
const WEB: &str = "198.18.1.1:80/tcp";
const LB: &str = "198.18.0.2";
const TCP: u8 = 6;

fn syn(client: &str, sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(client), v4("198.18.1.1"))
        .tcp(sport, dport)
        .syn()
        .build()
}

fn ack(client: &str, sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(client), v4("198.18.1.1"))
        .tcp(sport, dport)
        .ack()
        .payload(b"data")
        .build()
}

fn key(client: &str, sport: u16, dport: u16) -> lb_common::flow::FlowKey {
    flow(
        client.parse().unwrap(),
        sport,
        "198.18.1.1".parse().unwrap(),
        dport,
        TCP,
    )
}

/// Runs `frame`, asserts XDP_TX and returns the outer destination (the backend).
#[track_caller]
fn backend_of(lab: &mut Lab, frame: &[u8]) -> IpAddr {
    let out = lab.run(frame);
    assert_eq!(out.verdict, XDP_TX, "not forwarded");
    let expected_inner = xlb_tests::packet::ip_packet(frame);
    assert_eq!(&out.frame[34..], expected_inner, "inner packet changed");
    IpAddr::from([out.frame[30], out.frame[31], out.frame[32], out.frame[33]])
}

#[test]
fn bpf_flow_hash_matches_host_prediction() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40_000..40_064u16 {
        let frame = syn("198.18.0.10", sport, 80);
        let want = lab.predict(WEB, &key("198.18.0.10", sport, 80));
        let expected = encapsulated(&frame, LB.parse().unwrap(), want, 0);
        let out = lab.run(&frame);
        assert_eq!(out.verdict, XDP_TX);
        assert_eq!(
            out.frame, expected,
            "sport {sport}: BPF picked another backend than the host predicts"
        );
        seen.insert(want);
    }
    assert_eq!(seen.len(), 5, "64 flows should reach all 5 backends");
}

#[test]
fn established_flow_keeps_backend_when_backends_are_added_and_removed() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let id: VipId = WEB.parse().unwrap();
    // Many flows, so that some of them would hash elsewhere after each change.
    let flows: Vec<u16> = (41_000..41_100).collect();
    let pinned: Vec<IpAddr> = flows
        .iter()
        .map(|&p| backend_of(&mut lab, &syn("198.18.0.10", p, 80)))
        .collect();
    for extra in ["198.18.0.16", "198.18.0.17", "198.18.0.18"] {
        lab.core
            .add_backend(
                &id,
                BackendConfig {
                    max_conns: None,
                    quic_server_id: None,
                    address: extra.parse().unwrap(),
                    weight: 1,
                    drained: false,
                    backup: false,
                },
            )
            .unwrap();
    }
    lab.set_all_nexthops();
    lab.core
        .remove_backend(&id, "198.18.0.15".parse().unwrap())
        .unwrap();
    let mut would_move = 0;
    let hits_before = lab.counters()[Event::ConnHit.slot() as usize];
    for (p, want) in flows.iter().zip(&pinned) {
        if want.to_string() == "198.18.0.15" {
            continue;
        }
        if lab.predict(WEB, &key("198.18.0.10", *p, 80)) != *want {
            would_move += 1;
        }
        assert_eq!(
            backend_of(&mut lab, &ack("198.18.0.10", *p, 80)),
            *want,
            "flow {p} moved"
        );
    }
    assert!(
        would_move > 0,
        "the change should have moved some hashes, or this test proves nothing"
    );
    assert!(lab.counters()[Event::ConnHit.slot() as usize] > hits_before);
}

#[test]
fn flows_of_a_removed_or_dead_backend_move_and_others_stay() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let id: VipId = WEB.parse().unwrap();
    let flows: Vec<u16> = (42_000..42_100).collect();
    let pinned: Vec<IpAddr> = flows
        .iter()
        .map(|&p| backend_of(&mut lab, &syn("198.18.0.10", p, 80)))
        .collect();
    let dead: IpAddr = "198.18.0.13".parse().unwrap();
    assert!(pinned.contains(&dead));
    lab.core.set_health(&id, dead, false).unwrap();
    let repick_before = lab.counters()[Event::ConnRepick.slot() as usize];
    let mut moved = 0;
    for (p, was) in flows.iter().zip(&pinned) {
        let now = backend_of(&mut lab, &ack("198.18.0.10", *p, 80));
        if *was == dead {
            assert_ne!(now, dead, "flow {p} still on the dead backend");
            assert_eq!(now, lab.predict(WEB, &key("198.18.0.10", *p, 80)));
            moved += 1;
        } else {
            assert_eq!(now, *was, "flow {p} on a healthy backend moved");
        }
    }
    assert_eq!(
        lab.counters()[Event::ConnRepick.slot() as usize] - repick_before,
        moved
    );
}

#[test]
fn drained_backend_keeps_its_flows_and_gets_no_new_ones() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let id: VipId = WEB.parse().unwrap();
    let drained: IpAddr = "198.18.0.12".parse().unwrap();
    let flows: Vec<u16> = (43_000..43_050).collect();
    let pinned: Vec<IpAddr> = flows
        .iter()
        .map(|&p| backend_of(&mut lab, &syn("198.18.0.10", p, 80)))
        .collect();
    assert!(pinned.contains(&drained));
    lab.core.set_drained(&id, drained, true).unwrap();
    for (p, was) in flows.iter().zip(&pinned) {
        assert_eq!(backend_of(&mut lab, &ack("198.18.0.10", *p, 80)), *was);
    }
    for p in 44_000..44_100u16 {
        assert_ne!(
            backend_of(&mut lab, &syn("198.18.0.10", p, 80)),
            drained,
            "new flow {p} reached a drained backend"
        );
    }
}

/// A client that reuses a 5-tuple (a new connection after TIME_WAIT) meets the old
/// connection's entry: its SYN keeps the recorded backend while that takes new connections,
/// and is scheduled anew once the backend is drained, whether the flow cache or the table
/// answers; the drained backend's other connections stay.
#[test]
fn a_reused_tuple_leaves_a_drained_backend_at_its_syn() {
    if !require_root() {
        return;
    }
    // The cache is per CPU: on one CPU, a flow's recording fills the cache its next SYN
    // meets.
    pin_to_this_cpu();
    let cases = [
        ("flow cache", Lab::options(), 1),
        (
            "no flow cache",
            xlb::loader::LoadOptions {
                flow_cache: false,
                ..Lab::options()
            },
            0,
        ),
    ];
    for (what, opts, cache_hits) in cases {
        let mut lab = Lab::with_options(FIVE, opts);
        let id: VipId = WEB.parse().unwrap();
        let client = "198.18.0.10";
        let ports: Vec<u16> = (45_000..45_100).collect();
        let pinned: Vec<IpAddr> = ports
            .iter()
            .map(|&p| backend_of(&mut lab, &syn(client, p, 80)))
            .collect();
        let drained = pinned[0];
        let on_drained: Vec<u16> = ports
            .iter()
            .zip(&pinned)
            .filter(|(_, b)| **b == drained)
            .map(|(p, _)| *p)
            .collect();
        assert!(on_drained.len() >= 3, "{what}: flows enough on one backend");
        let (reused, other) = (on_drained[1], on_drained[2]);
        // Recorded again just now: in the cache, if there is one.
        assert_eq!(backend_of(&mut lab, &syn(client, reused, 80)), drained);
        let before = lab.counters();
        assert_eq!(
            backend_of(&mut lab, &syn(client, reused, 80)),
            drained,
            "{what}: before the drain a reused tuple stays"
        );
        let after = lab.counters();
        let d = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
        assert_eq!(d(Event::FlowCacheHit), cache_hits, "{what}: answered by");

        lab.core.set_drained(&id, drained, true).unwrap();
        let before = lab.counters();
        let moved = backend_of(&mut lab, &syn(client, reused, 80));
        let after = lab.counters();
        let d = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
        assert_ne!(
            moved, drained,
            "{what}: the new connection left the drained backend"
        );
        assert_eq!(
            (
                d(Event::ConnRepick),
                d(Event::NewFlow),
                d(Event::FlowCacheHit)
            ),
            (1, 1, 0),
            "{what}: re-picked and recorded anew"
        );
        assert_eq!(
            backend_of(&mut lab, &ack(client, reused, 80)),
            moved,
            "{what}: the rest of the new connection follows its SYN"
        );
        assert_eq!(
            backend_of(&mut lab, &ack(client, other, 80)),
            drained,
            "{what}: an existing connection stays on the drained backend"
        );
    }
}

#[test]
fn source_hash_sticks_a_client_to_one_backend() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let mut per_client = std::collections::BTreeMap::new();
    for c in 0..12u8 {
        let client = format!("198.18.0.{}", 100 + c);
        let first = lab.predict("198.18.1.1:443/tcp", &key(&client, 1000, 443));
        for sport in 1000..1010u16 {
            assert_eq!(
                backend_of(&mut lab, &syn(&client, sport, 443)),
                first,
                "client {client} port {sport}"
            );
        }
        per_client.insert(client, first);
    }
    let distinct: std::collections::BTreeSet<_> = per_client.values().collect();
    assert!(
        distinct.len() >= 2,
        "12 clients all on one backend: {per_client:?}"
    );
}

#[test]
fn flows_of_a_removed_vip_stop_at_once() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let id: VipId = WEB.parse().unwrap();
    backend_of(&mut lab, &syn("198.18.0.10", 45_000, 80));
    lab.core.remove_vip(&id).unwrap();
    let before = lab.counters()[lb_common::counters::Pass::NotVip.slot() as usize];
    let out = lab.run(&ack("198.18.0.10", 45_000, 80));
    assert_eq!(
        out.verdict, XDP_PASS,
        "a pinned flow of a removed VIP was still forwarded"
    );
    assert_eq!(
        lab.counters()[lb_common::counters::Pass::NotVip.slot() as usize],
        before + 1
    );
}

#[test]
fn a_reused_backend_slot_never_inherits_old_flows() {
    if !require_root() {
        return;
    }
    let cfg = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
        {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "table_size": 13, "backends": [{"address": "198.18.0.11"}]},
        {"address": "198.18.1.1", "port": 81, "protocol": "tcp", "table_size": 13, "backends": []}]}"#;
    let mut lab = Lab::new(cfg);
    let web: VipId = WEB.parse().unwrap();
    let other: VipId = "198.18.1.1:81/tcp".parse().unwrap();
    let old_index = lab
        .core
        .vip(&web)
        .unwrap()
        .backends
        .values()
        .next()
        .unwrap()
        .index;
    assert_eq!(
        backend_of(&mut lab, &syn("198.18.0.10", 46_000, 80)).to_string(),
        "198.18.0.11"
    );
    lab.core.remove_vip(&web).unwrap();
    // Churn backend slots (handed out first-in first-out) until the old index comes back,
    // now for another VIP's backend.
    let addr: std::net::IpAddr = "198.18.0.12".parse().unwrap();
    let mut reused = false;
    for _ in 0..lb_common::maps::MAX_BACKENDS {
        lab.core
            .add_backend(
                &other,
                BackendConfig {
                    max_conns: None,
                    quic_server_id: None,
                    address: addr,
                    weight: 1,
                    drained: false,
                    backup: false,
                },
            )
            .unwrap();
        if lab.core.vip(&other).unwrap().backends[&addr].index == old_index {
            reused = true;
            break;
        }
        lab.core.remove_backend(&other, addr).unwrap();
    }
    assert!(reused, "slot {old_index} never came back");
    lab.set_all_nexthops();
    // The old flow's entry still points at that slot; it must not reach the new holder.
    let out = lab.run(&ack("198.18.0.10", 46_000, 80));
    assert_eq!(
        out.verdict, XDP_PASS,
        "a flow of a removed VIP reached the slot's new backend"
    );
}

/// IPv4 flows are recorded under their 16-byte key in `CONNS_V4`, IPv6 flows under the
/// full key in `CONNS`, and a later packet of each finds its own entry.
#[test]
fn each_family_has_its_own_connection_table() {
    use aya::maps::HashMap;
    use lb_common::{
        flow::{FlowKey, FlowKeyV4},
        maps::{ConnEntry, MAP_CONNS, MAP_CONNS_V4},
    };
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(
        r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
            {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [
                {"address": "198.18.0.11"}, {"address": "198.18.0.12"}]},
            {"address": "fd00:1::1", "port": 80, "protocol": "tcp", "backends": [
                {"address": "fd00::11"}, {"address": "fd00::12"}]}]}"#,
    );
    let syn6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00:1::1"))
        .tcp(40_000, 80)
        .syn()
        .build();
    let key6 = flow(
        "fd00::10".parse().unwrap(),
        40_000,
        "fd00:1::1".parse().unwrap(),
        80,
        TCP,
    );
    let key4 = key("198.18.0.10", 40_000, 80);
    assert_eq!(lab.run(&syn("198.18.0.10", 40_000, 80)).verdict, XDP_TX);
    assert_eq!(lab.run(&syn6).verdict, XDP_TX);

    let prog = loader_prog(&mut lab);
    let v4_table: HashMap<_, FlowKeyV4, ConnEntry> =
        HashMap::try_from(prog_map(prog, MAP_CONNS_V4)).expect("CONNS_V4 type");
    let v6_table: HashMap<_, FlowKey, ConnEntry> =
        HashMap::try_from(prog_map(prog, MAP_CONNS)).expect("CONNS type");
    let e4 = v4_table
        .get(&FlowKeyV4::of(&key4), 0)
        .expect("the IPv4 flow is in CONNS_V4");
    assert!(v6_table.get(&key4, 0).is_err(), "no IPv4 flow in CONNS");
    let e6 = v6_table.get(&key6, 0).expect("the IPv6 flow is in CONNS");
    assert_eq!(v4_table.keys().count(), 1);
    assert_eq!(v6_table.keys().count(), 1);

    let want4 = lab.predict(WEB, &key4);
    let want6 = lab.predict("[fd00:1::1]:80/tcp", &key6);
    assert_eq!(e4.backend, lab.backend_index(WEB, &want4.to_string()));
    assert_eq!(
        e6.backend,
        lab.backend_index("[fd00:1::1]:80/tcp", &want6.to_string())
    );
    // The daemon's view reads the same entries.
    assert_eq!(lab.core.dataplane().conn(&key4), Some(e4));
    assert_eq!(lab.core.dataplane().conn(&key6), Some(e6));
    // Later packets are hits on those entries.
    let hits = lab.counters()[Event::ConnHit.slot() as usize];
    assert_eq!(lab.run(&ack("198.18.0.10", 40_000, 80)).verdict, XDP_TX);
    assert_eq!(lab.run(&syn6).verdict, XDP_TX);
    assert_eq!(lab.counters()[Event::ConnHit.slot() as usize], hits + 2);
}

fn loader_prog(lab: &mut Lab) -> &mut aya::programs::Xdp {
    xlb::loader::xdp(&mut lab.ebpf, xlb::loader::BALANCER_PROG).expect("program")
}

/// Least-connection VIPs count a flow when it is recorded and take it back on the client's
/// FIN or RST, once: the TCP flags are read from the right byte.
#[test]
fn least_connection_counts_follow_syn_and_fin() {
    if !require_root() {
        return;
    }
    // On one CPU, so that the flow cache (per CPU) holds the flows it recorded: their SYN,
    // FIN and RST must still reach the table.
    pin_to_this_cpu();
    let mut lab = Lab::new(
        r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
            {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "lc",
             "backends": [{"address": "198.18.0.11"}]}]}"#,
    );
    let idx = lab.backend_index(WEB, "198.18.0.11");
    let active = |lab: &Lab| lab.core.dataplane().active_flows(idx);
    let pkt = |sport: u16| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
            .tcp(sport, 80)
    };
    assert_eq!(lab.run(&pkt(40_000).syn().build()).verdict, XDP_TX);
    assert_eq!(lab.run(&pkt(40_001).syn().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 2, "two new flows counted");
    assert_eq!(lab.run(&pkt(40_000).ack().psh().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 2, "data does not change the count");
    assert_eq!(lab.run(&pkt(40_000).fin().ack().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 1, "the client's FIN takes its flow back");
    assert_eq!(lab.run(&pkt(40_000).fin().ack().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 1, "a second FIN is not counted twice");
    assert_eq!(lab.run(&pkt(40_001).rst().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 0, "RST takes the other flow back");
    assert_eq!(lab.run(&pkt(40_000).syn().build()).verdict, XDP_TX);
    assert_eq!(
        active(&lab),
        1,
        "a SYN reusing a closed flow's 5-tuple counts the new connection"
    );
    assert_eq!(lab.run(&pkt(40_000).syn().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 1, "a retransmitted SYN is not counted twice");
    assert_eq!(lab.run(&pkt(40_000).fin().ack().build()).verdict, XDP_TX);
    assert_eq!(active(&lab), 0, "and its FIN takes it back");
}

/// A RST of a flow the table does not know (a scan's, backscatter, a host's answer to a
/// stray SYN-ACK) is forwarded to its VIP's pick but not recorded: the table holds nothing
/// for it, and the flow's next SYN is a new flow. A recorded flow's RST is a hit as before.
#[test]
fn an_unknown_flows_rst_is_forwarded_but_not_recorded() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(FIVE);
    let entries = |lab: &mut Lab| {
        let conns: aya::maps::HashMap<_, lb_common::flow::FlowKeyV4, lb_common::maps::ConnEntry> =
            aya::maps::HashMap::try_from(lab.map(lb_common::maps::MAP_CONNS_V4)).expect("CONNS_V4");
        conns.keys().count()
    };
    let rst = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(42_000, 80)
        .rst()
        .build();
    let want = lab.predict(WEB, &key("198.18.0.10", 42_000, 80));
    let slot = |e: Event| e.slot() as usize;
    let before = lab.counters();
    let out = lab.run(&rst);
    assert_eq!(out.verdict, XDP_TX);
    assert_eq!(out.frame, encapsulated(&rst, LB.parse().unwrap(), want, 0));
    let after = lab.counters();
    assert_eq!(
        after[slot(Event::UnknownRst)] - before[slot(Event::UnknownRst)],
        1
    );
    assert_eq!(
        after[slot(Event::NewFlow)],
        before[slot(Event::NewFlow)],
        "recorded"
    );
    assert_eq!(entries(&mut lab), 0, "an entry for a RST");

    // Its SYN opens the flow; then its RST is the recorded flow's.
    assert_eq!(backend_of(&mut lab, &syn("198.18.0.10", 42_000, 80)), want);
    assert_eq!(entries(&mut lab), 1);
    let before = lab.counters();
    assert_eq!(backend_of(&mut lab, &rst), want);
    let after = lab.counters();
    assert_eq!(
        after[slot(Event::ConnHit)] - before[slot(Event::ConnHit)],
        1
    );
    assert_eq!(
        after[slot(Event::UnknownRst)],
        before[slot(Event::UnknownRst)]
    );
}
