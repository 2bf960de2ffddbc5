//! End-to-end: a VIP restricted to some client prefixes (`allowed_sources`), with real line
//! servers behind the XDP balancer. The balancer's program runs before the host's
//! firewall, so the VIP itself must refuse clients outside its list: their connections
//! never open and are counted (`source_denied`); the list changes at runtime
//! (`xlb vip sources`), and a connection opened while admitted stays open, unless the
//! change says `--cut` (its flow is forgotten; `xlb flows --forget` forgets flows by VIP,
//! backend or client).

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::require_root,
    topology::{xlb_bin, DemoNet, LineConn, Proc, NAME_PORT, VIP4},
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
    drops_show_the_refused_client(&net, &sock, addr);
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
    forgetting_an_admitted_flow_keeps_it_on_its_backend(&net, &sock, &mut kept, &who);
    net.ctl(&sock, &["vip", "sources", &vip, "198.19.0.0/16"]);
    assert_eq!(kept.who(), who, "the open connection moved or broke");
    assert!(
        LineConn::open(&net.client, addr, Duration::from_millis(1500)).is_err(),
        "a new connection from outside the narrowed list opened"
    );

    // The same list with --cut: the open connection's flow is forgotten, and its next
    // packets are refused as a new flow's would be.
    let before = denied(&net);
    let said = net.ctl(&sock, &["vip", "sources", &vip, "198.19.0.0/16", "--cut"]);
    assert!(said.contains("forgot 1 flow of other clients"), "{said}");
    assert!(kept.ask().is_err(), "the cut connection still answers");
    assert!(
        denied(&net) > before,
        "the cut connection's packets not counted"
    );
    let flows = net.ctl(&sock, &["flows", &vip]);
    assert!(flows.contains("0 flows"), "{flows}");
    let sampled: serde_json::Value = serde_json::from_str(&net.ctl(
        &sock,
        &[
            "drops",
            "--reason",
            "source_denied",
            "--limit",
            "1",
            "--json",
        ],
    ))
    .expect("drops JSON");
    let flags = sampled["samples"][0]["tcp_flags"].as_u64().unwrap_or(0);
    assert_eq!(
        flags & 0x02,
        0,
        "the last refusal is not the cut connection's: {sampled}"
    );
    assert_eq!(sampled["samples"][0]["sport"], kept.local_addr().port());

    // Every client: connects again. A list of the other family is refused, nothing changed.
    net.ctl(&sock, &["vip", "sources", &vip, "--any"]);
    let mut open = LineConn::to_vip(&net.client);
    open.who();
    let (ok, _, err) = net.try_ctl(&sock, &["vip", "sources", &vip, "fd00::/8"]);
    assert!(!ok && err.contains("other family"), "{err}");
    let status = net.status_json(&sock);
    assert_eq!(status["vips"][0]["allowed_sources"], serde_json::json!([]));

    let sampled = net.ctl(&sock, &["drops", "--reason", "no_backend"]);
    assert!(sampled.contains("no no_backend drops sampled"), "{sampled}");

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

/// `xlb flows --forget` on an admitted client's flow: the entry goes, and the flow's next
/// packet is scheduled anew. The VIP's Maglev table has not changed, so it lands on the
/// same backend, the connection keeps going and its flow is recorded again.
fn forgetting_an_admitted_flow_keeps_it_on_its_backend(
    net: &DemoNet,
    sock: &Path,
    kept: &mut LineConn,
    who: &str,
) {
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    let client = kept.local_addr().to_string();
    let listed = net.ctl(sock, &["flows", &vip]);
    assert!(listed.contains(&client), "{listed}");
    let (ok, _, err) = net.try_ctl(sock, &["flows", "--forget"]);
    assert!(
        !ok && err.contains("name a VIP, a backend or a client"),
        "{err}"
    );
    let said = net.ctl(
        sock,
        &["flows", &vip, "--client", "198.18.0.10", "--forget"],
    );
    assert!(said.starts_with("forgot 1 flow to "), "{said}");
    let listed = net.ctl(sock, &["flows", &vip]);
    assert!(!listed.contains(&client), "still recorded: {listed}");
    assert_eq!(kept.who(), who, "the forgotten flow moved or broke");
    let listed = net.ctl(sock, &["flows", &vip]);
    assert!(listed.contains(&client), "not recorded again: {listed}");
}

