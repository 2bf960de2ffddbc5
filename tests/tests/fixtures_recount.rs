//! The daemon's recount of least-connection counts from the connection tables, on the real
//! data path: flows the kernel evicts while open, or that go idle, leave the count at the
//! next recount (idle ones count again when they send), and what the data plane counts
//! meanwhile is kept. Also the batch scan under it: every entry
//! once, across batches; and the stamp every flow gets on its table visits, which dates
//! `xlb flows`' idle times.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::HashMap as BpfHashMap;
use lb_common::{
    flow::{FlowKey, FlowKeyV4},
    maps::{ConnEntry, MAP_CONNS, MAP_CONNS_V4},
};
use xlb::{
    conntable::{monotonic_coarse_s, IDLE_TCP_S},
    daemon::state::{idle_timeouts, CountedSlot, Daemon},
    loader::LoadOptions,
};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LC: &str = r#"{"outer_source": {"v4": "198.18.0.2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "scheduler": "lc",
     "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]},
    {"address": "198.18.1.1", "port": 443, "protocol": "tcp",
     "backends": [{"address": "198.18.0.11"}, {"address": "198.18.0.12"}]}]}"#;
const CLIENT: &str = "198.18.0.10";

fn pkt(sport: u16) -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4("198.18.1.1"))
        .tcp(sport, 80)
}

fn key(sport: u16) -> FlowKeyV4 {
    key_to(sport, 80)
}

/// The table key of the client's flow from `sport` to the VIP's `dport`.
fn key_to(sport: u16, dport: u16) -> FlowKeyV4 {
    FlowKeyV4::of(&flow(
        CLIENT.parse().unwrap(),
        sport,
        "198.18.1.1".parse().unwrap(),
        dport,
        6,
    ))
}

fn run(ebpf: &mut aya::Ebpf, frame: &[u8]) {
    let prog = xlb::loader::xdp(ebpf, xlb::loader::BALANCER_PROG).expect("program");
    let out = xlb::testrun::run(prog, frame).expect("test_run");
    assert_eq!(out.verdict, XDP_TX);
}

/// The lc VIP's backend slots, in address order.
fn lc_slots(lab: &Lab) -> [u32; 2] {
    ["198.18.0.11", "198.18.0.12"].map(|a| lab.backend_index("198.18.1.1:80/tcp", a))
}

/// A second handle on the IPv4 connection table, to evict or age entries as the kernel
/// and time would.
fn conns_v4(ebpf: &mut aya::Ebpf) -> BpfHashMap<aya::maps::MapData, FlowKeyV4, ConnEntry> {
    let prog = xlb::loader::xdp(ebpf, xlb::loader::BALANCER_PROG).expect("program");
    BpfHashMap::try_from(prog_map(prog, MAP_CONNS_V4)).expect("CONNS_V4")
}

/// The first half of a recount as the daemon's task makes it: the slots, then the scan.
fn scan(d: &Daemon) -> (Vec<CountedSlot>, HashMap<(u32, u32), u64>) {
    let slots = d.counted_slots();
    let tally = d
        .core()
        .dataplane()
        .conn_tables()
        .open_counted(&idle_timeouts(&slots))
        .expect("scan");
    (slots, tally)
}

/// One whole recount: slots, scan, write.
fn recount(d: &mut Daemon) -> (usize, i64) {
    let (slots, tally) = scan(d);
    d.apply_recount(&slots, &tally)
}

/// A daemon on `config` without the flow cache (every packet visits the table, as a
/// sending flow does at least once per cache age), with four lc flows opened from client
/// ports `first..first + 4`; its program, and the lc backends' slots.
fn four_lc_flows(config: &str, first: u16) -> (Daemon, aya::Ebpf, [u32; 2]) {
    let lab = uncached(config);
    let idx = lc_slots(&lab);
    let (d, mut ebpf) = lab.into_daemon();
    for sport in first..first + 4 {
        run(&mut ebpf, &pkt(sport).syn().build());
    }
    assert_eq!(
        counts(&d, &idx).iter().sum::<u64>(),
        4,
        "four flows counted"
    );
    (d, ebpf, idx)
}

