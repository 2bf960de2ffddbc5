//! test_run: the record rate limit (`record_rate_limit`, lb_common::rate_window). Beyond it,
//! a CPU forwards new flows of hash-scheduled VIPs by their hash without recording them,
//! so that a flood of new flows cannot evict the established ones from the connection
//! table; round-robin and least-connection VIPs record every flow whatever the rate.
//!
//! The limit counts per CPU and per second, so every test pins its thread (test_run runs
//! the program on the calling CPU) and runs its packets well within one second; a run that
//! took longer is repeated in a fresh lab rather than judged.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{counters::Event, flow::FlowKey, maps::ConnEntry};
use xlb::{
    config::{BackendConfig, VipId},
    loader::LoadOptions,
};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const VIP: &str = "198.18.1.1";
const TCP: u8 = 6;

/// Maglev on port 80, round robin on 81, least connection on 82; three backends each.
fn config(limit: u32) -> String {
    let vip = |port: u16, scheduler: &str| {
        format!(
            r#"{{"address": "{VIP}", "port": {port}, "protocol": "tcp", "scheduler": "{scheduler}",
                "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}},
                             {{"address": "198.18.0.13"}}]}}"#
        )
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "record_rate_limit": {limit}, "vips": [{}, {}, {}]}}"#,
        vip(80, "maglev"),
        vip(81, "rr"),
        vip(82, "lc")
    )
}

fn packet(sport: u16, dport: u16) -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .tcp(sport, dport)
}

fn key(sport: u16, dport: u16) -> FlowKey {
    flow(
        "198.18.0.10".parse().unwrap(),
        sport,
        VIP.parse().unwrap(),
        dport,
        TCP,
    )
}

fn vip_id(port: u16) -> String {
    format!("{VIP}:{port}/tcp")
}

/// Runs `frame` and returns the backend it was tunnelled to, checking the whole frame
/// against the tunnel to that backend.
#[track_caller]
fn backend_of(lab: &mut Lab, frame: &[u8]) -> IpAddr {
    tunnelled_to(&mut lab.ebpf, frame, LB.parse().unwrap())
}

fn recorded(lab: &mut Lab, sport: u16, dport: u16) -> Option<ConnEntry> {
    lab.recorded_v4(&key(sport, dport))
}

fn count(lab: &Lab, e: Event) -> u64 {
    lab.counters()[e.slot() as usize]
}

/// Runs `scenario` in a fresh lab with `limit`, again (up to three times) when it did not
/// finish within half a second: the limit counts per second, and a slow machine must not
/// turn into a wrong verdict.
fn within_a_second(limit: u32, opts: LoadOptions, mut scenario: impl FnMut(&mut Lab)) {
    for _ in 0..3 {
        let mut lab = Lab::with_options(&config(limit), opts);
        let start = Instant::now();
        scenario(&mut lab);
        if start.elapsed() < Duration::from_millis(500) {
            return;
        }
    }
    panic!("three runs of a few hundred packets took over half a second each");
}

#[test]
fn new_flows_over_the_limit_go_by_hash_and_are_not_recorded() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    within_a_second(3, Lab::options(), |lab| {
        let before = lab.counters();
        let flows: Vec<u16> = (40_000..40_010).collect();
        for &p in &flows {
            let want = lab.predict(&vip_id(80), &key(p, 80));
            assert_eq!(
                backend_of(lab, &packet(p, 80).syn().build()),
                want,
                "port {p}"
            );
        }
        // Their next packets: the first three from the table, the rest by hash again.
        for &p in &flows {
            let want = lab.predict(&vip_id(80), &key(p, 80));
            let data = packet(p, 80).ack().payload(b"data").build();
            assert_eq!(backend_of(lab, &data), want, "port {p}, second packet");
        }
        let after = lab.counters();
        let moved = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
        assert_eq!(
            moved(Event::NewFlow),
            3,
            "{}",
            counter_deltas(&before, &after)
        );
        assert_eq!(
            moved(Event::ConnHit),
            3,
            "{}",
            counter_deltas(&before, &after)
        );
        // Seven new flows over the limit, each on both of its packets.
        assert_eq!(
            moved(Event::FlowNotRecorded),
            14,
            "{}",
            counter_deltas(&before, &after)
        );
        for (i, &p) in flows.iter().enumerate() {
            assert_eq!(recorded(lab, p, 80).is_some(), i < 3, "port {p}");
        }
    });
}

