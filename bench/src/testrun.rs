//! Parts 1 and 5: per-packet cost with `BPF_PROG_TEST_RUN`.
//!
//! Method (docs/bench.md has the reasoning):
//! - Repeat mode (one buffer, `repeat` runs, the kernel's ns per run), several rounds with
//!   the configurations interleaved round by round; median, min, max.
//! - xlb encapsulates, so in repeat mode it would see its own output on the next run. The
//!   bench sets `CFG_F_BENCH_RESTORE`: xlb undoes the encapsulation and drops, so every run
//!   starts from the same frame; counters are checked after each run to prove the path.
//! - The undo's cost is measured, not guessed: many single runs (fresh buffer each) of the
//!   same conntrack hit with and without the flag; the difference of the medians.
//! - New flows run in repeat mode too: with `CFG_F_BENCH_NEW_FLOWS` the restore also bumps
//!   the client port, so every run records a flow (checked on the `new_flow` counter).
//!   Each call takes a client address no earlier call used, and the table has room for
//!   every flow a part records, so the figure is Maglev + insert; a second figure runs
//!   against a full table, where every insert evicts (a long-running balancer's table is
//!   full: entries leave only by eviction).
//! - The single-run view of a new flow (cold caches, as a lone SYN meets them) is kept
//!   for reference: `hit (repeat mode) + median(single new) − median(single hit)`.

use std::net::IpAddr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::programs::Xdp;
use lb_common::{
    counters::{Drop, Event, Pass},
    maps::{
        VipKey, CFG_F_BENCH_NEW_FLOWS, CFG_F_BENCH_RESTORE, DEFAULT_MAX_CONNS, MAX_VIP_ENTRIES,
    },
};
use serde_json::{json, Value};
use xlb::{config::VipId, core::NextHop, loader, testrun};
use xlb_tests::{
    fixtures::{CLIENT_MAC, LB_MAC, NEXTHOP_MAC, TEST_RUN_IFINDEX},
    packet::Pkt,
};

use crate::{
    forward,
    frames::udp64,
    lab::{backend_addrs, load_options, BenchLab, VipKind, VipSpec},
    stats::{paired, rotated, round3, Summary},
    Plan,
};

const VIP4: &str = "198.18.1.1";
const VIP6: &str = "fd00:1::1";
const CLIENT4: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::10";
const PORT: u16 = 80;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("bench address")
}

fn vip_id(addr: &str) -> VipId {
    format!(
        "{}:{PORT}/udp",
        if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        }
    )
    .parse()
    .expect("vip id")
}

/// Fixed next hop of test_run labs (loopback is the ingress device there).
fn test_hop() -> NextHop {
    NextHop {
        ifindex: TEST_RUN_IFINDEX,
        smac: LB_MAC,
        dmac: NEXTHOP_MAC,
        mtu: 1500,
    }
}

fn frame(src: &str, sport: u16, dst: &str) -> Vec<u8> {
    udp64(CLIENT_MAC, LB_MAC, ip(src), sport, ip(dst), PORT)
}

/// Where an IPv4 [`frame`]'s UDP payload starts (Ethernet, IPv4, UDP headers).
const UDP_PAYLOAD: usize = 14 + 20 + 8;

/// The start of a QUIC short-header packet whose connection ID (configuration 0) names
/// server ID 1 in two octets (`lb_common::quic`).
const QUIC_PATH: [u8; 6] = [0x41, 0x05, 0x00, 0x01, 0xa1, 0xa2];

/// The kernel's ns per run over `repeat` runs.
fn repeat_ns(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<f64> {
    testrun::ns_per_packet(prog, frame, repeat)
}

/// [`repeat_ns`] for the decap object's TC program (`xlb_mss_clamp`), checked: the frame
/// leaves as it came (`TC_ACT_OK`, untouched).
fn clamp_repeat_ns(decap: &mut aya::Ebpf, frame: &[u8], repeat: u32) -> Result<f64> {
    use aya::programs::{TestRun, TestRunOptions};
    let prog = loader::classifier(decap, loader::MSS_CLAMP_PROG)?;
    let mut out = vec![0u8; frame.len() + 64];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::new()
    })?;
    out.truncate(res.data_size_out as usize);
    ensure!(
        res.return_value == 0 && out == frame,
        "the MSS clamp changed a reply segment, or did not pass it"
    );
    Ok(res.duration.as_nanos() as f64)
}

