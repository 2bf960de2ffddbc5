//! End-to-end: the daemon under continuous real HTTP load, driven through its control
//! socket by separate client processes (the `xlb` CLI) and raw socket writes: failover,
//! recovery, drain, a burst of bad requests, and flows that must never move.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{require_root, wait_for, Netns},
    topology::{http_get, metrics_port_get, scrape_metrics, DemoNet, LineConn, NAME_PORT, VIP4},
};

const TIMEOUT: Duration = Duration::from_secs(3);
const WEB: &str = "198.18.1.1:80/tcp";

/// Results of the background load: (when the request started, answering backend or error).
/// Start times, not completion times: a request sent just before a backend left the table
/// may fail just after, and belongs to the time before.
type Log = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

/// Continuous HTTP GETs from the client, new connection each, until stopped (at most 120 s).
struct Load {
    stop: Arc<AtomicBool>,
    log: Log,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Netns) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let (s, l) = (stop.clone(), log.clone());
        // The namespace is entered per request inside http_get; a Netns is not Send, so the
        // thread gets its name and a borrowed handle is recreated there.
        let name = client.name().to_string();
        let thread = std::thread::spawn(move || {
            let ns = Netns::existing(&name);
            let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let r = http_get(&ns, vip, "/", TIMEOUT)
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .map_err(|e| e.to_string());
                l.lock().unwrap().push((started, r));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Load {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn since(&self, t: Instant) -> Vec<Result<String, String>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Waits until at least `n` requests completed after `t`.
    fn wait_requests_after(&self, t: Instant, n: usize) {
        wait_for(
            &format!("{n} requests of load"),
            Duration::from_secs(30),
            || self.since(t).len() >= n,
        );
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One raw request line to the control socket; the parsed response.
fn raw(sock: &Path, line: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("connect to the control socket");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(line).unwrap();
    s.write_all(b"\n").unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).unwrap_or_else(|e| {
        panic!(
            "response to {:?} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)]),
            String::from_utf8_lossy(&buf)
        )
    })
}

/// `status` without the moving parts (counters, health statistics).
fn shape(net: &DemoNet, sock: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = net.status_json(sock);
    // Entries come and go with the load's connections.
    v["conn_tables"] = serde_json::Value::Null;
    for vip in v["vips"].as_array_mut().into_iter().flatten() {
        for k in ["packets", "bytes", "new_flows"] {
            vip[k] = serde_json::Value::Null;
        }
        for b in vip["backends"].as_array_mut().into_iter().flatten() {
            for k in [
                "packets",
                "bytes",
                "new_flows",
                "active_flows",
                "health",
                "next_hop",
            ] {
                b[k] = serde_json::Value::Null;
            }
        }
    }
    v
}

#[test]
fn daemon_failover_drain_and_bad_requests_under_load() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ed", 3);
    net.start_backends();
    let _names: Vec<_> = (0..3).map(|i| net.start_name_server(i)).collect();
    let (_lb, sock) = net.start_lb("{}", &["--metrics", "198.18.0.2:9100"]);

    // Configure everything through the socket, from separate processes.
    let hc = r#"{"kind":"http","path":"/","interval_ms":300,"timeout_ms":200,"rise":2,"fall":2,"down_interval_ms":600}"#;
    net.ctl(
        &sock,
        &[
            "vip",
            "add",
            WEB,
            "--health-check",
            hc,
            "--backend",
            "198.18.0.11",
            "--backend",
            "198.18.0.12",
            "--backend",
            "198.18.0.13",
        ],
    );
    let lines = format!("{VIP4}:{NAME_PORT}/tcp");
    net.ctl(&sock, &["vip", "add", &lines]);
    for b in ["198.18.0.11", "198.18.0.12", "198.18.0.13"] {
        net.ctl(&sock, &["backend", "add", &lines, b]);
    }
    net.wait_ready(&sock);

    // Long-lived connections until at least two backends hold one.
    let mut conns: Vec<(LineConn, String)> = Vec::new();
    for _ in 0..24 {
        let mut c = LineConn::to_vip(&net.client);
        let who = c.who();
        conns.push((c, who));
        if conns
            .iter()
            .map(|(_, w)| w.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= 2
            && conns.len() >= 6
        {
            break;
        }
    }
    let holders: BTreeSet<String> = conns.iter().map(|(_, w)| w.clone()).collect();
    assert!(
        holders.len() >= 2,
        "all long-lived connections on one backend: {holders:?}"
    );
    let check_conns = |conns: &mut Vec<(LineConn, String)>, when: &str| {
        for (c, want) in conns.iter_mut() {
            assert_eq!(
                c.ask().map_err(|e| e.to_string()).as_deref(),
                Ok(want.as_str()),
                "(e) a long-lived connection moved or broke {when}"
            );
        }
    };

    // `xlb flow` names each connection's backend: one address per answering server, and a
    // different one for each.
    let mut served_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (c, who) in &conns {
        let client = c.local_addr().to_string();
        let said: serde_json::Value =
            serde_json::from_str(&net.ctl(&sock, &["flow", "--json", &lines, &client]))
                .expect("flow JSON");
        assert_eq!(said["next"]["how"], "recorded", "{said}");
        let backend = said["recorded"]["backend"]
            .as_str()
            .expect("a backend")
            .to_owned();
        assert_eq!(
            said["next"]["backend"].as_str(),
            Some(backend.as_str()),
            "{said}"
        );
        served_by.entry(who.clone()).or_default().insert(backend);
    }
    let addrs: BTreeSet<&String> = served_by.values().flatten().collect();
    assert!(
        served_by.values().all(|a| a.len() == 1) && addrs.len() == served_by.len(),
        "xlb flow disagrees with who answers: {served_by:?}"
    );
    let text = net.ctl(
        &sock,
        &["flow", &lines, &conns[0].0.local_addr().to_string()],
    );
    assert!(text.contains("(its recorded backend)"), "{text}");

    // `xlb flows` lists the same connections on the same backends, and one backend's alone.
    let on: BTreeMap<String, String> = conns
        .iter()
        .map(|(c, who)| {
            let backend = served_by[who].iter().next().expect("a backend").clone();
            (c.local_addr().to_string(), backend)
        })
        .collect();
    let listed: serde_json::Value =
        serde_json::from_str(&net.ctl(&sock, &["flows", "--json", &lines])).expect("flows JSON");
    let listed: BTreeMap<String, String> = listed["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            (
                f["client"].as_str().unwrap_or("?").to_owned(),
                f["backend"].to_string(),
            )
        })
        .filter(|(client, _)| on.contains_key(client))
        .map(|(client, b)| (client, b.trim_matches('"').to_owned()))
        .collect();
    assert_eq!(listed, on, "xlb flows disagrees with xlb flow");
    let (client, backend) = on.iter().next().expect("a connection");
    let text = net.ctl(
        &sock,
        &["flows", &lines, "--backend", backend, "--limit", "10000"],
    );
    assert!(
        text.lines()
            .any(|l| l.contains(client.as_str()) && l.contains(backend.as_str())),
        "{text}"
    );
    // By client prefix: the client's own address holds them all, another network none.
    let by_client = |prefix: &str| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&net.ctl(&sock, &["flows", "--json", &lines, "--client", prefix]))
                .expect("flows JSON");
        v["matched"].as_u64().unwrap_or(0)
    };
    assert!(by_client("198.18.0.10") >= on.len() as u64);
    assert_eq!(by_client("198.19.0.0/16"), 0);
    // `xlb status VIP`: that VIP alone; a VIP the balancer lacks is an error naming those it has.
    let one = net.ctl(&sock, &["status", &lines]);
    assert!(one.contains(&lines) && !one.contains(WEB), "{one}");
    let one: serde_json::Value =
        serde_json::from_str(&net.ctl(&sock, &["stats", "--json", &lines])).expect("stats JSON");
    assert_eq!(one["vips"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["vips"][0]["vip"], lines.as_str());
    let (ok, _, err) = net.try_ctl(&sock, &["status", "198.18.1.9:80/tcp"]);
    assert!(
        !ok && err.contains("no VIP 198.18.1.9:80/tcp; the balancer has "),
        "{err}"
    );
    let others: BTreeSet<&String> = on.values().filter(|b| *b != backend).collect();
    assert!(
        others.iter().all(|b| !text.contains(b.as_str())),
        "another backend's flow listed under {backend}: {text}"
    );

    let load = Load::start(&net.client);
    load.wait_requests_after(Instant::now(), 30);

    // A VIP's traffic is its backends' added up (the data plane counts per backend).
    let status: serde_json::Value = net.status_json(&sock);
    let vip = status["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == lines.as_str())
        .expect("the VIP in status");
    let per_backend: u64 = vip["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["packets"].as_u64().unwrap_or(0))
        .sum();
    // The long-lived connections are entries of the IPv4 table, whose size status gives.
    let v4 = &status["conn_tables"]["v4"];
    assert!(
        v4["entries"].as_u64().unwrap_or(0) >= conns.len() as u64
            && v4["capacity"].as_u64().unwrap_or(0) > 0,
        "{}",
        status["conn_tables"]
    );
    let vip_packets = vip["packets"].as_u64().unwrap_or(0);
    assert!(vip_packets > 0, "no packets counted for {lines}: {vip}");
    assert!(
        vip_packets <= per_backend,
        "VIP packets {vip_packets} exceed its backends' {per_backend}"
    );

    // (a) stop b2's web server: after fall × interval + timeout it is down and no request fails.
    net.stop_http(1);
    wait_for("b2 down in xlb status", Duration::from_secs(15), || {
        net.backend_states(&sock)
            .get(&format!("{WEB} 198.18.0.12"))
            .map(String::as_str)
            == Some("down")
    });
    let after_down = Instant::now();
    load.wait_requests_after(after_down, 100);
    let results = load.since(after_down);
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "(a) {} of {} requests failed after b2 was marked down: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        results.iter().all(|r| r.as_deref() != Ok("b2")),
        "(a) b2 answered while down"
    );
    check_conns(&mut conns, "during (a)");
    rates_follow_the_load(&net, &sock);

    // (b) start it again: it rejoins and gets traffic.
    net.start_http(1);
    wait_for("b2 up again", Duration::from_secs(15), || {
        net.backend_states(&sock)
            .get(&format!("{WEB} 198.18.0.12"))
            .map(String::as_str)
            == Some("up")
    });
    let after_up = Instant::now();
    wait_for("b2 to answer load again", Duration::from_secs(15), || {
        load.since(after_up)
            .iter()
            .any(|r| r.as_deref() == Ok("b2"))
    });
    check_conns(&mut conns, "during (b)");

    // (c) drain the backend holding the first long-lived connection: it keeps working, and new
    // connections never reach the drained backend.
    let drained = conns[0].1.clone();
    let drained_addr = net
        .backends
        .iter()
        .find(|b| b.name == drained)
        .map(|b| b.v4.to_string())
        .expect("backend");
    net.ctl(&sock, &["backend", "drain", &lines, &drained_addr]);
    let mut fresh = BTreeMap::new();
    for _ in 0..60 {
        let mut c = LineConn::to_vip(&net.client);
        *fresh.entry(c.who()).or_insert(0) += 1;
    }
    assert!(
        !fresh.contains_key(&drained),
        "(c) new connections reached drained {drained}: {fresh:?}"
    );
    assert!(
        fresh.len() >= 2,
        "(c) new connections not spread over the others: {fresh:?}"
    );
    check_conns(&mut conns, "after the drain (c)");
    assert_eq!(
        net.backend_states(&sock)
            .get(&format!("{lines} {drained_addr}"))
            .map(String::as_str),
        Some("drained")
    );

    // (d) a burst of bad requests: each refused with a reason, state and traffic unaffected.
    let before = shape(&net, &sock);
    let burst_start = Instant::now();
    let huge = vec![b'x'; 100 * 1024];
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "bad_json"),
        (br#"{"v":1,"op":"backend.weight","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","weight":"heavy"}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"op":"backend.weight","vip":"198.18.1.1:80/tcp","address":"198.18.0.11","weight":99999}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"backend.remove","vip":"198.18.1.1:80/tcp","address":"198.18.0.99"}"#.to_vec(), "unknown_backend"),
        (br#"{"v":1,"op":"vip.remove","vip":"198.18.1.9:80/tcp"}"#.to_vec(), "unknown_vip"),
        (br#"{"v":1,"op":"vip.idle_timeout","vip":"198.18.1.1:80/tcp","idle_timeout_s":5}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"vip.idle_timeout","vip":"198.18.1.9:80/tcp","idle_timeout_s":60}"#.to_vec(), "unknown_vip"),
        (br#"{"v":1,"op":"vip.health_check","vip":"198.18.1.1:80/tcp","health_check":{"rise":0}}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":80,"protocol":"tcp"}}"#.to_vec(), "exists"),
        (br#"{"v":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":0,"protocol":"tcp"}}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"vip.add","vip":{"address":"198.18.1.1","port":81,"protocol":"sctp"}}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"op":"backend.add","vip":"198.18.1.1:80/tcp","backend":{"address":"198.18.0.14"},"extra":1}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"op":"explode"}"#.to_vec(), "bad_request"),
        (br#"{"v":2,"op":"status"}"#.to_vec(), "unsupported_version"),
        (br#"{"v":1,"op":"flow","vip":"198.18.1.9:80/tcp","client":"198.18.0.10:4000"}"#.to_vec(), "unknown_vip"),
        (br#"{"v":1,"op":"flow","vip":"198.18.1.1:80/tcp","client":"198.18.0.10"}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"op":"flow","vip":"198.18.1.1:80/tcp","client":"[fd00::10]:4000"}"#.to_vec(), "bad_request"),
        (br#"{"v":1,"op":"flows","backend":"198.18.0.99"}"#.to_vec(), "unknown_backend"),
        (br#"{"v":1,"op":"flows","limit":0}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"flows.forget"}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"flows.forget","backend":"198.18.0.99"}"#.to_vec(), "unknown_backend"),
        (br#"{"v":1,"op":"vip.sources","vip":"198.18.1.1:80/tcp","allowed_sources":["fd00::/8"],"cut":true}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"drops","reason":"bogus"}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"drops","limit":1001}"#.to_vec(), "invalid"),
        (br#"{"v":1,"op":"drops","since":-1}"#.to_vec(), "bad_request"),
        (huge, "too_large"),
    ];
    for (line, code) in &bad {
        let resp = raw(&sock, line);
        assert_eq!(
            resp["ok"],
            serde_json::Value::Bool(false),
            "accepted: {resp}"
        );
        assert_eq!(resp["error"]["code"].as_str(), Some(*code), "{resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "no reason given: {resp}"
        );
    }
    let (ok, _, err) = net.try_ctl(&sock, &["backend", "weight", WEB, "198.18.0.11", "99999"]);
    assert!(
        !ok && err.contains("invalid"),
        "CLI did not refuse a bad weight: {err}"
    );
    // An all-ports VIP on the balancer's own interface address would take its SSH.
    let (ok, _, err) = net.try_ctl(
        &sock,
        &[
            "vip",
            "add",
            "198.18.0.2:*/tcp",
            "--backend",
            "198.18.0.11",
            "--health-check",
            r#"{"kind":"icmp"}"#,
        ],
    );
    assert!(
        !ok && err.contains("198.18.0.2 is the balancer's own address"),
        "an all-ports VIP on the balancer's address: {err}"
    );
    assert_eq!(
        shape(&net, &sock),
        before,
        "(d) a refused request changed the state"
    );
    load.wait_requests_after(burst_start, 30);
    let during: Vec<_> = load
        .since(burst_start)
        .into_iter()
        .filter(|r| r.is_err())
        .collect();
    assert!(
        during.is_empty(),
        "(d) requests failed during the burst: {during:?}"
    );

    // (e) the long-lived connections on healthy backends kept their backend through all of it.
    check_conns(&mut conns, "at the end (e)");

    // Metrics, scraped like Prometheus would (from the balancer's own namespace).
    let text = scrape_metrics(&net.lb, "198.18.0.2:9100".parse().unwrap());
    for needle in [
        "# TYPE xlb_dropped_packets_total counter",
        "xlb_events_total{event=\"tx_encap\"}",
        "xlb_backend_up{vip=\"198.18.1.1:80/tcp\",backend=\"198.18.0.12\"} 1",
        "xlb_backend_drained{vip=\"198.18.1.1:7000/tcp\"",
        "xlb_health_check_latency_seconds{",
        "xlb_health_transitions_total{to=\"down\"} ",
        "\nxlb_config_last_reload_successful 1\n",
        "xlb_config_reloads_total{result=\"refused\"} 0",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    // Liveness and readiness on the same port: a VIP is ready while a backend of it is up.
    let port = "198.18.0.2:9100".parse().unwrap();
    let live = metrics_port_get(&net.lb, port, "/healthz");
    assert!(
        live.starts_with("HTTP/1.1 200 OK") && live.ends_with("ok\n"),
        "{live}"
    );
    let status = net.status_json(&sock);
    for vip in status["vips"].as_array().into_iter().flatten() {
        let id = vip["vip"].as_str().unwrap_or_default();
        let up = vip["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["state"] == "up");
        let ready = metrics_port_get(&net.lb, port, &format!("/ready?vip={id}"));
        let want = if up {
            "HTTP/1.1 200 OK"
        } else {
            "HTTP/1.1 503"
        };
        assert!(
            ready.starts_with(want),
            "{id} (a backend up: {up}): {ready}"
        );
    }
    // Every metric served is in the reference.
    let reference = include_str!("../../docs/metrics.md");
    for name in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = name.split(' ').next().unwrap_or(name);
        assert!(
            reference.contains(&format!("| `{name}` |")),
            "{name} is served but not in docs/metrics.md"
        );
    }
}

/// `xlb status --rate` and `xlb stats --rate` while the load runs and b2 is down: the
/// VIP's packets go through its other backends, none through b2.
fn rates_follow_the_load(net: &DemoNet, sock: &Path) {
    let rates: serde_json::Value =
        serde_json::from_str(&net.ctl(sock, &["status", "--rate", "1", "--json"]))
            .expect("status --rate JSON");
    let web = rates["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == WEB)
        .unwrap_or_else(|| panic!("{WEB} in {rates}"));
    let pps = |addr: &str| {
        web["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["address"] == addr)
            .and_then(|b| b["packets_per_s"].as_f64())
            .unwrap_or_else(|| panic!("packets_per_s of {addr} in {web}"))
    };
    assert_eq!(pps("198.18.0.12"), 0.0, "a down backend got packets: {web}");
    assert!(
        pps("198.18.0.11") + pps("198.18.0.13") > 0.0,
        "no packets per second under load: {web}"
    );
    assert!(web["packets_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{web}");
    let text = net.ctl(sock, &["stats", "--rate", "0.5"]);
    let moved = |name: &str| {
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    };
    assert!(
        moved("tx_encap"),
        "tx_encap did not move under load:\n{text}"
    );
    assert!(!moved("no_backend"), "{text}");
    let refused = net.try_ctl(sock, &["status", "--rate", "0"]);
    assert!(
        !refused.0 && refused.2.contains("outside"),
        "--rate 0 accepted: {refused:?}"
    );
}

/// `--shutdown-grace`: a balancer told to stop answers `/ready` with 503 at once, so that
/// a route announcer withdraws its VIPs, and goes on forwarding through the grace; then it
/// stops and detaches.
#[test]
fn a_stopping_balancer_turns_unready_and_forwards_through_its_grace() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2egr", 1);
    net.start_backends();
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp",
            "backends": [{{"address": "198.18.0.11"}}]}}]}}"#
    );
    let (lb, sock) = net.start_lb(
        &cfg,
        &["--metrics", "198.18.0.2:9100", "--shutdown-grace", "4"],
    );
    net.wait_ready(&sock);
    let port = "198.18.0.2:9100".parse().unwrap();
    let ready = |net: &DemoNet| metrics_port_get(&net.lb, port, "/ready");
    assert!(ready(&net).starts_with("HTTP/1.1 200"), "{}", ready(&net));
    let started = std::time::Instant::now();
    lb.sigterm();
    wait_for("/ready to answer 503", Duration::from_secs(3), || {
        ready(&net).starts_with("HTTP/1.1 503")
    });
    assert!(ready(&net).contains("stopping"), "{}", ready(&net));
    // Still forwarding, still alive (liveness), within the grace.
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    for i in 0..5 {
        let body = http_get(&net.client, vip, "/", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("request {i} in the grace: {e}"));
        assert_eq!(String::from_utf8_lossy(&body).trim(), "b1");
    }
    let live = metrics_port_get(&net.lb, port, "/healthz");
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the checks outlasted the grace"
    );
    // Then it stops, and detaches.
    let status = lb.wait(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "xlb run did not stop: {status:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "stopped before its grace ran out"
    );
    let link = net.lb.exec(&["ip", "link", "show", "eth0"]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "still attached after the stop"
    );
}
