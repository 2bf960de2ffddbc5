//! test_run: settings a reload changes in place (`mtu`, `record_rate_limit`, `icmp_too_big`) take
//! effect on the next packet, through the daemon's reload path and the real program: the
//! reload writes the data plane's config, which the program reads on every packet.

use std::time::{Duration, Instant};

use lb_common::counters::{Drop, Event};
use xlb::{
    config::Config,
    daemon::state::Daemon,
    dataplane::Counters,
    reload::{Setting, Step},
};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const VIP: &str = "198.18.1.1";

/// One Maglev VIP with three backends, and the given top-level fields (an MTU of 1500
/// unless they set one).
fn config(top: &str) -> String {
    let mtu = if top.contains("\"mtu\"") {
        ""
    } else {
        r#""mtu": 1500,"#
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, {mtu} {top} "vips": [
            {{"address": "{VIP}", "port": 80, "protocol": "tcp",
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}},
                           {{"address": "198.18.0.13"}}]}}]}}"#
    )
}

/// A daemon over a lab started from `file`, and the lab's program.
fn daemon(file: &str) -> (Daemon, aya::Ebpf) {
    let (d, ebpf) = Lab::new(file).into_daemon();
    let started = Config::from_json(file).expect("valid config");
    (d.with_globals(&started, LAB_MTU), ebpf)
}

/// Reloads `file` and returns the steps taken.
#[track_caller]
fn reload(d: &mut Daemon, file: &str) -> Vec<Step> {
    d.reload(&Config::from_json(file).expect("valid config"))
        .expect("reload applies")
}

fn syn(sport: u16) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .tcp(sport, 80)
        .syn()
        .build()
}

/// A client's TCP segment of `ip_len` bytes with DF set.
fn packet_of(ip_len: usize) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4("198.18.0.10"), v4(VIP))
        .df(true)
        .tcp(31337, 80)
        .ack()
        .payload(&vec![0x5a; ip_len - 40])
        .build()
}

/// Runs `frame`: its verdict, and whether it was answered with ICMP, dropped as too big.
fn too_big(d: &Daemon, ebpf: &mut aya::Ebpf, frame: &[u8]) -> (u32, u64, u64) {
    let before = counters(d);
    let out = run_balancer(ebpf, frame);
    let after = counters(d);
    let moved = |slot: u32| after[slot as usize] - before[slot as usize];
    (
        out.verdict,
        moved(Event::IcmpTooBigSent.slot()),
        moved(Drop::TooBig.slot()),
    )
}

fn counters(d: &Daemon) -> Vec<u64> {
    d.core().dataplane().reasons()
}

/// New flows on this CPU: how many were recorded and how many went unrecorded.
fn record_new_flows(d: &Daemon, ebpf: &mut aya::Ebpf, ports: std::ops::Range<u16>) -> (u64, u64) {
    let before = counters(d);
    for p in ports {
        tunnelled_to(ebpf, &syn(p), LB.parse().unwrap());
    }
    let after = counters(d);
    let moved = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
    (moved(Event::NewFlow), moved(Event::FlowNotRecorded))
}

