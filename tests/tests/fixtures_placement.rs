//! The control socket's `flow` op (`Daemon::flow`, `xlb::placement`) against the real data
//! path: for each flow, what the op says the next packet does (its backend, and whether the
//! flow is recorded) is what test_run then sees the program do, for every scheduler kind
//! (hash, source hash, least connection, round robin), before and after the flow is
//! recorded, after its backend is removed, and for a client outside an allow-list.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use xlb::{config::VipId, daemon::state::Daemon};
use xlb_tests::{fixtures::*, netns::require_root, packet::Pkt};

const LB: &str = "198.18.0.2";
const CLIENT: &str = "198.18.0.10";

/// One VIP per scheduler kind on 198.18.1.1, three backends each.
fn config() -> String {
    let vip = |port: u16, scheduler: &str| {
        format!(
            r#"{{"address": "198.18.1.1", "port": {port}, "protocol": "tcp", "scheduler": "{scheduler}",
                "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}},
                             {{"address": "198.18.0.13"}}]}}"#
        )
    };
    format!(
        r#"{{"outer_source": {{"v4": "{LB}"}}, "vips": [{}, {}, {}, {}]}}"#,
        vip(80, "maglev"),
        vip(81, "sh"),
        vip(82, "lc"),
        vip(83, "rr")
    )
}

/// The backend test_run tunnels `frame` to.
fn sent_to(ebpf: &mut aya::Ebpf, frame: &[u8]) -> IpAddr {
    tunnelled_to(ebpf, frame, LB.parse().unwrap())
}

fn packet(sport: u16, dport: u16) -> Pkt {
    Pkt::eth(CLIENT_MAC, LB_MAC)
        .ipv4(v4(CLIENT), v4("198.18.1.1"))
        .tcp(sport, dport)
}

fn ask(d: &Daemon, port: u16, sport: u16) -> Value {
    let vip: VipId = format!("198.18.1.1:{port}/tcp").parse().unwrap();
    let client: SocketAddr = format!("{CLIENT}:{sport}").parse().unwrap();
    d.flow(&vip, client).expect("flow op")
}

fn addr(v: &Value) -> Option<IpAddr> {
    v.as_str().map(|s| s.parse().expect("an address"))
}

#[test]
fn the_flow_op_says_where_the_data_path_sends_each_flow() {
    if !require_root() {
        return;
    }
    let (mut d, mut ebpf) = Lab::new(&config()).into_daemon();
    for (port, how) in [
        (80, "hash"),
        (81, "hash"),
        (82, "less_loaded"),
        (83, "round_robin"),
    ] {
        for sport in 41_000..41_030 {
            // A new flow: the scheduler's pick.
            let before = ask(&d, port, sport);
            assert!(before["recorded"].is_null(), "{before}");
            assert_eq!(before["next"]["how"], how, "{before}");
            let went = sent_to(&mut ebpf, &packet(sport, port).syn().build());
            if how == "round_robin" {
                assert!(before["next"]["backend"].is_null(), "{before}");
            } else {
                assert_eq!(
                    addr(&before["next"]["backend"]),
                    Some(went),
                    "port {port}: {before}"
                );
            }
            if how == "less_loaded" {
                let c = before["next"]["candidates"].as_array().expect("candidates");
                assert!(c.iter().any(|a| addr(a) == Some(went)), "{before}");
            }
            // Recorded now, on the backend it went to.
            let after = ask(&d, port, sport);
            assert_eq!(addr(&after["recorded"]["backend"]), Some(went), "{after}");
            assert_eq!(after["next"]["how"], "recorded", "{after}");
            assert_eq!(sent_to(&mut ebpf, &packet(sport, port).ack().build()), went);
        }
    }

    // A backend removed: its flows' entries name no backend, and their next packets go
    // where the op says.
    let vip: VipId = "198.18.1.1:80/tcp".parse().unwrap();
    let gone: IpAddr = "198.18.0.12".parse().unwrap();
    let on_gone: Vec<u16> = (41_000..41_030)
        .filter(|&p| addr(&ask(&d, 80, p)["recorded"]["backend"]) == Some(gone))
        .collect();
    assert!(!on_gone.is_empty(), "no flow on {gone}");
    d.remove_backend(&vip, gone).expect("remove");
    for sport in on_gone {
        let said = ask(&d, 80, sport);
        assert!(said["recorded"].is_object(), "{said}");
        assert!(said["recorded"]["backend"].is_null(), "{said}");
        assert_eq!(said["next"]["how"], "hash", "{said}");
        let went = sent_to(&mut ebpf, &packet(sport, 80).ack().build());
        assert_ne!(went, gone);
        assert_eq!(addr(&said["next"]["backend"]), Some(went), "{said}");
    }

    // The client outside port 81's allow-list: new flows dropped as the op says, its
    // recorded flows still served where the op says.
    let vip81: VipId = "198.18.1.1:81/tcp".parse().unwrap();
    d.set_sources(&vip81, vec!["198.19.0.0/16".parse().unwrap()])
        .expect("allow-list");
    let said = ask(&d, 81, 42_000);
    assert_eq!(said["next"]["how"], "source_denied", "{said}");
    let out = run_balancer(&mut ebpf, &packet(42_000, 81).syn().build());
    assert_eq!(out.verdict, XDP_DROP, "a denied new flow");
    let said = ask(&d, 81, 41_000);
    assert_eq!(said["next"]["how"], "recorded", "{said}");
    let went = sent_to(&mut ebpf, &packet(41_000, 81).ack().build());
    assert_eq!(addr(&said["next"]["backend"]), Some(went), "{said}");

    // Refusals: an unknown VIP, a client of the other family.
    let refused = |vip: &str, client: &str| {
        d.flow(&vip.parse().unwrap(), client.parse().unwrap())
            .expect_err("refused")
    };
    assert_eq!(
        refused("198.18.1.1:99/tcp", "198.18.0.10:1").code,
        "unknown_vip"
    );
    let e = refused("198.18.1.1:80/tcp", "[fd00::10]:1");
    assert_eq!(e.code, "bad_request");
    assert!(e.message.contains("different families"), "{}", e.message);
}