/// A lab on `config` without the flow cache: every packet visits the table.
fn uncached(config: &str) -> Lab {
    Lab::with_options(
        config,
        LoadOptions {
            flow_cache: false,
            ..Lab::options()
        },
    )
}

/// Makes the table entry of the flow from client port `sport` (to port 80) last seen
/// `ago_s` seconds ago.
fn age(conns: &mut BpfHashMap<aya::maps::MapData, FlowKeyV4, ConnEntry>, sport: u16, ago_s: u32) {
    age_key(conns, key(sport), ago_s);
}

/// Makes the table entry under `k` last seen `ago_s` seconds ago.
fn age_key(
    conns: &mut BpfHashMap<aya::maps::MapData, FlowKeyV4, ConnEntry>,
    k: FlowKeyV4,
    ago_s: u32,
) {
    let mut e = conns.get(&k, 0).expect("recorded flow");
    // The clock counts from boot: on a machine up for less than `ago_s` the stamp wraps,
    // as the recount's arithmetic does.
    e.seen_s = monotonic_coarse_s().wrapping_sub(ago_s);
    conns.insert(k, e, 0).expect("age the entry");
}

/// Active-flow counts of both backends, in address order.
fn counts(d: &Daemon, idx: &[u32; 2]) -> [u64; 2] {
    idx.map(|i| d.core().dataplane().active_flows(i))
}

#[test]
fn evicted_open_flows_leave_the_count_at_the_next_recount() {
    if !require_root() {
        return;
    }
    // One CPU: the flow cache is per CPU, and the FIN below must meet the flow it closes.
    pin_to_this_cpu();
    let lab = Lab::new(LC);
    let idx = lc_slots(&lab);
    let (mut d, mut ebpf) = lab.into_daemon();
    for sport in 41_000..41_010u16 {
        run(&mut ebpf, &pkt(sport).syn().build());
    }
    // A flow on a plain Maglev VIP is recorded but never counted.
    run(
        &mut ebpf,
        &Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4(CLIENT), v4("198.18.1.1"))
            .tcp(41_000, 443)
            .syn()
            .build(),
    );
    let opened = counts(&d, &idx);
    assert_eq!(
        opened.iter().sum::<u64>(),
        10,
        "ten SYNs counted: {opened:?}"
    );
    run(&mut ebpf, &pkt(41_000).fin().ack().build());

    // The kernel evicts three open flows' entries (LRU, silently): the data plane's count
    // cannot see it.
    let mut conns = conns_v4(&mut ebpf);
    let mut evicted = [0u64; 2];
    for sport in 41_001..41_004u16 {
        let e = conns.get(&key(sport), 0).expect("recorded flow");
        evicted[idx
            .iter()
            .position(|&i| i == e.backend)
            .expect("lc backend")] += 1;
        conns.remove(&key(sport)).expect("evict");
    }
    let drifted = counts(&d, &idx);
    assert_eq!(
        drifted.iter().sum::<u64>(),
        9,
        "evictions go unseen: {drifted:?}"
    );

    // The recount: slots read, then the scan; a flow opened between the scan and the
    // write is the data plane's own +1 and must survive the correction.
    let (slots, tally) = scan(&d);
    assert_eq!(slots.len(), 2, "only the lc VIP's backends are recounted");
    run(&mut ebpf, &pkt(41_100).syn().build());
    let late = conns.get(&key(41_100), 0).expect("late flow").backend;
    let (written, drift) = d.apply_recount(&slots, &tally);
    assert_eq!(written, 2.min(evicted.iter().filter(|&&n| n > 0).count()));
    assert_eq!(drift, 3, "the three evicted flows");
    let mut want = [drifted[0] - evicted[0], drifted[1] - evicted[1]];
    want[idx.iter().position(|&i| i == late).expect("lc backend")] += 1;
    assert_eq!(counts(&d, &idx), want, "evicted out, the late flow kept");
    // Operators see the corrected counts; the Maglev VIP has none.
    let text = xlb::daemon::metrics::render(&d);
    for (addr, n) in ["198.18.0.11", "198.18.0.12"].iter().zip(want) {
        let line = format!(
            "xlb_backend_active_flows{{vip=\"198.18.1.1:80/tcp\",backend=\"{addr}\"}} {n}\n"
        );
        assert!(text.contains(&line), "metrics lack {line:?}:\n{text}");
    }
    assert!(!text.contains("xlb_backend_active_flows{vip=\"198.18.1.1:443/tcp\""));

    // A second recount with nothing changed writes nothing.
    assert_eq!(recount(&mut d), (0, 0));
    assert_eq!(counts(&d, &idx), want);
}

