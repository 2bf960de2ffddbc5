//! test_run: the per-CPU flow cache in front of the connection tables serves known flows
//! from their first packet after the one that recorded them, goes back to the table every
//! `FLOW_CACHE_REFRESH` packets, and never keeps a flow on a backend the table check would
//! refuse.
//!
//! The cache is per CPU, so every test pins its thread to one CPU first: test_run runs
//! the program on the calling CPU.

use std::net::IpAddr;

use aya::maps::HashMap;
use lb_common::{
    counters::Event,
    flow::FlowKeyV4,
    maps::{ConnEntry, FLOW_CACHE_REFRESH, MAP_CONNS_V4},
};
use xlb::config::VipId;
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const WEB3: &str = r#"{"outer_source": {"v4": "198.18.0.2", "v6": "fd00::2"}, "vips": [
    {"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"}, {"address": "198.18.0.13"}]},
    {"address": "fd00:1::1", "port": 80, "protocol": "tcp", "backends": [
        {"address": "fd00::11"}, {"address": "fd00::12"}]},
    {"address": "198.18.1.2", "port": 80, "protocol": "tcp", "scheduler": "lc", "backends": [
        {"address": "198.18.0.11"}, {"address": "198.18.0.12"}]}]}"#;
const WEB: &str = "198.18.1.1:80/tcp";
/// The least-connection VIP of [`WEB3`].
const LC_VIP: &str = "198.18.1.2";
const CLIENT: &str = "198.18.0.10";
const SPORT: u16 = 40_000;
const TCP: u8 = 6;

/// A lab on [`WEB3`], with this thread pinned to its CPU; `None` without root.
fn lab() -> Option<Lab> {
    if !require_root() {
        return None;
    }
    pin_to_this_cpu();
    Some(Lab::new(WEB3))
}

fn tcp4() -> Pkt {
    tcp4_from(SPORT)
}

fn tcp4_from(sport: u16) -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4("198.18.1.1"))
        .tcp(sport, 80)
}

fn tcp4_to_lc() -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4(LC_VIP))
        .tcp(SPORT, 80)
}

fn data() -> Vec<u8> {
    tcp4().ack().payload(b"data").build()
}

fn key() -> FlowKeyV4 {
    key_from(SPORT)
}

fn key_from(sport: u16) -> FlowKeyV4 {
    FlowKeyV4::of(&flow(
        CLIENT.parse().unwrap(),
        sport,
        "198.18.1.1".parse().unwrap(),
        80,
        TCP,
    ))
}

/// Counter moves of one packet: (conn_hit, flow_cache_hit, new_flow, conn_repick).
#[derive(Debug, PartialEq, Eq)]
struct Moves {
    table_or_cache_hit: u64,
    cache_hit: u64,
    new_flow: u64,
    repick: u64,
}

/// Runs `frame`, asserts it was forwarded and returns the backend (the outer destination,
/// IPv4 or IPv6) and the counter moves.
#[track_caller]
fn send(lab: &mut Lab, frame: &[u8]) -> (Vec<u8>, Moves) {
    let before = lab.counters();
    let out = lab.run(frame);
    assert_eq!(out.verdict, XDP_TX, "not forwarded");
    let after = lab.counters();
    let d = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
    let outer_v6 = out.frame[12..14] == [0x86, 0xdd];
    let backend = if outer_v6 {
        out.frame[38..54].to_vec()
    } else {
        out.frame[30..34].to_vec()
    };
    (
        backend,
        Moves {
            table_or_cache_hit: d(Event::ConnHit),
            cache_hit: d(Event::FlowCacheHit),
            new_flow: d(Event::NewFlow),
            repick: d(Event::ConnRepick),
        },
    )
}

fn moves(table_or_cache_hit: u64, cache_hit: u64, new_flow: u64, repick: u64) -> Moves {
    Moves {
        table_or_cache_hit,
        cache_hit,
        new_flow,
        repick,
    }
}

