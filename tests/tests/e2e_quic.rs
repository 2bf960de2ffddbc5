//! End-to-end: QUIC connections that move stay on their server. Three backends run a real
//! QUIC server (quinn, `xlb-quic-peer`) on the VIP's address, each writing its server ID
//! into the connection IDs it issues; a real QUIC client opens connections through the VIP
//! and moves each one to new local ports mid-connection, as a phone changing networks or a
//! NAT rebinding does. Through a VIP with `quic`, every request on every path of a
//! connection is answered by the server that holds it (over IPv4 and IPv6, DSR); through the
//! same servers on a VIP without it, moved paths land on servers that do not know the
//! connection, and requests go unanswered.

use serde_json::Value;
use xlb_tests::{
    netns::require_root,
    topology::{spawn_logged, DemoNet, Proc, VIP4, VIP6},
};

/// The QUIC VIP's port, and the same servers' on a VIP without `quic`.
const QUIC: u16 = 443;
const PLAIN: u16 = 444;

fn peer() -> &'static str {
    env!("CARGO_BIN_EXE_xlb-quic-peer")
}

/// Backend `i`'s QUIC server on `vip:port`, with server ID `i + 1`.
fn serve(net: &DemoNet, i: usize, vip: &str, port: u16) -> Proc {
    let b = &net.backends[i];
    let listen = if vip.contains(':') {
        format!("[{vip}]:{port}")
    } else {
        format!("{vip}:{port}")
    };
    let log = net
        .dir
        .join(format!("{}-quic-{port}-{}.log", b.name, vip.len()));
    let id = (i + 1).to_string();
    spawn_logged(
        &b.ns,
        &[
            peer(),
            "server",
            "--listen",
            &listen,
            "--name",
            &b.name,
            "--server-id",
            &id,
            "--id-bytes",
            "2",
        ],
        &log,
    )
}

/// Runs the client against `target` and returns its report: `connections` connections,
/// each moved `migrations` times, two requests a path.
fn client(net: &DemoNet, target: &str, connections: u32, migrations: u32) -> Value {
    let out = net.client.exec(&[
        peer(),
        "client",
        "--connect",
        target,
        "--connections",
        &connections.to_string(),
        "--migrations",
        &migrations.to_string(),
        "--requests",
        "2",
        "--timeout-ms",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client's report is JSON")
}

/// Per connection: the answers' (server, connection serial) on each path, and the paths'
/// local ports; errors as the client gave them.
struct Seen {
    paths: Vec<Vec<(String, String)>>,
    ports: Vec<u64>,
    errors: Vec<String>,
}

fn seen(connection: &Value) -> Seen {
    let mut s = Seen {
        paths: Vec::new(),
        ports: Vec::new(),
        errors: Vec::new(),
    };
    if let Some(e) = connection["error"].as_str() {
        s.errors.push(e.to_owned());
    }
    for path in connection["paths"].as_array().into_iter().flatten() {
        s.ports.push(path["local_port"].as_u64().unwrap_or(0));
        let answers = path["answers"].as_array().into_iter().flatten();
        s.paths.push(
            answers
                .filter_map(Value::as_str)
                .map(|a| {
                    let mut w = a.split_whitespace();
                    let server = w.next().unwrap_or_default().to_owned();
                    (server, w.next().unwrap_or_default().to_owned())
                })
                .collect(),
        );
        let errors = path["errors"].as_array().into_iter().flatten();
        s.errors
            .extend(errors.filter_map(Value::as_str).map(str::to_owned));
    }
    s
}

#[test]
fn moved_quic_connections_stay_on_their_server() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eqc", 3);
    for i in 0..3 {
        net.start_decap(i);
    }
    let _servers: Vec<Proc> = (0..3)
        .flat_map(|i| {
            [
                serve(&net, i, VIP4, QUIC),
                serve(&net, i, VIP6, QUIC),
                serve(&net, i, VIP4, PLAIN),
            ]
        })
        .collect();
    let backends = |v6: bool, ids: bool| {
        (1..=3)
            .map(|i| {
                let addr = if v6 {
                    format!("fd00::{}", 10 + i)
                } else {
                    format!("198.18.0.{}", 10 + i)
                };
                if ids {
                    format!(r#"{{"address": "{addr}", "quic_server_id": {i}}}"#)
                } else {
                    format!(r#"{{"address": "{addr}"}}"#)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // QUIC servers answer no probe of a health check's: none here.
    let vip = |addr: &str, port: u16, quic: bool, v6: bool| {
        let q = if quic {
            r#""quic": {"server_id_bytes": 2},"#
        } else {
            ""
        };
        format!(
            r#"{{"address": "{addr}", "port": {port}, "protocol": "udp", {q}
                "health_check": {{"kind": "none"}}, "backends": [{}]}}"#,
            backends(v6, quic)
        )
    };
    let cfg = format!(
        r#"{{"vips": [{}, {}, {}]}}"#,
        vip(VIP4, QUIC, true, false),
        vip(VIP6, QUIC, true, true),
        vip(VIP4, PLAIN, false, false)
    );
    let (_lb, sock) = net.start_lb(&cfg, &[]);
    net.wait_ready(&sock);

    for target in [format!("{VIP4}:{QUIC}"), format!("[{VIP6}]:{QUIC}")] {
        let report = client(&net, &target, 6, 3);
        let connections = report["connections"].as_array().expect("connections");
        assert_eq!(connections.len(), 6, "{report}");
        let mut servers = std::collections::BTreeSet::new();
        for (c, conn) in connections.iter().enumerate() {
            let s = seen(conn);
            assert!(s.errors.is_empty(), "{target} c{c}: {:?}", s.errors);
            assert_eq!(s.paths.len(), 4, "{target} c{c}: {conn}");
            let mut ports = s.ports.clone();
            ports.dedup();
            assert_eq!(
                ports.len(),
                4,
                "{target} c{c}: the client did not move: {conn}"
            );
            // One server and one connection of it, on every path.
            let first = s.paths[0].first().cloned().expect("an answer");
            for (p, answers) in s.paths.iter().enumerate() {
                assert_eq!(answers.len(), 2, "{target} c{c} p{p}: {conn}");
                for a in answers {
                    assert_eq!(*a, first, "{target} c{c} p{p}: {conn}");
                }
            }
            servers.insert(first.0);
        }
        // The handshakes went by hash: more than one server holds connections.
        assert!(servers.len() >= 2, "{target}: all on {servers:?}");
    }
    let stats = net.stats_json(&sock);
    let routed = stats["reasons"]["quic_routed"].as_u64().unwrap_or(0);
    // Three moves of twelve connections, each a new flow the ID placed (its first packet
    // at least: more when a path's first packets race the server's).
    assert!(routed >= 36, "quic_routed {routed}: {stats}");
    let status: Value =
        serde_json::from_str(&net.ctl(&sock, &["status", "--json"])).expect("status JSON");
    let ids: Vec<u64> = status["vips"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["quic_server_id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2, 3], "{status}");

    // The same servers without `quic`: a moved path goes where its new 5-tuple hashes,
    // mostly to a server that does not know the connection.
    let report = client(&net, &format!("{VIP4}:{PLAIN}"), 4, 2);
    let lost: usize = report["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| seen(c).errors.len())
        .sum();
    assert!(
        lost > 0,
        "every moved path without server-ID routing was answered: {report}"
    );
}