#[test]
fn a_recount_leaves_a_backend_removed_during_the_scan_alone() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let (mut d, mut ebpf) = Lab::new(LC).into_daemon();
    for sport in 42_000..42_008u16 {
        run(&mut ebpf, &pkt(sport).syn().build());
    }
    // One open flow evicted: its backend's count drifts by one.
    let mut conns = conns_v4(&mut ebpf);
    let gone = conns.get(&key(42_000), 0).expect("recorded flow").backend;
    conns.remove(&key(42_000)).expect("evict");
    let (slots, tally) = scan(&d);
    // That backend leaves during the scan: its slot is no longer the recount's to write
    // (the removal cleared it, and it stays so until the slot's next holder).
    let web: xlb::config::VipId = "198.18.1.1:80/tcp".parse().unwrap();
    let addr = d
        .core()
        .vip(&web)
        .expect("vip")
        .backends
        .iter()
        .find(|(_, b)| b.index == gone)
        .map(|(a, _)| *a)
        .expect("backend of the evicted flow");
    d.remove_backend(&web, addr).expect("remove backend");
    let removed = d.core().dataplane().active_counter(gone);
    assert_eq!(d.apply_recount(&slots, &tally), (0, 0));
    assert_eq!(d.core().dataplane().active_counter(gone), removed);
}

#[test]
fn idle_flows_stop_counting_and_count_again_when_they_send() {
    if !require_root() {
        return;
    }
    let (mut d, mut ebpf, idx) = four_lc_flows(LC, 43_000);
    let total = |d: &Daemon| counts(d, &idx).iter().sum::<u64>();
    let mut conns = conns_v4(&mut ebpf);
    let now = monotonic_coarse_s();
    let e = conns.get(&key(43_000), 0).expect("recorded flow");
    assert!(
        now.abs_diff(e.seen_s) <= 2,
        "recorded with the clock's time: {} against {now}",
        e.seen_s
    );
    // Silent for longer than TCP's idle timeout.
    age(&mut conns, 43_000, IDLE_TCP_S + 10);
    assert_eq!(recount(&mut d), (1, 1), "the idle flow leaves its count");
    assert_eq!(total(&d), 3);
    // It sends again: the table visit stamps it, and the next recount counts it again.
    run(&mut ebpf, &pkt(43_000).ack().payload(b"more").build());
    let e = conns.get(&key(43_000), 0).expect("recorded flow");
    assert!(now.abs_diff(e.seen_s) <= 2, "stamped again: {}", e.seen_s);
    assert_eq!(recount(&mut d), (1, -1));
    assert_eq!(total(&d), 4);
}

