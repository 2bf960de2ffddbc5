//! test_run fixtures for next hops from the kernel FIB: a backend without a cached next hop
//! makes the balancer call `bpf_fib_lookup` on every packet.
//!
//! `BPF_PROG_TEST_RUN` runs the program in the calling thread's network namespace with the
//! namespace's loopback (ifindex 1) as ingress device, so the FIB asked is the namespace's.
//! A thread enters a private namespace holding a veth pair with 198.18.0.2/24 and fd00::2/64,
//! creates the balancer there, clears the cached next hops, and changes routes and
//! neighbours between packets.

use std::{net::IpAddr, path::Path};

use lb_common::{
    counters::{Drop, Event},
    hash::flow_hash,
};
use xlb::{config::VipId, dataplane::Dataplane};
use xlb_tests::{
    fixtures::*,
    netns::{require_root, veth, Netns},
    packet::{ip_packet, Mac, Pkt},
};

const CFG: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11"}]},
    {"address": "198.18.1.1", "port": 81, "protocol": "tcp", "backends": [{"address": "198.18.99.11"}]},
    {"address": "fd00::1:1", "port": 80, "protocol": "tcp", "backends": [{"address": "fd00::11"}]}
]}"#;
const BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
const DEV: &str = "xlbfib0";
const PEER: &str = "xlbfib1";

fn syn4(sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(sport, dport)
        .syn()
        .build()
}

fn syn6(sport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00::1:1"))
        .tcp(sport, 80)
        .syn()
        .build()
}

/// Runs `frame`, checks the verdict and that exactly the listed counters moved among drops,
/// plus the listed events; returns the output frame.
#[track_caller]
fn expect(lab: &mut Lab, what: &str, frame: &[u8], verdict: u32, moved: &[(u32, u64)]) -> Vec<u8> {
    let before = lab.counters();
    let out = lab.run(frame);
    let after = lab.counters();
    let changes = counter_deltas(&before, &after);
    assert_eq!(out.verdict, verdict, "{what}: verdict; counters {changes}");
    for (slot, n) in moved {
        assert_eq!(
            after[*slot as usize] - before[*slot as usize],
            *n,
            "{what}: counters {changes}"
        );
    }
    for d in Drop::ALL {
        let s = d.slot();
        if !moved.iter().any(|(m, _)| *m == s) {
            assert_eq!(
                after[s as usize], before[s as usize],
                "{what}: unexpected drop; counters {changes}"
            );
        }
    }
    out.frame
}

#[test]
fn next_hop_from_the_fib() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("fib");
    let name = ns.name().to_string();
    veth(&ns, DEV, &ns, PEER);
    ns.link_up(DEV);
    ns.link_up(PEER);
    ns.addr(DEV, "198.18.0.2/24");
    ns.addr(DEV, "fd00::2/64");
    // FIB lookups answer FWD_DISABLED unless the ingress device (lo here) forwards.
    ns.sysctl("net.ipv4.conf.all.forwarding", "1");
    ns.sysctl("net.ipv4.conf.lo.forwarding", "1");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    ns.sysctl("net.ipv6.conf.lo.forwarding", "1");
    let ifindex = ns.ifindex(DEV);
    let dev_mac = ns.mac(DEV);
    assert_ne!(ifindex, TEST_RUN_IFINDEX);

    let ns_ref = &ns;
    let res = std::thread::scope(|s| {
        s.spawn(move || {
            let _inside = ns_ref.enter();
            in_namespace(ns_ref, ifindex, dev_mac);
        })
        .join()
    });
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }

    drop(ns);
    assert!(
        !Path::new("/var/run/netns").join(&name).exists(),
        "namespace {name} left behind"
    );
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} still listed"
    );
}

/// Packets and bytes counted for backend `addr` of `vip`.
fn traffic(lab: &Lab, vip: &str, addr: &str) -> (u64, u64) {
    let t = lab.core.dataplane().backend(lab.backend_index(vip, addr));
    (t.packets, t.bytes)
}

