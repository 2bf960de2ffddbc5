//! The report: ratios and targets computed from the measured figures, `report.json`,
//! `report.md` (tables) and PNG plots of the scaling curves (matplotlib).

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::stats::{ratio, round3};

/// Keys `report.json` always has, each a positive finite number (the CI test checks them).
pub const REQUIRED: &[&str] = &[
    "testrun_ns_per_pkt.xdp_drop",
    "testrun_ns_per_pkt.xdp_tx",
    "testrun_ns_per_pkt.xlb_conntrack_hit",
    "testrun_ns_per_pkt.xlb_new_flow",
    "testrun_ns_per_pkt.xlb_ipv6",
    "testrun_ns_per_pkt.xlb_unknown_vip",
    "testrun_ns_per_pkt.xlb_conntrack_hit_no_flow_cache",
    "testrun_ns_per_pkt.xlb_new_flow_full_table",
    "testrun_ns_per_pkt.xlb_new_flow_unrecorded",
    "testrun_ns_per_pkt.xlb_new_flow_small_table",
    "testrun_ns_per_pkt.xlb_new_flow_allow_list",
    "testrun_ns_per_pkt.xlb_dropped",
    "testrun_ns_per_pkt.xdp_encap_undo",
    "testrun_ns_per_pkt.xlb_stateless",
    "testrun_ns_per_pkt.decap_mss_clamp_reply",
    "testrun_ns_per_pkt.xlb_gue_hit",
    "testrun_ns_per_pkt.xlb_quic_routed",
    "testrun_ns_per_pkt.xlb_new_flow_client_limit",
    "forward_pps.xdp_tx_baseline",
    "forward_pps.xlb",
    "forward_pps.xlb_1m_flows",
    "forward_pps.xlb_no_flow_cache",
    "forward_pps.kernel_forward",
    "forward_pps.nftables_dnat",
    "forward_pps.xlb_flood",
    "forward_pps.xlb_flood_no_record_limit",
    "peers.xlb_rps",
    "peers.nftables_rps",
    "peers.haproxy_rps",
    "maglev.build_ms_1000_backends",
    "maglev.moved_pct_remove_1_of_10",
    "machine.cores",
    "timestamp",
];

/// The number at a dotted path, or 0.
pub fn num(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or(0.0)
}

