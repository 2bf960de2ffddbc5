//! test_run: QUIC server-ID routing (`lb_common::quic`). A short-header packet of a flow the
//! connection table does not know goes to the backend its connection ID names — a client
//! that moved keeps its server — and is recorded there; long headers, other configurations,
//! IDs no usable backend has, VIPs without `quic` and TCP go by the 5-tuple as before. A
//! drained backend still gets its connections' new paths; a down one does not.

use std::net::IpAddr;

use lb_common::{counters::Event, flow::FlowKey, maps::ConnEntry};
use xlb::config::VipId;
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const VIP: &str = "198.18.1.1";
const VIP6: &str = "fd00::1:1";
const CLIENT: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::10";
const UDP: u8 = 17;
/// The QUIC VIP's port, and a plain UDP VIP's beside it (same backends, no `quic`).
const QUIC: u16 = 443;
const PLAIN: u16 = 444;
/// Backends and the server IDs they write.
const SERVERS: [(&str, u32); 3] = [
    ("198.18.0.11", 0x0101),
    ("198.18.0.12", 0x0202),
    ("198.18.0.13", 0x0303),
];

fn config(stateless: bool) -> String {
    let backends = |ids: bool| {
        SERVERS
            .iter()
            .map(|(a, id)| {
                if ids {
                    format!(r#"{{"address": "{a}", "quic_server_id": {id}}}"#)
                } else {
                    format!(r#"{{"address": "{a}"}}"#)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let quic = |addr: &str| {
        format!(
            r#"{{"address": "{addr}", "port": {QUIC}, "protocol": "udp", "stateless": {stateless},
                "quic": {{"server_id_bytes": 2, "config_id": 1}}, "backends": [{}]}}"#,
            backends(true)
        )
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [{}, {},
            {{"address": "{VIP}", "port": {PLAIN}, "protocol": "udp", "backends": [{}]}}]}}"#,
        quic(VIP),
        quic(VIP6),
        backends(false)
    )
}

/// A 1-RTT packet's payload: first byte, then an 8-byte connection ID whose first octet
/// carries configuration `config` (and five bits of the server's), then the server ID in
/// two octets and a nonce, then a packet number and what stands for the encrypted rest.
fn short_header(config: u8, server_id: u32) -> Vec<u8> {
    let [_, _, hi, lo] = server_id.to_be_bytes();
    let mut p = vec![
        0x41,
        config << 5 | 0x15,
        hi,
        lo,
        0xa1,
        0xa2,
        0xa3,
        0xa4,
        0xa5,
    ];
    p.extend_from_slice(&[0x07; 24]);
    p
}

/// An Initial packet whose destination connection ID happens to carry server ID 2 where a
/// short header's would: long headers are never read for one.
fn initial() -> Vec<u8> {
    let mut p = vec![0xc3, 0, 0, 0, 1, 8, 0x20, 0x02, 0x02, 1, 2, 3, 4, 5, 0];
    p.extend_from_slice(&[0x07; 40]);
    p
}

fn datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4(VIP))
        .udp(sport, dport)
        .payload(payload)
        .build()
}

fn datagram6(sport: u16, payload: &[u8]) -> Vec<u8> {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv6(v6(CLIENT6), v6(VIP6))
        .udp(sport, QUIC)
        .payload(payload)
        .build()
}

fn key(sport: u16, dport: u16) -> FlowKey {
    flow(
        CLIENT.parse().unwrap(),
        sport,
        VIP.parse().unwrap(),
        dport,
        UDP,
    )
}

fn vip_id(port: u16) -> String {
    format!("{VIP}:{port}/udp")
}

fn server(id: u32) -> IpAddr {
    let (a, _) = SERVERS.iter().find(|(_, s)| *s == id).unwrap();
    a.parse().unwrap()
}

/// Runs `frame`, checks the whole tunnel frame, and returns its backend.
#[track_caller]
fn backend_of(lab: &mut Lab, frame: &[u8]) -> IpAddr {
    tunnelled_to(&mut lab.ebpf, frame, LB.parse().unwrap())
}

fn recorded(lab: &mut Lab, sport: u16, dport: u16) -> Option<ConnEntry> {
    lab.recorded_v4(&key(sport, dport))
}

/// Counter deltas of `lab` over `run`.
fn counted(lab: &mut Lab, run: impl FnOnce(&mut Lab)) -> Box<dyn Fn(Event) -> u64> {
    let before = lab.counters();
    run(lab);
    let after = lab.counters();
    Box::new(move |e: Event| after[e.slot() as usize] - before[e.slot() as usize])
}

