//! Part 3: xlb against what a user would pick instead, with real TCP clients, on the demo
//! topology (client, balancer, three backends on one bridged LAN, all in namespaces).
//!
//! Configurations, each with its own destination so no two share TCP tuples:
//! - `direct`: the client talks to backend b1 itself (no balancer): the reference.
//! - `hop_only`: client → 198.18.1.1 via the balancer host, whose XDP program (`xlb_hop`)
//!   only rewrites MACs and bounces to a backend picked by the client's port (the VIP is on
//!   every backend's lo): the one-arm hop's own cost, with the servers sharing the work as
//!   behind a balancer (bounced to b1 alone, the one server's batching made the floor
//!   cheaper per request than any balancer that spreads could be).
//! - `xlb`: the balancer (IPIP DSR) on the balancer host, decap on the backends.
//! - `nftables`: DNAT `numgen inc mod 3` to the backends plus SNAT (VIP 198.18.1.2).
//! - `haproxy`: `mode tcp`, round robin (VIP 198.18.1.3 on the balancer's lo).
//!
//! Backends run nginx (one worker). wrk runs with keep-alive and with `Connection: close`
//! (a new connection per request: requests/s = connections/s). Rounds interleave the
//! configurations. Per request: whole-machine busy CPU from /proc/stat deltas; the LB's
//! share is that minus the same figure of `direct`. BPF run-time stats of the balancer and
//! decap programs are read under the same load.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap},
    programs::{xdp::XdpLinkId, XdpMode},
    Ebpf,
};
use lb_common::{
    addr::to_words,
    counters::Event,
    maps::{DecapAddr, MAP_DECAP_ADDRS},
};
use serde_json::{json, Value};
use xlb::{config::VipId, core::NextHop, loader};
use xlb_tests::{
    netns::Netns,
    topology::{http_get, spawn_logged, DemoNet, Proc, CLIENT4, LB4, VIP4},
};

use crate::{
    lab::{load_options, BenchLab, VipKind, VipSpec},
    stats::{ratio, rotated, round3, Summary},
    Plan,
};

const NFT_VIP: &str = "198.18.1.2";
const HAPROXY_VIP: &str = "198.18.1.3";
/// Source of nftables' SNAT and of HAProxy's backend connections (TIME_WAIT apart).
const NFT_SNAT: &str = "198.18.0.3";
const HAPROXY_SRC: &str = "198.18.0.4";
const BACKENDS: usize = 3;
const CONFIGS: [&str; 5] = ["direct", "hop_only", "xlb", "nftables", "haproxy"];
const MODES: [&str; 2] = ["keepalive", "close"];

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// What one wrk run gave.
struct WrkRun {
    rps: f64,
    requests: f64,
    errors: u64,
    busy_s: f64,
}

/// `wrk` from the client namespace against `url` for `secs` seconds.
fn wrk(client: &Netns, url: &str, close: bool, secs: u32) -> Result<WrkRun> {
    let d = format!("{secs}s");
    let mut args = vec!["wrk", "-t2", "-c32", "-d", &d, "--timeout", "2s"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let (b0, _) = cpu_jiffies();
    let out = client.exec(&args);
    let (b1, _) = cpu_jiffies();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "wrk {url} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|x| x.parse().ok())
        })
    };
    let rps = field("Requests/sec:").context("no Requests/sec in wrk output")?;
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.trim().parse::<f64>().ok())
        })
        .context("no request count in wrk output")?;
    let mut errors = 0u64;
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        errors += line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(n) = field("Non-2xx or 3xx responses:") {
        errors += n as u64;
    }
    ensure!(requests > 0.0, "wrk {url}: no request completed:\n{text}");
    Ok(WrkRun {
        rps,
        requests,
        errors,
        busy_s: (b1 - b0) as f64 / clock_ticks(),
    })
}

/// Starts nginx in `ns` serving `root` on port 80 (every local address, VIP included).
fn nginx(ns: &Netns, dir: &Path, name: &str) -> Result<Proc> {
    let root = dir.join(format!("www-{name}"));
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("index.html"), format!("{name}\n"))?;
    let tmp = dir.join(format!("nginx-tmp-{name}"));
    std::fs::create_dir_all(&tmp)?;
    let conf = dir.join(format!("nginx-{name}.conf"));
    let (r, t, d) = (root.display(), tmp.display(), dir.display());
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx-{name}.pid;\nerror_log {d}/nginx-{name}.err;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {t}/b; proxy_temp_path {t}/p; fastcgi_temp_path {t}/f; \
             uwsgi_temp_path {t}/u; scgi_temp_path {t}/s; keepalive_requests 1000000;\n\
             server {{ listen 80; root {r}; }} }}\n"
        ),
    )?;
    let conf_s = conf.to_str().context("utf-8 path")?;
    Ok(spawn_logged(
        ns,
        &[
            "nginx",
            "-c",
            conf_s,
            "-e",
            &format!("{d}/nginx-{name}.err"),
        ],
        &dir.join(format!("nginx-{name}.log")),
    ))
}

