//! End-to-end: a two-armed balancer. Two backends share the client's LAN (reached by
//! XDP_TX), a third sits on a LAN behind the balancer's second interface with a smaller MTU
//! (reached by XDP_REDIRECT): one daemon serves both, with real servers and clients.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::SocketAddr,
    time::Duration,
};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, http_get, scrape_metrics, DemoNet, SINK_PORT, VIP4, VIP6},
};

/// The MTU of the LAN behind the balancer (the client's LAN has 1500).
const ARM_MTU: u32 = 1400;

/// HTTP health checks, fast enough for a test.
const CHECK: &str = r#"{"kind": "http", "path": "/", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 600}"#;

#[test]
fn a_backend_behind_another_interface_is_served_by_redirect_within_its_path_mtu() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2e2", 2);
    let behind = net.add_arm(1, ARM_MTU);
    assert_eq!(behind, 2..3);
    net.start_backends();
    let sink = net.start_sink(2);
    let backends = |pick: &dyn Fn(&xlb_tests::topology::BackendHost) -> String| {
        net.backends
            .iter()
            .map(|b| format!(r#"{{"address": "{}"}}"#, pick(b)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (all4, all6) = (
        backends(&|b| b.v4.to_string()),
        backends(&|b| b.v6.to_string()),
    );
    let (b3v4, b3v6) = (net.backends[2].v4, net.backends[2].v6);
    let cfg = format!(
        r#"{{"vips": [
  {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "health_check": {CHECK}, "backends": [{all4}]}},
  {{"address": "{VIP6}", "port": 80, "protocol": "tcp", "health_check": {CHECK}, "backends": [{all6}]}},
  {{"address": "{VIP4}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "{b3v4}"}}]}},
  {{"address": "{VIP6}", "port": {SINK_PORT}, "protocol": "tcp", "backends": [{{"address": "{b3v6}"}}]}}
]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &["--metrics", "198.18.0.2:9100"]);
    net.wait_ready(&sock);
    wait_for("every backend up", Duration::from_secs(20), || {
        let states = net.backend_states(&sock);
        states.len() == 8 && states.values().all(|s| s == "up")
    });

    // Each backend's path MTU is its egress interface's.
    let status = net.status_json(&sock);
    for vip in status["vips"].as_array().expect("vips") {
        for b in vip["backends"].as_array().expect("backends") {
            let addr = b["address"].as_str().unwrap_or("?");
            let behind = addr == b3v4.to_string() || addr == b3v6.to_string();
            let want = if behind { ARM_MTU } else { 1500 };
            assert_eq!(b["path_mtu"], want, "{addr} in {}", vip["vip"]);
        }
    }

    // The same in the metrics, scraped from the balancer's namespace.
    let metrics = scrape_metrics(&net.lb, "198.18.0.2:9100".parse().unwrap());
    for needle in [
        format!("xlb_backend_path_mtu_bytes{{vip=\"{VIP4}:80/tcp\",backend=\"{b3v4}\"}} {ARM_MTU}"),
        format!(
            "xlb_backend_path_mtu_bytes{{vip=\"[{VIP6}]:80/tcp\",backend=\"{b3v6}\"}} {ARM_MTU}"
        ),
        format!("xlb_backend_path_mtu_bytes{{vip=\"{VIP4}:80/tcp\",backend=\"198.18.0.11\"}} 1500"),
    ] {
        assert!(
            metrics.contains(&needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }

    // New connections over both families reach all three, the third through eth1.
    let before = net.stats_json(&sock);
    for vip in [VIP4, VIP6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), 80);
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            let body = http_get(&net.client, addr, "/", Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("GET {i} to {addr}: {e}"));
            seen.insert(String::from_utf8_lossy(&body).trim().to_string());
        }
        assert_eq!(
            seen,
            BTreeSet::from(["b1".to_string(), "b2".into(), "b3".into()]),
            "{addr}: answered by"
        );
    }
    let after = net.stats_json(&sock);
    let moved = |reason: &str| {
        after["reasons"][reason].as_u64().unwrap_or(0)
            - before["reasons"][reason].as_u64().unwrap_or(0)
    };
    assert!(moved("tx_encap") > 0, "nothing went by XDP_TX: {after}");
    assert!(
        moved("redirect_encap") > 0,
        "nothing went by XDP_REDIRECT: {after}"
    );

    // Uploads to the backend behind the 1400-byte LAN: its SYN-ACK's MSS lets the client
    // send 1400-byte packets, 1420 (1440) bytes once tunnelled, which that LAN cannot
    // carry. The balancer answers with the path's MTU less the tunnel, and the uploads
    // complete; sized by our own 1500-byte link, they would be dropped on the way.
    const UPLOAD: usize = 1024 * 1024;
    let too_big_before = net.stats_json(&sock)["reasons"]["icmp_too_big_sent"]
        .as_u64()
        .unwrap_or(0);
    for vip in [VIP4, VIP6] {
        let addr = SocketAddr::new(vip.parse().unwrap(), SINK_PORT);
        let mut s = connect_in(&net.client, addr, Duration::from_secs(20)).expect("connect");
        s.write_all(&vec![b'u'; UPLOAD])
            .unwrap_or_else(|e| panic!("upload to {addr} stalled: {e}"));
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert_eq!(
            answer.trim(),
            format!("b3 {UPLOAD}"),
            "{addr}: the sink's answer"
        );
    }
    let too_big = net.stats_json(&sock)["reasons"]["icmp_too_big_sent"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        too_big >= too_big_before + 2,
        "no too-big answers for the smaller path? {too_big_before} → {too_big}"
    );
    drop(sink);
}
