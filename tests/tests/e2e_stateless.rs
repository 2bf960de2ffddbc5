//! End-to-end: a `stateless` UDP VIP, the shape of a DNS service: every query comes from a
//! new source port, so every query is a new flow. Real UDP servers answer them with their
//! name straight to the client (DSR), checked by real `udp` health checks; the queries are
//! spread over the backends and none of them takes a connection-table entry, while the same
//! queries to a VIP that records fill the table. `xlb status` says which VIP is stateless.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use xlb_tests::{
    netns::require_root,
    topology::{spawn_logged, DemoNet, Proc, PYTHON, VIP4, VIP6},
};

/// A UDP server (dual stack) answering each datagram with the backend's name.
const UDP_SERVER: &str = r#"
import socket, sys
name = sys.argv[1].encode() + b"\n"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(name, peer)
"#;

const PORT: u16 = 5353;
/// The same service on a VIP that records its flows, for contrast.
const RECORDING_PORT: u16 = 5354;
const QUERIES: usize = 40;

fn serve(net: &DemoNet, i: usize, port: u16) -> Proc {
    let b = &net.backends[i];
    let log = net.dir.join(format!("{}-udp-{port}.log", b.name));
    let port = port.to_string();
    spawn_logged(&b.ns, &[PYTHON, "-c", UDP_SERVER, &b.name, &port], &log)
}

/// [`QUERIES`] queries to `vip`, each from a socket of its own (a new source port, as a
/// resolver's); the answers' counts by backend name. A query without an answer within a
/// second is asked again, up to three times.
fn ask(net: &DemoNet, vip: SocketAddr) -> BTreeMap<String, usize> {
    let _inside = net.client.enter();
    let any: SocketAddr = if vip.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let mut by = BTreeMap::new();
    // Every socket kept to the end: a port freed by one query could be the next one's,
    // and two queries on one 5-tuple are one flow (the recording VIP then lists 39).
    let mut sockets = Vec::with_capacity(QUERIES);
    for q in 0..QUERIES {
        let s = UdpSocket::bind(any).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let answer = (0..3).find_map(|_| {
            s.send_to(format!("query {q}").as_bytes(), vip).ok()?;
            s.recv(&mut buf).ok()
        });
        let n = answer.unwrap_or_else(|| panic!("query {q} to {vip}: no answer"));
        let name = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
        *by.entry(name).or_insert(0) += 1;
        sockets.push(s);
    }
    by
}

#[test]
fn a_stateless_vip_answers_every_query_and_records_none() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2esl", 3);
    for i in 0..3 {
        net.start_decap(i);
    }
    let _servers: Vec<Proc> = (0..3)
        .flat_map(|i| [serve(&net, i, PORT), serve(&net, i, RECORDING_PORT)])
        .collect();
    let check = r#"{"kind": "udp", "send": "ping", "expect": "b", "interval_ms": 300, "timeout_ms": 200, "rise": 1, "fall": 2}"#;
    let vip = |addr: &str, port: u16, stateless: bool, backends: &str| {
        format!(
            r#"{{"address": "{addr}", "port": {port}, "protocol": "udp", "stateless": {stateless},
                "health_check": {check}, "backends": [{backends}]}}"#
        )
    };
    let b4 =
        r#"{"address": "198.18.0.11"}, {"address": "198.18.0.12"}, {"address": "198.18.0.13"}"#;
    let b6 = r#"{"address": "fd00::11"}, {"address": "fd00::12"}, {"address": "fd00::13"}"#;
    let cfg = format!(
        r#"{{"vips": [{}, {}, {}]}}"#,
        vip(VIP4, PORT, true, b4),
        vip(VIP6, PORT, true, b6),
        vip(VIP4, RECORDING_PORT, false, b4)
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);

    for addr in [VIP4, VIP6] {
        let target = SocketAddr::new(addr.parse().unwrap(), PORT);
        let by = ask(&net, target);
        assert!(
            by.len() >= 2,
            "{target}: every query on one backend: {by:?}"
        );
        assert!(
            by.keys().all(|k| ["b1", "b2", "b3"].contains(&k.as_str())),
            "{by:?}"
        );
        let vip = if target.is_ipv4() {
            format!("{addr}:{PORT}/udp")
        } else {
            format!("[{addr}]:{PORT}/udp")
        };
        let listed = net.ctl(&sock, &["flows", &vip]);
        assert!(listed.starts_with("0 flows"), "{vip}: {listed}");
    }
    // The same queries to the recording VIP each take an entry.
    let recording = SocketAddr::new(VIP4.parse().unwrap(), RECORDING_PORT);
    ask(&net, recording);
    let listed = net.ctl(&sock, &["flows", &format!("{VIP4}:{RECORDING_PORT}/udp")]);
    assert!(listed.contains(&format!("{QUERIES} flows")), "{listed}");

    let stats = net.stats_json(&sock);
    let picks = stats["reasons"]["stateless_pick"].as_u64().unwrap_or(0);
    assert!(
        picks >= 2 * QUERIES as u64,
        "stateless_pick {picks}: {stats}"
    );
    let status = net.ctl(&sock, &["status"]);
    assert_eq!(
        status.matches("stateless (no flow recorded)").count(),
        2,
        "{status}"
    );
}
