//! End-to-end: a VIP restricted to some client prefixes (`allowed_sources`), with real line
//! servers behind the XDP balancer. The balancer's program runs before the host's
//! firewall, so the VIP itself must refuse clients outside its list: their connections
//! never open and are counted (`source_denied`); the list changes at runtime
//! (`xlb vip sources`), and a connection opened while admitted stays open.

use std::{net::SocketAddr, time::Duration};

use xlb_tests::{
    netns::require_root,
    topology::{DemoNet, LineConn, Proc, NAME_PORT, VIP4},
};

/// The line servers' VIP, admitting only a prefix the client (198.18.0.10) is not in.
fn config() -> String {
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp",
            "allowed_sources": ["198.19.0.0/16"],
            "health_check": {{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#
    )
}

#[test]
fn clients_outside_the_list_cannot_connect_and_a_list_change_applies_to_new_connections() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2esrc", 2);
    net.start_backends();
    let _servers: Vec<Proc> = (0..2).map(|i| net.start_name_server(i)).collect();
    // Its log as JSON lines, as a log pipeline takes them (checked at the end).
    let (lb, sock) = net.start_lb(&config(), &["--log-format", "json"]);
    net.wait_ready(&sock);
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    let addr = SocketAddr::new(VIP4.parse().expect("VIP4"), NAME_PORT);
    let denied = |net: &DemoNet| {
        net.stats_json(&sock)["reasons"]["source_denied"]
            .as_u64()
            .unwrap_or(0)
    };

    // Not listed: the SYN (and its retransmissions) are dropped, the connect times out.
    let before = denied(&net);
    let refused = LineConn::open(&net.client, addr, Duration::from_millis(1500));
    assert!(refused.is_err(), "a client outside the list connected");
    assert!(denied(&net) > before, "no source_denied counted");
    let flow = net.ctl(&sock, &["flow", &vip, "198.18.0.10:40000"]);
    assert!(flow.contains("source_denied"), "{flow}");
    let status = net.status_json(&sock);
    assert_eq!(
        status["vips"][0]["allowed_sources"],
        serde_json::json!(["198.19.0.0/16"])
    );

    // Listed at runtime: it connects; narrowed again, its open connection stays (a rule
    // change applies to new connections) while a new one is refused.
    let said = net.ctl(
        &sock,
        &["vip", "sources", &vip, "198.19.0.0/16", "198.18.0.0/24"],
    );
    assert!(said.contains("198.18.0.0/24"), "{said}");
    let mut kept = LineConn::to_vip(&net.client);
    let who = kept.who();
    net.ctl(&sock, &["vip", "sources", &vip, "198.19.0.0/16"]);
    assert_eq!(kept.who(), who, "the open connection moved or broke");
    assert!(
        LineConn::open(&net.client, addr, Duration::from_millis(1500)).is_err(),
        "a new connection from outside the narrowed list opened"
    );

    // Every client: connects again. A list of the other family is refused, nothing changed.
    net.ctl(&sock, &["vip", "sources", &vip, "--any"]);
    let mut open = LineConn::to_vip(&net.client);
    open.who();
    let (ok, _, err) = net.try_ctl(&sock, &["vip", "sources", &vip, "fd00::/8"]);
    assert!(!ok && err.contains("other family"), "{err}");
    let status = net.status_json(&sock);
    assert_eq!(status["vips"][0]["allowed_sources"], serde_json::json!([]));

    // Every line the daemon logged is one JSON object, its start-up's among them.
    let log = lb.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["ts"].is_string()),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["target"] == "xlb::control::server"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("control socket listening on "))),
        "{log}"
    );
}