fn haproxy(ns: &Netns, dir: &Path, backends: &[IpAddr]) -> Result<Proc> {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  server b{} {a}:80\n", i + 1))
        .collect();
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend f\n  bind {HAPROXY_VIP}:80\n  default_backend b\n\
             backend b\n  balance roundrobin\n  source {HAPROXY_SRC}\n{servers}"
        ),
    )?;
    Ok(spawn_logged(
        ns,
        &["haproxy", "-db", "-f", conf.to_str().context("utf-8 path")?],
        &dir.join("haproxy.log"),
    ))
}

fn nft_ruleset(backends: &[IpAddr]) -> String {
    let set: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    format!(
        "table ip xlbbench {{\n{} chain post {{\n  type nat hook postrouting priority 100;\n  ip daddr {{ {} }} tcp dport 80 snat to {NFT_SNAT}\n }}\n}}\n",
        nft_dnat_chain(NFT_VIP, "tcp", 80, backends),
        set.join(", ")
    )
}

/// An nftables `prerouting` chain that DNATs `vip` (`proto`, `port`) to `targets` round
/// robin (`numgen inc`): the DNAT rule of both nftables configurations (here and in the
/// forwarding part).
pub fn nft_dnat_chain(
    vip: impl std::fmt::Display,
    proto: &str,
    port: u16,
    targets: &[impl std::fmt::Display],
) -> String {
    let map: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i} : {a}"))
        .collect();
    format!(
        " chain pre {{\n  type nat hook prerouting priority -100;\n  ip daddr {vip} {proto} dport {port} dnat to numgen inc mod {} map {{ {} }}\n }}\n",
        targets.len(),
        map.join(", ")
    )
}