/// One single run's duration (ns) and verdict.
fn single(prog: &Xdp, frame: &[u8]) -> Result<(f64, u32)> {
    use aya::programs::{TestRun, TestRunOptions};
    let res = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: 1,
        ..TestRunOptions::new()
    })?;
    Ok((res.duration.as_nanos() as f64, res.return_value))
}

fn slot_delta(before: &[u64], after: &[u64], slot: u32) -> u64 {
    after[slot as usize] - before[slot as usize]
}

/// A conntrack-hit measurement in repeat mode, checked: every run must be a hit.
fn hit_repeat(lab: &mut BenchLab, frame: &[u8], repeat: u32) -> Result<f64> {
    let before = lab.counters();
    let ns = repeat_ns(lab.prog(), frame, repeat)?;
    let hits = slot_delta(&before, &lab.counters(), Event::ConnHit.slot());
    ensure!(
        hits == u64::from(repeat),
        "repeat run was not {repeat} conntrack hits but {hits}: the restore flag is not working"
    );
    Ok(ns)
}

/// Connection-table size of the full-table new-flow figure: a fraction of one call's flows.
const FULL_TABLE: u32 = 1 << 12;

/// New flows per repeat-mode call: within the client port's 16 bits, and every round's
/// together within the main lab's table (`DEFAULT_MAX_CONNS` per family, split between
/// the CPUs' LRU lists).
fn new_flow_repeat(plan: &Plan) -> u32 {
    if plan.quick {
        5_000
    } else {
        20_000
    }
}

/// New flows in repeat mode (see the module docs). Every call takes the next client
/// address of 198.18.64.0/18 (its flows start at port 1024), so no call meets flows an
/// earlier one recorded.
struct NewFlows {
    calls: u32,
}

impl NewFlows {
    fn new() -> Self {
        NewFlows { calls: 0 }
    }

    /// ns per new flow over `repeat` runs on `lab` (IPv4 VIP), checked: `repeat` new flows,
    /// all recorded.
    fn measure(&mut self, lab: &mut BenchLab, repeat: u32) -> Result<f64> {
        let (ns, recorded, unrecorded, _) = self.run(lab, repeat)?;
        ensure!(
            recorded == u64::from(repeat) && unrecorded == 0,
            "repeat run was not {repeat} recorded new flows but {recorded} (and {unrecorded} unrecorded)"
        );
        Ok(ns)
    }

    /// As [`NewFlows::measure`] on a lab whose VIP has `quic`, each flow's datagram a QUIC
    /// short-header packet naming backend 1's server ID (a connection's new path): checked
    /// that every flow was routed by it and recorded.
    fn measure_quic(&mut self, lab: &mut BenchLab, repeat: u32) -> Result<f64> {
        let before = lab.counters();
        let ns = self.measure_with(lab, repeat, &QUIC_PATH)?;
        let routed = slot_delta(&before, &lab.counters(), Event::QuicRouted.slot());
        ensure!(
            routed == u64::from(repeat),
            "repeat run to a QUIC VIP: {routed} routed by server ID, of {repeat}"
        );
        Ok(ns)
    }

    /// [`NewFlows::measure`] with the datagram's payload starting with `payload`.
    fn measure_with(&mut self, lab: &mut BenchLab, repeat: u32, payload: &[u8]) -> Result<f64> {
        let (ns, recorded, unrecorded, _) = self.run_with(lab, repeat, payload)?;
        ensure!(
            recorded == u64::from(repeat) && unrecorded == 0,
            "repeat run was not {repeat} recorded new flows but {recorded} (and {unrecorded} unrecorded)"
        );
        Ok(ns)
    }

    /// As [`NewFlows::measure`] on a lab whose VIP is `stateless`: checked that every flow
    /// was a stateless pick and none was recorded.
    fn measure_stateless(&mut self, lab: &mut BenchLab, repeat: u32) -> Result<f64> {
        let (ns, recorded, _, picks) = self.run(lab, repeat)?;
        ensure!(
            picks == u64::from(repeat) && recorded == 0,
            "repeat run to a stateless VIP: {picks} stateless picks and {recorded} recorded, of {repeat}"
        );
        Ok(ns)
    }

    /// As [`NewFlows::measure`] on a lab whose record rate limit is 1: checked that all but
    /// the first flow of each second (at most two per call) went unrecorded.
    fn measure_unrecorded(&mut self, lab: &mut BenchLab, repeat: u32) -> Result<f64> {
        let (ns, recorded, unrecorded, _) = self.run(lab, repeat)?;
        ensure!(
            recorded + unrecorded == u64::from(repeat) && recorded <= 2,
            "repeat run over the record rate limit: {recorded} recorded and {unrecorded} not, of {repeat}"
        );
        Ok(ns)
    }