/// A running balancer without a limit gets one by reload: within a second, the CPU records
/// that many new flows and forwards the rest by hash; reloaded back to no limit, it records
/// them all again. The rate is per CPU, so the thread is pinned; a run slower than half a
/// second (the limit's window is one) is repeated rather than judged.
#[test]
fn a_reloaded_record_rate_limit_applies_to_the_next_new_flow() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let unlimited = config(r#""record_rate_limit": 0,"#);
    let limited = config(r#""record_rate_limit": 2,"#);
    for _ in 0..3 {
        let (mut d, mut ebpf) = daemon(&unlimited);
        assert_eq!(record_new_flows(&d, &mut ebpf, 40_000..40_004), (4, 0));

        let start = Instant::now();
        assert_eq!(
            reload(&mut d, &limited),
            [Step::Setting(Setting::RecordRateLimit(2))]
        );
        let over = record_new_flows(&d, &mut ebpf, 40_100..40_105);
        if start.elapsed() >= Duration::from_millis(500) {
            continue;
        }
        assert_eq!(over, (2, 3), "recorded, unrecorded under a limit of 2");

        assert_eq!(
            reload(&mut d, &unlimited),
            [Step::Setting(Setting::RecordRateLimit(0))]
        );
        assert_eq!(record_new_flows(&d, &mut ebpf, 40_200..40_205), (5, 0));
        // The running config says what is in force; reloading the same file changes nothing.
        assert_eq!(d.running_config().record_rate_limit(), 0);
        assert_eq!(reload(&mut d, &unlimited), []);
        return;
    }
    panic!("three runs of a few packets took over half a second each");
}

/// `icmp_too_big` turned off by reload: the packet that was answered with "fragmentation
/// needed" is now dropped and counted `too_big`; turned on again, answered again. A dry run
/// changes nothing.
#[test]
fn a_reloaded_icmp_too_big_switches_between_answering_and_dropping() {
    if !require_root() {
        return;
    }
    let answering = config("");
    let dropping = config(r#""icmp_too_big": false,"#);
    let (mut d, mut ebpf) = daemon(&answering);
    // 1500 bytes with DF: 1520 once encapsulated, over the MTU of 1500.
    let big = packet_of(1500);
    let run = |d: &Daemon, ebpf: &mut aya::Ebpf| too_big(d, ebpf, &big);
    assert_eq!(run(&d, &mut ebpf), (XDP_TX, 1, 0), "answered at start");

    let planned = d
        .plan_reload(&Config::from_json(&dropping).unwrap())
        .unwrap();
    assert_eq!(planned, [Step::Setting(Setting::IcmpTooBig(false))]);
    assert_eq!(run(&d, &mut ebpf), (XDP_TX, 1, 0), "a dry run changed it");

    assert_eq!(
        reload(&mut d, &dropping),
        [Step::Setting(Setting::IcmpTooBig(false))]
    );
    assert_eq!(
        run(&d, &mut ebpf),
        (XDP_DROP, 0, 1),
        "dropped after the reload"
    );
    assert!(!d.running_config().icmp_too_big);

    assert_eq!(
        reload(&mut d, &answering),
        [Step::Setting(Setting::IcmpTooBig(true))]
    );
    assert_eq!(run(&d, &mut ebpf), (XDP_TX, 1, 0), "answered again");
}

/// A reloaded MTU applies to the next packet: 1400 bytes fit a tunnel under 1500 and are
/// answered with "fragmentation needed" under 1400; a file without `mtu` goes back to the
/// interface's (the lab's 1500).
#[test]
fn a_reloaded_mtu_applies_to_the_next_packet() {
    if !require_root() {
        return;
    }
    let (mut d, mut ebpf) = daemon(&config(""));
    let segment = packet_of(1400);
    let tx = Event::TxEncap.slot();
    let forwarded = |d: &Daemon, ebpf: &mut aya::Ebpf| {
        let before = counters(d)[tx as usize];
        let out = run_balancer(ebpf, &segment);
        (out.verdict, counters(d)[tx as usize] - before)
    };
    assert_eq!(forwarded(&d, &mut ebpf), (XDP_TX, 1), "fits under 1500");

    let smaller = config(r#""mtu": 1400,"#);
    assert_eq!(
        reload(&mut d, &smaller),
        [Step::Setting(Setting::Mtu {
            file: Some(1400),
            bytes: 1400
        })]
    );
    assert_eq!(
        too_big(&d, &mut ebpf, &segment),
        (XDP_TX, 1, 0),
        "answered under 1400"
    );

    let interface = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
        {"address": "198.18.1.1", "port": 80, "protocol": "tcp",
         "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"},
                      {"address": "198.18.0.13"}]}]}"#;
    assert_eq!(
        reload(&mut d, interface),
        [Step::Setting(Setting::Mtu {
            file: None,
            bytes: LAB_MTU
        })]
    );
    assert_eq!(forwarded(&d, &mut ebpf), (XDP_TX, 1), "fits again");
}
