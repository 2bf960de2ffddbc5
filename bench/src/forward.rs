//! Part 2: forwarding rate over a veth pair.
//!
//! ```text
//!   gen namespace                      lb namespace
//!   g0 (sink: xlb_drop) ◄──── veth ────► l0 (DUT: xlb_tx | xlb_encap | xlb | xlb, 1 M flows)
//!    ▲ xlb_gen, BPF_PROG_TEST_RUN live frames, ingress g0: XDP_TX → l0
//! ```
//! The generator's frames leave g0 and arrive at l0, where the DUT bounces them (XDP_TX,
//! one-arm, as xlb runs) back to g0, whose XDP program counts them in veth's per-queue
//! `xdp_packets` and drops them. The kernel's own path is measured on the same chain: with
//! `xlb_pass` on l0 the frames go up the lb namespace's stack, which forwards them back out
//! of l0 to the sink (plain IP forwarding), or DNATs them first (nftables, the peer a user
//! would pick for a packet-level balancer; DNAT only, like xlb's DSR it changes no source).
//! veth runs the receiver's NAPI on the sending CPU, so the whole chain runs on one CPU:
//! rate = 1 / (sum of per-packet costs); the DUT's own cost is `1/rate − 1/rate(generator
//! alone)`. Configurations are interleaved round by round.

use std::{net::IpAddr, time::Instant};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use lb_common::{counters::Event, maps::DEFAULT_MAX_CONNS};
use serde_json::{json, Value};
use xlb::{
    config::{VipId, DEFAULT_RECORD_RATE_LIMIT},
    core::NextHop,
    loader,
};
use xlb_tests::netns::{veth, Netns};

use crate::{
    frames::{udp64, FRAME_LEN, SPORT_OFF_V4},
    lab::{backend_addrs, load_options, BenchLab, VipKind, VipSpec},
    stats::{paired, ratio, rotated, round3, Summary},
    Plan,
};

const VIP: &str = "198.18.1.1";
const CLIENT: &str = "198.18.0.10";
const PORT: u16 = 80;
/// Source ports the generator cycles through (one flow each).
pub const GEN_FLOWS: u32 = 1024;
const GEN_SPORT_BASE: u32 = 1024;
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
/// l0's address, for the kernel-path DUTs.
const LB_ADDR: &str = "198.18.0.1/24";
/// The nftables DUT's DNAT targets, routed back out of l0 to the sink.
const NFT_TARGETS: [&str; 3] = ["198.18.8.11", "198.18.8.12", "198.18.8.13"];
const NFT_TARGET_NET: &str = "198.18.8.0/24";
/// The generator's VIP as a route, while plain forwarding is measured.
const VIP_NET: &str = "198.18.1.0/24";
/// The nftables DUT's ruleset: DNAT to three targets round robin, as the peers part does
/// for TCP (no SNAT: the sink answers nothing).
fn nft_dnat_ruleset() -> String {
    format!(
        "table ip xlbfwd {{\n{}}}\n",
        crate::peers::nft_dnat_chain(VIP, "udp", PORT, &NFT_TARGETS)
    )
}
/// Mirror of `ENCAP_HDR_LEN` in lb-ebpf/src/bin/baseline.rs.
pub const ENCAP_HDR_LEN: usize = 34;

/// Mirror of `GenConfig` in lb-ebpf/src/bin/baseline.rs (same layout and size check).
#[repr(C)]
#[derive(Clone, Copy)]
struct GenConfig {
    frame: [u8; FRAME_LEN],
    flows: u32,
    sport_base: u32,
    sport_off: u32,
    action: u32,
    flood: u32,
}
const _: () = assert!(core::mem::size_of::<GenConfig>() == 84);
// SAFETY: repr(C), integers only, no padding (84 = 64 + 5 × 4), any bit pattern valid.
unsafe impl aya::Pod for GenConfig {}

/// The generator: `xlb_gen` plus the sink program, in their own object.
struct Generator {
    ebpf: Ebpf,
    ifindex: u32,
    template: Vec<u8>,
}

