//! End-to-end: every scheduler with real connections through the XDP balancer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xlb_tests::{
    netns::{require_root, wait_for, Netns},
    topology::{http_get, http_get_from, DemoNet, LineConn, NAME_PORT, VIP4},
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn vip80() -> SocketAddr {
    SocketAddr::new(VIP4.parse().unwrap(), 80)
}

const TCP_CHECK: &str = r#"{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200}"#;

fn config(scheduler: &str, port: u16, backends: &[(&str, u32)], extra: &str) -> String {
    config_hc(scheduler, port, backends, TCP_CHECK, extra)
}

fn config_hc(
    scheduler: &str,
    port: u16,
    backends: &[(&str, u32)],
    health_check: &str,
    extra: &str,
) -> String {
    let b: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!(r#"{{"address": "{a}", "weight": {w}}}"#))
        .collect();
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {port}, "protocol": "tcp", "scheduler": "{scheduler}",
            "health_check": {health_check} {extra},
            "backends": [{}]}}]}}"#,
        b.join(", ")
    )
}

const THREE: &[(&str, u32)] = &[("198.18.0.11", 1), ("198.18.0.12", 1), ("198.18.0.13", 1)];

/// `n` new connections to VIP:80; answers by backend name. Every request must succeed.
#[track_caller]
fn tally(client: &Netns, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let body = http_get(client, vip80(), "/", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        *counts
            .entry(String::from_utf8_lossy(&body).trim().to_string())
            .or_insert(0) += 1;
    }
    counts
}

fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(name).unwrap_or(&0) as f64 / total as f64
}

fn net_with_lb(
    prefix: &str,
    cfg: &str,
) -> (DemoNet, xlb_tests::topology::Proc, std::path::PathBuf) {
    let mut net = DemoNet::new(prefix, 3);
    net.start_backends();
    let (lb, sock) = net.start_lb(cfg, &[]);
    net.wait_ready(&sock);
    (net, lb, sock)
}

#[test]
fn wrr_follows_weights_3_2_1() {
    if !require_root() {
        return;
    }
    let (net, _lb, _s) = net_with_lb(
        "swrr",
        &config(
            "wrr",
            80,
            &[("198.18.0.11", 3), ("198.18.0.12", 2), ("198.18.0.13", 1)],
            "",
        ),
    );
    let counts = tally(&net.client, 600);
    for (name, want) in [("b1", 3.0 / 6.0), ("b2", 2.0 / 6.0), ("b3", 1.0 / 6.0)] {
        let got = share(&counts, name);
        assert!(
            (got - want).abs() <= want * 0.10,
            "{name}: {got:.3} vs {want:.3}: {counts:?}"
        );
    }
}

#[test]
fn rr_gives_equal_shares() {
    if !require_root() {
        return;
    }
    let (net, _lb, _s) = net_with_lb("srr", &config("rr", 80, THREE, ""));
    let counts = tally(&net.client, 600);
    for name in ["b1", "b2", "b3"] {
        let got = share(&counts, name);
        assert!(
            (got - 1.0 / 3.0).abs() <= (1.0 / 3.0) * 0.05,
            "{name}: {got:.3}: {counts:?}"
        );
    }
}