/// `xlb drops` shows the refused client's SYNs (its address, the VIP, the reason), writes
/// them to a pcap file as they came in, and `--follow` shows the next refusal as it comes.
fn drops_show_the_refused_client(net: &DemoNet, sock: &Path, addr: SocketAddr) {
    let answer: serde_json::Value =
        serde_json::from_str(&net.ctl(sock, &["drops", "--reason", "source_denied", "--json"]))
            .expect("drops JSON");
    let samples = answer["samples"].as_array().expect("samples");
    assert!(!samples.is_empty(), "no drop sampled: {answer}");
    for s in samples {
        assert_eq!(s["reason"], "source_denied", "{s}");
        assert_eq!(s["src"], "198.18.0.10", "{s}");
        assert_eq!(s["dst"], VIP4, "{s}");
        assert_eq!(s["dport"], NAME_PORT, "{s}");
        assert_eq!(
            s["tcp_flags"].as_u64().map(|f| f & 0x02),
            Some(0x02),
            "a SYN: {s}"
        );
    }
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    let text = net.ctl(sock, &["drops", &vip, "--client", "198.18.0.10"]);
    assert!(
        text.lines().any(|l| l.contains("source_denied")
            && l.contains("tcp 198.18.0.10:")
            && l.contains(&format!("> {VIP4}:{NAME_PORT} [S]"))),
        "{text}"
    );

    // Counted by reason and service: which VIP the counter's packets went to, from whom.
    let summary = net.ctl(sock, &["drops", "--summary"]);
    assert!(
        summary.lines().any(|l| l.contains("source_denied")
            && l.contains(&format!("{VIP4}:{NAME_PORT}/tcp"))
            && l.contains("198.18.0.10 (")),
        "{summary}"
    );
    let elsewhere = net.ctl(sock, &["drops", &vip, "--client", "198.18.0.11"]);
    assert!(
        elsewhere.starts_with("no drops to ") && elsewhere.contains("from 198.18.0.11/32"),
        "{elsewhere}"
    );

    // The frames in a pcap file: its header, then each frame's first bytes (the client's
    // address where IPv4 keeps it) and its whole length.
    let pcap = std::env::temp_dir().join(format!("xlb-drops-{}.pcap", std::process::id()));
    net.ctl(
        sock,
        &[
            "drops",
            "--limit",
            "1",
            "--pcap",
            pcap.to_str().expect("path"),
        ],
    );
    let bytes = std::fs::read(&pcap).expect("pcap written");
    let _ = std::fs::remove_file(&pcap);
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(word(0), 0xa1b2_3c4d, "pcap magic (ns)");
    assert_eq!(word(20), 1, "Ethernet");
    let (incl, orig) = (word(24 + 8) as usize, word(24 + 12) as usize);
    assert_eq!(bytes.len(), 24 + 16 + incl, "one record");
    assert_eq!(
        orig as u64,
        samples.last().unwrap()["frame_len"].as_u64().unwrap()
    );
    let frame = &bytes[24 + 16..];
    assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4");
    assert_eq!(&frame[26..30], &[198, 18, 0, 10], "the client");

    // --follow: the newest sample, then the next refusal as it is sampled.
    let out = std::env::temp_dir().join(format!("xlb-drops-{}.txt", std::process::id()));
    let mut follow = Command::new(xlb_bin())
        .args([
            "drops",
            "--follow",
            "--limit",
            "1",
            "--count",
            "2",
            "--duration",
            "30",
        ])
        .arg("--socket")
        .arg(sock)
        .stdout(Stdio::from(
            std::fs::File::create(&out).expect("follow output"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("xlb drops --follow");
    assert!(LineConn::open(&net.client, addr, Duration::from_millis(1500)).is_err());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = follow.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "xlb drops --follow ignored --duration"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines = std::fs::read_to_string(&out).expect("follow output");
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "{lines}");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.contains("source_denied")),
        "{lines:?}"
    );
    assert!(
        lines[0] < lines[1],
        "the new one after the old one: {lines:?}"
    );
}