    /// ns per run, and the runs' `new_flow`, `flow_not_recorded` and `stateless_pick`
    /// counts.
    fn run(&mut self, lab: &mut BenchLab, repeat: u32) -> Result<(f64, u64, u64, u64)> {
        self.run_with(lab, repeat, &[])
    }

    /// [`NewFlows::run`] with the datagram's payload starting with `payload`.
    fn run_with(
        &mut self,
        lab: &mut BenchLab,
        repeat: u32,
        payload: &[u8],
    ) -> Result<(f64, u64, u64, u64)> {
        ensure!(
            self.calls < 1 << 14,
            "out of client addresses for new flows"
        );
        let client = std::net::Ipv4Addr::from(u32::from_be_bytes([198, 18, 64, 0]) + self.calls);
        self.calls += 1;
        let mut f = frame(&client.to_string(), 1024, VIP4);
        f[UDP_PAYLOAD..UDP_PAYLOAD + payload.len()].copy_from_slice(payload);
        lab.set_config_flag(CFG_F_BENCH_NEW_FLOWS, true)?;
        let before = lab.counters();
        let ns = repeat_ns(lab.prog(), &f, repeat);
        let after = lab.counters();
        lab.set_config_flag(CFG_F_BENCH_NEW_FLOWS, false)?;
        Ok((
            ns?,
            slot_delta(&before, &after, Event::NewFlow.slot()),
            slot_delta(&before, &after, Event::FlowNotRecorded.slot()),
            slot_delta(&before, &after, Event::StatelessPick.slot()),
        ))
    }
}

/// Single-run medians on one lab: a conntrack hit with and without the restore flag and
/// new flows (with it). New flows use client ports from `*next_port` on.
struct Singles {
    hit_restore: Vec<f64>,
    hit_plain: Vec<f64>,
    new_flow: Vec<f64>,
}

impl Singles {
    fn new() -> Self {
        Singles {
            hit_restore: Vec::new(),
            hit_plain: Vec::new(),
            new_flow: Vec::new(),
        }
    }

    /// One batch of `n` runs of each kind, interleaved run by run.
    fn batch(
        &mut self,
        lab: &mut BenchLab,
        hit: &[u8],
        client: &str,
        vip: &str,
        next_port: &mut u16,
        n: usize,
    ) -> Result<()> {
        lab.set_config_flag(CFG_F_BENCH_RESTORE, true)?;
        let before = lab.counters();
        for _ in 0..n {
            let (t, v) = single(lab.prog(), hit)?;
            ensure!(
                v == XDP_DROP,
                "restored hit gave verdict {}",
                testrun::verdict_name(v)
            );
            self.hit_restore.push(t);
            let f = frame(client, *next_port, vip);
            *next_port = next_port
                .checked_add(1)
                .ok_or_else(|| anyhow!("out of client ports for new flows"))?;
            let (t, v) = single(lab.prog(), &f)?;
            ensure!(
                v == XDP_DROP,
                "restored new flow gave verdict {}",
                testrun::verdict_name(v)
            );
            self.new_flow.push(t);
        }
        let new = slot_delta(&before, &lab.counters(), Event::NewFlow.slot());
        ensure!(
            new == n as u64,
            "expected {n} new flows, the balancer counted {new}"
        );
        lab.set_config_flag(CFG_F_BENCH_RESTORE, false)?;
        for _ in 0..n {
            let (t, v) = single(lab.prog(), hit)?;
            ensure!(
                v == XDP_TX,
                "plain hit gave verdict {}",
                testrun::verdict_name(v)
            );
            self.hit_plain.push(t);
        }
        lab.set_config_flag(CFG_F_BENCH_RESTORE, true)?;
        Ok(())
    }

    fn med(v: &[f64]) -> f64 {
        Summary::of(v).median
    }

    /// Median single-run extra of a new flow over a hit.
    fn new_flow_extra(&self) -> f64 {
        Self::med(&self.new_flow) - Self::med(&self.hit_restore)
    }

    /// Median single-run cost of the restore.
    fn restore_cost(&self) -> f64 {
        Self::med(&self.hit_restore) - Self::med(&self.hit_plain)
    }
}