#[test]
fn a_vips_idle_timeout_replaces_the_protocols() {
    if !require_root() {
        return;
    }
    // The lc VIP's clients hold idle connections for up to an hour.
    let config = LC.replacen(
        r#""scheduler": "lc","#,
        r#""scheduler": "lc", "idle_timeout_s": 3600,"#,
        1,
    );
    let (mut d, mut ebpf, idx) = four_lc_flows(&config, 44_000);
    assert!(
        d.counted_slots().iter().all(|s| s.idle_s == 3600),
        "{:?}",
        d.counted_slots()
    );
    // Operators see it on the counting VIP only.
    let status = d.status(None);
    let timeouts: Vec<(String, serde_json::Value)> = status["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .map(|v| (v["vip"].to_string(), v["idle_timeout_s"].clone()))
        .collect();
    assert_eq!(
        timeouts,
        [
            ("\"198.18.1.1:80/tcp\"".to_owned(), serde_json::json!(3600)),
            ("\"198.18.1.1:443/tcp\"".to_owned(), serde_json::Value::Null),
        ],
    );
    let total = |d: &Daemon| counts(d, &idx).iter().sum::<u64>();
    let mut conns = conns_v4(&mut ebpf);
    // Past TCP's default but within the VIP's own timeout: still counted.
    age(&mut conns, 44_000, IDLE_TCP_S + 10);
    assert_eq!(recount(&mut d), (0, 0), "within the VIP's idle timeout");
    assert_eq!(total(&d), 4);
    // Past the VIP's: out of the count.
    age(&mut conns, 44_001, 3600 + 10);
    assert_eq!(recount(&mut d), (1, 1), "past the VIP's idle timeout");
    assert_eq!(total(&d), 3);
}

#[test]
fn the_batch_scan_reads_every_entry_once() {
    if !require_root() {
        return;
    }
    // Room for every entry on any one CPU (per-CPU LRU lists split the table).
    let lab = Lab::with_options(
        LC,
        LoadOptions {
            max_conns: 1 << 16,
            ..Lab::options()
        },
    );
    let (d, mut ebpf) = lab.into_daemon();
    let prog = xlb::loader::xdp(&mut ebpf, xlb::loader::BALANCER_PROG).expect("program");
    let mut v4: BpfHashMap<_, FlowKeyV4, ConnEntry> =
        BpfHashMap::try_from(prog_map(prog, MAP_CONNS_V4)).expect("CONNS_V4");
    let mut v6: BpfHashMap<_, FlowKey, ConnEntry> =
        BpfHashMap::try_from(prog_map(prog, MAP_CONNS)).expect("CONNS");
    // More than two batches of IPv4 entries, a few IPv6 ones.
    let n4 = 10_000u32;
    let mut want: HashMap<u32, u64> = HashMap::new();
    for i in 0..n4 {
        let k = FlowKeyV4::of(&flow(
            IpAddr::V4(v4_of(i)),
            (i % 50_000) as u16 + 1024,
            "198.18.1.1".parse().unwrap(),
            80,
            6,
        ));
        let backend = 1 + i % 7;
        v4.insert(k, entry(backend), 0).expect("insert v4");
        *want.entry(backend).or_insert(0) += 1;
    }
    for i in 0..100u16 {
        let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100 + i);
        let k = flow(IpAddr::V6(src), 40_000, "fd00::1:1".parse().unwrap(), 80, 6);
        v6.insert(k, entry(9), 0).expect("insert v6");
        *want.entry(9).or_insert(0) += 1;
    }
    let tables = d.core().dataplane().conn_tables();
    let mut seen = 0u64;
    let total = tables.for_each(|_| seen += 1).expect("scan");
    assert_eq!((total, seen), (u64::from(n4) + 100, u64::from(n4) + 100));
    assert_eq!(tables.flows_per_backend().expect("scan"), want);
}

/// Distinct client addresses in 198.18.128.0/17.
fn v4_of(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(v4("198.18.128.0")) + i)
}

fn entry(backend: u32) -> ConnEntry {
    ConnEntry {
        backend,
        generation: 1,
        ..Default::default()
    }
}

