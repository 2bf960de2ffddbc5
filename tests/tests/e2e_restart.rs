//! End-to-end: `xlb run --state-dir` restarted under load. The program stays attached while
//! no daemon runs, the next daemon takes over atomically, long-lived connections keep their
//! backends although the new daemon's table (one backend more) would place many of them
//! elsewhere, and their least-connection counts are recounted from the inherited table.
//! A VIP's figures never go down across restarts, whatever backends left it.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{require_root, wait_for, Netns},
    topology::{http_get, xlb_bin, DemoNet, LineConn, NAME_PORT, VIP4},
};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A bpf filesystem of the test's own, holding the state directory: `ip netns exec` gives
/// the daemon a fresh /sys, without the host's /sys/fs/bpf. Unmounted (which detaches
/// whatever is still attached through it) when the test ends, however it ends.
struct StateDir {
    mount: PathBuf,
    path: PathBuf,
}

impl StateDir {
    /// `test`: a name of the test's own (tests of this file run at once, in one process).
    fn new(test: &str) -> StateDir {
        let mount =
            std::env::temp_dir().join(format!("xlb-e2e-restart-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a bpf filesystem at {}", mount.display());
        let path = mount.join("eth0");
        StateDir { mount, path }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// The VIPs: HTTP on port 80 (the load), lines on [`NAME_PORT`] (the long-lived
/// connections, least-connection), over `backends`.
fn config(backends: &[&str]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!(r#"{{"address": "{b}"}}"#))
        .collect();
    let list = list.join(", ");
    format!(
        r#"{{"vips": [
  {{"address": "{VIP4}", "port": 80, "protocol": "tcp", "backends": [{list}]}},
  {{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp", "scheduler": "lc",
    "backends": [{list}]}}
]}}"#
    )
}

/// The line VIP's active-flow estimates, summed over its backends (`xlb status`).
fn active_estimate(net: &DemoNet, sock: &std::path::Path) -> u64 {
    line_vip_sum(net, sock, "active_estimate")
}

/// A `xlb status` figure of the line VIP's backends, summed.
fn line_vip_sum(net: &DemoNet, sock: &std::path::Path, field: &str) -> u64 {
    let v = net.status_json(sock);
    let lines = format!("{VIP4}:{NAME_PORT}/tcp");
    v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|vip| vip["vip"] == lines.as_str())
        .flat_map(|vip| vip["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| b[field].as_u64().unwrap_or(0))
        .sum()
}

/// Runs `xlb run` on `iface` with the state directory and checks that it is refused with
/// `why`, leaving the directory as it was.
#[track_caller]
fn refused(net: &DemoNet, iface: &str, state: &StateDir, why: &str) {
    let bin = xlb_bin();
    // Bounded: a daemon that is not refused would run until killed.
    let out = net.lb.exec(&[
        "timeout",
        "20",
        bin.to_str().expect("utf-8 path"),
        "run",
        "--iface",
        iface,
        "--no-socket",
        "--state-dir",
        state.path.to_str().expect("utf-8 path"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(why),
        "xlb run on {iface} was not refused ({why}): {err}"
    );
    assert!(state.path.join("link").exists(), "the link is still pinned");
    assert!(
        !state.path.join("BACKENDS_next").exists(),
        "the refused daemon staged backend slots"
    );
}

#[test]
fn a_restarted_daemon_takes_over_without_dropping_requests_or_moving_flows() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2er", 3);
    net.start_backends();
    let _names: Vec<_> = (0..3).map(|i| net.start_name_server(i)).collect();
    let state = StateDir::new("takeover");
    let state_arg = state.path.to_str().expect("utf-8 path").to_string();
    let two = config(&["198.18.0.11", "198.18.0.12"]);
    let (lb, sock) = net.start_lb(&two, &["--state-dir", &state_arg]);
    net.wait_ready(&sock);

    // A second daemon is refused the directory while this one runs.
    refused(
        &net,
        "eth0",
        &state,
        "another xlb run uses the state directory",
    );

    // Long-lived connections, placed by a two-backend table.
    let mut conns = LineConn::many_to_vip(&net.client, 24);
    let holders: BTreeSet<String> = conns.iter().map(|(_, w)| w.clone()).collect();
    assert_eq!(
        holders.len(),
        2,
        "both backends hold connections: {holders:?}"
    );
    assert_eq!(
        active_estimate(&net, &sock),
        24,
        "least connection counts them"
    );

    // Requests all along, a new connection each.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let load = {
        let (stop, log) = (stop.clone(), log.clone());
        let name = net.client.name().to_string();
        std::thread::spawn(move || {
            let ns = Netns::existing(&name);
            let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = http_get(&ns, vip, "/", TIMEOUT)
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .map_err(|e| e.to_string());
                log.lock().unwrap().push(r);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let served = |log: &Arc<Mutex<Vec<Result<String, String>>>>| log.lock().unwrap().len();
    let wait_served = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while served(&log) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_served(20);
    let counted_before = net.stats_json(&sock);

    // Stop the daemon: the program stays attached and keeps answering.
    let status = lb.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "xlb run did not stop cleanly"
    );
    assert!(state.path.join("link").exists(), "the link is pinned");
    // A daemon for another interface is refused the directory before it changes anything.
    net.lb
        .ip(&["link", "add", "xo0", "type", "veth", "peer", "name", "xo1"]);
    net.lb.ip(&["link", "set", "xo0", "up"]);
    refused(&net, "xo0", &state, "use one state directory per interface");
    let before = served(&log);
    wait_served(before + 20);
    for (c, want) in conns.iter_mut() {
        assert_eq!(c.who(), *want, "a connection moved while no daemon ran");
    }

    // The next daemon, with a third backend: it takes over the program and the tables.
    let three = config(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
    let (lb2, sock) = net.start_lb(&three, &["--state-dir", &state_arg]);
    net.wait_ready(&sock);
    let log_text = std::fs::read_to_string(&lb2.log).unwrap_or_default();
    assert!(
        log_text.contains("took over from the last daemon's program")
            && log_text.contains("keeping the connection tables"),
        "the new daemon did not take over:\n{log_text}"
    );
    // The counters go on from where the last daemon left them (pinned with the tables)...
    let counted = net.stats_json(&sock);
    let http = format!("{VIP4}:80/tcp");
    let figure = |v: &serde_json::Value, path: &[&str]| {
        path.iter()
            .fold(v, |v, k| &v[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in {v}"))
    };
    let vip_packets = |v: &serde_json::Value| {
        v["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["vip"] == http.as_str())
            .and_then(|x| x["packets"].as_u64())
            .expect("the HTTP VIP's packets")
    };
    assert!(
        figure(&counted, &["reasons", "tx_encap"])
            >= figure(&counted_before, &["reasons", "tx_encap"])
            && vip_packets(&counted) >= vip_packets(&counted_before)
            && vip_packets(&counted_before) > 0,
        "the counters started again: before {counted_before}, after {counted}"
    );
    // ...and the new daemon knew its next hops before its program took over: no packet
    // needed the FIB.
    assert_eq!(
        figure(&counted, &["reasons", "fib_lookup"]),
        figure(&counted_before, &["reasons", "fib_lookup"]),
        "FIB lookups after the takeover"
    );
    // Its counters start at zero; the recount at start finds the inherited flows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while active_estimate(&net, &sock) != 24 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        active_estimate(&net, &sock),
        24,
        "the new daemon's counts come from the inherited table"
    );
    // And status sees the inherited entries (a scan of the tables).
    let entries = line_vip_sum(&net, &sock, "active_flows");
    assert!(entries >= 24, "status counts {entries} table entries");
    let before = served(&log);
    wait_served(before + 20);
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");

    let results = log.lock().unwrap().clone();
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {failed:?}",
        failed.len(),
        results.len()
    );
    for (c, want) in conns.iter_mut() {
        assert_eq!(c.who(), *want, "a connection moved across the restart");
    }
    // New connections do see the new table: the new backend, empty, wins least connection
    // whenever it is a candidate. (Not all three: between the two old ones, the less loaded
    // takes every pick.)
    let third = net
        .backend_name("198.18.0.13")
        .expect("third backend")
        .to_string();
    let mut fresh = BTreeSet::new();
    for _ in 0..30 {
        fresh.insert(LineConn::to_vip(&net.client).who());
    }
    assert!(
        fresh.contains(&third) && fresh.len() >= 2,
        "new connections reach the new backend {third} and an old one: {fresh:?}"
    );

    // Stopping for good: removing the directory detaches the program.
    let status = lb2.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
    drop(state);
    // The kernel releases an unpinned link later (an RCU callback, then a work queue), not at
    // the unlink: the detach follows within moments (this check failed about one run in ten
    // without the wait).
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    wait_for(
        "the VIP to stop answering after the state directory was removed",
        Duration::from_secs(10),
        || http_get(&net.client, vip, "/", Duration::from_millis(500)).is_err(),
    );
}

/// The HTTP VIP alone, over `backends`.
fn web_config(backends: &[&str]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!(r#"{{"address": "{b}"}}"#))
        .collect();
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp", "backends": [{}]}}]}}"#,
        list.join(", ")
    )
}

/// The HTTP VIP's packets, and its backends' added up (`xlb status`).
fn web_packets(net: &DemoNet, sock: &std::path::Path) -> (u64, u64) {
    let v = net.status_json(sock);
    let http = format!("{VIP4}:80/tcp");
    let vip = v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["vip"] == http.as_str())
        .unwrap_or_else(|| panic!("no HTTP VIP in {v}"));
    let backends = vip["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["packets"].as_u64().unwrap_or(0))
        .sum();
    (
        vip["packets"].as_u64().expect("the VIP's packets"),
        backends,
    )
}

#[test]
fn a_vips_figures_keep_its_removed_backends_share_across_restarts() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2eq", 3);
    net.start_backends();
    let state = StateDir::new("figures");
    let state_arg = state.path.to_str().expect("utf-8 path").to_string();
    let (lb, sock) = net.start_lb(
        &web_config(&["198.18.0.11", "198.18.0.12", "198.18.0.13"]),
        &["--state-dir", &state_arg],
    );
    net.wait_ready(&sock);
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    // A connection each: Maglev spreads them over the three backends.
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        let body = http_get(&net.client, vip, "/", TIMEOUT).expect("a request through the VIP");
        served.insert(String::from_utf8_lossy(&body).trim().to_string());
    }
    assert_eq!(served.len(), 3, "every backend served requests: {served:?}");

    // .13 removed while the daemon runs, .12 dropped from the next daemon's config: both
    // carried traffic that stays the VIP's.
    let http = format!("{VIP4}:80/tcp");
    net.ctl(&sock, &["backend", "remove", &http, "198.18.0.13"]);
    // The clients' last ACKs in.
    std::thread::sleep(Duration::from_millis(300));
    let (before, live) = web_packets(&net, &sock);
    assert!(
        before > live && live > 0,
        "the removed backend's packets are the VIP's: VIP {before}, its backends {live}"
    );
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "xlb run did not stop");

    // Two daemons in turn, with .11 alone: the second finds the record the first made of
    // .12's share.
    for round in 1..=2 {
        let (lb, sock) = net.start_lb(&web_config(&["198.18.0.11"]), &["--state-dir", &state_arg]);
        net.wait_ready(&sock);
        let (after, _) = web_packets(&net, &sock);
        assert!(
            after >= before,
            "daemon {round} after the restart: the VIP's packets went from {before} down to {after}"
        );
        let status = lb.terminate(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "xlb run did not stop");
    }
}

/// A backend that was down when the daemon stopped is down from the next daemon's first
/// moment: the requests made right after the restart all reach the healthy backend, none
/// the one whose server is gone (a daemon that started every backend healthy sent it new
/// flows until its check had failed `fall` times). It comes back once its server does.
#[test]
fn a_backend_down_before_a_restart_takes_no_flows_after_it() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ehv", 2);
    net.start_backends();
    let state = StateDir::new("verdicts");
    let state_arg = state.path.to_str().expect("utf-8 path").to_string();
    let cfg = format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": 80, "protocol": "tcp",
            "health_check": {{"kind": "http", "path": "/", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#
    );
    let b2 = format!("{VIP4}:80/tcp 198.18.0.12");
    let state_of = |net: &DemoNet, sock: &std::path::Path| {
        net.backend_states(sock)
            .get(&b2)
            .cloned()
            .unwrap_or_default()
    };
    let (lb, sock) = net.start_lb(&cfg, &["--state-dir", &state_arg]);
    net.wait_ready(&sock);
    net.stop_http(1);
    wait_for("b2 down", Duration::from_secs(15), || {
        state_of(&net, &sock) == "down"
    });
    let status = lb.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "xlb run did not stop");

    let (_lb, sock) = net.start_lb(&cfg, &["--state-dir", &state_arg]);
    net.wait_ready(&sock);
    assert_eq!(
        state_of(&net, &sock),
        "down",
        "b2 came back up with the restart"
    );
    let vip = SocketAddr::new(VIP4.parse().unwrap(), 80);
    for i in 0..20 {
        let body = http_get(&net.client, vip, "/", TIMEOUT)
            .unwrap_or_else(|e| panic!("request {i} after the restart failed: {e}"));
        assert_eq!(String::from_utf8_lossy(&body).trim(), "b1", "request {i}");
    }
    net.start_http(1);
    wait_for("b2 up again", Duration::from_secs(15), || {
        state_of(&net, &sock) == "up"
    });
}