#[test]
fn sh_sticks_each_client_to_one_backend_and_spreads_clients() {
    if !require_root() {
        return;
    }
    let (net, _lb, _s) = net_with_lb("ssh", &config("sh", 80, THREE, ""));
    let clients: Vec<IpAddr> = (20..28)
        .map(|i| format!("198.18.0.{i}").parse().unwrap())
        .collect();
    for c in &clients {
        net.client.addr("eth0", &format!("{c}/24"));
    }
    let mut per_client = BTreeMap::new();
    for c in &clients {
        let mut seen = BTreeMap::new();
        for _ in 0..100 {
            let b = http_get_from(&net.client, *c, vip80(), "/", TIMEOUT).expect("request");
            *seen
                .entry(String::from_utf8_lossy(&b).trim().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            seen.len(),
            1,
            "client {c} reached several backends: {seen:?}"
        );
        per_client.insert(*c, seen.into_keys().next().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = per_client.values().collect();
    assert!(
        distinct.len() >= 2,
        "all clients on one backend: {per_client:?}"
    );
}

#[test]
fn lc_sends_new_connections_away_from_the_loaded_backend() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("slc", 3);
    net.start_backends();
    let _names: Vec<_> = (0..3).map(|i| net.start_name_server(i)).collect();
    let (_lb, sock) = net.start_lb(&config("lc", NAME_PORT, THREE, ""), &[]);
    net.wait_ready(&sock);
    // Pile 10 connections onto b2 while the others are drained (lc itself would spread
    // them), then let the others take new flows again.
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    for other in ["198.18.0.11", "198.18.0.13"] {
        net.ctl(&sock, &["backend", "drain", &vip, other]);
    }
    let mut held: Vec<LineConn> = (0..10).map(|_| LineConn::to_vip(&net.client)).collect();
    let target = "b2".to_string();
    for c in &mut held {
        assert_eq!(c.who(), target, "drained backends got new flows");
    }
    for other in ["198.18.0.11", "198.18.0.13"] {
        net.ctl(&sock, &["backend", "undrain", &vip, other]);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut fresh = BTreeMap::new();
    for _ in 0..40 {
        let mut c = LineConn::to_vip(&net.client);
        *fresh.entry(c.who()).or_insert(0) += 1;
    }
    // Power of two choices looks for a second candidate with up to SECOND_CHOICE_PROBES (8)
    // more hashes; a flow whose first candidate is b2 (a third of the table) finds only b2
    // with probability 3^-8, so one of 40 new flows lands there about once in 500 runs (seen
    // once in CI). A scheduler that ignored the counts would send it a third of them.
    let reached = fresh.get(&target).copied().unwrap_or(0);
    assert!(
        reached <= 1,
        "new connections reached the loaded {target}: {fresh:?}"
    );
    for c in &mut held {
        assert_eq!(c.who(), target, "a held connection moved");
    }
    // Its idle timeout, changed on the running VIP and shown in status.
    let idle = |net: &DemoNet| -> serde_json::Value {
        let status: serde_json::Value = net.status_json(&sock);
        status["vips"][0]["idle_timeout_s"].clone()
    };
    assert_eq!(idle(&net), serde_json::json!(900), "TCP's default");
    net.ctl(&sock, &["vip", "idle-timeout", &vip, "3600"]);
    assert_eq!(idle(&net), serde_json::json!(3600));
    let (ok, _, err) = net.try_ctl(&sock, &["vip", "idle-timeout", &vip, "5"]);
    assert!(
        !ok && err.contains("30..=604800"),
        "a 5 s timeout accepted: {err}"
    );
    assert_eq!(idle(&net), serde_json::json!(3600), "a refusal changed it");
    net.ctl(&sock, &["vip", "idle-timeout", &vip, "default"]);
    assert_eq!(idle(&net), serde_json::json!(900));
    // A new health check on the running VIP: every backend stays up, no flow moves, and
    // the checks' totals go on from the old check's.
    let checks_ok = |net: &DemoNet| -> Vec<u64> {
        let v: serde_json::Value = net.status_json(&sock);
        v["vips"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| b["health"]["checks_ok"].as_u64().expect("checks_ok"))
            .collect()
    };
    let before = checks_ok(&net);
    assert!(before.iter().all(|&n| n > 0), "checks ran: {before:?}");
    net.ctl(
        &sock,
        &[
            "vip",
            "health-check",
            &vip,
            r#"{"kind": "tcp", "interval_ms": 200, "timeout_ms": 150}"#,
        ],
    );
    std::thread::sleep(Duration::from_millis(800));
    let states = net.backend_states(&sock);
    assert!(
        states.len() == 3 && states.values().all(|s| s == "up"),
        "{states:?}"
    );
    let after = checks_ok(&net);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "the totals started again: {before:?} → {after:?}"
    );
    for c in &mut held {
        assert_eq!(c.who(), target, "a held connection moved");
    }
}

#[test]
fn lrt_gives_a_slow_backend_clearly_fewer_flows() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("slrt", 3);
    for i in 0..3 {
        net.start_decap(i);
    }
    net.start_slow_http(0, 150);
    net.start_http(1);
    net.start_http(2);
    let hc = r#"{"kind": "http", "interval_ms": 250, "timeout_ms": 240, "fall": 5}"#;
    let cfg = config_hc("lrt", 80, THREE, hc, "");
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    wait_for(
        "lrt to scale the slow backend down",
        Duration::from_secs(20),
        || {
            let v = net.status_json(&sock);
            v["vips"][0]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| {
                    b["address"] == "198.18.0.11" && b["agent"]["pct"].as_u64().unwrap_or(100) < 20
                })
        },
    );
    let counts = tally(&net.client, 150);
    let slow = share(&counts, "b1");
    assert!(
        slow < 0.10,
        "the slow backend got {slow:.2} of new flows (fair share 0.33): {counts:?}"
    );
}