/// A new flow, whose record fills the cache: returns the flow's backend.
#[track_caller]
fn cached_flow(lab: &mut Lab) -> Vec<u8> {
    let (backend, m) = send(lab, &tcp4().syn().build());
    assert_eq!(m, moves(0, 0, 1, 0), "the SYN is a new flow");
    backend
}

#[test]
fn known_flows_are_served_from_the_cache_and_revalidated_every_refresh() {
    let Some(mut lab) = lab() else { return };
    let backend = cached_flow(&mut lab);
    for i in 0..FLOW_CACHE_REFRESH {
        let (b, m) = send(&mut lab, &data());
        assert_eq!(
            m,
            moves(1, 1, 0, 0),
            "packet {i} after the SYN: a cache hit"
        );
        assert_eq!(b, backend);
    }
    revalidated(&mut lab, &backend, "after REFRESH packets");
}

/// The next packet goes to the table (a hit, on `backend`), which refills the cache, and
/// the one after it is a cache hit again.
#[track_caller]
fn revalidated(lab: &mut Lab, backend: &[u8], why: &str) {
    let (b, m) = send(lab, &data());
    assert_eq!(m, moves(1, 0, 0, 0), "{why}: the table again");
    assert_eq!(b, backend, "{why}: same backend");
    let (_, m) = send(lab, &data());
    assert_eq!(m, moves(1, 1, 0, 0), "{why}: refilled, the cache again");
}

/// An entry also stops serving `FLOW_CACHE_MAX_AGE` jiffies after its fill, however few
/// packets it served: a slow flow still refreshes its connection-table entry.
#[test]
fn an_entry_older_than_its_max_age_goes_back_to_the_table() {
    let Some(mut lab) = lab() else { return };
    let backend = cached_flow(&mut lab);
    let (_, m) = send(&mut lab, &data());
    assert_eq!(m, moves(1, 1, 0, 0), "fresh: a cache hit");
    // FLOW_CACHE_MAX_AGE jiffies are at most 2.5 s (HZ 100).
    std::thread::sleep(std::time::Duration::from_millis(2600));
    revalidated(&mut lab, &backend, "too old");
}

/// The LRU evicted the flow (here: the test removes it): the cache keeps the flow on its
/// backend until its next revalidation, which records the flow in the table again.
#[test]
fn an_evicted_flow_is_recorded_again_at_the_next_revalidation() {
    let Some(mut lab) = lab() else { return };
    let backend = cached_flow(&mut lab);
    let mut table: HashMap<_, FlowKeyV4, ConnEntry> =
        HashMap::try_from(lab.map(MAP_CONNS_V4)).expect("CONNS_V4 is a hash map");
    table.remove(&key()).expect("the flow is in the table");
    for _ in 0..FLOW_CACHE_REFRESH {
        let (b, m) = send(&mut lab, &data());
        assert_eq!(m, moves(1, 1, 0, 0));
        assert_eq!(b, backend);
    }
    assert!(
        table.get(&key(), 0).is_err(),
        "cache hits do not touch the table"
    );
    let (b, m) = send(&mut lab, &data());
    assert_eq!(
        m,
        moves(0, 0, 1, 0),
        "the revalidation misses and records the flow"
    );
    assert_eq!(b, backend, "Maglev gives the same backend again");
    let e = table.get(&key(), 0).expect("the flow is back in the table");
    assert_eq!(
        e.backend,
        lab.backend_index(WEB, &addr(&backend).to_string())
    );
}