/// Adds `ratios` and `targets`.
pub fn finish(r: &mut Value) {
    let t = |k: &str| num(r, &format!("testrun_ns_per_pkt.{k}"));
    let f = |k: &str| num(r, &format!("forward_pps.{k}"));
    let p = |k: &str| num(r, &format!("peers.{k}"));
    let ratios = json!({
        "testrun_hit_over_xdp_tx": round3(ratio(t("xlb_conntrack_hit"), t("xdp_tx"))),
        "testrun_hit_over_xdp_drop": round3(ratio(t("xlb_conntrack_hit"), t("xdp_drop"))),
        "testrun_hit_minus_restore_over_xdp_tx": round3(ratio(num(r, "testrun_ns_per_pkt.method.xlb_conntrack_hit_minus_restore_ns"), t("xdp_tx"))),
        "testrun_new_flow_over_xdp_tx": round3(ratio(t("xlb_new_flow"), t("xdp_tx"))),
        "testrun_ipv6_over_xdp_tx": round3(ratio(t("xlb_ipv6"), t("xdp_tx"))),
        "forward_xlb_over_xdp_tx": round3(ratio(f("xlb"), f("xdp_tx_baseline"))),
        "forward_xlb_1m_over_xdp_tx": round3(ratio(f("xlb_1m_flows"), f("xdp_tx_baseline"))),
        "forward_xlb_over_xdp_tx_paired_median": f("paired_xlb_over_xdp_tx.median"),
        "forward_encap_floor_over_xdp_tx": f("encap_floor_over_xdp_tx"),
        "forward_xlb_over_encap_floor": f("xlb_over_encap_floor"),
        "forward_xlb_over_nftables_dnat": f("xlb_over_nftables_dnat"),
        "forward_xlb_over_kernel_forward": f("xlb_over_kernel_forward"),
        "testrun_hit_over_xdp_tx_paired_median": t("paired_hit_over_xdp_tx.median"),
        "testrun_hit_over_encap_undo": round3(ratio(t("xlb_conntrack_hit"), t("xdp_encap_undo"))),
        "testrun_hit_over_encap_undo_paired_median": t("paired_hit_over_encap_undo.median"),
        "rps_xlb_over_nftables": round3(ratio(p("xlb_rps"), p("nftables_rps"))),
        "rps_xlb_over_haproxy": round3(ratio(p("xlb_rps"), p("haproxy_rps"))),
        "rps_xlb_over_direct": round3(ratio(p("xlb_rps"), p("direct_rps"))),
        "cps_xlb_over_nftables": round3(ratio(p("xlb_cps"), p("nftables_cps"))),
        "cps_xlb_over_haproxy": round3(ratio(p("xlb_cps"), p("haproxy_cps"))),
        "lb_cpu_keepalive_xlb_over_nftables": round3(ratio(p("keepalive.xlb.lb_cpu_us_per_request"), p("keepalive.nftables.lb_cpu_us_per_request"))),
        "lb_cpu_keepalive_xlb_over_haproxy": round3(ratio(p("keepalive.xlb.lb_cpu_us_per_request"), p("keepalive.haproxy.lb_cpu_us_per_request"))),
        "lb_cpu_close_xlb_over_nftables": round3(ratio(p("close.xlb.lb_cpu_us_per_request"), p("close.nftables.lb_cpu_us_per_request"))),
        "lb_cpu_close_xlb_over_haproxy": round3(ratio(p("close.xlb.lb_cpu_us_per_request"), p("close.haproxy.lb_cpu_us_per_request"))),
    });
    let target = |name: &str, value: f64, limit: f64, at_least: bool| {
        let met = if at_least {
            value >= limit
        } else {
            value <= limit
        };
        json!({ "target": name, "value": round3(value), "limit": limit, "met": met })
    };
    // The two ratio targets are judged on the worse of two estimates, the ratio of the
    // medians and the median of the within-round ratios: on this VM either can land on the
    // right side of a limit by chance in one run (one run had the encapsulation floor at
    // 1.16x the bounce it builds on).
    let (fwd, fwd_paired) = (
        num(&ratios, "forward_xlb_over_xdp_tx"),
        num(&ratios, "forward_xlb_over_xdp_tx_paired_median"),
    );
    let (hit, hit_paired) = (
        num(&ratios, "testrun_hit_over_xdp_tx"),
        num(&ratios, "testrun_hit_over_xdp_tx_paired_median"),
    );
    let targets = json!([
        target(
            "forwarding: xlb >= 0.8 x XDP_TX bounce (packets/s; the lower of ratio of medians and paired median)",
            fwd.min(fwd_paired),
            0.8,
            true
        ),
        target(
            "test_run: conntrack hit <= 4 x XDP_TX-only program (restore included; the higher of ratio of medians and paired median)",
            hit.max(hit_paired),
            4.0,
            false
        ),
        target(
            "live: balancer program <= 200 ns/packet under wrk (BPF stats; the hop-only program's figure on the same interface is the floor, in section 3)",
            p("bpf_stats.balancer_ns_per_pkt"),
            200.0,
            false
        ),
        target(
            "per request (keep-alive): xlb CPU <= 1.1 x hop-only floor",
            p("keepalive.xlb_cpu_per_request_over_hop_only"),
            1.1,
            false
        ),
        target(
            "per request (new connection): xlb CPU <= 1.1 x hop-only floor",
            p("close.xlb_cpu_per_request_over_hop_only"),
            1.1,
            false
        ),
        target(
            "Maglev: flows moved on 1-of-10 removal <= 11 %",
            num(r, "maglev.moved_pct_remove_1_of_10"),
            11.0,
            false
        ),
    ]);
    r["ratios"] = ratios;
    r["targets"] = targets;
}

/// Writes report.json, report.md and the plots into `dir`.
pub fn write(r: &Value, dir: &Path) -> Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)
        .context("writing report.json")?;
    let plots = plot(r, dir);
    std::fs::write(dir.join("report.md"), markdown(r, &plots)).context("writing report.md")?;
    Ok(())
}