#[test]
fn agent_drain_and_weight_reports_steer_new_flows() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("sagt", 3);
    net.start_backends();
    let states: Vec<_> = (0..3).map(|i| net.dir.join(format!("agent{i}"))).collect();
    for s in &states {
        std::fs::write(s, "up\n").unwrap();
    }
    let _agents: Vec<_> = (0..3)
        .map(|i| net.start_agent(i, 5555, &states[i]))
        .collect();
    let (_lb, sock) = net.start_lb(
        &config(
            "agent",
            80,
            THREE,
            r#", "agent": {"port": 5555, "interval_ms": 200}"#,
        ),
        &[],
    );
    net.wait_ready(&sock);
    let before = tally(&net.client, 300);
    let b1_before = share(&before, "b1");

    std::fs::write(&states[0], "drain\n").unwrap();
    wait_for("agent drain to apply", Duration::from_secs(10), || {
        net.backend_states(&sock).values().any(|s| s == "drained")
    });
    let drained = tally(&net.client, 150);
    assert!(
        !drained.contains_key("b1"),
        "b1 got new flows while its agent said drain: {drained:?}"
    );

    std::fs::write(&states[0], "up 50%\n").unwrap();
    wait_for("agent 50% to apply", Duration::from_secs(10), || {
        net.backend_states(&sock).values().all(|s| s == "up")
    });
    let half = tally(&net.client, 600);
    let b1_half = share(&half, "b1");
    // Equal weights: a third of the new flows each (300 flows: ±0.027 standard error).
    // Then 1 : 2 : 2 → b1 gets a fifth (600 flows: ±0.016). Each is checked against its
    // expected share, ±5 standard errors: comparing the two measured shares with each
    // other instead adds their noise up.
    assert!(
        (0.2..=0.47).contains(&b1_before),
        "b1 share before {b1_before:.3}, not about a third: {before:?}"
    );
    assert!(
        (0.1..=0.3).contains(&b1_half) && b1_half < b1_before,
        "b1 share {b1_before:.3} → {b1_half:.3}, not about a fifth: {half:?}"
    );
}

#[test]
fn switching_scheduler_at_runtime_keeps_established_connections() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("sswi", 3);
    net.start_backends();
    let _names: Vec<_> = (0..3).map(|i| net.start_name_server(i)).collect();
    let (_lb, sock) = net.start_lb(&config("maglev", NAME_PORT, THREE, ""), &[]);
    net.wait_ready(&sock);
    let mut conns = LineConn::many_to_vip(&net.client, 9);
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    for s in ["rr", "lc", "sh", "wrr", "maglev"] {
        net.ctl(&sock, &["vip", "scheduler", &vip, s]);
        for (c, want) in &mut conns {
            assert_eq!(&c.who(), want, "a connection moved when switching to {s}");
        }
    }
    // After the switches, rr spreads new connections evenly.
    net.ctl(&sock, &["vip", "scheduler", &vip, "rr"]);
    let mut fresh = BTreeMap::new();
    for _ in 0..30 {
        let mut c = LineConn::to_vip(&net.client);
        *fresh.entry(c.who()).or_insert(0) += 1;
    }
    assert_eq!(fresh.len(), 3, "rr after the switch: {fresh:?}");
    for n in fresh.values() {
        assert!((8..=12).contains(n), "rr after the switch: {fresh:?}");
    }
}

