//! End-to-end: a backup backend with real line servers behind the XDP balancer. It takes no
//! new connection while a regular backend can; it takes them all once none can; when one
//! can again, new connections go back to it while those the backup took stay on it. Roles
//! change at runtime (`xlb backend backup`).

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{require_root, wait_for},
    topology::{scrape_metrics, xlb_bin, DemoNet, LineConn, Proc, NAME_PORT, VIP4},
};

const CHECK: &str = r#"{"kind": "tcp", "interval_ms": 300, "timeout_ms": 200, "rise": 2, "fall": 2, "down_interval_ms": 300}"#;

/// The line servers' VIP with b1 and b2, checked every 300 ms.
fn config() -> String {
    format!(
        r#"{{"vips": [{{"address": "{VIP4}", "port": {NAME_PORT}, "protocol": "tcp",
            "health_check": {CHECK},
            "backends": [{{"address": "198.18.0.11"}}, {{"address": "198.18.0.12"}}]}}]}}"#
    )
}

/// `backend remove VIP ADDR --drain DRAIN --quiet QUIET`, then `extra`.
fn remove_drained<'a>(
    vip: &'a str,
    addr: &'a str,
    drain: &'a str,
    quiet: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "backend", "remove", vip, addr, "--drain", drain, "--quiet", quiet,
    ];
    args.extend_from_slice(extra);
    args
}

/// `xlb ARGS --socket SOCK` left running (a command that waits), its output captured.
fn spawn_ctl(sock: &Path, args: &[&str]) -> Child {
    Command::new(xlb_bin())
        .args(args)
        .arg("--socket")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning xlb")
}