/// A cached flow whose backend failed its health check, or whose slot was reused (a new
/// generation and cache epoch), is not served from the cache: the table check decides, on the very next
/// packet, and the flow moves.
#[test]
fn a_backend_change_is_seen_on_the_next_packet_despite_the_cache() {
    type Change = fn(&mut Lab, &[u8]);
    let cases: [(&str, Change); 2] = [
        ("backend dead", |lab, backend| {
            let id: VipId = WEB.parse().unwrap();
            lab.core
                .set_health(&id, addr(backend), false)
                .expect("health change");
        }),
        ("slot reused", |lab, backend| {
            let idx = lab.backend_index(WEB, &addr(backend).to_string());
            // What the core writes for a slot's new holder: a new generation for the
            // table, a new cache epoch for the cache (core.rs tests both).
            lab.poke_backend(idx, |b| {
                b.generation += 1;
                b.cache_epoch += 1;
            });
        }),
    ];
    for (what, change) in cases {
        let Some(mut lab) = lab() else { return };
        let backend = cached_flow(&mut lab);
        let (_, m) = send(&mut lab, &data());
        assert_eq!(m, moves(1, 1, 0, 0), "{what}: cached before the change");
        change(&mut lab, &backend);
        let before = lab.counters();
        let out = lab.run(&data());
        let after = lab.counters();
        let d = |e: Event| after[e.slot() as usize] - before[e.slot() as usize];
        assert_eq!(
            d(Event::FlowCacheHit),
            0,
            "{what}: not served from the cache"
        );
        assert_eq!(
            d(Event::ConnRepick),
            1,
            "{what}: the table check refuses the slot"
        );
        assert_eq!(out.verdict, XDP_TX, "{what}: forwarded");
        if what == "backend dead" {
            assert_ne!(out.frame[30..34], backend, "{what}: the flow moved");
        }
    }
}

/// FIN and RST of a least-connection VIP's flow skip the cache: the accounting marks the
/// table's entry. Other VIPs' flows are served from the cache to the end.
#[test]
fn only_counted_flows_take_fin_and_rst_to_the_table() {
    let Some(mut lab) = lab() else { return };
    let backend = cached_flow(&mut lab);
    steps_on(
        &mut lab,
        &backend,
        &[
            (
                "Maglev VIP, FIN: a cache hit",
                tcp4().fin().ack(),
                moves(1, 1, 0, 0),
            ),
            (
                "Maglev VIP, RST: a cache hit",
                tcp4().rst(),
                moves(1, 1, 0, 0),
            ),
        ],
    );
    let (lc_backend, m) = send(&mut lab, &tcp4_to_lc().syn().build());
    assert_eq!(m, moves(0, 0, 1, 0), "lc VIP: the SYN is a new flow");
    steps_on(
        &mut lab,
        &lc_backend,
        &[
            (
                "lc VIP, data: a cache hit",
                tcp4_to_lc().ack(),
                moves(1, 1, 0, 0),
            ),
            (
                "lc VIP, FIN: a table hit",
                tcp4_to_lc().fin().ack(),
                moves(1, 0, 0, 0),
            ),
            (
                "lc VIP, RST: a table hit",
                tcp4_to_lc().rst(),
                moves(1, 0, 0, 0),
            ),
            (
                "lc VIP, data: the cache again",
                tcp4_to_lc().ack(),
                moves(1, 1, 0, 0),
            ),
        ],
    );
}

/// Sends each step's packet in turn: each must give its counter moves and stay on
/// `backend`.
#[track_caller]
fn steps_on(lab: &mut Lab, backend: &[u8], steps: &[(&str, Pkt, Moves)]) {
    for (what, pkt, want) in steps {
        let (b, m) = send(lab, &pkt.clone().build());
        assert_eq!(&m, want, "{what}");
        assert_eq!(b, backend, "{what}: same backend");
    }
}

