//! test_run: the bench-only `CONFIG` flags that let repeat mode reuse one buffer. With
//! `CFG_F_BENCH_RESTORE` the balancer undoes its encapsulation and drops, leaving the input
//! frame with the next hop's Ethernet header; with `CFG_F_BENCH_NEW_FLOWS` as well, the
//! client port's raw halfword is one higher, so the next run is the next flow. The bench's
//! figures rest on both (it also checks the counters after every repeat run).

use lb_common::{
    counters::Event,
    maps::{CFG_F_BENCH_NEW_FLOWS, CFG_F_BENCH_RESTORE},
};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const WEB: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "udp", "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"}]},
    {"address": "fd00:1::1", "port": 80, "protocol": "udp", "backends": [
        {"address": "fd00::11"}, {"address": "fd00::12"}]}]}"#;

/// Offset of the UDP source port: Ethernet, then a 20-byte IPv4 or 40-byte IPv6 header.
const SPORT_V4: usize = 14 + 20;
const SPORT_V6: usize = 14 + 40;

/// `frame` with the next hop's MACs, as the restore leaves it.
fn with_next_hop_l2(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[..6].copy_from_slice(&NEXTHOP_MAC);
    out[6..12].copy_from_slice(&LB_MAC);
    out
}

/// Runs `frame`, checks the verdict and returns the output and the counter moves of
/// (new_flow, tx_encap).
#[track_caller]
fn run(lab: &mut Lab, frame: &[u8]) -> (Vec<u8>, (u64, u64)) {
    let before = lab.counters();
    let out = lab.run(frame);
    let after = lab.counters();
    assert_eq!(out.verdict, XDP_DROP, "restored frames are dropped");
    let d = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
    (out.frame, (d(Event::NewFlow), d(Event::TxEncap)))
}

#[test]
fn the_restore_gives_back_the_input_and_new_flows_bump_the_client_port() {
    if !require_root() {
        return;
    }
    let udp = |ip: Pkt| ip.udp(0x0304, 80).payload(b"bench").build();
    let cases = [
        (
            "IPv4",
            udp(Pkt::eth(CLIENT_MAC, LB_MAC).ipv4(v4("198.18.0.10"), v4("198.18.1.1"))),
            SPORT_V4,
        ),
        (
            "IPv6",
            udp(Pkt::eth(CLIENT_MAC, LB_MAC).ipv6(v6("fd00::10"), v6("fd00:1::1"))),
            SPORT_V6,
        ),
    ];
    for (what, input, sport) in cases {
        let mut lab = Lab::new(WEB);
        lab.poke_config(|c| c.flags |= CFG_F_BENCH_RESTORE);
        let (out, moves) = run(&mut lab, &input);
        assert_eq!(
            out,
            with_next_hop_l2(&input),
            "{what}: restored byte for byte"
        );
        assert_eq!(moves, (1, 1), "{what}: a new flow, encapsulated");
        let (again, moves) = run(&mut lab, &out);
        assert_eq!(again, out, "{what}: the same frame again");
        assert_eq!(moves, (0, 1), "{what}: now a known flow");

        lab.poke_config(|c| c.flags |= CFG_F_BENCH_NEW_FLOWS);
        let mut frame = out;
        for i in 0..3u16 {
            let (next, moves) = run(&mut lab, &frame);
            // The raw halfword (network order read as little-endian) plus one: the port's
            // high byte, 0x03 here, goes up by one.
            let mut want = frame.clone();
            want[sport] = 0x04 + i as u8;
            assert_eq!(next, want, "{what}: run {i}: only the client port changed");
            assert_eq!(
                moves.0,
                u64::from(i != 0),
                "{what}: run {i}: new flow count"
            );
            frame = next;
        }
    }
}