impl Generator {
    /// `flood`: every frame a new flow (all 65 536 source ports, then the next source
    /// address of 198.18.0.0/16), instead of the `GEN_FLOWS` flows.
    fn configure(&mut self, action: u32, flood: bool) -> Result<()> {
        let mut frame = [0u8; FRAME_LEN];
        frame.copy_from_slice(&self.template);
        let cfg = GenConfig {
            frame,
            flows: if flood { 1 << 16 } else { GEN_FLOWS },
            sport_base: GEN_SPORT_BASE,
            sport_off: SPORT_OFF_V4 as u32,
            action,
            flood: u32::from(flood),
        };
        let mut map: Array<_, GenConfig> = Array::try_from(
            self.ebpf
                .map_mut("GEN_CONFIG")
                .context("xlb_gen has no GEN_CONFIG map")?,
        )?;
        map.set(0, cfg, 0)?;
        Ok(())
    }

    /// One live-frames run of `frames` frames from inside the generator namespace; returns
    /// the wall time in seconds (including the kernel's ≈ 20 ms teardown at the end).
    fn send(&mut self, ns: &Netns, frames: u32) -> Result<f64> {
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(FRAME_LEN as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let prog = loader::xdp(&mut self.ebpf, "xlb_gen")?;
        let _inside = ns.enter();
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&self.template),
            ctx_in: Some(&md),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })
        .context("live-frames test run")?;
        Ok(t.elapsed().as_secs_f64())
    }
}