#[test]
fn a_new_path_goes_to_the_server_its_connection_id_names() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&config(false));
    let ports: Vec<u16> = (40_000..40_020).collect();
    let mut against_hash = 0;
    let moved = counted(&mut lab, |lab| {
        for &p in &ports {
            for (_, id) in SERVERS {
                // Each (port, server) a new flow: a client that moved to port p.
                let port = p + (id as u16 & 0xf) * 100;
                let got = backend_of(lab, &datagram(port, QUIC, &short_header(1, id)));
                assert_eq!(got, server(id), "port {port}, server ID {id:#x}");
                if lab.predict(&vip_id(QUIC), &key(port, QUIC)) != got {
                    against_hash += 1;
                }
                // Recorded on the named backend: the flow's next packets hit.
                let e = recorded(lab, port, QUIC).expect("recorded");
                assert_eq!(
                    e.backend,
                    lab.backend_index(&vip_id(QUIC), &got.to_string())
                );
                assert_eq!(
                    backend_of(lab, &datagram(port, QUIC, &short_header(1, id))),
                    got
                );
            }
        }
    });
    // Two of three picks by hash would land elsewhere: the ID decided, not the hash.
    assert!(
        against_hash >= 20,
        "only {against_hash} of 60 differ from the hash"
    );
    assert_eq!(moved(Event::QuicRouted), 60);
    assert_eq!(moved(Event::QuicUnknownServer), 0);
    assert_eq!(moved(Event::NewFlow), 60);
    assert_eq!(moved(Event::ConnHit), 60);

    // IPv6 (a 6in4 tunnel: the backends are IPv4).
    for (i, (_, id)) in SERVERS.iter().enumerate() {
        let frame = datagram6(41_000 + i as u16, &short_header(1, *id));
        assert_eq!(backend_of(&mut lab, &frame), server(*id), "IPv6, {id:#x}");
    }
}

#[test]
fn what_names_no_server_goes_by_the_5_tuple() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&config(false));
    let cases: Vec<(&str, u16, Vec<u8>)> = vec![
        ("an Initial (long header)", QUIC, initial()),
        (
            "another configuration (a rotation)",
            QUIC,
            short_header(2, 0x0202),
        ),
        ("0b111: an unroutable ID", QUIC, short_header(7, 0x0202)),
        ("shorter than a QUIC header", QUIC, vec![0x41, 0x20, 0x02]),
        ("a VIP without quic", PLAIN, short_header(1, 0x0202)),
    ];
    let moved = counted(&mut lab, |lab| {
        // Each case on ports of its own: every packet a new flow.
        for (i, (what, dport, payload)) in cases.iter().enumerate() {
            let base = 42_000 + 100 * i as u16;
            for p in base..base + 30 {
                let got = backend_of(lab, &datagram(p, *dport, payload));
                let want = lab.predict(&vip_id(*dport), &key(p, *dport));
                assert_eq!(got, want, "{what}, port {p}");
            }
        }
    });
    assert_eq!(moved(Event::QuicRouted), 0);
    assert_eq!(moved(Event::QuicUnknownServer), 0);
}

#[test]
fn an_unknown_or_down_server_goes_by_the_5_tuple_and_a_drained_one_keeps_its_paths() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&config(false));
    let id = |s: &str| -> VipId { s.parse().unwrap() };
    let by_hash = |lab: &mut Lab, ports: std::ops::Range<u16>, sid: u32| {
        for p in ports {
            let got = backend_of(lab, &datagram(p, QUIC, &short_header(1, sid)));
            assert_eq!(got, lab.predict(&vip_id(QUIC), &key(p, QUIC)), "port {p}");
        }
    };
    let moved = counted(&mut lab, |lab| by_hash(lab, 43_000..43_030, 0x0909));
    assert_eq!(moved(Event::QuicUnknownServer), 30);
    assert_eq!(moved(Event::QuicRouted), 0);

    // Down: its ID names a server that cannot take the path.
    let b12 = server(0x0202);
    lab.core
        .set_health(&id(&vip_id(QUIC)), b12, false)
        .expect("down");
    let moved = counted(&mut lab, |lab| by_hash(lab, 43_100..43_130, 0x0202));
    assert_eq!(moved(Event::QuicUnknownServer), 30);
    lab.core
        .set_health(&id(&vip_id(QUIC)), b12, true)
        .expect("up");

    // Drained: no new connections, but its connections' new paths still reach it.
    lab.core
        .set_drained(&id(&vip_id(QUIC)), b12, true)
        .expect("drain");
    for p in 43_200..43_230 {
        let got = backend_of(&mut lab, &datagram(p, QUIC, &short_header(1, 0x0202)));
        assert_eq!(got, b12, "port {p}");
    }
    // Removed: its ID is gone with it.
    lab.core
        .remove_backend(&id(&vip_id(QUIC)), b12)
        .expect("remove");
    let moved = counted(&mut lab, |lab| by_hash(lab, 43_300..43_330, 0x0202));
    assert_eq!(moved(Event::QuicUnknownServer), 30);
}

#[test]
fn a_stateless_quic_vip_routes_every_packet_by_its_id_and_records_none() {
    if !require_root() {
        return;
    }
    pin_to_this_cpu();
    let mut lab = Lab::new(&config(true));
    let moved = counted(&mut lab, |lab| {
        for p in 44_000..44_020 {
            for (_, sid) in SERVERS {
                for _ in 0..2 {
                    let got = backend_of(lab, &datagram(p, QUIC, &short_header(1, sid)));
                    assert_eq!(got, server(sid), "port {p}");
                }
            }
            assert!(recorded(lab, p, QUIC).is_none(), "port {p}");
            // Its handshake goes by hash, the same for each packet.
            let want = lab.predict(&vip_id(QUIC), &key(p, QUIC));
            assert_eq!(backend_of(lab, &datagram(p, QUIC, &initial())), want);
        }
    });
    assert_eq!(moved(Event::QuicRouted), 120);
    assert_eq!(moved(Event::StatelessPick), 140);
    assert_eq!(moved(Event::NewFlow), 0);
}