/// Waits (10 s at most) for a spawned command's end: whether it succeeded, its stderr.
fn finish(mut child: Child) -> (bool, String) {
    let t0 = Instant::now();
    while child.try_wait().expect("waiting for xlb").is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("xlb still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("xlb's output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Who answers `n` new connections, by backend name.
fn tally(net: &DemoNet, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, who) in LineConn::many_to_vip(&net.client, n) {
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

#[test]
fn a_backup_serves_only_while_no_regular_backend_can() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2ebk", 3);
    net.start_backends();
    let mut servers: Vec<Option<Proc>> = (0..3).map(|i| Some(net.start_name_server(i))).collect();
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    let (lb, sock) = net.start_lb(&config(), &["--metrics", "198.18.0.2:9100"]);
    // Through the CLI, as an operator adds one.
    let said = net.ctl(&sock, &["backend", "add", &vip, "198.18.0.13", "--backup"]);
    assert!(said.contains("added backup 198.18.0.13"), "{said}");
    net.wait_ready(&sock);
    let state = |net: &DemoNet, addr: &str| {
        net.backend_states(&sock)
            .get(&format!("{vip} {addr}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(state(&net, "198.18.0.13"), "standby");

    let counts = tally(&net, 30);
    assert!(
        !counts.contains_key("b3") && counts.len() == 2,
        "with b1 and b2 up, new connections went to {counts:?}"
    );

    // Both regular backends' servers stop: once their checks fail, the backup takes
    // every new connection, and none fails.
    for i in [0, 1] {
        if let Some(p) = servers[i].take() {
            p.terminate(Duration::from_secs(5));
        }
    }
    wait_for("b1 and b2 down", Duration::from_secs(15), || {
        state(&net, "198.18.0.11") == "down" && state(&net, "198.18.0.12") == "down"
    });
    assert_eq!(state(&net, "198.18.0.13"), "up");
    // Said where an operator looks: the daemon's log and `xlb status`.
    let log = lb.log_text();
    assert!(
        log.contains("no regular backend takes new flows; its backups 198.18.0.13 do"),
        "{log}"
    );
    let text = net.ctl(&sock, &["status"]);
    assert!(
        text.contains("on backups: no regular backend takes new flows"),
        "{text}"
    );
    let mut on_backup = LineConn::to_vip(&net.client);
    assert_eq!(on_backup.who(), "b3");
    let counts = tally(&net, 20);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b3"], "{counts:?}");

    // b1 is back: new connections go to it, the backup waits again, and the connection
    // it took stays on it.
    servers[0] = Some(net.start_name_server(0));
    wait_for("b1 up again", Duration::from_secs(15), || {
        state(&net, "198.18.0.11") == "up"
    });
    assert_eq!(state(&net, "198.18.0.13"), "standby");
    let counts = tally(&net, 20);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b1"], "{counts:?}");
    assert_eq!(
        on_backup.ask().map_err(|e| e.to_string()).as_deref(),
        Ok("b3"),
        "a connection the backup took moved when b1 came back"
    );

    // Status and metrics say which backend is the backup and which take new flows.
    let status = net.status_json(&sock);
    let backup = status["vips"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["address"] == "198.18.0.13")
        .cloned()
        .unwrap_or_default();
    assert_eq!(backup["backup"], true, "{status}");
    let text = scrape_metrics(&net.lb, "198.18.0.2:9100".parse().unwrap());
    for (addr, backup, serving) in [
        ("198.18.0.11", 0, 1),
        ("198.18.0.12", 0, 0),
        ("198.18.0.13", 1, 0),
    ] {
        let l = format!("{{vip=\"{vip}\",backend=\"{addr}\"}}");
        for line in [
            format!("xlb_backend_backup{l} {backup}"),
            format!("xlb_backend_serving{l} {serving}"),
        ] {
            assert!(text.lines().any(|t| t == line), "no {line:?} in:\n{text}");
        }
    }

    // Roles change at runtime without moving a flow: b3 a regular backend, then b1 a
    // backup, which leaves b3 alone taking new connections.
    net.ctl(&sock, &["backend", "backup", &vip, "198.18.0.13", "--off"]);
    assert_eq!(state(&net, "198.18.0.13"), "up");
    let counts = tally(&net, 30);
    assert!(
        counts.keys().collect::<Vec<_>>() == ["b1", "b3"],
        "b1 and b3 regular: {counts:?}"
    );
    net.ctl(&sock, &["backend", "backup", &vip, "198.18.0.11"]);
    assert_eq!(state(&net, "198.18.0.11"), "standby");
    let counts = tally(&net, 20);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["b3"], "{counts:?}");
    assert_eq!(on_backup.who(), "b3");
    let refused = net.try_ctl(&sock, &["backend", "backup", &vip, "198.18.0.99"]);
    assert!(
        !refused.0 && refused.2.contains("unknown_backend"),
        "{refused:?}"
    );
}

/// `xlb backend remove --drain`: a backend whose clients keep talking is removed at the
/// drain's deadline, its connection answered by it until then; an idle one as soon as it
/// has been quiet for `--quiet`. `xlb backend drain --wait` waits the same way. The daemon
/// runs the removal: it goes on when the waiting command is interrupted, and an undrain
/// cancels it (and ends the wait with an error).
#[test]
fn a_graceful_removal_waits_for_quiet_or_its_deadline() {
    if !require_root() {
        return;
    }
    let mut net = DemoNet::new("e2egr", 2);
    net.start_backends();
    let _servers: Vec<Proc> = (0..2).map(|i| net.start_name_server(i)).collect();
    let vip = format!("{VIP4}:{NAME_PORT}/tcp");
    let (_lb, sock) = net.start_lb(&config(), &["--metrics", "198.18.0.2:9100"]);
    net.wait_ready(&sock);
    let mut conns = LineConn::many_to_vip(&net.client, 16);
    let pos = |conns: &[(LineConn, String)], who: &str| {
        conns
            .iter()
            .position(|(_, w)| w == who)
            .unwrap_or_else(|| panic!("no connection on {who} of {}", conns.len()))
    };
    let mut busy = conns.remove(pos(&conns, "b1")).0;
    let (_idle, _) = conns.remove(pos(&conns, "b2"));
    drop(conns);

    // b1's client asks every 100 ms (for 8 s at most) while b1 drains for 3 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..80 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                answers.push(busy.ask().map_err(|e| e.to_string()));
                std::thread::sleep(Duration::from_millis(100));
            }
            answers
        })
    };
    let said = net.ctl(&sock, &remove_drained(&vip, "198.18.0.11", "3", "2", &[]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = talker.join().expect("talker thread");
    assert!(said.contains("at the end of its 3 s drain"), "{said}");
    // The last questions may have crossed the removal (the talker stops only once the CLI
    // has seen the removal and exited, which can take more than its 100 ms period): every
    // one before the first failure was answered by b1, and none after it.
    let answered: Vec<_> = answers.iter().take_while(|a| a.is_ok()).collect();
    assert!(
        answered.len() >= 10
            && answered.iter().all(|a| a.as_deref() == Ok("b1"))
            && answers[answered.len()..].iter().all(Result::is_err),
        "the draining backend's connection: {answers:?}"
    );
    assert!(!net
        .backend_states(&sock)
        .contains_key(&format!("{vip} 198.18.0.11")));

    // A rolling upgrade's step: drain b2 and wait for its (silent) client, then undrain.
    let said = net.ctl(
        &sock,
        &[
            "backend",
            "drain",
            &vip,
            "198.18.0.12",
            "--wait",
            "60",
            "--quiet",
            "1",
            "--json",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&said).expect("drain --json");
    assert_eq!(r["went_quiet"], true, "{r}");
    let drained = format!("{vip} 198.18.0.12");
    assert_eq!(net.backend_states(&sock)[&drained], "drained");
    net.ctl(&sock, &["backend", "undrain", &vip, "198.18.0.12"]);
    assert_eq!(net.backend_states(&sock)[&drained], "up");

    // Without waiting: the daemon drains b2 and says so; status shows the removal; a
    // waiting command (which starts it over) ends with an error when an undrain cancels it.
    let said = net.ctl(
        &sock,
        &remove_drained(&vip, "198.18.0.12", "60", "30", &["--no-wait"]),
    );
    assert!(said.contains("draining backend 198.18.0.12"), "{said}");
    assert_eq!(net.backend_states(&sock)[&drained], "removing");
    let text = net.ctl(&sock, &["status"]);
    assert!(text.contains("removing 198.18.0.12: "), "{text}");
    let metrics = scrape_metrics(&net.lb, "198.18.0.2:9100".parse().unwrap());
    let line = format!("xlb_backend_removing{{vip=\"{vip}\",backend=\"198.18.0.12\"}} 1");
    assert!(
        metrics.lines().any(|t| t == line),
        "no {line:?} in:\n{metrics}"
    );
    // The command's request starts the removal over: wait for that (its drain restarts
    // from 0 s) before cancelling, or the request could come after the undrain.
    let draining = |net: &DemoNet| -> f64 {
        let status = net.status_json(&sock);
        status["vips"][0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["address"] == "198.18.0.12")
            .and_then(|b| b["removal"]["draining_s"].as_f64())
            .unwrap_or(f64::NAN)
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = draining(&net);
    let waiting = spawn_ctl(&sock, &remove_drained(&vip, "198.18.0.12", "60", "30", &[]));
    wait_for("the removal to start over", Duration::from_secs(10), || {
        draining(&net) < before
    });
    let said = net.ctl(&sock, &["backend", "undrain", &vip, "198.18.0.12"]);
    assert!(said.contains("graceful removal is cancelled"), "{said}");
    let (ok, err) = finish(waiting);
    assert!(!ok && err.contains("was cancelled"), "{err}");
    assert_eq!(net.backend_states(&sock)[&drained], "up");

    // b2's client is silent: removed once b2 has been quiet for a second.
    let said = net.ctl(
        &sock,
        &remove_drained(&vip, "198.18.0.12", "60", "1", &["--json"]),
    );
    let r: serde_json::Value = serde_json::from_str(&said).expect("remove --json");
    assert_eq!(r["went_quiet"], true, "{r}");
    assert!(r["drained_s"].as_f64().is_some_and(|s| s < 60.0), "{r}");
    assert!(net.backend_states(&sock).is_empty());

    // Interrupted (Ctrl-C) while it waits, the command leaves the removal to the daemon,
    // which removes the (idle) backend once quiet.
    net.ctl(&sock, &["backend", "add", &vip, "198.18.0.11"]);
    let waiting = spawn_ctl(&sock, &remove_drained(&vip, "198.18.0.11", "60", "2", &[]));
    let b1 = format!("{vip} 198.18.0.11");
    wait_for("b1 removing", Duration::from_secs(5), || {
        net.backend_states(&sock).get(&b1).map(String::as_str) == Some("removing")
    });
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) };
    let (ok, _) = finish(waiting);
    assert!(!ok, "the interrupted command succeeded");
    wait_for("b1 removed by the daemon", Duration::from_secs(15), || {
        !net.backend_states(&sock).contains_key(&b1)
    });
    let stats = net.stats_json(&sock);
    let ended = stats["ended_removals"].as_array().expect("ended_removals");
    let last = ended.last().expect("an ended removal");
    assert_eq!(
        (&last["address"], &last["outcome"]),
        (
            &serde_json::json!("198.18.0.11"),
            &serde_json::json!("quiet")
        ),
        "{ended:?}"
    );

    // Refused before anything is asked of the daemon: --quiet needs --drain; an unknown
    // backend is not drained.
    let (ok, _, err) = net.try_ctl(
        &sock,
        &["backend", "remove", &vip, "198.18.0.13", "--quiet", "1"],
    );
    assert!(!ok && err.contains("--drain"), "{err}");
    let (ok, _, err) = net.try_ctl(
        &sock,
        &["backend", "remove", &vip, "198.18.0.13", "--drain", "5"],
    );
    assert!(!ok && err.contains("unknown_backend"), "{err}");
}
