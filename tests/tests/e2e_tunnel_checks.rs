//! End-to-end: `tcp_tunnel` health checks go to the VIP through each backend's tunnel, as
//! clients' packets do. A backend whose decap stops (its web server still answers on its
//! own address, so a `tcp` check would pass) goes down under them, the VIP's clients are
//! served by the others, and it comes back once its decap runs again; so does one whose VIP
//! leaves its `lo`. Both families, and across them (IPv6 in IPv4, IPv4 in IPv6).

use std::{net::SocketAddr, path::Path, time::Duration};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, http_get, DemoNet, VIP4, VIP6},
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn config() -> String {
    let check = r#"{"kind": "tcp_tunnel", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}"#;
    format!(
        r#"{{"vips": [
            {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
            {{"address": "{VIP6}", "port": 80, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "fd00::11"}}, {{"address": "fd00::12"}}]}}]}}"#
    )
}

/// Whether the four (VIP, backend) pairs are all up.
fn all_up(net: &DemoNet, sock: &Path) -> bool {
    let s = net.backend_states(sock);
    s.len() == 4 && s.values().all(|v| v == "up")
}

/// Whether every VIP has a backend whose last failed check asks for its decap.
fn decap_named_in_every_vip(net: &DemoNet, sock: &Path) -> bool {
    let status = net.status_json(sock);
    status["vips"].as_array().into_iter().flatten().all(|v| {
        v["backends"].as_array().into_iter().flatten().any(|b| {
            b["health"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("is `xlb decap` running there?"))
        })
    })
}

#[test]
fn a_backend_without_its_decap_fails_tunnel_checks_and_comes_back_with_it() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2etun", 2);
    net.start_backends();
    let (_lb, sock) = net.start_lb(&config(), &[]);
    net.wait_ready(&sock);
    let states = |net: &DemoNet| net.backend_states(&sock);
    let all_up = |net: &DemoNet| all_up(net, &sock);
    let until =
        |net: &DemoNet, what: &str, done: &dyn Fn(&DemoNet) -> bool| net.until(&sock, what, done);
    // Through the tunnels, every check passes and keeps passing (rise 2 after a start up).
    until(&net, "every backend up", &all_up);
    let checked_ok = |net: &DemoNet| net.checks_ok(&sock);
    let before = checked_ok(&net);
    wait_for("tunnel checks passing", Duration::from_secs(10), || {
        checked_ok(&net) >= before + 8
    });
    assert!(all_up(&net), "{:?}", states(&net));

    // b2's decap stops: its tunnels reach a stack that cannot strip them.
    net.backends[1].decap = None;
    let b2_down = |net: &DemoNet| {
        let s = states(net);
        s.get(&format!("{VIP4}:80/tcp 198.18.0.12"))
            .map(String::as_str)
            == Some("down")
            && s.get(&format!("[{VIP6}]:80/tcp fd00::12"))
                .map(String::as_str)
                == Some("down")
    };
    until(&net, "b2 down under tunnel checks", &b2_down);
    let s = states(&net);
    assert_eq!(s[&format!("{VIP4}:80/tcp 198.18.0.11")], "up", "{s:?}");
    assert_eq!(s[&format!("[{VIP6}]:80/tcp fd00::11")], "up", "{s:?}");
    // What a `tcp` check asks still answers: b2's web server on its own address.
    let own = SocketAddr::new("198.18.0.12".parse().unwrap(), 80);
    assert!(
        connect_in(&net.lb, own, TIMEOUT).is_ok(),
        "b2's own address stopped answering: the test no longer shows the difference"
    );
    // The VIPs' clients all land on b1.
    for vip in [VIP4, VIP6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), 80);
        for _ in 0..10 {
            let body = http_get(&net.client, addr, "/", TIMEOUT).expect("served by b1");
            assert_eq!(String::from_utf8_lossy(&body).trim(), "b1", "{vip}");
        }
    }
    let status = net.status_json(&sock);
    let b2 = status["vips"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == "198.18.0.12").cloned())
        .expect("b2 in status");
    // Its stack answers the tunnel with an ICMP error (protocol unreachable, unknown next
    // header), which the check reports as its cause; rate-limited, it stays silent and the
    // check times out.
    assert!(
        b2["health"]["last_error"].as_str().is_some_and(|e| e.contains("is `xlb decap` running there?")
            || e.contains("no answer")),
        "{b2}"
    );
    until(
        &net,
        "b2's checks naming the missing decap, in both families",
        &|net| decap_named_in_every_vip(net, &sock),
    );

    // Its decap back: up again.
    net.start_decap(1);
    until(&net, "b2 up again", &all_up);

    // b1 loses the IPv4 VIP from its lo (its decap runs, its own address answers): the
    // stripped SYNs are not for it, so its IPv4 checks fail; its IPv6 ones go on passing.
    let b1_v4 = format!("{VIP4}:80/tcp 198.18.0.11");
    net.backends[0]
        .ns
        .ip(&["addr", "del", &format!("{VIP4}/32"), "dev", "lo"]);
    until(&net, "b1 down on the IPv4 VIP", &|net: &DemoNet| {
        let s = states(net);
        s.get(&b1_v4).map(String::as_str) == Some("down")
            && s.get(&format!("[{VIP6}]:80/tcp fd00::11"))
                .map(String::as_str)
                == Some("up")
    });
    net.backends[0]
        .ns
        .ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"]);
    until(&net, "b1 back with its VIP", &all_up);
}

