//! `cargo xtask demo`: xlb balancing real HTTP traffic on a built-in virtual network, with a
//! live failover. Everything lives in network namespaces this program creates and removes.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{connect_in, curl, curl_with, xlb_bin, DemoNet, SINK_PORT, VIP4, VIP6},
};

const REQUESTS: usize = 30;

fn main() {
    if !require_root() {
        std::process::exit(1);
    }
    println!("xlb demo: building the network (all in private network namespaces)");
    println!("  client 198.18.0.10 / fd00::10  ──►  VIP {VIP4}:80 and [{VIP6}]:80");
    println!("  balancer 198.18.0.2 / fd00::2 (xlb run, XDP)  ──IP-in-IP──►  backends b1 b2 b3");
    println!("  backends answer the client directly (direct server return)\n");
    let mut net = DemoNet::new("demo", 3);
    net.start_backends();
    let (lb, sock) = net.start_lb(&net.config_json(), &[]);
    net.wait_ready(&sock);
    println!("{}", net.ctl(&sock, &["status"]));

    let url4 = format!("http://{VIP4}/");
    let url6 = format!("http://[{VIP6}]/");
    tally(&net, &url4, "IPv4");
    tally(&net, &url6, "IPv6");
    ping_vips(&net);

    println!("\nfailover: stopping b2's web server (its host stays up; health checks notice)");
    net.stop_http(1);
    let b2_down = || {
        net.backend_states(&sock)
            .get("198.18.1.1:80/tcp 198.18.0.12")
            .map(String::as_str)
            == Some("down")
    };
    wait_for("b2 to be marked down", Duration::from_secs(15), b2_down);
    println!("{}", net.ctl(&sock, &["status"]));
    // The operator's live view, taken while the requests run: b2 gets nothing.
    let rate = Command::new(xlb_bin())
        .args(["status", "--rate", "2", "--socket"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn();
    tally(&net, &url4, "IPv4 with b2 down");
    if let Ok(out) = rate.and_then(|r| r.wait_with_output()) {
        println!("\nxlb status --rate 2, while those requests ran:");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    println!("\nb2's web server is back");
    net.start_http(1);
    wait_for("b2 to rejoin", Duration::from_secs(15), || {
        net.backend_states(&sock).values().all(|s| s == "up")
    });
    tally(&net, &url4, "IPv4 with b2 back");

    // The operator's question when a user reports trouble: which backend serves them?
    let port = "40123";
    if let Some(body) = curl_with(&net.client, &url4, 2, &["--local-port", port]) {
        println!(
            "
a request from 198.18.0.10:{port} was answered by {body}; xlb flow says:"
        );
        let client = format!("198.18.0.10:{port}");
        println!(
            "{}",
            net.ctl(&sock, &["flow", "198.18.1.1:80/tcp", &client])
        );
    }
    // And before taking a backend away: who is on it (ipvsadm -Lnc's view)?
    println!(
        "the flows recorded on b1 (xlb flows 198.18.1.1:80/tcp --backend 198.18.0.11 --limit 5):"
    );
    println!(
        "{}",
        net.ctl(
            &sock,
            &[
                "flows",
                "198.18.1.1:80/tcp",
                "--backend",
                "198.18.0.11",
                "--limit",
                "5"
            ]
        )
    );

    // XDP runs before the host's firewall: the VIP itself admits or refuses clients.
    // Two connections opened while every client is admitted, idle until asked.
    let addr = SocketAddr::new(IpAddr::V4(VIP4.parse().expect("VIP4")), 80);
    let mut held: Vec<TcpStream> = (0..2)
        .filter_map(|_| connect_in(&net.client, addr, Duration::from_secs(3)).ok())
        .collect();
    println!("\nrestricting the VIP to clients of 198.19.0.0/16 (the client is 198.18.0.10):");
    let vip = "198.18.1.1:80/tcp";
    println!(
        "{}",
        net.ctl(&sock, &["vip", "sources", vip, "198.19.0.0/16"])
            .trim_end()
    );
    let refused = curl(&net.client, &url4, 1).is_none();
    println!(
        "  a new request {}",
        if refused {
            "gets no answer: its SYNs are dropped (source_denied)"
        } else {
            "got an answer (unexpected)"
        }
    );
    // The packets behind that counter: who was refused, as the balancer saw them.
    println!("the balancer's samples of those drops (xlb drops --reason source_denied --limit 3):");
    print!(
        "{}",
        net.ctl(
            &sock,
            &["drops", "--reason", "source_denied", "--limit", "3"]
        )
    );
    // A rule change applies to new connections, as a stateful firewall's does; `--cut`
    // also stops the open ones of clients it leaves out.
    if held.len() == 2 {
        println!(
            "  a request on a connection opened before the change {}",
            if answered(&mut held[0]) {
                "is answered: open connections keep going"
            } else {
                "gets no answer (unexpected)"
            }
        );
        println!(
            "{}",
            net.ctl(&sock, &["vip", "sources", vip, "198.19.0.0/16", "--cut"])
                .trim_end()
        );
        println!(
            "  a request on the other connection opened before {}",
            if answered(&mut held[1]) {
                "is answered (unexpected)"
            } else {
                "gets no answer now: its flow was forgotten, its packets are refused"
            }
        );
    }
    println!(
        "{}",
        net.ctl(&sock, &["vip", "sources", vip, "--any"]).trim_end()
    );
    tally(&net, &url4, "IPv4, every client admitted again");

    // DSR's own failure: a backend whose decap stops serves nothing, while a check of its
    // own address still passes. A check through its tunnel, as clients' packets go, sees it.
    println!(
        "\nchecking b3 through its tunnel (a SYN to the VIP, IP-in-IP, as clients' packets go):"
    );
    println!(
        "{}",
        net.ctl(
            &sock,
            &[
                "vip",
                "health-check",
                vip,
                r#"{"kind":"tcp_tunnel","interval_ms":300,"timeout_ms":200,"rise":2,"fall":2,"down_interval_ms":300}"#,
            ],
        )
        .trim_end()
    );
    println!("stopping b3's decap (its web server still answers on its own address)");
    net.backends[2].decap = None;
    let b3 = |net: &DemoNet, state: &str| {
        net.backend_states(&sock)
            .get("198.18.1.1:80/tcp 198.18.0.13")
            .map(String::as_str)
            == Some(state)
    };
    wait_for("b3 to be marked down", Duration::from_secs(15), || {
        b3(&net, "down")
    });
    println!("{}", net.ctl(&sock, &["status", vip]).trim_end());
    tally(&net, &url4, "IPv4 with b3's decap stopped");
    net.start_decap(2);
    wait_for("b3 to rejoin", Duration::from_secs(15), || b3(&net, "up"));
    tally(&net, &url4, "IPv4 with b3's decap back");

    upload(&net, &sock);

    println!("\ndata-plane counters (xlb stats):");
    println!("{}", net.ctl(&sock, &["stats"]));
    if lb.terminate(Duration::from_secs(10)).is_none() {
        eprintln!("xlb run did not stop on SIGTERM");
    }
    println!("cleaning up: namespaces and processes go away");
}

/// Bulk uploads through a VIP: a full-size segment no longer fits the link once tunnelled.
/// The balancer answers it with "fragmentation needed", the client's kernel lowers its path
/// MTU and resends smaller segments, and the upload completes instead of stalling.
fn upload(net: &DemoNet, sock: &std::path::Path) {
    const BYTES: usize = 2 << 20;
    let vip = format!("{VIP4}:{SINK_PORT}/tcp");
    println!(
        "
an upload through the VIP: a new VIP {vip} added at runtime, a 2 MiB upload to it"
    );
    let _sinks: Vec<_> = (0..3).map(|i| net.start_sink(i)).collect();
    let args = [
        "vip",
        "add",
        vip.as_str(),
        "--backend",
        "198.18.0.11",
        "--backend",
        "198.18.0.12",
    ];
    println!("{}", net.ctl(sock, &args).trim_end());
    net.wait_ready(sock);
    let sent = |net: &DemoNet| {
        net.stats_json(sock)["reasons"]["icmp_too_big_sent"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = sent(net);
    let addr = SocketAddr::new(IpAddr::from([198, 18, 1, 1]), SINK_PORT);
    let answer = connect_in(&net.client, addr, Duration::from_secs(10)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&vec![b'u'; BYTES])?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    });
    match answer {
        Ok(a) => println!(
            "  the backend answered {:?}: every byte arrived; the balancer sent {} \
             \"fragmentation needed\" (xlb stats: icmp_too_big_sent) and the client's \
             segments shrank to fit the tunnel",
            a.trim(),
            sent(net) - before
        ),
        Err(e) => println!("  the upload failed: {e}"),
    }
}

/// `ping` from the client to both VIPs: the balancer answers for them (`icmp_echo`), though
/// they live on the backends' `lo`.
fn ping_vips(net: &DemoNet) {
    println!("\nping from the client (the balancer answers for its VIPs):");
    for vip in [VIP4, VIP6] {
        let out = net
            .client
            .exec(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", vip]);
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find(|l| l.contains("packets transmitted")) {
            Some(line) => println!("  {vip}: {line}"),
            None => println!("  {vip}: no ping here (cargo xtask setup installs iputils-ping)"),
        }
    }
}

fn tally(net: &DemoNet, url: &str, label: &str) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..REQUESTS {
        match curl(&net.client, url, 2) {
            Some(body) => *counts.entry(body).or_default() += 1,
            None => failed += 1,
        }
    }
    let shares: Vec<String> = counts.iter().map(|(b, n)| format!("{b} {n}")).collect();
    println!(
        "{REQUESTS} requests over {label}: {} ({failed} failed)",
        shares.join(", ")
    );
}

/// Whether an HTTP request on an open connection gets an answer (within the connection's
/// read timeout).
fn answered(s: &mut TcpStream) -> bool {
    let mut answer = Vec::new();
    s.write_all(b"GET / HTTP/1.0\r\nHost: xlb\r\n\r\n").is_ok()
        && s.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.0 200")
}
