//! End-to-end: `tcp` checks with `send` / `expect`. Backends run a line server (each line
//! answered with the backend's name); the checks send a line and expect an answer. When one
//! backend's service hangs — its port still accepts connections (the kernel completes the
//! handshakes), but nothing answers — a handshake-only check would keep it in; this one
//! takes it out, the VIP's clients are served by the other, and it comes back with its
//! service.

use std::{net::SocketAddr, path::Path, time::Duration};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, spawn_logged, DemoNet, LineConn, NAME_PORT, PYTHON, VIP4},
};

/// Listens on the port and never accepts: connections complete in the kernel's queue and
/// wait there, as with a service whose workers are all stuck.
const HUNG_SERVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(1024)
time.sleep(3600)
"#;

fn state(net: &DemoNet, sock: &Path, addr: &str) -> Option<String> {
    net.backend_states(sock)
        .get(&format!("{VIP4}:{NAME_PORT}/tcp {addr}"))
        .cloned()
}

fn last_error(net: &DemoNet, sock: &Path, addr: &str) -> String {
    net.status_json(sock)["vips"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr).cloned())
        .and_then(|b| b["health"]["last_error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn a_hung_service_fails_send_expect_checks_that_a_handshake_passes() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2etcx", 2);
    for i in 0..2 {
        net.start_decap(i);
    }
    let _b1 = net.start_name_server(0);
    let b2 = net.start_name_server(1);
    let check = r#"{"kind": "tcp", "send": "health\n", "expect": "b", "interval_ms": 300, "timeout_ms": 250, "rise": 2, "fall": 2, "down_interval_ms": 300}"#;
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp",
            "health_check": {check},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);
    let up = |net: &DemoNet, addr: &str| state(net, &sock, addr).as_deref() == Some("up");
    wait_for("both backends up", Duration::from_secs(15), || {
        up(&net, "198.18.0.11") && up(&net, "198.18.0.12")
    });

    // b2's service hangs: its port still completes handshakes.
    drop(b2);
    let log = net.dir.join("b2-hung.log");
    let port = NAME_PORT.to_string();
    let hung = spawn_logged(
        &net.backends[1].ns,
        &[PYTHON, "-c", HUNG_SERVER, &port],
        &log,
    );
    let own = SocketAddr::new("198.18.0.12".parse().unwrap(), NAME_PORT);
    wait_for("the hung server to listen", Duration::from_secs(10), || {
        connect_in(&net.lb, own, Duration::from_millis(300)).is_ok()
    });
    wait_for("b2 down", Duration::from_secs(15), || {
        state(&net, &sock, "198.18.0.12").as_deref() == Some("down")
    });
    assert!(up(&net, "198.18.0.11"), "{:?}", net.backend_states(&sock));
    let e = last_error(&net, &sock, "198.18.0.12");
    assert!(e.starts_with("no answer within"), "{e}");
    // A handshake-only check could not have told: the port accepts.
    assert!(connect_in(&net.lb, own, Duration::from_secs(1)).is_ok());
    // The VIP's clients get b1.
    for _ in 0..8 {
        let mut c = LineConn::to_vip(&net.client);
        assert_eq!(c.who(), "b1");
    }

    // The service back: b2 up again.
    drop(hung);
    let _b2 = net.start_name_server(1);
    wait_for("b2 up again", Duration::from_secs(15), || {
        up(&net, "198.18.0.12")
    });
}