#[test]
fn sighup_reloads_the_config_file_and_refuses_what_needs_a_restart() {
    if !require_root() {
        return;
    }
    let (mut net, mut lb, sock) = net_with_lb(
        "srl",
        &config("maglev", 80, &[("198.18.0.11", 1), ("198.18.0.12", 1)], ""),
    );
    let before = tally(&net.client, 30);
    assert!(
        before.keys().all(|b| b == "b1" || b == "b2"),
        "before the reload: {before:?}"
    );
    let file = net.dir.join("xlb.json");
    let states = |net: &DemoNet| net.backend_states(&sock);
    let scheduler = |net: &DemoNet| -> String {
        let status: serde_json::Value = net.status_json(&sock);
        status["vips"][0]["scheduler"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };

    // b1 leaves, b3 joins with weight 2, the scheduler changes: the file is the truth.
    // `xlb reload --dry-run` says what would change and changes nothing; `xlb reload` does
    // it and says what it did.
    let reloaded = config("wrr", 80, &[("198.18.0.12", 1), ("198.18.0.13", 2)], "");
    std::fs::write(&file, &reloaded).expect("write config");
    let vip = format!("{VIP4}:80/tcp");
    let shape = states(&net);
    let plan = net.ctl(&sock, &["reload", "--dry-run"]);
    for change in [
        format!("remove backend 198.18.0.11 from {vip}"),
        format!("add backend 198.18.0.13 (weight 2) to {vip}"),
        format!("VIP {vip}: scheduler wrr"),
        "would make 3 changes; nothing applied".to_owned(),
    ] {
        assert!(
            plan.contains(&change),
            "{change:?} not in the plan:\n{plan}"
        );
    }
    assert_eq!(states(&net), shape, "a dry run changed the backends");
    assert_eq!(scheduler(&net), "maglev", "a dry run changed the scheduler");
    let done = net.ctl(&sock, &["reload"]);
    assert!(done.contains(": 3 changes"), "{done}");
    let s = states(&net);
    assert!(
        s.len() == 2 && s.contains_key(&format!("{vip} 198.18.0.13")) && scheduler(&net) == "wrr",
        "after xlb reload: {s:?}"
    );
    net.wait_ready(&sock);
    let after = tally(&net.client, 30);
    assert_eq!(
        after.get("b1"),
        None,
        "the removed backend got flows: {after:?}"
    );
    // wrr 1:2: 20 of 30, give or take a partial cycle of 3 on each of two CPUs.
    let b3 = after.get("b3").copied().unwrap_or(0);
    assert!(
        (16..=24).contains(&b3),
        "wrr 1:2 over 30 new flows: {after:?}"
    );
    assert!(lb.running(), "xlb stopped on SIGHUP:\n{}", lb.log_text());

    // A new health check: the checks restart from their verdicts, so b2, down when the
    // file changes, stays down until the new check sees it answer again.
    net.stop_http(1);
    let b2 = format!("{vip} 198.18.0.12");
    wait_for("b2 down", Duration::from_secs(10), || {
        states(&net).get(&b2).map(String::as_str) == Some("down")
    });
    let reloaded = config_hc(
        "wrr",
        80,
        &[("198.18.0.12", 1), ("198.18.0.13", 2)],
        r#"{"kind": "tcp", "interval_ms": 200, "down_interval_ms": 200, "timeout_ms": 150, "rise": 3}"#,
        "",
    );
    std::fs::write(&file, &reloaded).expect("write config");
    lb.hangup();
    wait_for("the health-check reload", Duration::from_secs(10), || {
        lb.log_text().contains("new health check")
    });
    assert_eq!(
        states(&net).get(&b2).map(String::as_str),
        Some("down"),
        "a restarted check brought a dead backend back"
    );
    let only_b3 = tally(&net.client, 10);
    assert_eq!(only_b3.keys().collect::<Vec<_>>(), ["b3"], "{only_b3:?}");
    net.start_http(1);
    wait_for("b2 up under the new check", Duration::from_secs(10), || {
        states(&net).get(&b2).map(String::as_str) == Some("up")
    });

    // What a running VIP cannot change, and a broken file: refused, nothing changes (SIGHUP
    // logs why; `xlb reload` fails and says why).
    let shape = states(&net);
    for (bad, says) in [
        (
            reloaded.replace(
                r#""protocol": "tcp","#,
                r#""protocol": "tcp", "table_size": 251,"#,
            ),
            "vips[0].table_size",
        ),
        (reloaded.replace("backends", "backendz"), "unknown field"),
        (
            reloaded.replacen(
                r#""vips""#,
                r#""outer_source": {"v4": "198.18.0.99"}, "vips""#,
                1,
            ),
            "outer_source: changes only with a restart",
        ),
    ] {
        std::fs::write(&file, &bad).expect("write config");
        let (ok, _, err) = net.try_ctl(&sock, &["reload"]);
        assert!(
            !ok && err.contains("config_file") && err.contains(says),
            "xlb reload of a bad file: {err}"
        );
        lb.hangup();
        wait_for(
            "SIGHUP's refusal in the log",
            Duration::from_secs(10),
            || {
                lb.log_text()
                    .lines()
                    .any(|l| l.contains(says) && l.contains("(SIGHUP)"))
            },
        );
        assert_eq!(states(&net), shape, "a refused reload changed the backends");
        assert_eq!(scheduler(&net), "wrr");
    }
    // Status (and the metrics) say the last reload was refused, and count them all: the
    // dry run is none, `xlb reload` and SIGHUP each applied one and were refused three times.
    let status = net.status_json(&sock);
    let config = &status["config"];
    assert_eq!(
        config["reloads"],
        serde_json::json!({"applied": 2, "refused": 6, "failed": 0}),
        "{config}"
    );
    assert_eq!(config["last_reload"]["by"], "SIGHUP", "{config}");
    assert_eq!(config["last_reload"]["result"], "refused", "{config}");
    let text = net.ctl(&sock, &["status"]);
    assert!(
        text.contains("the last config reload (SIGHUP, ") && text.contains("was refused"),
        "{text}"
    );

    // A change made at runtime, kept with `xlb dump-config`: the dump, written over the
    // file, reloads to no change, and holds the change.
    net.ctl(&sock, &["backend", "weight", &vip, "198.18.0.13", "5"]);
    let dumped = net.ctl(&sock, &["dump-config"]);
    std::fs::write(&file, &dumped).expect("write config");
    let plan = net.ctl(&sock, &["reload", "--dry-run"]);
    assert!(plan.ends_with("nothing to change\n"), "{plan}\n{dumped}");
    let b3 = serde_json::from_str::<serde_json::Value>(&dumped).expect("dump JSON")["vips"][0]
        ["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == "198.18.0.13")
        .map(|b| b["weight"].clone());
    assert_eq!(b3, Some(serde_json::json!(5)), "{dumped}");

    // Balancer-wide settings change in place: said, kept in the running config, and the
    // VIP goes on answering.
    let settings = dumped.replacen(
        r#""vips""#,
        r#""mtu": 1400, "record_rate_limit": 1000, "vips""#,
        1,
    );
    std::fs::write(&file, &settings).expect("write config");
    let done = net.ctl(&sock, &["reload"]);
    assert!(
        done.contains("mtu: 1400")
            && done.contains("record_rate_limit: 1000 new flows recorded per CPU and second")
            && done.contains(": 2 changes"),
        "{done}"
    );
    let running: serde_json::Value =
        serde_json::from_str(&net.ctl(&sock, &["dump-config"])).expect("dump JSON");
    assert_eq!(
        (&running["mtu"], &running["record_rate_limit"]),
        (&serde_json::json!(1400), &serde_json::json!(1000)),
        "{running}"
    );
    let answered = tally(&net.client, 10);
    assert_eq!(answered.values().sum::<usize>(), 10, "{answered:?}");
    assert!(
        lb.running(),
        "xlb stopped on a bad reload:\n{}",
        lb.log_text()
    );
}

/// `max_conns` with real connections: three idle connections fill three backends of one
/// connection each, a fourth client's SYNs are dropped (`backends_full`) and its connect
/// times out, and once one connection closes a new one gets through, to the backend that
/// made room.
#[test]
fn max_conns_hold_new_connections_back_until_one_closes() {
    use std::io::{Read, Write};
    use xlb_tests::topology::connect_in;
    if !require_root() {
        return;
    }
    let backends: Vec<String> = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
        .iter()
        .map(|a| format!(r#"{{"address": "{a}", "max_conns": 1}}"#))
        .collect();
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp", "scheduler": "lc",
            "health_check": {TCP_CHECK}, "backends": [{}]}}]}}"#,
        backends.join(", ")
    );
    let (net, mut lb, sock) = net_with_lb("mxc", &cfg);
    // A flow whose hashes (2 candidates, then 16 more probes) reach only full backends is
    // dropped even while one has room (odds (2/3)^16 for the third): a new source port
    // hashes anew, as a client's next connection would.
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|i| {
            (0..3)
                .find_map(|_| connect_in(&net.client, vip80(), Duration::from_secs(2)).ok())
                .unwrap_or_else(|| panic!("connection {i} never got through"))
        })
        .collect();
    let estimates = |net: &DemoNet| -> Vec<u64> {
        net.status_json(&sock)["vips"][0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| b["active_estimate"].as_u64().unwrap_or(0))
            .collect()
    };
    assert_eq!(estimates(&net), [1, 1, 1], "one connection per backend");

    let full = |net: &DemoNet| {
        net.stats_json(&sock)["reasons"]["backends_full"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = full(&net);
    let refused = connect_in(&net.client, vip80(), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "a fourth connection got through every backend's limit"
    );
    assert!(
        full(&net) > before,
        "its SYNs were not counted backends_full"
    );

    // Raised at runtime (`xlb backend max-conns`), b1 takes one more: the next connection
    // that reaches it gets through, and b1 answers it.
    let vip = format!("{VIP4}:80/tcp");
    let said = net.ctl(&sock, &["backend", "max-conns", &vip, "198.18.0.11", "2"]);
    assert!(said.contains("at most 2 active flows"), "{said}");
    let mut more = (0..5)
        .find_map(|_| connect_in(&net.client, vip80(), Duration::from_secs(2)).ok())
        .expect("no connection got through after b1's limit was raised");
    more.write_all(b"GET / HTTP/1.0\r\nHost: xlb\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    more.read_to_string(&mut answer).expect("answer");
    assert_eq!(answer.lines().last().unwrap_or("").trim(), "b1", "{answer}");
    drop(more);
    net.ctl(&sock, &["backend", "max-conns", &vip, "198.18.0.11", "1"]);
    wait_for(
        "b1's extra connection's count back",
        Duration::from_secs(5),
        || estimates(&net).iter().sum::<u64>() == 3,
    );

    // The first connection asks and is answered (HTTP/1.0: the server closes), then closes
    // its side: its backend's count goes back, and a new connection lands there.
    let mut first = held.remove(0);
    first
        .write_all(b"GET / HTTP/1.0\r\nHost: xlb\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    first.read_to_string(&mut answer).expect("answer");
    let freed = answer.lines().last().unwrap_or("").trim().to_owned();
    drop(first);
    wait_for(
        "the closed connection's count back",
        Duration::from_secs(5),
        || estimates(&net).iter().sum::<u64>() == 2,
    );
    let body =
        http_get(&net.client, vip80(), "/", TIMEOUT).expect("a new connection after one closed");
    assert_eq!(
        String::from_utf8_lossy(&body).trim(),
        freed,
        "not the backend that made room"
    );
    assert!(lb.running(), "xlb stopped:\n{}", lb.log_text());
    drop(held);
}