/// A lab with one IPv4 and one IPv6 UDP VIP of `n` backends each.
fn main_lab(n_backends: usize, max_conns: u32) -> Result<BenchLab> {
    lab_with(n_backends, max_conns, true)
}

/// A lab with the IPv4 VIP, and the IPv6 one when `v6`.
fn lab_with(n_backends: usize, max_conns: u32, v6: bool) -> Result<BenchLab> {
    lab_of(loader::BALANCER_OBJ, n_backends, max_conns, v6, true)
}

/// [`lab_with`] for a given build of the balancer object, with or without the flow cache.
fn lab_of(
    object: &[u8],
    n_backends: usize,
    max_conns: u32,
    v6: bool,
    flow_cache: bool,
) -> Result<BenchLab> {
    lab_of_kind(
        object,
        n_backends,
        max_conns,
        v6,
        flow_cache,
        VipKind::Plain,
    )
}

/// [`lab_of`], its VIPs of `kind`.
fn lab_of_kind(
    object: &[u8],
    n_backends: usize,
    max_conns: u32,
    v6: bool,
    flow_cache: bool,
    kind: VipKind,
) -> Result<BenchLab> {
    let mut vips = vec![VipSpec {
        addr: ip(VIP4),
        port: PORT,
        proto: "udp",
        backends: backend_addrs(n_backends, false),
        kind,
    }];
    if v6 {
        vips.push(VipSpec {
            addr: ip(VIP6),
            port: PORT,
            proto: "udp",
            backends: backend_addrs(n_backends, true),
            kind,
        });
    }
    let mut lab = BenchLab::with_object(
        object,
        &vips,
        load_options(max_conns, flow_cache),
        test_hop(),
    )?;
    lab.set_config_flag(CFG_F_BENCH_RESTORE, true)?;
    Ok(lab)
}

/// Records the measured flows (first run = new flow) and checks the verdicts.
fn prime(lab: &mut BenchLab, frames: &[&[u8]]) -> Result<()> {
    for f in frames {
        for _ in 0..2 {
            let out = testrun::run(lab.prog(), f)?;
            if out.verdict != XDP_DROP {
                bail!(
                    "priming: verdict {} (want XDP_DROP under the restore flag)",
                    testrun::verdict_name(out.verdict)
                );
            }
        }
    }
    Ok(())
}

