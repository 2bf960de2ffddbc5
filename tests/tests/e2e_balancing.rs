//! End-to-end: real HTTP clients through a real XDP balancer to real servers, in network
//! namespaces. Direct server return is proven by the balancer's receive counter.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb_tests::{
    netns::require_root,
    topology::{
        decap_metrics, http_get, rx_bytes, scrape_metrics, DemoNet, LineConn, BIG_FILE, NAME_PORT,
        VIP4, VIP6,
    },
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// `n` GETs over new connections (distinct source ports); tally by answering backend.
fn tally(net: &DemoNet, vip: SocketAddr, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match http_get(&net.client, vip, "/", TIMEOUT) {
            Ok(body) => {
                *counts
                    .entry(String::from_utf8_lossy(&body).trim().to_string())
                    .or_default() += 1
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    (counts, errors)
}

#[track_caller]
fn assert_spread(counts: &BTreeMap<String, usize>, n: usize, backends: usize) {
    let fair = n as f64 / backends as f64;
    assert_eq!(
        counts.len(),
        backends,
        "not every backend answered: {counts:?}"
    );
    for (b, c) in counts {
        let dev = (*c as f64 - fair).abs() / fair;
        assert!(
            dev <= 0.30,
            "backend {b} got {c} of {n} (fair share {fair:.0}, off by {:.0}%): {counts:?}",
            dev * 100.0
        );
    }
}

#[test]
fn dsr_spreads_v4_and_v6_over_three_backends_and_replies_bypass_the_balancer() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ea", 3);
    net.start_backends();
    let (_lb, sock) = net.start_lb(&net.config_json(), &[]);
    net.wait_ready(&sock);

    for vip in [
        SocketAddr::new(VIP4.parse().unwrap(), 80),
        SocketAddr::new(VIP6.parse().unwrap(), 80),
    ] {
        let (counts, errors) = tally(&net, vip, 300);
        assert!(
            errors.is_empty(),
            "{} of 300 requests to {vip} failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        assert_spread(&counts, 300, 3);
    }

    // 20 large replies (5 MiB in all): if replies crossed the balancer its interface would
    // have received them; it only sees the clients' small requests.
    let rx_before = rx_bytes(&net.lb, "eth0");
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    for _ in 0..20 {
        let body = http_get(&net.client, vip, "/big.bin", TIMEOUT).expect("big download");
        assert_eq!(body.len(), BIG_FILE);
    }
    let lb_rx = rx_bytes(&net.lb, "eth0") - rx_before;
    let replies = (20 * BIG_FILE) as u64;
    assert!(lb_rx < replies / 10, "the balancer received {lb_rx} bytes while {replies} bytes of replies flowed: replies crossed it");

    let stats = net.ctl(&sock, &["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).expect("stats JSON");
    assert!(
        v["reasons"]["tx_encap"].as_u64().unwrap_or(0) >= 600,
        "{stats}"
    );

    // Each backend's decap counted what it stripped, live (`xlb decap --metrics`), and
    // nothing it could not; every metric it serves is in the reference.
    let reference = include_str!("../../docs/metrics.md");
    let mut decapsulated = 0;
    for b in &net.backends {
        let text = scrape_metrics(&b.ns, decap_metrics(b));
        let value = |line: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{line} missing:\n{text}"))
        };
        decapsulated += value("xlb_decap_events_total{event=\"decapsulated\"}");
        assert_eq!(
            value("xlb_decap_passed_packets_total{reason=\"tunnel_not_local\"}"),
            0,
            "{}",
            b.name
        );
        assert!(value("xlb_decap_accepted_addresses") >= 2, "{text}");
        for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = name.split(' ').next().unwrap_or(name);
            assert!(
                reference.contains(&format!("| `{name}` |")),
                "{name} is served by xlb decap but not in docs/metrics.md"
            );
        }
    }
    assert!(decapsulated >= 600, "{decapsulated} packets decapsulated");
}

#[test]
fn long_lived_connection_keeps_its_backend_while_backends_come_and_go() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eb", 3);
    net.start_backends();
    let _names: Vec<_> = (0..3).map(|i| net.start_name_server(i)).collect();
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp",
            "health_check": {{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200}},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let vip = SocketAddr::new(VIP4.parse().unwrap(), NAME_PORT);
    let mut conn = LineConn::open(&net.client, vip, TIMEOUT).expect("connect to the VIP");
    let mut ask = || conn.ask().expect("answer on the long-lived connection");
    let first = ask();
    let target = format!("{VIP4}:{NAME_PORT}/tcp");
    let changes: &[&[&str]] = &[
        &["backend", "add", &target, "198.18.0.13"],
        &["backend", "weight", &target, "198.18.0.13", "5"],
        &[
            "backend",
            "remove",
            &target,
            if first == "b1" {
                "198.18.0.12"
            } else {
                "198.18.0.11"
            },
        ],
        &[
            "backend",
            "add",
            &target,
            if first == "b1" {
                "198.18.0.12"
            } else {
                "198.18.0.11"
            },
        ],
    ];
    for change in changes {
        let mut args: Vec<&str> = change.to_vec();
        args.push("--json");
        net.ctl(&sock, &args);
        for _ in 0..5 {
            assert_eq!(ask(), first, "the connection moved after {change:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Bulk uploads through the VIP: full-size client segments no longer fit the link once
/// encapsulated; the balancer answers with frag-needed / packet-too-big, the client's path
/// MTU drops, and the upload completes (without those answers it would stall).
#[test]
fn bulk_uploads_through_the_vip_complete_thanks_to_icmp_too_big() {
    use std::io::{Read, Write};
    use xlb_tests::topology::{connect_in, SINK_PORT};
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eu", 2);
    net.start_backends();
    let _sinks: Vec<_> = (0..2).map(|i| net.start_sink(i)).collect();
    let cfg = format!(
        r#"{{"vips": [
          {{"address": "{VIP4}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
          {{"address": "{VIP6}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "fd00::11"}}, {{"address": "fd00::12"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    const UPLOAD: usize = 2 * 1024 * 1024;
    for vip in [VIP4, VIP6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), SINK_PORT);
        let mut s = connect_in(&net.client, addr, Duration::from_secs(20)).expect("connect");
        s.write_all(&vec![b'u'; UPLOAD])
            .expect("upload through the VIP stalled");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        let got: usize = answer
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(got, UPLOAD, "{vip}: backend answered {answer:?}");
    }
    let stats: serde_json::Value = net.stats_json(&sock);
    assert!(
        stats["reasons"]["icmp_too_big_sent"].as_u64().unwrap_or(0) >= 2,
        "no too-big answers were needed? {stats}"
    );
}

/// `record_rate_limit` reaches the data plane through `xlb run`: with a limit of one new
/// flow per CPU per second, nearly every connection through the Maglev VIP goes unrecorded,
/// and each is still served whole, by the backend its hash picks, over all backends.
#[test]
fn connections_over_the_record_rate_limit_are_served_by_hash() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ed", 3);
    net.start_backends();
    let cfg = net
        .config_json()
        .replacen(r#"{"vips""#, r#"{"record_rate_limit": 1, "vips""#, 1);
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    let start = std::time::Instant::now();
    let (counts, errors) = tally(&net, vip, 90);
    // Each CPU records one flow per window, and the requests spanned at most this many.
    let windows = start.elapsed().as_secs() + 2;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        errors.is_empty(),
        "{} of 90 requests failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(counts.len(), 3, "not every backend answered: {counts:?}");
    let v = net.stats_json(&sock);
    let reason = |name: &str| v["reasons"][name].as_u64().unwrap_or(0);
    // 90 connections of several packets each, one recorded per CPU and window.
    assert!(
        reason("new_flow") <= cpus * windows,
        "{} flows recorded in {windows} windows on {cpus} CPUs",
        reason("new_flow")
    );
    assert!(
        reason("flow_not_recorded") >= 90_u64.saturating_sub(cpus * windows),
        "unrecorded packets: {}",
        reason("flow_not_recorded")
    );
}

/// An all-ports VIP (`198.18.1.1:*/tcp`) serves every port its address has no VIP of its
/// own on, over both families: a line server on 7000 and a sink on 7001 answer through it
/// from b2, while port 80, with a VIP of its own, stays on b1. `xlb status` names it with
/// `*`, and `xlb flow` on one of its ports names the VIP that serves it.
#[test]
fn an_all_ports_vip_serves_every_port_without_a_vip_of_its_own() {
    use std::io::{Read, Write};
    use xlb_tests::topology::{connect_in, SINK_PORT};
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ep", 2);
    net.start_backends();
    let _names: Vec<_> = (0..2).map(|i| net.start_name_server(i)).collect();
    let _sinks: Vec<_> = (0..2).map(|i| net.start_sink(i)).collect();
    let cfg = format!(
        r#"{{"vips": [
          {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "backends": [{{"address": "198.18.0.11"}}]}},
          {{"address": "{VIP4}", "port": 0, "protocol": "tcp", "health_check": {{"port": {NAME_PORT}, "interval_ms": 300, "timeout_ms": 200}},
            "backends": [{{"address": "198.18.0.12"}}]}},
          {{"address": "{VIP6}", "port": 0, "protocol": "tcp", "health_check": {{"kind": "icmp"}},
            "backends": [{{"address": "fd00::12"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);

    for vip in [VIP4, VIP6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), NAME_PORT);
        let mut conn = LineConn::open(&net.client, addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        assert_eq!(conn.who(), "b2", "{addr}");
        let addr = SocketAddr::new(vip.parse().unwrap(), SINK_PORT);
        let mut s = connect_in(&net.client, addr, TIMEOUT).expect("connect to the sink");
        s.write_all(&[b'u'; 5000]).expect("upload");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("the sink's answer");
        assert_eq!(answer.trim(), "b2 5000", "{addr}");
    }
    let web = SocketAddr::new(VIP4.parse().unwrap(), 80);
    for _ in 0..10 {
        let body = http_get(&net.client, web, "/", TIMEOUT).expect("GET port 80");
        assert_eq!(String::from_utf8_lossy(&body).trim(), "b1");
    }

    let states = net.backend_states(&sock);
    assert_eq!(
        states
            .get(&format!("{VIP4}:*/tcp 198.18.0.12"))
            .map(String::as_str),
        Some("up"),
        "{states:?}"
    );
    let flow = net.ctl(
        &sock,
        &[
            "flow",
            &format!("{VIP4}:{NAME_PORT}/tcp"),
            "198.18.0.10:40000",
        ],
    );
    assert!(
        flow.contains(&format!("served by {VIP4}:*/tcp")) && flow.contains("198.18.0.12"),
        "{flow}"
    );
}

/// A backend address that appears after `xlb decap` started (DHCP, a service manager that
/// starts decap early, an address added for a new service) is accepted within a second:
/// before, decap passed its tunnels to a stack that cannot strip them, and the backend took
/// no traffic while its health checks passed.
#[test]
fn decap_accepts_tunnels_to_an_address_added_after_it_started() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ea", 1);
    net.start_backends();
    let late = "198.18.0.21";
    net.backends[0]
        .ns
        .ip(&["addr", "add", &format!("{late}/24"), "dev", "eth0"]);
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp",
             "backends": [{{"address": "{late}"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let web = SocketAddr::new(VIP4.parse().unwrap(), 80);
    let mut answers = Vec::new();
    // Within the decap's refresh (1 s) and then some; every attempt is bounded by TIMEOUT.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match http_get(&net.client, web, "/", TIMEOUT) {
            Ok(body) => {
                answers.push(String::from_utf8_lossy(&body).trim().to_owned());
                break;
            }
            Err(e) => answers.push(e.to_string()),
        }
    }
    assert_eq!(
        answers.last().map(String::as_str),
        Some("b1"),
        "through the late address: {answers:?}"
    );
}

/// A tunnel to an address the backend does not have (here the balancer's neighbour entry
/// sends a backend address's tunnels to b1): b1's decap passes them to a stack that cannot
/// strip them, counts them (`tunnel_not_local`, served live by `xlb decap --metrics`) and
/// says so in its log, so that a backend taking no traffic is explained on the backend.
#[test]
fn decap_counts_and_tells_tunnels_to_an_address_it_does_not_have() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ea", 1);
    net.start_backends();
    let link = net.backends[0].ns.ip(&["-o", "link", "show", "eth0"]);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("b1's MAC")
        .to_owned();
    let foreign = "198.18.0.31";
    net.lb.ip(&[
        "neigh",
        "replace",
        foreign,
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp",
             "health_check": {{"kind": "none"}}, "backends": [{{"address": "{foreign}"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let web = SocketAddr::new(VIP4.parse().unwrap(), 80);
    for _ in 0..3 {
        assert!(
            http_get(&net.client, web, "/", Duration::from_millis(500)).is_err(),
            "answered through a tunnel b1 does not accept"
        );
    }
    let b1 = &net.backends[0];
    let text = scrape_metrics(&b1.ns, decap_metrics(b1));
    let not_local = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("xlb_decap_passed_packets_total{reason=\"tunnel_not_local\"}")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("tunnel_not_local missing:\n{text}"));
    assert!(not_local >= 3, "{not_local} tunnels counted as not local");
    // Within the decap's look at its counters (every 10 s).
    let log = || b1.decap.as_ref().map(|p| p.log_text()).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !log().contains("(tunnel_not_local)") {
        assert!(
            std::time::Instant::now() < deadline,
            "decap never told of the tunnels:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