/// Loads an nftables script into `ns` (through a file in `dir`).
pub fn nft(ns: &Netns, script: &str, dir: &Path) -> Result<()> {
    let f = dir.join("nft.rules");
    std::fs::write(&f, script)?;
    let out = ns.exec(&["nft", "-f", f.to_str().context("utf-8 path")?]);
    ensure!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Run time and count of one loaded program.
fn prog_stats(prog: &aya::programs::Xdp) -> Result<(u64, u64)> {
    let i = prog.info()?;
    Ok((i.run_time().as_nanos() as u64, i.run_count()))
}

/// What every configuration shares: the demo network, nginx and the decap program on
/// each backend (attached in every configuration, so every configuration pays for it
/// alike), and the balancer host's interface.
struct Testbed {
    net: DemoNet,
    backends: Vec<IpAddr>,
    decaps: Vec<Ebpf>,
    lb_if: u32,
    lb_mac: [u8; 6],
    // Last: the servers stop before the namespaces go.
    _servers: Vec<Proc>,
}

impl Testbed {
    fn new() -> Result<Testbed> {
        let net = DemoNet::new("bp", BACKENDS);
        for (ns, keys) in [
            (
                &net.lb,
                &[
                    "net.ipv4.conf.all.send_redirects",
                    "net.ipv4.conf.eth0.send_redirects",
                ][..],
            ),
            (&net.client, &["net.ipv4.conf.all.accept_redirects"][..]),
        ] {
            for k in keys {
                ns.sysctl(k, "0");
            }
        }
        for ns in [&net.lb, &net.client] {
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
            ns.sysctl("net.ipv4.ip_local_port_range", "10000 64000");
        }
        let backends: Vec<IpAddr> = net.backends.iter().map(|b| IpAddr::V4(b.v4)).collect();
        let mut servers = Vec::new();
        let mut decaps: Vec<Ebpf> = Vec::new();
        for b in &net.backends {
            servers.push(nginx(&b.ns, &net.dir, &b.name)?);
            let mut ebpf = loader::load_decap()?;
            {
                let mut addrs: HashMap<_, DecapAddr, u32> =
                    HashMap::try_from(ebpf.map_mut(MAP_DECAP_ADDRS).context("DECAP_ADDRS")?)?;
                let (addr, family) = to_words(IpAddr::V4(b.v4));
                addrs.insert(
                    DecapAddr {
                        addr,
                        family: u32::from(family),
                    },
                    1u32,
                    0,
                )?;
            }
            {
                let _inside = b.ns.enter();
                loader::attach(&mut ebpf, loader::DECAP_PROG, "eth0", XdpMode::Driver)?;
            }
            decaps.push(ebpf);
        }
        for (i, b) in net.backends.iter().enumerate() {
            let addr = SocketAddr::new(IpAddr::V4(b.v4), 80);
            let ok = (0..100).any(|_| {
                let up = http_get(&net.client, addr, "/", Duration::from_millis(500)).is_ok();
                if !up {
                    std::thread::sleep(Duration::from_millis(50));
                }
                up
            });
            ensure!(
                ok,
                "nginx on {} did not answer: {}",
                b.name,
                std::fs::read_to_string(net.dir.join(format!("nginx-b{}.err", i + 1)))
                    .unwrap_or_default()
            );
        }
        let lb_if = net.lb.ifindex("eth0");
        let lb_mac = net.lb.mac("eth0");
        Ok(Testbed {
            net,
            backends,
            decaps,
            lb_if,
            lb_mac,
            _servers: servers,
        })
    }

    /// A balancer built from `object` for the VIP, its next hops the backends' MACs.
    fn xlb(&self, object: &[u8]) -> Result<BenchLab> {
        let vip: VipId = format!("{VIP4}:80/tcp")
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let spec = [VipSpec {
            addr: VIP4.parse()?,
            port: 80,
            proto: "tcp",
            backends: self.backends.clone(),
            kind: VipKind::Plain,
        }];
        let mut xlb = BenchLab::with_object(
            object,
            &spec,
            load_options(1 << 18, true),
            NextHop {
                ifindex: self.lb_if,
                smac: self.lb_mac,
                dmac: [0; 6],
                mtu: 1500,
            },
        )?;
        for b in &self.net.backends {
            let hop = NextHop {
                ifindex: self.lb_if,
                smac: self.lb_mac,
                dmac: b.ns.mac("eth0"),
                mtu: 1500,
            };
            xlb.core
                .set_nexthop(&vip, IpAddr::V4(b.v4), Some(hop))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(xlb)
    }

    /// Attaches `prog` to the balancer host's interface.
    fn attach(&self, prog: &mut aya::programs::Xdp) -> Result<XdpLinkId> {
        let _inside = self.net.lb.enter();
        Ok(prog.attach_to_if_index(self.lb_if, XdpMode::Driver)?)
    }
}

/// Run time and count of the decap programs, all backends together (a function of the
/// field, not a method, so closures can borrow it beside the rest of the testbed).
fn decap_stats(decaps: &mut [Ebpf]) -> Result<(u64, u64)> {
    let mut sum = (0, 0);
    for e in decaps {
        let (ns, n) = prog_stats(loader::xdp(e, loader::DECAP_PROG)?)?;
        sum = (sum.0 + ns, sum.1 + n);
    }
    Ok(sum)
}

/// What one wrk run cost the programs: `(run time ns, runs)` added during it by the
/// balancer program and by the decap programs together.
struct Costs {
    balancer: (u64, u64),
    decap: (u64, u64),
}

impl Costs {
    fn balancer_ns(&self) -> f64 {
        ratio(self.balancer.0 as f64, self.balancer.1 as f64)
    }

    fn decap_ns(&self) -> f64 {
        ratio(self.decap.0 as f64, self.decap.1 as f64)
    }
}

/// Adds a `(ns, runs)` pair to a running sum.
fn add(sum: &mut (u64, u64), more: (u64, u64)) {
    sum.0 += more.0;
    sum.1 += more.1;
}

/// [`wrk`] from `client`, with the BPF run-time stats of `balancer` and `decaps` around it.
fn wrk_costs(
    client: &Netns,
    balancer: &aya::programs::Xdp,
    decaps: &mut [Ebpf],
    url: &str,
    close: bool,
    secs: u32,
) -> Result<(WrkRun, Costs)> {
    let b0 = prog_stats(balancer)?;
    let d0 = decap_stats(decaps)?;
    let run = wrk(client, url, close, secs)?;
    let b1 = prog_stats(balancer)?;
    let d1 = decap_stats(decaps)?;
    let costs = Costs {
        balancer: (b1.0 - b0.0, b1.1 - b0.1),
        decap: (d1.0 - d0.0, d1.1 - d0.1),
    };
    Ok((run, costs))
}

/// Development aid (`XLB_BENCH_AB_WRK=a.o,b.o`): several builds of the balancer object under
/// wrk on the peers' topology, interleaved round by round: each build's BPF run time per
/// packet, with keep-alive and with a new connection per request, and in units of the
/// decap program's time on the same packets in the same run (the within-run ratio).
pub fn compare_builds(paths: &[String], rounds: usize) -> Result<Value> {
    const SECS: u32 = 3;
    let mut bed = Testbed::new()?;
    let objects = crate::read_builds(paths)?;
    let mut labs = objects
        .iter()
        .map(|o| bed.xlb(o))
        .collect::<Result<Vec<_>>>()?;
    let url = format!("http://{VIP4}/");
    let _stats = crate::bpf_stats_on()?;
    // [build][mode]: ns per packet of the balancer, and over decap's.
    let mut ns = vec![vec![Vec::new(); MODES.len()]; labs.len()];
    let mut over = vec![vec![Vec::new(); MODES.len()]; labs.len()];
    // Shares of the balancer's packets: served from the flow cache, and new flows.
    let mut cached = vec![vec![Vec::new(); MODES.len()]; labs.len()];
    let mut new = vec![vec![Vec::new(); MODES.len()]; labs.len()];
    for round in 0..rounds {
        for i in rotated(labs.len(), round) {
            // A fresh load every round: one loaded instance keeps its own speed (where its
            // maps and code landed), and two copies of one build loaded once came out 12 %
            // apart; loads that change every round average that out.
            if round > 0 {
                labs[i] = bed.xlb(&objects[i])?;
            }
            let lab = &mut labs[i];
            let link = bed.attach(lab.prog())?;
            let measured = (|| -> Result<()> {
                for (m, mode) in MODES.iter().enumerate() {
                    let c0 = lab.counters();
                    let (_, costs) = wrk_costs(
                        &bed.net.client,
                        lab.prog(),
                        &mut bed.decaps,
                        &url,
                        *mode == "close",
                        SECS,
                    )?;
                    let c1 = lab.counters();
                    ns[i][m].push(costs.balancer_ns());
                    over[i][m].push(ratio(costs.balancer_ns(), costs.decap_ns()));
                    let moved = |e: Event| (c1[e.slot() as usize] - c0[e.slot() as usize]) as f64;
                    cached[i][m].push(ratio(moved(Event::FlowCacheHit), costs.balancer.1 as f64));
                    new[i][m].push(ratio(moved(Event::NewFlow), costs.balancer.1 as f64));
                }
                Ok(())
            })();
            lab.prog().detach(link)?;
            measured?;
        }
        eprintln!("  wrk A/B round {}/{rounds}", round + 1);
    }
    let mut out = json!({});
    for (i, p) in paths.iter().enumerate() {
        for (m, mode) in MODES.iter().enumerate() {
            out[p][*mode] = json!({
                "ns_per_pkt": Summary::of(&ns[i][m]).json(),
                "over_decap": Summary::of(&over[i][m]).json(),
                "flow_cache_hit_share": round3(Summary::of(&cached[i][m]).median),
                "new_flow_share": round3(Summary::of(&new[i][m]).median),
            });
        }
    }
    Ok(out)
}

/// Runs part 3.
pub fn run(plan: &Plan) -> Result<Value> {
    let mut bed = Testbed::new()?;

    let dir = bed.net.dir.clone();
    bed.net.lb.addr("eth0", &format!("{NFT_SNAT}/24"));
    bed.net.lb.addr("eth0", &format!("{HAPROXY_SRC}/24"));
    bed.net.lb.addr("lo", &format!("{HAPROXY_VIP}/32"));
    let backends = bed.backends.clone();
    let _haproxy = haproxy(&bed.net.lb, &dir, &backends)?;

    // The balancer host's programs: xlb (next hops = the backends' MACs) and xlb_hop.
    let mut xlb = bed.xlb(loader::BALANCER_OBJ)?;
    let mut hop = loader::load_baseline("xlb_hop")?;
    {
        let mut macs: Array<_, [u8; 12]> =
            Array::try_from(hop.map_mut("HOP_MACS").context("HOP_MACS")?)?;
        for (i, b) in bed.net.backends.iter().enumerate() {
            let mut m = [0u8; 12];
            m[..6].copy_from_slice(&b.ns.mac("eth0"));
            m[6..].copy_from_slice(&bed.lb_mac);
            macs.set(i as u32, m, 0)?;
        }
        let mut count: Array<_, u32> =
            Array::try_from(hop.map_mut("HOP_COUNT").context("HOP_COUNT")?)?;
        count.set(0, bed.net.backends.len() as u32, 0)?;
    }

    let url = |c: &str| -> String {
        match c {
            "direct" => format!("http://{}/", backends[0]),
            "hop_only" | "xlb" => format!("http://{VIP4}/"),
            "nftables" => format!("http://{NFT_VIP}/"),
            _ => format!("http://{HAPROXY_VIP}/"),
        }
    };
    // Check every path once before measuring.
    let check = |c: &str| -> Result<()> {
        let host: IpAddr = url(c)
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()?;
        let addr = SocketAddr::new(host, 80);
        let mut last = String::new();
        for _ in 0..40 {
            match http_get(&bed.net.client, addr, "/", Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let logs = ["haproxy.log", "nginx-b1.err"]
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default());
        bail!(
            "{c}: no answer through {addr}: {last}\nhaproxy log: {}\nnginx b1: {}",
            logs[0],
            logs[1]
        )
    };

    // On for the whole part, so every configuration's programs (decap everywhere, the hop
    // and the balancer where attached) pay the same per-run clock reads.
    let _stats = crate::bpf_stats_on()?;
    let mut rps = vec![vec![Vec::new(); CONFIGS.len()]; MODES.len()];
    let mut cpu_us = vec![vec![Vec::new(); CONFIGS.len()]; MODES.len()];
    let mut errors = vec![vec![0u64; CONFIGS.len()]; MODES.len()];
    let mut bpf = [(0u64, 0u64); 2]; // (ns, runs) for balancer, decap
                                     // The balancer's (ns, runs) per mode: a new connection per request makes every SYN a
                                     // new flow (scheduler and insert), so the two mixes cost differently.
    let mut bpf_mode = [(0u64, 0u64); 2];
    // `xlb_hop`'s (ns, runs) per mode, on the same interface and the same clients' packets:
    // what the cheapest XDP program there costs under that load, the floor under the
    // balancer's figure.
    let mut hop_mode = [(0u64, 0u64); 2];
    for round in 0..plan.rounds {
        for (m, mode) in MODES.iter().enumerate() {
            for (c, config) in CONFIGS.iter().enumerate() {
                let mut link = None;
                match *config {
                    "hop_only" => link = Some(bed.attach(loader::xdp(&mut hop, "xlb_hop")?)?),
                    "xlb" => link = Some(bed.attach(xlb.prog())?),
                    "nftables" => nft(&bed.net.lb, &nft_ruleset(&backends), &dir)?,
                    _ => {}
                }
                let run = (|| -> Result<WrkRun> {
                    if round == 0 && m == 0 {
                        check(config)?;
                    }
                    // The program on the balancer host's interface: the hop's in
                    // `hop_only`, xlb's otherwise (not attached: no runs counted).
                    let lb_prog = match *config {
                        "hop_only" => loader::xdp(&mut hop, "xlb_hop")?,
                        _ => xlb.prog(),
                    };
                    let (r, costs) = wrk_costs(
                        &bed.net.client,
                        lb_prog,
                        &mut bed.decaps,
                        &url(config),
                        *mode == "close",
                        plan.wrk_secs,
                    )?;
                    match *config {
                        "xlb" => {
                            add(&mut bpf[0], costs.balancer);
                            add(&mut bpf_mode[m], costs.balancer);
                            add(&mut bpf[1], costs.decap);
                        }
                        "hop_only" => add(&mut hop_mode[m], costs.balancer),
                        _ => {}
                    }
                    Ok(r)
                })();
                match *config {
                    "hop_only" => loader::xdp(&mut hop, "xlb_hop")?
                        .detach(link.take().context("hop link")?)?,
                    "xlb" => xlb.prog().detach(link.take().context("xlb link")?)?,
                    "nftables" => nft(&bed.net.lb, "delete table ip xlbbench\n", &dir)?,
                    _ => {}
                }
                let r = run?;
                rps[m][c].push(r.rps);
                cpu_us[m][c].push(r.busy_s * 1e6 / r.requests);
                errors[m][c] += r.errors;
            }
            eprintln!(
                "  peers round {}/{} {mode}: {}",
                round + 1,
                plan.rounds,
                CONFIGS
                    .iter()
                    .enumerate()
                    .map(|(c, n)| format!("{n} {:.0}", rps[m][c][round]))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    let mut out = json!({});
    for (m, mode) in MODES.iter().enumerate() {
        let direct_cpu = Summary::of(&cpu_us[m][0]).median;
        let direct_rps = Summary::of(&rps[m][0]).median;
        let hop_cpu = Summary::of(&cpu_us[m][1]).median;
        for (c, config) in CONFIGS.iter().enumerate() {
            let r = Summary::of(&rps[m][c]);
            let cpu = Summary::of(&cpu_us[m][c]);
            out[*mode][*config] = json!({
                "rps": r.json(),
                "cpu_us_per_request": cpu.json(),
                "lb_cpu_us_per_request": round3(cpu.median - direct_cpu),
                "rps_over_direct": round3(ratio(r.median, direct_rps)),
                "errors": errors[m][c],
            });
        }
        let xlb_cpu = Summary::of(&cpu_us[m][2]).median;
        out[*mode]["xlb_cpu_over_hop_only_floor"] =
            json!(round3(ratio(xlb_cpu - direct_cpu, hop_cpu - direct_cpu)));
        out[*mode]["xlb_cpu_per_request_over_hop_only"] = json!(round3(ratio(xlb_cpu, hop_cpu)));
    }
    let med = |m: usize, c: usize| Summary::of(&rps[m][c]).median.round();
    out["xlb_rps"] = json!(med(0, 2));
    out["nftables_rps"] = json!(med(0, 3));
    out["haproxy_rps"] = json!(med(0, 4));
    out["direct_rps"] = json!(med(0, 0));
    out["hop_only_rps"] = json!(med(0, 1));
    out["xlb_cps"] = json!(med(1, 2));
    out["nftables_cps"] = json!(med(1, 3));
    out["haproxy_cps"] = json!(med(1, 4));
    let per_pkt = |(ns, runs): (u64, u64)| ratio(ns as f64, runs as f64);
    let hop = (hop_mode[0].0 + hop_mode[1].0, hop_mode[0].1 + hop_mode[1].1);
    out["bpf_stats"] = json!({
        "balancer_ns_per_pkt": round3(ratio(bpf[0].0 as f64, bpf[0].1 as f64)),
        "balancer_packets": bpf[0].1,
        "balancer_ns_per_pkt_keepalive": round3(ratio(bpf_mode[0].0 as f64, bpf_mode[0].1 as f64)),
        "balancer_ns_per_pkt_close": round3(ratio(bpf_mode[1].0 as f64, bpf_mode[1].1 as f64)),
        "decap_ns_per_pkt": round3(ratio(bpf[1].0 as f64, bpf[1].1 as f64)),
        "decap_packets": bpf[1].1,
        // The hop-only configuration's program (parse the EtherType, rewrite the MACs,
        // XDP_TX) on the same interface under the same wrk load: no XDP program there costs
        // less, so the balancer's own work is what it costs above this.
        "hop_ns_per_pkt": round3(per_pkt(hop)),
        "hop_ns_per_pkt_keepalive": round3(per_pkt(hop_mode[0])),
        "hop_ns_per_pkt_close": round3(per_pkt(hop_mode[1])),
        "hop_packets": hop.1,
        "balancer_minus_hop_ns_per_pkt": round3(per_pkt(bpf[0]) - per_pkt(hop)),
        "balancer_minus_hop_ns_per_pkt_keepalive": round3(per_pkt(bpf_mode[0]) - per_pkt(hop_mode[0])),
        "balancer_minus_hop_ns_per_pkt_close": round3(per_pkt(bpf_mode[1]) - per_pkt(hop_mode[1])),
        // The decap program runs on the same packets' way back into the backends, under
        // the same load: the balancer's cost in units of it travels between machines
        // better than nanoseconds do (BENCH-NOTES' minimal balancer: ≈ 480 / 110 ≈ 4.4).
        "balancer_over_decap": round3(ratio(
            ratio(bpf[0].0 as f64, bpf[0].1 as f64),
            ratio(bpf[1].0 as f64, bpf[1].1 as f64),
        )),
    });
    out["method"] = json!({
        "wrk": format!("-t2 -c32 -d{}s, keep-alive and Connection: close", plan.wrk_secs),
        "backends": BACKENDS, "server": "nginx, 1 worker", "client": CLIENT4, "balancer": LB4,
        "cpu": "whole-machine busy time from /proc/stat per request; lb_cpu = config - direct",
    });
    Ok(out)
}