/// Part 1. Returns the `testrun_ns_per_pkt` object (plus spreads and the method's figures).
pub fn per_packet(plan: &Plan) -> Result<Value> {
    let mut drop = loader::load_baseline("xlb_drop")?;
    let mut tx = loader::load_baseline("xlb_tx")?;
    // The restored hit's helper calls and header writes, without decisions.
    let mut undo = loader::load_baseline("xlb_encap_undo")?;
    {
        let mut hdr: aya::maps::Array<_, [u16; forward::ENCAP_HDR_LEN / 2]> =
            aya::maps::Array::try_from(
                undo.map_mut("ENCAP_HDR")
                    .context("baseline object has no ENCAP_HDR")?,
            )?;
        hdr.set(0, forward::encap_header([2; 6], [4; 6]), 0)?;
    }
    // `xlb run`'s table size: room for every new flow this part records.
    let mut lab = main_lab(10, DEFAULT_MAX_CONNS)?;
    // A table that new flows keep full: nearly every insert evicts.
    let mut full = lab_with(10, FULL_TABLE, false)?;
    // The same hit with the flow cache off (`xlb run --no-flow-cache`): what it saves.
    let mut uncached = lab_of(loader::BALANCER_OBJ, 10, 1 << 16, false, false)?;
    // New flows over the record rate limit (a flood): scheduled by hash, not recorded.
    let mut flood = lab_with(10, 1 << 16, false)?;
    flood.set_record_rate_limit(1)?;
    // New flows to a stateless VIP (a DNS service's queries): the same pick, nothing to
    // record by design rather than by a flood's limit.
    let mut stateless = lab_of_kind(
        loader::BALANCER_OBJ,
        10,
        1 << 16,
        false,
        true,
        VipKind::Stateless,
    )?;
    // The hit on a GUE VIP: what the UDP header costs each packet.
    let mut gue = lab_of_kind(loader::BALANCER_OBJ, 10, 1 << 16, false, true, VipKind::Gue)?;
    // New paths of QUIC connections (a client that moved): each a new flow its connection
    // ID routes, recorded, against `open_lab`'s new flows into a table of the same size.
    let mut quic = lab_of_kind(
        loader::BALANCER_OBJ,
        10,
        1 << 16,
        false,
        true,
        VipKind::Quic,
    )?;
    // New flows to a VIP with the longest client allow-list a VIP may have, the new-flow
    // clients' prefix among 1023 others, beside the same table without a list: what the
    // LPM lookup on admission costs.
    let mut open_lab = lab_with(10, 1 << 16, false)?;
    let mut listed = lab_with(10, 1 << 16, false)?;
    listed
        .core
        .set_sources(&vip_id(VIP4), allow_list())
        .map_err(|e| anyhow!("allowed_sources: {e}"))?;
    // New flows to a VIP with a per-client limit that admits them all: what finding the
    // client's window in the shared LRU costs (a call's flows share one client, whose
    // first flow makes it), beside `open_lab`.
    let mut client_limited = lab_with(10, 1 << 16, false)?;
    client_limited
        .core
        .set_client_flow_rate_limit(&vip_id(VIP4), Some(u32::MAX))
        .map_err(|e| anyhow!("client_flow_rate_limit: {e}"))?;
    // The backends' MSS clamp (`xlb decap --clamp-mss`) on a reply segment from a VIP:
    // what every packet a backend sends pays for it.
    let mut decap = loader::load_decap()?;
    let reply = Pkt::eth(LB_MAC, CLIENT_MAC)
        .ipv4(VIP4.parse()?, CLIENT4.parse()?)
        .tcp(PORT, 40_000)
        .ack()
        .payload(&[0x5a; 64])
        .build();
    let hit4 = frame(CLIENT4, 40_000, VIP4);
    let hit6 = frame(CLIENT6, 40_000, VIP6);
    let unknown = frame(CLIENT4, 40_000, "198.18.9.9");
    prime(&mut lab, &[&hit4, &hit6])?;
    prime(&mut uncached, &[&hit4])?;
    prime(&mut gue, &[&hit4])?;
    let mut new_flows = NewFlows::new();
    let new_repeat = new_flow_repeat(plan);
    // Fill `full` first (its CPU share is a fraction of one call's flows).
    new_flows.measure(&mut full, new_repeat)?;
    let before = lab.counters();
    let out = testrun::run(lab.prog(), &unknown)?;
    ensure!(
        out.verdict == XDP_PASS && out.frame == unknown,
        "unknown VIP must pass untouched"
    );
    ensure!(
        slot_delta(&before, &lab.counters(), Pass::NotVip.slot()) == 1,
        "unknown VIP not counted as not_vip"
    );
    // A malformed frame (IPv4 IHL 3), dropped at the parser's first IPv4 check: a flood of
    // garbage. A lab's drop-sampling budget is 0 (no daemon refills it), as a flooded
    // CPU's is once it has spent the second's: the drop is counted, the budget checked.
    let mut garbage = hit4.clone();
    garbage[14] = 0x43;
    let before = lab.counters();
    let out = testrun::run(lab.prog(), &garbage)?;
    ensure!(
        out.verdict == XDP_DROP
            && slot_delta(&before, &lab.counters(), Drop::Ipv4BadIhl.slot()) == 1,
        "a frame with IHL 3 must be dropped as ipv4_bad_ihl"
    );

    let names = [
        "xdp_drop",
        "xdp_tx",
        "xlb_conntrack_hit",
        "xlb_ipv6",
        "xlb_unknown_vip",
        "xlb_conntrack_hit_no_flow_cache",
        "xlb_new_flow",
        "xlb_new_flow_full_table",
        "xlb_new_flow_unrecorded",
        "xlb_new_flow_small_table",
        "xlb_new_flow_allow_list",
        "xlb_dropped",
        "xdp_encap_undo",
        "xlb_stateless",
        "decap_mss_clamp_reply",
        "xlb_gue_hit",
        "xlb_quic_routed",
        "xlb_new_flow_client_limit",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut singles = Singles::new();
    let mut port = 1024u16;
    for round in 0..plan.rounds {
        samples[0].push(repeat_ns(
            loader::xdp(&mut drop, "xlb_drop")?,
            &hit4,
            plan.repeat,
        )?);
        samples[1].push(repeat_ns(
            loader::xdp(&mut tx, "xlb_tx")?,
            &hit4,
            plan.repeat,
        )?);
        samples[2].push(hit_repeat(&mut lab, &hit4, plan.repeat)?);
        samples[3].push(hit_repeat(&mut lab, &hit6, plan.repeat)?);
        samples[4].push(repeat_ns(lab.prog(), &unknown, plan.repeat)?);
        samples[5].push(hit_repeat(&mut uncached, &hit4, plan.repeat)?);
        samples[6].push(new_flows.measure(&mut lab, new_repeat)?);
        samples[7].push(new_flows.measure(&mut full, new_repeat)?);
        samples[8].push(new_flows.measure_unrecorded(&mut flood, new_repeat)?);
        samples[9].push(new_flows.measure(&mut open_lab, new_repeat)?);
        samples[10].push(new_flows.measure(&mut listed, new_repeat)?);
        samples[11].push(repeat_ns(lab.prog(), &garbage, plan.repeat)?);
        samples[12].push(repeat_ns(
            loader::xdp(&mut undo, "xlb_encap_undo")?,
            &hit4,
            plan.repeat,
        )?);
        samples[13].push(new_flows.measure_stateless(&mut stateless, new_repeat)?);
        samples[14].push(clamp_repeat_ns(&mut decap, &reply, plan.repeat)?);
        samples[15].push(hit_repeat(&mut gue, &hit4, plan.repeat)?);
        samples[16].push(new_flows.measure_quic(&mut quic, new_repeat)?);
        samples[17].push(new_flows.measure(&mut client_limited, new_repeat)?);
        singles.batch(&mut lab, &hit4, CLIENT4, VIP4, &mut port, plan.singles)?;
        eprintln!(
            "  test_run round {}/{}: hit {:.0} ns, new flow {:.0} ns",
            round + 1,
            plan.rounds,
            samples[2][round],
            samples[6][round]
        );
    }
    let s: Vec<Summary> = samples.iter().map(|v| Summary::of(v)).collect();
    let hit = s[2].median;
    let new_flow = s[6].median;
    let single_new_extra = singles.new_flow_extra();
    let restore = singles.restore_cost();
    let mut out = json!({});
    for (name, sum) in names.iter().zip(&s) {
        out[*name] = json!(round3(sum.median));
        out["spread"][*name] = sum.json();
    }
    // Hit over XDP_TX within each round, then the median (see forward.rs).
    out["paired_hit_over_xdp_tx"] = Summary::of(&paired(&samples[2], &samples[1])).json();
    // The same hit over the floor that makes its helper calls and header writes: the
    // repeat-mode view of what xlb's decisions add, free of the single runs' noise.
    out["paired_hit_over_encap_undo"] = Summary::of(&paired(&samples[2], &samples[12])).json();
    out["method"] = json!({
        "repeat": plan.repeat,
        "new_flow_repeat": new_repeat,
        "new_flow_table_entries": DEFAULT_MAX_CONNS,
        "new_flow_full_table_entries": FULL_TABLE,
        "single_runs_per_kind": singles.hit_restore.len(),
        "single_run_median_ns": {
            "hit_with_restore": Singles::med(&singles.hit_restore),
            "hit_without_restore": Singles::med(&singles.hit_plain),
            "new_flow_with_restore": Singles::med(&singles.new_flow),
        },
        // The cold view: a lone new flow over a lone hit, added to the repeat-mode hit.
        "single_run_new_flow_extra_over_hit_ns": round3(single_new_extra),
        "single_run_new_flow_ns": round3(hit + single_new_extra),
        "restore_cost_ns": round3(restore),
        "xlb_conntrack_hit_minus_restore_ns": round3(hit - restore),
    });
    // Where the time goes, from differences of the measured configurations. The balancer
    // asks the connection table before the VIP table, so an unknown VIP pays parsing, a
    // connection-table miss and a VIP miss, and a hit pays parsing and a hit.
    out["stages_ns"] = json!({
        "program_entry_and_exit (xdp_drop)": round3(s[0].median),
        "parse_conn_miss_and_vip_miss (unknown_vip - xdp_drop)": round3(s[4].median - s[0].median),
        "parse_conn_hit_encap_counters (hit - restore - xdp_drop)": round3(hit - restore - s[0].median),
        "maglev_lookup_and_insert (new_flow - hit)": round3(new_flow - hit),
        "full_4k_table_over_room (new_flow_full_table - new_flow: eviction, less the misses a 2^20 table adds)": round3(s[7].median - new_flow),
        "insert_and_cache_fill (new_flow - new_flow_unrecorded: what a flood packet saves)": round3(new_flow - s[8].median),
        "bench_restore (measured, included in the hit figure)": round3(restore),
        "decisions_over_encap_undo (hit - xdp_encap_undo: parse, flow cache, backend, outer header, counters)": round3(hit - s[12].median),
        "allow_list_1024_prefixes (new_flow_allow_list - new_flow_small_table)": round3(s[10].median - s[9].median),
        "parse_to_a_malformed_ipv4_header_and_drop (dropped - xdp_drop)": round3(s[11].median - s[0].median),
        "stateless_saves (new_flow_small_table - stateless: a query to a stateless VIP against one recorded in a table of the same size)": round3(s[9].median - s[13].median),
        "gue_adds (gue_hit - conntrack_hit: the UDP header of a GUE tunnel)": round3(s[15].median - hit),
        "quic_routed_over_maglev (quic_routed - new_flow_small_table: a new path placed by its connection ID's server against a new flow placed by the Maglev table, both recorded in a table of the same size)": round3(s[16].median - s[9].median),
        "client_limit_window (new_flow_client_limit - new_flow_small_table: the client's rate window found in the LRU and counted (an atomic add))": round3(s[17].median - s[9].median),
    });
    out["paired_allow_list_over_small_table"] =
        Summary::of(&paired(&samples[10], &samples[9])).json();
    Ok(out)
}

/// The longest allow-list a VIP may have: 1023 /26 prefixes of 198.19.0.0/16 that no
/// measured client is in, and 198.18.64.0/18, where [`NewFlows`] takes its clients.
fn allow_list() -> Vec<xlb::config::SourcePrefix> {
    let decoys =
        (0..xlb::config::MAX_SOURCES_PER_VIP as u32 - 1).map(|i| xlb::config::SourcePrefix {
            addr: std::net::Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 0]) + (i << 6)).into(),
            len: 26,
        });
    let clients = xlb::config::SourcePrefix {
        addr: ip("198.18.64.0"),
        len: 18,
    };
    decoys.chain(std::iter::once(clients)).collect()
}