const PLOT_SCRIPT: &str = r#"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open(sys.argv[1])); out = sys.argv[2]; s = r["scaling"]
for key, xlabel in (("vips", "VIPs"), ("backends", "backends per VIP"), ("flows", "flows in the connection table")):
    pts = s[key]
    xs = [p[key] for p in pts]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    med = [p["conntrack_hit_ns"]["median"] for p in pts]
    lo = [m - p["conntrack_hit_ns"]["min"] for m, p in zip(med, pts)]
    hi = [p["conntrack_hit_ns"]["max"] - m for m, p in zip(med, pts)]
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label="conntrack hit")
    if "new_flow_ns" in pts[0]:
        ax.plot(xs, [p["new_flow_ns"] for p in pts], marker="s", label="new flow")
    ax.axhline(r["testrun_ns_per_pkt"]["xdp_tx"], color="grey", ls="--", label="XDP_TX only")
    ax.set_xscale("log"); ax.set_xlabel(xlabel); ax.set_ylabel("ns / packet (test_run)")
    ax.set_ylim(bottom=0); ax.legend(fontsize=8); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(f"{out}/scaling_{key}.png", dpi=100)
    print(f"scaling_{key}.png")
"#;

/// Draws the scaling plots; returns the file names drawn (none if matplotlib is missing).
fn plot(r: &Value, dir: &Path) -> Vec<String> {
    let _ = r;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PLOT_SCRIPT)
        .arg(dir.join("report.json"))
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        Ok(o) => {
            eprintln!(
                "xlb-bench: plots skipped: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("xlb-bench: plots skipped: {e}");
            Vec::new()
        }
    }
}

