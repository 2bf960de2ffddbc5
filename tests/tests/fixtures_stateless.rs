//! test_run: a `stateless` VIP (Katran's LRU bypass, IPVS's one-packet scheduling). Every
//! packet goes to the backend its hash picks, none of its flows is recorded or cached, and
//! each packet counts `stateless_pick`; a VIP beside it on the same address records as
//! usual. When the VIP's backends change, its flows follow the new lookup table at once:
//! what the option trades for the table's room.

use std::net::IpAddr;

use lb_common::{counters::Event, flow::FlowKey, maps::ConnEntry};
use xlb::config::VipId;
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const VIP: &str = "198.18.1.1";
const UDP: u8 = 17;
/// The stateless VIP's port, and its recording neighbour's.
const STATELESS: u16 = 53;
const RECORDING: u16 = 54;

fn config() -> String {
    let vip = |port: u16, stateless: bool| {
        format!(
            r#"{{"address": "{VIP}", "port": {port}, "protocol": "udp", "stateless": {stateless},
                "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}},
                             {{"address": "198.18.0.13"}}]}}"#
        )
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [{}, {}]}}"#,
        vip(STATELESS, true),
        vip(RECORDING, false)
    )
}

fn query(sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .udp(sport, dport)
        .payload(b"query")
        .build()
}

fn key(sport: u16, dport: u16) -> FlowKey {
    flow(
        "198.18.0.10".parse().unwrap(),
        sport,
        VIP.parse().unwrap(),
        dport,
        UDP,
    )
}

fn vip_id(port: u16) -> VipId {
    format!("{VIP}:{port}/udp").parse().unwrap()
}

fn recorded(lab: &mut Lab, sport: u16, dport: u16) -> Option<ConnEntry> {
    lab.recorded_v4(&key(sport, dport))
}

/// Runs `frame`, checks the whole tunnel frame, and returns its backend.
#[track_caller]
fn backend_of(lab: &mut Lab, frame: &[u8]) -> IpAddr {
    tunnelled_to(&mut lab.ebpf, frame, LB.parse().unwrap())
}

#[test]
fn every_packet_goes_by_hash_and_nothing_is_recorded() {
    if !require_root() {
        return;
    }
    // The flow cache is per CPU: one CPU, so that a cached flow would show.
    pin_to_this_cpu();
    let mut lab = Lab::new(&config());
    let before = lab.counters();
    let ports: Vec<u16> = (50_000..50_030).collect();
    let mut seen = std::collections::BTreeSet::new();
    for &p in &ports {
        let want = lab.predict(&vip_id(STATELESS).to_string(), &key(p, STATELESS));
        // The query and its retry: the same backend, both by hash.
        for round in 0..2 {
            assert_eq!(
                backend_of(&mut lab, &query(p, STATELESS)),
                want,
                "port {p}, packet {round}"
            );
        }
        seen.insert(want);
        assert!(recorded(&mut lab, p, STATELESS).is_none(), "port {p}");
        // The same client's flows to the recording VIP are recorded.
        backend_of(&mut lab, &query(p, RECORDING));
        assert!(recorded(&mut lab, p, RECORDING).is_some(), "port {p}");
    }
    assert_eq!(seen.len(), 3, "30 flows all on {seen:?}");
    let after = lab.counters();
    let moved = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
    let deltas = counter_deltas(&before, &after);
    assert_eq!(moved(Event::StatelessPick), 60, "{deltas}");
    // New flows and hits are the recording VIP's: one each per port.
    assert_eq!(moved(Event::NewFlow), 30, "{deltas}");
    assert_eq!(moved(Event::ConnHit), 0, "{deltas}");
    assert_eq!(moved(Event::FlowCacheHit), 0, "{deltas}");
    assert_eq!(moved(Event::TxEncap), 90, "{deltas}");
}

#[test]
fn flows_follow_the_table_when_the_backends_change() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&config());
    let ports: Vec<u16> = (51_000..51_060).collect();
    let first: Vec<IpAddr> = ports
        .iter()
        .map(|&p| backend_of(&mut lab, &query(p, STATELESS)))
        .collect();
    let recording: Vec<IpAddr> = ports
        .iter()
        .map(|&p| backend_of(&mut lab, &query(p, RECORDING)))
        .collect();
    let gone: IpAddr = "198.18.0.12".parse().unwrap();
    assert!(first.contains(&gone), "no flow on the backend to remove");
    for port in [STATELESS, RECORDING] {
        lab.core
            .remove_backend(&vip_id(port), gone)
            .expect("remove backend");
    }
    for (i, &p) in ports.iter().enumerate() {
        let now = backend_of(&mut lab, &query(p, STATELESS));
        let want = lab.predict(&vip_id(STATELESS).to_string(), &key(p, STATELESS));
        assert_eq!(now, want, "port {p}: not where the new table points");
        assert_ne!(now, gone, "port {p}");
        // A recorded flow on a surviving backend stays there (the table's word).
        let kept = backend_of(&mut lab, &query(p, RECORDING));
        if recording[i] != gone {
            assert_eq!(kept, recording[i], "port {p}: a recorded flow moved");
        }
    }
}
