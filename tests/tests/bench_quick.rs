//! `cargo xtask bench --quick` end to end: the bench binary runs in quick mode and leaves a
//! complete report. Checks completeness only (every required key present, every number
//! positive and finite): figures depend on the machine, so no timing is asserted.
//!
//! The bench creates its namespaces as `xlbt-PREFIX-PID-N` and removes them itself, also
//! when it fails; should it be killed (timeout), the guard below removes whatever its pid
//! left behind.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use xlb_tests::netns::require_root;

/// Longest a quick run may take before it is killed (it normally needs 1–3 minutes).
const TIMEOUT: Duration = Duration::from_secs(900);

/// Keys the report must hold as positive finite numbers (dotted paths): the bench issue's
/// list, written out here on purpose rather than taken from the bench's own `REQUIRED`, so
/// the test checks the bench against the contract instead of against itself.
const REQUIRED: &[&str] = &[
    "testrun_ns_per_pkt.xdp_drop",
    "testrun_ns_per_pkt.xdp_tx",
    "testrun_ns_per_pkt.xlb_conntrack_hit",
    "testrun_ns_per_pkt.xlb_new_flow",
    "testrun_ns_per_pkt.xlb_ipv6",
    "testrun_ns_per_pkt.xlb_unknown_vip",
    "forward_pps.xdp_tx_baseline",
    "forward_pps.xlb",
    "forward_pps.xlb_1m_flows",
    "peers.xlb_rps",
    "peers.nftables_rps",
    "peers.haproxy_rps",
    "maglev.build_ms_1000_backends",
    "maglev.moved_pct_remove_1_of_10",
    "machine.cores",
    "timestamp",
];

/// Kills the bench if still running and deletes namespaces it left (`xlbt-*-PID-*`).
struct BenchGuard {
    child: Child,
}

impl Drop for BenchGuard {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        let marker = format!("-{pid}-");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("xlbt-") && name.contains(&marker) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

#[track_caller]
fn number_at<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    path.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn quick_bench_writes_a_complete_report() {
    if !require_root() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let out_dir = std::env::temp_dir().join(format!("xlb-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Build first (its time does not count against the run's timeout).
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "xlb-bench"])
        .status()
        .expect("cargo build");
    assert!(built.success(), "building xlb-bench failed");
    let child = Command::new(&cargo)
        .current_dir(&root)
        .args(["run", "--quiet", "-p", "xlb-bench", "--", "--quick"])
        .env("XLB_BENCH_OUT", &out_dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the bench");
    let mut guard = BenchGuard { child };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.child.try_wait().expect("waiting for the bench") {
            break status;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the quick bench ran longer than {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "xlb-bench --quick failed ({status}); its messages are above"
    );

    let text = std::fs::read_to_string(out_dir.join("report.json")).expect("report.json written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    let mut bad = Vec::new();
    for key in REQUIRED {
        match number_at(&report, key).as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => {}
            other => bad.push(format!("{key} = {other:?}")),
        }
    }
    assert!(
        bad.is_empty(),
        "report.json lacks positive finite numbers: {}",
        bad.join(", ")
    );
    assert!(
        report["machine"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "machine.kernel missing"
    );
    let md = std::fs::read_to_string(out_dir.join("report.md")).expect("report.md written");
    assert!(md.contains("## Targets"), "report.md has no targets table");
    let _ = std::fs::remove_dir_all(&out_dir);
}