/// Across families: an IPv6 VIP on IPv4 backends (IPv6 in IPv4) and an IPv4 VIP on IPv6
/// backends (IPv4 in IPv6). The checks' SYNs go in the same tunnels as the clients'
/// packets, from the balancer's address of the VIP's family, where the backends' answers
/// come back. A backend whose decap stops goes down in both VIPs, with the missing decap
/// named, and comes back with it; the clients of both VIPs are served meanwhile.
#[test]
fn tunnel_checks_work_across_families() {
    if !require_root() {
        return;
    }
    let check = r#"{"kind": "tcp_tunnel", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}"#;
    let config = format!(
        r#"{{"vips": [
            {{"address": "{VIP6}", "port": 80, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}},
            {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "health_check": {check},
              "backends": [{{"address": "fd00::11"}}, {{"address": "fd00::12"}}]}}]}}"#
    );
    let mut net = DemoNet::new("e2etux", 2);
    net.start_backends();
    let (_lb, sock) = net.start_lb(&config, &[]);
    net.wait_ready(&sock);
    let states = |net: &DemoNet| net.backend_states(&sock);
    let until =
        |net: &DemoNet, what: &str, done: &dyn Fn(&DemoNet) -> bool| net.until(&sock, what, done);
    let checks_ok = |net: &DemoNet| net.checks_ok(&sock);
    let all_up = |net: &DemoNet| all_up(net, &sock);
    // Passing, not merely started up: every backend's checks succeed, again and again.
    let before = checks_ok(&net);
    until(&net, "tunnel checks passing across families", &|net| {
        checks_ok(net) >= before + 8 && all_up(net)
    });
    let served_by = |net: &DemoNet, vip: &str| -> Vec<String> {
        let addr = SocketAddr::new(vip.parse().unwrap(), 80);
        (0..10)
            .map(|_| {
                let body = http_get(&net.client, addr, "/", TIMEOUT).expect("served");
                String::from_utf8_lossy(&body).trim().to_owned()
            })
            .collect()
    };
    for vip in [VIP4, VIP6] {
        let by = served_by(&net, vip);
        assert!(by.iter().all(|b| b == "b1" || b == "b2"), "{vip}: {by:?}");
    }

    net.backends[1].decap = None;
    let b2 = [
        format!("[{VIP6}]:80/tcp 198.18.0.12"),
        format!("{VIP4}:80/tcp fd00::12"),
    ];
    until(&net, "b2 down in both VIPs", &|net| {
        let s = states(net);
        b2.iter()
            .all(|k| s.get(k).map(String::as_str) == Some("down"))
    });
    let s = states(&net);
    assert_eq!(s[&format!("[{VIP6}]:80/tcp 198.18.0.11")], "up", "{s:?}");
    assert_eq!(s[&format!("{VIP4}:80/tcp fd00::11")], "up", "{s:?}");
    for vip in [VIP4, VIP6] {
        assert_eq!(served_by(&net, vip), vec!["b1"; 10], "{vip}");
    }
    until(
        &net,
        "b2's checks naming the missing decap in both VIPs",
        &|net| decap_named_in_every_vip(net, &sock),
    );

    net.start_decap(1);
    until(&net, "b2 up again", &all_up);
}