fn in_namespace(ns: &Netns, ifindex: u32, dev_mac: Mac) {
    let mut lab = Lab::new(CFG);
    for (vip, backend) in [
        ("198.18.1.1:80/tcp", "198.18.0.11"),
        ("198.18.1.1:81/tcp", "198.18.99.11"),
        ("[fd00::1:1]:80/tcp", "fd00::11"),
    ] {
        let id: VipId = vip.parse().expect("vip id");
        lab.core
            .set_nexthop(&id, backend.parse().unwrap(), None)
            .expect("clear next hop");
    }
    let fib = Event::FibLookup.slot();
    let no_route = Drop::NoRoute.slot();
    let no_neigh = Drop::NoNeighbour.slot();

    // 198.18.99.11 lies outside every connected subnet and there is no default route.
    expect(
        &mut lab,
        "no route",
        &syn4(1000, 81),
        XDP_DROP,
        &[(no_route, 1), (fib, 1)],
    );
    // 198.18.0.0/24 is connected, but nobody resolved 198.18.0.11.
    expect(
        &mut lab,
        "no neighbour",
        &syn4(1001, 80),
        XDP_DROP,
        &[(no_neigh, 1), (fib, 1)],
    );
    expect(
        &mut lab,
        "v6 no neighbour",
        &syn6(1001),
        XDP_DROP,
        &[(no_neigh, 1), (fib, 1)],
    );

    ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.11",
        "lladdr",
        "02:00:00:00:00:11",
        "dev",
        DEV,
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        "fd00::11",
        "lladdr",
        "02:00:00:00:00:11",
        "dev",
        DEV,
        "nud",
        "permanent",
    ]);
    // Resolved, but out of the veth, not the ingress device, and the veth is no TX port.
    expect(
        &mut lab,
        "egress not a TX port",
        &syn4(1002, 80),
        XDP_DROP,
        &[(no_route, 1), (fib, 1)],
    );

    // Refused packets are not the backends' traffic.
    for (vip, backend) in [
        ("198.18.1.1:81/tcp", "198.18.99.11"),
        ("198.18.1.1:80/tcp", "198.18.0.11"),
        ("[fd00::1:1]:80/tcp", "fd00::11"),
    ] {
        assert_eq!(
            traffic(&lab, vip, backend),
            (0, 0),
            "{backend}: nothing forwarded"
        );
    }

    lab.add_tx_port(ifindex);
    let v6_hash = flow_hash(&flow(
        "fd00::10".parse().unwrap(),
        1004,
        "fd00::1:1".parse().unwrap(),
        80,
        6,
    ));
    for (what, syn, src, backend, hash) in [
        ("redirect", syn4(1003, 80), "198.18.0.2", "198.18.0.11", 0),
        ("v6 redirect", syn6(1004), "fd00::2", "fd00::11", v6_hash),
    ] {
        let out = expect(
            &mut lab,
            what,
            &syn,
            XDP_REDIRECT,
            &[(fib, 1), (Event::RedirectEncap.slot(), 1)],
        );
        let want = encapsulated_via(
            &syn,
            BACKEND_MAC,
            dev_mac,
            src.parse().unwrap(),
            backend.parse().unwrap(),
            hash,
        );
        if let Some(d) = xlb_tests::packet::diff_frames(&want, &out) {
            panic!("{what}: redirected frame:\n{d}");
        }
    }

    // A cached next hop skips the FIB.
    let id: VipId = "198.18.1.1:80/tcp".parse().unwrap();
    let addr: IpAddr = "198.18.0.11".parse().unwrap();
    lab.core
        .set_nexthop(
            &id,
            addr,
            Some(xlb::core::NextHop {
                ifindex: TEST_RUN_IFINDEX,
                smac: LB_MAC,
                dmac: NEXTHOP_MAC,
                mtu: 1500,
            }),
        )
        .expect("cache next hop");
    let syn = syn4(1005, 80);
    let out = expect(
        &mut lab,
        "cached next hop",
        &syn,
        XDP_TX,
        &[(fib, 0), (Event::TxEncap.slot(), 1)],
    );
    assert_eq!(
        out,
        encapsulated(&syn, "198.18.0.2".parse().unwrap(), addr, 0)
    );
    // The redirected SYN and this one, IP packets as the client sent them.
    let ip_len = (syn.len() - 14) as u64;
    assert_eq!(
        traffic(&lab, "198.18.1.1:80/tcp", "198.18.0.11"),
        (2, 2 * ip_len),
        "forwarded packets are counted once each"
    );
    lab.core
        .set_nexthop(&id, addr, None)
        .expect("clear next hop");

    too_big_for_the_fib_path(ns, &mut lab);

    // Forwarding off on the ingress device: FWD_DISABLED, counted as no route.
    ns.sysctl("net.ipv4.conf.all.forwarding", "0");
    ns.sysctl("net.ipv4.conf.lo.forwarding", "0");
    expect(
        &mut lab,
        "forwarding disabled",
        &syn4(1006, 80),
        XDP_DROP,
        &[(no_route, 1), (fib, 1)],
    );
}