/// Part 5: how the per-packet cost scales with VIPs, backends per VIP and flows.
pub fn scaling(plan: &Plan) -> Result<Value> {
    let hit4 = frame(CLIENT4, 40_000, VIP4);
    let vid = vip_id(VIP4);
    let mut out = json!({});

    // VIPs: the measured VIP through the core, the others written straight into VIPS with
    // the measured VIP's settings (they only need to be there: the cost in question is the
    // VIP hash lookup). VIPS holds MAX_VIP_ENTRIES entries, markers included.
    {
        let mut lab = lab_with(10, 1 << 16, false)?;
        prime(&mut lab, &[&hit4])?;
        let key4 = {
            let (addr, family) = lb_common::addr::to_words(ip(VIP4));
            VipKey {
                addr,
                port_be: PORT.to_be(),
                proto: 17,
                family,
            }
        };
        let mut vips = lab.vips_map()?;
        let info = vips.get(&key4, 0)?;
        let present = vips.keys().count() as u32;
        let mut added = 0u32;
        let mut points = Vec::new();
        for target in plan.vip_counts.iter().copied() {
            let services = present / 2; // one service + one address marker per address
            while services + added < target && present + added < MAX_VIP_ENTRIES {
                let i = added;
                let addr = std::net::Ipv4Addr::new(198, 19, 128 + (i / 256) as u8, i as u8);
                let (w, family) = lb_common::addr::to_words(IpAddr::V4(addr));
                vips.insert(
                    VipKey {
                        addr: w,
                        port_be: PORT.to_be(),
                        proto: 17,
                        family,
                    },
                    info,
                    0,
                )?;
                added += 1;
            }
            let mut v = Vec::new();
            for _ in 0..plan.rounds {
                v.push(hit_repeat(&mut lab, &hit4, plan.repeat)?);
            }
            let s = Summary::of(&v);
            eprintln!(
                "  scaling: {} VIPs: hit {:.0} ns",
                services + added,
                s.median
            );
            points.push(json!({ "vips": services + added, "vip_map_entries": present + added, "conntrack_hit_ns": s.json() }));
        }
        out["vips"] = json!(points);
    }

    // Backends per VIP: one lab each, rounds interleaved.
    let mut new_flows = NewFlows::new();
    let new_repeat = new_flow_repeat(plan);
    {
        let mut labs = Vec::new();
        for &n in &plan.backend_counts {
            let mut lab = main_lab(n, DEFAULT_MAX_CONNS)?;
            prime(&mut lab, &[&hit4])?;
            labs.push((n, lab, Vec::new(), Vec::new()));
        }
        for _ in 0..plan.rounds {
            for (_, lab, hits, news) in labs.iter_mut() {
                hits.push(hit_repeat(lab, &hit4, plan.repeat)?);
                news.push(new_flows.measure(lab, new_repeat)?);
            }
        }
        let points: Vec<Value> = labs
            .iter()
            .map(|(n, _, hits, news)| {
                let (s, new) = (Summary::of(hits), Summary::of(news));
                eprintln!("  scaling: {n} backends: hit {:.0} ns, new flow {:.0} ns", s.median, new.median);
                json!({ "backends": n, "conntrack_hit_ns": s.json(), "new_flow_ns": round3(new.median) })
            })
            .collect();
        out["backends"] = json!(points);
    }

    // Flows already in the connection table (with room for the new flows measured too).
    {
        let max_conns = plan.flow_counts.iter().copied().max().unwrap_or(1) * 3;
        let mut lab = main_lab(10, max_conns.max(1 << 16))?;
        prime(&mut lab, &[&hit4])?;
        let backend = backend_addrs(1, false)[0];
        let mut filled = 0u32;
        let mut points = Vec::new();
        for &target in &plan.flow_counts {
            let refused = lab.fill_conns(&vid, backend, filled, target)?;
            ensure!(
                refused == 0,
                "the kernel refused {refused} connection-table inserts"
            );
            filled = target;
            let mut hits = Vec::new();
            let mut news = Vec::new();
            for _ in 0..plan.rounds {
                hits.push(hit_repeat(&mut lab, &hit4, plan.repeat)?);
                news.push(new_flows.measure(&mut lab, new_repeat)?);
            }
            let (s, new) = (Summary::of(&hits), Summary::of(&news));
            eprintln!(
                "  scaling: {target} flows: hit {:.0} ns, new flow {:.0} ns",
                s.median, new.median
            );
            points.push(json!({ "flows": target, "conntrack_hit_ns": s.json(), "new_flow_ns": round3(new.median) }));
        }
        out["flows"] = json!(points);
    }
    Ok(out)
}

