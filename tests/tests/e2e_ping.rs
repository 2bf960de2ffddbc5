//! End-to-end: `ping` (iputils) from the client to the VIPs of both families. The VIPs live
//! on the backends' `lo`, behind the balancer; the balancer answers the echo requests
//! itself (`icmp_echo_replied`), and stops once a reload turns `icmp_echo` off: nothing
//! else on the way answers for a VIP.

use std::path::Path;

use xlb_tests::{
    netns::{require_root, Netns},
    topology::{DemoNet, VIP4, VIP6},
};

/// Whether `count` echo requests from `ns` to `addr` (a fifth of a second apart, a
/// second's wait for the last) all got their reply.
fn ping(ns: &Netns, addr: &str, count: u32) -> (bool, String) {
    let out = ns.exec(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        addr,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = out.status.success() && text.contains(&format!("{count} received"));
    (all, text)
}

fn echo_replied(net: &DemoNet, sock: &Path) -> u64 {
    net.stats_json(sock)["reasons"]["icmp_echo_replied"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn vips_answer_ping_until_icmp_echo_is_off() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eping", 2);
    net.start_backends();
    let cfg = net.config_json();
    let (lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);

    for vip in [VIP4, VIP6] {
        let (ok, out) = ping(&net.client, vip, 3);
        assert!(ok, "{vip}: {out}");
    }
    assert_eq!(echo_replied(&net, &sock), 6);

    // Off: the requests go to the balancer's own stack, which has no VIP to answer for.
    let off = cfg.replacen('{', r#"{"icmp_echo": false, "#, 1);
    std::fs::write(net.dir.join("xlb.json"), off).expect("write config");
    let said = net.ctl(&sock, &["reload"]);
    assert!(said.contains("icmp_echo"), "{said}");
    for vip in [VIP4, VIP6] {
        let (ok, out) = ping(&net.client, vip, 2);
        assert!(!ok && out.contains("0 received"), "{vip}: {out}");
    }
    assert_eq!(echo_replied(&net, &sock), 6);
    drop(lb);
}
