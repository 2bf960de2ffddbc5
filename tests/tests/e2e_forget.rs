//! End-to-end: `xlb flows --forget` on a drained backend, with real line servers behind the
//! XDP balancer. Draining keeps a backend's open connections on it until they end; an
//! operator who cannot wait forgets its flows, and their next packets go to the backends
//! still in the VIP's table, whose servers know nothing of those connections and reset
//! them: the clients see their connections end at once (and reconnect elsewhere), while
//! the other backends' connections carry on untouched.

use std::collections::BTreeMap;

use xlb_tests::{
    netns::require_root,
    topology::{DemoNet, LineConn, Proc, NAME_PORT, VIP4},
};

/// The line servers' VIP over three backends, checked every 300 ms.
fn config() -> String {
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp",
            "health_check": {{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}},
                         {{"address": "198.18.0.13"}}]}}]}}"#
    )
}

#[test]
fn forgetting_a_drained_backends_flows_ends_its_connections_and_no_others() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2efgt", 3);
    net.start_backends();
    let _servers: Vec<Proc> = (0..3).map(|i| net.start_name_server(i)).collect();
    let (_lb, sock) = net.start_lb(&config(), &[]);
    net.wait_ready(&sock);
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");

    let mut conns = LineConn::many_to_vip(&net.client, 24);
    let mut per_backend = BTreeMap::new();
    for (_, who) in &conns {
        *per_backend.entry(who.clone()).or_insert(0usize) += 1;
    }
    assert!(
        per_backend.get("b1").is_some_and(|&n| n > 0) && per_backend.len() >= 2,
        "connections not spread: {per_backend:?}"
    );
    let on_b1 = per_backend["b1"];

    // Drained: its connections stay on it.
    net.ctl(&sock, &["backend", "drain", &vip, "198.18.0.11"]);
    for (c, who) in &mut conns {
        assert_eq!(&c.who(), who, "a connection moved on the drain");
    }

    // Live connections are not idle: a forget narrowed to flows idle for over a minute
    // takes none of them.
    let said = net.ctl(
        &sock,
        &[
            "flows",
            &vip,
            "--backend",
            "198.18.0.11",
            "--idle-over",
            "60",
            "--forget",
        ],
    );
    assert!(said.starts_with("forgot 0 flows"), "{said}");

    // Forgotten: exactly its flows go (the listing said how many it had).
    let listed = net.ctl(&sock, &["flows", &vip, "--backend", "198.18.0.11"]);
    assert!(
        listed.contains(&format!("{on_b1} flow")),
        "b1 holds {on_b1} connections: {listed}"
    );
    let said = net.ctl(
        &sock,
        &["flows", &vip, "--backend", "198.18.0.11", "--forget"],
    );
    assert!(
        said.starts_with(&format!(
            "forgot {on_b1} flow{} to {vip} on backend 198.18.0.11",
            if on_b1 == 1 { "" } else { "s" }
        )),
        "{said}"
    );

    // b1's connections end: the backend their packets reach now resets them (an answer
    // from b1 would mean the flow was not forgotten; a timeout, that its packets went
    // nowhere). The others answer as before.
    for (c, who) in &mut conns {
        match (who.as_str(), c.ask()) {
            ("b1", Ok(answer)) => panic!("a forgotten flow still answered by {answer}"),
            ("b1", Err(e)) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) || e.to_string().contains("reset"),
                "a forgotten flow ended by {e} ({:?}), not a reset",
                e.kind()
            ),
            (_, Ok(answer)) => assert_eq!(&answer, who, "a connection of another backend moved"),
            (_, Err(e)) => panic!("a connection on {who} broke: {e}"),
        }
    }
    let listed = net.ctl(&sock, &["flows", &vip, "--backend", "198.18.0.11"]);
    assert!(listed.contains("0 flows"), "{listed}");
    // Its clients reconnect, to the others.
    for _ in 0..on_b1 {
        assert_ne!(LineConn::to_vip(&net.client).who(), "b1");
    }
}
