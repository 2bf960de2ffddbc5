//! test_run: a VIP's `new_flow_rate_limit`. Within a second, a CPU admits that many new
//! flows of the VIP and drops the rest (`vip_flow_limit`); the admitted flows' later
//! packets, and a VIP beside it without a limit, are untouched. Lifted, new flows pass again.

use lb_common::counters::{Drop, Event};
use xlb::config::VipId;
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const VIP: &str = "198.18.1.1";
const LIMITED: u16 = 80;
const OPEN: u16 = 81;
const LIMIT: u16 = 5;

fn config() -> String {
    let vip = |port: u16, limit: &str| {
        format!(
            r#"{{"address": "{VIP}", "port": {port}, "protocol": "tcp"{limit},
                "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}"#
        )
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [{}, {}]}}"#,
        vip(LIMITED, &format!(r#", "new_flow_rate_limit": {LIMIT}"#)),
        vip(OPEN, "")
    )
}

fn syn(sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .tcp(sport, dport)
        .syn()
        .build()
}

fn ack(sport: u16, dport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .tcp(sport, dport)
        .ack()
        .build()
}

#[test]
fn a_cpu_admits_its_share_of_new_flows_a_second_and_drops_the_rest() {
    if !require_root() {
        return;
    }
    // The windows are per CPU.
    pin_to_this_cpu();
    let mut lab = Lab::new(&config());
    let lb = LB.parse().unwrap();
    let before = lab.counters();
    let ports: Vec<u16> = (50_000..50_000 + LIMIT + 3).collect();
    for &p in &ports {
        let out = lab.run(&syn(p, LIMITED));
        let want = if p < 50_000 + LIMIT { XDP_TX } else { XDP_DROP };
        assert_eq!(out.verdict, want, "port {p}");
    }
    // The admitted flows go on; the open VIP takes every new flow.
    for &p in &ports[..usize::from(LIMIT)] {
        tunnelled_to(&mut lab.ebpf, &ack(p, LIMITED), lb);
    }
    for &p in &ports {
        tunnelled_to(&mut lab.ebpf, &syn(p, OPEN), lb);
    }
    let after = lab.counters();
    let moved = |slot: u32| after[slot as usize] - before[slot as usize];
    let deltas = counter_deltas(&before, &after);
    assert_eq!(moved(Drop::VipFlowLimit.slot()), 3, "{deltas}");
    assert_eq!(
        moved(Event::NewFlow.slot()),
        u64::from(LIMIT) + ports.len() as u64,
        "{deltas}"
    );

    // Lifted: the next new flow passes at once.
    let id: VipId = format!("{VIP}:{LIMITED}/tcp").parse().unwrap();
    lab.core
        .set_new_flow_rate_limit(&id, None)
        .expect("lift the limit");
    tunnelled_to(&mut lab.ebpf, &syn(51_000, LIMITED), lb);
}
