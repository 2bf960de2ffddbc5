//! End-to-end: the `xlb` binary's own contract — attach, count real packets, detach cleanly;
//! readable errors and no attach on bad input.

use std::{process::Command, time::Duration};

use xlb_tests::{
    netns::{require_root, veth, wait_for, Netns},
    topology::{spawn_logged, xlb_bin},
};

fn xdp_attached(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", ifname]).contains("xdp")
}

#[test]
fn run_attaches_counts_real_packets_and_detaches() {
    if !require_root() {
        return;
    }
    let a = Netns::new("clia");
    let b = Netns::new("clib");
    veth(&a, "eth0", &b, "eth0");
    for (ns, addr) in [(&a, "198.18.5.1/24"), (&b, "198.18.5.2/24")] {
        ns.offloads_off("eth0");
        ns.link_up("eth0");
        ns.addr("eth0", addr);
    }
    let dir = std::env::temp_dir().join(format!("xlb-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = xlb_bin();
    let mut run = spawn_logged(
        &a,
        &[
            bin.to_str().unwrap(),
            "run",
            "--iface",
            "eth0",
            "--no-socket",
        ],
        &dir.join("run.log"),
    );
    wait_for("xlb run to attach", Duration::from_secs(20), || {
        assert!(run.running(), "xlb run exited: {}", run.log_text());
        xdp_attached(&a, "eth0")
    });
    // Real packets from the peer: UDP datagrams to a port nobody serves (no VIPs: all pass).
    for i in 0..20 {
        b.run(&["/usr/bin/python3", "-c", &format!("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('198.18.5.1', {}))", 9000 + i)]);
    }
    let log = run.log.clone();
    let status = run
        .terminate(Duration::from_secs(10))
        .expect("xlb run stops on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let out = std::fs::read_to_string(&log).unwrap();
    let not_vip: u64 = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("not_vip"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no not_vip counter in the exit summary:\n{out}"));
    assert!(not_vip >= 20, "only {not_vip} packets counted:\n{out}");
    assert!(
        !xdp_attached(&a, "eth0"),
        "XDP program left on the interface after exit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_interface_and_bad_config_fail_readably_without_attaching() {
    if !require_root() {
        return;
    }
    let bin = xlb_bin();
    let out = Command::new(&bin)
        .args(["run", "--iface", "xlb-nope0", "--no-socket"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("xlb-nope0") && err.contains("ip link"),
        "unhelpful message: {err}"
    );
    assert!(err.lines().count() <= 3, "message should be short: {err}");

    let ns = Netns::new("clic");
    let dir = std::env::temp_dir().join(format!("xlb-clic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.json");
    std::fs::write(&cfg, r#"{"vips": [{"address": "198.18.1.1", "port": 80, "protocol": "tcp", "backends": [{"address": "198.18.0.11", "weight": 20000}]}]}"#).unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            bin.to_str().unwrap(),
            "run",
            "--iface",
            "lo",
            "--no-socket",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("vips[0].backends[0].weight"),
        "the bad field is not named: {err}"
    );
    assert!(!xdp_attached(&ns, "lo"), "attached despite a bad config");

    let out = Command::new(&bin)
        .args(["check-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("weight"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_commands_without_a_daemon_say_what_to_do() {
    let out = Command::new(xlb_bin())
        .args(["status", "--socket", "/nonexistent/xlb.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("xlb run"), "{err}");
}