/// IPv6 flows have their own cache (40-byte keys) with the same rules: filled when the flow
/// is recorded (and by table hits), then serving, and an IPv4 flow never hits an IPv6 entry
/// or the reverse.
#[test]
fn ipv6_flows_are_cached_too() {
    let Some(mut lab) = lab() else { return };
    let v6 = Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6("fd00::10"), v6("fd00:1::1"))
        .tcp(SPORT, 80);
    let (first, m) = send(&mut lab, &v6.clone().syn().build());
    assert_eq!(m, moves(0, 0, 1, 0), "IPv6 SYN: a new flow, cached");
    for _ in 0..3 {
        let (b, m) = send(&mut lab, &v6.clone().ack().build());
        assert_eq!(m, moves(1, 1, 0, 0), "IPv6: cache hits");
        assert_eq!(b, first);
    }
    // The IPv4 flow with the same ports is its own flow in its own cache.
    let (_, m) = send(&mut lab, &tcp4().syn().build());
    assert_eq!(m, moves(0, 0, 1, 0), "the IPv4 flow is new");
    let (_, m) = send(&mut lab, &v6.clone().fin().ack().build());
    assert_eq!(m, moves(1, 1, 0, 0), "IPv6 FIN: a cache hit");
}

/// `xlb run --no-flow-cache`: the cache maps keep only their unused entry 0, and every
/// packet of a known flow is a table hit. The flow is the one whose set is CPU 0's first,
/// the entry right after the unused one, and the test runs on CPU 0: an index off by one
/// would cache it.
#[test]
fn without_the_cache_every_known_flows_packet_is_a_table_hit() {
    use lb_common::{flow_cache, maps::FLOW_CACHE_SET_BITS};
    if !require_root() {
        return;
    }
    pin_to(0);
    // The lowest entry any port reaches on CPU 0: its first set.
    let sport = (1024..=u16::MAX)
        .min_by_key(|&p| {
            flow_cache::entry(&flow_cache::key_v4(&key_from(p)), 0, FLOW_CACHE_SET_BITS)
        })
        .expect("ports to choose from");
    let opts = xlb::loader::LoadOptions {
        flow_cache: false,
        ..Lab::options()
    };
    let mut lab = Lab::with_options(WEB3, opts);
    let (backend, m) = send(&mut lab, &tcp4_from(sport).syn().build());
    assert_eq!(m, moves(0, 0, 1, 0), "the SYN is a new flow");
    let data = tcp4_from(sport).ack().payload(b"data").build();
    for _ in 0..FLOW_CACHE_REFRESH + 2 {
        let (b, m) = send(&mut lab, &data);
        assert_eq!(m, moves(1, 0, 0, 0));
        assert_eq!(b, backend);
    }
}

/// An outer destination from [`send`] as an address.
fn addr(b: &[u8]) -> IpAddr {
    match b.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes")),
        _ => IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes")),
    }
}

/// A flow on a backend that takes no new flows (drained here) is served from the table on
/// every packet: a SYN reusing its 5-tuple may move it elsewhere, on whichever CPU, and
/// only the table would know. Back in the table, the backend has a new cache epoch, so
/// copies cached before the drain are not served either: the first packet after goes to
/// the table and refills the cache.
#[test]
fn a_backend_out_of_the_table_is_served_from_the_table_until_it_is_back() {
    let Some(mut lab) = lab() else { return };
    let backend = cached_flow(&mut lab);
    assert_eq!(send(&mut lab, &data()).1, moves(1, 1, 0, 0), "cached");
    let id: VipId = WEB.parse().unwrap();
    lab.core
        .set_drained(&id, addr(&backend), true)
        .expect("drain");
    for _ in 0..3 {
        let (b, m) = send(&mut lab, &data());
        assert_eq!(b, backend, "a drained backend keeps its flows");
        assert_eq!(m, moves(1, 0, 0, 0), "from the table, not the cache");
    }
    lab.core
        .set_drained(&id, addr(&backend), false)
        .expect("undrain");
    let (b, m) = send(&mut lab, &data());
    assert_eq!(b, backend);
    assert_eq!(m, moves(1, 0, 0, 0), "the copy from before is not served");
    assert_eq!(send(&mut lab, &data()).1, moves(1, 1, 0, 0), "refilled");
}
