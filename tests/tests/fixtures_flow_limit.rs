//! test_run: a VIP's `new_flow_rate_limit` and `client_flow_rate_limit`. Within a second, a
//! CPU admits that many new flows of the VIP (of each client) and drops the rest
//! (`vip_flow_limit`, `client_flow_limit`); the admitted flows' later packets, other
//! clients, and a VIP beside it without a limit, are untouched. Lifted, new flows pass
//! again.

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
    // And by VIP (`VIP_LIMITED`): the limited VIP's, the open one's none.
    let limited = |port: u16| {
        let id: VipId = format!("{VIP}:{port}/tcp").parse().unwrap();
        lab.core.vip(&id).unwrap().limited(lab.core.dataplane())
    };
    assert_eq!((limited(LIMITED).vip, limited(LIMITED).client), (3, 0));
    assert_eq!(limited(OPEN), Default::default());
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

/// `client_flow_rate_limit`: within a second the balancer admits that many new flows of the
/// VIP from each client (an IPv4 address, an IPv6 /64) and drops the rest
/// (`client_flow_limit`); other clients, and the clients' admitted flows, are untouched;
/// what one client was refused does not count against the VIP's own limit. Lifted, the
/// client's new flows pass again.
#[test]
fn a_cpu_admits_each_clients_share_and_drops_the_rest_of_that_clients() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    const PER_CLIENT: u16 = 2;
    let cfg = format!(
        r#"{{"outer_source": {{"v4": "{LB}", "v6": "fd00::2"}}, "vips": [
            {{"address": "{VIP}", "port": 80, "protocol": "tcp", "new_flow_rate_limit": {LIMIT},
              "client_flow_rate_limit": {PER_CLIENT},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
            {{"address": "fd00:1::1", "port": 80, "protocol": "tcp",
              "client_flow_rate_limit": {PER_CLIENT},
              "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
    );
    let mut lab = Lab::new(&cfg);
    let lb = LB.parse().unwrap();
    let from = |client: &str, sport: u16, flags: fn(Pkt) -> Pkt| {
        let p = Pkt::eth(CLIENT_MAC, LB_MAC);
        let p = if client.contains(':') {
            p.ipv6(v6(client), v6("fd00:1::1"))
        } else {
            p.ipv4(v4(client), v4(VIP))
        };
        flags(p.tcp(sport, 80)).build()
    };
    let syn = |p: Pkt| p.syn();
    let ack = |p: Pkt| p.ack();
    let before = lab.counters();
    // A greedy client: its first two flows in, the next three out.
    for (i, sport) in (40_000..40_005).enumerate() {
        let out = lab.run(&from("198.18.0.66", sport, syn));
        let want = if i < usize::from(PER_CLIENT) {
            XDP_TX
        } else {
            XDP_DROP
        };
        assert_eq!(out.verdict, want, "greedy client's flow {i}");
    }
    // Its admitted flows go on.
    for sport in 40_000..40_002 {
        tunnelled_to(&mut lab.ebpf, &from("198.18.0.66", sport, ack), lb);
    }
    // Others are admitted, and the VIP's own limit (5) has room for them and one more
    // (the lifted greedy client's, below) though the greedy client tried five flows: its
    // refused three never counted against the VIP.
    for client in ["198.18.0.67", "198.18.0.68"] {
        tunnelled_to(&mut lab.ebpf, &from(client, 41_000, syn), lb);
    }
    // IPv6: one /64 is one client, whatever address in it.
    let v6_want = [XDP_TX, XDP_TX, XDP_DROP];
    for (i, client) in ["fd00::66", "fd00::1:66", "fd00::ffff:1"]
        .iter()
        .enumerate()
    {
        let out = lab.run(&from(client, 42_000, syn));
        assert_eq!(out.verdict, v6_want[i], "{client}");
    }
    let out = lab.run(&from("fd00:0:0:1::66", 42_000, syn));
    assert_eq!(out.verdict, XDP_TX, "another /64");
    let after = lab.counters();
    let moved = |slot: u32| after[slot as usize] - before[slot as usize];
    let deltas = counter_deltas(&before, &after);
    assert_eq!(moved(Drop::ClientFlowLimit.slot()), 4, "{deltas}");
    assert_eq!(moved(Drop::VipFlowLimit.slot()), 0, "{deltas}");
    let limited = |vip: &str| {
        let id: VipId = vip.parse().unwrap();
        let l = lab.core.vip(&id).unwrap().limited(lab.core.dataplane());
        (l.vip, l.client)
    };
    assert_eq!(limited(&format!("{VIP}:80/tcp")), (0, 3));
    assert_eq!(limited("[fd00:1::1]:80/tcp"), (0, 1));

    // Lifted: the greedy client's next new flow passes at once.
    let id: VipId = format!("{VIP}:80/tcp").parse().unwrap();
    lab.core
        .set_client_flow_rate_limit(&id, None)
        .expect("lift the limit");
    tunnelled_to(&mut lab.ebpf, &from("198.18.0.66", 40_010, syn), lb);
}

/// On a `stateless` VIP every packet is a new flow: a per-client limit is a per-client
/// query rate, whatever the queries' ports.
#[test]
fn a_stateless_vips_client_limit_counts_each_query() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let cfg = format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [
            {{"address": "{VIP}", "port": 53, "protocol": "udp", "stateless": true,
              "client_flow_rate_limit": 3, "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
    );
    let mut lab = Lab::new(&cfg);
    let query = |client: &str, sport: u16| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4(client), v4(VIP))
            .udp(sport, 53)
            .payload(b"query")
            .build()
    };
    // The same 5-tuple four times, then a new port: one client's fourth and fifth queries.
    let verdicts: Vec<u32> = [40_000, 40_000, 40_000, 40_000, 40_001]
        .iter()
        .map(|&p| lab.run(&query("198.18.0.66", p)).verdict)
        .collect();
    assert_eq!(verdicts, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
    assert_eq!(lab.run(&query("198.18.0.67", 40_000)).verdict, XDP_TX);
}