/// Before the daemon has resolved a backend's next hop, the FIB lookup checks the
/// encapsulated packet against the egress device's MTU: a packet that fits our link but not
/// the path is answered with the MTU the FIB reports, less the outer header, like one too
/// big for an MTU the daemon knows (fixtures_ipv6_icmp); an ICMP error, never answered with
/// one, is dropped.
fn too_big_for_the_fib_path(ns: &Netns, lab: &mut Lab) {
    ns.ip(&["link", "set", DEV, "mtu", "1400"]);
    let fib = Event::FibLookup.slot();
    let sent = Event::IcmpTooBigSent.slot();
    // IP packets of 1381 / 1361 bytes: 1401 once encapsulated, 19 under our own 1500.
    let big4 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(1100, 80)
        .ack()
        .payload(&[7; 1341])
        .build();
    let big6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00::1:1"))
        .tcp(1101, 80)
        .ack()
        .payload(&[7; 1301])
        .build();
    let need4 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .icmp_frag_needed(1380, &ip_packet(&big4)[..64])
        .build();
    let need6 = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv6(v6("fd00::1:1"), v6("fd00::10"))
        .icmpv6_packet_too_big(1360, &ip_packet(&big6)[..64])
        .build();
    for (what, frame, want) in [("v4", &big4, &need4), ("v6", &big6, &need6)] {
        let out = expect(lab, what, frame, XDP_TX, &[(fib, 1), (sent, 1)]);
        if let Some(d) = xlb_tests::packet::diff_frames(want, &out) {
            panic!("{what} too big for the FIB's path: answer:\n{d}");
        }
    }
    // One byte less fits, and goes.
    let fits4 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(1102, 80)
        .ack()
        .payload(&[7; 1340])
        .build();
    expect(
        lab,
        "v4 fitting the FIB's path",
        &fits4,
        XDP_REDIRECT,
        &[(fib, 1), (sent, 0), (Event::RedirectEncap.slot(), 1)],
    );
    // An error about a VIP flow (a router could not pass its 1400-byte reply on), itself
    // too big for the path once encapsulated.
    let reply = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(v4("198.18.1.1"), v4("198.18.0.10"))
        .tcp(80, 1103)
        .ack()
        .payload(&[0; 1360])
        .build();
    let error = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.1"), v4("198.18.1.1"))
        .icmp_frag_needed(1300, ip_packet(&reply))
        .build();
    expect(
        lab,
        "ICMP error too big for the FIB's path",
        &error,
        XDP_DROP,
        &[
            (fib, 1),
            (sent, 0),
            (Drop::TooBig.slot(), 1),
            (Event::IcmpForwarded.slot(), 0),
        ],
    );
    ns.ip(&["link", "set", DEV, "mtu", "1500"]);
}
