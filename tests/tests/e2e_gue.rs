//! End-to-end: GUE tunnels (`"encap": "gue"`). Real web servers behind VIPs of both families
//! whose backends are reached over UDP. While the backends' decap takes IP-in-IP only, their
//! HTTP checks (straight to the backend) pass but no request through the VIPs is answered:
//! the tunnels on the wire are GUE, which the stack drops — as datagrams to a port nobody
//! listens on, after checking their UDP checksums: none fails (over IPv6 the balancer
//! computes them from the headers and the kernel sums every byte; over IPv4 there is none,
//! and an IPv6 tunnel without one would count as an error). With `xlb decap --gue-port` every request
//! is answered, spread over the backends, straight to the client (DSR).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use xlb_tests::{
    netns::{require_root, Netns},
    topology::{http_get, DemoNet, VIP4, VIP6},
};

const GUE_PORT: &str = "6081";

/// `n` requests to `vip` (new connections); the answers' counts by body (the backend's
/// name), and how many got none.
fn ask(net: &DemoNet, vip: SocketAddr, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match http_get(&net.client, vip, "/", Duration::from_secs(1)) {
            Ok(body) => {
                let name = String::from_utf8_lossy(&body).trim().to_owned();
                *by.entry(name).or_insert(0) += 1;
            }
            Err(_) => failed += 1,
        }
    }
    (by, failed)
}

/// A host's UDP counters: datagrams to no listener and checksum errors, IPv4 and IPv6
/// (`/proc/net/snmp`, `/proc/net/snmp6` of its namespace).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct UdpCounters {
    no_ports: [u64; 2],
    csum_errors: [u64; 2],
}

fn udp_counters(ns: &Netns) -> UdpCounters {
    let snmp = ns.run(&["cat", "/proc/net/snmp"]);
    // Two "Udp:" lines: the names, then the values.
    let rows: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{snmp}");
    let v4 = |name: &str| -> u64 {
        let at = rows[0].iter().position(|n| *n == name);
        let at = at.unwrap_or_else(|| panic!("{name} in {snmp}"));
        rows[1][at].parse().expect("a count")
    };
    let snmp6 = ns.run(&["cat", "/proc/net/snmp6"]);
    let v6 = |name: &str| -> u64 {
        snmp6
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {snmp6}"))
            .trim()
            .parse()
            .expect("a count")
    };
    UdpCounters {
        no_ports: [v4("NoPorts"), v6("Udp6NoPorts ")],
        csum_errors: [v4("InCsumErrors"), v6("Udp6InCsumErrors ")],
    }
}

#[test]
fn gue_vips_serve_through_backends_that_take_gue() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2egue", 3);
    for i in 0..3 {
        net.start_decap(i);
        net.start_http(i);
    }
    let cfg = net
        .config_json()
        .replace(
            r#""protocol": "tcp","#,
            r#""protocol": "tcp", "encap": "gue","#,
        )
        .replacen("{", &format!(r#"{{"gue_port": {GUE_PORT}, "#), 1);
    assert_eq!(cfg.matches(r#""encap": "gue""#).count(), 2, "{cfg}");
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let vips = [
        SocketAddr::new(VIP4.parse().unwrap(), 80),
        SocketAddr::new(VIP6.parse().unwrap(), 80),
    ];

    // IP-in-IP decap only: the checks pass, the tunnels do not. The backends' stacks take
    // them as datagrams to a closed port, their checksums (IPv6) checked and right.
    let before: Vec<UdpCounters> = net.backends.iter().map(|b| udp_counters(&b.ns)).collect();
    for vip in vips {
        let (by, failed) = ask(&net, vip, 3);
        assert_eq!(failed, 3, "{vip}: answered without GUE decap: {by:?}");
    }
    let after: Vec<UdpCounters> = net.backends.iter().map(|b| udp_counters(&b.ns)).collect();
    for family in 0..2 {
        let no_ports: u64 = (0..3)
            .map(|i| after[i].no_ports[family] - before[i].no_ports[family])
            .sum();
        // Three SYNs per VIP, and their retries.
        assert!(no_ports >= 3, "family {family}: {before:?} → {after:?}");
        for i in 0..3 {
            assert_eq!(
                after[i].csum_errors[family], before[i].csum_errors[family],
                "backend {i}, family {family}: tunnels with a wrong checksum"
            );
        }
    }
    let states = net.backend_states(&sock);
    assert!(
        !states.is_empty() && states.values().all(|s| s == "up"),
        "{states:?}"
    );

    for i in 0..3 {
        net.backends[i].decap = None;
        net.start_decap_with(i, &["--gue-port", GUE_PORT]);
    }
    for vip in vips {
        let (by, failed) = ask(&net, vip, 30);
        assert_eq!(failed, 0, "{vip}: {failed} of 30 unanswered: {by:?}");
        assert!(by.len() >= 2, "{vip}: all on {by:?}");
        assert!(
            by.keys().all(|k| ["b1", "b2", "b3"].contains(&k.as_str())),
            "{by:?}"
        );
    }
}
