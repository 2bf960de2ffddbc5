//! `cargo xtask bench`: how fast xlb is, how close to what this machine can do, and how it
//! compares with what a user would pick instead — all in one run, so ratios hold on a
//! noisy machine. Writes `target/bench/report.json`, `report.md` and PNG plots.
//!
//! Layout:
//! - [`testrun`]: parts 1 and 5, per-packet cost with `BPF_PROG_TEST_RUN` (repeat mode).
//! - [`forward`]: part 2, packets/s over a veth pair with a live-frames generator.
//! - [`peers`]: part 3, wrk through xlb, nftables and HAProxy against direct and hop-only.
//! - [`maglev`]: part 4, table build time and disruption.
//! - [`report`]: report.json / report.md / plots, targets met or not.
//! - [`lab`], [`frames`], [`stats`]: a programmed balancer, the 64-byte frames, summaries.
//!
//! Every namespace is created by this process and removed on drop (also on a panic); all
//! addresses lie in 198.18.0.0/15 and fd00::/8; every traffic loop is bounded in count
//! (frames, requests by duration) and time. Method: docs/bench.md.

mod forward;
mod frames;
mod lab;
mod maglev;
mod peers;
mod report;
mod stats;
mod testrun;

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// How much of everything to do.
pub struct Plan {
    /// CI mode.
    pub quick: bool,
    /// Rounds per part (configurations interleaved within each).
    pub rounds: usize,
    /// test_run repeat count.
    pub repeat: u32,
    /// Single test runs per kind and round (new-flow and restore costs).
    pub singles: usize,
    /// Seconds per live-frames call.
    pub forward_secs: f64,
    /// Rounds of the forwarding part: its rates swing most between rounds on this VM.
    pub forward_rounds: usize,
    /// Seconds per wrk run.
    pub wrk_secs: u32,
    /// Maglev builds per size.
    pub maglev_builds: usize,
    /// Scaling points.
    pub vip_counts: Vec<u32>,
    /// See [`Plan::vip_counts`].
    pub backend_counts: Vec<usize>,
    /// See [`Plan::vip_counts`].
    pub flow_counts: Vec<u32>,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        Plan {
            quick,
            rounds: if quick { 2 } else { 5 },
            repeat: if quick { 200_000 } else { 1_000_000 },
            singles: if quick { 300 } else { 1000 },
            forward_secs: if quick { 0.4 } else { 1.5 },
            forward_rounds: if quick { 2 } else { 9 },
            wrk_secs: if quick { 1 } else { 5 },
            maglev_builds: if quick { 3 } else { 7 },
            // VIPS holds MAX_VIP_ENTRIES entries, one address marker per VIP address included.
            vip_counts: vec![1, 1000, 10_000],
            backend_counts: vec![10, 1000],
            flow_counts: vec![1_000, 100_000, 1_000_000],
        }
    }
}

/// BPF run-time statistics while the returned fd is open (`BPF_ENABLE_STATS`; the previous
/// state comes back when it closes). They cost every BPF program two clock reads per run, so
/// they are on only where their figures are read, never while test_run or packets/s are
/// measured.
pub fn bpf_stats_on() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time stats")
}

/// The balancer objects the A/B tools compare, read from `paths`.
pub fn read_builds(paths: &[String]) -> Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {p}")))
        .collect()
}

/// One part of the bench: a plan in, a JSON section out.
type Part = fn(&Plan) -> Result<Value>;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("xlb-bench [--quick]: writes target/bench/report.{{json,md}} (run as root; see docs/bench.md)");
        return;
    }
    if let Err(e) = run(quick) {
        eprintln!("xlb-bench: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace's `target/bench`; `XLB_BENCH_OUT` overrides it (the CI test writes to a
/// scratch directory).
fn out_dir() -> PathBuf {
    match std::env::var_os("XLB_BENCH_OUT") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("bench"),
    }
}

fn run(quick: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the bench needs root (BPF, network namespaces)"
    );
    let plan = Plan::new(quick);
    let started = Instant::now();
    let mut report = json!({
        "machine": machine(),
        "timestamp": unix_time(),
        "timestamp_utc": utc(unix_time()),
        "mode": if quick { "quick" } else { "full" },
    });
    let parts: [(&str, Part); 5] = [
        ("testrun_ns_per_pkt", testrun::per_packet),
        ("forward_pps", forward::run),
        ("peers", peers::run),
        ("maglev", maglev::run),
        ("scaling", testrun::scaling),
    ];
    // Development aids: compare builds of the balancer object (see docs/bench.md).
    type Compare = fn(&[String], usize) -> Result<Value>;
    for (var, compare, rounds) in [
        ("XLB_BENCH_AB", testrun::compare_builds as Compare, 40),
        ("XLB_BENCH_AB_FORWARD", forward::compare_builds, 24),
        ("XLB_BENCH_AB_WRK", peers::compare_builds, 8),
    ] {
        if let Ok(paths) = std::env::var(var) {
            let paths: Vec<String> = paths.split(',').map(|p| p.trim().to_string()).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&compare(&paths, rounds)?)?
            );
            return Ok(());
        }
    }
    // Development aid: `XLB_BENCH_PARTS=testrun_ns_per_pkt,forward_pps` runs only those
    // parts and prints their sections instead of writing an (incomplete) report.
    let only = std::env::var("XLB_BENCH_PARTS").ok();
    if let Some(only) = &only {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        for (key, part) in parts.iter().filter(|(k, _)| wanted.contains(k)) {
            eprintln!("xlb-bench: {key} …");
            let section = part(&plan).with_context(|| format!("bench part {key}"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ *key: section }))?
            );
        }
        return Ok(());
    }
    for (key, part) in parts {
        let t = Instant::now();
        eprintln!("xlb-bench: {key} …");
        report[key] = part(&plan).with_context(|| format!("bench part {key}"))?;
        report["seconds"][key] = json!(stats::round3(t.elapsed().as_secs_f64()));
    }
    report["seconds"]["total"] = json!(stats::round3(started.elapsed().as_secs_f64()));
    report::finish(&mut report);
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    report::write(&report, &dir)?;
    let missing: Vec<&str> = report::REQUIRED
        .iter()
        .copied()
        // NaN counts as missing too, hence not `<= 0.0`.
        .filter(|k| report::num(&report, k).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "report.json lacks a positive figure for {}",
        missing.join(", ")
    );
    println!(
        "xlb-bench: {} and report.md written in {:.0} s",
        dir.join("report.json").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({ "kernel": kernel, "cores": cores, "cpu": cpu })
}

/// Seconds since the epoch.
fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC form of `secs`.
fn utc(secs: u64) -> String {
    xlb::utc::Utc::of_unix_secs(secs).rfc3339()
}