#[test]
fn round_robin_and_least_connection_flows_are_recorded_whatever_the_rate() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    within_a_second(1, Lab::options(), |lab| {
        let not_recorded = count(lab, Event::FlowNotRecorded);
        let new = count(lab, Event::NewFlow);
        for dport in [81, 82] {
            for p in 41_000..41_012u16 {
                let first = backend_of(lab, &packet(p, dport).syn().build());
                let data = packet(p, dport).ack().payload(b"data").build();
                assert_eq!(backend_of(lab, &data), first, "{dport}: port {p} moved");
                assert!(recorded(lab, p, dport).is_some(), "{dport}: port {p}");
            }
        }
        assert_eq!(count(lab, Event::FlowNotRecorded), not_recorded);
        assert_eq!(count(lab, Event::NewFlow), new + 24);
    });
}

/// What the limit is for: a flood of new flows on a CPU leaves that CPU's established flows
/// in the table, so they keep their backends through a change of the VIP's backends. The
/// same flood without the limit evicts them (the control: this test fails without the
/// limit). Without the flow cache, which would otherwise answer for an evicted flow for up
/// to a second.
#[test]
fn a_flood_of_new_flows_cannot_evict_established_ones() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let opts = LoadOptions {
        // Two per-CPU LRU lists of 256 entries on a two-CPU machine.
        max_conns: 512,
        flow_cache: false,
        ..Lab::options()
    };
    for (limit, survives) in [(50, true), (0, false)] {
        within_a_second(limit, opts, |lab| {
            let id: VipId = vip_id(80).parse().unwrap();
            // Established flows, recorded before the flood.
            let established: Vec<(u16, IpAddr)> = (42_000..42_020u16)
                .map(|p| (p, backend_of(lab, &packet(p, 80).syn().build())))
                .collect();
            // The flood: 4000 new flows from spoofed sources.
            for i in 0..4000u32 {
                let [_, _, a, b] = (0x0a00_0000 + i).to_be_bytes();
                let src = std::net::Ipv4Addr::new(198, 19, a, b);
                let syn = Pkt::eth(CLIENT_MAC, LB_MAC)
                    .ipv4(src, v4(VIP))
                    .tcp(1024 + (i % 60_000) as u16, 80)
                    .syn()
                    .build();
                assert_eq!(lab.run(&syn).verdict, XDP_TX);
            }
            // Two more backends: a tenth or so of the flows now hash elsewhere.
            for extra in ["198.18.0.14", "198.18.0.15"] {
                let backend = BackendConfig {
                    max_conns: None,
                    quic_server_id: None,
                    address: extra.parse().unwrap(),
                    weight: 1,
                    drained: false,
                    backup: false,
                };
                lab.core.add_backend(&id, backend).expect("add backend");
            }
            lab.set_all_nexthops();
            let mut would_move = 0;
            let mut kept = 0;
            for &(p, was) in &established {
                if lab.predict(&vip_id(80), &key(p, 80)) != was {
                    would_move += 1;
                }
                let data = packet(p, 80).ack().payload(b"data").build();
                if backend_of(lab, &data) == was {
                    kept += 1;
                }
            }
            assert!(would_move > 0, "no established flow hashes elsewhere now");
            if survives {
                assert_eq!(kept, established.len(), "limit {limit}: flows moved");
            } else {
                assert_eq!(
                    kept,
                    established.len() - would_move,
                    "no limit: the flood should have evicted every established flow"
                );
            }
        });
    }
}