/// Flows that leave a backend that went down take their counts with them on their next
/// packet, without waiting for a recount; a flow its client closed before is not taken back
/// twice, and the counts stay true when the backend comes back.
#[test]
fn counted_flows_moving_off_a_down_backend_take_their_counts_back() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(LC);
    let idx = lc_slots(&lab);
    let id: xlb::config::VipId = "198.18.1.1:80/tcp".parse().unwrap();
    let ports: Vec<u16> = (7000..7008).collect();
    for &p in &ports {
        run(&mut lab.ebpf, &pkt(p).syn().build());
    }
    let on = |lab: &mut Lab, p: u16| {
        conns_v4(&mut lab.ebpf)
            .get(&key(p), 0)
            .expect("recorded flow")
            .backend
    };
    let on_first: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| on(&mut lab, p) == idx[0])
        .collect();
    assert!(
        on_first.len() >= 2,
        "lc put {} of 8 flows on the first backend",
        on_first.len()
    );
    let lab_counts = |lab: &Lab| idx.map(|i| lab.core.dataplane().active_flows(i));
    assert_eq!(
        lab_counts(&lab),
        [on_first.len() as u64, 8 - on_first.len() as u64]
    );
    // One of the first backend's flows is closed by its client: its count goes back now.
    run(&mut lab.ebpf, &pkt(on_first[0]).fin().ack().build());
    assert_eq!(lab_counts(&lab)[0], on_first.len() as u64 - 1);

    lab.core
        .set_health(&id, "198.18.0.11".parse().unwrap(), false)
        .expect("health");
    for &p in &ports {
        run(&mut lab.ebpf, &pkt(p).ack().build());
    }
    // Every flow now on the second backend, counted there once (the closed one is counted
    // again: its next packet opened a new entry); none left on the first, none below zero.
    assert!(ports.iter().all(|&p| on(&mut lab, p) == idx[1]));
    assert_eq!(lab.core.dataplane().active_counter(idx[0]), 0);
    assert_eq!(lab_counts(&lab)[1], 8);

    lab.core
        .set_health(&id, "198.18.0.11".parse().unwrap(), true)
        .expect("health");
    assert_eq!(lab_counts(&lab), [0, 8]);
}

/// Every flow's entry is stamped when recorded and on every table visit, not only
/// least-connection ones: `xlb flow` and `xlb flows` say how long any flow has been idle,
/// so an ended flow (listed until the LRU evicts it) can be told from a live one.
#[test]
fn every_flow_is_stamped_so_its_idle_time_shows() {
    if !require_root() {
        return;
    }
    let (d, mut ebpf) = uncached(LC).into_daemon();
    let to_443 = |sport: u16| {
        Pkt::eth(CLIENT_MAC, LB_MAC)
            .ipv4(v4(CLIENT), v4("198.18.1.1"))
            .tcp(sport, 443)
    };
    run(&mut ebpf, &to_443(44_000).syn().build());
    let vip = "198.18.1.1:443/tcp".parse().expect("VIP");
    let client = std::net::SocketAddr::new(CLIENT.parse().unwrap(), 44_000);
    let idle = |d: &Daemon| -> u64 {
        let f = d.flow(&vip, client).expect("flow");
        assert_eq!(f["recorded"]["counted"], false, "{f}");
        f["recorded"]["idle_s"]
            .as_u64()
            .unwrap_or_else(|| panic!("no idle time: {f}"))
    };
    assert!(idle(&d) <= 2, "stamped when recorded");
    // Silent for 500 s (the entry aged as time would age it), then a packet.
    age_key(&mut conns_v4(&mut ebpf), key_to(44_000, 443), 500);
    assert!((499..=502).contains(&idle(&d)), "{}", idle(&d));
    run(&mut ebpf, &to_443(44_000).ack().payload(b"more").build());
    assert!(idle(&d) <= 2, "stamped again on its table visit");
}