/// Sum of the `rx_queue_N_<field>` counters of `ifname` (veth's per-queue XDP statistics).
fn veth_stat(ns: &Netns, ifname: &str, field: &str) -> u64 {
    let out = ns.exec(&["ethtool", "-S", ifname]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with(&format!("_{field}")))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// A DUT configuration on l0.
enum Dut<'a> {
    GeneratorAlone,
    XdpTx,
    /// `xlb_encap`: IP-in-IP encapsulation and nothing else.
    EncapFloor,
    Xlb(&'a mut BenchLab),
    /// xlb under a flood: the generator makes every frame a new flow.
    XlbFlood(&'a mut BenchLab),
    /// `xlb_pass` on l0 and the kernel forwarding the frames back out of l0.
    KernelForward,
    /// As `KernelForward`, with the nftables DNAT ruleset loaded for the run.
    Nftables,
}

/// Attaches the DUT's program to l0 (from inside the lb namespace), returns it for detach.
fn attach(lb: &Netns, prog: &mut Xdp) -> Result<aya::programs::xdp::XdpLinkId> {
    let ifindex = lb.ifindex("l0");
    let _inside = lb.enter();
    prog.attach_to_if_index(ifindex, XdpMode::Driver)
        .context("attaching the DUT to l0")
}

struct Sample {
    pps: f64,
    bpf_ns: Option<f64>,
    /// xlb only: share of known-flow packets served from the per-CPU flow cache.
    cache_share: Option<f64>,
}

/// One run with baseline program `name` as the DUT; seconds taken.
fn baseline(
    ebpf: &mut Ebpf,
    name: &str,
    gen: &mut Generator,
    genns: &Netns,
    lb: &Netns,
    frames: u32,
) -> Result<f64> {
    let prog = loader::xdp(ebpf, name)?;
    let link = attach(lb, prog)?;
    let secs = gen.send(genns, frames);
    prog.detach(link)?;
    secs
}

/// The topology and the programs every forwarding measurement shares.
struct Rig {
    genns: Netns,
    lb: Netns,
    gen: Generator,
    tx: Ebpf,
    encap: Ebpf,
    pass: Ebpf,
    hop: NextHop,
    /// Where the nftables ruleset file goes.
    dir: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Rig {
    fn new() -> Result<Rig> {
        let genns = Netns::new("bg");
        let lb = Netns::new("bl");
        veth(&genns, "g0", &lb, "l0");
        for (ns, ifname) in [(&genns, "g0"), (&lb, "l0")] {
            ns.offloads_off(ifname);
            ns.link_up(ifname);
        }
        let gmac = genns.mac("g0");
        let lmac = lb.mac("l0");
        let l0 = lb.ifindex("l0");

        // Generator and sink.
        let mut ebpf = loader::load_baseline("xlb_gen")?;
        loader::load_program(&mut ebpf, "xlb_drop")?;
        {
            let _inside = genns.enter();
            loader::attach(&mut ebpf, "xlb_drop", "g0", XdpMode::Driver)?;
        }
        let mut template = udp64(
            gmac,
            lmac,
            CLIENT.parse()?,
            GEN_SPORT_BASE as u16,
            VIP.parse()?,
            PORT,
        );
        // No UDP checksum (valid in IPv4): the generator changes the source port without
        // fixing the checksum, and conntrack would take such frames for invalid and leave
        // them un-NATed. xlb reads no L4 checksum.
        template[SPORT_OFF_V4 + 6..SPORT_OFF_V4 + 8].fill(0);

        // The kernel path: l0 gets an address, the sink's MAC is a permanent neighbour
        // (nothing answers ARP on g0), and the DNAT targets are routed back out of l0 to
        // it: one arm, like xlb. The VIP is routed only while plain forwarding is measured,
        // so that a frame nftables failed to DNAT has no route and the run fails its check.
        // No redirects: the kernel would send one for every frame that leaves by the
        // interface it came in on, and the sink would count them.
        lb.addr("l0", LB_ADDR);
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.l0.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.l0.send_redirects", "0"),
        ] {
            lb.sysctl(key, value);
        }
        let gmac_str = xlb::daemon::state::mac_string(&gmac);
        lb.ip(&[
            "neigh",
            "replace",
            CLIENT,
            "lladdr",
            &gmac_str,
            "dev",
            "l0",
            "nud",
            "permanent",
        ]);
        lb.route(&[NFT_TARGET_NET, "via", CLIENT, "dev", "l0"]);
        let dir = std::env::temp_dir().join(format!("xlb-bench-forward-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("bench scratch directory")?;
        let gen = Generator {
            ebpf,
            ifindex: genns.ifindex("g0"),
            template,
        };

        // Baseline DUTs.
        let tx = loader::load_baseline("xlb_tx")?;
        let pass = loader::load_baseline("xlb_pass")?;
        let mut encap = loader::load_baseline("xlb_encap")?;
        {
            let mut hdr: Array<_, [u16; ENCAP_HDR_LEN / 2]> = Array::try_from(
                encap
                    .map_mut("ENCAP_HDR")
                    .context("baseline object has no ENCAP_HDR")?,
            )?;
            hdr.set(0, encap_header(gmac, lmac), 0)?;
        }
        let hop = NextHop {
            ifindex: l0,
            smac: lmac,
            dmac: gmac,
            mtu: 1500,
        };
        Ok(Rig {
            genns,
            lb,
            gen,
            tx,
            encap,
            pass,
            hop,
            dir,
        })
    }

    /// A balancer (build `object`) serving the generator's VIP, its next hop the sink.
    fn xlb(&self, object: &[u8], max_conns: u32, flow_cache: bool) -> Result<BenchLab> {
        let vips = vec![VipSpec {
            addr: VIP.parse()?,
            port: PORT,
            proto: "udp",
            backends: backend_addrs(10, false),
            kind: VipKind::Plain,
        }];
        BenchLab::with_object(object, &vips, load_options(max_conns, flow_cache), self.hop)
    }

    fn measure(&mut self, dut: Dut<'_>, frames: u32) -> Result<Sample> {
        let Rig {
            genns,
            lb,
            gen,
            tx,
            encap,
            pass,
            dir,
            ..
        } = self;
        let action = if matches!(dut, Dut::GeneratorAlone) {
            XDP_DROP
        } else {
            XDP_TX
        };
        let flood = matches!(dut, Dut::XlbFlood(_));
        gen.configure(action, flood)?;
        let kernel_path = matches!(dut, Dut::KernelForward | Dut::Nftables);
        let before = veth_stat(genns, "g0", "xdp_packets");
        let (secs, bpf_ns, cache_share) = match dut {
            Dut::GeneratorAlone => (gen.send(genns, frames)?, None, None),
            Dut::XdpTx => (baseline(tx, "xlb_tx", gen, genns, lb, frames)?, None, None),
            Dut::EncapFloor => (
                baseline(encap, "xlb_encap", gen, genns, lb, frames)?,
                None,
                None,
            ),
            Dut::KernelForward => {
                lb.route(&[VIP_NET, "via", CLIENT, "dev", "l0"]);
                let secs = baseline(pass, "xlb_pass", gen, genns, lb, frames);
                lb.ip(&["-4", "route", "del", VIP_NET]);
                (secs?, None, None)
            }
            Dut::Nftables => {
                crate::peers::nft(lb, &nft_dnat_ruleset(), dir)?;
                let secs = baseline(pass, "xlb_pass", gen, genns, lb, frames);
                crate::peers::nft(lb, "delete table ip xlbfwd\n", dir)?;
                (secs?, None, None)
            }
            Dut::Xlb(lab) | Dut::XlbFlood(lab) => {
                let c0 = lab.counters();
                let i0 = lab.prog().info()?;
                let link = attach(lb, lab.prog())?;
                let secs = gen.send(genns, frames);
                lab.prog().detach(link)?;
                let i1 = lab.prog().info()?;
                let c1 = lab.counters();
                let delta = |e: Event| c1[e.slot() as usize] - c0[e.slot() as usize];
                ensure!(
                    delta(Event::TxEncap) > 0,
                    "xlb encapsulated nothing: check the generator's template and next hops"
                );
                // A flood's frames are all new flows, recorded or not (the generator counts
                // sources and ports up; only its first frames' sources may repeat an
                // earlier run's).
                let new = delta(Event::NewFlow) + delta(Event::FlowNotRecorded);
                ensure!(
                    !flood || new * 10 >= delta(Event::TxEncap) * 9,
                    "flood run: {new} new flows for {} frames encapsulated",
                    delta(Event::TxEncap)
                );
                let runs = i1.run_count() - i0.run_count();
                let ns = (i1.run_time() - i0.run_time()).as_nanos() as f64;
                let hits = delta(Event::ConnHit);
                (
                    secs?,
                    (runs > 0 && ns > 0.0).then(|| ns / runs as f64),
                    (hits > 0).then(|| delta(Event::FlowCacheHit) as f64 / hits as f64),
                )
            }
        };
        let delivered = if action == XDP_DROP {
            u64::from(frames)
        } else {
            veth_stat(genns, "g0", "xdp_packets") - before
        };
        // The kernel drops what it cannot route or NAT without a trace at the sink; a
        // misconfigured run would report a rate of almost nothing. A working path loses
        // frames too: the generator outruns it, and the veth ring drops the excess (one run
        // delivered 30 %), so only a near-total loss fails the run.
        ensure!(
            !kernel_path || delivered * 20 >= u64::from(frames),
            "the kernel path delivered {delivered} of {frames} frames: routes or DNAT broken"
        );
        Ok(Sample {
            pps: delivered as f64 / secs,
            bpf_ns,
            cache_share,
        })
    }
}

/// Live frames for about `secs` seconds at `rate`.
fn frames_for(rate: f64, secs: f64) -> u32 {
    ((rate * secs) as u64).clamp(100_000, 50_000_000) as u32
}

/// Development aid (`XLB_BENCH_AB_FORWARD=a.o,b.o`): the forwarding rate of several builds
/// of the balancer object against the XDP_TX bounce, interleaved round by round, with the
/// ratio taken within each round; every other round measures each build's BPF run time
/// per packet instead.
pub fn compare_builds(paths: &[String], rounds: usize) -> Result<Value> {
    let mut rig = Rig::new()?;
    let objects = crate::read_builds(paths)?;
    let mut labs = objects
        .iter()
        .map(|o| rig.xlb(o, 1 << 16, true))
        .collect::<Result<Vec<_>>>()?;
    let warm = 200_000;
    for lab in &mut labs {
        rig.measure(Dut::Xlb(lab), warm)?;
    }
    let frames = frames_for(rig.measure(Dut::XdpTx, warm)?.pps, 1.0);
    let mut tx = Vec::new();
    let mut pps = vec![Vec::new(); labs.len()];
    let mut bpf_ns = vec![Vec::new(); labs.len()];
    for round in 0..rounds {
        // Every other round with BPF run-time stats on: the programs' own time per packet,
        // less noisy than the chain's rate (but the stats' clock reads cost every program).
        let stats = (round % 2 == 1).then(crate::bpf_stats_on).transpose()?;
        let t = rig.measure(Dut::XdpTx, frames)?.pps;
        // Rotated every other round: each kind of round (rate, run time) sees every order.
        for i in rotated(labs.len(), round / 2) {
            // A fresh load every round, as in the wrk A/B (peers.rs): a loaded instance
            // keeps its own speed. Its first frames record the generator's flows.
            if round > 0 {
                labs[i] = rig.xlb(&objects[i], 1 << 16, true)?;
                rig.measure(Dut::Xlb(&mut labs[i]), warm)?;
            }
            let lab = &mut labs[i];
            let x = rig.measure(Dut::Xlb(lab), frames)?;
            if stats.is_some() {
                bpf_ns[i].extend(x.bpf_ns);
            } else {
                pps[i].push(x.pps);
            }
        }
        if stats.is_none() {
            tx.push(t);
        }
    }
    let mut out = json!({ "xdp_tx_pps": Summary::of(&tx).json() });
    for (i, p) in paths.iter().enumerate() {
        out[p] = json!({
            "pps": Summary::of(&pps[i]).json(),
            "over_xdp_tx": Summary::of(&paired(&pps[i], &tx)).json(),
            "bpf_ns_per_pkt": Summary::of(&bpf_ns[i]).json(),
        });
    }
    Ok(out)
}

/// Runs part 2.
pub fn run(plan: &Plan) -> Result<Value> {
    let mut rig = Rig::new()?;
    let mut xlb = rig.xlb(loader::BALANCER_OBJ, 1 << 16, true)?;
    let mut xlb_1m = rig.xlb(loader::BALANCER_OBJ, 3 << 20, true)?;
    // `xlb run --no-flow-cache`: what the per-CPU flow cache is worth live.
    let mut uncached = rig.xlb(loader::BALANCER_OBJ, 1 << 16, false)?;
    // Under a flood, with `xlb run`'s table size: the default record rate limit, and none.
    let mut flood = rig.xlb(loader::BALANCER_OBJ, DEFAULT_MAX_CONNS, true)?;
    flood.set_record_rate_limit(DEFAULT_RECORD_RATE_LIMIT)?;
    let mut flood_unlimited = rig.xlb(loader::BALANCER_OBJ, DEFAULT_MAX_CONNS, true)?;
    let vid: VipId = format!("{VIP}:{PORT}/udp")
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let backend: IpAddr = backend_addrs(1, false)[0];
    let t = Instant::now();
    let refused = xlb_1m.fill_conns(&vid, backend, 0, 1_000_000)?;
    ensure!(
        refused == 0,
        "the kernel refused {refused} of 1 M connection-table inserts"
    );
    eprintln!(
        "  forward: 1 M flows written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Warm-up: records the generator's flows in both tables and sizes the runs.
    let warm = 200_000;
    let gen_rate = rig.measure(Dut::GeneratorAlone, warm)?.pps;
    rig.measure(Dut::Xlb(&mut xlb), warm)?;
    rig.measure(Dut::Xlb(&mut xlb_1m), warm)?;
    rig.measure(Dut::Xlb(&mut uncached), warm)?;
    rig.measure(Dut::XlbFlood(&mut flood), warm)?;
    rig.measure(Dut::XlbFlood(&mut flood_unlimited), warm)?;
    let tx_rate = rig.measure(Dut::XdpTx, warm)?.pps;
    // The kernel path is several times slower: its runs are sized by their own rate.
    let kernel_rate = rig.measure(Dut::KernelForward, warm)?.pps;
    let nft_rate = rig.measure(Dut::Nftables, warm)?.pps;
    let frames_for = |rate: f64| frames_for(rate, plan.forward_secs);

    let names = [
        "generator_alone",
        "xdp_tx_baseline",
        "xlb",
        "xlb_1m_flows",
        "encap_floor",
        "xlb_no_flow_cache",
        "kernel_forward",
        "nftables_dnat",
        "xlb_flood",
        "xlb_flood_no_record_limit",
    ];
    let mut pps: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut bpf: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut cache_share: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..plan.forward_rounds {
        // A different order every round, backwards every other round: no configuration
        // always runs first, or always right after the same one.
        let mut order: Vec<usize> = rotated(names.len(), round / 2).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let s = match i {
                0 => rig.measure(Dut::GeneratorAlone, frames_for(gen_rate))?,
                1 => rig.measure(Dut::XdpTx, frames_for(tx_rate))?,
                2 => rig.measure(Dut::Xlb(&mut xlb), frames_for(tx_rate))?,
                3 => rig.measure(Dut::Xlb(&mut xlb_1m), frames_for(tx_rate))?,
                4 => rig.measure(Dut::EncapFloor, frames_for(tx_rate))?,
                5 => rig.measure(Dut::Xlb(&mut uncached), frames_for(tx_rate))?,
                6 => rig.measure(Dut::KernelForward, frames_for(kernel_rate))?,
                7 => rig.measure(Dut::Nftables, frames_for(nft_rate))?,
                8 => rig.measure(Dut::XlbFlood(&mut flood), frames_for(tx_rate))?,
                _ => rig.measure(Dut::XlbFlood(&mut flood_unlimited), frames_for(tx_rate))?,
            };
            pps[i].push(s.pps);
            cache_share[i].extend(s.cache_share);
        }
        eprintln!(
            "  forward round {}/{}: gen {:.2} Mpps, xdp_tx {:.2}, encap floor {:.2}, xlb {:.2}, xlb 1M {:.2}, xlb no cache {:.2}, kernel {:.2}, nftables {:.2}, flood {:.2}, flood without the record limit {:.2}",
            round + 1,
            plan.forward_rounds,
            pps[0][round] / 1e6,
            pps[1][round] / 1e6,
            pps[4][round] / 1e6,
            pps[2][round] / 1e6,
            pps[3][round] / 1e6,
            pps[5][round] / 1e6,
            pps[6][round] / 1e6,
            pps[7][round] / 1e6,
            pps[8][round] / 1e6,
            pps[9][round] / 1e6
        );
    }
    // The balancer's own run time per packet under this load, in extra runs: BPF stats cost
    // every program two clock reads per run, so they stay off while packets/s are measured.
    {
        let _stats = crate::bpf_stats_on()?;
        for _ in 0..plan.rounds.min(3) {
            for (i, lab) in [(2, &mut xlb), (3, &mut xlb_1m)] {
                if let Some(ns) = rig.measure(Dut::Xlb(lab), frames_for(tx_rate) / 2)?.bpf_ns {
                    bpf[i].push(ns);
                }
            }
        }
    }
    let s: Vec<Summary> = pps.iter().map(|v| Summary::of(v)).collect();
    let mut out = json!({});
    for (name, sum) in names.iter().zip(&s) {
        out[*name] = json!(sum.median.round());
        out["spread"][*name] = sum.json();
    }
    let gen_ns = ratio(1e9, s[0].median);
    for (i, name) in names.iter().enumerate().skip(1) {
        out["dut_ns_per_pkt"][*name] = json!(round3(ratio(1e9, s[i].median) - gen_ns));
    }
    out["xlb_over_xdp_tx"] = json!(round3(ratio(s[2].median, s[1].median)));
    out["xlb_1m_over_xdp_tx"] = json!(round3(ratio(s[3].median, s[1].median)));
    out["xlb_no_flow_cache_over_xdp_tx"] = json!(round3(ratio(s[5].median, s[1].median)));
    // The same ratio taken within each round (the configurations of one round ran seconds
    // apart), then the median: less sensitive to the machine's drift between rounds.
    out["paired_xlb_over_xdp_tx"] = Summary::of(&paired(&pps[2], &pps[1])).json();
    out["paired_xlb_over_no_flow_cache"] = Summary::of(&paired(&pps[2], &pps[5])).json();
    out["encap_floor_over_xdp_tx"] = json!(round3(ratio(s[4].median, s[1].median)));
    out["xlb_over_nftables_dnat"] = json!(round3(ratio(s[2].median, s[7].median)));
    out["paired_xlb_over_nftables_dnat"] = Summary::of(&paired(&pps[2], &pps[7])).json();
    out["xlb_over_kernel_forward"] = json!(round3(ratio(s[2].median, s[6].median)));
    out["xlb_over_encap_floor"] = json!(round3(ratio(s[2].median, s[4].median)));
    // Under a flood: what the record rate limit saves (unrecorded flows skip the insert).
    out["flood_over_no_record_limit"] = json!(round3(ratio(s[8].median, s[9].median)));
    out["paired_flood_over_no_record_limit"] = Summary::of(&paired(&pps[8], &pps[9])).json();
    out["bpf_stats_ns_per_pkt"] = json!({
        "xlb": round3(Summary::of(&bpf[2]).median),
        "xlb_1m_flows": round3(Summary::of(&bpf[3]).median),
    });
    // How much of the hit path ran on the flow cache rather than the connection table.
    out["flow_cache_hit_share"] = json!({
        "xlb": round3(Summary::of(&cache_share[2]).median),
        "xlb_1m_flows": round3(Summary::of(&cache_share[3]).median),
    });
    out["method"] = json!({
        "frame_bytes": FRAME_LEN, "flows": GEN_FLOWS, "seconds_per_call": plan.forward_secs,
        "counted_at": "sink veth g0 rx_queue_*_xdp_packets (after the DUT's XDP_TX)",
        "rate_time_base": "wall time of the live-frames call, including its ~20 ms teardown",
        "prefilled_flows_1m": 1_000_000,
    });
    Ok(out)
}

/// `xlb_encap`'s headers for the generator's 64-byte frames: Ethernet towards the sink
/// (`dmac`, from `smac`) and an outer IPv4 header 198.18.0.2 → 198.18.8.1, protocol 4, DF,
/// TTL 64, total length 20 + the inner packet, checksum filled in.
pub fn encap_header(dmac: [u8; 6], smac: [u8; 6]) -> [u16; ENCAP_HDR_LEN / 2] {
    let inner = (FRAME_LEN - 14) as u16;
    let mut ip: [u8; 20] = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0, 198, 18, 0, 2, 198, 18, 8, 1,
    ];
    ip[2..4].copy_from_slice(&(20 + inner).to_be_bytes());
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let check = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut bytes = Vec::with_capacity(ENCAP_HDR_LEN);
    bytes.extend_from_slice(&dmac);
    bytes.extend_from_slice(&smac);
    bytes.extend_from_slice(&[0x08, 0x00]);
    bytes.extend_from_slice(&ip);
    let mut out = [0u16; ENCAP_HDR_LEN / 2];
    for (o, w) in out.iter_mut().zip(bytes.chunks(2)) {
        // Frame byte order: the program stores these halfwords as they are in memory.
        *o = u16::from_ne_bytes([w[0], w[1]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flood mode gives every frame a source of its own and keeps the IPv4 header
    /// checksum right (RFC 1624 update), across carries in the source's low half.
    #[test]
    fn flood_frames_have_new_sources_and_valid_ipv4_checksums() {
        if !xlb_tests::netns::require_root() {
            return;
        }
        let mut ebpf = loader::load_baseline("xlb_gen").expect("generator");
        let template = udp64(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            "198.18.0.250".parse().unwrap(),
            GEN_SPORT_BASE as u16,
            VIP.parse().unwrap(),
            PORT,
        );
        let mut frame = [0u8; FRAME_LEN];
        frame.copy_from_slice(&template);
        // One port per round: the source moves on every frame.
        let cfg = GenConfig {
            frame,
            flows: 1,
            sport_base: GEN_SPORT_BASE,
            sport_off: SPORT_OFF_V4 as u32,
            action: XDP_DROP,
            flood: 1,
        };
        let mut map: Array<_, GenConfig> =
            Array::try_from(ebpf.map_mut("GEN_CONFIG").expect("GEN_CONFIG")).expect("array");
        map.set(0, cfg, 0).expect("write GEN_CONFIG");
        let prog = loader::xdp(&mut ebpf, "xlb_gen").expect("xlb_gen");
        let mut sources = std::collections::BTreeSet::new();
        for i in 0..300 {
            let out = xlb::testrun::run(prog, &template).expect("test run");
            let ip = &out.frame[14..34];
            let sum: u32 = ip
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            let folded = (sum & 0xffff) + (sum >> 16);
            assert_eq!(
                (folded & 0xffff) + (folded >> 16),
                0xffff,
                "frame {i}: IPv4 checksum"
            );
            assert_eq!(
                &ip[..10],
                &template[14..24],
                "frame {i}: header before the checksum"
            );
            assert_eq!(
                &ip[12..14],
                &[198, 18],
                "frame {i}: source outside 198.18.0.0/16"
            );
            assert_eq!(&ip[16..], &template[30..34], "frame {i}: destination");
            sources.insert([ip[14], ip[15]]);
        }
        assert_eq!(sources.len(), 300, "every frame a source of its own");
    }
}