fn fmt(x: f64) -> String {
    if x == 0.0 {
        "n/a".into()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn spread(r: &Value, path: &str) -> String {
    let s = path.split('.').fold(r, |v, k| &v[k]);
    format!(
        "{} – {}",
        fmt(s["min"].as_f64().unwrap_or(0.0)),
        fmt(s["max"].as_f64().unwrap_or(0.0))
    )
}

fn markdown(r: &Value, plots: &[String]) -> String {
    let mut m = String::new();
    let n = |p: &str| num(r, p);
    m += &format!(
        "# xlb bench ({} run)\n\n{} · kernel {} · {} cores · {}\n\nMethod: docs/bench.md. Medians of interleaved rounds, spread = min – max.\n\n",
        r["mode"].as_str().unwrap_or("?"),
        r["timestamp_utc"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or("?"),
        n("machine.cores"),
        r["machine"]["cpu"].as_str().unwrap_or("")
    );
    m += "## Targets\n\n| target | value | met |\n|---|---|---|\n";
    for t in r["targets"].as_array().into_iter().flatten() {
        m += &format!(
            "| {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            fmt(t["value"].as_f64().unwrap_or(0.0)),
            if t["met"].as_bool() == Some(true) {
                "met"
            } else {
                "**not met**"
            }
        );
    }

    m += "\n## 1. Per-packet cost (BPF_PROG_TEST_RUN, repeat mode)\n\n| program | ns/packet | spread | × XDP_TX-only |\n|---|---|---|---|\n";
    let tx = n("testrun_ns_per_pkt.xdp_tx");
    for (k, label) in [
        ("xdp_drop", "XDP_DROP only (floor)"),
        ("xdp_tx", "XDP_TX only (floor)"),
        (
            "xlb_conntrack_hit",
            "xlb, conntrack hit (IPv4, restore included)",
        ),
        (
            "xlb_new_flow",
            "xlb, new flow (Maglev + insert, restore included)",
        ),
        (
            "xlb_new_flow_full_table",
            "xlb, new flow into a full table (the insert evicts)",
        ),
        (
            "xlb_new_flow_unrecorded",
            "xlb, new flow over the record rate limit (a flood: Maglev, no insert)",
        ),
        (
            "xlb_stateless",
            "xlb, a packet of a stateless VIP (a new flow each: Maglev, nothing recorded)",
        ),
        (
            "xlb_new_flow_small_table",
            "xlb, new flow into a 2^16-entry table (the allow-list row's twin)",
        ),
        (
            "xlb_new_flow_allow_list",
            "xlb, new flow to a VIP with 1024 allowed prefixes (LPM lookup on admission)",
        ),
        (
            "xlb_new_flow_client_limit",
            "xlb, new flow to a VIP with a per-client limit (the client's window in an LRU hash)",
        ),
        (
            "xlb_conntrack_hit_no_flow_cache",
            "xlb, conntrack hit, flow cache off (IPv4, restore included)",
        ),
        ("xlb_ipv6", "xlb, IPv6 conntrack hit (IP6IP6)"),
        (
            "xlb_gue_hit",
            "xlb, conntrack hit on a GUE VIP (IPv4 in UDP, restore included)",
        ),
        (
            "xlb_quic_routed",
            "xlb, a QUIC connection's new path (routed by its server ID, recorded; 2^16 table)",
        ),
        ("xlb_unknown_vip", "xlb, unknown VIP (pass-through)"),
        (
            "xlb_dropped",
            "xlb, malformed frame dropped (a flood: the CPU's drop samples spent)",
        ),
        (
            "xdp_encap_undo",
            "IP-in-IP and the bench's undo, no decision (the restored hit's floor)",
        ),
        (
            "decap_mss_clamp_reply",
            "backend: the MSS clamp (TC egress, `xlb decap --clamp-mss`) on a reply segment",
        ),
    ] {
        let v = n(&format!("testrun_ns_per_pkt.{k}"));
        let sp = spread(r, &format!("testrun_ns_per_pkt.spread.{k}"));
        m += &format!("| {label} | {} | {sp} | {} |\n", fmt(v), fmt(ratio(v, tx)));
    }
    m += &format!(
        "\nHit over XDP_TX taken within each round, median over rounds: {}×. Over the floor that makes the same helper calls and header writes (IP-in-IP, then the undo) without deciding anything: {}× (within each round: {}×).\n\nThe bench-only restore (undoing the encapsulation so repeat mode reuses one frame) costs **{} ns** (single runs with and without the flag); the hit path without it: {} ns ({}× XDP_TX). New flows run in repeat mode too ({} per run, each with the next client port; the table has room for all of them, or for a fraction in the full-table row). A lone new flow, as single runs see it with cold caches, costs {} ns more than a lone hit.\n\nWhere the time goes (differences of the configurations above):\n\n| stage | ns |\n|---|---|\n",
        fmt(n("ratios.testrun_hit_over_xdp_tx_paired_median")),
        fmt(n("ratios.testrun_hit_over_encap_undo")),
        fmt(n("ratios.testrun_hit_over_encap_undo_paired_median")),
        fmt(n("testrun_ns_per_pkt.method.restore_cost_ns")),
        fmt(n("testrun_ns_per_pkt.method.xlb_conntrack_hit_minus_restore_ns")),
        fmt(n("ratios.testrun_hit_minus_restore_over_xdp_tx")),
        fmt(n("testrun_ns_per_pkt.method.new_flow_repeat")),
        fmt(n("testrun_ns_per_pkt.method.single_run_new_flow_extra_over_hit_ns")),
    );
    for (k, v) in r["testrun_ns_per_pkt"]["stages_ns"]
        .as_object()
        .into_iter()
        .flatten()
    {
        m += &format!("| {k} | {} |\n", fmt(v.as_f64().unwrap_or(0.0)));
    }

    m += "\n## 2. Forwarding over veth (64-byte frames, 1024 flows, one CPU runs the chain)\n\n| DUT on the balancer veth | packets/s | spread | × XDP_TX | DUT ns/packet |\n|---|---|---|---|---|\n";
    let ftx = n("forward_pps.xdp_tx_baseline");
    for (k, label) in [
        ("generator_alone", "none (generator drops its own frames)"),
        ("xdp_tx_baseline", "XDP_TX bounce (one-arm ceiling)"),
        ("xlb", "xlb"),
        ("xlb_1m_flows", "xlb, 1 M flows in the connection table"),
        ("xlb_no_flow_cache", "xlb, flow cache off"),
        (
            "encap_floor",
            "encapsulation floor (IP-in-IP and XDP_TX, no decisions)",
        ),
        (
            "kernel_forward",
            "kernel IP forwarding (XDP_PASS, routed back out)",
        ),
        (
            "nftables_dnat",
            "nftables DNAT to 3 targets (numgen), kernel forwarding",
        ),
        (
            "xlb_flood",
            "xlb under a flood (every frame a new flow), default record rate limit",
        ),
        (
            "xlb_flood_no_record_limit",
            "xlb under the same flood, no record rate limit (every flow inserted)",
        ),
    ] {
        let v = n(&format!("forward_pps.{k}"));
        let dut = if k == "generator_alone" {
            "–".into()
        } else {
            fmt(n(&format!("forward_pps.dut_ns_per_pkt.{k}")))
        };
        m += &format!(
            "| {label} | {} | {} | {} | {dut} |\n",
            fmt(v),
            spread(r, &format!("forward_pps.spread.{k}")),
            fmt(ratio(v, ftx))
        );
    }
    m += &format!(
        "\nxlb over XDP_TX taken within each round, median over rounds: {}×; xlb over xlb with the flow cache off, the same way: {}×.\n\nPackets/s against the kernel's own path on the same chain (the like-for-like peer comparison: one CPU, the same frames): xlb forwards **{}× nftables DNAT** (within each round: {}×) and {}× plain kernel forwarding.\n\nBPF run-time stats during these runs: xlb {} ns/packet, with 1 M flows {} ns/packet.\n\nShare of known-flow packets served from the per-CPU flow cache: {} (1 M flows: {}).\n\nUnder a flood of new flows, the record rate limit (100 000 recorded per CPU and second; the rest forwarded by hash, unrecorded) forwards {}× what the same balancer forwards when it inserts every flow (within each round: {}×).\n",
        fmt(n("ratios.forward_xlb_over_xdp_tx_paired_median")),
        fmt(n("forward_pps.paired_xlb_over_no_flow_cache.median")),
        fmt(n("forward_pps.xlb_over_nftables_dnat")),
        fmt(n("forward_pps.paired_xlb_over_nftables_dnat.median")),
        fmt(n("forward_pps.xlb_over_kernel_forward")),
        fmt(n("forward_pps.bpf_stats_ns_per_pkt.xlb")),
        fmt(n("forward_pps.bpf_stats_ns_per_pkt.xlb_1m_flows")),
        fmt(n("forward_pps.flow_cache_hit_share.xlb")),
        fmt(n("forward_pps.flow_cache_hit_share.xlb_1m_flows")),
        fmt(n("forward_pps.flood_over_no_record_limit")),
        fmt(n("forward_pps.paired_flood_over_no_record_limit.median"))
    );

    m += "\n## 3. Against peers (wrk through each balancer, same topology and run)\n\n";
    for (mode, title) in [
        ("keepalive", "keep-alive (requests/s)"),
        ("close", "new connection per request (connections/s)"),
    ] {
        m += &format!("### {title}\n\n| configuration | rate | spread | × direct | CPU µs/request | LB CPU µs/request | errors |\n|---|---|---|---|---|---|---|\n");
        for c in ["direct", "hop_only", "xlb", "nftables", "haproxy"] {
            let b = format!("peers.{mode}.{c}");
            m += &format!(
                "| {c} | {} | {} | {} | {} | {} | {} |\n",
                fmt(n(&format!("{b}.rps.median"))),
                spread(r, &format!("{b}.rps")),
                fmt(n(&format!("{b}.rps_over_direct"))),
                fmt(n(&format!("{b}.cpu_us_per_request.median"))),
                if c == "direct" {
                    "0 (reference)".into()
                } else {
                    fmt(n(&format!("{b}.lb_cpu_us_per_request")))
                },
                n(&format!("{b}.errors"))
            );
        }
        m += &format!(
            "\nxlb CPU per request / hop-only floor: {}.\n\n",
            fmt(n(&format!(
                "peers.{mode}.xlb_cpu_per_request_over_hop_only"
            )))
        );
    }
    m += &format!(
        "Ratios: xlb / nftables rps {} (cps {}), xlb / HAProxy rps {} (cps {}). LB CPU per request, xlb / nftables: {} keep-alive, {} new connection; xlb / HAProxy: {}, {}.\n\nBPF stats under wrk: balancer {} ns/packet ({} packets; {} with keep-alive, {} with a new connection per request), decap {} ns/packet ({} packets); the balancer costs {}× the decap program under the same load (BENCH-NOTES' minimal balancer: ≈ 4.4×).\n\nThe floor on the same interface under the same load: the hop-only configuration's program (EtherType check, a backend by the client's port, MAC rewrite, `XDP_TX`: the least an XDP program spreading connections can do) took {} ns/packet ({} with keep-alive, {} with a new connection per request), so the balancer's own work costs {} ns/packet above it ({} keep-alive, {} new connection).\n",
        fmt(n("ratios.rps_xlb_over_nftables")),
        fmt(n("ratios.cps_xlb_over_nftables")),
        fmt(n("ratios.rps_xlb_over_haproxy")),
        fmt(n("ratios.cps_xlb_over_haproxy")),
        fmt(n("ratios.lb_cpu_keepalive_xlb_over_nftables")),
        fmt(n("ratios.lb_cpu_close_xlb_over_nftables")),
        fmt(n("ratios.lb_cpu_keepalive_xlb_over_haproxy")),
        fmt(n("ratios.lb_cpu_close_xlb_over_haproxy")),
        fmt(n("peers.bpf_stats.balancer_ns_per_pkt")),
        n("peers.bpf_stats.balancer_packets"),
        fmt(n("peers.bpf_stats.balancer_ns_per_pkt_keepalive")),
        fmt(n("peers.bpf_stats.balancer_ns_per_pkt_close")),
        fmt(n("peers.bpf_stats.decap_ns_per_pkt")),
        n("peers.bpf_stats.decap_packets"),
        fmt(n("peers.bpf_stats.balancer_over_decap")),
        fmt(n("peers.bpf_stats.hop_ns_per_pkt")),
        fmt(n("peers.bpf_stats.hop_ns_per_pkt_keepalive")),
        fmt(n("peers.bpf_stats.hop_ns_per_pkt_close")),
        fmt(n("peers.bpf_stats.balancer_minus_hop_ns_per_pkt")),
        fmt(n("peers.bpf_stats.balancer_minus_hop_ns_per_pkt_keepalive")),
        fmt(n("peers.bpf_stats.balancer_minus_hop_ns_per_pkt_close")),
    );

    m += &format!(
        "\n## 4. Maglev (table size {})\n\n| backends | build ms |\n|---|---|\n| 10 | {} |\n| 100 | {} |\n| 1000 | {} |\n\nFlows moved: remove 1 of 10 → **{} %** (ideal 10 %), add an 11th → {} % (ideal {} %). Largest backend share of 10: {} %.\n",
        n("maglev.table_size"),
        fmt(n("maglev.build_ms_10_backends")),
        fmt(n("maglev.build_ms_100_backends")),
        fmt(n("maglev.build_ms_1000_backends")),
        fmt(n("maglev.moved_pct_remove_1_of_10")),
        fmt(n("maglev.moved_pct_add_1_to_10")),
        fmt(n("maglev.ideal_pct_add_1_to_10")),
        fmt(n("maglev.max_backend_share_pct_of_10")),
    );

    m += "\n## 5. Scaling (test_run, ns/packet)\n\n";
    for (key, label) in [
        ("vips", "VIPs"),
        ("backends", "backends per VIP"),
        ("flows", "flows in the table"),
    ] {
        m += &format!("| {label} | conntrack hit | spread | new flow |\n|---|---|---|---|\n");
        for p in r["scaling"][key].as_array().into_iter().flatten() {
            m += &format!(
                "| {} | {} | {} – {} | {} |\n",
                p[key],
                fmt(p["conntrack_hit_ns"]["median"].as_f64().unwrap_or(0.0)),
                fmt(p["conntrack_hit_ns"]["min"].as_f64().unwrap_or(0.0)),
                fmt(p["conntrack_hit_ns"]["max"].as_f64().unwrap_or(0.0)),
                p["new_flow_ns"]
                    .as_f64()
                    .map(fmt)
                    .unwrap_or_else(|| "–".into())
            );
        }
        m += "\n";
    }
    m += "Packets of known flows never look the VIP table up (the connection table comes first), so the VIP count shows in new flows' cost, not in the hit's.\n\n";
    for p in plots {
        m += &format!("![{p}]({p})\n");
    }
    m += &format!("\nRun time: {} s.\n", fmt(n("seconds.total")));
    m
}
