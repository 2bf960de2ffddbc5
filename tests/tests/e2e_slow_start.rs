//! End-to-end: slow start with real line servers behind the XDP balancer. A backend that
//! comes into service (here: undrained) gets a small share of new connections at first,
//! growing with its ramp; a reload that drops the slow start gives it its whole weight.

use std::{collections::BTreeMap, time::Duration};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{DemoNet, LineConn, Proc, NAME_PORT, VIP4},
};

/// The line servers' VIP with b1 and b2 (drained or not), checked every 300 ms; `extra`
/// adds VIP fields.
fn config(extra: &str, b2_drained: bool) -> String {
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp" {extra},
            "health_check": {{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12", "drained": {b2_drained}}}]}}]}}"#
    )
}

/// Who answers `n` new connections, by backend name.
fn tally(net: &DemoNet, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, who) in LineConn::many_to_vip(&net.client, n) {
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

/// b2's slow-start share as `xlb status --json` reports it.
fn b2_pct(net: &DemoNet, sock: &std::path::Path) -> u64 {
    let status = net.status_json(sock);
    status["vips"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == "198.18.0.12")
        .and_then(|b| b["slow_start_pct"].as_u64())
        .unwrap_or_else(|| panic!("no slow_start_pct for b2: {status}"))
}

#[test]
fn an_undrained_backend_ramps_up_and_a_reload_ends_the_ramp() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ess", 2);
    net.start_backends();
    let _servers: Vec<Proc> = (0..2).map(|i| net.start_name_server(i)).collect();
    let (lb, sock) = net.start_lb(&config(r#", "slow_start_s": 60"#, true), &[]);
    net.wait_ready(&sock);
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");

    // Undrained into a 60 s ramp: at 1-3 % of its weight for the next seconds, b2 takes
    // about 2 % of 60 new connections (more than 12 is odds of about one in a billion
    // at 3 %; without slow start, half).
    let said = net.ctl(&sock, &["backend", "undrain", &vip, "198.18.0.12"]);
    assert!(said.contains("undrained"), "{said}");
    let first = b2_pct(&net, &sock);
    assert!(first < 10, "b2 starts at {first}%");
    let early = tally(&net, 60);
    let b2 = early.get("b2").copied().unwrap_or(0);
    assert!(
        b2 <= 12,
        "b2 took {b2} of 60 new connections at once: {early:?}"
    );
    assert_eq!(early.values().sum::<usize>(), 60, "{early:?}");
    let text = net.ctl(&sock, &["status"]);
    assert!(text.contains("up, slow start "), "{text}");
    // The daemon steps the ramp every second.
    wait_for("b2's share to grow", Duration::from_secs(10), || {
        b2_pct(&net, &sock) > first + 2
    });

    // The file without slow start (and b2 undrained, as it runs): the reload ends the
    // ramp, b2 takes its half.
    std::fs::write(net.dir.join("xlb.json"), config("", false)).expect("write config");
    lb.hangup();
    wait_for("the ramp's end", Duration::from_secs(10), || {
        b2_pct(&net, &sock) == 100
    });
    let after = tally(&net, 60);
    let b2 = after.get("b2").copied().unwrap_or(0);
    assert!(
        (15..=45).contains(&b2),
        "b2 took {b2} of 60 new connections at its whole weight: {after:?}"
    );
    let log = lb.log_text();
    assert!(log.contains("slow start"), "{log}");
}
