//! End-to-end: a VIP's `new_flow_rate_limit` against a burst of real connections. With 3
//! new flows a second per CPU, a burst of 20 connections to a web VIP has some turned away
//! (their SYNs dropped and counted `vip_flow_limit`; the backends' health checks, straight
//! to them, are not); `xlb vip flow-limit VIP none` lifts it at once and the same burst is
//! served whole. A VIP's `client_flow_rate_limit` holds one client's burst back while
//! another client's connections, at the same time, are all served.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use xlb_tests::{
    netns::require_root,
    topology::{http_get, http_get_from, scrape_metrics, DemoNet, Proc, VIP4},
};

/// The balancer's metrics address, in its namespace.
const METRICS: &str = "198.18.0.2:9100";

/// A burst of `n` new connections, each given `timeout` to answer; the unanswered count.
fn burst(net: &DemoNet, vip: SocketAddr, n: usize, timeout: Duration) -> usize {
    (0..n)
        .filter(|_| http_get(&net.client, vip, "/", timeout).is_err())
        .count()
}

/// Two web backends behind the demo's VIPs, the IPv4 one with `limit` (`"field": N`), and
/// a balancer serving them (metrics on [`METRICS`]): the net, the balancer, its socket,
/// and the limited VIP.
fn limited(prefix: &str, limit: &str) -> (DemoNet, Proc, PathBuf, SocketAddr) {
    let mut net = DemoNet::new(prefix, 2);
    net.start_backends();
    let cfg = net.config_json().replacen(
        r#""protocol": "tcp","#,
        &format!(r#""protocol": "tcp", {limit},"#),
        1,
    );
    let (lb, sock) = net.start_lb(&cfg, &["--metrics", METRICS]);
    net.wait_ready(&sock);
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    (net, lb, sock, vip)
}

#[test]
fn a_burst_of_new_connections_is_held_to_the_vips_rate_and_lifting_it_serves_all() {
    if !require_root() {
        return;
    }
    let (net, _lb, sock, vip) = limited("e2efl", r#""new_flow_rate_limit": 3"#);
    let status = net.status_json(&sock);
    assert_eq!(status["vips"][0]["new_flow_rate_limit"], 3, "{status}");

    // Half a second each: a dropped SYN's first retry comes after a second.
    let lost = burst(&net, vip, 20, Duration::from_millis(500));
    assert!(
        lost > 0,
        "20 new connections all admitted under a limit of 3 a second"
    );
    assert!(lost < 20, "no connection admitted at all");
    let stats = net.stats_json(&sock);
    let limited = stats["reasons"]["vip_flow_limit"].as_u64().unwrap_or(0);
    assert!(
        limited >= lost as u64,
        "vip_flow_limit {limited} for {lost} lost: {stats}"
    );
    // The VIP's own count says the same.
    let status = net.status_json(&sock);
    let by_vip = &status["vips"][0]["new_flows_limited"];
    assert_eq!(by_vip["vip"].as_u64(), Some(limited), "{status}");
    assert_eq!(by_vip["client"].as_u64(), Some(0), "{status}");

    net.ctl(&sock, &["vip", "flow-limit", &format!("{VIP4}:80"), "none"]);
    let lost = burst(&net, vip, 20, Duration::from_secs(2));
    assert_eq!(lost, 0, "lost connections with the limit lifted");
    let status = net.status_json(&sock);
    assert!(
        status["vips"][0]["new_flow_rate_limit"].is_null(),
        "{status}"
    );
}

#[test]
fn one_clients_burst_is_held_back_while_another_client_is_served() {
    if !require_root() {
        return;
    }
    let (net, _lb, sock, vip) = limited("e2efc", r#""client_flow_rate_limit": 2"#);
    let (greedy, polite): (IpAddr, IpAddr) = (
        "198.18.0.30".parse().unwrap(),
        "198.18.0.31".parse().unwrap(),
    );
    for c in [greedy, polite] {
        net.client.addr("eth0", &format!("{c}/24"));
    }
    let get =
        |src: IpAddr| http_get_from(&net.client, src, vip, "/", Duration::from_millis(500)).is_ok();
    // Interleaved, so both clients' connections fall in the same seconds: four of the
    // greedy client's for each of the polite one's.
    let (mut greedy_lost, mut polite_lost) = (0, 0);
    for _ in 0..4 {
        greedy_lost += (0..4).filter(|_| !get(greedy)).count();
        polite_lost += usize::from(!get(polite));
    }
    assert!(greedy_lost > 0, "16 connections of one client all admitted");
    assert_eq!(polite_lost, 0, "the other client lost connections");
    let stats = net.stats_json(&sock);
    let limited = stats["reasons"]["client_flow_limit"].as_u64().unwrap_or(0);
    assert!(
        limited >= greedy_lost as u64,
        "client_flow_limit {limited} for {greedy_lost} lost: {stats}"
    );
    assert_eq!(stats["reasons"]["vip_flow_limit"].as_u64().unwrap_or(0), 0);
    let status = net.status_json(&sock);
    assert_eq!(status["vips"][0]["client_flow_rate_limit"], 2, "{status}");
    assert_eq!(
        status["vips"][0]["new_flows_limited"]["client"].as_u64(),
        Some(limited),
        "{status}"
    );
    let text = net.ctl(&sock, &["status", &format!("{VIP4}:80")]);
    assert!(
        text.contains(&format!(
            "turned away: 0 new flows by the VIP's limit, {limited} by the per-client limit"
        )),
        "{text}"
    );
    let metrics = scrape_metrics(&net.lb, METRICS.parse().unwrap());
    let line = format!(
        "xlb_vip_new_flows_limited_total{{vip=\"{VIP4}:80/tcp\",limit=\"client\"}} {limited}"
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");

    // Lifted with the CLI: the greedy client is served whole.
    net.ctl(
        &sock,
        &[
            "vip",
            "flow-limit",
            &format!("{VIP4}:80"),
            "none",
            "--per-client",
        ],
    );
    let lost = (0..12).filter(|_| !get(greedy)).count();
    assert_eq!(lost, 0, "lost connections with the limit lifted");
}