/// Development aid (`XLB_BENCH_AB=a.o,b.o`): the conntrack hit of several builds of the
/// balancer object, interleaved with the XDP_TX-only program in many short rounds, so that
/// a change to the data path can be judged on this noisy machine. Per build: the median of
/// the per-round ratios to XDP_TX, and the median ns; and new flows in repeat mode (5 000
/// per round, into a table with room for all of them).
pub fn compare_builds(paths: &[String], rounds: usize) -> Result<Value> {
    let mut tx = loader::load_baseline("xlb_tx")?;
    let hit4 = frame(CLIENT4, 40_000, VIP4);
    let mut labs = Vec::new();
    for object in crate::read_builds(paths)? {
        let mut lab = lab_of(&object, 10, DEFAULT_MAX_CONNS, false, true)?;
        prime(&mut lab, &[&hit4])?;
        labs.push(lab);
    }
    let repeat = 200_000;
    let mut tx_ns = Vec::new();
    let mut ns = vec![Vec::new(); labs.len()];
    let mut new_ns = vec![Vec::new(); labs.len()];
    let mut new_flows = NewFlows::new();
    for round in 0..rounds {
        let t = repeat_ns(loader::xdp(&mut tx, "xlb_tx")?, &hit4, repeat)?;
        tx_ns.push(t);
        for i in rotated(labs.len(), round) {
            let lab = &mut labs[i];
            // Not `hit_repeat`: ablation builds may not count hits.
            let v = repeat_ns(lab.prog(), &hit4, repeat)?;
            ns[i].push(v);
            // Builds older than CFG_F_BENCH_NEW_FLOWS repeat one flow: no figure for them.
            if let Ok(v) = new_flows.measure(lab, 5_000) {
                new_ns[i].push(v);
            }
        }
    }
    let mut out = json!({ "xdp_tx_ns": Summary::of(&tx_ns).json() });
    for (i, p) in paths.iter().enumerate() {
        out[p] = json!({
            "hit_ns": Summary::of(&ns[i]).json(),
            "hit_over_xdp_tx": Summary::of(&paired(&ns[i], &tx_ns)).json(),
            "new_flow_ns": if new_ns[i].is_empty() {
                Value::Null
            } else {
                Summary::of(&new_ns[i]).json()
            },
        });
    }
    Ok(out)
}
