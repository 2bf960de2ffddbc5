//! test_run: backends' `max_conns` under a least-connection VIP. A backend at its limit
//! takes no new flow; when every backend the scheduler reaches is at its limit, the new
//! flow is dropped (`backends_full`) and its client retries; a flow that closes makes room
//! again. Flows already recorded keep their backend whatever the counts.

use std::net::IpAddr;

use lb_common::counters::{Drop, Event};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const WEB: &str = "198.18.1.1:80/tcp";

fn syn(sport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(sport, 80)
        .syn()
        .build()
}

fn fin(sport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
        .tcp(sport, 80)
        .fin()
        .ack()
        .build()
}

#[test]
fn backends_at_their_limit_take_no_new_flows() {
    if !require_root() {
        return;
    }
    // On one CPU: the flow cache is per CPU, and the FIN below must reach the table.
    pin_to_this_cpu();
    let mut lab = Lab::new(&format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [
            {{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "lc",
             "backends": [{{"address": "198.18.0.11", "max_conns": 2}},
                          {{"address": "198.18.0.12", "max_conns": 3}}]}}]}}"#
    ));
    let b11: IpAddr = "198.18.0.11".parse().unwrap();
    let (i11, i12) = (
        lab.backend_index(WEB, "198.18.0.11"),
        lab.backend_index(WEB, "198.18.0.12"),
    );
    let active = |lab: &Lab| {
        let dp = lab.core.dataplane();
        (dp.active_flows(i11), dp.active_flows(i12))
    };
    let lb: IpAddr = LB.parse().unwrap();
    // Five new flows fill both backends: 2 + 3.
    let mut placed = Vec::new();
    for p in 40_000..40_005u16 {
        placed.push((p, tunnelled_to(&mut lab.ebpf, &syn(p), lb)));
    }
    assert_eq!(active(&lab), (2, 3), "{placed:?}");

    // A sixth finds every backend full: dropped and counted, nothing recorded or counted.
    let before = lab.counters();
    assert_eq!(lab.run(&syn(40_005)).verdict, XDP_DROP);
    let after = lab.counters();
    let moved = |slot: u32| after[slot as usize] - before[slot as usize];
    assert_eq!(moved(Drop::BackendsFull.slot()), 1);
    assert_eq!(moved(Event::NewFlow.slot()), 0);
    assert_eq!(active(&lab), (2, 3));

    // Recorded flows keep their backend, full or not.
    for (p, backend) in &placed {
        let data = Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4("198.18.0.10"), v4("198.18.1.1"))
            .tcp(*p, 80)
            .ack()
            .payload(b"more")
            .build();
        assert_eq!(tunnelled_to(&mut lab.ebpf, &data, lb), *backend, "port {p}");
    }

    // One of b11's clients closes: the retried SYN goes there.
    let (p, _) = placed
        .iter()
        .find(|(_, b)| *b == b11)
        .copied()
        .expect("a flow on 198.18.0.11");
    assert_eq!(tunnelled_to(&mut lab.ebpf, &fin(p), lb), b11);
    assert_eq!(active(&lab), (1, 3));
    assert_eq!(tunnelled_to(&mut lab.ebpf, &syn(40_005), lb), b11);
    assert_eq!(active(&lab), (2, 3));

    // Operators see the limits beside the counts, and the drop.
    let (d, _ebpf) = lab.into_daemon();
    let text = xlb::daemon::metrics::render(&d);
    for line in [
        format!("xlb_backend_max_conns{{vip=\"{WEB}\",backend=\"198.18.0.11\"}} 2\n"),
        format!("xlb_backend_max_conns{{vip=\"{WEB}\",backend=\"198.18.0.12\"}} 3\n"),
        format!("xlb_backend_active_flows{{vip=\"{WEB}\",backend=\"198.18.0.11\"}} 2\n"),
        "xlb_dropped_packets_total{reason=\"backends_full\"} 1\n".to_owned(),
    ] {
        assert!(text.contains(&line), "metrics lack {line:?}:\n{text}");
    }
}

/// The limit reaches the data plane through the core, and back to no limit: the same full
/// VIP takes new flows again once its limits are lifted.
#[test]
fn lifting_the_limits_lets_new_flows_in() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [
            {{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "wlc",
             "backends": [{{"address": "198.18.0.11", "max_conns": 1}}]}}]}}"#
    ));
    let lb: IpAddr = LB.parse().unwrap();
    tunnelled_to(&mut lab.ebpf, &syn(41_000), lb);
    assert_eq!(lab.run(&syn(41_001)).verdict, XDP_DROP);
    let vip = WEB.parse().unwrap();
    lab.core
        .set_max_conns(&vip, "198.18.0.11".parse().unwrap(), None)
        .expect("lift the limit");
    tunnelled_to(&mut lab.ebpf, &syn(41_001), lb);
    lab.core
        .set_max_conns(&vip, "198.18.0.11".parse().unwrap(), Some(2))
        .expect("set it again");
    assert_eq!(lab.run(&syn(41_002)).verdict, XDP_DROP, "2 of 2 taken");
}
